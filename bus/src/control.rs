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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::SourceConfig;
use crate::dictionary::Vocabulary;
pub use crate::route::Routes;
use crate::route::{Built, Clock, Contracts, Paths, Phase, RouteTable, VersionedPigeon};
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

/// Builds route tables from the store and says what changed between them.
pub struct Watcher {
    store: Arc<dyn Store>,
    config: WatchConfig,
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
    pub fn new(store: Arc<dyn Store>, config: WatchConfig) -> Self {
        Self {
            store,
            config,
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
        let sources = &self.config.sources;
        let Built { table, quarantined, mut phases } =
            RouteTable::build_for(Paths::Deliver, pigeons, sources, Some(clock), Arc::clone(&contracts));
        let redeliver = RouteTable::build_for(Paths::Deliver, pigeons, sources, None, Arc::clone(&contracts));
        let archive = RouteTable::build_for(Paths::Archive, pigeons, sources, Some(clock), contracts);
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
        self.versions = versions;
        self.contracts = stamps;
        self.phases = phases;
        self.quarantined = now_quarantined;
        self.next_change = table.next_change().into_iter().chain(archive.table.next_change()).min();
        self.generation += 1;
        metrics::counter!(crate::prometheus::ROUTE_RELOADS).increment(1);
        metrics::gauge!(crate::prometheus::PIGEONS_LIVE).set(table.len() as f64);
        metrics::gauge!(crate::prometheus::PIGEONS_QUARANTINED).set(quarantined.len() as f64);
        Routes {
            table: Arc::new(table),
            redeliver: Arc::new(redeliver.table),
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

/// The stored pigeons built into a forward-and-script table and an archive table, every live
/// window included, for tools that look at every pigeon at once (`pigeon topics ensure`);
/// running roles read the watcher's tables. What does not compile is logged and left out.
pub async fn every_window(
    store: &dyn Store,
    sources: &BTreeMap<String, SourceConfig>,
) -> anyhow::Result<(RouteTable, RouteTable)> {
    let pigeons: Vec<VersionedPigeon> = store.pigeons().await?.iter().map(|p| p.versioned()).collect();
    let (contracts, _) = load_contracts(store).await?;
    let contracts = Arc::new(contracts);
    let deliver = RouteTable::build_for(Paths::Deliver, &pigeons, sources, None, Arc::clone(&contracts));
    for q in &deliver.quarantined {
        tracing::warn!(pigeon = %q.id, version = q.version, problems = ?q.problems, "pigeon does not compile");
    }
    let archive = RouteTable::build_for(Paths::Archive, &pigeons, sources, None, contracts);
    Ok((deliver.table, archive.table))
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

/// Builds the first tables, then returns them with the task that keeps them current until
/// `cancel` fires: on every notice `consumer` reads from `pigeon.control` (assigned partitions,
/// [`crate::kafka::assigned_consumer_config`]; without one, the periodic check alone), every
/// version check, every window change, and whenever a reader asks ([`Tables::catch_up`]).
pub async fn start(
    mut watcher: Watcher,
    consumer: Option<ClientConfig>,
    cancel: CancellationToken,
) -> anyhow::Result<(Tables, impl std::future::Future<Output = anyhow::Result<()>>)> {
    // Logs every quarantined pigeon.
    let first = watcher.first().await?;
    let (tx, routes) = watch::channel(Arc::new(first));
    let (checked_tx, checked) = watch::channel(0);
    let asks = Asks {
        check_now: Arc::new(Notify::new()),
        requested: Arc::new(AtomicU64::new(0)),
        checked: checked_tx,
    };
    let tables = Tables {
        routes,
        check_now: Arc::clone(&asks.check_now),
        requested: Arc::clone(&asks.requested),
        checked,
    };
    Ok((tables, watch(watcher, consumer, tx, asks, cancel)))
}

/// What readers ask of the watch loop: check the store now (`check_now`); `requested` counts
/// the asks, and `checked` says up to which ask the store was read.
struct Asks {
    check_now: Arc<Notify>,
    requested: Arc<AtomicU64>,
    checked: watch::Sender<u64>,
}

/// Watches for pigeon changes until `cancel` fires, sending each new table on `tx`.
async fn watch(
    mut watcher: Watcher,
    consumer: Option<ClientConfig>,
    tx: watch::Sender<Arc<Routes>>,
    asks: Asks,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: Option<Arc<StreamConsumer>> = match consumer {
        Some(config) => Some(Arc::new(config.create()?)),
        None => None,
    };
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
            match (&consumer, assigned) {
                (Some(consumer), true) => consumer.recv().await.map(|m| m.detach()),
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = check.tick() => {
                if let (Some(consumer), false) = (&consumer, assigned) {
                    assigned = assign(consumer).await;
                }
            }
            _ = window_timer => {}
            _ = asks.check_now.notified() => {}
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
        // Every ask made before this load is answered by it.
        let serving = asks.requested.load(Ordering::Acquire);
        let checked = watcher.check().await;
        match checked {
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
        asks.checked.send_replace(serving);
    }
}

/// The tables the watcher publishes, for every role that reads them.
#[derive(Clone, Debug)]
pub struct Tables {
    routes: watch::Receiver<Arc<Routes>>,
    check_now: Arc<Notify>,
    requested: Arc<AtomicU64>,
    checked: watch::Receiver<u64>,
}

impl Tables {
    /// The tables now.
    pub fn current(&self) -> Arc<Routes> {
        Arc::clone(&self.routes.borrow())
    }

    /// The tables once the watcher has read the store after this call (so they hold every
    /// change saved before it), or the current ones if that takes longer than `timeout` (the
    /// store away). What the retrier and replays deliver through: an operator who fixes a
    /// pigeon and then redrives its letters gets the fixed version.
    pub async fn fresh(&self, timeout: Duration) -> Arc<Routes> {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.check_now.notify_one();
        let mut checked = self.checked.clone();
        let _ = tokio::time::timeout(timeout, checked.wait_for(|served| *served >= ticket)).await;
        self.current()
    }

    /// A receiver of every new set of tables (the router's and the archiver's loops).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Routes>> {
        self.routes.clone()
    }

    /// Asks the watcher to check the store now, and waits up to `timeout` for tables in which
    /// `ready` holds (a pigeon saved a moment ago on another instance). The tables last seen
    /// when it does not.
    pub async fn catch_up(
        &self,
        timeout: Duration,
        ready: impl Fn(&Routes) -> bool,
    ) -> Result<Arc<Routes>, Arc<Routes>> {
        let mut routes = self.routes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = routes.borrow_and_update().clone();
            if ready(&now) {
                return Ok(now);
            }
            self.check_now.notify_one();
            match tokio::time::timeout_at(deadline, routes.changed()).await {
                Ok(Ok(())) => continue,
                // The watcher is gone, or time is up.
                Ok(Err(_)) | Err(_) => return Err(routes.borrow().clone()),
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
