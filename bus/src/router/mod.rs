//! The forward path: consume source topics, look letters up in the route table, re-publish
//! them to their destinations with the destination tag, at least once.
//!
//! Many letters are in flight per partition; a partition's committed offset is the lowest
//! letter not yet fully acknowledged or dead-lettered, kept by the router's
//! [`Ledger`](pigeon_sdk::ledger::Ledger) (each output is one piece of work to settle). A
//! partition pauses when its in-flight letters reach the cap and resumes below half of it.
//! Revoked partitions and shutdown drain first, then commit.

pub mod breaker;
pub mod context;
pub mod output;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use pigeon_sdk::ledger::{Admission, Begun, Ledger, PartitionLedger};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::breaker::Breakers;
use self::context::{Delivery, RouterConsumerContext, RouterProducerContext};
use self::output::Outputs;
use self::scripts::{ScriptJob, ScriptPool};
use crate::config::RouterConfig;
use crate::control::Routes;
use crate::deadletter::CaptureMessage;
use crate::deadletter::{self, ErrorKind, Job, NewDeadLetter};
use crate::dictionary::{DriftTally, Normalized, ObservedTally};
use crate::route::{Lookup, Route, RouteTable, INGRESS};
use crate::source::{self, LetterHeaders};
use crate::store::Store;
use crate::telemetry;
use pigeon_core::fault;
use pigeon_core::plan::{self, Refusal};

/// The router's own series (the pigeons' are their routes').
pub type RouterStats = crate::prometheus::RouterMetrics;

/// Subscriptions (topics or topic patterns) that gained their first live pigeon while this
/// router ran: their partitions start where the pigeons went live, not at an old offset. Kept
/// by the consume loop as it swaps tables, read by the rebalance callbacks.
#[derive(Debug, Default)]
pub struct FreshTopics(Mutex<Fresh>);

#[derive(Debug, Default)]
struct Fresh {
    /// When each one's pigeons went live (unix ms), fixed when it was added: a later edit of
    /// its pigeon must not move the start past letters still unread.
    since: HashMap<String, i64>,
    /// Partitions this router positioned: later assignments continue from committed offsets.
    positioned: HashSet<(String, i32)>,
}

impl Fresh {
    /// When the pigeons of the fresh subscription a concrete topic belongs to went live.
    fn since_of(&self, topic: &str) -> Option<i64> {
        self.since.get(topic).copied().or_else(|| {
            self.since
                .iter()
                .filter(|(entry, _)| entry.starts_with('^'))
                .filter(|(entry, _)| regex::Regex::new(entry).is_ok_and(|r| r.is_match(topic)))
                .map(|(_, since)| *since)
                .min()
        })
    }
}

impl FreshTopics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Fresh> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows a swap from `old` to `new`; returns the subscriptions it adds and removes.
    fn update(&self, old: &RouteTable, new: &RouteTable) -> (Vec<String>, Vec<String>) {
        let (before, after) = (old.consumed_topics(), new.consumed_topics());
        let added: Vec<String> = after.iter().filter(|t| !before.contains(t)).cloned().collect();
        let removed: Vec<String> = before.iter().filter(|t| !after.contains(t)).cloned().collect();
        let mut fresh = self.lock();
        fresh.since.retain(|t, _| after.contains(t));
        for entry in added.iter().filter(|t| *t != INGRESS) {
            if let Some(since) = new.subscription_since(entry) {
                fresh.since.insert(entry.clone(), since);
            }
        }
        let positioned = std::mem::take(&mut fresh.positioned);
        fresh.positioned =
            positioned.into_iter().filter(|(topic, _)| fresh.since_of(topic).is_some()).collect();
        (added, removed)
    }

    /// Where a partition of a freshly needed topic starts: when its pigeons went live (unix
    /// ms). `None` for a topic the router has needed since it started, and for a partition it
    /// positioned already: those continue from their committed offsets.
    pub fn since(&self, topic: &str, partition: i32) -> Option<i64> {
        let fresh = self.lock();
        if fresh.positioned.contains(&(topic.to_owned(), partition)) {
            return None;
        }
        fresh.since_of(topic)
    }

    /// Records that a fresh partition got its start and committed it.
    pub fn positioned(&self, topic: &str, partition: i32) {
        self.lock().positioned.insert((topic.to_owned(), partition));
    }
}

/// Everything the router runs with.
#[derive(Clone)]
pub struct RouterParts {
    /// The route tables to run: the current one, and every rebuild after it.
    pub routes: watch::Receiver<Arc<Routes>>,
    /// Router tuning.
    pub config: RouterConfig,
    /// Consumer properties (group, brokers, security…).
    pub consumer: ClientConfig,
    /// Producer properties.
    pub producer: ClientConfig,
    /// Dead letters go here.
    pub store: Arc<dyn Store>,
    /// Set once the router consumes.
    pub ready: Arc<AtomicBool>,
    /// Counters.
    pub stats: Arc<RouterStats>,
}

/// Runs the router until `cancel` fires, then drains, commits and returns.
pub async fn run(parts: RouterParts, cancel: CancellationToken) -> anyhow::Result<()> {
    let RouterParts { mut routes, config, consumer, producer, store, ready, stats } = parts;
    let table = Arc::clone(&routes.borrow_and_update().table);
    let fresh = Arc::new(FreshTopics::default());

    let (dead_tx, dead_rx) = mpsc::unbounded_channel();
    let writer_stop = CancellationToken::new();
    let drift = Arc::new(DriftTally::default());
    let observed = Arc::new(ObservedTally::default());
    let drift_store = Arc::clone(&store);
    let writer = tokio::spawn(deadletter::write_dead_letters(store, dead_rx, writer_stop.clone()));

    let drain_timeout = Duration::from_secs(config.drain_timeout_secs);
    let (resume_tx, mut resume_rx) = mpsc::unbounded_channel::<Arc<PartitionLedger>>();
    let ledger = Arc::new(Ledger::capped("router", config.max_in_flight_per_partition, resume_tx));
    let (breaker_tx, mut breaker_rx) = mpsc::unbounded_channel();
    let breakers = Arc::new(Breakers::new(
        config.breaker_failures,
        Duration::from_millis(config.breaker_probe_ms),
        breaker_tx,
    ));
    let producer: Arc<ThreadedProducer<RouterProducerContext>> =
        Arc::new(producer.create_with_context(RouterProducerContext {
            dead_letters: dead_tx.clone(),
            stats: Arc::clone(&stats),
            breakers: Arc::clone(&breakers),
        })?);
    let outputs = Arc::new(Outputs {
        producer: Arc::clone(&producer),
        dead_letters: dead_tx.clone(),
        stats: Arc::clone(&stats),
    });
    let scripts = ScriptPool::start(config.script_workers, Arc::clone(&outputs));
    let consumer: StreamConsumer<RouterConsumerContext> =
        consumer.create_with_context(RouterConsumerContext {
            ledger: Arc::clone(&ledger),
            drain_timeout,
            ready: Arc::clone(&ready),
            fresh: Arc::clone(&fresh),
            assigned: AtomicI64::new(0),
        })?;
    let topics = table.consumed_topics();
    subscribe(&consumer, &topics)?;
    tracing::info!(topics = ?topics, pigeons = table.len(), "router subscribed");

    let mut router = Forwarder {
        table,
        ledger: Arc::clone(&ledger),
        outputs: &outputs,
        scripts: &scripts,
        dead_letters: dead_tx,
        stats,
        drift: Arc::clone(&drift),
        observed: Arc::clone(&observed),
        sample_every: config.schema_sample_every,
        breakers: Arc::clone(&breakers),
        breaker_paused: Mutex::default(),
    };
    let mut drift_tick = tokio::time::interval(DRIFT_FLUSH);
    drift_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe_tick = tokio::time::interval(Duration::from_millis(500));
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = crate::prometheus::InFlight::default();
    let mut store_tick = tokio::time::interval(Duration::from_millis(config.offset_store_interval_ms));
    store_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(partition) = resume_rx.recv() => {
                if router.breaker_holds(&partition) {
                    continue; // it stays paused until its destination's breaker lets it go
                }
                let tpl = partition_list(&partition, Offset::Invalid);
                if let Err(e) = consumer.resume(&tpl) {
                    tracing::debug!(topic = %partition.topic, partition = partition.partition, error = %e, "resume");
                }
            }
            _ = store_tick.tick() => {
                ledger.store_offsets(&consumer);
                in_flight.publish(&ledger);
                router.stats.publish();
            }
            _ = drift_tick.tick() => {
                tokio::spawn(flush_reports(Arc::clone(&drift_store), Arc::clone(&drift), Arc::clone(&observed)));
            }
            Ok(()) = routes.changed() => {
                // Swapped whole; letters in flight keep the routes they started with.
                let table = Arc::clone(&routes.borrow_and_update().table);
                let (added, removed) = fresh.update(&router.table, &table);
                router.table = table;
                if !(added.is_empty() && removed.is_empty()) {
                    let topics = router.table.consumed_topics();
                    match subscribe(&consumer, &topics) {
                        Ok(()) => tracing::info!(?topics, ?added, ?removed, "router subscription changed"),
                        Err(e) => tracing::error!(error = %e, ?topics, "cannot change the subscription"),
                    }
                }
            }
            Some(change) = breaker_rx.recv() => {
                if let breaker::Change::Closed(topic) = change {
                    router.resume_fed_by(&consumer, &topic);
                }
            }
            _ = probe_tick.tick() => {
                for topic in breakers.due_probes() {
                    router.probe(&consumer, &topic);
                }
            }
            received = consumer.recv() => {
                router.take(&consumer, received).await;
                // Letters the consumer holds already are taken in a row, without a turn
                // through every branch above for each (that turn cost as much as decoding the
                // letter); the branches wait at most this many letters.
                for _ in 1..IN_A_ROW {
                    let Some(received) = consumer.recv().now_or_never() else { break };
                    router.take(&consumer, received).await;
                }
            }
        }
    }

    // Drain: stop reading, let every letter in flight settle, commit, then leave the group.
    tracing::info!("router draining");
    ledger.drain_and_commit_async(&consumer, drain_timeout).await;
    leave_group(&consumer).await;
    drop(router);
    scripts.stop();
    let _ = producer.flush(Duration::from_secs(5));
    drop(consumer);
    drop(outputs);
    drop(producer);
    writer_stop.cancel();
    let _ = writer.await;
    flush_reports(drift_store, drift, observed).await;
    tracing::info!("router stopped");
    Ok(())
}

/// Letters the consume loop takes in a row while the consumer has them at hand.
const IN_A_ROW: usize = 64;

/// Whether the letter at `offset` is one of the one in `every` that are sampled (0: none). The
/// offset is hashed (Fibonacci hashing), so a period in the traffic cannot line up with it.
fn sampled(offset: i64, every: u64) -> bool {
    if every == 0 {
        return false;
    }
    let spread = (offset as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    spread < (1u64 << 32) / every
}

/// How often the drift report's counts and the sampled fields go to the store.
const DRIFT_FLUSH: Duration = Duration::from_secs(5);

/// Adds what was seen since the last flush to the drift report and the observed schemas;
/// what the store does not take waits for the next flush.
async fn flush_reports(store: Arc<dyn Store>, drift: Arc<DriftTally>, observed: Arc<ObservedTally>) {
    let sightings = drift.take();
    if !sightings.is_empty() {
        if let Err(e) = store.record_drift(&sightings).await {
            tracing::warn!(error = %e, "cannot store the drift report; it is kept for the next try");
            drift.restore(sightings);
        }
    }
    let samples = observed.take();
    if !samples.is_empty() {
        if let Err(e) = store.record_observed(&samples).await {
            tracing::warn!(error = %e, "cannot store the observed schemas; they are kept for the next try");
            observed.restore(samples);
        }
    }
}

/// Leaves the group before the consumer is closed: unsubscribes and serves the rebalance
/// until every partition is revoked (each revoke commits what the ledger allows). Closing in
/// the middle of a cooperative rebalance trips an assertion in librdkafka. Letters read
/// meanwhile are not routed and their offsets not stored: the next owner reads them.
async fn leave_group(consumer: &StreamConsumer<RouterConsumerContext>) {
    consumer.unsubscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while consumer.context().assigned.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
}

/// Subscribes to exactly these topics and topic patterns (a pattern starts with `^`). Should
/// librdkafka refuse a pattern, it subscribes to the plain topics alone, so one pattern cannot
/// keep every other pigeon down.
fn subscribe(
    consumer: &StreamConsumer<RouterConsumerContext>,
    topics: &[String],
) -> rdkafka::error::KafkaResult<()> {
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).or_else(|e| {
        tracing::error!(error = %e, ?topics, "cannot subscribe; trying without the topic patterns");
        let plain: Vec<&str> = refs.into_iter().filter(|t| !t.starts_with('^')).collect();
        consumer.subscribe(&plain)
    })
}

fn partition_list(partition: &PartitionLedger, offset: Offset) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    let _ = tpl.add_partition_offset(&partition.topic, partition.partition, offset);
    tpl
}

fn partition_list_of(message: &BorrowedMessage<'_>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(message.topic(), message.partition());
    tpl
}

/// A source topic and partition.
type SourcePartition = (Arc<str>, i32);

/// How far the router got with one letter, kept outside the future that handles it so that
/// a panic there can be contained: the outputs it counted in the ledger and has not handed on.
#[derive(Default)]
struct Progress {
    /// Outputs begun in the ledger and not handed to the producer, a worker or the store.
    owed: AtomicU32,
    /// Whether beginning the letter asked to pause its partition.
    pause: AtomicBool,
}

impl Progress {
    // Only the task handling the letter writes these (atomics only because its future must be
    // `Send`): plain loads and stores, no read-modify-write.
    fn begun(&self, outputs: u32, admission: &Admission) {
        self.owed.store(outputs, Ordering::Relaxed);
        self.pause.store(*admission == Admission::Pause, Ordering::Relaxed);
    }

    fn handed(&self) {
        self.owed.store(self.owed.load(Ordering::Relaxed).saturating_sub(1), Ordering::Relaxed);
    }
}

/// The per-letter work of the router.
struct Forwarder<'p> {
    /// The route table in use; the consume loop swaps it.
    table: Arc<RouteTable>,
    /// Letters in flight per source partition, capped.
    ledger: Arc<Ledger>,
    outputs: &'p Outputs,
    scripts: &'p ScriptPool,
    dead_letters: mpsc::UnboundedSender<Job>,
    stats: Arc<RouterStats>,
    /// Fields the dictionary does not know, seen since the last flush.
    drift: Arc<DriftTally>,
    /// Sampled letters' fields, since the last flush.
    observed: Arc<ObservedTally>,
    /// One letter in this many is sampled (0: none).
    sample_every: u64,
    breakers: Arc<Breakers>,
    /// Source partitions paused because a destination they feed has an open breaker.
    breaker_paused: Mutex<HashMap<String, HashSet<SourcePartition>>>,
}

impl Forwarder<'_> {
    /// Whether an open destination breaker holds this partition paused.
    fn breaker_holds(&self, partition: &PartitionLedger) -> bool {
        let key = (Arc::clone(&partition.topic), partition.partition);
        self.breaker_paused.lock().unwrap_or_else(|p| p.into_inner()).values().any(|set| set.contains(&key))
    }

    /// Whether the partition is paused at its in-flight cap (its ledger resumes it).
    fn cap_holds(&self, topic: &str, partition: i32) -> bool {
        self.ledger.get(topic, partition).is_some_and(|p| p.paused_at_cap())
    }

    /// Resumes the source partitions paused for `destination` (its breaker closed), unless
    /// another open breaker or the in-flight cap still holds them.
    fn resume_fed_by(&self, consumer: &StreamConsumer<RouterConsumerContext>, destination: &str) {
        let paused = self.breaker_paused.lock().unwrap_or_else(|p| p.into_inner()).remove(destination);
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in paused.into_iter().flatten() {
            let key = (Arc::clone(&topic), partition);
            let held_elsewhere = self
                .breaker_paused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .any(|s| s.contains(&key));
            if !held_elsewhere && !self.cap_holds(&topic, partition) {
                tpl.add_partition(&topic, partition);
            }
        }
        if tpl.count() > 0 {
            tracing::info!(destination, partitions = tpl.count(), "resuming source partitions");
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(destination, error = %e, "resume after the breaker");
            }
        }
    }

    /// Resumes one source partition paused for `destination`: its next letters probe whether
    /// the destination works again (the others stay paused, so a backlog does not rush into a
    /// destination that is still down).
    fn probe(&self, consumer: &StreamConsumer<RouterConsumerContext>, destination: &str) {
        let mut paused = self.breaker_paused.lock().unwrap_or_else(|p| p.into_inner());
        let Some(partitions) = paused.get_mut(destination) else { return };
        let Some(probe) = partitions.iter().find(|(t, p)| !self.cap_holds(t, *p)).cloned() else { return };
        partitions.remove(&probe);
        drop(paused);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&probe.0, probe.1);
        tracing::info!(destination, topic = %probe.0, partition = probe.1, "probing with one source partition");
        if let Err(e) = consumer.resume(&tpl) {
            tracing::warn!(destination, error = %e, "resume to probe");
        }
    }

    /// Pauses the letter's partition when one of its destinations has an open breaker; the
    /// letter itself is already on its way.
    fn breaker_admission(
        &self,
        routes: &[&Arc<Route>],
        ledger: &PartitionLedger,
        admission: Admission,
    ) -> Admission {
        if !self.breakers.any_tripped() {
            return admission; // the common case: no destination is failing
        }
        let open: Vec<&str> = routes
            .iter()
            .flat_map(|r| r.destinations.iter())
            .map(|d| d.topic.as_str())
            .filter(|topic| self.breakers.is_open(topic))
            .collect();
        if open.is_empty() {
            return admission;
        }
        let mut paused = self.breaker_paused.lock().unwrap_or_else(|p| p.into_inner());
        for topic in open {
            paused.entry(topic.to_owned()).or_default().insert((Arc::clone(&ledger.topic), ledger.partition));
        }
        Admission::Pause
    }

    /// Forwards a letter the consumer gave, pausing its partition when its ledger asks.
    async fn take(
        &self,
        consumer: &StreamConsumer<RouterConsumerContext>,
        received: KafkaResult<BorrowedMessage<'_>>,
    ) {
        match received {
            Ok(message) => {
                // A panic while handling the letter (a bug not found yet) costs that letter
                // only: it becomes a dead letter of kind `internal`, and the router goes on.
                let progress = Progress::default();
                let handled = AssertUnwindSafe(self.forward(&message, &progress)).catch_unwind().await;
                let admission = match handled {
                    Ok(admission) => admission,
                    Err(panic) => self.contain(&message, &progress, &fault::panic_text(panic.as_ref())),
                };
                if admission == Admission::Pause {
                    let tpl = partition_list_of(&message);
                    if let Err(e) = consumer.pause(&tpl) {
                        tracing::warn!(topic = message.topic(), partition = message.partition(), error = %e, "pause");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "consumer error"),
        }
    }

    async fn forward(&self, message: &BorrowedMessage<'_>, progress: &Progress) -> Admission {
        self.stats.letters_read.increment(1);
        let topic = message.topic();
        let ledger = self.ledger.partition(topic, message.partition());
        let offset = message.offset();
        let table = &self.table;
        let lookup = table.lookup(topic);
        let source = match &lookup {
            Lookup::Flown(source) => *source,
            Lookup::Routes(routes) => &routes.source,
            Lookup::Nothing => return ledger.begin(offset, 0).admission,
        };
        let input = LetterHeaders::of(message);
        let meta = match source::read(message, &input, source) {
            Ok(meta) => meta,
            Err(reason) => return self.dead_letter(message, &ledger, reason),
        };
        // A letter that went round too many pigeons is parked, not sent round again.
        let hops = output::hops_in(&input);
        if hops >= output::MAX_HOPS {
            return self.dead_letter(
                message,
                &ledger,
                format!("the letter passed through {hops} pigeons: a loop of pigeons sends it round (the most is {})", output::MAX_HOPS),
            );
        }
        // One letter in `sample_every` teaches the observed schema of its topic and tag; the
        // offset is hashed first, so traffic that repeats with a period cannot hide a tag.
        if sampled(offset, self.sample_every) {
            let tag = meta.tag.as_deref().unwrap_or_default();
            self.observed.record(topic, tag, message.payload(), crate::store::now_ms());
        }
        let mut matched: Vec<&Arc<Route>> = match &lookup {
            // Flown to a pigeon by id, whatever its tag.
            Lookup::Flown(_) | Lookup::Nothing => match table.flown(input.text(pigeon_sdk::header::PIGEON)) {
                Ok(route) => vec![route],
                Err(reason) => return self.dead_letter(message, &ledger, reason),
            },
            Lookup::Routes(routes) => {
                let matched: Vec<&Arc<Route>> = match &meta.tag {
                    Some(tag) => routes.matching(tag).collect(),
                    None => routes.matching_untagged().collect(),
                };
                if matched.is_empty() {
                    return match meta.tag {
                        Some(_) => ledger.begin(offset, 0).admission,
                        None => self.dead_letter(
                            message,
                            &ledger,
                            format!("no tag: {}", describe_tag_source(routes)),
                        ),
                    };
                }
                matched
            }
        };
        // Live windows judge the letter by its own timestamp.
        if matched.iter().any(|r| r.window.is_some()) {
            let time_ms = message.timestamp().to_millis().unwrap_or_else(crate::store::now_ms);
            let first = Arc::clone(matched[0]);
            matched.retain(|r| r.takes(time_ms));
            if matched.is_empty() {
                return match lookup {
                    Lookup::Routes(_) => ledger.begin(offset, 0).admission,
                    // A flown letter names its pigeon: say why it did not fly rather than drop it.
                    Lookup::Flown(_) | Lookup::Nothing => {
                        first.counts.failed();
                        first.metrics.failed.increment(1);
                        self.dead_letter(
                            message,
                            &ledger,
                            format!("the letter's time is outside the live window of pigeon {:?}", first.id),
                        )
                    }
                };
            }
        }
        // The letter read against the dictionary once for every pigeon that took it (not at
        // all when they leave it off), then taken by each as its mode says.
        let contracts = table.contracts();
        let checked = plan::check(matched.iter().map(|r| r.as_ref()), contracts, message.payload());
        if let Some(Ok(normalized)) = &checked {
            self.drift.record(topic, &normalized.unknown, crate::store::now_ms());
        }
        let taken: Vec<Result<Option<&Normalized>, Refusal>> = match &checked {
            None => Vec::new(),
            Some(_) => matched.iter().map(|r| plan::take(r, checked.as_ref())).collect(),
        };
        // A script pigeon counts one step per letter; its worker adds the letters it emits. A
        // letter a pigeon refuses is one dead letter for it.
        let outputs: usize = matched
            .iter()
            .enumerate()
            .map(|(i, r)| match (r.script.is_some(), taken.get(i)) {
                (true, _) | (_, Some(Err(_))) => 1,
                _ => r.destinations.len(),
            })
            .sum();
        // Begin before producing: a delivery report may arrive before `send` returns.
        let outputs = u32::try_from(outputs).unwrap_or(u32::MAX);
        let Begun { admission, in_flight } = ledger.begin(offset, outputs);
        progress.begun(outputs, &admission);
        self.stats.in_flight_peak.fetch_max(in_flight as u64, Ordering::Relaxed);

        let derived_id;
        let id = match meta.id {
            Some(id) => id,
            None => {
                derived_id = derived_id_of(message);
                &derived_id
            }
        };
        let tag = meta.tag.as_deref().unwrap_or_default();
        let admission = self.breaker_admission(&matched, &ledger, admission);
        // A sampled letter's span; the others cost the look at their headers only.
        let span = telemetry::sampled(&input)
            .and_then(|sampled| output::route_span("route", sampled, &matched, message, id));
        let trace = span.as_ref().map(|s| &s.traceparent);
        let (mut detached, mut detached_normalized) = (None, None);
        // Without a dictionary, every pigeon takes the letter as it came.
        let mut taken = taken.into_iter();
        for route in matched {
            route.counts.took();
            route.metrics.letters_in.increment(1);
            let normalized = match taken.next().unwrap_or(Ok(None)) {
                Ok(normalized) => normalized,
                Err(refusal) => {
                    self.refuse(message, route, id, &ledger, refusal);
                    progress.handed();
                    continue;
                }
            };
            if route.script.is_some() {
                let message = match normalized {
                    None => detached.get_or_insert_with(|| Arc::new(message.detach())),
                    Some(n) => detached_normalized.get_or_insert_with(|| {
                        Arc::new(OwnedMessage::new(
                            Some(n.payload.clone()),
                            message.key().map(<[u8]>::to_vec),
                            message.topic().to_owned(),
                            message.timestamp(),
                            message.partition(),
                            offset,
                            message.headers().map(|h| h.detach()),
                        ))
                    }),
                };
                let job = ScriptJob {
                    route: Arc::clone(route),
                    message: Arc::clone(message),
                    id: id.to_owned(),
                    tag: tag.to_owned(),
                    ledger: Arc::clone(&ledger),
                    contracts: table.contracts_arc(),
                    trace: trace.copied(),
                };
                self.scripts.submit(job).await;
                progress.handed();
                continue;
            }
            fault::panic_point("a forward pigeon", tag);
            let payload = normalized.map_or(message.payload(), |n| Some(&n.payload));
            for mut planned in plan::forwards(route, id, message.key(), payload, normalized, contracts) {
                let unfit = planned.unfit.take();
                let destination = route.metrics.destination(planned.topic);
                let delivery =
                    Delivery { ledger: Arc::clone(&ledger), offset, route: Arc::clone(route), destination };
                let record = output::record(message, &input, &planned, delivery, trace);
                match unfit {
                    Some(reason) => self.outputs.park(&record, reason),
                    None => self.send(record).await,
                }
                progress.handed();
            }
        }
        admission
    }

    /// Hands an output to the producer, waiting while its queue is full.
    async fn send(&self, mut record: BaseRecord<'_, [u8], [u8], Box<Delivery>>) {
        while let Err(back) = self.outputs.try_send(record) {
            record = back;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Parks a letter whose handling panicked as a dead letter of kind `internal`, whole and
    /// with the panic's message, settling in the ledger the outputs it never handed on.
    fn contain(&self, message: &BorrowedMessage<'_>, progress: &Progress, panic: &str) -> Admission {
        tracing::error!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            panic,
            "handling a letter panicked; it is parked"
        );
        let ledger = self.ledger.partition(message.topic(), message.partition());
        let offset = message.offset();
        // The dead letter is one more piece of work, whether the letter was begun or not (a
        // begun letter that settled already waits again in offset order until it is stored).
        let Begun { admission, .. } = ledger.begin(offset, 1);
        for _ in 0..progress.owed.load(Ordering::Relaxed) {
            ledger.settle(offset);
        }
        let reason = format!("handling the letter panicked (a bug in the bus): {panic}");
        let mut dead_letter = NewDeadLetter::from_message(message, ErrorKind::Internal, reason);
        dead_letter.letter_id = dead_letter
            .header_text(pigeon_sdk::header::ID)
            .map_or_else(|| derived_id_of(message), str::to_owned);
        self.stats.dead_lettered(ErrorKind::Internal);
        let _ = self.dead_letters.send(Job { dead_letter, ledger, offset });
        if progress.pause.load(Ordering::Relaxed) {
            Admission::Pause
        } else {
            admission
        }
    }

    /// Dead-letters a letter `route` refuses: it does not fit the pigeon's dictionary.
    fn refuse(
        &self,
        message: &BorrowedMessage<'_>,
        route: &Route,
        id: &str,
        ledger: &Arc<PartitionLedger>,
        refusal: Refusal,
    ) {
        self.stats.dead_lettered(refusal.kind);
        let dead_letter = output::refused(message, id, route, refusal);
        route.counts.failed();
        route.metrics.failed.increment(1);
        let offset = message.offset();
        let _ = self.dead_letters.send(Job { dead_letter, ledger: Arc::clone(ledger), offset });
    }

    /// Dead-letters a source message that cannot be routed at all.
    fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        ledger: &Arc<PartitionLedger>,
        reason: String,
    ) -> Admission {
        let offset = message.offset();
        let admission = ledger.begin(offset, 1).admission;
        let mut dead_letter = NewDeadLetter::from_message(message, ErrorKind::Malformed, reason);
        dead_letter.letter_id = derived_id_of(message);
        if message.topic() == INGRESS {
            // A module's letter: it has its own id, and names the pigeon it was flown to.
            if let Some(id) = dead_letter.header_text(pigeon_sdk::header::ID) {
                dead_letter.letter_id = id.to_owned();
            }
            dead_letter.pigeon_id =
                LetterHeaders::of(message).text(pigeon_sdk::header::PIGEON).map(str::to_owned);
            if let Some(route) = dead_letter.pigeon_id.as_deref().and_then(|id| self.table.route(id)) {
                route.counts.failed();
                route.metrics.failed.increment(1);
            }
        }
        self.stats.dead_lettered(ErrorKind::Malformed);
        let _ = self.dead_letters.send(Job { dead_letter, ledger: Arc::clone(ledger), offset });
        admission
    }
}

/// The id of a letter that carries none: derived from its place in Kafka and its time, the
/// same each time the letter is read.
fn derived_id_of(message: &BorrowedMessage<'_>) -> String {
    let ms = u64::try_from(message.timestamp().to_millis().unwrap_or(0)).unwrap_or(0);
    pigeon_sdk::LetterId::derived(message.topic(), message.partition(), message.offset(), ms).to_string()
}

fn describe_tag_source(routes: &crate::route::TopicRoutes) -> String {
    match &routes.source.tag {
        crate::route::TagSource::Header(name) => format!("header {name} is missing"),
        crate::route::TagSource::Field(field) => format!("JSON field {field:?} is missing"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_letter_in_n_is_sampled_whatever_the_period() {
        assert!((0..1_000).all(|o| super::sampled(o, 1)));
        assert!(!(0..1_000).any(|o| super::sampled(o, 0)));
        let hits = (0..100_000).filter(|o| super::sampled(*o, 100)).count();
        assert!((800..=1_200).contains(&hits), "{hits} of 100,000");
        // Every other offset (two tags alternating on a partition): both halves are sampled.
        let even = (0..100_000).step_by(2).filter(|o| super::sampled(*o, 100)).count();
        let odd = (1..100_000).step_by(2).filter(|o| super::sampled(*o, 100)).count();
        assert!(even > 300 && odd > 300, "{even} even, {odd} odd");
    }
}
