//! At-least-once under faults: a slow destination, SIGKILL, SIGTERM. (Dead-letter faults are in
//! `retry.rs`.)

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use pigeon_bus::route::DestinationSpec;
use pigeon_sdk::Letter;

use crate::support::*;

use crate::support::ROUTER_GROUP as GROUP;

fn letter(tag: &str, n: u64) -> Letter {
    Letter::new("t", tag, serde_json::json!({ "n": n })).with_key(format!("k{n}"))
}

/// An output that is still unacknowledged while later letters are acknowledged holds the
/// committed offset below it; killed in that state and restarted, the router still delivers it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unacknowledged_output_holds_the_commit_and_survives_sigkill() {
    let kafka = Kafka::new(2);
    kafka.topic("src", 1);
    kafka.topic("fast", 1);
    kafka.topic("slow", 1);
    kafka.cluster.partition_leader("src", 0, Some(1)).unwrap();
    kafka.cluster.partition_leader("fast", 0, Some(1)).unwrap();
    kafka.cluster.partition_leader("slow", 0, Some(2)).unwrap();
    kafka.cluster.coordinator(rdkafka::mocking::MockCoordinator::Group(GROUP.into()), 1).unwrap();
    let db = Db::with_pigeons(&[
        pigeon("fast", "src", "fast", vec![DestinationSpec::topic("fast", "fast.out")]),
        pigeon("slow", "src", "slow", vec![DestinationSpec::topic("slow", "slow.out")]),
    ])
    .await;
    let bus = Bus::start(&kafka, &db, &[]);

    // 50 letters go through; the committed offset follows them.
    kafka.produce("src", (0..50).map(|n| Outgoing::from(&letter("fast", n))));
    kafka.collect("fast", 50, Duration::ZERO);
    eventually("the commit to reach 50", || kafka.committed(GROUP, "src", 0) == 50);

    // Letter 50 goes to a broker that answers after a minute; 51..100 are acknowledged at once.
    kafka.cluster.broker_round_trip_time(2, Duration::from_secs(60)).unwrap();
    let stuck = letter("slow", 50);
    kafka.produce("src", [Outgoing::from(&stuck)]);
    kafka.produce("src", (51..100).map(|n| Outgoing::from(&letter("fast", n))));
    kafka.collect("fast", 99, Duration::ZERO);
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let committed = kafka.committed(GROUP, "src", 0);
        assert!(committed <= 50, "committed {committed}, past the unacknowledged letter 50");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(kafka.committed(GROUP, "src", 0), 50);

    bus.kill();
    kafka.cluster.broker_round_trip_time(2, Duration::ZERO).unwrap();
    let bus = Bus::start(&kafka, &db, &[]);
    let slow = kafka.collect("slow", 1, Duration::ZERO);
    assert!(slow.iter().any(|m| header(m, "ce_id") == Some(stuck.id.to_string())), "letter 50 arrived");
    eventually("the commit to pass 100", || kafka.committed(GROUP, "src", 0) == 100);
    bus.stop();
}

/// SIGTERM drains and commits: after a restart nothing is delivered twice.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_stream_then_restart_delivers_each_letter_once() {
    const LETTERS: usize = 10_000;
    let kafka = Kafka::new(1);
    kafka.topic("src", 8);
    kafka.topic("dst", 8);
    let db = Db::with_pigeons(&[pigeon("p", "src", "**", vec![DestinationSpec::topic("dst", "out")])]).await;
    let bus = Bus::start(&kafka, &db, &["-X", "producer.linger.ms=20"]);

    let letters: Vec<Letter> = (0..LETTERS as u64).map(|n| letter("in", n)).collect();
    let producer = {
        let bootstrap = kafka.bootstrap.clone();
        let outgoing: Vec<Outgoing> = letters.iter().map(Outgoing::from).collect();
        std::thread::spawn(move || produce(&bootstrap, "src", outgoing, Some(100)))
    };
    // Stop the router while letters are still streaming in.
    eventually("some letters forwarded", || bus.metrics()["pigeon_letters_out_total"] >= 1_000);
    let log = bus.stop();
    assert!(log.contains("router stopped"), "clean drain:\n{log}");
    producer.join().unwrap();

    let bus = Bus::start(&kafka, &db, &[]);
    let got = kafka.collect("dst", LETTERS, Duration::from_secs(2));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &got {
        *seen.entry(header(m, "ce_id").unwrap()).or_default() += 1;
    }
    let sent: HashSet<String> = letters.iter().map(|l| l.id.to_string()).collect();
    let arrived: HashSet<String> = seen.keys().cloned().collect();
    assert_eq!(arrived, sent, "every letter arrived");
    let duplicates = got.len() - seen.len();
    println!("duplicates after SIGTERM and restart: {duplicates}");
    assert_eq!(duplicates, 0);
    bus.stop();
}

/// SIGKILL mid-stream (no drain, no final commit) and a restart: every letter arrives at least
/// once; the letters in flight at the kill arrive twice, and are counted.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_then_restart_loses_nothing() {
    const LETTERS: u64 = 20_000;
    let kafka = Kafka::new(1);
    kafka.topic("src", 16);
    kafka.topic("dst", 16);
    let db = Db::with_pigeons(&[pigeon("p", "src", "**", vec![DestinationSpec::topic("dst", "out")])]).await;
    let bus = Bus::start(&kafka, &db, &[]);

    let letters: Vec<Letter> = (0..LETTERS).map(|n| letter("in", n)).collect();
    let producer = {
        let bootstrap = kafka.bootstrap.clone();
        let outgoing: Vec<Outgoing> = letters.iter().map(Outgoing::from).collect();
        std::thread::spawn(move || produce(&bootstrap, "src", outgoing, Some(100)))
    };
    eventually("half the letters forwarded", || bus.metrics()["pigeon_letters_out_total"] >= 10_000);
    let out_at_kill = bus.metrics()["pigeon_letters_out_total"];
    bus.kill();
    producer.join().unwrap();

    let bus = Bus::start(&kafka, &db, &[]);
    let (got, seen) = kafka.collect_every(&letters, "dst");
    println!(
        "SIGKILL after {out_at_kill} of {LETTERS} letters forwarded, then a restart: all arrived, {} duplicates",
        got.len() - seen.len()
    );
    bus.stop();
}
