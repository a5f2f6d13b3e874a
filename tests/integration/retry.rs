//! Dead letters retried by the retrier role: nothing lost when a destination broker goes down.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pigeon_bus::deadletter::{DeadLetterFilter, Status};
use pigeon_bus::route::DestinationSpec;
use pigeon_sdk::Letter;
use rdkafka::message::OwnedMessage;

use pigeon_bus::route::PigeonSpec;

use crate::support::{header, pigeon, Bus, Db, Kafka, Outgoing, TcpProxy};

const LETTERS: u64 = 20_000;
const PARTITIONS: i32 = 16;

/// The destination's broker goes down mid-stream: outputs time out and become dead letters,
/// the retrier redelivers them once it is back, and every letter arrives.
/// Two brokers: the source and the group on broker 1, the destination `dst` on broker 2, and
/// one pigeon `src` → `dst` retrying quickly, in SQLite.
async fn two_brokers() -> (Kafka, Db) {
    (two_broker_kafka(), Db::with_pigeons(&[retrying_pigeon()]).await)
}

fn two_broker_kafka() -> Kafka {
    let kafka = Kafka::new(2);
    kafka.topic("src", PARTITIONS);
    kafka.topic("dst", PARTITIONS);
    for p in 0..PARTITIONS {
        kafka.cluster.partition_leader("src", p, Some(1)).unwrap();
        kafka.cluster.partition_leader("dst", p, Some(2)).unwrap();
    }
    kafka.cluster.coordinator(rdkafka::mocking::MockCoordinator::Group("pigeon-router".into()), 1).unwrap();
    kafka
}

fn retrying_pigeon() -> PigeonSpec {
    let mut spec = pigeon("p", "src", "**", vec![DestinationSpec::topic("dst", "out")]);
    spec.retry = Some(["1s", "1s", "2s", "2s", "5s", "5s", "10s", "10s"].map(String::from).to_vec());
    spec
}

/// A config file in the test's folder; its path.
fn config_file(db: &Db, text: &str) -> String {
    let path = db.path(&format!("bus-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn letters() -> Vec<Letter> {
    (0..LETTERS)
        .map(|n| Letter::new("test", "in", serde_json::json!({ "n": n })).with_key(format!("k{}", n % 500)))
        .collect()
}

fn collect_all(kafka: &Kafka, letters: &[Letter]) -> (Vec<OwnedMessage>, HashMap<String, usize>) {
    kafka.collect_every(letters, "dst")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_broker_down_and_back_loses_nothing() {
    let (kafka, db) = two_brokers().await;
    let bus = Bus::start(&kafka, &db, &["-X", "producer.message.timeout.ms=2000"]);

    let letters = letters();
    let outgoing: Vec<Outgoing> = letters.iter().map(Outgoing::from).collect();
    let (first, rest) = outgoing.split_at(LETTERS as usize / 2);
    kafka.produce("src", first.iter().cloned());
    kafka.collect("dst", first.len(), Duration::ZERO);
    kafka.cluster.broker_down(2).unwrap();
    let down = Instant::now();
    kafka.produce("src", rest.iter().cloned());
    let deadline = Instant::now() + crate::support::DEADLINE;
    while bus.metrics()["pigeon_dead_letters_total"] == 0 {
        assert!(Instant::now() < deadline, "no output to the down broker was dead-lettered:\n{}", bus.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3).saturating_sub(down.elapsed()));
    kafka.cluster.broker_up(2).unwrap();
    let up = Instant::now();

    let (got, seen) = collect_all(&kafka, &letters);
    let retried = got.iter().filter(|m| header(m, "ce_attempt").is_some_and(|a| a != "1")).count();
    let metrics = bus.metrics();
    let dead = metrics["pigeon_dead_letters_total"];
    println!(
        "broker down {:.1}s: {dead} outputs dead-lettered, {} redelivered by the retrier, {retried} \
         arrived with ce_attempt > 1, all {LETTERS} arrived {:.1}s after it came back, {} duplicates",
        (up - down).as_secs_f64(),
        metrics["pigeon_retry_delivered_total"],
        up.elapsed().as_secs_f64(),
        got.len() - seen.len()
    );
    assert!(dead > 0, "the outage produced dead letters");
    assert!(retried > 0, "redeliveries say so with ce_attempt > 1");

    // Every dead letter ends delivered, with its history.
    let store = db.store().await;
    let deadline = Instant::now() + crate::support::DEADLINE;
    loop {
        let open = DeadLetterFilter { status: Some(Status::Pending), ..Default::default() };
        let pending = store.dead_letters(&open, None, 500).await.unwrap().len();
        let open = DeadLetterFilter { status: Some(Status::Retrying), ..Default::default() };
        let retrying = store.dead_letters(&open, None, 500).await.unwrap().len();
        let open = DeadLetterFilter { status: Some(Status::Parked), ..Default::default() };
        let parked = store.dead_letters(&open, None, 500).await.unwrap().len();
        assert_eq!(parked, 0, "nothing parked: the broker came back within the schedule");
        if pending + retrying == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} pending and {retrying} retrying dead letters left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let some = store.dead_letters(&DeadLetterFilter::default(), None, 1).await.unwrap();
    let history = store.dead_letter_attempts(some[0].id).await.unwrap();
    assert!(history.last().is_some_and(|a| a.message.contains("delivered to dst")), "{history:?}");
    bus.stop();
}

/// While the destination is down, its breaker stops the router from reading the source, so a
/// long outage costs a few thousand dead letters, not one per letter; once it is back, the
/// paused partitions flow again and nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_destination_breaker_pauses_the_source_until_the_destination_is_back() {
    let (kafka, db) = two_brokers().await;
    let config = config_file(&db, "[router]\nbreaker_failures = 20\nbreaker_probe_ms = 3000\n");
    let bus = Bus::start(&kafka, &db, &["--config", &config, "-X", "producer.message.timeout.ms=2000"]);

    let letters = letters();
    kafka.cluster.broker_down(2).unwrap();
    let down = Instant::now();
    // About 2,000 letters a second, for ten seconds, all while the destination is down.
    let producer = {
        let bootstrap = kafka.bootstrap.clone();
        let outgoing: Vec<Outgoing> = letters.iter().map(Outgoing::from).collect();
        std::thread::spawn(move || crate::support::produce(&bootstrap, "src", outgoing, Some(40)))
    };
    producer.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let during = bus.metrics();
    kafka.cluster.broker_up(2).unwrap();
    let outage = down.elapsed();

    let (got, seen) = collect_all(&kafka, &letters);
    let metrics = bus.metrics();
    let dead = metrics["pigeon_dead_letters_total"];
    println!(
        "destination down {:.1}s under {LETTERS} letters: {} read by the router and {} dead-lettered \
         while it was down ({dead} in all), {} duplicates",
        outage.as_secs_f64(),
        during["pigeon_router_letters_read_total"],
        during["pigeon_dead_letters_total"],
        got.len() - seen.len()
    );
    assert!(bus.log().contains("destination circuit breaker open"), "the breaker opened");
    assert!(
        during["pigeon_router_letters_read_total"] < LETTERS / 2,
        "the router kept reading a source whose destination was down"
    );
    assert!(dead < LETTERS / 2, "{dead} dead letters: the breaker did not hold the source back");
    assert!(bus.log().contains("destination circuit breaker closed"), "and closed again");
    bus.stop();
}

/// The store (MariaDB, behind a proxy) is cut while the router writes dead letters: the router
/// holds its offsets and keeps trying, and once the store is back every letter arrives.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_cut_while_dead_letters_are_written_loses_nothing() {
    let kafka = two_broker_kafka();
    let proxy = TcpProxy::start("127.0.0.1:3306");
    let db = Db::mariadb_with_pigeons(&[retrying_pigeon()], &proxy.addr).await;
    // No breaker: every letter of the outage becomes a dead letter to write. A claim the cut
    // interrupted (its outcome unknown) is taken over after a short lease.
    let config = config_file(
        &db,
        "[router]\nbreaker_failures = 0\n[retrier]\nlease_ms = 12000\ndelivery_timeout_ms = 2000\n",
    );
    let bus = Bus::start(&kafka, &db, &["--config", &config, "-X", "producer.message.timeout.ms=2000"]);

    let letters = letters();
    kafka.cluster.broker_down(2).unwrap();
    kafka.produce("src", letters.iter().map(Outgoing::from));
    crate::support::eventually("outputs to fail", || bus.metrics()["pigeon_dead_letters_total"] > 0);
    proxy.cut();
    let cut = Instant::now();
    crate::support::eventually("the writer to notice", || bus.log().contains("cannot store dead letters"));
    std::thread::sleep(Duration::from_secs(4));
    proxy.restore();
    let cut_for = cut.elapsed();
    kafka.cluster.broker_up(2).unwrap();

    let (got, seen) = collect_all(&kafka, &letters);
    let metrics = bus.metrics();
    println!(
        "store cut {:.1}s while {} outputs were dead-lettered: all {LETTERS} letters arrived, {} redelivered \
         by the retrier, {} taken over after a cut claim, {} duplicates",
        cut_for.as_secs_f64(),
        metrics["pigeon_dead_letters_total"],
        metrics["pigeon_retry_delivered_total"],
        metrics["pigeon_retry_taken_over_total"],
        got.len() - seen.len()
    );
    assert!(metrics["pigeon_retry_delivered_total"] > 0, "dead letters stored after the cut were retried");
    bus.stop();
    db.drop_mariadb().await;
}

/// Two retrier processes sweep the same due dead letters: each is delivered by one of them,
/// once.
#[tokio::test(flavor = "multi_thread")]
async fn two_retrier_processes_never_send_one_dead_letter_twice() {
    let (kafka, db) = two_brokers().await;
    let config = config_file(&db, "[router]\nbreaker_failures = 0\n[retrier]\nbatch = 200\n");
    let router = Bus::start(
        &kafka,
        &db,
        &["--config", &config, "--roles", "router,admin", "-X", "producer.message.timeout.ms=2000"],
    );
    let letters = letters();
    kafka.cluster.broker_down(2).unwrap();
    kafka.produce("src", letters.iter().map(Outgoing::from));
    let store = db.store().await;
    let deadline = Instant::now() + crate::support::DEADLINE;
    let pending = DeadLetterFilter { status: Some(Status::Pending), ..Default::default() };
    while store.dead_letters(&pending, None, 500).await.unwrap().len() < 500 {
        assert!(Instant::now() < deadline, "no dead letters stored:\n{}", router.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kafka.cluster.broker_up(2).unwrap();
    let retriers = [
        Bus::start(&kafka, &db, &["--config", &config, "--roles", "retrier"]),
        Bus::start(&kafka, &db, &["--config", &config, "--roles", "retrier"]),
    ];

    let (got, seen) = collect_all(&kafka, &letters);
    let all = DeadLetterFilter::default();
    let mut rows = Vec::new();
    let mut before = None;
    loop {
        let page = store.dead_letters(&all, before, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        rows.extend(page);
    }
    let delivered: Vec<u64> = retriers.iter().map(|r| r.metrics()["pigeon_retry_delivered_total"]).collect();
    println!(
        "{} dead letters, delivered by two retriers {delivered:?}, {} duplicates at the destination",
        rows.len(),
        got.len() - seen.len()
    );
    assert_eq!(delivered.iter().sum::<u64>(), rows.len() as u64, "each dead letter delivered once");
    assert_eq!(got.len(), seen.len(), "no letter sent twice");
    for retrier in retriers {
        assert_eq!(retrier.metrics()["pigeon_retry_taken_over_total"], 0);
        retrier.stop();
    }
    router.stop();
}

/// A module reports a handler failure on `pigeon.failed`: the bus stores it as a dead letter
/// and the retrier sends the letter to the module again, on the pigeon's schedule; a report
/// that does not say where the letter came from is parked, not dropped.
#[tokio::test(flavor = "multi_thread")]
async fn handler_failures_reported_by_modules_are_retried_to_the_module() {
    use pigeon_bus::failures::header as failed;
    let kafka = Kafka::new(1);
    kafka.topic("pigeon.failed", 4);
    kafka.topic("pigeon.module.act-toy", 4);
    let mut spec = pigeon(
        "gift-chest",
        "live.gift",
        "gift.sent",
        vec![DestinationSpec::capability("act-toy/chest.drop")],
    );
    spec.retry = Some(vec!["1s".into()]);
    let db = Db::with_pigeons(&[spec]).await;
    let bus = Bus::start(&kafka, &db, &["--roles", "retrier,admin"]);

    // What the module received, reported with the failure headers.
    let letter = Letter::new("live", "chest.drop", serde_json::json!({ "userId": 42 })).with_key("room-7");
    let mut report = Outgoing::from(&letter);
    for (name, value) in [
        ("ce_pigeon", "gift-chest"),
        (failed::TOPIC, "pigeon.module.act-toy"),
        (failed::MODULE, "act-toy"),
        (failed::ERROR, "chest service timed out"),
    ] {
        report.headers =
            report.headers.insert(rdkafka::message::Header { key: name, value: Some(value.as_bytes()) });
    }
    let mut bare = Outgoing::from(&letter);
    bare.headers =
        bare.headers.insert(rdkafka::message::Header { key: failed::ERROR, value: Some(b"oops".as_slice()) });
    kafka.produce("pigeon.failed", [report, bare]);

    let got = kafka.collect("pigeon.module.act-toy", 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1, "the failed letter is sent to the module once more");
    let again = &got[0];
    assert_eq!(header(again, "ce_id"), Some(letter.id.to_string()), "same letter id: the module can tell");
    assert_eq!(header(again, "ce_attempt").as_deref(), Some("2"));
    assert_eq!(header(again, failed::ERROR), None, "failure headers are not sent on");
    assert_eq!(rdkafka::Message::key(again), Some(b"room-7".as_slice()));
    assert_eq!(rdkafka::Message::payload(again), Some(letter.payload_bytes().as_slice()));

    let store = db.store().await;
    let deadline = Instant::now() + crate::support::DEADLINE;
    let rows = loop {
        let rows = store.dead_letters(&DeadLetterFilter::default(), None, 10).await.unwrap();
        if rows.iter().any(|d| d.status == Status::Delivered) {
            break rows;
        }
        assert!(Instant::now() < deadline, "the retry was never recorded: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kinds: Vec<(&str, Status)> = rows.iter().map(|d| (d.letter.error_kind.as_str(), d.status)).collect();
    assert_eq!(kinds, [("malformed", Status::Parked), ("handler", Status::Delivered)]);
    assert_eq!(rows[1].letter.error_message, "handler of act-toy failed: chest service timed out");
    bus.stop();
}

/// Kafka answers produce requests with retriable errors (the client retries them itself), then
/// with errors it cannot retry: those outputs become dead letters, the retrier delivers them,
/// and every letter arrives.
#[tokio::test(flavor = "multi_thread")]
async fn retriable_then_fatal_produce_errors_lose_nothing() {
    use rdkafka::types::RDKafkaApiKey;
    use rdkafka::types::RDKafkaRespErr;
    const RETRIABLE: usize = 20;
    const FATAL: usize = 10;
    let kafka = Kafka::new(1);
    kafka.topic("src", PARTITIONS);
    kafka.topic("dst", PARTITIONS);
    let db = Db::with_pigeons(&[retrying_pigeon()]).await;
    // The letters wait in the source, so the router's producer is the only one the injected
    // errors can hit.
    let letters = letters();
    kafka.produce("src", letters.iter().map(Outgoing::from));
    let mut errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; RETRIABLE];
    errors.extend([RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; FATAL]);
    kafka.cluster.request_errors(RDKafkaApiKey::Produce, &errors);
    let bus = Bus::start(&kafka, &db, &[]);

    let (got, seen) = collect_all(&kafka, &letters);
    let metrics = bus.metrics();
    let dead = metrics["pigeon_dead_letters_total"];
    println!(
        "{RETRIABLE} retriable then {FATAL} fatal produce errors: {dead} outputs dead-lettered, {} redelivered \
         by the retrier, {} duplicates",
        metrics["pigeon_retry_delivered_total"],
        got.len() - seen.len()
    );
    assert!(dead > 0, "the fatal errors dead-lettered outputs");
    assert!(metrics["pigeon_retry_delivered_total"] >= dead, "and the retrier delivered them");
    bus.stop();
}

/// An operator meets a parked script failure from the command line: lists it, reads it, fixes
/// its payload and redrives it; a second one is redriven after the pigeon's script is fixed,
/// through the pigeon's *current* version.
#[tokio::test(flavor = "multi_thread")]
async fn operators_fix_and_redrive_parked_script_failures_from_the_cli() {
    let kafka = Kafka::new(1);
    kafka.topic("live.gift", 4);
    kafka.topic("pigeon.module.act-toy", 4);
    let mut strict =
        pigeon("strict", "live.gift", "gift.sent", vec![DestinationSpec::capability("act-toy/progress.add")]);
    strict.action = pigeon_bus::route::Action::Script;
    strict.script = Some(r#"if payload.giftCount == () { throw "no giftCount" } payload"#.into());
    let db = Db::with_pigeons(&[strict.clone()]).await;
    let store = db.store().await;
    let token =
        pigeon::cli::tokens::create(store.as_ref(), "ops", pigeon_bus::token::Role::Operator, "tests")
            .await
            .unwrap();
    let bus = Bus::start(&kafka, &db, &[]);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(crate::support::pigeon_bin())
            .args(args)
            .env("PIGEON_URL", &bus.admin)
            .env("PIGEON_TOKEN", &token)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "pigeon {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };

    let first = Letter::new("live", "gift.sent", serde_json::json!({ "uid": 1 })).with_key("room-1");
    kafka.produce("live.gift", [Outgoing::from(&first)]);
    let deadline = Instant::now() + crate::support::DEADLINE;
    let parked = DeadLetterFilter { status: Some(Status::Parked), ..Default::default() };
    let id = loop {
        if let Some(d) = store.dead_letters(&parked, None, 1).await.unwrap().first() {
            break d.id;
        }
        assert!(Instant::now() < deadline, "the script failure was not parked:\n{}", bus.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let listed = cli(&["dead-letters", "list", "--status", "parked", "--kind", "script"]);
    assert!(listed.lines().any(|l| l.starts_with(&id.to_string()) && l.contains("strict")), "{listed}");
    let shown = cli(&["dead-letters", "show", &id.to_string()]);
    assert!(shown.contains("threw no giftCount") && shown.contains(r#""uid": 1"#), "{shown}");

    // Fix the payload and redrive: the retrier runs the pigeon on the fixed letter.
    let fixed = db.path("fixed.json");
    std::fs::write(&fixed, r#"{"uid": 1, "giftCount": 3}"#).unwrap();
    let edited = cli(&["dead-letters", "edit", &id.to_string(), "--payload", fixed.to_str().unwrap()]);
    assert!(edited.contains("payload replaced, 1 retry queued"), "{edited}");
    let got = kafka.collect("pigeon.module.act-toy", 1, Duration::ZERO);
    let out = pigeon_sdk::Letter::from_message(&got[0]).unwrap();
    assert_eq!(out.payload, serde_json::json!({ "uid": 1, "giftCount": 3 }));
    assert_eq!(header(&got[0], "ce_attempt").as_deref(), Some("2"));

    // Fix the script instead, then redrive by filter: the current version runs.
    let second = Letter::new("live", "gift.sent", serde_json::json!({ "uid": 2 })).with_key("room-1");
    kafka.produce("live.gift", [Outgoing::from(&second)]);
    crate::support::eventually("the second failure", || {
        cli(&["dead-letters", "list", "--status", "parked"]).lines().any(|l| l.contains("strict"))
    });
    strict.script = Some(r#"if payload.giftCount == () { payload.giftCount = 1; } payload"#.into());
    store.save_pigeon(&strict, "tests").await.unwrap();
    let retried = cli(&["dead-letters", "retry", "--filter", "pigeon=strict,status=parked"]);
    assert!(retried.contains("1 dead letter(s) queued for retry"), "{retried}");
    let got = kafka.collect("pigeon.module.act-toy", 2, Duration::ZERO);
    let payloads: Vec<serde_json::Value> =
        got.iter().map(|m| pigeon_sdk::Letter::from_message(m).unwrap().payload).collect();
    assert!(payloads.contains(&serde_json::json!({ "uid": 2, "giftCount": 1 })), "{payloads:?}");

    // The retrier records an outcome just after Kafka acknowledges it.
    crate::support::eventually("both recorded as delivered", || {
        let delivered = cli(&["dead-letters", "list", "--status", "delivered"]);
        delivered.lines().filter(|l| l.contains("strict")).count() == 2
    });
    let audit = store.audit(None, 3).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["dead_letter.retry", "pigeon.update", "dead_letter.retry"]);
    assert_eq!(audit[0].actor, "ops");
    bus.stop();
}
