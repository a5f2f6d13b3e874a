//! The process's Prometheus recorder (`metrics-exporter-prometheus`) and the series the roles
//! keep beside the routes' (`pigeon_core::series`): names, help text, and handles resolved
//! once, when a role starts or a partition is assigned, never per letter.
//!
//! [`install`] must run before any table is built or any role's counters are made: handles
//! resolved earlier count nowhere. The admin server renders [`handle`] at `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::deadletter::ErrorKind;

pub use pigeon_core::series::{DESTINATION, PIGEON, SCRIPT_FAILURES, SCRIPT_RUNS};

/// Source letters the router read. No labels.
pub const ROUTER_LETTERS_READ: &str = "pigeon_router_letters_read_total";
/// Dead letters the router wrote (a script's failures count in [`SCRIPT_FAILURES`]). Labels:
/// `kind`.
pub const DEAD_LETTERS: &str = "pigeon_dead_letters_total";
/// Dead letters in the store not settled yet. Labels: `status`, `kind`.
pub const DEAD_LETTERS_STORED: &str = "pigeon_dead_letters_stored";
/// The most letters one partition had in flight at once. No labels.
pub const IN_FLIGHT_PEAK: &str = "pigeon_in_flight_peak";
/// Letters in flight (read, not settled). Labels: `topic`, `partition`.
pub const IN_FLIGHT: &str = "pigeon_in_flight";
/// 1 while a destination's breaker is open (its sources paused). Labels: `destination`.
pub const BREAKER_OPEN: &str = "pigeon_breaker_open";
/// Letters behind in a consumer group: the high watermark less the committed offset. Labels:
/// `group`, `topic`, `partition`.
pub const CONSUMER_LAG: &str = "pigeon_consumer_group_lag";
/// Module instances the registry knows. Labels: `state` (`live`, `stale`, `left`).
pub const REGISTRY_INSTANCES: &str = "pigeon_registry_instances";
/// Route tables the watcher built. No labels.
pub const ROUTE_RELOADS: &str = "pigeon_route_reloads_total";
/// Pigeons in the router's live table. No labels.
pub const PIGEONS_LIVE: &str = "pigeon_pigeons_live";
/// Pigeons left out because they do not compile. No labels.
pub const PIGEONS_QUARANTINED: &str = "pigeon_pigeons_quarantined";
/// Letters per archive batch. No labels.
pub const ARCHIVE_BATCH_LETTERS: &str = "pigeon_archive_batch_letters";
/// How long an archive batch write took. No labels.
pub const ARCHIVE_WRITE_SECONDS: &str = "pigeon_archive_write_seconds";

/// Buckets of the latency histograms (seconds): 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of the archive's batch sizes (letters).
const BATCH_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's (once; later calls return the same
/// handle) and describes every series. A process that has another recorder already gets a
/// handle that renders nothing of it.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(ARCHIVE_BATCH_LETTERS.into()), BATCH_BUCKETS)
            });
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            // Only empty bucket lists are refused, and ours are not empty.
            Err(e) => {
                tracing::error!(error = %e, "metric buckets refused; histograms are summaries");
                PrometheusBuilder::new().build_recorder()
            }
        };
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::error!(error = %e, "another metrics recorder is installed; /metrics shows none of it");
        }
        describe();
        handle
    })
}

/// The installed recorder's handle (installing it if nothing did).
pub fn handle() -> &'static PrometheusHandle {
    install()
}

/// Runs the recorder's upkeep (drains histogram samples) every few seconds, in a thread of
/// its own: it needs no runtime and never blocks one.
pub fn start_upkeep() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let handle = install().clone();
        let spawned = std::thread::Builder::new().name("pigeon-metrics-upkeep".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            handle.run_upkeep();
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics upkeep; histograms are drained at scrapes only");
        }
    });
}

fn describe() {
    pigeon_core::series::describe();
    describe_counter!(ROUTER_LETTERS_READ, "Source letters the router read.");
    describe_counter!(
        DEAD_LETTERS,
        "Letters and outputs the router dead-lettered, by kind (a script's failures count in pigeon_script_failures_total)."
    );
    describe_gauge!(DEAD_LETTERS_STORED, "Dead letters in the store not settled yet, by status and kind.");
    describe_gauge!(IN_FLIGHT_PEAK, "Most letters one partition had in flight at once.");
    describe_gauge!(IN_FLIGHT, "Letters read and not settled yet, per partition the router holds.");
    describe_gauge!(
        BREAKER_OPEN,
        "1 while a destination's circuit breaker is open (its sources are paused)."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Letters behind per partition: the high watermark less the group's committed offset (computed by the admin role)."
    );
    describe_gauge!(REGISTRY_INSTANCES, "Module instances the registry knows, by state.");
    describe_counter!(ROUTE_RELOADS, "Route tables the watcher built: the first and every change.");
    describe_gauge!(PIGEONS_LIVE, "Pigeons in the router's live route table.");
    describe_gauge!(PIGEONS_QUARANTINED, "Pigeons left out because they do not compile.");
    describe_histogram!(ARCHIVE_BATCH_LETTERS, "Letters per batch written to the archive.");
    describe_histogram!(ARCHIVE_WRITE_SECONDS, Unit::Seconds, "How long each archive batch write took.");
    for (name, help) in RETRIER {
        describe_counter!(*name, *help);
    }
    for (name, help) in ARCHIVER {
        describe_counter!(*name, *help);
    }
    describe_gauge!(
        ARCHIVE_PAUSED,
        "1 while the archiver waits for its database with its partitions paused."
    );
    describe_counter!(REPLAY_LETTERS, "Archived letters replayed.");
    describe_counter!(REPLAY_JOBS_ENDED, "Replay jobs that ended here.");
}

/// The kinds of dead letter the router writes itself (a script's failures are counted per
/// pigeon, handlers' by the failures reader).
const ROUTER_KINDS: [ErrorKind; 4] =
    [ErrorKind::Produce, ErrorKind::Malformed, ErrorKind::Dictionary, ErrorKind::Internal];

/// The router's own series (the pigeons' are their routes').
#[derive(Debug)]
pub struct RouterMetrics {
    /// Source letters read.
    pub letters_read: Counter,
    /// Dead letters by kind, in the order of [`ROUTER_KINDS`].
    dead_letters: [Counter; ROUTER_KINDS.len()],
    /// The most letters one partition had in flight, published by [`RouterMetrics::publish`].
    pub in_flight_peak: std::sync::atomic::AtomicU64,
    peak: Gauge,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self {
            letters_read: metrics::counter!(ROUTER_LETTERS_READ),
            dead_letters: ROUTER_KINDS.map(|kind| metrics::counter!(DEAD_LETTERS, "kind" => kind.as_str())),
            in_flight_peak: Default::default(),
            peak: metrics::gauge!(IN_FLIGHT_PEAK),
        }
    }
}

impl RouterMetrics {
    /// Publishes the in-flight peak (on the router's timer, not per letter).
    pub fn publish(&self) {
        self.peak.set(self.in_flight_peak.load(std::sync::atomic::Ordering::Relaxed) as f64);
    }

    /// Counts one dead letter of `kind`.
    pub fn dead_lettered(&self, kind: ErrorKind) {
        if let Some(counter) =
            ROUTER_KINDS.iter().position(|k| *k == kind).and_then(|i| self.dead_letters.get(i))
        {
            counter.increment(1);
        }
    }
}

/// The in-flight gauges of the partitions a router holds, set on its timer from its ledger:
/// a partition's gauge is resolved when it first appears (it was assigned), and set to 0 once
/// the partition is gone.
#[derive(Debug, Default)]
pub struct InFlight {
    gauges: std::collections::HashMap<(std::sync::Arc<str>, i32), Gauge>,
}

impl InFlight {
    /// Sets each partition's gauge to its letters in flight.
    pub fn publish(&mut self, ledger: &pigeon_sdk::ledger::Ledger) {
        let held = ledger.partitions();
        self.gauges.retain(|(topic, partition), gauge| {
            let still = held.iter().any(|p| p.partition == *partition && p.topic == *topic);
            if !still {
                gauge.set(0.0);
            }
            still
        });
        for p in held {
            let gauge = self.gauges.entry((std::sync::Arc::clone(&p.topic), p.partition)).or_insert_with(|| {
                metrics::gauge!(IN_FLIGHT, "topic" => p.topic.to_string(), "partition" => p.partition.to_string())
            });
            gauge.set(p.in_flight() as f64);
        }
    }
}

/// A destination breaker's gauge (looked up when it opens or closes, not per letter).
pub fn breaker_open(topic: &str) -> Gauge {
    metrics::gauge!(BREAKER_OPEN, DESTINATION => topic.to_owned())
}

const RETRIER: &[(&str, &str)] = &[
    ("pigeon_retry_claimed_total", "Dead letters the retrier claimed."),
    ("pigeon_retry_delivered_total", "Dead letters the retrier redelivered."),
    ("pigeon_retry_failed_total", "Retries that failed and wait for the next step."),
    ("pigeon_retry_parked_total", "Dead letters parked for an operator by the retrier."),
    (
        "pigeon_retry_taken_over_total",
        "Dead letters taken over from a claim whose lease ran out (possibly sent twice).",
    ),
    (
        "pigeon_retry_lost_claims_total",
        "Retries whose claim ran out before the outcome was recorded (possibly sent twice).",
    ),
];

/// The retrier's series.
#[derive(Debug)]
pub struct RetrierMetrics {
    /// Dead letters claimed.
    pub claimed: Counter,
    /// Redelivered.
    pub delivered: Counter,
    /// Failed again, waiting for the next step.
    pub failed: Counter,
    /// Parked for an operator.
    pub parked: Counter,
    /// Taken over from a claim whose lease ran out (possibly sent twice).
    pub taken_over: Counter,
    /// Attempts whose claim was lost before the report (possibly sent twice).
    pub lost_claims: Counter,
}

impl Default for RetrierMetrics {
    fn default() -> Self {
        let [claimed, delivered, failed, parked, taken_over, lost_claims] =
            [0, 1, 2, 3, 4, 5].map(|i| metrics::counter!(RETRIER[i].0));
        Self { claimed, delivered, failed, parked, taken_over, lost_claims }
    }
}

const ARCHIVER: &[(&str, &str)] = &[
    ("pigeon_archive_read_total", "Messages the archiver read."),
    ("pigeon_archive_letters_total", "Letters newly written to the archive."),
    ("pigeon_archive_duplicates_total", "Letters chosen again that the archive already held (redeliveries)."),
    ("pigeon_archive_batches_total", "Batches written to the archive."),
    ("pigeon_archive_write_failures_total", "Batch writes that failed and were tried again."),
    (
        "pigeon_archive_filter_errors_total",
        "Letters kept although their archive pigeon's filter failed on them.",
    ),
    ("pigeon_archive_expired_total", "Letters the retention job deleted."),
];
const ARCHIVE_PAUSED: &str = "pigeon_archive_paused";
const REPLAY_LETTERS: &str = "pigeon_replay_letters_total";
const REPLAY_JOBS_ENDED: &str = "pigeon_replay_jobs_ended_total";

/// The archiver's series.
#[derive(Debug)]
pub struct ArchiverMetrics {
    /// Messages read from archive pigeons' topics.
    pub read: Counter,
    /// Letters newly written to the archive.
    pub archived: Counter,
    /// Letters chosen again that the archive already held (redeliveries).
    pub duplicates: Counter,
    /// Batches written.
    pub batches: Counter,
    /// Batch writes that failed (each is tried again).
    pub write_failures: Counter,
    /// Letters kept although their pigeon's filter failed on them.
    pub filter_errors: Counter,
    /// Letters deleted by the retention job.
    pub expired: Counter,
    /// 1 while the archiver waits for the database with its partitions paused.
    pub paused: Gauge,
    /// Letters per batch.
    pub batch_letters: metrics::Histogram,
    /// Batch write time.
    pub write_seconds: metrics::Histogram,
}

impl Default for ArchiverMetrics {
    fn default() -> Self {
        let [read, archived, duplicates, batches, write_failures, filter_errors, expired] =
            [0, 1, 2, 3, 4, 5, 6].map(|i| metrics::counter!(ARCHIVER[i].0));
        Self {
            read,
            archived,
            duplicates,
            batches,
            write_failures,
            filter_errors,
            expired,
            paused: metrics::gauge!(ARCHIVE_PAUSED),
            batch_letters: metrics::histogram!(ARCHIVE_BATCH_LETTERS),
            write_seconds: metrics::histogram!(ARCHIVE_WRITE_SECONDS),
        }
    }
}

/// The replay runner's series.
#[derive(Debug)]
pub struct ReplayMetrics {
    /// Archived letters sent again.
    pub letters: Counter,
    /// Jobs that ended (done, failed or cancelled).
    pub jobs_ended: Counter,
}

impl Default for ReplayMetrics {
    fn default() -> Self {
        Self { letters: metrics::counter!(REPLAY_LETTERS), jobs_ended: metrics::counter!(REPLAY_JOBS_ENDED) }
    }
}
