//! The SDK end to end: a module in this process, the bus as a child process, both on a mock
//! cluster; registration, delivery through pigeons, fly and fly_sync, failures and order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pigeon_bus::deadletter::{ErrorKind, Status};
use pigeon_bus::route::DestinationSpec;
use pigeon_bus::token::Role;
use pigeon_sdk::{Capability, Context, FlyError, HandlerResult, Letter, Module, ModuleBuilder, Retry};
use tokio::sync::mpsc;

use crate::support::{pigeon, wait_dead_letters, Bus, Db, Kafka, Outgoing, DEADLINE};

const MODULE_TOPIC: &str = "pigeon.module.act-toy";

fn topics(kafka: &Kafka) {
    for topic in
        ["pigeon.registry", "pigeon.ingress", "pigeon.failed", "pigeon.receipts", MODULE_TOPIC, "live.gift"]
    {
        kafka.topic(topic, 4);
    }
}

/// A module with quick group joins, as every test module needs.
fn fast(builder: ModuleBuilder, kafka: &Kafka) -> ModuleBuilder {
    builder
        .brokers(&kafka.bootstrap)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
        .heartbeat(Duration::from_millis(500))
        .drain_timeout(Duration::from_secs(10))
}

/// A capability whose handler sends every letter it gets to `seen`.
fn recording(name: &str, seen: mpsc::UnboundedSender<Letter>) -> Capability {
    Capability::new(name, move |letter: Letter, _cx: Context| {
        let seen = seen.clone();
        async move {
            let _ = seen.send(letter);
            Ok(())
        }
    })
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Letter>, what: &str) -> Letter {
    tokio::time::timeout(DEADLINE, seen.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no letter reached the handler"))
        .expect("handler channel open")
}

/// The providers the API lists.
async fn providers(bus: &Bus, token: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/providers", bus.admin))
        .bearer_auth(token)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

/// Polls the providers until `check` holds, failing at the deadline; prints how long it took.
async fn wait_for_providers(bus: &Bus, token: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let started = Instant::now();
    loop {
        let list = providers(bus, token).await;
        if check(&list) {
            println!("{what}: after {:?}", started.elapsed());
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{what}: never happened; providers: {list:#}\n{}", bus.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn instance_state(list: &serde_json::Value, module: &str) -> Option<String> {
    let provider = list.as_array()?.iter().find(|p| p["module"] == module)?;
    provider["instances"][0]["state"].as_str().map(str::to_owned)
}

async fn tokens(db: &Db) -> (String, String) {
    let store = db.store().await;
    let viewer = pigeon::cli::tokens::create(store.as_ref(), "ops", Role::Viewer, "tests").await.unwrap();
    let module = pigeon::cli::tokens::create(store.as_ref(), "act-toy", Role::Module, "tests").await.unwrap();
    (viewer, module)
}

/// Registration, delivery through a pigeon, fly, fly_sync and liveness, on one store.
async fn a_module_lives_on_the_bus(db: &Db) {
    let kafka = Kafka::new(1);
    topics(&kafka);
    let (viewer, module_token) = tokens(db).await;
    let bus = Bus::start(&kafka, db, &[]);

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let module = fast(Module::builder("act-toy"), &kafka)
        .version("9.9")
        .capability(
            recording("chest.drop", seen_tx.clone())
                .describe("Drops a treasure chest")
                .requires([pigeon_sdk::fields::ROOM_ID]),
        )
        .capability(recording("progress.add", seen_tx))
        .bus(&bus.admin, &module_token)
        .start()
        .await
        .expect("the module starts");

    // Registered: live, with both capabilities as destinations.
    wait_for_providers(&bus, &viewer, "registered and live", |list| {
        instance_state(list, "act-toy").as_deref() == Some("live")
            && list[0]["capabilities"].as_array().is_some_and(|c| c.len() == 2)
    })
    .await;
    let list = providers(&bus, &viewer).await;
    let toy = &list[0];
    assert_eq!(toy["topic"], MODULE_TOPIC);
    assert_eq!(toy["instances"][0]["version"], "9.9");
    assert_eq!(toy["instances"][0]["instance"], module.instance());
    let chest = toy["capabilities"].as_array().unwrap().iter().find(|c| c["name"] == "chest.drop").unwrap();
    assert_eq!(chest["destination"], "act-toy/chest.drop");
    assert_eq!(chest["description"], "Drops a treasure chest");
    assert_eq!(chest["requires"], serde_json::json!(["roomId"]));
    assert_eq!(chest["online"], true);

    // A pigeon wired to the capability (saved after the module registered, through the API)
    // delivers gifts to its handler.
    let store = db.store().await;
    let wired = pigeon(
        "gift-chest",
        "live.gift",
        "gift.sent",
        vec![DestinationSpec::capability("act-toy/chest.drop")],
    );
    store.save_pigeon(&wired, "tests").await.unwrap();
    let flown = pigeon(
        "full-chest",
        "pigeon.ingress",
        "progress.full",
        vec![DestinationSpec::capability("act-toy/chest.drop")],
    );
    store.save_pigeon(&flown, "tests").await.unwrap();
    // Saved straight into the store, with no notice on pigeon.control: restart the bus rather
    // than wait for its version check.
    // Same address, so the module's fly_sync reaches the restarted bus.
    let listen = bus.admin.trim_start_matches("http://").to_owned();
    bus.stop();
    let bus = Bus::start(&kafka, db, &["--listen", &listen]);

    let gift =
        Letter::build("gift.sent").source("live").user_id(7).room_id("r-1").gift_count(3).key("r-1").finish();
    kafka.produce("live.gift", [Outgoing::from(&gift)]);
    let got = next(&mut seen, "forwarded gift").await;
    assert_eq!((got.tag.as_str(), got.id), ("chest.drop", gift.id));
    assert_eq!(got.pigeon.as_deref(), Some("gift-chest"));
    assert_eq!((got.user_id(), got.room_id(), got.gift_count()), (Some(7), Some("r-1"), Some(3)));
    assert_eq!(got.key.as_deref(), Some(b"r-1".as_slice()));

    // fly → pigeon.ingress → router → the pigeon's destination → handler.
    let full = module.letter("progress.full").room_id("r-1").score(20).key("r-1").finish();
    let id = module.fly("full-chest", full.clone()).await.expect("fly");
    let got = next(&mut seen, "flown letter").await;
    assert_eq!((got.id, got.tag.as_str(), got.source.as_str()), (id, "chest.drop", "act-toy"));
    assert_eq!((got.pigeon.as_deref(), got.score()), (Some("full-chest"), Some(20)));

    // fly_sync: the receipt names the acknowledged destination, and the handler gets it.
    let again = module.letter("progress.full").room_id("r-2").finish();
    let receipt = module.fly_sync("full-chest", again.clone()).await.expect("fly_sync");
    assert!(receipt.is_complete(), "{receipt:?}");
    assert_eq!((receipt.pigeon.as_str(), receipt.letter_id.clone()), ("full-chest", again.id.to_string()));
    assert_eq!(receipt.delivered.len(), 1);
    assert_eq!(
        (receipt.delivered[0].topic.as_str(), receipt.delivered[0].tag.as_str()),
        (MODULE_TOPIC, "chest.drop")
    );
    let got = next(&mut seen, "fly_sync letter").await;
    assert_eq!((got.id.to_string(), got.room_id()), (receipt.delivered[0].id.clone(), Some("r-2")));
    match module.fly_sync("no-such-pigeon", again.clone()).await {
        Err(FlyError::Refused { status: 404, message }) => {
            assert!(message.contains("no-such-pigeon"), "{message}")
        }
        other => panic!("flying to an unknown pigeon: {other:?}"),
    }

    // A letter flown to an unknown pigeon is not lost: it is parked, naming the pigeon.
    let lost = module.letter("progress.full").room_id("r-3").finish();
    module.fly("no-such-pigeon", lost.clone()).await.unwrap();
    let dead = wait_dead_letters(store.as_ref(), |rows| !rows.is_empty()).await;
    assert_eq!(dead[0].letter.letter_id, lost.id.to_string());
    assert_eq!(dead[0].letter.pigeon_id.as_deref(), Some("no-such-pigeon"));
    assert_eq!((dead[0].letter.error_kind, dead[0].status), (ErrorKind::Malformed, Status::Parked));
    assert!(
        dead[0].letter.error_message.contains("unknown, disabled or outside its live window"),
        "{}",
        dead[0].letter.error_message
    );

    // A second instance that dies without a word goes stale after three missed heartbeats;
    // the first, shut down, says it left.
    let ghost = fast(Module::builder("act-ghost"), &kafka).start().await.unwrap();
    wait_for_providers(&bus, &viewer, "ghost registered", |l| {
        instance_state(l, "act-ghost").as_deref() == Some("live")
    })
    .await;
    drop(ghost);
    wait_for_providers(&bus, &viewer, "ghost stale", |l| {
        instance_state(l, "act-ghost").as_deref() == Some("stale")
    })
    .await;
    module.shutdown().await;
    wait_for_providers(&bus, &viewer, "act-toy left", |l| {
        instance_state(l, "act-toy").as_deref() == Some("left")
    })
    .await;
    let list = providers(&bus, &viewer).await;
    assert!(
        list[0]["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["online"] == false && c["retired_at"].is_null()),
        "a stopped module keeps its capabilities, offline: {list:#}"
    );
    bus.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_lives_on_the_bus_with_sqlite() {
    a_module_lives_on_the_bus(&Db::with_pigeons(&[]).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_lives_on_the_bus_with_mariadb() {
    let db = Db::mariadb_with_pigeons(&[], "127.0.0.1:3306").await;
    a_module_lives_on_the_bus(&db).await;
    db.drop_mariadb().await;
}

/// A handler that fails is tried in process, then reported; the bus stores a dead letter and
/// its retrier sends the letter again, which then succeeds. A letter whose tag has no handler
/// is reported the same way, not dropped.
#[tokio::test(flavor = "multi_thread")]
async fn handler_failures_and_unknown_tags_become_dead_letters() {
    let kafka = Kafka::new(1);
    topics(&kafka);
    let mut wired = pigeon(
        "gift-chest",
        "live.gift",
        "gift.sent",
        vec![DestinationSpec::capability("act-toy/chest.drop")],
    );
    wired.retry = Some(vec!["1s".into()]);
    let db = Db::with_pigeons(&[wired]).await;
    let bus = Bus::start(&kafka, &db, &[]);

    let tries = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let counted = Arc::clone(&tries);
    let flaky = Capability::new("chest.drop", move |letter: Letter, _cx: Context| {
        let counted = Arc::clone(&counted);
        let done = done_tx.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            if letter.attempt == 1 {
                return Err("the chest service timed out".into());
            }
            let _ = done.send(letter);
            HandlerResult::Ok(())
        }
    });
    let module = fast(Module::builder("act-toy"), &kafka)
        .capability(flaky)
        .retry(Retry::new(3, Duration::from_millis(50)))
        .start()
        .await
        .unwrap();

    let gift = Letter::build("gift.sent").source("live").user_id(1).room_id("r-9").key("r-9").finish();
    kafka.produce("live.gift", [Outgoing::from(&gift)]);
    // Straight onto the module topic: a tag the module has no handler for.
    let stray = Letter::build("banner.show").source("someone").room_id("r-9").finish();
    kafka.produce(MODULE_TOPIC, [Outgoing::from(&stray)]);

    let redelivered = next(&mut done, "the retried letter").await;
    assert_eq!((redelivered.id, redelivered.attempt), (gift.id, 2));
    assert_eq!(tries.load(Ordering::SeqCst), 4, "three tries in process, then one after the bus's retry");

    let store = db.store().await;
    let rows = wait_dead_letters(store.as_ref(), |rows| {
        rows.len() == 2 && rows.iter().any(|d| d.status == Status::Delivered)
    })
    .await;
    let handler =
        rows.iter().find(|d| d.letter.letter_id == gift.id.to_string()).expect("the handler failure");
    assert_eq!((handler.letter.error_kind, handler.status), (ErrorKind::Handler, Status::Delivered));
    assert!(
        handler.letter.error_message.contains("the chest service timed out (after 3 tries)"),
        "{}",
        handler.letter.error_message
    );
    assert_eq!(handler.letter.pigeon_id.as_deref(), Some("gift-chest"));
    let unknown = rows.iter().find(|d| d.letter.letter_id == stray.id.to_string()).expect("the unknown tag");
    assert_eq!(unknown.letter.error_kind, ErrorKind::Handler);
    assert!(
        unknown.letter.error_message.contains("has no capability \"banner.show\" (it has: chest.drop)"),
        "{}",
        unknown.letter.error_message
    );
    module.shutdown().await;
    bus.stop();
}

/// Letters of one key reach the handler in order even with many handled at once; after a
/// graceful shutdown every offset is committed.
#[tokio::test(flavor = "multi_thread")]
async fn letters_of_one_key_keep_their_order_with_concurrency() {
    const KEYS: usize = 20;
    const PER_KEY: usize = 100;
    let kafka = Kafka::new(1);
    topics(&kafka);
    let letters: Vec<Letter> = (0..PER_KEY)
        .flat_map(|seq| {
            (0..KEYS).map(move |k| {
                Letter::build("progress.add")
                    .source("t")
                    .room_id(format!("r-{k}"))
                    .score(seq as i64)
                    .key(format!("r-{k}"))
                    .finish()
            })
        })
        .collect();
    kafka.produce(MODULE_TOPIC, letters.iter().map(Outgoing::from));

    let seen: Arc<Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
    let (busy, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (seen2, busy2, peak2) = (Arc::clone(&seen), Arc::clone(&busy), Arc::clone(&peak));
    let progress = Capability::new("progress.add", move |letter: Letter, _cx: Context| {
        let (seen, busy, peak) = (Arc::clone(&seen2), Arc::clone(&busy2), Arc::clone(&peak2));
        async move {
            let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_micros(200 + (letter.score().unwrap_or(0) as u64 % 7) * 300))
                .await;
            seen.lock()
                .unwrap()
                .entry(letter.room_id().unwrap().to_owned())
                .or_default()
                .push(letter.score().unwrap());
            busy.fetch_sub(1, Ordering::SeqCst);
            HandlerResult::Ok(())
        }
    });
    let module =
        fast(Module::builder("act-toy"), &kafka).capability(progress).concurrency(8).start().await.unwrap();
    let started = Instant::now();
    loop {
        let handled: usize = seen.lock().unwrap().values().map(Vec::len).sum();
        if handled >= KEYS * PER_KEY {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "only {handled} letters handled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{} letters handled in {:?}, at most {} at once",
        KEYS * PER_KEY,
        started.elapsed(),
        peak.load(Ordering::SeqCst)
    );
    module.shutdown().await;

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), KEYS);
    for (key, scores) in seen.iter() {
        assert_eq!(*scores, (0..PER_KEY as i64).collect::<Vec<_>>(), "{key}: out of order or repeated");
    }
    assert!(peak.load(Ordering::SeqCst) > 1, "letters were handled concurrently");
    let committed: i64 = (0..4).map(|p| kafka.committed(MODULE_TOPIC, MODULE_TOPIC, p).max(0)).sum();
    assert_eq!(committed as usize, KEYS * PER_KEY, "every handled letter is committed");
}
