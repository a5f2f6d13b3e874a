//! The archive path end to end: the archiver role against a mock cluster and MariaDB or
//! SQLite, and replay jobs through the admin API.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use pigeon_bus::route::{Action, PigeonSpec};
use pigeon_bus::token::Role;
use pigeon_sdk::Letter;
use rdkafka::message::{Headers, Message, OwnedMessage};
use serde_json::json;
use sqlx::Connection as _;

use crate::support::*;

const SOURCE: &str = "live.gift";
const PARTITIONS: i32 = 16;

/// An archive pigeon of `live.gift`, tags `gift.*`.
fn archive_pigeon(id: &str, filter: Option<&str>) -> PigeonSpec {
    let mut spec = pigeon(id, SOURCE, "gift.*", Vec::new());
    spec.action = Action::Archive;
    spec.matcher.filter = filter.map(str::to_owned);
    spec
}

/// Gift letter `n`: one of 100 users and keys, amount `n % 500`.
fn gift(n: u64) -> Letter {
    Letter::new(
        "tests",
        "gift.sent",
        json!({ "userId": n % 100, "roomId": format!("room-{}", n % 100), "amount": n % 500, "n": n }),
    )
    .with_key(format!("room-{}", n % 100))
}

/// Letters archived in a MariaDB database, by id.
async fn archived_ids(url: &str) -> Vec<String> {
    let mut db = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT letter_id FROM archived_letters").fetch_all(&mut db).await.unwrap()
}

async fn count_archived(url: &str) -> i64 {
    let mut db = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM archived_letters").fetch_one(&mut db).await.unwrap()
}

/// Produces letters `range` in a thread, streaming (a pause every 500).
fn produce_in_background(kafka: &Kafka, letters: Vec<Letter>) -> std::thread::JoinHandle<()> {
    let bootstrap = kafka.bootstrap.clone();
    std::thread::spawn(move || produce(&bootstrap, SOURCE, letters.iter().map(Outgoing::from), Some(500)))
}

async fn wait_archived(url: &str, count: i64, bus: &Bus) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = count_archived(url).await;
        if now >= count {
            return;
        }
        assert!(Instant::now() < deadline, "only {now} of {count} letters archived:\n{}", bus.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// 50,000 letters on 16 partitions, a fifth of them produced twice and the archiver killed
/// and restarted mid-stream: every letter is archived exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_thousand_letters_with_redeliveries_are_archived_once_each() {
    let kafka = Kafka::new(1);
    kafka.topic(SOURCE, PARTITIONS);
    let db = Db::mariadb_with_pigeons(&[archive_pigeon("gifts-archive", None)], "127.0.0.1:3306").await;
    let letters: Vec<Letter> = (0..50_000).map(gift).collect();
    let mut stream: Vec<Letter> = letters.clone();
    stream.extend(letters.iter().step_by(5).cloned()); // produced twice: same letter ids
    let producing = produce_in_background(&kafka, stream);

    let roles = ["--roles", "archiver"];
    let first = Bus::start(&kafka, &db, &roles);
    let deadline = Instant::now() + DEADLINE;
    while count_archived(&db.url).await < 15_000 {
        assert!(Instant::now() < deadline, "archiving never got going:\n{}", first.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill(); // no drain, no commit: the next archiver reads letters again
    let second = Bus::start(&kafka, &db, &roles);
    producing.join().unwrap();
    wait_archived(&db.url, 50_000, &second).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // late duplicates would show now

    let ids = archived_ids(&db.url).await;
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no letter stored twice");
    let sent: HashSet<String> = letters.iter().map(|l| l.id.to_string()).collect();
    let stored: HashSet<String> = ids.into_iter().collect();
    assert_eq!(stored.len(), 50_000);
    assert!(stored == sent, "every letter archived, nothing else");
    let metrics = second.metrics();
    assert!(metrics["pigeon_archive_duplicates_total"] > 0, "redeliveries were met and left alone");
    second.stop();
    db.drop_mariadb().await;
}

/// The database cut by a proxy while letters stream: the archiver pauses and tries again,
/// commits nothing meanwhile, and archives every letter once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_cut_mid_stream_loses_nothing() {
    let kafka = Kafka::new(1);
    kafka.topic(SOURCE, PARTITIONS);
    let proxy = TcpProxy::start("127.0.0.1:3306");
    let db = Db::mariadb_with_pigeons(&[archive_pigeon("gifts-archive", None)], &proxy.addr).await;
    let direct = db.url.replace(&proxy.addr, "127.0.0.1:3306");
    let config = db.path("archiver.toml");
    std::fs::write(&config, "[archiver]\nretry_ms = 100\nretry_max_ms = 500\n").unwrap();
    let bus = Bus::start(&kafka, &db, &["--roles", "archiver", "-c", config.to_str().unwrap()]);

    let letters: Vec<Letter> = (0..20_000).map(gift).collect();
    let producing = produce_in_background(&kafka, letters.clone());
    let deadline = Instant::now() + DEADLINE;
    while count_archived(&direct).await < 3_000 {
        assert!(Instant::now() < deadline, "archiving never got going:\n{}", bus.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(&bus.admin, "/readyz"), Some((200, "ready\n".to_owned())));
    proxy.cut();
    eventually("the archiver pauses", || bus.metrics().get("pigeon_archive_paused") == Some(&1));
    // Not ready while the store is away (the probe says why), alive all the same.
    eventually("/readyz to say the store is away", || {
        http_get(&bus.admin, "/readyz")
            .is_some_and(|(status, body)| status == 503 && body.starts_with("store: "))
    });
    assert_eq!(http_get(&bus.admin, "/livez").map(|(s, _)| s), Some(200));
    let during = count_archived(&direct).await;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count_archived(&direct).await, during, "nothing reaches the database while it is cut");
    proxy.restore();
    producing.join().unwrap();
    wait_archived(&direct, 20_000, &bus).await;
    eventually("the archiver resumes", || bus.metrics().get("pigeon_archive_paused") == Some(&0));
    eventually("ready again", || http_get(&bus.admin, "/readyz").is_some_and(|(s, _)| s == 200));

    let stored: HashSet<String> = archived_ids(&direct).await.into_iter().collect();
    let sent: HashSet<String> = letters.iter().map(|l| l.id.to_string()).collect();
    assert!(stored == sent, "every letter archived once the database was back");
    assert_eq!(count_archived(&direct).await, 20_000, "and none twice");
    assert!(bus.metrics()["pigeon_archive_write_failures_total"] > 0);
    let log = bus.stop();
    assert!(log.contains("cannot write to the archive; partitions paused"), "{log}");
    assert!(log.contains("the archive's database is back"), "{log}");
    db.drop_mariadb().await;
}

/// Calls the admin API with a JSON body; returns the status and the JSON answer.
async fn call(
    bus: &Bus,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{}/api/v1{path}", bus.admin))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// Starts a replay and waits until it ends; returns the job.
async fn replay(bus: &Bus, token: &str, spec: serde_json::Value) -> serde_json::Value {
    let (status, job) = call(bus, token, "POST", "/replays", Some(spec)).await;
    assert_eq!(status, 201, "{job}");
    wait_job(bus, token, job["id"].as_i64().unwrap()).await
}

async fn wait_job(bus: &Bus, token: &str, id: i64) -> serde_json::Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, job) = call(bus, token, "GET", &format!("/replays/{id}"), None).await;
        if ["done", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or_default()) {
            return job;
        }
        assert!(Instant::now() < deadline, "replay job {id} never ended: {job}\n{}", bus.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn headers_of(message: &OwnedMessage) -> Vec<(String, Option<Vec<u8>>)> {
    message.headers().map_or_else(Vec::new, |hs| {
        hs.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect()
    })
}

/// A replayed message is its original but for `ce_id` (new) and `ce_replayof` (the original's
/// id); the messages of one key arrive in their original order.
fn assert_replays_of(replayed: &[OwnedMessage], originals: &[&OwnedMessage]) {
    let by_id: HashMap<String, &OwnedMessage> =
        originals.iter().map(|m| (header(m, "ce_id").unwrap(), *m)).collect();
    assert_eq!(replayed.len(), originals.len(), "one replay per original");
    let mut per_key: HashMap<Vec<u8>, Vec<i64>> = HashMap::new();
    for message in replayed {
        let of = header(message, "ce_replayof").expect("marked as a replay");
        let original = by_id.get(&of).unwrap_or_else(|| panic!("{of} is not one of the originals"));
        assert_ne!(header(message, "ce_id"), Some(of.clone()), "a replay has an id of its own");
        assert_eq!(message.key(), original.key());
        assert_eq!(message.payload(), original.payload());
        let strip = |m: &OwnedMessage| {
            headers_of(m).into_iter().filter(|(k, _)| k != "ce_id" && k != "ce_replayof").collect::<Vec<_>>()
        };
        assert_eq!(strip(message), strip(original), "every other header as it was");
        per_key.entry(message.key().unwrap().to_vec()).or_default().push(original.offset());
    }
    for (key, offsets) in per_key {
        let mut sorted = offsets.clone();
        sorted.sort();
        assert_eq!(offsets, sorted, "key {} keeps its order", String::from_utf8_lossy(&key));
    }
}

/// Letters archived on SQLite are replayed by business key and by time range into fresh
/// topics, identical to the originals but for the replay marker; a dry run counts first.
#[tokio::test(flavor = "multi_thread")]
async fn replays_by_key_and_by_time_range_send_the_originals_again() {
    let big_only = archive_pigeon("big-gifts", Some("payload.amount >= 100"));
    let (kafka, db, token) = archive_on_sqlite(big_only).await;
    let bus = Bus::start(&kafka, &db, &["--roles", "archiver,admin"]);

    // 1,000 letters, one second apart in their own time, with one that is not JSON.
    let start = pigeon_bus::store::now_ms() - 3_600_000;
    let letters: Vec<Letter> = (0..1_000).map(gift).collect();
    let producer: rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).create().unwrap();
    for (i, letter) in letters.iter().enumerate() {
        let payload = letter.payload_bytes();
        let record = rdkafka::producer::BaseRecord::to(SOURCE)
            .key(letter.key.as_deref().unwrap())
            .payload(payload.as_slice())
            .headers(letter.headers())
            .timestamp(start + i as i64 * 1_000);
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    let broken = Letter::new("tests", "gift.sent", json!(null));
    let record = rdkafka::producer::BaseRecord::<[u8], [u8]>::to(SOURCE)
        .payload(b"not json".as_slice())
        .headers(broken.headers())
        .timestamp(start + 500);
    producer.send(record).map_err(|(e, _)| e).unwrap();
    rdkafka::producer::Producer::flush(&producer, DEADLINE).unwrap();
    let originals = kafka.collect(SOURCE, 1_001, Duration::ZERO);

    // The filter keeps amounts of 100 and more (400 of every 500), and the letter it cannot
    // read: an archive loses nothing over a bad filter.
    let big: Vec<&OwnedMessage> = originals
        .iter()
        .filter(|m| {
            serde_json::from_slice::<serde_json::Value>(m.payload().unwrap())
                .is_ok_and(|p| p["amount"].as_u64() >= Some(100))
        })
        .collect();
    assert_eq!(big.len(), 800);
    let everything = json!({ "query": { "since": start, "until": start + 2_000_000 }, "to_topic": "x" });
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, dry) = call(&bus, &token, "POST", "/replays/dry-run", Some(everything.clone())).await;
        if dry["count"] == 801 {
            break;
        }
        assert!(Instant::now() < deadline, "the archive never held every big gift: {dry}\n{}", bus.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(bus.metrics()["pigeon_archive_filter_errors_total"], 1);

    // By business key: user 7's big gifts, to a fresh topic.
    let user7 = json!({ "since": start, "until": start + 2_000_000, "keys": { "userId": "7" } });
    let (status, dry) = call(
        &bus,
        &token,
        "POST",
        "/replays/dry-run",
        Some(json!({ "query": user7, "to_topic": "replay.user7" })),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    let of_user7: Vec<&OwnedMessage> = big
        .iter()
        .copied()
        .filter(|m| serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap()["userId"] == 7)
        .collect();
    assert_eq!(dry["count"], of_user7.len() as i64, "{dry}");
    assert_eq!(dry["sample"].as_array().unwrap().len(), 5);
    let job = replay(&bus, &token, json!({ "query": user7, "to_topic": "replay.user7" })).await;
    assert_eq!(
        (job["status"].as_str(), job["sent"].as_i64()),
        (Some("done"), Some(of_user7.len() as i64)),
        "{job}"
    );
    let replayed = kafka.collect("replay.user7", of_user7.len(), Duration::from_secs(1));
    assert_replays_of(&replayed, &of_user7);

    // By time range: letters 200 to 299 in their own time.
    let range = json!({ "since": start + 200_000, "until": start + 300_000 });
    let in_range: Vec<&OwnedMessage> = big
        .iter()
        .copied()
        .filter(|m| (start + 200_000..start + 300_000).contains(&m.timestamp().to_millis().unwrap()))
        .collect();
    let job = replay(&bus, &token, json!({ "query": range, "to_topic": "replay.range" })).await;
    assert_eq!(job["sent"].as_i64(), Some(in_range.len() as i64), "{job}");
    let replayed = kafka.collect("replay.range", in_range.len(), Duration::from_secs(1));
    assert_replays_of(&replayed, &in_range);

    // A slow replay cancelled mid-way stops after the page in flight.
    let (status, slow) = call(
        &bus,
        &token,
        "POST",
        "/replays",
        Some(json!({ "query": everything["query"], "to_topic": "replay.slow", "rate": 20 })),
    )
    .await;
    assert_eq!(status, 201, "{slow}");
    let id = slow["id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, cancelled) = call(&bus, &token, "POST", &format!("/replays/{id}/cancel"), None).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, after) = call(&bus, &token, "GET", &format!("/replays/{id}"), None).await;
    assert_eq!(after["status"], "cancelled", "{after}");
    assert!(after["sent"].as_i64() < Some(200), "the runner stopped: {after}");
    let (status, again) = call(&bus, &token, "POST", &format!("/replays/{id}/cancel"), None).await;
    assert_eq!(status, 409, "{again}");

    // Bad requests say what is wrong and start nothing.
    let (status, error) =
        call(&bus, &token, "POST", "/replays", Some(json!({ "query": { "since": 5, "until": 1 } }))).await;
    assert_eq!(status, 422, "{error}");
    let details = error["details"].to_string();
    assert!(
        details.contains("since (5) must be before until (1)")
            && details.contains("set to_topic, or through_pigeons"),
        "{error}"
    );
    let (_, jobs) = call(&bus, &token, "GET", "/replays", None).await;
    assert_eq!(jobs.as_array().unwrap().len(), 3);
    bus.stop();
}

/// A replay at 200 letters a second takes about as long as it should.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_keeps_to_its_rate() {
    let (kafka, db, token) = archive_on_sqlite(archive_pigeon("gifts-archive", None)).await;
    let bus = Bus::start(&kafka, &db, &["--roles", "archiver,admin"]);
    let letters: Vec<Letter> = (0..601).map(gift).collect();
    kafka.produce(SOURCE, letters.iter().map(Outgoing::from));
    let since = pigeon_bus::store::now_ms() - 600_000;
    let query = json!({ "since": since, "until": since + 1_200_000 });
    wait_sqlite(&db, 601).await;

    let started = Instant::now();
    let job = replay(&bus, &token, json!({ "query": query, "to_topic": "replay.paced", "rate": 200 })).await;
    let took = started.elapsed();
    assert_eq!(job["sent"].as_i64(), Some(601), "{job}");
    // 600 gaps of 5 ms: 3 s, measured on the letters' own produce times.
    let replayed = kafka.collect("replay.paced", 601, Duration::ZERO);
    let times: Vec<i64> = replayed.iter().map(|m| m.timestamp().to_millis().unwrap()).collect();
    let span = times.iter().max().unwrap() - times.iter().min().unwrap();
    println!("601 letters at 200/s: {span} ms between the first and the last (job took {took:?})");
    assert!((2_700..=3_600).contains(&span), "span {span} ms, expected about 3000");
    bus.stop();
}

/// A mock cluster with the source topic, a SQLite store with an archive pigeon, and an
/// operator token.
async fn archive_on_sqlite(pigeon: PigeonSpec) -> (Kafka, Db, String) {
    let kafka = Kafka::new(1);
    kafka.topic(SOURCE, PARTITIONS);
    let db = Db::with_pigeons(&[pigeon]).await;
    let token =
        pigeon::cli::tokens::create(db.store().await.as_ref(), "ops", Role::Operator, "tests").await.unwrap();
    (kafka, db, token)
}

/// Waits until the SQLite archive holds `count` letters.
async fn wait_sqlite(db: &Db, count: i64) {
    let store = db.store().await;
    let everything = pigeon_bus::archive::ArchiveQuery { since: 0, until: i64::MAX, ..Default::default() };
    let deadline = Instant::now() + DEADLINE;
    while store.archive().count_archived(&everything).await.unwrap() < count {
        assert!(Instant::now() < deadline, "the archive never held {count} letters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replay whose bus is killed mid-way is taken over by the next one after its lease and
/// resumes at its checkpoint: every letter arrives, and only letters in flight at the kill
/// arrive twice, no more than the job counts as resent.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replay_resumes_from_its_checkpoint() {
    let (kafka, db, token) = archive_on_sqlite(archive_pigeon("gifts-archive", None)).await;
    let config = db.path("replay.toml");
    std::fs::write(&config, "[replay]\nlease_ms = 2000\ncheck_ms = 200\n").unwrap();
    let args = ["--roles", "archiver,admin", "-c", config.to_str().unwrap()];
    let first = Bus::start(&kafka, &db, &args);
    let letters: Vec<Letter> = (0..1_000).map(gift).collect();
    kafka.produce(SOURCE, letters.iter().map(Outgoing::from));
    wait_sqlite(&db, 1_000).await;

    let since = pigeon_bus::store::now_ms() - 600_000;
    let spec = json!({ "query": { "since": since, "until": since + 1_200_000 }, "to_topic": "replay.resumed", "rate": 250 });
    let (status, job) = call(&first, &token, "POST", "/replays", Some(spec)).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_i64().unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, job) = call(&first, &token, "GET", &format!("/replays/{id}"), None).await;
        if job["sent"].as_i64() >= Some(300) {
            break;
        }
        assert!(Instant::now() < deadline, "the replay never got under way: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();

    let second = Bus::start(&kafka, &db, &args);
    let job = wait_job(&second, &token, id).await;
    assert_eq!(job["status"], "done", "{job}");
    let replayed = kafka.collect("replay.resumed", 1_000, Duration::from_secs(2));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &replayed {
        *seen.entry(header(m, "ce_replayof").unwrap()).or_default() += 1;
    }
    let sent: HashSet<String> = letters.iter().map(|l| l.id.to_string()).collect();
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), sent, "every letter replayed");
    let twice = replayed.len() - 1_000;
    let resent = job["resent"].as_i64().unwrap() as usize;
    println!("resumed replay: {twice} letter(s) sent twice, {resent} counted as possibly resent");
    assert!(twice <= resent, "only letters in flight at the kill were sent twice ({twice} > {resent})");
    assert!(resent <= 250, "no more than a page was in flight ({resent})");
    assert_eq!(job["sent"].as_i64(), Some(1_000), "{job}");
    second.stop();
}
