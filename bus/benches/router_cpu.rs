//! CPU time per letter of the whole router process (consume, route, produce, commit) for a
//! forward pigeon and for a script pigeon (`scripts/rhai/gift-to-progress.rhai`) on the same
//! gift letters. Prints figures; asserts nothing. Run with
//! `cargo bench -p pigeon-bus --bench router_cpu`.
//!
//! The router runs as a child process (`pigeon serve --roles router`) against an in-process
//! mock cluster owned by the benchmark, so its CPU time is its own, read from /proc. The
//! router starts on empty topics; the benchmark then produces the letters and waits until
//! every output is on the destination topic. Each contender runs twice, alternating.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pigeon_bus::route::{Action, DestinationSpec, MatchSpec, PigeonSpec};
use pigeon_sdk::Letter;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Letters per run: within the mock broker's per-partition retention (about 2 MB each).
const LETTERS: usize = 100_000;
const PARTITIONS: i32 = 16;
const SOURCE: &str = "live.gift";
const DESTINATION: &str = "pigeon.module.act-toy";

fn pigeon(script: Option<String>) -> PigeonSpec {
    PigeonSpec {
        id: "bench".into(),
        name: String::new(),
        owner: String::new(),
        enabled: true,
        action: if script.is_some() { Action::Script } else { Action::Forward },
        script,
        matcher: MatchSpec::new(SOURCE, "gift.sent"),
        destinations: vec![DestinationSpec::capability("act-toy/progress.add")],
        retry: None,
        window: None,
        dictionary: Default::default(),
    }
}

fn produce(bootstrap: &str) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for n in 0..LETTERS {
        let room = format!("room-{}", n % 100);
        let letter = Letter::new(
            "live-platform",
            "gift.sent",
            serde_json::json!({"uid": n, "aid": n % 100, "roomId": room, "giftId": 7, "giftCount": 1 + n % 5, "price": 10}),
        )
        .with_key(room.clone());
        let payload = letter.payload_bytes();
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(SOURCE).key(room.as_bytes()).payload(payload.as_slice()).headers(letter.headers());
        while let Err((_, back)) = producer.send(record) {
            record = back;
            producer.poll(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// Messages on the destination topic (the sum of its partitions' high watermarks).
fn delivered(consumer: &BaseConsumer) -> i64 {
    (0..PARTITIONS)
        .map(|p| {
            consumer.fetch_watermarks(DESTINATION, p, Duration::from_secs(5)).map_or(0, |(_, high)| high)
        })
        .sum()
}

struct Run {
    cpu: Duration,
    wall: Duration,
    idle_cpu_per_sec: Duration,
}

fn run(script: Option<String>) -> Run {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    for (topic, partitions) in
        [(SOURCE, PARTITIONS), (DESTINATION, PARTITIONS), ("pigeon.ingress", 4), ("pigeon.control", 1)]
    {
        cluster.create_topic(topic, partitions, 1).expect("topic");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = pigeon_bus::store::open(&url).await.expect("store");
        store.migrate().await.expect("migrate");
        store.save_pigeon(&pigeon(script), "bench").await.expect("pigeon");
    });

    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args(["serve", "--roles", "router", "--brokers", &bootstrap, "--database", &url])
        .args(["--listen", "127.0.0.1:0"])
        .args(["-X", "consumer.session.timeout.ms=6000", "-X", "consumer.heartbeat.interval.ms=500"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("pigeon serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let admin = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("admin: ") => break line["admin: ".len()..].to_owned(),
            Some(_) => continue,
            None => panic!("pigeon serve exited"),
        }
    };
    let health = format!("{admin}/healthz");
    while common::get(&health).map(|(status, _)| status) != Some(200) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the router costs doing nothing, over one second.
    let before_idle = common::cpu_time(child.id());
    std::thread::sleep(Duration::from_secs(1));
    let start_cpu = common::cpu_time(child.id());
    let idle_cpu_per_sec = start_cpu - before_idle;

    let watcher: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("consumer");
    let started = Instant::now();
    produce(&bootstrap);
    while delivered(&watcher) < LETTERS as i64 {
        assert!(started.elapsed() < Duration::from_secs(300), "the router did not deliver every letter");
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed();
    let cpu = common::cpu_time(child.id()) - start_cpu;
    let _ = child.kill();
    let _ = child.wait();
    Run { cpu, wall, idle_cpu_per_sec }
}

fn main() {
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/rhai/gift-to-progress.rhai"
    ))
    .expect("the example script");
    println!(
        "router process CPU per letter: {LETTERS} gift letters on {PARTITIONS} partitions, one pigeon, one destination"
    );
    let mut totals = [Duration::ZERO; 2];
    for round in 0..2 {
        for (i, (name, script)) in
            [("forward", None), ("script", Some(script.clone()))].into_iter().enumerate()
        {
            let r = run(script);
            let per_letter = r.cpu.as_secs_f64() * 1e6 / LETTERS as f64;
            println!(
                "round {round} {name:<8} {per_letter:>6.1} µs CPU/letter  ({:.2} s CPU, {:.2} s wall, {:.0} letters/s, idle {} ms CPU/s)",
                r.cpu.as_secs_f64(),
                r.wall.as_secs_f64(),
                LETTERS as f64 / r.wall.as_secs_f64(),
                r.idle_cpu_per_sec.as_millis()
            );
            totals[i] += r.cpu;
        }
    }
    let [forward, script] = totals.map(|t| t.as_secs_f64() * 1e6 / (2 * LETTERS) as f64);
    println!(
        "mean: forward {forward:.1} µs, script {script:.1} µs CPU per letter: script / forward = {:.2}x",
        script / forward
    );
}
