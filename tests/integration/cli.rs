//! The `pigeon` binary as an operator meets it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pigeon_bus::route::DestinationSpec;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn pigeon_dev_runs_the_demo_activity_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(pigeon_bin())
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("dev.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut kafka = None;
    let mut admin = None;
    while admin.is_none() {
        let line = lines.next().expect("pigeon dev printed its addresses").unwrap();
        if let Some(v) = line.strip_prefix("kafka: ") {
            kafka = Some(v.to_owned());
        }
        if let Some(v) = line.strip_prefix("admin: ") {
            admin = Some(v.to_owned());
        }
    }
    let (kafka, admin) = (kafka.expect("kafka: line first"), admin.unwrap());
    eventually("healthz 200", || http_get(&admin, "/healthz").map(|r| r.0) == Some(200));

    // The bus's own topics and the module topic exist with the configured partitions.
    use rdkafka::producer::Producer;
    let probe: rdkafka::producer::BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka).create().unwrap();
    let metadata = probe.client().fetch_metadata(None, DEADLINE).unwrap();
    let partitions =
        |name: &str| metadata.topics().iter().find(|t| t.name() == name).map(|t| t.partitions().len());
    for topic in ["pigeon.ingress", "pigeon.registry", "pigeon.failed", "pigeon.receipts", "pigeon.control"] {
        assert_eq!(partitions(topic), Some(16), "{topic}");
    }
    assert_eq!(partitions("pigeon.module.act-toy"), Some(16));
    assert_eq!(partitions("live.gift"), Some(16));

    // Any Kafka client can watch the demo: gifts arrive as progress.add on the module topic.
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .set("group.id", "watcher")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&consumer, &["pigeon.module.act-toy"]).unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    let message = loop {
        assert!(std::time::Instant::now() < deadline, "no demo letter arrived");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            break m.detach();
        }
    };
    assert_eq!(header(&message, "ce_type").as_deref(), Some("progress.add"));
    assert_eq!(header(&message, "ce_pigeon").as_deref(), Some("demo-gift-progress"));
    let letter = pigeon_sdk::Letter::from_message(&message).unwrap();
    assert!(letter.payload["giftId"].is_number());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.0.wait().unwrap().success(), "pigeon dev drains and exits cleanly on SIGTERM");
}

/// Kills a child process the test leaves behind when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_bad_config_file_is_refused_with_every_problem_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "brokers = \"x\"\n[router]\nmax_in_flight = 5\n[topics]\npartitions = 0\n")
        .unwrap();
    let out =
        Command::new(pigeon_bin()).args(["--config", path.to_str().unwrap(), "migrate"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "3 problem(s)",
        "unknown key `brokers`",
        "unknown key `router.max_in_flight`",
        "topics.partitions must be at least 1",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_stored_pigeons_stop_the_start_with_every_error() {
    let bad = [
        pigeon("loops", "src", "a.*", vec![DestinationSpec::topic("src", "a.b")]),
        pigeon("nowhere", "src", "a", vec![]),
    ];
    // Saved behind the validator's back, as an older version or a hand edit might have.
    let db = Db::with_pigeons(&bad).await;
    let out = Command::new(pigeon_bin())
        .args(["serve", "--brokers", "127.0.0.1:1", "--database", &db.url, "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(err.contains("\"loops\": destinations[0]: src/a.b would be matched again"), "{err}");
    assert!(err.contains("\"nowhere\": has no destinations"), "{err}");
}

#[test]
fn migrate_applies_to_a_fresh_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let out = Command::new(pigeon_bin()).args(["migrate", "--database", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    assert!(dir.path().join("m.db").exists());
}
