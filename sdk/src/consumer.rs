//! The module's consumer: letters from the module topic (and lanes) to their handlers.
//!
//! One thread polls Kafka, so a revoke can wait for the letters in hand whatever runtime the
//! module uses. Each letter goes to one of `concurrency` workers chosen by its key (or, without
//! a key, its partition), so letters of one key are handled one after another, in order. A
//! partition's offset is committed only up to its lowest letter not yet handled or reported
//! (at least once, as the router does).

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capability::Handler;
use crate::letter::{header, Letter};
use crate::module::{Context, Retry, FAILED};

/// Everything the consumer runs with.
pub(crate) struct ConsumerParts {
    pub config: ClientConfig,
    pub topics: Vec<String>,
    pub module: String,
    pub handlers: HashMap<String, Arc<dyn Handler>>,
    pub context: Context,
    pub concurrency: usize,
    pub retry: Retry,
    pub drain_timeout: Duration,
    pub reports: FutureProducer,
    pub cancel: CancellationToken,
}

/// The running consumer.
pub(crate) struct Running {
    poller: std::thread::JoinHandle<()>,
}

impl Running {
    /// Waits until the consumer drained and committed (after the cancel token fired).
    pub async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.poller.join()).await;
    }
}

/// A topic and partition.
type Partition = (Arc<str>, i32);

#[derive(Default)]
struct PartitionState {
    in_flight: BTreeSet<i64>,
    next: Option<i64>,
}

/// Letters in hand per partition, and the offset each may commit.
#[derive(Default)]
struct Offsets {
    partitions: Mutex<HashMap<Partition, PartitionState>>,
    settled: Condvar,
}

impl Offsets {
    fn lock(&self) -> MutexGuard<'_, HashMap<Partition, PartitionState>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(&self, partition: &Partition, offset: i64) {
        let mut map = self.lock();
        let state = map.entry(partition.clone()).or_default();
        state.in_flight.insert(offset);
        state.next = Some(offset + 1);
    }

    fn settle(&self, partition: &Partition, offset: i64) {
        if let Some(state) = self.lock().get_mut(partition) {
            state.in_flight.remove(&offset);
        }
        self.settled.notify_all();
    }

    /// The offset to commit: the lowest letter in hand, or the one after the last read.
    fn watermarks(&self, only: Option<&[Partition]>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (partition, state) in self.lock().iter() {
            if only.is_some_and(|o| !o.contains(partition)) {
                continue;
            }
            let mark = state.in_flight.first().copied().or(state.next);
            if let Some(mark) = mark {
                let _ = tpl.add_partition_offset(&partition.0, partition.1, Offset::Offset(mark));
            }
        }
        tpl
    }

    /// Waits until the partitions (all when `None`) have nothing in hand, or the deadline.
    fn wait_settled(&self, only: Option<&[Partition]>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut map = self.lock();
        loop {
            let busy = map.iter().any(|(p, s)| !s.in_flight.is_empty() && only.is_none_or(|o| o.contains(p)));
            if !busy {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            map = self.settled.wait_timeout(map, left).map(|(m, _)| m).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn remove(&self, partitions: &[Partition]) {
        let mut map = self.lock();
        for p in partitions {
            map.remove(p);
        }
    }
}

struct ModuleConsumerContext {
    offsets: Arc<Offsets>,
    drain_timeout: Duration,
}

impl ClientContext for ModuleConsumerContext {}

impl ConsumerContext for ModuleConsumerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let partitions: Vec<Partition> =
            revoked.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect();
        // Finish the letters in hand, then commit exactly up to them: the next owner neither
        // skips nor repeats letters, and keys keep their order across the move.
        if !self.offsets.wait_settled(Some(&partitions), self.drain_timeout) {
            tracing::warn!(
                "partitions revoked before their letters were handled; they will be handled again"
            );
        }
        let offsets = self.offsets.watermarks(Some(&partitions));
        self.offsets.remove(&partitions);
        if offsets.count() > 0 {
            let _ = consumer.store_offsets(&offsets);
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(error = %e, "committing revoked partitions");
            }
        }
    }
}

/// One letter for a worker.
struct Job {
    message: OwnedMessage,
    partition: Partition,
}

/// What every worker shares.
struct Shared {
    module: String,
    handlers: HashMap<String, Arc<dyn Handler>>,
    context: Context,
    retry: Retry,
    reports: FutureProducer,
    offsets: Arc<Offsets>,
    cancel: CancellationToken,
}

/// Subscribes and starts the poller thread and the workers on the current runtime.
pub(crate) fn start(parts: ConsumerParts) -> Result<Running, KafkaError> {
    let offsets = Arc::new(Offsets::default());
    let consumer: BaseConsumer<ModuleConsumerContext> =
        parts.config.create_with_context(ModuleConsumerContext {
            offsets: Arc::clone(&offsets),
            drain_timeout: parts.drain_timeout,
        })?;
    let topics: Vec<&str> = parts.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let shared = Arc::new(Shared {
        module: parts.module,
        handlers: parts.handlers,
        context: parts.context,
        retry: parts.retry,
        reports: parts.reports,
        offsets: Arc::clone(&offsets),
        cancel: parts.cancel.clone(),
    });
    let runtime = tokio::runtime::Handle::current();
    let mut workers = Vec::with_capacity(parts.concurrency);
    for _ in 0..parts.concurrency {
        let (tx, rx) = mpsc::channel::<Job>(16);
        runtime.spawn(work(rx, Arc::clone(&shared)));
        workers.push(tx);
    }
    let cancel = parts.cancel;
    let drain_timeout = parts.drain_timeout;
    let poller = std::thread::Builder::new()
        .name(format!("pigeon-{}", shared.module))
        .spawn(move || poll(consumer, workers, offsets, cancel, drain_timeout))
        .map_err(|e| KafkaError::Subscription(format!("cannot start the consumer thread: {e}")))?;
    Ok(Running { poller })
}

/// Reads letters and hands them to workers until cancelled; then drains and commits.
fn poll(
    consumer: BaseConsumer<ModuleConsumerContext>,
    workers: Vec<mpsc::Sender<Job>>,
    offsets: Arc<Offsets>,
    cancel: CancellationToken,
    drain_timeout: Duration,
) {
    let mut stored_at = Instant::now();
    while !cancel.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let message = message.detach();
                let partition: Partition = (Arc::from(message.topic()), message.partition());
                offsets.begin(&partition, message.offset());
                let worker = &workers[worker_of(&message, workers.len())];
                if worker.blocking_send(Job { message, partition }).is_err() {
                    break; // the runtime is gone
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "module consumer error"),
            None => {}
        }
        if stored_at.elapsed() >= Duration::from_millis(200) {
            store(&consumer, &offsets);
            stored_at = Instant::now();
        }
    }
    drop(workers);
    if !offsets.wait_settled(None, drain_timeout) {
        tracing::warn!("shutdown before every letter was handled; the rest will be handled again");
    }
    let tpl = store(&consumer, &offsets);
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(error = %e, "final commit");
        }
    }
    consumer.unsubscribe();
}

fn store(consumer: &BaseConsumer<ModuleConsumerContext>, offsets: &Offsets) -> TopicPartitionList {
    let tpl = offsets.watermarks(None);
    if tpl.count() > 0 {
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "store offsets");
        }
    }
    tpl
}

/// Letters of one key always go to the same worker; letters without a key, by partition.
fn worker_of(message: &OwnedMessage, workers: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match message.key() {
        Some(key) => key.hash(&mut hasher),
        None => (message.topic(), message.partition()).hash(&mut hasher),
    }
    (hasher.finish() % workers as u64) as usize
}

async fn work(mut jobs: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    while let Some(job) = jobs.recv().await {
        let offset = job.message.offset();
        if let Err(error) = handle(&job.message, &shared).await {
            if !report(&job.message, &error, &shared).await {
                continue; // not settled: committed only after it is handled or reported
            }
        }
        shared.offsets.settle(&job.partition, offset);
    }
}

/// Runs the letter's handler, trying again as the retry policy says; the last error if it
/// never succeeded.
async fn handle(message: &OwnedMessage, shared: &Shared) -> Result<(), String> {
    let letter = Letter::from_message(message).map_err(|e| format!("not a letter: {e}"))?;
    let Some(handler) = shared.handlers.get(&letter.tag) else {
        let mut known: Vec<&str> = shared.handlers.keys().map(String::as_str).collect();
        known.sort_unstable();
        return Err(format!(
            "module {} has no capability {:?} (it has: {})",
            shared.module,
            letter.tag,
            known.join(", ")
        ));
    };
    let mut attempt = 1;
    loop {
        let run = AssertUnwindSafe(handler.call(letter.clone(), shared.context.clone())).catch_unwind();
        let error = match run.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("handler panicked: {}", panic_text(&panic)),
        };
        tracing::debug!(module = %shared.module, tag = %letter.tag, attempt, error = %error, "handler failed");
        if attempt >= shared.retry.attempts || shared.cancel.is_cancelled() {
            return Err(format!("{error} (after {attempt} tries)"));
        }
        tokio::time::sleep(shared.retry.delay_after(attempt)).await;
        attempt += 1;
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Reports a letter its handler could not handle to `pigeon.failed`: the letter as received
/// plus the topic, module and error. Tries until Kafka takes it; false if the module stopped
/// first (the letter is then read again after the restart).
async fn report(message: &OwnedMessage, error: &str, shared: &Shared) -> bool {
    tracing::warn!(module = %shared.module, topic = message.topic(), offset = message.offset(), error, "reporting a failed letter to the bus");
    let mut headers = OwnedHeaders::new_with_capacity(message.headers().map_or(0, |h| h.count()) + 3);
    for h in pigeon_headers::of(message) {
        headers = pigeon_headers::add(headers, h.name, h.value);
    }
    let headers = headers
        .insert(Header { key: header::FAILED_TOPIC, value: Some(message.topic()) })
        .insert(Header { key: header::FAILED_MODULE, value: Some(shared.module.as_str()) })
        .insert(Header { key: header::FAILED_ERROR, value: Some(error) });
    loop {
        let mut record = FutureRecord::to(FAILED).headers(headers.clone());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        match shared.reports.send(record, Duration::from_secs(30)).await {
            Ok(_) => return true,
            Err((e, _)) => {
                tracing::warn!(module = %shared.module, error = %e, "failure report not sent; trying again");
                if shared.cancel.is_cancelled() {
                    return false;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        (Arc::from("pigeon.module.m"), n)
    }

    fn offset_of(tpl: &TopicPartitionList, partition: i32) -> Option<Offset> {
        tpl.find_partition("pigeon.module.m", partition).map(|e| e.offset())
    }

    #[test]
    fn the_commit_offset_stops_at_the_lowest_letter_in_hand() {
        let offsets = Offsets::default();
        for o in 10..15 {
            offsets.begin(&p(0), o);
        }
        offsets.settle(&p(0), 10);
        offsets.settle(&p(0), 12);
        assert_eq!(offset_of(&offsets.watermarks(None), 0), Some(Offset::Offset(11)));
        offsets.settle(&p(0), 11);
        offsets.settle(&p(0), 13);
        assert_eq!(offset_of(&offsets.watermarks(None), 0), Some(Offset::Offset(14)));
        offsets.settle(&p(0), 14);
        assert_eq!(offset_of(&offsets.watermarks(None), 0), Some(Offset::Offset(15)));
    }

    #[test]
    fn waiting_covers_only_the_named_partitions() {
        let offsets = Arc::new(Offsets::default());
        offsets.begin(&p(0), 1);
        offsets.begin(&p(1), 1);
        assert!(!offsets.wait_settled(Some(&[p(0)]), Duration::from_millis(20)));
        let settler = Arc::clone(&offsets);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            settler.settle(&p(0), 1);
        });
        assert!(offsets.wait_settled(Some(&[p(0)]), Duration::from_secs(5)), "p0 settles");
        assert!(!offsets.wait_settled(None, Duration::from_millis(20)), "p1 is still in hand");
        t.join().unwrap();
    }

    #[test]
    fn one_key_always_goes_to_one_worker() {
        let message = |key: &str, partition| {
            OwnedMessage::new(
                None,
                Some(key.as_bytes().to_vec()),
                "t".into(),
                rdkafka::Timestamp::NotAvailable,
                partition,
                0,
                None,
            )
        };
        for key in ["room-1", "room-2", "anchor-9"] {
            let first = worker_of(&message(key, 0), 8);
            assert!((0..20).all(|p| worker_of(&message(key, p), 8) == first));
        }
        let spread: BTreeSet<usize> = (0..100).map(|n| worker_of(&message(&format!("k{n}"), 0), 8)).collect();
        assert!(spread.len() > 4, "keys spread over the workers: {spread:?}");
    }
}
