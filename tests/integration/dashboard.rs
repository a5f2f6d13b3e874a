//! The Grafana dashboard (deploy/grafana/pigeon.json) reads only metrics the bus serves: a bus
//! with every role, a forward, a script and an archive pigeon takes letters, some of whose
//! outputs Kafka refuses (a breaker opens, dead letters are stored), and every metric a panel
//! queries appears in a scrape.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pigeon_bus::route::{Action, DestinationSpec};
use pigeon_sdk::Letter;
use serde_json::json;

use crate::support::{http_get, pigeon, Bus, Db, Kafka, Outgoing, DEADLINE};

/// Every `pigeon_…` metric the dashboard's queries name, histograms by their base name.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana/pigeon.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("deploy/grafana/pigeon.json"))
            .expect("JSON");
    let mut exprs = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().expect("panels").iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("every target has an expression").to_owned());
        }
    }
    assert!(exprs.len() > 20, "the dashboard's queries: {exprs:?}");
    exprs
        .iter()
        .flat_map(|expr| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("pigeon_"))
                .map(|word| word.trim_end_matches("_bucket").to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The metric names in a scrape (a histogram's by its base name).
fn scraped(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_reads_appears_in_a_scrape() {
    let wanted = dashboard_metrics();
    let kafka = Kafka::new(1);
    for topic in [
        "live.gift",
        "lane.a",
        "pigeon.ingress",
        "pigeon.registry",
        "pigeon.failed",
        "pigeon.receipts",
        "pigeon.control",
    ] {
        kafka.topic(topic, 2);
    }
    let forward = pigeon("gifts", "live.gift", "gift.sent", vec![DestinationSpec::topic("lane.a", "gift")]);
    let mut scored =
        pigeon("scored", "live.gift", "gift.sent", vec![DestinationSpec::topic("lane.a", "scored")]);
    scored.action = Action::Script;
    scored.script = Some(r#"[#{ tag: "scored", payload: #{ userId: payload.userId } }]"#.into());
    let mut keep = pigeon("keep", "live.gift", "**", Vec::new());
    keep.action = Action::Archive;
    let db = Db::with_pigeons(&[forward, scored, keep]).await;
    let config = db.path("pigeon.toml");
    std::fs::write(&config, "[router]\nbreaker_failures = 1\n").unwrap();
    let letters: Vec<Outgoing> = (0..256)
        .map(|n| {
            Outgoing::from(
                &Letter::new("tests", "gift.sent", json!({ "userId": n }))
                    .with_key(format!("room-{}", n % 8)),
            )
        })
        .collect();
    kafka.produce("live.gift", letters);
    // The letters wait in the source: the router's first produce requests are refused for good,
    // so their outputs become dead letters and a destination's breaker opens.
    let refused = [rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 5];
    kafka.cluster.request_errors(rdkafka::types::RDKafkaApiKey::Produce, &refused);
    let bus = Bus::start(&kafka, &db, &["--config", config.to_str().unwrap()]);

    // The admin role measures lag and the stored dead letters every 15 s.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = http_get(&bus.admin, "/metrics").expect("a scrape");
        assert_eq!(status, 200);
        let seen = scraped(&body);
        let missing: Vec<&String> = wanted.difference(&seen).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard reads metrics no scrape shows: {missing:?}\n{body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    bus.stop();
}
