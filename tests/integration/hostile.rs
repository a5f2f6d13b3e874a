//! Messages no well-behaved client writes, sent by an ordinary one: the bus goes on.

use std::time::Duration;

use pigeon_bus::route::DestinationSpec;
use pigeon_sdk::{Capability, Context, Letter, Module};
use rdkafka::message::Message;
use serde_json::json;
use tokio::sync::mpsc;

use crate::support::*;

const MODULE_TOPIC: &str = "pigeon.module.act-toy";
/// A header name no UTF-8 reader accepts.
const BAD_NAME: &[u8] = b"x-\xff\xfe-trace";

/// `letter` as a message carrying one more header whose name is not UTF-8 (rdkafka's producer
/// takes `&str` names; `pigeon_headers::add` writes the bytes through librdkafka's C API).
fn with_bad_header_name(letter: &Letter) -> Outgoing {
    let mut outgoing = Outgoing::from(letter);
    outgoing.headers = pigeon_headers::add(outgoing.headers, BAD_NAME, Some(b"kept"));
    outgoing
}

/// The bus is healthy, stops cleanly, and nothing in it panicked on the way.
fn up_all_along(bus: Bus) {
    assert_eq!(http_get(&bus.admin, "/healthz").map(|(s, _)| s), Some(200), "the bus is up");
    let log = bus.stop();
    assert!(!log.contains("panicked"), "{log}");
}

fn bad_header(message: &rdkafka::message::OwnedMessage) -> Option<Vec<u8>> {
    pigeon_headers::of(message).find(|h| h.name == BAD_NAME).and_then(|h| h.value).map(<[u8]>::to_vec)
}

/// rdkafka 0.39 panics reading a header name that is not UTF-8; the router, the flown-letter
/// path and the SDK's consumer read such a letter, copy the header byte for byte and go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_header_name_that_is_not_utf8_is_forwarded_untouched_and_nothing_stops() {
    let kafka = Kafka::new(1);
    for topic in
        ["live.gift", "pigeon.ingress", MODULE_TOPIC, "pigeon.registry", "pigeon.failed", "pigeon.receipts"]
    {
        kafka.topic(topic, 2);
    }
    let db = Db::with_pigeons(&[
        pigeon("gifts", "live.gift", "gift.sent", vec![DestinationSpec::capability("act-toy/chest.drop")]),
        pigeon(
            "flown",
            "pigeon.ingress",
            "progress.full",
            vec![DestinationSpec::capability("act-toy/chest.drop")],
        ),
    ])
    .await;
    let bus = Bus::start(&kafka, &db, &[]);

    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Letter>();
    let module = Module::builder("act-toy")
        .brokers(&kafka.bootstrap)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
        .capability(Capability::new("chest.drop", move |letter: Letter, _cx: Context| {
            let seen = seen_tx.clone();
            async move {
                let _ = seen.send(letter);
                Ok(())
            }
        }))
        .start()
        .await
        .expect("the module starts");

    let hostile = Letter::new("live", "gift.sent", serde_json::json!({"roomId": "r-1"})).with_key("r-1");
    let after = Letter::new("live", "gift.sent", serde_json::json!({"roomId": "r-2"})).with_key("r-2");
    kafka.produce("live.gift", [with_bad_header_name(&hostile), Outgoing::from(&after)]);
    let mut flown = Letter::new("act-toy", "progress.full", serde_json::json!({"roomId": "r-3"}));
    flown.pigeon = Some("flown".into());
    kafka.produce("pigeon.ingress", [with_bad_header_name(&flown)]);

    // Forwarded, the odd header copied byte for byte.
    let out = kafka.collect(MODULE_TOPIC, 3, Duration::from_millis(300));
    assert_eq!(out.len(), 3, "every letter once");
    for letter in [&hostile, &flown] {
        let message = out
            .iter()
            .find(|m| {
                header(m, "ce_id").is_some_and(|id| id != after.id.to_string())
                    && m.key() == letter.key.as_deref()
            })
            .unwrap_or_else(|| panic!("{} was not forwarded", letter.id));
        assert_eq!(bad_header(message).as_deref(), Some(&b"kept"[..]), "the header travels untouched");
    }
    // The module's handler gets all three: its consumer read the header too.
    let mut handled = Vec::new();
    for _ in 0..3 {
        let letter =
            tokio::time::timeout(DEADLINE, seen.recv()).await.expect("handled in time").expect("open");
        handled.push(letter.room_id().map(str::to_owned));
    }
    handled.sort();
    assert_eq!(handled, [Some("r-1".into()), Some("r-2".into()), Some("r-3".into())]);

    module.shutdown().await;
    up_all_along(bus);
}

/// A Kafka timestamp is any 64-bit number a client sets. Formatting `ce_time` for a foreign
/// letter of year 10000 or later panicked the router (humantime refuses such years); before the
/// epoch, the derived id and `ce_time` must not wrap either.
#[tokio::test(flavor = "multi_thread")]
async fn letters_of_any_timestamp_are_forwarded_and_the_router_goes_on() {
    let kafka = Kafka::new(1);
    kafka.topic("live.raw", 1);
    kafka.topic("lane.out", 1);
    let spec = pigeon(
        "raw",
        "live.raw",
        "**",
        vec![pigeon_bus::route::DestinationSpec::topic("lane.out", "raw.seen")],
    );
    let db = Db::with_pigeons(&[spec]).await;
    let config = db.path("bus.toml");
    std::fs::write(&config, "[sources.\"live.raw\"]\ntag_field = \"type\"\n").unwrap();
    let bus = Bus::start(&kafka, &db, &["-c", config.to_str().unwrap()]);
    let stamps = [i64::MAX, 253_402_300_800_000, 0, -1, i64::MIN, 1_700_000_000_000];
    let messages = stamps.iter().map(|ms| Outgoing {
        timestamp: Some(*ms),
        key: None,
        headers: rdkafka::message::OwnedHeaders::new(),
        payload: Some(format!(r#"{{"type":"x","ms":{ms}}}"#).into_bytes()),
    });
    kafka.produce("live.raw", messages);
    let out = kafka.collect("lane.out", stamps.len(), Duration::from_millis(300));
    assert_eq!(out.len(), stamps.len(), "every letter once");
    // Each ce_time is one RFC 3339 can write (a message without a timestamp gets none).
    for message in &out {
        let payload: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let sent = payload["ms"].as_i64().unwrap();
        let time = header(message, "ce_time");
        if let Some(time) = &time {
            assert!(pigeon_sdk::letter::parse_time(time).is_some(), "{sent}: {time}");
        }
        if sent >= 253_402_300_800_000 {
            assert_eq!(time.as_deref(), Some("9999-12-31T23:59:59.999Z"), "{sent}");
        }
    }
    up_all_along(bus);
}

/// Pigeons x→y and y→x would send a letter round for ever: each output counts a hop
/// (`ce_hops`), and the router parks a letter past the most, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn a_loop_of_pigeons_parks_the_letter_after_the_most_hops() {
    use pigeon_bus::deadletter::Status;
    use pigeon_bus::route::DestinationSpec;
    let kafka = Kafka::new(1);
    kafka.topic("ring.a", 1);
    kafka.topic("ring.b", 1);
    let db = Db::with_pigeons(&[
        pigeon("a-to-b", "ring.a", "ring.*", vec![DestinationSpec::topic("ring.b", "ring.b")]),
        pigeon("b-to-a", "ring.b", "ring.*", vec![DestinationSpec::topic("ring.a", "ring.a")]),
    ])
    .await;
    let bus = Bus::start(&kafka, &db, &[]);
    let letter = Letter::new("tests", "ring.start", serde_json::json!({"n": 1}));
    kafka.produce("ring.a", [Outgoing::from(&letter)]);
    let store = db.store().await;
    let rows = wait_dead_letters(store.as_ref(), |rows| !rows.is_empty()).await;
    assert_eq!(rows.len(), 1, "parked once");
    assert_eq!(rows[0].status, Status::Parked);
    assert!(
        rows[0].letter.error_message.contains("passed through 16 pigeons"),
        "{}",
        rows[0].letter.error_message
    );
    // The letter went round 16 times (the original, then 16 outputs), and no more.
    let a = kafka.collect("ring.a", 9, Duration::from_millis(500));
    let b = kafka.collect("ring.b", 8, Duration::from_millis(500));
    assert_eq!((a.len(), b.len()), (9, 8));
    let most =
        a.iter().chain(&b).filter_map(|m| header(m, "ce_hops")).filter_map(|h| h.parse::<u32>().ok()).max();
    assert_eq!(most, Some(16));
    bus.stop();
}

/// A panic while handling one letter (a bug not found yet; injected here by tag) parks that
/// letter as a dead letter of kind `internal` with the panic's message, whole; the router and
/// its script workers go on with the next letters, and no role is started again.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_while_handling_a_letter_parks_it_as_internal_and_the_router_goes_on() {
    use pigeon_bus::deadletter::{ErrorKind, Status};
    use pigeon_bus::route::Action;
    let kafka = Kafka::new(1);
    kafka.topic("live.in", 1);
    kafka.topic("lane.fwd", 1);
    kafka.topic("lane.script", 1);
    let mut scripted =
        pigeon("scripted", "live.in", "s.*", vec![DestinationSpec::topic("lane.script", "s.out")]);
    scripted.action = Action::Script;
    scripted.script = Some("payload".into());
    let mut kept = pigeon("kept", "live.in", "a.*", Vec::new());
    kept.action = Action::Archive;
    let db = Db::with_pigeons(&[
        pigeon("forwarded", "live.in", "f.*", vec![DestinationSpec::topic("lane.fwd", "f.out")]),
        scripted,
        kept,
    ])
    .await;
    let bus = Bus::start_with_env(&kafka, &db, &[], &[("PIGEON_FAULT_PANIC_TAGS", "f.boom,s.boom,a.boom")]);
    // Around each letter that panics, good ones of the same partition.
    let tags = ["f.ok", "f.boom", "s.ok", "s.boom", "f.ok", "s.ok", "a.ok", "a.boom", "a.ok"];
    let letters: Vec<Letter> = tags
        .iter()
        .enumerate()
        .map(|(n, tag)| Letter::new("tests", *tag, serde_json::json!({ "n": n })))
        .collect();
    kafka.produce("live.in", letters.iter().map(Outgoing::from));
    let forwarded = kafka.collect("lane.fwd", 2, Duration::from_millis(300));
    let scripted = kafka.collect("lane.script", 2, Duration::from_millis(300));
    let ns = |out: &[rdkafka::message::OwnedMessage]| -> Vec<i64> {
        out.iter()
            .map(|m| {
                serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(ns(&forwarded), [0, 4], "the good forwarded letters, and only them");
    assert_eq!(ns(&scripted), [2, 5], "the good scripted letters, and only them");

    let store = db.store().await;
    let rows = wait_dead_letters(store.as_ref(), |rows| rows.len() >= 3).await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for (boomed, pigeon) in
        [(&letters[1], None), (&letters[3], Some("scripted")), (&letters[7], Some("kept"))]
    {
        let row = rows.iter().find(|r| r.letter.letter_id == boomed.id.to_string()).expect("its dead letter");
        assert_eq!(row.letter.error_kind, ErrorKind::Internal);
        assert_eq!(row.status, Status::Parked, "a bug is not retried");
        assert!(row.letter.error_message.contains("injected fault"), "{}", row.letter.error_message);
        assert_eq!(row.letter.pigeon_id.as_deref(), pigeon);
        let payload: serde_json::Value =
            serde_json::from_slice(row.letter.payload.as_deref().unwrap()).unwrap();
        assert_eq!(payload, boomed.payload, "kept whole");
    }
    let query = pigeon_bus::archive::ArchiveQuery { since: 0, until: i64::MAX, ..Default::default() };
    let archived = store.archive().archived(&query, None, 100).await.unwrap();
    let mut archived: Vec<String> = archived.iter().map(|a| a.letter_id.clone()).collect();
    archived.sort();
    let mut good = vec![letters[6].id.to_string(), letters[8].id.to_string()];
    good.sort();
    assert_eq!(archived, good, "the good letters are archived, the one that panicked is not");
    // The partition's offsets move past the parked letters: nothing waits on them.
    eventually("the router's offset is committed past every letter", || {
        kafka.committed(ROUTER_GROUP, "live.in", 0) == tags.len() as i64
    });
    eventually("the archiver's offset is committed past every letter", || {
        kafka.committed(ARCHIVER_GROUP, "live.in", 0) == tags.len() as i64
    });
    let (status, body) = http_get(&bus.admin, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"), "no role went down");
    bus.stop();
}

/// A letter the archive's database refuses for good (here a trigger refuses it, as a column
/// type or a rule of the database might) is not retried for ever holding the partition: the
/// batch goes one by one, the others are archived, and the refused one is parked as a dead
/// letter saying why; the archiver's offset moves past it.
#[tokio::test(flavor = "multi_thread")]
async fn a_letter_the_archive_refuses_for_good_is_parked_and_the_others_are_archived() {
    use pigeon_bus::deadletter::Status;
    use pigeon_bus::route::Action;
    let kafka = Kafka::new(1);
    kafka.topic("live.kept", 1);
    let mut kept = pigeon("kept", "live.kept", "**", Vec::new());
    kept.action = Action::Archive;
    // The router is healthy once it consumes: a forward pigeon gives it a topic.
    let side = pigeon("side", "live.kept", "side.*", vec![DestinationSpec::topic("lane.side", "side")]);
    let db = Db::with_pigeons(&[kept, side]).await;
    refuse_poison_on_sqlite(&db.url, "archived_letters").await;
    let bus = Bus::start(&kafka, &db, &[]);
    let letters = [json!({"n": 0}), json!({"n": 1, "poison": true}), json!({"n": 2})]
        .map(|payload| Letter::new("tests", "gift.sent", payload));
    kafka.produce("live.kept", letters.iter().map(Outgoing::from));
    eventually("the archiver's offset is committed past every letter", || {
        kafka.committed(ARCHIVER_GROUP, "live.kept", 0) == 3
    });
    let store = db.store().await;
    let query = pigeon_bus::archive::ArchiveQuery { since: 0, until: i64::MAX, ..Default::default() };
    let archived = store.archive().archived(&query, None, 100).await.unwrap();
    let mut ids: Vec<&str> = archived.iter().map(|a| a.letter_id.as_str()).collect();
    ids.sort_unstable();
    let mut good = [letters[0].id.to_string(), letters[2].id.to_string()];
    good.sort();
    assert_eq!(ids, good, "the others are archived");
    let rows = wait_dead_letters(store.as_ref(), |rows| !rows.is_empty()).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let parked = &rows[0];
    assert_eq!(parked.letter.letter_id, letters[1].id.to_string());
    assert_eq!(parked.status, Status::Parked);
    assert!(
        parked.letter.error_message.contains("the archive refused the letter"),
        "{}",
        parked.letter.error_message
    );
    assert!(parked.letter.error_message.contains("poisoned payload"), "{}", parked.letter.error_message);
    up_all_along(bus);
}
