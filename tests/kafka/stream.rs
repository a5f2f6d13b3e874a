//! A stream of keyed letters at a steady pace through routers of one group, and the tally of
//! what arrived: the helpers of the tests that disturb a running deployment (scale_out.rs) or
//! the cluster under a router (cluster.rs).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pigeon_bus::archive::ArchiveQuery;
use pigeon_bus::route::{Action, DestinationSpec, PigeonSpec};
use pigeon_bus::store::Store;
use pigeon_sdk::Letter;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::support::{collect_within, header, pigeon, Bus, Db, Outgoing, FAST_GROUP};
use crate::{broker, ensure_topics_replicated, unique};

/// The source topic's partitions by default.
pub const PARTITIONS: i32 = 32;
pub const KEYS: u64 = 64;
/// Letters a second, by default.
pub const RATE: u64 = 2_000;
/// The forward pigeon's tag on its outputs.
pub const TAG: &str = "gift.out";

/// Letters streamed from a source topic through the forward pigeon `fan` (to the destination,
/// tag [`TAG`]), and the processes around the routers. A deployment ([`Stream::deployed`]) runs
/// as the deploy files do: the container's configuration (deploy/pigeon.container.toml) on
/// MariaDB, an archive pigeon `keep` (every letter of the source) and a process each for the
/// archiver, the retrier with the registry, and the admin. The routers, of one group, are the
/// test's to start.
pub struct Stream {
    pub bootstrap: String,
    pub db: Db,
    /// The configuration file of every process.
    pub config: String,
    /// What the configuration holds besides the router group.
    base: String,
    pub source: String,
    pub destination: String,
    /// Letters a second.
    pub rate: u64,
    /// The archiver, the retrier with the registry, the admin (a deployment's).
    pub roles: Vec<Bus>,
}

/// The forward pigeon: from `source` to each of `destinations`, with `tag`.
pub fn fan(source: &str, destinations: &[&str], tag: &str) -> PigeonSpec {
    pigeon("fan", source, "gift.sent", destinations.iter().map(|d| DestinationSpec::topic(d, tag)).collect())
}

impl Stream {
    /// A deployment on the broker under test, its source topic of [`PARTITIONS`].
    pub async fn new() -> Self {
        Self::deployed(PARTITIONS).await
    }

    /// A deployment on the broker under test whose source topic has `partitions`.
    pub async fn deployed(partitions: i32) -> Self {
        let bootstrap = broker();
        let (source, destination) = (unique("live.gift"), unique("lane.out"));
        let mut keep = pigeon("keep", &source, "gift.sent", Vec::new());
        keep.action = Action::Archive;
        let db =
            Db::mariadb_with_pigeons(&[fan(&source, &[&destination], TAG), keep], "127.0.0.1:3306").await;
        ensure_topics_replicated(&bootstrap, &db, partitions, 1);
        let deployed = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/pigeon.container.toml");
        let base = format!(
            "{}\n[archiver]\ngroup = \"{}\"\n",
            std::fs::read_to_string(deployed).expect("deploy/pigeon.container.toml"),
            unique("pigeon-archiver"),
        );
        let config = db.path("pigeon.toml").display().to_string();
        let mut stream =
            Self { bootstrap, db, config, base, source, destination, rate: RATE, roles: Vec::new() };
        stream.group(&unique("pigeon-router"));
        stream.roles =
            ["archiver", "retrier,registry", "admin"].into_iter().map(|r| stream.role(r)).collect();
        stream
    }

    /// A stream of routers alone on the brokers at `bootstrap` (SQLite, the forward pigeon),
    /// its topics of `partitions` with `replication` replicas each, and a router group of its own.
    pub async fn on(bootstrap: &str, partitions: i32, replication: i32) -> Self {
        let bootstrap = bootstrap.to_owned();
        let (source, destination) = (unique("live.gift"), unique("lane.out"));
        let db = Db::with_pigeons(&[fan(&source, &[&destination], TAG)]).await;
        ensure_topics_replicated(&bootstrap, &db, partitions, replication);
        let config = db.path("routers.toml").display().to_string();
        let stream = Self {
            bootstrap,
            db,
            config,
            base: String::new(),
            source,
            destination,
            rate: RATE,
            roles: Vec::new(),
        };
        stream.group(&unique("pigeon-router"));
        stream
    }

    /// Names the consumer group every router of this stream joins from now on.
    pub fn group(&self, group: &str) {
        std::fs::write(&self.config, format!("{}\n[kafka]\nrouter_group = \"{group}\"\n", self.base))
            .unwrap();
    }

    /// The admin process of a deployment.
    pub fn admin(&self) -> &Bus {
        &self.roles[2]
    }

    /// A router process of the group, healthy.
    pub fn router(&self) -> Bus {
        self.router_with(&FAST_GROUP)
    }

    /// A router process of the group with these arguments as well, healthy.
    pub fn router_with(&self, extra: &[&str]) -> Bus {
        self.launch("router", extra)
    }

    /// A process running `roles` (`archiver`, `retrier,registry`…) with the stream's
    /// configuration, healthy.
    pub fn role(&self, roles: &str) -> Bus {
        self.launch(roles, &FAST_GROUP)
    }

    fn launch(&self, roles: &str, extra: &[&str]) -> Bus {
        let args: Vec<&str> =
            ["-c", self.config.as_str(), "--roles", roles].into_iter().chain(extra.iter().copied()).collect();
        let bus = Bus::launch(&self.bootstrap, &self.db, &args, &[])
            .unwrap_or_else(|log| panic!("pigeon serve exited before listening:\n{log}"));
        bus.wait_healthy();
        bus
    }

    /// For a deployment, checks that the archive keeps each letter `sent` once and nothing
    /// else (waiting for the archiver a while) and drops its database; then stops every process.
    pub async fn finish(self, what: &str, sent: &[Sent], routers: Vec<Bus>) {
        if !self.roles.is_empty() {
            let store = self.db.store().await;
            let deadline = Instant::now() + Duration::from_secs(60);
            let kept = loop {
                let kept = archived(store.as_ref()).await;
                if kept.len() >= sent.len() || Instant::now() >= deadline {
                    break kept;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            let missing = sent.iter().filter(|s| !kept.contains_key(&s.letter.id.to_string())).count();
            let twice = kept.values().filter(|n| **n > 1).count();
            println!(
                "{what}: {} letters archived, {missing} missing from the archive, {twice} archived twice",
                kept.len()
            );
            assert_eq!(
                (missing, twice, kept.len()),
                (0, 0, sent.len()),
                "the archive holds every letter once, and no other"
            );
        }
        let deployed = !self.roles.is_empty();
        for bus in routers.into_iter().chain(self.roles) {
            bus.stop();
        }
        if deployed {
            self.db.drop_mariadb().await;
        }
    }

    /// Sends letters at the stream's rate until `stop`, keyed over [`KEYS`] rooms with a sequence per
    /// room; returns them in the order sent.
    pub fn send(&self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Sent>> {
        self.send_to(stop, Arc::new(AtomicI32::new(0)))
    }

    /// As [`Stream::send`]; while `partitions` is above 0, room `k`'s letters go to partition
    /// `k % partitions`, and each letter says which (`"partition"` in its payload).
    pub fn send_to(
        &self,
        stop: Arc<AtomicBool>,
        partitions: Arc<AtomicI32>,
    ) -> std::thread::JoinHandle<Vec<Sent>> {
        let (bootstrap, topic, rate) = (self.bootstrap.clone(), self.source.clone(), self.rate);
        std::thread::spawn(move || {
            let positions = Positions::default();
            let producer: ThreadedProducer<Positions> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                // Partitions added mid-stream are known within a second.
                .set("topic.metadata.refresh.interval.ms", "1000")
                .create_with_context(positions.clone())
                .expect("producer");
            let started = Instant::now();
            let mut sent = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                while (sent.len() as u64) < due {
                    let n = sent.len() as u64;
                    let room = format!("room-{}", n % KEYS);
                    let chosen = partitions.load(Ordering::Relaxed);
                    let partition = (chosen > 0).then(|| (n % KEYS) as i32 % chosen);
                    let payload = serde_json::json!({"seq": n / KEYS, "partition": partition});
                    let letter = Letter::new("tests", "gift.sent", payload).with_key(room.as_str());
                    let m = Outgoing::from(&letter);
                    let headers = m.headers.clone();
                    let mut record = m.fill(BaseRecord::with_opaque_to(&topic, sent.len())).headers(headers);
                    if let Some(partition) = partition {
                        record = record.partition(partition);
                    }
                    while let Err((_, back)) = producer.send(record) {
                        record = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    sent.push(letter);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            producer.flush(Duration::from_secs(30)).expect("flush");
            let positions = positions.0.lock().unwrap();
            sent.into_iter()
                .enumerate()
                .map(|(i, letter)| Sent { letter, at: positions.get(&i).copied() })
                .collect()
        })
    }

    /// Every output once the stream is done, with a few seconds more to catch duplicates (what
    /// arrived by the deadline if some never do: the tally says which).
    pub fn outputs(&self, sent: usize) -> Vec<OwnedMessage> {
        // Counted as they come: a count over everything on each poll slows the reading down
        // to a few hundred messages a second once thousands have arrived.
        let (mut ids, mut counted) = (HashSet::new(), 0);
        let done = |got: &[OwnedMessage]| {
            ids.extend(got[counted..].iter().filter_map(|m| header(m, "ce_id")));
            counted = got.len();
            ids.len() >= sent
        };
        collect_within(&self.bootstrap, &self.destination, done, Duration::from_secs(5)).0
    }
}

/// A letter sent, and where the broker put it (`None` if it never said).
pub struct Sent {
    pub letter: Letter,
    pub at: Option<(i32, i64)>,
}

/// The producer's delivery reports: letter number to (partition, offset).
#[derive(Clone, Default)]
struct Positions(Arc<std::sync::Mutex<HashMap<usize, (i32, i64)>>>);

impl ClientContext for Positions {}

impl ProducerContext for Positions {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, n: usize) {
        if let Ok(m) = result {
            self.0.lock().unwrap().insert(n, (m.partition(), m.offset()));
        }
    }
}

/// Every letter the archive holds: its ids, with how many rows each has.
async fn archived(store: &dyn Store) -> HashMap<String, usize> {
    const PAGE: u32 = 5_000;
    let query = ArchiveQuery { since: i64::MIN, until: i64::MAX, ..Default::default() };
    let (mut ids, mut after) = (HashMap::new(), None);
    loop {
        let page = store.archive().archived(&query, after.as_ref(), PAGE).await.expect("archive page");
        for row in &page {
            *ids.entry(row.letter_id.clone()).or_insert(0) += 1;
        }
        after = page.last().map(|row| row.position.clone());
        if page.len() < PAGE as usize {
            return ids;
        }
    }
}

/// How many partitions of `topic` a router holds now, by its log (each rebalance logs the
/// partitions it assigns or revokes, by topic: `which=live.gift.x[0,3] pigeon.ingress[1]`).
pub fn held(router: &Bus, topic: &str) -> i64 {
    let count = |line: &str| {
        let listed = line.split(&format!("{topic}[")).nth(1)?.split(']').next()?;
        Some(listed.split(',').filter(|p| !p.is_empty()).count() as i64)
    };
    router.log().lines().fold(0, |held, line| {
        if line.contains("partitions assigned") {
            held + count(line).unwrap_or(0)
        } else if line.contains("partitions revoked") {
            held - count(line).unwrap_or(0)
        } else {
            held
        }
    })
}

/// What arrived against what was sent: (lost, duplicates), after checking that each key's
/// letters arrived first in the order sent.
pub fn tally(what: &str, sent: &[Sent], got: &[OwnedMessage]) -> (usize, usize) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut duplicates = 0;
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    for m in got {
        let id = header(m, "ce_id").expect("ce_id");
        if !seen.insert(id) {
            duplicates += 1;
            continue;
        }
        let payload = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap();
        let seq = payload["seq"].as_i64().unwrap();
        // Per source partition and key (a key moves when partitions are added).
        let mut key = m.key().unwrap().to_vec();
        key.extend(format!(" @{}", payload["partition"]).into_bytes());
        let before = last.insert(key.clone(), seq);
        assert!(
            before.is_none_or(|b| b < seq),
            "{what}: {} arrived first out of order",
            String::from_utf8_lossy(&key)
        );
    }
    let missing: Vec<&Sent> = sent.iter().filter(|s| !seen.contains(&s.letter.id.to_string())).collect();
    let lost = missing.len();
    // Where the lost letters were: (first offset, last offset, count) per source partition.
    let mut by_partition: std::collections::BTreeMap<Option<i32>, (i64, i64, usize)> = Default::default();
    for s in &missing {
        let (partition, offset) = s.at.map_or((None, -1), |(p, o)| (Some(p), o));
        let e = by_partition.entry(partition).or_insert((offset, offset, 0));
        (e.0, e.1, e.2) = (e.0.min(offset), e.1.max(offset), e.2 + 1);
    }
    for (partition, (first, last, n)) in &by_partition {
        println!("{what}: lost {n} of partition {partition:?}, offsets {first}..={last}");
    }
    println!(
        "{what}: {} letters sent, {} outputs, lost {lost}, duplicates {duplicates}",
        sent.len(),
        got.len()
    );
    (lost, duplicates)
}
