//! Script pigeons in the router: a pool of threads off the async runtime.
//!
//! Each source partition always goes to the same worker, so one partition's letters run in
//! order and per-key order holds through scripts. A script that fails dead-letters its letter
//! only; after [`BREAKER_AFTER`] consecutive failures a pigeon's breaker opens: its letters are
//! dead-lettered without running the script (a hostile script no longer costs a worker its
//! time), and one letter in [`PROBE_EVERY`] still runs to close the breaker once it works.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::mpsc;

use super::context::Delivery;
use super::output::{self, Outputs};
use crate::deadletter::{ErrorKind, Job};
use crate::route::{Contracts, Route};
use crate::source::LetterHeaders;
use crate::telemetry::{self, LetterSpan, Sampled, TraceParent};
use pigeon_core::fault;
use pigeon_core::plan::{self, Refusal};
use pigeon_sdk::ledger::PartitionLedger;

/// Consecutive failures that open a pigeon's breaker.
pub const BREAKER_AFTER: u32 = 20;
/// While open, one letter in this many still runs the script.
pub const PROBE_EVERY: u64 = 100;
/// Letters queued per worker before the router waits.
const QUEUE: usize = 1024;

/// One letter for one script pigeon.
pub struct ScriptJob {
    /// The pigeon.
    pub route: Arc<Route>,
    /// The source message (shared when several script pigeons match it).
    pub message: Arc<OwnedMessage>,
    /// The letter id.
    pub id: String,
    /// The letter's tag.
    pub tag: String,
    /// Its partition's ledger; the job itself is one unsettled output.
    pub ledger: Arc<PartitionLedger>,
    /// The dictionary and the capabilities' required fields, for a pigeon in `enforce` mode.
    pub contracts: Arc<Contracts>,
    /// A sampled letter's trace context: the router's span, the parent of the script's.
    pub trace: Option<TraceParent>,
}

/// A pigeon's breaker state, by pigeon id and version.
#[derive(Default)]
struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
    skipped: AtomicU64,
}

/// Breakers of every script pigeon version seen.
type Breakers = Mutex<HashMap<(Arc<str>, i64), Arc<Breaker>>>;

/// The worker threads.
pub struct ScriptPool {
    senders: Vec<mpsc::Sender<ScriptJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl ScriptPool {
    /// Starts `workers` threads (0: one per core).
    pub fn start(workers: usize, outputs: Arc<Outputs>) -> Self {
        let workers = if workers == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
        } else {
            workers
        };
        let breakers: Arc<Breakers> = Arc::default();
        let mut senders = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for n in 0..workers {
            let (tx, mut rx) = mpsc::channel::<ScriptJob>(QUEUE);
            let outputs = Arc::clone(&outputs);
            let breakers = Arc::clone(&breakers);
            let thread = std::thread::Builder::new()
                .name(format!("pigeon-script-{n}"))
                .stack_size(crate::script::STACK_SIZE)
                .spawn(move || {
                    while let Some(job) = rx.blocking_recv() {
                        let breaker = {
                            let mut map = breakers.lock().unwrap_or_else(|p| p.into_inner());
                            let key = (Arc::clone(&job.route.id), job.route.version);
                            Arc::clone(map.entry(key).or_insert_with(|| {
                                // A new version starts closed, whatever its last one's said.
                                if let Some(m) = &job.route.metrics.script {
                                    m.breaker_open.set(0.0);
                                }
                                Arc::default()
                            }))
                        };
                        // The script's run contains its own panics; one anywhere else in the
                        // job still leaves the worker to take the next.
                        let pigeon = Arc::clone(&job.route.id);
                        if let Err(panic) =
                            std::panic::catch_unwind(AssertUnwindSafe(|| run(job, &outputs, &breaker)))
                        {
                            tracing::error!(%pigeon, panic = fault::panic_text(panic.as_ref()), "a script job panicked");
                        }
                    }
                })
                .expect("spawning a script worker");
            senders.push(tx);
            threads.push(thread);
        }
        Self { senders, threads }
    }

    /// Queues a job on its partition's worker, waiting while that queue is full.
    pub async fn submit(&self, job: ScriptJob) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (job.ledger.topic.as_ref(), job.ledger.partition).hash(&mut hasher);
        let worker = (hasher.finish() % self.senders.len() as u64) as usize;
        if let Err(mpsc::error::SendError(job)) = self.senders[worker].send(job).await {
            // Workers only stop after the router: the letter stays unsettled and is read again.
            tracing::error!(pigeon = %job.route.id, "script worker gone");
        }
    }

    /// Lets the workers finish their queues and stop.
    pub fn stop(self) {
        drop(self.senders);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn run(job: ScriptJob, outputs: &Outputs, breaker: &Breaker) {
    let route = &job.route;
    if route.script.is_none() {
        return;
    }
    let offset = job.message.offset();
    if breaker.open.load(Ordering::Relaxed)
        && breaker.skipped.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY != 0
    {
        let reason = format!("circuit breaker open after {BREAKER_AFTER} consecutive script failures");
        return fail(&job, outputs, Refusal { kind: ErrorKind::Script, reason });
    }
    let input = LetterHeaders::of(job.message.as_ref());
    let span = job.trace.and_then(|parent| {
        let at = telemetry::At {
            pigeon: &route.id,
            topic: job.message.topic(),
            partition: job.message.partition(),
            offset,
            letter_id: &job.id,
        };
        LetterSpan::start("script", Sampled(Some(parent)), at)
    });
    let _entered = span.as_ref().map(|s| s.span().enter());
    let trace = span.as_ref().map(|s| &s.traceparent);
    let time_ms = job.message.timestamp().to_millis().unwrap_or(0);
    let letter = output::letter_ref(job.message.as_ref(), &input, &job.id, &job.tag, time_ms);
    let script = route.metrics.script.as_ref();
    if let Some(m) = script {
        m.runs.increment(1);
    }
    let started = std::time::Instant::now();
    // A panic in the script's run (a bug of ours or of the engine's) parks the letter for this
    // pigeon as `internal`; it does not count against the script's breaker.
    let planned = std::panic::catch_unwind(AssertUnwindSafe(|| plan::script(route, &letter, &job.contracts)));
    if let Some(m) = script {
        m.seconds.record(started.elapsed().as_secs_f64());
    }
    let planned = match planned {
        Ok(Ok(planned)) => planned,
        Err(panic) => {
            let reason = format!(
                "running the script panicked (a bug in the bus): {}",
                fault::panic_text(panic.as_ref())
            );
            tracing::error!(pigeon = %route.id, offset, reason, "a script run panicked; the letter is parked");
            return fail(&job, outputs, Refusal { kind: ErrorKind::Internal, reason });
        }
        Ok(Err(refusal)) => {
            let failures = breaker.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if failures >= BREAKER_AFTER && !breaker.open.swap(true, Ordering::Relaxed) {
                if let Some(m) = script {
                    m.breaker_open.set(1.0);
                }
                tracing::error!(pigeon = %route.id, version = route.version, failures, "script circuit breaker open");
            }
            return fail(&job, outputs, refusal);
        }
    };
    breaker.failures.store(0, Ordering::Relaxed);
    if breaker.open.swap(false, Ordering::Relaxed) {
        if let Some(m) = script {
            m.breaker_open.set(0.0);
        }
        tracing::info!(pigeon = %route.id, version = route.version, "script circuit breaker closed");
    }
    // The step keeps the letter pending while its outputs are added, then settles itself.
    job.ledger.add(offset, planned.len() as u32);
    for mut planned in planned {
        let unfit = planned.unfit.take();
        let destination = route.metrics.destination(planned.topic);
        let delivery =
            Delivery { ledger: Arc::clone(&job.ledger), offset, route: Arc::clone(route), destination };
        let mut record = output::record(job.message.as_ref(), &input, &planned, delivery, trace);
        if let Some(reason) = unfit {
            outputs.park(&record, reason);
            continue;
        }
        while let Err(back) = outputs.try_send(record) {
            record = back;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    job.ledger.settle(offset);
}

/// Dead-letters the letter for this pigeon; the store write settles the job.
fn fail(job: &ScriptJob, outputs: &Outputs, refusal: Refusal) {
    if let Some(m) = &job.route.metrics.script {
        m.failures.increment(1);
    }
    job.route.counts.failed();
    job.route.metrics.failed.increment(1);
    let dead_letter = output::refused(job.message.as_ref(), &job.id, &job.route, refusal);
    let offset = job.message.offset();
    let _ = outputs.dead_letters.send(Job { dead_letter, ledger: Arc::clone(&job.ledger), offset });
}
