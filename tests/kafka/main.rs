//! Tests against a real Apache Kafka broker: the one whose address is in `PIGEON_TEST_KAFKA`.
//! `scripts/kafka` starts one (Kafka 4, KRaft, a single broker and controller) and prints the
//! address; `scripts/test` starts it, runs this tier one test at a time and stops it. The tests
//! of `cluster` need a three-node cluster of `scripts/kafka cluster` instead, its addresses in
//! `PIGEON_TEST_KAFKA_CLUSTER` (they stop and start its nodes through the script); the others
//! never use it.
//!
//! The broker is shared: every test names its topics and consumer groups afresh, so the tier
//! can run again against the same broker. The helpers are the integration tier's.

mod cluster;
mod forward;
mod group_protocol;
mod scale_out;
mod stream;
#[allow(dead_code)]
#[path = "../integration/support.rs"]
mod support;
mod topics;
mod trace;
mod transactions;

use std::process::Command;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use support::{pigeon_bin, Bus, Db};

/// The broker under test, from `PIGEON_TEST_KAFKA`.
pub fn broker() -> String {
    match std::env::var("PIGEON_TEST_KAFKA") {
        Ok(address) if !address.trim().is_empty() => address,
        _ => panic!(
            "PIGEON_TEST_KAFKA is not set: this tier needs a real Kafka broker. Start one with \
             `scripts/kafka` and run `PIGEON_TEST_KAFKA=<the address it prints> cargo test -p pigeon \
             --test kafka -- --test-threads 1 --skip cluster::` (scripts/test does both)"
        ),
    }
}

/// The three-node cluster under test, from `PIGEON_TEST_KAFKA_CLUSTER`: its nodes' addresses,
/// node N's the Nth.
pub fn cluster() -> String {
    match std::env::var("PIGEON_TEST_KAFKA_CLUSTER") {
        Ok(addresses) if !addresses.trim().is_empty() => addresses,
        _ => panic!(
            "PIGEON_TEST_KAFKA_CLUSTER is not set: this test needs a three-node Kafka cluster whose \
             nodes it stops and starts. Start one with `scripts/kafka cluster` and run \
             `PIGEON_TEST_KAFKA_CLUSTER=<the addresses it prints> cargo test -p pigeon --test kafka \
             cluster:: -- --test-threads 1` (scripts/test does both)"
        ),
    }
}

/// `name` with a suffix of its own, so that no two runs share a topic or a group.
pub fn unique(name: &str) -> String {
    format!("{name}.{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A client of the broker under test.
pub fn client(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// How many partitions a topic has (0 when it does not exist).
pub fn partitions(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = client(bootstrap).create().expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let topic = &metadata.topics()[0];
    if topic.error().is_some() {
        0
    } else {
        topic.partitions().len()
    }
}

/// Runs `pigeon topics ensure` for the pigeons in `db`, single replicas, `partitions` each;
/// its standard output.
pub fn ensure_topics(bootstrap: &str, db: &Db, partitions: i32) -> String {
    ensure_topics_replicated(bootstrap, db, partitions, 1)
}

/// As [`ensure_topics`], with `replication` replicas of each partition.
pub fn ensure_topics_replicated(bootstrap: &str, db: &Db, partitions: i32, replication: i32) -> String {
    let out = Command::new(pigeon_bin())
        .args(["topics", "ensure", "--brokers", bootstrap, "--database", &db.url])
        .args(["--partitions", &partitions.to_string(), "--replication", &replication.to_string()])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pigeon topics ensure");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pigeon topics ensure failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A configuration file naming a router group of its own, for `pigeon serve -c`.
pub fn config_file(db: &Db) -> String {
    let path = db.path("pigeon.toml");
    std::fs::write(&path, format!("[kafka]\nrouter_group = \"{}\"\n", unique("pigeon-router"))).unwrap();
    path.display().to_string()
}

/// `pigeon serve` on the broker under test, in a group of its own, waited for until healthy.
pub fn serve(bootstrap: &str, db: &Db, extra: &[&str]) -> Bus {
    let config = config_file(db);
    let args: Vec<&str> =
        ["-c", config.as_str()].into_iter().chain(support::FAST_GROUP).chain(extra.iter().copied()).collect();
    let bus = Bus::launch(bootstrap, db, &args, &[])
        .unwrap_or_else(|log| panic!("pigeon serve exited before listening:\n{log}"));
    bus.wait_healthy();
    bus
}
