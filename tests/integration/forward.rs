//! The forward path end to end: letters in, letters out, on a mock cluster.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pigeon_bus::route::DestinationSpec;
use pigeon_sdk::Letter;
use rdkafka::message::{Header, Message, OwnedHeaders};

use crate::support::*;

fn gift(n: u64, room: &str) -> Letter {
    Letter::new("live-platform", "gift.sent", serde_json::json!({"userId": n, "roomId": room, "giftId": 7}))
        .with_key(room)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_letter_flies_to_both_destinations_with_their_tags() {
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
    let secret = "s3cret-do-not-log";
    let bus = Bus::start(&kafka, &db, &["-X", &format!("sasl.password={secret}")]);

    let letters: Vec<Letter> = (0..200).map(|n| gift(n, &format!("room-{}", n % 7))).collect();
    let mut outgoing: Vec<Outgoing> = letters.iter().map(Outgoing::from).collect();
    // A custom header travels along untouched.
    outgoing[0].headers = letters[0].headers().insert(Header { key: "x-trace", value: Some("abc") });
    // Letters with another tag are not this pigeon's.
    let others: Vec<Letter> =
        (0..50).map(|n| Letter::new("p", "follow.new", serde_json::json!({"n": n}))).collect();
    outgoing.extend(others.iter().map(Outgoing::from));
    kafka.produce("live.gift", outgoing);

    let sent: HashMap<String, &Letter> = letters.iter().map(|l| (l.id.to_string(), l)).collect();
    for (topic, tag) in [("pigeon.module.act-toy", "progress.add"), ("lane.audit", "audit.gift")] {
        let got = kafka.collect(topic, 200, Duration::from_millis(500));
        assert_eq!(got.len(), 200, "{topic}: every gift once, nothing else");
        for m in &got {
            let id = header(m, "ce_id").expect("ce_id");
            let original = sent.get(&id).unwrap_or_else(|| panic!("{topic}: unknown letter {id}"));
            assert_eq!(header(m, "ce_type").as_deref(), Some(tag));
            assert_eq!(header(m, "ce_pigeon").as_deref(), Some("gift-fanout"));
            assert_eq!(header(m, "ce_attempt").as_deref(), Some("1"));
            assert_eq!(header(m, "ce_source").as_deref(), Some("live-platform"));
            assert_eq!(m.key(), original.key.as_deref(), "the partition key is kept");
            assert_eq!(m.payload(), Some(original.payload_bytes().as_slice()), "the payload is untouched");
            let decoded = Letter::from_message(m).expect("an output is a valid letter");
            assert_eq!(decoded.tag, tag);
        }
        let traced = got.iter().find(|m| header(m, "ce_id") == Some(letters[0].id.to_string())).unwrap();
        assert_eq!(header(traced, "x-trace").as_deref(), Some("abc"));
    }
    let log = bus.stop();
    assert!(!log.contains(secret), "a secret reached the log");
    assert!(log.contains("sasl.password=***"), "the redacted property is shown");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_key_order_holds_over_20000_letters_with_many_in_flight() {
    const LETTERS: u64 = 20_000;
    const KEYS: u64 = 100;
    let kafka = Kafka::new(1);
    kafka.topic("live.gift", 16);
    kafka.topic("pigeon.module.act-toy", 16);
    let db = Db::with_pigeons(&[pigeon(
        "order",
        "live.gift",
        "gift.*",
        vec![DestinationSpec::capability("act-toy/progress.add")],
    )])
    .await;
    let bus = Bus::start(&kafka, &db, &["-X", "producer.linger.ms=20"]);

    let letters = (0..LETTERS).map(|n| {
        let key = format!("room-{}", n % KEYS);
        let letter =
            Letter::new("t", "gift.sent", serde_json::json!({"seq": n / KEYS, "roomId": key})).with_key(key);
        Outgoing::from(&letter)
    });
    kafka.produce("live.gift", letters);

    let got = kafka.collect("pigeon.module.act-toy", LETTERS as usize, Duration::from_millis(500));
    let distinct: HashSet<String> = got.iter().filter_map(|m| header(m, "ce_id")).collect();
    assert_eq!(distinct.len(), LETTERS as usize, "every letter arrived");
    assert_eq!(got.len(), LETTERS as usize, "no duplicates without faults");
    // Messages of one key share a partition; within it they must come in the source order.
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut violations = 0;
    for m in &got {
        let seq = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap()["seq"]
            .as_i64()
            .unwrap();
        let previous = last.insert(m.key().unwrap().to_vec(), seq);
        if previous.is_some_and(|p| p >= seq) {
            violations += 1;
        }
    }
    assert_eq!(violations, 0, "per-key order violations");
    assert_eq!(last.len(), KEYS as usize);
    // Acknowledgements are counted in delivery reports, which may come a moment later.
    eventually("every output counted", || bus.metrics()["pigeon_letters_out_total"] >= LETTERS);
    let metrics = bus.metrics();
    assert!(metrics["pigeon_in_flight_peak"] > 1, "letters were forwarded one at a time: {metrics:?}");
    assert_eq!(metrics["pigeon_letters_out_total"], LETTERS);
    bus.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_are_forwarded_or_dead_lettered_never_stall() {
    let kafka = Kafka::new(1);
    for topic in ["live.gift", "legacy.gift", "pigeon.module.act-toy"] {
        kafka.topic(topic, 1);
    }
    let db = Db::with_pigeons(&[
        pigeon("ce", "live.gift", "gift.sent", vec![DestinationSpec::capability("act-toy/progress.add")]),
        pigeon("legacy", "legacy.gift", "gift", vec![DestinationSpec::capability("act-toy/legacy.add")]),
    ])
    .await;
    std::fs::write(db.path("bus.toml"), "[sources.\"legacy.gift\"]\ntag_field = \"event\"\n").unwrap();
    let config = db.path("bus.toml");
    let bus = Bus::start(&kafka, &db, &["--config", config.to_str().unwrap()]);

    let with_tag = |tag: &str, extra: Option<(&str, &[u8])>| {
        let mut h = OwnedHeaders::new().insert(Header { key: "ce_type", value: Some(tag) });
        if let Some((key, value)) = extra {
            h = h.insert(Header { key, value: Some(value) });
        }
        h
    };
    let huge = vec![b'x'; 900_000];
    kafka.produce(
        "live.gift",
        [
            // Not JSON, but this pigeon does not read the payload: forwarded.
            Outgoing {
                timestamp: None,
                key: None,
                headers: with_tag("gift.sent", None),
                payload: Some(b"\x00\xffnot json".to_vec()),
            },
            // Unknown headers travel along.
            Outgoing {
                timestamp: None,
                key: Some(b"k".to_vec()),
                headers: with_tag("gift.sent", Some(("x-unknown", b"\x01\x02"))),
                payload: Some(b"{}".to_vec()),
            },
            // Huge, within the broker's limit: forwarded.
            Outgoing {
                timestamp: None,
                key: None,
                headers: with_tag("gift.sent", None),
                payload: Some(huge.clone()),
            },
            // No tag at all: dead-lettered, with the reason.
            Outgoing {
                timestamp: None,
                key: None,
                headers: OwnedHeaders::new(),
                payload: Some(b"{}".to_vec()),
            },
            // An empty (tombstone) payload is still a letter to forward.
            Outgoing {
                timestamp: None,
                key: Some(b"k".to_vec()),
                headers: with_tag("gift.sent", None),
                payload: None,
            },
        ],
    );
    kafka.produce(
        "legacy.gift",
        [
            Outgoing {
                timestamp: None,
                key: None,
                headers: OwnedHeaders::new(),
                payload: Some(br#"{"event":"gift","uid":1}"#.to_vec()),
            },
            Outgoing {
                timestamp: None,
                key: None,
                headers: OwnedHeaders::new(),
                payload: Some(b"not json at all".to_vec()),
            },
            Outgoing {
                timestamp: None,
                key: None,
                headers: OwnedHeaders::new(),
                payload: Some(br#"{"uid":2}"#.to_vec()),
            },
        ],
    );

    let got = kafka.collect("pigeon.module.act-toy", 5, Duration::from_millis(500));
    assert_eq!(got.len(), 5, "four forwarded from live.gift, one from legacy.gift");
    let tags: Vec<String> = got.iter().filter_map(|m| header(m, "ce_type")).collect();
    assert_eq!(tags.iter().filter(|t| *t == "progress.add").count(), 4);
    assert!(got.iter().any(|m| m.payload() == Some(b"\x00\xffnot json".as_slice())));
    assert!(got.iter().any(|m| m.payload().map(<[u8]>::len) == Some(huge.len())));
    assert!(got.iter().any(|m| header(m, "x-unknown").is_some()));
    let legacy = got.iter().find(|m| header(m, "ce_type").as_deref() == Some("legacy.add")).unwrap();
    assert_eq!(header(legacy, "ce_source").as_deref(), Some("legacy.gift"), "a foreign letter gets a source");
    let derived = header(legacy, "ce_id").expect("a foreign letter gets a derived id");
    assert_eq!(derived.parse::<pigeon_sdk::LetterId>().unwrap().as_uuid().get_version_num(), 7);

    let store = db.store().await;
    let deadline = std::time::Instant::now() + DEADLINE;
    let dead = loop {
        let dead = store.dead_letters(&Default::default(), None, 500).await.unwrap();
        if dead.len() >= 3 {
            break dead;
        }
        assert!(std::time::Instant::now() < deadline, "only {} dead letters:\n{}", dead.len(), bus.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reasons: Vec<(String, String)> =
        dead.iter().map(|d| (d.letter.source_topic.clone(), d.letter.error_message.clone())).collect();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    for (topic, reason) in [
        ("legacy.gift", "payload is not a JSON object"),
        ("legacy.gift", "no tag: JSON field \"event\" is missing"),
        ("live.gift", "no tag: header ce_type is missing"),
    ] {
        assert!(
            reasons.iter().any(|(t, r)| t == topic && r.contains(reason)),
            "{topic}: {reason} in {reasons:?}"
        );
    }
    assert!(dead.iter().all(|d| d.letter.payload.is_some()), "the message is kept whole");
    bus.stop();
}
