//! The module's consumer: letters from the module topic (and lanes) to their handlers.
//!
//! One thread polls Kafka, so a revoke can wait for the letters in hand whatever runtime the
//! module uses. Each letter goes to one of `concurrency` workers chosen by its key (or, without
//! a key, its partition), so letters of one key are handled one after another, in order. A
//! partition's offset is committed only up to its lowest letter not yet handled or reported
//! (at least once, as the router does): the consumer commits through a [`Ledger`].

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::capability::Handler;
use crate::capability::Retry;
use crate::fly::Context;
use crate::ledger::{Ledger, LedgerContext, PartitionLedger};
use crate::letter::{header, Letter};
use pigeon_wire::receipt::{self, Outcome, Receipt};
use pigeon_wire::FAILED;

/// Everything the consumer runs with.
pub(crate) struct ConsumerParts {
    pub config: ClientConfig,
    pub topics: Vec<String>,
    pub module: String,
    /// This instance's id, as its receipts name it.
    pub instance: String,
    /// Whether receipts go to `pigeon.receipts`.
    pub receipts: bool,
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

/// One letter for a worker.
struct Job {
    message: OwnedMessage,
    /// Its partition's ledger, which the worker settles it in.
    ledger: Arc<PartitionLedger>,
}

/// What every worker shares.
struct Shared {
    module: String,
    instance: String,
    receipts: bool,
    handlers: HashMap<String, Arc<dyn Handler>>,
    context: Context,
    retry: Retry,
    reports: FutureProducer,
    cancel: CancellationToken,
}

/// Subscribes and starts the poller thread and the workers on the current runtime.
pub(crate) fn start(parts: ConsumerParts) -> Result<Running, KafkaError> {
    let ledger = Arc::new(Ledger::new(format!("module {}", parts.module)));
    let consumer: BaseConsumer<LedgerContext> =
        parts.config.create_with_context(LedgerContext::new(Arc::clone(&ledger), parts.drain_timeout))?;
    let topics: Vec<&str> = parts.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let shared = Arc::new(Shared {
        module: parts.module,
        instance: parts.instance,
        receipts: parts.receipts,
        handlers: parts.handlers,
        context: parts.context,
        retry: parts.retry,
        reports: parts.reports,
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
        .spawn(move || poll(consumer, workers, ledger, cancel, drain_timeout))
        .map_err(|e| KafkaError::Subscription(format!("cannot start the consumer thread: {e}")))?;
    Ok(Running { poller })
}

/// Reads letters and hands them to workers until cancelled; then drains and commits.
fn poll(
    consumer: BaseConsumer<LedgerContext>,
    workers: Vec<mpsc::Sender<Job>>,
    ledger: Arc<Ledger>,
    cancel: CancellationToken,
    drain_timeout: Duration,
) {
    let mut stored_at = Instant::now();
    while !cancel.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let message = message.detach();
                let partition = ledger.partition(message.topic(), message.partition());
                partition.begin(message.offset(), 1);
                let Some(worker) = workers.get(worker_of(&message, workers.len())) else { break };
                if worker.blocking_send(Job { message, ledger: partition }).is_err() {
                    break; // the runtime is gone
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "module consumer error"),
            None => {}
        }
        if stored_at.elapsed() >= Duration::from_millis(200) {
            ledger.store_offsets(&consumer);
            stored_at = Instant::now();
        }
    }
    drop(workers);
    ledger.drain_and_commit(&consumer, drain_timeout);
    consumer.unsubscribe();
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
        let started = Instant::now();
        let (letter, attempts, handled) = handle(&job.message, &shared).await;
        if let Some(letter) = &letter {
            send_receipt(letter, attempts, &handled, started.elapsed(), &shared);
        }
        if let Err(error) = handled {
            if !report(&job.message, &error, &shared).await {
                continue; // not settled: committed only after it is handled or reported
            }
        }
        job.ledger.settle(offset);
    }
}

/// Runs the letter's handler, trying again as the retry policy says: the letter (when the
/// message is one), the tries made, and the last error if it never succeeded.
async fn handle(message: &OwnedMessage, shared: &Shared) -> (Option<Letter>, u32, Result<(), String>) {
    let letter = match Letter::from_message(message) {
        Ok(letter) => letter,
        Err(e) => return (None, 0, Err(format!("not a letter: {e}"))),
    };
    let Some(handler) = shared.handlers.get(&letter.tag) else {
        let mut known: Vec<&str> = shared.handlers.keys().map(String::as_str).collect();
        known.sort_unstable();
        let error = format!(
            "module {} has no capability {:?} (it has: {})",
            shared.module,
            letter.tag,
            known.join(", ")
        );
        return (Some(letter), 0, Err(error));
    };
    let span = crate::trace::handle_span(&shared.module, message, &letter);
    let (tries, handled) = attempts(handler.as_ref(), &letter, shared).instrument(span).await;
    (Some(letter), tries, handled)
}

/// Calls the handler until it succeeds or the retry policy gives up: the tries made, and the
/// last error if it never succeeded.
async fn attempts(handler: &dyn Handler, letter: &Letter, shared: &Shared) -> (u32, Result<(), String>) {
    let mut attempt = 1;
    loop {
        let run = AssertUnwindSafe(handler.call(letter.clone(), shared.context.clone())).catch_unwind();
        let error = match run.await {
            Ok(Ok(())) => return (attempt, Ok(())),
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("handler panicked: {}", panic_text(&panic)),
        };
        tracing::debug!(module = %shared.module, tag = %letter.tag, attempt, error = %error, "handler failed");
        if attempt >= shared.retry.attempts || shared.cancel.is_cancelled() {
            return (attempt, Err(format!("{error} (after {attempt} tries)")));
        }
        tokio::time::sleep(shared.retry.delay_after(attempt)).await;
        attempt += 1;
    }
}

/// Puts a receipt of the letter's handling on `pigeon.receipts`, without waiting: a receipt
/// the producer's queue cannot take is left out (receipts are observations; the letter's
/// delivery never waits on one).
fn send_receipt(
    letter: &Letter,
    attempts: u32,
    handled: &Result<(), String>,
    took: Duration,
    shared: &Shared,
) {
    if !shared.receipts {
        return;
    }
    let receipt = Receipt {
        letter_id: letter.id.to_string(),
        module: shared.module.clone(),
        instance: shared.instance.clone(),
        capability: letter.tag.clone(),
        outcome: if handled.is_ok() { Outcome::Handled } else { Outcome::Failed },
        duration_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        attempts,
        at_ms: pigeon_wire::now_ms(),
        pigeon: letter.pigeon.clone(),
        error: handled.as_ref().err().cloned(),
    }
    .bounded();
    let Ok(payload) = serde_json::to_vec(&receipt) else { return };
    let record = FutureRecord::to(receipt::TOPIC).key(receipt.letter_id.as_str()).payload(&payload);
    if let Err((e, _)) = shared.reports.send_result(record) {
        tracing::debug!(module = %shared.module, error = %e, "receipt left out");
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
        let spread: std::collections::BTreeSet<usize> =
            (0..100).map(|n| worker_of(&message(&format!("k{n}"), 0), 8)).collect();
        assert!(spread.len() > 4, "keys spread over the workers: {spread:?}");
    }
}
