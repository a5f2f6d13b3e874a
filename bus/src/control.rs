//! Pigeon changes reach every running instance without a restart.
//!
//! The admin API publishes a notice on `pigeon.control` after every change of pigeons. Every
//! instance reads that topic on its own (assigned partitions from the end, no consumer group),
//! loads the pigeons from the store and builds a new route table beside the live one; the
//! router swaps it in whole. A periodic version check catches a lost notice or a change made
//! straight in the store, and a timer rebuilds the table when a live window opens or closes.
//! A pigeon that does not compile is quarantined: logged, counted, and left out, while the
//! others keep flying.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::SourceConfig;
use crate::dictionary::Vocabulary;
use crate::route::{Built, Clock, Contracts, Paths, Phase, Quarantined, RouteTable, VersionedPigeon};
use crate::router::RouterStats;
use crate::store::{now_ms, Store, StoreError};

/// The topic notices travel on.
pub const TOPIC: &str = "pigeon.control";

/// A notice that pigeons changed: every instance reloads them from the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// What changed: `pigeons`.
    pub kind: String,
    /// The pigeons changed, for the log.
    pub pigeons: Vec<String>,
    /// Who changed them.
    pub actor: String,
    /// When (unix ms).
    pub at: i64,
}

/// Publishes a notice that `pigeons` changed, in the background. A notice that cannot be sent
/// is logged: every instance's version check picks the change up a little later.
pub fn notify(producer: &FutureProducer, pigeons: Vec<String>, actor: &str) {
    let notice = Notice { kind: "pigeons".into(), pigeons, actor: actor.to_owned(), at: now_ms() };
    let producer = producer.clone();
    tokio::spawn(async move {
        let payload = serde_json::to_vec(&notice).expect("a notice serializes");
        let record = FutureRecord::<(), _>::to(TOPIC).payload(&payload);
        if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
            tracing::warn!(error = %e, pigeons = ?notice.pigeons, "control notice not sent; instances pick the change up at their next version check");
        }
    });
}

/// How the watcher works.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// How often the store is checked for changes without a notice.
    pub check: Duration,
    /// Pigeons join the table this long before their window starts.
    pub window_lead_ms: i64,
    /// Pigeons stay in the table this long after their window ends.
    pub window_grace_ms: i64,
    /// Source topic settings.
    pub sources: BTreeMap<String, SourceConfig>,
}

/// The route tables an instance runs, with what was left out of them.
#[derive(Debug)]
pub struct Routes {
    /// The live forward and script pigeons: the router's.
    pub table: Arc<RouteTable>,
    /// The live archive pigeons: the archiver's.
    pub archive: Arc<RouteTable>,
    /// Pigeons that do not compile.
    pub quarantined: Vec<Quarantined>,
    /// Bumped by every rebuild.
    pub generation: u64,
}

/// Builds route tables from the store and says what changed between them.
pub struct Watcher {
    store: Arc<dyn Store>,
    config: WatchConfig,
    stats: Arc<RouterStats>,
    versions: Vec<(String, i64)>,
    /// The dictionary's and the capabilities' versions the tables were built with.
    contracts: Vec<(String, i64)>,
    phases: BTreeMap<String, Phase>,
    quarantined: BTreeSet<(String, i64)>,
    next_change: Option<i64>,
    generation: u64,
}

impl Watcher {
    /// A watcher that has built nothing yet.
    pub fn new(store: Arc<dyn Store>, config: WatchConfig, stats: Arc<RouterStats>) -> Self {
        Self {
            store,
            config,
            stats,
            versions: Vec::new(),
            contracts: Vec::new(),
            phases: BTreeMap::new(),
            quarantined: BTreeSet::new(),
            next_change: None,
            generation: 0,
        }
    }

    /// Builds the first table.
    pub async fn first(&mut self) -> anyhow::Result<Routes> {
        let loaded = self.load().await?;
        Ok(self.build(loaded))
    }

    async fn load(&self) -> anyhow::Result<Loaded> {
        let pigeons: Vec<VersionedPigeon> =
            self.store.pigeons().await?.iter().map(|p| p.versioned()).collect();
        let versions = versions_of(&pigeons);
        let (contracts, stamps) = load_contracts(self.store.as_ref()).await?;
        Ok(Loaded { pigeons, versions, stamps, contracts })
    }

    /// A new table when the pigeons, the dictionary or the capabilities changed, or a live
    /// window opened or closed, since the last.
    pub async fn check(&mut self) -> anyhow::Result<Option<Routes>> {
        let loaded = self.load().await?;
        let due = self.next_change.is_some_and(|t| t <= now_ms());
        if loaded.versions == self.versions && loaded.stamps == self.contracts && !due {
            return Ok(None);
        }
        Ok(Some(self.build(loaded)))
    }

    fn build(&mut self, loaded: Loaded) -> Routes {
        let Loaded { pigeons, versions, stamps, contracts } = loaded;
        let pigeons = &pigeons[..];
        let contracts = Arc::new(contracts);
        let clock = Clock {
            now_ms: now_ms(),
            lead_ms: self.config.window_lead_ms,
            grace_ms: self.config.window_grace_ms,
        };
        let Built { mut table, quarantined, mut phases } =
            RouteTable::build_for(Paths::Deliver, pigeons, &self.config.sources, Some(clock));
        table.set_contracts(contracts);
        let archive = RouteTable::build_for(Paths::Archive, pigeons, &self.config.sources, Some(clock));
        phases.extend(archive.phases);
        if self.generation > 0 {
            self.log_changes(&versions, &phases);
        }
        let now_quarantined: BTreeSet<(String, i64)> =
            quarantined.iter().map(|q| (q.id.clone(), q.version)).collect();
        for q in &quarantined {
            if !self.quarantined.contains(&(q.id.clone(), q.version)) {
                tracing::error!(
                    pigeon = %q.id,
                    version = q.version,
                    problems = ?q.problems,
                    "pigeon quarantined: it does not compile, so it is left out; the others keep flying"
                );
            }
        }
        self.stats.pigeons_quarantined.store(quarantined.len() as u64, Ordering::Relaxed);
        self.stats.pigeons_live.store(table.len() as u64, Ordering::Relaxed);
        self.stats.route_reloads.fetch_add(1, Ordering::Relaxed);
        self.versions = versions;
        self.contracts = stamps;
        self.phases = phases;
        self.quarantined = now_quarantined;
        self.next_change = table.next_change().into_iter().chain(archive.table.next_change()).min();
        self.generation += 1;
        Routes {
            table: Arc::new(table),
            archive: Arc::new(archive.table),
            quarantined,
            generation: self.generation,
        }
    }

    fn log_changes(&self, versions: &[(String, i64)], phases: &BTreeMap<String, Phase>) {
        let before: BTreeMap<&str, i64> = self.versions.iter().map(|(id, v)| (id.as_str(), *v)).collect();
        let after: BTreeMap<&str, i64> = versions.iter().map(|(id, v)| (id.as_str(), *v)).collect();
        let added: Vec<&str> = after.keys().filter(|id| !before.contains_key(*id)).copied().collect();
        let removed: Vec<&str> = before.keys().filter(|id| !after.contains_key(*id)).copied().collect();
        let changed: Vec<&str> = after
            .iter()
            .filter(|(id, v)| before.get(*id).is_some_and(|b| b != *v))
            .map(|(id, _)| *id)
            .collect();
        if !(added.is_empty() && removed.is_empty() && changed.is_empty()) {
            tracing::info!(?added, ?changed, ?removed, "pigeons changed");
        }
        for (id, phase) in phases {
            let was = self.phases.get(id);
            if was.is_some_and(|w| w != phase) || (was.is_none() && *phase != Phase::Live) {
                tracing::info!(pigeon = %id, phase = phase.as_str(), "pigeon window");
            }
        }
    }
}

/// What a table is built from.
struct Loaded {
    pigeons: Vec<VersionedPigeon>,
    versions: Vec<(String, i64)>,
    /// The dictionary's and the capabilities' versions.
    stamps: Vec<(String, i64)>,
    contracts: Contracts,
}

/// What pigeons that hold letters to the dictionary check them against: the dictionary and
/// the required fields of every capability a live module declares; with each part's version,
/// so a change is noticed.
pub async fn load_contracts(store: &dyn Store) -> Result<(Contracts, Vec<(String, i64)>), StoreError> {
    let dictionary = store.dictionary().await?;
    let capabilities = store.capabilities().await?;
    let mut stamps: Vec<(String, i64)> =
        dictionary.iter().map(|f| (format!("field:{}", f.field.name), f.version)).collect();
    let mut contracts = Contracts {
        vocabulary: Vocabulary::new(&dictionary.into_iter().map(|f| f.field).collect::<Vec<_>>()),
        ..Contracts::default()
    };
    for capability in capabilities.into_iter().filter(|c| c.retired_at.is_none()) {
        let name = format!("{}/{}", capability.module, capability.name);
        stamps.push((format!("capability:{name}"), capability.updated_at));
        contracts.requires.insert(name, capability.requires);
    }
    Ok((contracts, stamps))
}

/// Each pigeon's id and version: what a change of pigeons changes.
fn versions_of(pigeons: &[VersionedPigeon]) -> Vec<(String, i64)> {
    pigeons.iter().map(|p| (p.spec.id.clone(), p.version)).collect()
}

/// Watches for pigeon changes until `cancel` fires, sending each new table on `tx`. `consumer`
/// reads `pigeon.control` on assigned partitions ([`crate::kafka::assigned_consumer_config`]).
pub async fn watch(
    mut watcher: Watcher,
    consumer: ClientConfig,
    tx: watch::Sender<Arc<Routes>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: Arc<StreamConsumer> = Arc::new(consumer.create()?);
    let mut assigned = false;
    let mut check = tokio::time::interval(watcher.config.check);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // One millisecond late rather than early: the wall clock decides what is due.
        let until_change =
            watcher.next_change.map(|t| Duration::from_millis((t - now_ms()).max(0) as u64 + 1));
        let window_timer = async {
            match until_change {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        let notice = async {
            if assigned {
                consumer.recv().await.map(|m| m.detach())
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = check.tick() => {
                if !assigned {
                    assigned = assign(&consumer).await;
                }
            }
            _ = window_timer => {}
            received = notice => match received {
                Ok(message) => {
                    let notice: Option<Notice> =
                        message.payload().and_then(|p| serde_json::from_slice(p).ok());
                    tracing::debug!(?notice, "control notice");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading {TOPIC}");
                    continue;
                }
            },
        }
        match watcher.check().await {
            Ok(Some(routes)) => {
                tracing::info!(
                    generation = routes.generation,
                    pigeons = routes.table.len(),
                    quarantined = routes.quarantined.len(),
                    "route table rebuilt"
                );
                if tx.send(Arc::new(routes)).is_err() {
                    return Ok(()); // nobody runs the table any more
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the pigeons; the current table keeps running");
                // A window change that is due waits for the next check, not a tight loop.
                if watcher.next_change.is_some_and(|t| t <= now_ms()) {
                    watcher.next_change = Some(now_ms() + watcher.config.check.as_millis() as i64);
                }
            }
        }
    }
}

/// Assigns every partition of the control topic from its end; false while it does not exist.
async fn assign(consumer: &Arc<StreamConsumer>) -> bool {
    let consumer = Arc::clone(consumer);
    let assigned = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(5))?;
        let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            return Ok::<_, rdkafka::error::KafkaError>(false);
        }
        let mut tpl = TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            tpl.add_partition_offset(TOPIC, partition, Offset::End)?;
        }
        consumer.assign(&tpl)?;
        Ok(true)
    })
    .await;
    match assigned {
        Ok(Ok(true)) => {
            tracing::info!("reading {TOPIC} for pigeon changes");
            true
        }
        Ok(Ok(false)) => {
            tracing::debug!("{TOPIC} does not exist yet; pigeon changes are picked up by the version check");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read {TOPIC}; pigeon changes are picked up by the version check");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "assigning {TOPIC}");
            false
        }
    }
}
