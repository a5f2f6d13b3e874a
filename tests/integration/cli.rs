//! The `pigeon` binary as an operator meets it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pigeon_bus::route::DestinationSpec;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn pigeon_dev_runs_the_demo_activity_end_to_end() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0"]);
    let (kafka, admin) = (dev.kafka.clone(), dev.admin.clone());
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

    // The demo provider is the SDK's act-toy example: registered, live, both capabilities.
    let providers = || async {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/providers", dev.admin))
            .bearer_auth(&dev.token)
            .send()
            .await
            .unwrap();
        response.json::<serde_json::Value>().await.unwrap()
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    let list = loop {
        let list = providers().await;
        if list[0]["live"] == true {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "act-toy never registered: {list:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list[0]["module"], "act-toy", "{list:#}");
    let names: Vec<&str> =
        list[0]["capabilities"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["chest.drop", "progress.add"]);

    // Two big gifts fill a room's bar: the module flies progress.full, the demo pigeon
    // delivers it to chest.drop, and a chest drops.
    let gift = |n: i64| {
        pigeon_sdk::Letter::build("gift.sent")
            .source("tour")
            .user_id(n)
            .room_id("r-tour")
            .gift_count(10)
            .key("r-tour")
            .finish()
    };
    produce(&kafka, "live.gift", [Outgoing::from(&gift(1)), Outgoing::from(&gift(2))], None);
    let log_path = dev.dir.path().join("dev.log");
    eventually("a chest drops in r-tour", || {
        read(&log_path).lines().any(|l| l.contains("a treasure chest drops") && l.contains("r-tour"))
    });

    let log = dev.stop();
    assert!(log.contains("module stopped"), "the demo module drains on SIGTERM:\n{log}");
}

/// The demo archive pigeon keeps every gift `pigeon dev` sends; the CLI searches the archive,
/// counts a replay, runs it to its end and lists it.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_searches_the_archive_and_replays_it_against_pigeon_dev() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0", "--no-demo-traffic"]);
    let gifts: Vec<pigeon_sdk::Letter> = (0..30)
        .map(|n| {
            pigeon_sdk::Letter::build("gift.sent")
                .source("tour")
                .user_id(n % 3)
                .room_id("r-cli")
                .key("r-cli")
                .finish()
        })
        .collect();
    produce(&dev.kafka, "live.gift", gifts.iter().map(Outgoing::from), None);
    eventually("the demo archive pigeon keeps every gift", || {
        dev.pigeon(&["archive", "search", "--since", "1h", "--key", "roomId=r-cli"]).lines().count() == 31
    });
    let found = dev.pigeon(&["archive", "search", "--since", "1h", "--key", "userId=1", "--limit", "5"]);
    assert!(found.contains("userId=1") && !found.contains("userId=2"), "{found}");
    assert!(
        found.contains("(more: narrow the search or raise --limit)"),
        "10 letters, 5 shown:
{found}"
    );
    let shown = dev.pigeon(&["archive", "show", &gifts[4].id.to_string()]);
    assert!(shown.contains("\"pigeon\": \"demo-gift-archive\"") && shown.contains("r-cli"), "{shown}");

    let user1 = ["--since", "1h", "--key", "userId=1", "--to-topic", "replay.cli"];
    let dry = dev.pigeon(&[&["replay"][..], &user1, &["--dry-run"]].concat());
    assert!(dry.starts_with("10 letter(s) would be replayed to replay.cli"), "{dry}");
    let done = dev.pigeon(&[&["replay"][..], &user1, &["--rate", "100/s"]].concat());
    assert!(done.contains("done — 10 of 10 letter(s) sent"), "{done}");
    let replayed = Kafka::collect_from(&dev.kafka, "replay.cli", 10);
    let originals: std::collections::HashSet<String> =
        gifts.iter().skip(1).step_by(3).map(|l| l.id.to_string()).collect();
    let marks: std::collections::HashSet<String> =
        replayed.iter().filter_map(|m| header(m, "ce_replayof")).collect();
    assert_eq!(marks, originals, "user 1's gifts, each marked as a replay");
    let listed = dev.pigeon(&["replay", "list"]);
    assert!(listed.contains("done") && listed.contains("replay.cli"), "{listed}");
    let refused = Command::new(pigeon_bin())
        .args(["replay", "--since", "1h", "--key", "uid=1", "--through-pigeons"])
        .env("PIGEON_URL", &dev.admin)
        .env("PIGEON_TOKEN", &dev.token)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not an indexed key"));
    dev.stop();
}

/// A `pigeon dev` child process and the addresses it printed.
struct Dev {
    child: std::process::Child,
    dir: tempfile::TempDir,
    kafka: String,
    admin: String,
    token: String,
}

impl Dev {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(pigeon_bin())
            .arg("dev")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("dev.log")).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut kafka, mut token) = (None, None);
        let admin = loop {
            let line = lines.next().expect("pigeon dev printed its addresses").unwrap();
            if let Some(v) = line.strip_prefix("kafka: ") {
                kafka = Some(v.to_owned());
            }
            if let Some(v) = line.strip_prefix("token: ") {
                token = Some(v.to_owned());
            }
            if let Some(v) = line.strip_prefix("admin: ") {
                break v.to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let (kafka, token) = (kafka.expect("a kafka: line"), token.expect("a token: line"));
        Self { child, dir, kafka, admin, token }
    }

    /// Runs a `pigeon` command against this bus; returns stdout, failing on a non-zero exit.
    fn pigeon(&self, args: &[&str]) -> String {
        let out = Command::new(pigeon_bin())
            .args(args)
            .env("PIGEON_URL", &self.admin)
            .env("PIGEON_TOKEN", &self.token)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pigeon {args:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// SIGTERM, a clean exit, and the log it wrote.
    fn stop(mut self) -> String {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(self.child.wait().unwrap().success(), "pigeon dev drains and exits cleanly on SIGTERM");
        read(&self.dir.path().join("dev.log"))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_apply_export_apply_round_trips_against_pigeon_dev() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0", "--no-demo-traffic"]);
    let routes = dev.dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        r#"pigeons:
  - id: demo-gift-progress
    name: Gifts fill the progress bar
    owner: demo
    match: { topic: live.gift, tag: gift.sent }
    destinations: [{ capability: act-toy/progress.add }]
  - id: chest-on-full
    owner: spring
    match: { topic: pigeon.module.act-toy, tag: progress.full }
    destinations:
      - capability: act-chest/chest.drop
      - { topic: lane.banner, tag: banner.show }
"#,
    )
    .unwrap();
    let dry = dev.pigeon(&["routes", "apply", "-f", routes.to_str().unwrap(), "--dry-run"]);
    assert!(dry.contains("+ chest-on-full") && dry.contains("= demo-gift-progress"), "{dry}");
    assert!(dry.contains("dry run: 1 change(s) not applied"), "{dry}");
    let listed = dev.pigeon(&["routes", "list"]);
    assert!(!listed.contains("chest-on-full"), "a dry run applies nothing:\n{listed}");

    let applied = dev.pigeon(&["routes", "apply", "-f", routes.to_str().unwrap()]);
    assert!(applied.contains("applied 1 change(s)"), "{applied}");
    let listed = dev.pigeon(&["routes", "list"]);
    assert!(
        listed.contains("chest-on-full") && listed.contains("act-chest/chest.drop, lane.banner#banner.show"),
        "{listed}"
    );

    for name in ["exported.toml", "exported.yaml"] {
        let exported = dev.dir.path().join(name);
        dev.pigeon(&["routes", "export", "-o", exported.to_str().unwrap()]);
        let again = dev.pigeon(&["routes", "apply", "-f", exported.to_str().unwrap()]);
        assert!(again.contains("nothing to change"), "apply → export → apply must be a no-op:\n{again}");
    }

    // A broken file changes nothing and says why.
    let broken = dev.dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "pigeons:\n  - id: Bad\n    match: { topic: t }\n    destinations: []\n    colour: red\n",
    )
    .unwrap();
    let out = Command::new(pigeon_bin())
        .args(["routes", "apply", "-f", broken.to_str().unwrap(), "--url", &dev.admin, "--token", &dev.token])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pigeons[0]: unknown key `colour`"), "{err}");
    let out = Command::new(pigeon_bin())
        .args(["routes", "list", "--url", &dev.admin, "--token", "pgn_wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown or revoked token"));
    let token = dev.token.clone();
    let log = dev.stop();
    assert!(log.contains("router stopped"), "{log}");
    assert!(!log.contains(&token), "the token reached the log");
}

#[test]
fn tokens_are_created_listed_and_revoked_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let run =
        |args: &[&str]| Command::new(pigeon_bin()).args(args).args(["--database", &db]).output().unwrap();
    let out = run(&["tokens", "create", "--name", "ci", "--role", "operator"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let token = stdout.trim().strip_prefix("token: ").expect("token: line");
    assert!(token.starts_with("pgn_"));
    let out = run(&["tokens", "create", "--name", "x", "--role", "root"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown role"));
    let listed = String::from_utf8_lossy(&run(&["tokens", "list"]).stdout).into_owned();
    assert!(listed.contains("ci") && listed.contains("operator") && listed.contains("active"), "{listed}");
    assert!(!listed.contains(token), "listings never show values");
    assert!(run(&["tokens", "revoke", "ci"]).status.success());
    let listed = String::from_utf8_lossy(&run(&["tokens", "list"]).stdout).into_owned();
    assert!(listed.contains("revoked"), "{listed}");
    assert!(!run(&["tokens", "revoke", "ci"]).status.success(), "revoking twice fails");
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
async fn invalid_stored_pigeons_are_quarantined_at_start_with_every_error() {
    let bad = [
        pigeon("loops", "src", "a.*", vec![DestinationSpec::topic("src", "a.b")]),
        pigeon("nowhere", "src", "a..b", vec![]),
    ];
    // Saved behind the validator's back, as an older version or a hand edit might have.
    let db = Db::with_pigeons(&bad).await;
    let log = db.path("serve.log");
    let mut child = Command::new(pigeon_bin())
        .args(["serve", "--brokers", "127.0.0.1:1", "--database", &db.url, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    eventually("both pigeons quarantined", || read(&log).matches("pigeon quarantined").count() >= 2);
    let err = read(&log);
    let line = |id: &str| {
        err.lines()
            .find(|l| l.contains("quarantined") && l.contains(&format!("pigeon={id} ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("loops").contains("destinations[0]: src/a.b would be matched again"), "{err}");
    assert!(line("nowhere").contains("tag pattern"), "{err}");
    assert!(line("nowhere").contains("has no destinations"), "every problem at once: {err}");
    assert!(child.try_wait().unwrap().is_none(), "the bus runs on without them:\n{err}");
    let _ = child.kill();
    let _ = child.wait();
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

#[test]
fn scripts_test_prints_the_letters_a_script_emits_or_fails() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rhai");
    let arg = |name: &str| examples.join(name).to_str().unwrap().to_owned();
    let out = Command::new(pigeon_bin())
        .args([
            "scripts",
            "test",
            "--script",
            &arg("gift-to-progress.rhai"),
            "--letter",
            &arg("gift-to-progress.letter.json"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let letters: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(letters[0]["tag"], "progress.add");
    assert_eq!(letters[0]["payload"]["points"], 30);

    // --dest overrides the letter file's destinations.
    let out = Command::new(pigeon_bin())
        .args(["scripts", "test", "--script", &arg("filter-test-rooms.rhai"), "--letter"])
        .arg(arg("filter-test-rooms.letter.json"))
        .args(["--dest", "lane.audit#audit.gift"])
        .output()
        .unwrap();
    let letters: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (letters[0]["topic"].as_str(), letters[0]["tag"].as_str()),
        (Some("lane.audit"), Some("audit.gift"))
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rhai");
    std::fs::write(&bad, "let points = payload.giftCount *;\n").unwrap();
    let out = Command::new(pigeon_bin())
        .args([
            "scripts",
            "test",
            "--script",
            bad.to_str().unwrap(),
            "--letter",
            &arg("gift-to-progress.letter.json"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not compile at line 1"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dictionary_is_kept_from_the_command_line() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0", "--no-demo-traffic"]);
    let listed = dev.pigeon(&["dictionary", "list"]);
    assert!(
        listed.lines().any(|l| l.starts_with("userId") && l.contains("integer") && l.contains("uid")),
        "the seeded vocabulary: {listed}"
    );
    let set = |args: &[&str]| dev.pigeon(&[&["dictionary", "set", "comboCount"], args].concat());
    let saved = set(&["--type", "integer", "--description", "Gifts in one combo", "--alias", "combo"]);
    assert!(saved.contains("comboCount is at version 1"), "{saved}");
    let saved = set(&["--alias", "combo", "--alias", "combo_count"]);
    assert!(saved.contains("comboCount is at version 2"), "{saved}");
    let listed = dev.pigeon(&["dictionary", "list"]);
    let line = listed.lines().find(|l| l.starts_with("comboCount")).expect("listed");
    assert!(
        line.contains("combo, combo_count") && line.contains("Gifts in one combo"),
        "kept the rest: {line}"
    );

    // Refused with the reason; nothing changed.
    let refused = Command::new(pigeon_bin())
        .args(["dictionary", "set", "tip", "--type", "number", "--description", "Tips", "--alias", "uid"])
        .env("PIGEON_URL", &dev.admin)
        .env("PIGEON_TOKEN", &dev.token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("\"uid\" is already used by field \"userId\""), "{stderr}");
    assert!(!dev.pigeon(&["dictionary", "list"]).contains("tip "));

    let deleted = dev.pigeon(&["dictionary", "delete", "comboCount"]);
    assert!(deleted.contains("comboCount deleted (it was at version 2)"), "{deleted}");
    dev.stop();
}

#[test]
fn dev_broker_serves_the_topics_it_is_told_until_sigterm() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let refused = Command::new(pigeon_bin()).args(["dev-broker", "--topic", "bench.src:0"]).output().unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("\"0\" is not a partition count from 1 to 10000"), "{said}");
    let refused = Command::new(pigeon_bin()).args(["dev-broker", "--topic", "no spaces"]).output().unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a Kafka topic name"));

    let mut child = Command::new(pigeon_bin())
        .args(["dev-broker", "--topic", "bench.src:16", "--topic", "bench.out", "--partitions", "6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let bootstrap = loop {
        let line = lines.next().expect("dev-broker printed its address").unwrap();
        if let Some(servers) = line.strip_prefix("kafka: ") {
            break servers.to_owned();
        }
    };
    let producer: BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    let metadata = producer.client().fetch_metadata(None, DEADLINE).unwrap();
    let partitions =
        |name: &str| metadata.topics().iter().find(|t| t.name() == name).map(|t| t.partitions().len());
    assert_eq!((partitions("bench.src"), partitions("bench.out")), (Some(16), Some(6)));

    producer.send(BaseRecord::to("bench.src").partition(9).key("k").payload("a letter")).unwrap();
    producer.flush(DEADLINE).unwrap();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "dev-broker-test")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .unwrap();
    consumer.subscribe(&["bench.src"]).unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    let got = loop {
        assert!(std::time::Instant::now() < deadline, "the letter never came back");
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            break (message.partition(), message.payload().map(<[u8]>::to_vec));
        }
    };
    assert_eq!(got, (9, Some(b"a letter".to_vec())));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "dev-broker exits cleanly on SIGTERM: {status}");
}
