//! Helpers shared by the integration tests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pigeon_bus::route::{DestinationSpec, MatchSpec, PigeonSpec};
use pigeon_bus::store::Store;
use pigeon_sdk::Letter;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A mock Kafka cluster owned by one test.
pub struct Kafka {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub bootstrap: String,
}

impl Kafka {
    pub fn new(brokers: i32) -> Self {
        let cluster = MockCluster::new(brokers).expect("mock cluster");
        let bootstrap = cluster.bootstrap_servers();
        Self { cluster, bootstrap }
    }

    pub fn topic(&self, name: &str, partitions: i32) {
        self.cluster.create_topic(name, partitions, 1).expect("create topic");
    }

    /// Produces messages in order and waits until all are acknowledged.
    pub fn produce(&self, topic: &str, messages: impl IntoIterator<Item = Outgoing>) {
        produce(&self.bootstrap, topic, messages, None);
    }

    /// Reads a topic from the beginning until `count` messages arrived (or `extra` more after
    /// that, to catch duplicates), failing at the deadline.
    pub fn collect(&self, topic: &str, count: usize, extra: Duration) -> Vec<OwnedMessage> {
        self.collect_until(topic, |got| got.len() >= count, extra)
    }

    /// Reads a topic from the beginning until `done` holds for what arrived (and `extra`
    /// longer), failing at the deadline.
    pub fn collect_until(
        &self,
        topic: &str,
        done: impl FnMut(&[OwnedMessage]) -> bool,
        extra: Duration,
    ) -> Vec<OwnedMessage> {
        collect_until(&self.bootstrap, topic, done, extra)
    }

    /// Reads `topic` until every letter's id arrived (failing at the deadline); returns what
    /// arrived and how often each id did.
    pub fn collect_every(
        &self,
        letters: &[Letter],
        topic: &str,
    ) -> (Vec<OwnedMessage>, HashMap<String, usize>) {
        let sent: std::collections::HashSet<String> = letters.iter().map(|l| l.id.to_string()).collect();
        let (mut unique, mut looked) = (std::collections::HashSet::new(), 0);
        let got = self.collect_until(
            topic,
            |got| {
                // Only what arrived since the last look: the check stays linear.
                unique.extend(got[looked..].iter().filter_map(|m| header(m, "ce_id")));
                looked = got.len();
                unique.len() >= sent.len()
            },
            Duration::from_secs(2),
        );
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in &got {
            *seen.entry(header(m, "ce_id").unwrap()).or_default() += 1;
        }
        let arrived: std::collections::HashSet<String> = seen.keys().cloned().collect();
        assert_eq!(arrived, sent, "every letter arrived");
        (got, seen)
    }

    /// Reads `count` messages of a topic of the cluster at `bootstrap` (one the test does not
    /// own, such as `pigeon dev`'s), failing at the deadline.
    pub fn collect_from(bootstrap: &str, topic: &str, count: usize) -> Vec<OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("collector-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let mut out = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while out.len() < count {
            assert!(Instant::now() < deadline, "{topic}: only {} of {count} messages arrived", out.len());
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(m.detach());
            }
        }
        out
    }

    /// The offset the router's group committed for a partition (-1001 when none).
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed");
        match committed.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1001,
        }
    }
}

/// Reads a topic of the cluster at `bootstrap` from the beginning until `done` holds for what
/// arrived (and `extra` longer), failing at the deadline.
pub fn collect_until(
    bootstrap: &str,
    topic: &str,
    done: impl FnMut(&[OwnedMessage]) -> bool,
    extra: Duration,
) -> Vec<OwnedMessage> {
    let (out, complete) = collect_within(bootstrap, topic, done, extra);
    assert!(complete, "{topic}: only {} messages arrived before the deadline", out.len());
    out
}

/// As [`collect_until`], but at the deadline it returns what arrived, with `false`.
pub fn collect_within(
    bootstrap: &str,
    topic: &str,
    mut done: impl FnMut(&[OwnedMessage]) -> bool,
    extra: Duration,
) -> (Vec<OwnedMessage>, bool) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("collector-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), DEADLINE).expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let mut settle: Option<Instant> = None;
    loop {
        if settle.is_none() && done(&out) {
            settle = Some(Instant::now() + extra);
        }
        if settle.is_some_and(|s| Instant::now() >= s) {
            return (out, true);
        }
        if Instant::now() >= deadline {
            return (out, false);
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
}

/// Produces messages in order (pausing 20 ms after every `pace` of them, to stream rather
/// than burst) and waits until all are acknowledged. Needs no mock handle, so any thread can.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    messages: impl IntoIterator<Item = Outgoing>,
    pace: Option<usize>,
) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (i, m) in messages.into_iter().enumerate() {
        let (record, headers) = (BaseRecord::to(topic), m.headers.clone());
        let mut record: BaseRecord<'_, [u8], [u8]> = m.fill(record).headers(headers);
        while let Err((_, back)) = producer.send(record) {
            record = back;
            std::thread::sleep(Duration::from_millis(5));
        }
        if pace.is_some_and(|p| i % p == p - 1) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    producer.flush(DEADLINE).expect("flush");
}

/// A message a test produces.
#[derive(Clone)]
pub struct Outgoing {
    /// The Kafka timestamp (ms); the producer's clock when `None`.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub headers: rdkafka::message::OwnedHeaders,
    pub payload: Option<Vec<u8>>,
}

impl Outgoing {
    /// `record` with this message's key, payload and timestamp (its headers are the caller's
    /// to move in).
    pub fn fill<'a, D: rdkafka::util::IntoOpaque>(
        &'a self,
        mut record: BaseRecord<'a, [u8], [u8], D>,
    ) -> BaseRecord<'a, [u8], [u8], D> {
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &self.payload {
            record = record.payload(payload.as_slice());
        }
        if let Some(ms) = self.timestamp {
            record = record.timestamp(ms);
        }
        record
    }
}

/// Makes the SQLite store at `url` refuse, for good, every row of `table` whose payload holds
/// "poison" (as a column type or a rule of the database might refuse a row).
pub async fn refuse_poison_on_sqlite(url: &str, table: &str) {
    use sqlx::Connection;
    let mut raw = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query(&format!(
        "CREATE TRIGGER refuse_poison_{table} BEFORE INSERT ON {table} \
         WHEN CAST(NEW.payload AS TEXT) LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poisoned payload'); END"
    ))
    .execute(&mut raw)
    .await
    .unwrap();
}

impl From<&Letter> for Outgoing {
    fn from(letter: &Letter) -> Self {
        Self {
            timestamp: None,
            key: letter.key.clone(),
            headers: letter.headers(),
            payload: Some(letter.payload_bytes()),
        }
    }
}

/// A header's value as text (read as bytes: a name that is not UTF-8 panics rdkafka's reader).
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    pigeon_headers::of(message)
        .find(|h| h.is(name))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The store's dead letters (newest first, up to 100) once `done` holds for them, failing at
/// the deadline.
pub async fn wait_dead_letters(
    store: &dyn Store,
    done: impl Fn(&[pigeon_bus::deadletter::DeadLetter]) -> bool,
) -> Vec<pigeon_bus::deadletter::DeadLetter> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let filter = pigeon_bus::deadletter::DeadLetterFilter::default();
        let rows = store.dead_letters(&filter, None, 100).await.unwrap();
        if done(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "dead letters never matched: {rows:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A forward pigeon.
pub fn pigeon(id: &str, topic: &str, tag: &str, destinations: Vec<DestinationSpec>) -> PigeonSpec {
    PigeonSpec {
        id: id.into(),
        name: format!("test pigeon {id}"),
        owner: "tests".into(),
        enabled: true,
        action: Default::default(),
        script: None,
        matcher: MatchSpec::new(topic, tag),
        destinations,
        retry: None,
        window: None,
        dictionary: Default::default(),
    }
}

/// A SQLite store in a temporary folder, with pigeons saved in it.
pub struct Db {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl Db {
    pub async fn with_pigeons(pigeons: &[PigeonSpec]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bus.db").display());
        let store = pigeon_bus::store::open_migrated(&url).await.expect("store");
        for p in pigeons {
            store.save_pigeon(p, "tests").await.expect("save pigeon");
        }
        Self { dir, url }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        pigeon_bus::store::open(&self.url).await.expect("store")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The `pigeon` binary under test.
pub fn pigeon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pigeon")
}

/// A `pigeon serve` child process.
pub struct Bus {
    child: Child,
    pub admin: String,
    pub stderr: PathBuf,
}

/// The consumer group routers join by default.
pub const ROUTER_GROUP: &str = "pigeon-router";
/// The consumer group archivers join by default.
pub const ARCHIVER_GROUP: &str = "pigeon-archiver";

/// Quick group joins and failure detection, as every test router needs.
pub const FAST_GROUP: [&str; 4] =
    ["-X", "consumer.session.timeout.ms=6000", "-X", "consumer.heartbeat.interval.ms=500"];

impl Bus {
    /// Starts `pigeon serve` and waits until it prints its admin URL.
    pub fn start(kafka: &Kafka, db: &Db, extra: &[&str]) -> Self {
        Self::start_with_env(kafka, db, extra, &[])
    }

    /// Starts `pigeon serve` with these environment variables set as well.
    pub fn start_with_env(kafka: &Kafka, db: &Db, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let args: Vec<&str> = FAST_GROUP.iter().chain(extra).copied().collect();
        let bus = Self::launch(&kafka.bootstrap, db, &args, env)
            .unwrap_or_else(|log| panic!("pigeon serve exited before listening:\n{log}"));
        bus.wait_healthy();
        bus
    }

    /// Starts `pigeon serve` on the brokers at `bootstrap` with `args` (no group settings of
    /// the tests' own) and waits until it prints its admin URL, not until it is healthy; its
    /// log when it exits before that.
    pub fn launch(bootstrap: &str, db: &Db, args: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        let stderr = db.path(&format!("router-{}.log", uuid::Uuid::new_v4()));
        let mut child = Command::new(pigeon_bin())
            .args(["serve", "--brokers", bootstrap, "--database", &db.url])
            .args(if args.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
            .args(args)
            .env("RUST_LOG", "info,librdkafka=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn pigeon serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let admin = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("admin: ") {
                        break url.to_owned();
                    }
                }
                _ => {
                    let _ = child.wait();
                    return Err(read(&stderr));
                }
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { child, admin, stderr })
    }

    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + DEADLINE;
        while http_get(&self.admin, "/healthz").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "router never became healthy:\n{}", read(&self.stderr));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every metric of `/metrics` by name, its series (label sets) summed: a pigeon's or a
    /// kind's series add up to the instance's total.
    pub fn metrics(&self) -> HashMap<String, u64> {
        let mut sums: HashMap<String, f64> = HashMap::new();
        for (series, value) in self.series() {
            let name = series.split_once('{').map_or(series.as_str(), |(name, _)| name);
            *sums.entry(name.to_owned()).or_default() += value;
        }
        sums.into_iter().map(|(name, value)| (name, value as u64)).collect()
    }

    /// Every series of `/metrics` as written (`name{label="value",…}`), with its value.
    pub fn series(&self) -> HashMap<String, f64> {
        parse_metrics(&self.scrape())
    }

    /// The text of `/metrics`.
    pub fn scrape(&self) -> String {
        http_get(&self.admin, "/metrics").expect("metrics").1
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).expect("signal");
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = wait_with_deadline(&mut self.child);
        let log = read(&self.stderr);
        assert!(status.success(), "pigeon serve exited with {status}:\n{log}");
        log
    }

    /// SIGKILL: no drain, no commit.
    pub fn kill(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        wait_with_deadline(&mut self.child);
    }

    pub fn log(&self) -> String {
        read(&self.stderr)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_with_deadline(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A plain HTTP/1.1 GET on loopback: status and body.
pub fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
    let addr = base.strip_prefix("http://")?;
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Waits for a condition, failing with `what` at the deadline.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The shared MariaDB server the MySQL tests use.
pub const MARIADB: &str = "mysql://root@127.0.0.1:3306";

impl Db {
    /// A fresh MariaDB database of its own, migrated, with pigeons saved in it; `url` names it
    /// through `host` (`127.0.0.1:3306`, or a proxy in front of it).
    pub async fn mariadb_with_pigeons(pigeons: &[PigeonSpec], host: &str) -> Self {
        use sqlx::Connection;
        let name = format!("pigeon_t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::MySqlConnection::connect(&format!("{MARIADB}/test"))
            .await
            .unwrap_or_else(|e| panic!("MariaDB must run at {MARIADB} (scripts/test starts it): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let store = pigeon_bus::store::open_migrated(&format!("{MARIADB}/{name}")).await.expect("store");
        for p in pigeons {
            store.save_pigeon(p, "tests").await.expect("save pigeon");
        }
        let dir = tempfile::tempdir().unwrap();
        Self { dir, url: format!("mysql://root@{host}/{name}") }
    }
}

impl Db {
    /// Drops the MariaDB database of [`Db::mariadb_with_pigeons`].
    pub async fn drop_mariadb(&self) {
        use sqlx::Connection;
        let name = self.url.rsplit('/').next().unwrap();
        let mut admin = sqlx::MySqlConnection::connect(&format!("{MARIADB}/test")).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {name}")).execute(&mut admin).await.unwrap();
    }
}

/// A TCP proxy in front of a server that a test can cut (every connection dropped, new ones
/// refused) and restore, to fail a dependency without stopping the shared server.
pub struct TcpProxy {
    pub addr: String,
    open: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl TcpProxy {
    pub fn start(upstream: &str) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<std::sync::Mutex<Vec<TcpStream>>> = Arc::default();
        let (upstream, is_open, held) = (upstream.to_owned(), Arc::clone(&open), Arc::clone(&connections));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !is_open.load(Ordering::SeqCst) {
                    drop(client); // refused while cut
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let mut held = held.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, open, connections }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The series of a Prometheus text page and their values (the labels' values hold no spaces
/// in what the bus writes).
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.trim().parse().unwrap_or(f64::NAN)))
        .collect()
}
