//! Pigeon lifecycle on running routers: changes through the API take effect without a
//! restart, the subscription follows the live pigeons, live windows judge letters by their own
//! time, and a pigeon that does not compile is quarantined while the others fly.
//!
//! Deadlines are 30 s; the observed latencies are printed, never asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pigeon_bus::counters::Tally;
use pigeon_bus::deadletter::{DeadLetterFilter, Status};
use pigeon_bus::route::{DestinationSpec, PigeonSpec, WindowSpec};
use pigeon_bus::token::Role;
use pigeon_sdk::Letter;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::support::*;

/// How long any change may take to show before a test fails.
const CHANGE_DEADLINE: Duration = Duration::from_secs(30);
const PARTITIONS: i32 = 4;

fn topics(kafka: &Kafka, names: &[&str]) {
    for name in ["pigeon.control", "pigeon.ingress"].iter().chain(names) {
        kafka.topic(name, PARTITIONS);
    }
}

async fn operator(db: &Db) -> String {
    pigeon::cli::tokens::create(db.store().await.as_ref(), "ops", Role::Operator, "tests").await.unwrap()
}

/// Calls the admin API; returns the status and the JSON body (null when empty).
async fn api(
    bus: &Bus,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&PigeonSpec>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1{path}", bus.admin);
    let mut request = client.request(method.parse().unwrap(), url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// A letter for partition `partition` of a source topic, numbered `seq`, with its own time.
fn numbered(topic_tag: &str, partition: i32, seq: u64, time_ms: Option<i64>) -> (Letter, i32, Option<i64>) {
    let letter = Letter::new("tests", topic_tag, serde_json::json!({ "partition": partition, "seq": seq }))
        .with_key(format!("p{partition}"));
    (letter, partition, time_ms)
}

/// Produces letters to chosen partitions with chosen timestamps, and waits for every ack.
fn produce_at(bootstrap: &str, topic: &str, letters: &[(Letter, i32, Option<i64>)]) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("producer");
    for (letter, partition, time) in letters {
        let payload = letter.payload_bytes();
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(*partition)
            .key(letter.key.as_deref().unwrap_or_default())
            .payload(payload.as_slice())
            .headers(letter.headers());
        if let Some(time) = time {
            record = record.timestamp(*time);
        }
        producer.send(record).map_err(|(e, _)| e).expect("queued");
    }
    producer.flush(DEADLINE).expect("flush");
}

/// A producer that streams numbered letters round the partitions until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(kafka: &Kafka, topic: &str, tag: &str) -> Self {
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (bootstrap, topic, tag) = (kafka.bootstrap.clone(), topic.to_owned(), tag.to_owned());
        let (stopping, counting) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = std::thread::spawn(move || {
            let mut seq = 0;
            while !stopping.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..PARTITIONS as u64)
                    .map(|i| numbered(&tag, ((seq + i) % PARTITIONS as u64) as i32, seq + i, None))
                    .collect();
                produce_at(&bootstrap, &topic, &batch);
                seq += PARTITIONS as u64;
                counting.store(seq, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { stop, sent, thread: Some(thread) }
    }

    /// Stops producing; returns how many letters were sent (numbered 0 to n-1).
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.sent.load(Ordering::Relaxed)
    }
}

fn seq_of(message: &OwnedMessage) -> (i64, u64) {
    let payload: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    (payload["partition"].as_i64().unwrap(), payload["seq"].as_u64().unwrap())
}

/// How many messages a topic holds (the sum of its partitions' high watermarks).
fn messages_on(kafka: &Kafka, topic: &str) -> i64 {
    let consumer: rdkafka::consumer::BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).create().expect("consumer");
    (0..PARTITIONS)
        .map(|p| {
            rdkafka::consumer::Consumer::fetch_watermarks(&consumer, topic, p, DEADLINE)
                .expect("watermarks")
                .1
        })
        .sum()
}

/// Waits until the log holds `needle` at least `times` times; returns how long it took.
fn wait_log(bus: &Bus, needle: &str, times: usize) -> Duration {
    let started = Instant::now();
    while bus.log().matches(needle).count() < times {
        assert!(
            started.elapsed() < CHANGE_DEADLINE,
            "never logged {needle:?} {times} time(s):\n{}",
            bus.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// Two routers in one group; a pigeon added through the API while letters flow starts
/// forwarding on both, without a restart and without a gap; one deleted stops.
#[tokio::test(flavor = "multi_thread")]
async fn pigeons_added_and_deleted_while_letters_flow_change_every_router() {
    let kafka = Kafka::new(1);
    topics(&kafka, &["live.gift", "lane.a", "lane.b"]);
    let to_a = pigeon("to-a", "live.gift", "gift.sent", vec![DestinationSpec::topic("lane.a", "gift")]);
    let db = Db::with_pigeons(&[to_a]).await;
    let token = operator(&db).await;
    let one = Bus::start(&kafka, &db, &[]);
    let two = Bus::start(&kafka, &db, &["--roles", "router"]);
    let stream = Stream::start(&kafka, "live.gift", "gift.sent");
    kafka.collect("lane.a", 40, Duration::ZERO);

    // Added: every source partition (both routers hold some) reaches lane.b.
    let to_b = pigeon("to-b", "live.gift", "gift.sent", vec![DestinationSpec::topic("lane.b", "gift")]);
    let added = Instant::now();
    assert_eq!(api(&one, &token, "POST", "/pigeons", Some(&to_b)).await.0, 201);
    let mut first_seen = None;
    kafka.collect_until(
        "lane.b",
        |got| {
            if !got.is_empty() {
                first_seen.get_or_insert_with(|| added.elapsed());
            }
            got.iter().map(|m| seq_of(m).0).collect::<BTreeSet<_>>().len() == PARTITIONS as usize
        },
        Duration::ZERO,
    );
    println!(
        "added pigeon: first letter on lane.b after {:?}, every partition after {:?}",
        first_seen.unwrap(),
        added.elapsed()
    );
    assert!(added.elapsed() < CHANGE_DEADLINE);
    for bus in [&one, &two] {
        assert!(bus.log().contains("\"to-b\""), "each router logs the change:\n{}", bus.log());
    }

    // Deleted: lane.a stops growing while the stream goes on.
    let deleted = Instant::now();
    assert_eq!(api(&one, &token, "DELETE", "/pigeons/to-a", None).await.0, 204);
    let (mut count, mut grown_at) = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = messages_on(&kafka, "lane.a");
        if now != count {
            (count, grown_at) = (now, Instant::now());
        } else if grown_at.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(deleted.elapsed() < CHANGE_DEADLINE, "lane.a still grows after the delete");
    }
    println!("deleted pigeon: last letter on lane.a {:?} after the delete", grown_at.duration_since(deleted));
    let sent = stream.stop();

    // Nothing lost on lane.b from its first letter per partition to the last one sent.
    let got = kafka.collect_until(
        "lane.b",
        |got| got.iter().any(|m| seq_of(m).1 == sent - 1),
        Duration::from_millis(500),
    );
    let mut by_partition: BTreeMap<i64, BTreeSet<u64>> = BTreeMap::new();
    for m in &got {
        let (partition, seq) = seq_of(m);
        by_partition.entry(partition).or_default().insert(seq);
    }
    for (partition, seqs) in &by_partition {
        let first = *seqs.first().unwrap();
        let expected: BTreeSet<u64> =
            (first..sent).filter(|s| s % PARTITIONS as u64 == *partition as u64).collect();
        let missing: Vec<&u64> = expected.difference(seqs).collect();
        assert!(
            missing.is_empty(),
            "partition {partition}: {} letters lost after to-b went live: {missing:?}",
            missing.len()
        );
    }
    println!("{sent} letters sent; lane.b complete from each partition's first letter");
    one.stop();
    two.stop();

    // Both routers flushed what their pigeons did to the store, the last counts on the way
    // out: every letter on lane.b is one delivery counted for to-b, whichever router sent it.
    let counts = db.store().await.counts_since(0).await.unwrap();
    let total = |pigeon: &str| {
        counts.iter().filter(|c| c.pigeon_id == pigeon).fold(Tally::default(), |mut sum, c| {
            sum += c.tally;
            sum
        })
    };
    let on_b = messages_on(&kafka, "lane.b") as u64;
    assert_eq!(
        total("to-b"),
        Tally { letters_in: on_b, letters_out: on_b, failures: 0 },
        "the cluster-wide counts of to-b"
    );
    assert!(total("to-a").letters_out >= 40, "to-a's deliveries before its delete count too");
}

/// The router reads only topics with a live pigeon: the subscription shrinks when the last
/// pigeon of a topic goes, and a topic that comes back starts at its latest letters. Topic
/// patterns are followed the same way.
#[tokio::test(flavor = "multi_thread")]
async fn the_subscription_follows_the_live_pigeons() {
    let kafka = Kafka::new(1);
    topics(&kafka, &["live.gift", "live.view", "lane.g", "lane.v", "live.x.a", "live.x.b", "lane.x"]);
    let gifts = pigeon("gifts", "live.gift", "**", vec![DestinationSpec::topic("lane.g", "gift")]);
    let views = pigeon("views", "live.view", "**", vec![DestinationSpec::topic("lane.v", "view")]);
    let db = Db::with_pigeons(&[gifts, views.clone()]).await;
    let token = operator(&db).await;
    let bus = Bus::start(&kafka, &db, &[]);
    let batch = |tag: &str, from: u64, n: u64| -> Vec<_> {
        (from..from + n).map(|seq| numbered(tag, (seq % PARTITIONS as u64) as i32, seq, None)).collect()
    };
    produce_at(&kafka.bootstrap, "live.view", &batch("view.open", 0, 8));
    kafka.collect("lane.v", 8, Duration::ZERO);

    // The last pigeon of live.view goes: the router stops reading it.
    let removed = Instant::now();
    assert_eq!(api(&bus, &token, "DELETE", "/pigeons/views", None).await.0, 204);
    wait_log(&bus, "removed=[\"live.view\"]", 1);
    // The rebalance that follows hands the partitions back, committed.
    let started = Instant::now();
    while !bus
        .log()
        .split("removed=[\"live.view\"]")
        .nth(1)
        .is_some_and(|after| after.contains("partitions revoked"))
    {
        assert!(started.elapsed() < CHANGE_DEADLINE, "live.view never revoked:\n{}", bus.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("unsubscribed from live.view {:?} after the delete", removed.elapsed());
    produce_at(&kafka.bootstrap, "live.view", &batch("view.open", 100, 20)); // nobody wants these
    std::thread::sleep(Duration::from_secs(2));
    let committed: i64 =
        (0..PARTITIONS).map(|p| kafka.committed("pigeon-router", "live.view", p).max(0)).sum();
    assert_eq!(committed, 8, "no idle consumption: the letters sent while no pigeon listened stay unread");

    // It comes back: it starts at the latest letters, not at the 20 nobody wanted.
    let back = Instant::now();
    let mut views_again = views.clone();
    views_again.id = "views-again".into();
    assert_eq!(api(&bus, &token, "POST", "/pigeons", Some(&views_again)).await.0, 201);
    wait_log(&bus, "newly needed topic starts where its pigeons went live", PARTITIONS as usize);
    println!("live.view read again {:?} after the new pigeon", back.elapsed());
    produce_at(&kafka.bootstrap, "live.view", &batch("view.open", 200, 8));
    let got = kafka.collect("lane.v", 16, Duration::from_secs(1));
    let seqs: BTreeSet<u64> = got.iter().map(|m| seq_of(m).1).collect();
    assert_eq!(seqs, (0..8).chain(200..208).collect(), "the old letters were skipped, the new ones flew");
    let metrics = bus.metrics();
    assert_eq!(metrics["pigeon_pigeons_live"], 2, "{metrics:?}");

    // A topic pattern: every matching topic is read, starting at its latest letters.
    produce_at(&kafka.bootstrap, "live.x.a", &batch("x.old", 0, 4));
    let pattern = pigeon("x-all", "^live\\.x\\..*", "**", vec![DestinationSpec::topic("lane.x", "x")]);
    assert_eq!(api(&bus, &token, "POST", "/pigeons", Some(&pattern)).await.0, 201);
    wait_log(&bus, "newly needed topic starts where its pigeons went live", 3 * PARTITIONS as usize);
    produce_at(&kafka.bootstrap, "live.x.a", &batch("x.new", 10, 4));
    produce_at(&kafka.bootstrap, "live.x.b", &batch("x.new", 20, 4));
    let got = kafka.collect("lane.x", 8, Duration::from_secs(1));
    let seqs: BTreeSet<u64> = got.iter().map(|m| seq_of(m).1).collect();
    assert_eq!(seqs, (10..14).chain(20..24).collect(), "both topics of the pattern, new letters only");
    bus.stop();
}

fn window(start: Option<i64>, end: Option<i64>) -> Option<WindowSpec> {
    let rfc = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339();
    Some(WindowSpec { start: start.map(rfc), end: end.map(rfc), ttl: None })
}

/// Letters fly by their own timestamp; a window that opens later is subscribed shortly before
/// it starts; operators see scheduled, live and ended pigeons.
#[tokio::test(flavor = "multi_thread")]
async fn live_windows_judge_letters_by_their_own_time() {
    const HOUR: i64 = 3_600_000;
    let kafka = Kafka::new(1);
    topics(&kafka, &["live.gift", "live.open", "live.close", "lane.w", "lane.o"]);
    let now = pigeon_bus::store::now_ms();
    let mut live =
        pigeon("live-now", "live.gift", "gift.sent", vec![DestinationSpec::topic("lane.w", "gift")]);
    live.window = window(Some(now - HOUR), Some(now + HOUR));
    let mut later = pigeon("later", "live.other", "**", vec![DestinationSpec::topic("lane.w", "later")]);
    later.window = window(Some(now + 10 * HOUR), None);
    let mut over = pigeon("over", "live.other", "**", vec![DestinationSpec::topic("lane.w", "over")]);
    over.window = window(Some(now - 3 * HOUR), Some(now - 2 * HOUR));
    // Opens a few seconds into the test; the router subscribes two seconds before.
    let opens_at = now + 8_000;
    let mut opens = pigeon("opens", "live.open", "**", vec![DestinationSpec::topic("lane.o", "open")]);
    opens.window = window(Some(opens_at), None);
    // Ends as the other opens: its topic is given up two seconds after the end.
    let mut closes = pigeon("closes", "live.close", "**", vec![DestinationSpec::topic("lane.o", "close")]);
    closes.window = window(Some(now - HOUR), Some(opens_at));
    let db = Db::with_pigeons(&[live, later, over, opens, closes]).await;
    let config = db.path("bus.toml");
    std::fs::write(&config, "[router]\nwindow_lead_ms = 2000\nwindow_grace_ms = 2000\n").unwrap();
    let token = operator(&db).await;
    let bus = Bus::start(&kafka, &db, &["--config", config.to_str().unwrap()]);

    // Operators see where each pigeon stands, in the API and the CLI.
    let (_, list) = api(&bus, &token, "GET", "/pigeons", None).await;
    let states: BTreeMap<String, String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_owned(), p["state"].as_str().unwrap().to_owned()))
        .collect();
    let expected: BTreeMap<String, String> = [
        ("closes", "live"),
        ("later", "scheduled"),
        ("live-now", "live"),
        ("opens", "scheduled"),
        ("over", "ended"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    assert_eq!(states, expected);
    let listed = std::process::Command::new(pigeon_bin())
        .args(["routes", "list", "--url", &bus.admin, "--token", &token])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for (id, state) in [("later", "scheduled"), ("live-now", "live"), ("over", "ended")] {
        let line = listed.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} in:\n{listed}"));
        assert!(line.contains(state), "{id} is {state}: {line}");
    }

    // Judged by the letter's own time: late letters inside the window fly, others do not.
    let letters = [
        numbered("gift.sent", 0, 1, Some(now - 2 * HOUR)), // before the window
        numbered("gift.sent", 1, 2, Some(now - HOUR / 2)), // late, but inside
        numbered("gift.sent", 2, 3, Some(now)),            // inside
        numbered("gift.sent", 3, 4, Some(now + 2 * HOUR)), // after the window
    ];
    produce_at(&kafka.bootstrap, "live.gift", &letters);
    let got = kafka.collect("lane.w", 2, Duration::from_secs(2));
    let seqs: BTreeSet<u64> = got.iter().map(|m| seq_of(m).1).collect();
    assert_eq!(seqs, [2, 3].into(), "only letters whose time is inside the window");

    // A letter flown to the pigeon with a time outside its window is parked, not dropped.
    let mut flown = Letter::new("act-toy", "anything", serde_json::json!({"seq": 9}));
    flown.pigeon = Some("live-now".into());
    flown.time = std::time::UNIX_EPOCH + Duration::from_millis((now - 5 * HOUR) as u64);
    produce_at(&kafka.bootstrap, "pigeon.ingress", &[(flown.clone(), 0, Some(now - 5 * HOUR))]);
    let store = db.store().await;
    eventually("the flown letter is parked", || {
        let rows =
            futures::executor::block_on(store.dead_letters(&DeadLetterFilter::default(), None, 10)).unwrap();
        rows.iter().any(|d| {
            d.letter.letter_id == flown.id.to_string()
                && d.status == Status::Parked
                && d.letter.error_message.contains("outside the live window of pigeon \"live-now\"")
        })
    });

    // The window that opens: the router subscribes before its start, and the first letters
    // of the window fly.
    let subscribed = wait_log(&bus, "added=[\"live.open\"]", 1);
    let lead = opens_at - pigeon_bus::store::now_ms();
    println!("subscribed to live.open {lead} ms before its window opened (waited {subscribed:?})");
    wait_log(&bus, "newly needed topic starts where its pigeons went live", PARTITIONS as usize);
    let early = numbered("open", 0, 1, Some(opens_at - 1_000));
    let first = numbered("open", 1, 2, Some(opens_at));
    produce_at(&kafka.bootstrap, "live.open", &[early, first]);
    let got = kafka.collect("lane.o", 1, Duration::from_secs(1));
    assert_eq!(got.iter().map(|m| seq_of(m).1).collect::<Vec<_>>(), [2], "only the letter of the window");
    wait_log(&bus, "phase=\"live\"", 1);

    // The window that closes: logged as ended, and its topic given up after the grace.
    wait_log(&bus, "pigeon=closes phase=\"ended\"", 1);
    wait_log(&bus, "removed=[\"live.close\"]", 1);
    println!(
        "live.close given up; seen {} ms after its window ended (grace 2000 ms)",
        pigeon_bus::store::now_ms() - opens_at
    );
    let (_, view) = api(&bus, &token, "GET", "/pigeons/closes", None).await;
    assert_eq!(view["state"], "ended");
    bus.stop();
}

/// A pigeon that does not compile (saved straight into the store, past the API's checks) is
/// quarantined at start and when it appears later; the others keep flying.
#[tokio::test(flavor = "multi_thread")]
async fn a_pigeon_that_does_not_compile_is_quarantined_while_the_others_fly() {
    let kafka = Kafka::new(1);
    topics(&kafka, &["live.gift", "lane.q"]);
    let good = pigeon("good", "live.gift", "gift.sent", vec![DestinationSpec::topic("lane.q", "gift")]);
    let broken =
        |id: &str| pigeon(id, "live.gift", "gift..sent", vec![DestinationSpec::topic("lane.q", "x")]);
    let db = Db::with_pigeons(&[good, broken("broken-at-start")]).await;
    let config = db.path("bus.toml");
    std::fs::write(&config, "[router]\nreload_check_ms = 500\n").unwrap();
    let token = operator(&db).await;
    let bus = Bus::start(&kafka, &db, &["--config", config.to_str().unwrap()]);
    assert!(bus.log().contains("pigeon quarantined"), "{}", bus.log());
    assert_eq!(bus.metrics()["pigeon_pigeons_quarantined"], 1);

    let batch = |from: u64| -> Vec<_> {
        (from..from + 8).map(|s| numbered("gift.sent", (s % 4) as i32, s, None)).collect()
    };
    produce_at(&kafka.bootstrap, "live.gift", &batch(0));
    kafka.collect("lane.q", 8, Duration::ZERO);

    // Saved while the router runs, with no notice: the version check finds it.
    db.store().await.save_pigeon(&broken("broken-later"), "tests").await.unwrap();
    let started = Instant::now();
    eventually("the second broken pigeon is quarantined", || {
        bus.metrics()["pigeon_pigeons_quarantined"] == 2
    });
    println!("quarantined {:?} after it was saved", started.elapsed());
    produce_at(&kafka.bootstrap, "live.gift", &batch(100));
    let got = kafka.collect("lane.q", 16, Duration::from_millis(500));
    assert_eq!(got.len(), 16, "the good pigeon kept flying");

    let (status, view) = api(&bus, &token, "GET", "/pigeons/broken-later", None).await;
    assert_eq!((status, view["state"].as_str()), (200, Some("quarantined")));
    assert!(view["problems"][0].as_str().unwrap().contains("match.tag"), "{view}");
    bus.stop();
}

/// `/readyz` checks Kafka whatever roles an instance runs: a router-only instance that cannot
/// reach its brokers is not ready, and says why; it is alive all the same.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_says_kafka_is_away_on_a_router_only_instance() {
    let db = Db::with_pigeons(&[]).await;
    let bus = Bus::launch("127.0.0.1:1", &db, &["--roles", "router"], &[])
        .unwrap_or_else(|log| panic!("pigeon serve exited before listening:\n{log}"));
    let mut answer = None;
    eventually("/readyz to say Kafka is away", || {
        answer = http_get(&bus.admin, "/readyz");
        answer.as_ref().is_some_and(|(status, body)| *status == 503 && body.contains("kafka: "))
    });
    assert!(!answer.unwrap().1.contains("store: "), "the store answers");
    assert_eq!(http_get(&bus.admin, "/livez").map(|(s, _)| s), Some(200));
    bus.kill();
}
