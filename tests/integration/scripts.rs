//! Script pigeons end to end: cleansing, failures, per-key order, and a hostile pigeon beside a
//! healthy one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use pigeon_bus::route::{Action, DestinationSpec, PigeonSpec};
use pigeon_sdk::Letter;
use rdkafka::message::Message;

use crate::support::*;

fn script_pigeon(id: &str, topic: &str, script: &str, destinations: Vec<DestinationSpec>) -> PigeonSpec {
    let mut spec = pigeon(id, topic, "**", destinations);
    spec.action = Action::Script;
    spec.script = Some(script.into());
    spec
}

fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rhai").join(name);
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_cleanses_letters_in_key_order_and_dead_letters_its_failures() {
    const LETTERS: u64 = 5_000;
    const ANCHORS: u64 = 50;
    let kafka = Kafka::new(1);
    kafka.topic("live.gift", 16);
    kafka.topic("pigeon.module.act-toy", 16);
    let db = Db::with_pigeons(&[script_pigeon(
        "gift-progress",
        "live.gift",
        &example("gift-to-progress.rhai"),
        vec![DestinationSpec::capability("act-toy/progress.add")],
    )])
    .await;
    let bus = Bus::start(&kafka, &db, &["-X", "producer.linger.ms=20"]);

    let gifts: Vec<Letter> = (0..LETTERS)
        .map(|n| {
            let anchor = n % ANCHORS;
            Letter::new(
                "live",
                "gift.sent",
                serde_json::json!({"uid": n, "aid": anchor, "roomId": format!("room-{anchor}"), "giftCount": n / ANCHORS + 1, "price": 1}),
            )
            .with_key(format!("room-{anchor}"))
        })
        .collect();
    let mut outgoing: Vec<Outgoing> = gifts.iter().map(Outgoing::from).collect();
    // Two letters the script throws on; they must become dead letters, and nothing else stops.
    let broken = Letter::new("live", "gift.sent", serde_json::json!({"uid": 1, "aid": 1})).with_key("room-1");
    let not_json = Outgoing {
        timestamp: None,
        key: Some(b"room-2".to_vec()),
        headers: gifts[0].headers(),
        payload: Some(b"{oops".to_vec()),
    };
    outgoing.insert(10, Outgoing::from(&broken));
    outgoing.insert(20, not_json);
    kafka.produce("live.gift", outgoing);

    let got = kafka.collect("pigeon.module.act-toy", LETTERS as usize, Duration::from_millis(500));
    assert_eq!(got.len(), LETTERS as usize, "one progress letter per gift, no duplicates");
    let ids: HashSet<String> = got.iter().filter_map(|m| header(m, "ce_id")).collect();
    assert_eq!(ids.len(), LETTERS as usize, "output ids are distinct");
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut violations = 0;
    for m in &got {
        assert_eq!(header(m, "ce_type").as_deref(), Some("progress.add"));
        assert_eq!(header(m, "content-type").as_deref(), Some("application/json"));
        assert_eq!(header(m, "ce_pigeon").as_deref(), Some("gift-progress"));
        let payload: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let key = m.key().unwrap().to_vec();
        assert_eq!(key, format!("anchor-{}", payload["anchorId"]).into_bytes(), "the script's key");
        // Points grow with each anchor's gifts: order per key is the source order.
        let points = payload["points"].as_i64().unwrap();
        if last.insert(key, points).is_some_and(|p| p >= points) {
            violations += 1;
        }
    }
    assert_eq!(violations, 0, "per-key order violations through the script");

    let store = db.store().await;
    let deadline = Instant::now() + DEADLINE;
    let dead = loop {
        let dead = store.dead_letters(&Default::default(), None, 500).await.unwrap();
        if dead.len() >= 2 || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().all(|d| d.letter.error_kind == pigeon_bus::deadletter::ErrorKind::Script));
    assert!(dead
        .iter()
        .any(|d| d.letter.error_message.contains("threw gift letter without giftCount or price")));
    assert!(dead.iter().any(|d| d.letter.error_message.contains("payload is not JSON")));
    assert!(dead.iter().all(|d| d.letter.pigeon_id.as_deref() == Some("gift-progress")));
    let metrics = bus.metrics();
    assert_eq!(metrics["pigeon_script_runs_total"], LETTERS + 2);
    bus.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_script_fails_only_its_own_letters() {
    const LETTERS: usize = 3_000;
    let kafka = Kafka::new(1);
    for topic in ["src.hostile", "src.healthy", "dst"] {
        kafka.topic(topic, 8);
    }
    let db = Db::with_pigeons(&[
        script_pigeon(
            "hostile",
            "src.hostile",
            "let s = 0; loop { s += 1; }",
            vec![DestinationSpec::topic("dst", "never")],
        ),
        script_pigeon(
            "healthy",
            "src.healthy",
            "payload.seen = true; payload",
            vec![DestinationSpec::topic("dst", "ok")],
        ),
    ])
    .await;
    let bus = Bus::start(&kafka, &db, &["-X", "producer.linger.ms=20"]);
    let letters = |tag: &str| -> Vec<Outgoing> {
        (0..LETTERS)
            .map(|n| {
                Outgoing::from(
                    &Letter::new("t", tag, serde_json::json!({"n": n})).with_key(format!("k{}", n % 40)),
                )
            })
            .collect()
    };
    let started = Instant::now();
    kafka.produce("src.hostile", letters("evil"));
    kafka.produce("src.healthy", letters("good"));
    let got = kafka.collect("dst", LETTERS, Duration::from_millis(500));
    let healthy_secs = started.elapsed().as_secs_f64();
    assert_eq!(got.len(), LETTERS, "every healthy letter, and nothing from the hostile pigeon");
    assert!(got.iter().all(|m| header(m, "ce_type").as_deref() == Some("ok")));

    eventually("every hostile letter dead-lettered", || {
        bus.metrics()["pigeon_script_failures_total"] == LETTERS as u64
    });
    let store = db.store().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let dead = store
            .dead_letters(&pigeon_bus::deadletter::DeadLetterFilter::default(), None, 5000)
            .await
            .unwrap();
        if dead.len() == LETTERS {
            assert!(dead.iter().all(|d| d.letter.pigeon_id.as_deref() == Some("hostile")));
            let budget = dead.iter().filter(|d| d.letter.error_message.contains("operation budget")).count();
            let breaker =
                dead.iter().filter(|d| d.letter.error_message.contains("circuit breaker open")).count();
            println!(
                "hostile beside healthy: {LETTERS} healthy letters through in {healthy_secs:.2}s; hostile letters: {budget} ran out of budget, {breaker} skipped by the open breaker"
            );
            assert!(breaker > 0, "the breaker opened");
            break;
        }
        assert!(Instant::now() < deadline, "{} of {LETTERS} hostile letters dead-lettered", dead.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bus.stop();
}
