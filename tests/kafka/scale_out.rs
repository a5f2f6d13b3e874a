//! Several routers in one group on the real broker, as separate processes, while letters
//! stream at a steady pace: a rolling restart (each router stopped with SIGTERM and replaced,
//! one at a time) loses and duplicates nothing; a router killed with SIGKILL loses nothing and
//! duplicates at most what it had forwarded and not committed (printed); partitions added to
//! the source mid-stream lose and duplicate nothing. Each key's letters arrive first in the
//! order they were sent. A loss is reported by source partition and offsets.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pigeon_bus::archive::ArchiveQuery;
use pigeon_bus::route::{Action, DestinationSpec, PigeonSpec};
use pigeon_bus::store::Store;
use pigeon_bus::token::Role;
use pigeon_sdk::Letter;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::support::{collect_within, header, pigeon, Bus, Db, Outgoing, FAST_GROUP};
use crate::{broker, ensure_topics, unique};

pub const PARTITIONS: i32 = 32;
const KEYS: u64 = 64;
/// Letters a second.
pub const RATE: u64 = 2_000;

/// Pigeon deployed as the deploy files run it, around one source topic: the container's
/// configuration (deploy/pigeon.container.toml) on MariaDB, the forward pigeon `fan` (source →
/// destination, tag [`TAG`]) and the archive pigeon `keep` (every letter of the source), a
/// process each for the archiver, the retrier with the registry, and the admin; the routers,
/// of one group, are the test's to start.
pub struct Stream {
    pub bootstrap: String,
    pub db: Db,
    /// The configuration file of every process.
    pub config: String,
    pub source: String,
    pub destination: String,
    /// The archiver, the retrier with the registry, the admin.
    pub roles: Vec<Bus>,
}

/// The forward pigeon's tag on its outputs.
pub const TAG: &str = "gift.out";

/// The forward pigeon: from `source` to each of `destinations`, with `tag`.
pub fn fan(source: &str, destinations: &[&str], tag: &str) -> PigeonSpec {
    pigeon("fan", source, "gift.sent", destinations.iter().map(|d| DestinationSpec::topic(d, tag)).collect())
}

impl Stream {
    async fn new() -> Self {
        Self::new_with(PARTITIONS).await
    }

    /// The deployment around a source topic of `partitions`.
    pub async fn new_with(partitions: i32) -> Self {
        let bootstrap = broker();
        let (source, destination) = (unique("live.gift"), unique("lane.out"));
        let mut keep = pigeon("keep", &source, "gift.sent", Vec::new());
        keep.action = Action::Archive;
        let db =
            Db::mariadb_with_pigeons(&[fan(&source, &[&destination], TAG), keep], "127.0.0.1:3306").await;
        ensure_topics(&bootstrap, &db, partitions);
        // The container's configuration, with groups of this test's own.
        let deployed = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/pigeon.container.toml");
        let config = db.path("pigeon.toml");
        std::fs::write(
            &config,
            format!(
                "{}\n[kafka]\nrouter_group = \"{}\"\n\n[archiver]\ngroup = \"{}\"\n",
                std::fs::read_to_string(deployed).expect("deploy/pigeon.container.toml"),
                unique("pigeon-router"),
                unique("pigeon-archiver"),
            ),
        )
        .unwrap();
        let mut stream = Self {
            bootstrap,
            db,
            config: config.display().to_string(),
            source,
            destination,
            roles: Vec::new(),
        };
        stream.roles =
            ["archiver", "retrier,registry", "admin"].into_iter().map(|r| stream.role(r)).collect();
        stream
    }

    /// The admin process.
    pub fn admin(&self) -> &Bus {
        &self.roles[2]
    }

    /// Checks that the archive keeps each letter `sent` once and nothing else (waiting for the
    /// archiver a while), then stops every process and drops the database.
    pub async fn finish(self, what: &str, sent: &[Sent], routers: Vec<Bus>) {
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
        for bus in routers.into_iter().chain(self.roles) {
            bus.stop();
        }
        self.db.drop_mariadb().await;
    }

    /// A router process of the group, healthy.
    pub fn router(&self) -> Bus {
        self.role("router")
    }

    /// A process running `roles` (`router`, `archiver`, `retrier,registry`…) with the
    /// stream's configuration, healthy.
    pub fn role(&self, roles: &str) -> Bus {
        let args: Vec<&str> =
            ["-c", self.config.as_str(), "--roles", roles].into_iter().chain(FAST_GROUP).collect();
        let bus = Bus::launch(&self.bootstrap, &self.db, &args, &[])
            .unwrap_or_else(|log| panic!("pigeon serve exited before listening:\n{log}"));
        bus.wait_healthy();
        bus
    }

    /// Sends letters at [`RATE`] until `stop`, keyed over [`KEYS`] rooms with a sequence per
    /// room; returns them in the order sent.
    pub fn send(&self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Sent>> {
        self.send_to(stop, Arc::new(AtomicI32::new(0)))
    }

    /// As [`Stream::send`]; while `partitions` is above 0, room `k`'s letters go to partition
    /// `k % partitions`, and each letter says which (`"partition"` in its payload).
    fn send_to(
        &self,
        stop: Arc<AtomicBool>,
        partitions: Arc<AtomicI32>,
    ) -> std::thread::JoinHandle<Vec<Sent>> {
        let (bootstrap, topic) = (self.bootstrap.clone(), self.source.clone());
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
                let due = (started.elapsed().as_secs_f64() * RATE as f64) as u64;
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
fn held(router: &Bus, topic: &str) -> i64 {
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

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_three_routers_loses_and_duplicates_nothing() {
    let stream = Stream::new().await;
    let mut routers: Vec<Bus> = (0..3).map(|_| stream.router()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = stream.send(Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(3));
    // One at a time: a new router joins, then an old one drains and leaves.
    for _ in 0..3 {
        routers.push(stream.router());
        let old = routers.remove(0);
        old.stop();
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap();
    let got = stream.outputs(sent.len());
    let (lost, duplicates) = tally("rolling restart", &sent, &got);
    assert_eq!((lost, duplicates), (0, 0), "nothing lost, nothing twice");
    stream.finish("rolling restart", &sent, routers).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_router_killed_mid_stream_loses_nothing() {
    let stream = Stream::new().await;
    let mut routers: Vec<Bus> = (0..3).map(|_| stream.router()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = stream.send(Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(3));
    // The router holding the most partitions, killed mid-stream; another takes its place.
    let busiest = (0..routers.len()).max_by_key(|&i| held(&routers[i], &stream.source)).unwrap_or(0);
    let partitions = held(&routers[busiest], &stream.source);
    assert!(partitions > 0, "the killed router holds partitions");
    let killed_at = Instant::now();
    routers.remove(busiest).kill();
    routers.push(stream.router());
    let replaced = killed_at.elapsed();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap();
    let got = stream.outputs(sent.len());
    let (lost, duplicates) = tally("SIGKILL", &sent, &got);
    assert_eq!(lost, 0, "nothing lost");
    // Read again: what the killed router had read and not committed (offsets are committed
    // every second), at most the letters of a few seconds around the kill.
    let bound = (RATE as f64 * 3.0) as usize;
    println!(
        "SIGKILL of a router holding {partitions} of {PARTITIONS} partitions: {duplicates} duplicates \
         (read again: letters it had not committed; bound {bound}); its replacement was healthy {replaced:?} after"
    );
    assert!(duplicates <= bound, "{duplicates} duplicates");
    stream.finish("SIGKILL", &sent, routers).await;
}

/// Partitions added to the source topic mid-stream (16 to 32): the routers find them (their
/// metadata refresh) and read them from the start; nothing is lost or duplicated, and each
/// (partition, key)'s letters arrive first in order.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_to_a_source_mid_stream_lose_and_duplicate_nothing() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let stream = Stream::new_with(16).await;
    let routers: Vec<Bus> = (0..2).map(|_| stream.router()).collect();
    let (stop, partitions) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI32::new(16)));
    let sending = stream.send_to(Arc::clone(&stop), Arc::clone(&partitions));
    std::thread::sleep(Duration::from_secs(3));
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &stream.bootstrap).create().expect("admin");
    let grown = admin
        .create_partitions(&[NewPartitions::new(&stream.source, 32)], &AdminOptions::new())
        .await
        .expect("CreatePartitions");
    assert!(grown.iter().all(Result::is_ok), "{grown:?}");
    partitions.store(32, Ordering::Relaxed);
    // The routers refresh metadata every 10 s: stream on past that.
    std::thread::sleep(Duration::from_secs(14));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap();
    let got = stream.outputs(sent.len());
    let late = got
        .iter()
        .filter(|m| {
            let payload: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            payload["partition"].as_i64().is_some_and(|p| p >= 16)
        })
        .count();
    assert!(late > 0, "letters went to the added partitions");
    let (lost, duplicates) = tally("partitions added", &sent, &got);
    assert_eq!((lost, duplicates), (0, 0), "nothing lost, nothing twice");
    stream.finish("partitions added", &sent, routers).await;
}

/// A pigeon changed through the admin API mid-stream (version 2 sends to a second topic too,
/// with another tag): each letter goes by exactly one version, all of its destinations, once;
/// per key, version 1's letters come before version 2's.
#[tokio::test(flavor = "multi_thread")]
async fn a_pigeon_changed_mid_stream_takes_each_letter_by_exactly_one_version() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    const V2: &str = "gift.v2";
    let stream = Stream::new().await;
    // Version 2's new destination exists before it is needed, as an operator would make it.
    let second_lane = unique("lane.two");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &stream.bootstrap).create().expect("admin");
    let created = admin
        .create_topics(
            &[NewTopic::new(&second_lane, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("CreateTopics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let token = pigeon::cli::tokens::create(stream.db.store().await.as_ref(), "ops", Role::Operator, "tests")
        .await
        .expect("token");
    let routers: Vec<Bus> = (0..3).map(|_| stream.router()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = stream.send(Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(4));
    let v2 = fan(&stream.source, &[&stream.destination, &second_lane], V2);
    let response = reqwest::Client::new()
        .put(format!("{}/api/v1/pigeons/fan", stream.admin().admin))
        .bearer_auth(&token)
        .json(&v2)
        .send()
        .await
        .expect("the admin API answers");
    assert_eq!(response.status().as_u16(), 200, "{}", response.text().await.unwrap_or_default());
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap();

    // Every letter on the first lane, once, by one version or the other.
    let got = stream.outputs(sent.len());
    let (lost, duplicates) = tally("pigeon changed", &sent, &got);
    assert_eq!((lost, duplicates), (0, 0), "nothing lost, nothing twice");
    let tags: HashMap<String, String> =
        got.iter().filter_map(|m| Some((header(m, "ce_id")?, header(m, "ce_type")?))).collect();
    let by_v2: HashSet<&String> = tags.iter().filter(|(_, tag)| *tag == V2).map(|(id, _)| id).collect();
    let by_v1 = tags.values().filter(|tag| *tag == TAG).count();
    assert_eq!(by_v1 + by_v2.len(), sent.len(), "each output has one of the two versions' tags");
    assert!(
        by_v1 > 0 && !by_v2.is_empty(),
        "the change came mid-stream: {by_v1} by v1, {} by v2",
        by_v2.len()
    );
    // Version 2 sent those, and only those, to the second lane too, once each.
    let ids = |got: &[OwnedMessage]| got.iter().filter_map(|m| header(m, "ce_id")).collect::<Vec<_>>();
    let (mut seen, mut counted) = (HashSet::new(), 0);
    let (second, _) = collect_within(
        &stream.bootstrap,
        &second_lane,
        |got| {
            seen.extend(ids(&got[counted..]));
            counted = got.len();
            seen.len() >= by_v2.len()
        },
        Duration::from_secs(3),
    );
    let second = ids(&second);
    let second_set: HashSet<&String> = second.iter().collect();
    assert_eq!(second.len(), second_set.len(), "nothing twice on the second lane");
    assert_eq!(second_set, by_v2, "the second lane has exactly the letters version 2 took");
    // Per key, in the order sent: version 1's letters, then version 2's, never back.
    let mut switched: HashSet<Vec<u8>> = HashSet::new();
    for s in &sent {
        let key = s.letter.key.clone().unwrap_or_default();
        let went_by_v2 = by_v2.contains(&s.letter.id.to_string());
        assert!(
            went_by_v2 || !switched.contains(&key),
            "a letter of {key:?} went by v1 after one went by v2"
        );
        if went_by_v2 {
            switched.insert(key);
        }
    }
    println!(
        "pigeon changed 4 s into the stream: {by_v1} letters by version 1, {} by version 2",
        by_v2.len()
    );
    stream.finish("pigeon changed", &sent, routers).await;
}
