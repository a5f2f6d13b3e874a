//! `/metrics` as an operator's Prometheus reads it: the pigeons' series per destination, the
//! consumer group's lag measured by the admin role alone, and a scrape `promtool` accepts.

use std::collections::HashMap;
use std::time::Duration;

use pigeon_bus::route::DestinationSpec;
use pigeon_sdk::Letter;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::*;

/// The value of the series `name` whose labels are exactly `labels` (in any order), or 0 when
/// there is none yet.
fn value(series: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    series
        .iter()
        .find(|(s, _)| {
            let (n, rest) = s.split_once('{').unwrap_or((s.as_str(), "}"));
            let mut got: Vec<String> =
                rest.trim_end_matches('}').split(',').filter(|l| !l.is_empty()).map(str::to_owned).collect();
            got.sort();
            n == name && got == wanted
        })
        .map_or(0.0, |(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread")]
async fn letters_in_and_out_count_per_pigeon_and_destination_and_promtool_accepts_the_scrape() {
    const N: usize = 300;
    let kafka = Kafka::new(1);
    kafka.topic("live.gift", 4);
    kafka.topic("pigeon.module.act-toy", 4);
    kafka.topic("lane.audit", 2);
    let db = Db::with_pigeons(&[pigeon(
        "gift-fanout",
        "live.gift",
        "gift.sent",
        vec![
            DestinationSpec::capability("act-toy/progress.add"),
            DestinationSpec::topic("lane.audit", "audit.gift"),
        ],
    )])
    .await;
    let bus = Bus::start(&kafka, &db, &[]);
    let destinations = ["pigeon.module.act-toy", "lane.audit"];
    let before = bus.series();
    let in_before = value(&before, "pigeon_letters_in_total", &[("pigeon", "gift-fanout")]);
    let out_before = destinations.map(|d| {
        value(&before, "pigeon_letters_out_total", &[("pigeon", "gift-fanout"), ("destination", d)])
    });

    let letters: Vec<Letter> = (0..N)
        .map(|n| {
            Letter::new("live-platform", "gift.sent", serde_json::json!({"userId": n}))
                .with_key(format!("room-{}", n % 7))
        })
        .collect();
    kafka.produce("live.gift", letters.iter().map(Outgoing::from));
    for topic in destinations {
        assert_eq!(kafka.collect(topic, N, Duration::from_millis(200)).len(), N, "{topic}");
    }

    // Delivery reports may come a moment after the letters can be read.
    eventually("the outputs counted", || {
        let now = bus.series();
        destinations.iter().zip(out_before).all(|(d, before)| {
            value(&now, "pigeon_letters_out_total", &[("pigeon", "gift-fanout"), ("destination", d)]) - before
                >= N as f64
        })
    });
    let after = bus.series();
    assert_eq!(value(&after, "pigeon_letters_in_total", &[("pigeon", "gift-fanout")]) - in_before, N as f64);
    for (d, before) in destinations.iter().zip(out_before) {
        let out = value(&after, "pigeon_letters_out_total", &[("pigeon", "gift-fanout"), ("destination", d)]);
        assert_eq!(out - before, N as f64, "{d}: +{N} out");
        // Offset 0 of every partition is among the sampled letters.
        assert!(
            value(&after, "pigeon_produce_latency_seconds_count", &[("destination", d)]) > 0.0,
            "{d}: produce latency sampled"
        );
        assert_eq!(
            value(&after, "pigeon_letters_failed_total", &[("pigeon", "gift-fanout"), ("destination", d)]),
            0.0
        );
    }
    assert_eq!(value(&after, "pigeon_router_letters_read_total", &[]), N as f64);

    let scrape = bus.scrape();
    for family in ["pigeon_letters_in_total counter", "pigeon_produce_latency_seconds histogram"] {
        assert!(scrape.contains(&format!("# TYPE {family}\n")), "{family} in\n{scrape}");
    }
    promtool_check(&scrape);
    bus.stop();
}

/// `promtool check metrics` on a scrape; skipped, saying so, where promtool is not installed
/// (`scripts/test` installs it: Debian's `prometheus` package).
fn promtool_check(scrape: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("SKIPPED: promtool check metrics: promtool cannot run ({e}); install Debian's `prometheus` package");
            return;
        }
    };
    child.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape:\n{}{}\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_role_shows_the_router_group_s_lag_while_no_router_runs() {
    let kafka = Kafka::new(1);
    kafka.topic("live.gift", 1);
    kafka.topic("pigeon.module.act-toy", 1);
    let db = Db::with_pigeons(&[pigeon(
        "gifts",
        "live.gift",
        "gift.sent",
        vec![DestinationSpec::capability("act-toy/progress.add")],
    )])
    .await;
    // 40 letters; the router group committed 15 of them before its routers went away.
    let letters: Vec<Letter> =
        (0..40).map(|n| Letter::new("t", "gift.sent", serde_json::json!({"n": n}))).collect();
    kafka.produce("live.gift", letters.iter().map(Outgoing::from));
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", ROUTER_GROUP)
        .create()
        .unwrap();
    let mut committed = TopicPartitionList::new();
    committed.add_partition_offset("live.gift", 0, Offset::Offset(15)).unwrap();
    group.commit(&committed, CommitMode::Sync).expect("commit the router group's offset");

    let bus = Bus::start(&kafka, &db, &["--roles", "admin"]);
    let lag = |partition: &str| {
        value(
            &bus.series(),
            "pigeon_consumer_group_lag",
            &[("group", ROUTER_GROUP), ("topic", "live.gift"), ("partition", partition)],
        )
    };
    eventually("the lag measured", || lag("0") == 25.0);
    assert_eq!(value(&bus.series(), "pigeon_router_letters_read_total", &[]), 0.0, "no router ran");
    bus.stop();
}
