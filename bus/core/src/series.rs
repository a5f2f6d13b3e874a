//! The Prometheus series a route counts into, through the `metrics` facade (no I/O here: the
//! recorder the process installs keeps them, and the admin server renders them).
//!
//! A route's handles are resolved once, when a table that holds it is built, so counting a
//! letter is one increment on a handle, never a look-up by name. Labels stay bounded: a pigeon
//! id (bounded by the stored pigeons) and a destination topic (bounded by their
//! destinations).

use metrics::{Counter, Histogram};

/// Letters a pigeon took (matched, inside its live window). Labels: `pigeon`.
pub const LETTERS_IN: &str = "pigeon_letters_in_total";
/// Outputs Kafka acknowledged. Labels: `pigeon`, `destination`.
pub const LETTERS_OUT: &str = "pigeon_letters_out_total";
/// Letters or outputs that became dead letters. Labels: `pigeon`, and `destination` when the
/// output of one destination failed.
pub const LETTERS_FAILED: &str = "pigeon_letters_failed_total";
/// From the producer call to Kafka's acknowledgement. Labels: `destination`.
pub const PRODUCE_SECONDS: &str = "pigeon_produce_latency_seconds";

/// Runs of a script pigeon's script. Labels: `pigeon`.
pub const SCRIPT_RUNS: &str = "pigeon_script_runs_total";
/// Letters a script failed on (dead-lettered). Labels: `pigeon`.
pub const SCRIPT_FAILURES: &str = "pigeon_script_failures_total";
/// How long a script ran. Labels: `pigeon`.
pub const SCRIPT_SECONDS: &str = "pigeon_script_duration_seconds";
/// 1 while a script pigeon's breaker is open. Labels: `pigeon`.
pub const SCRIPT_BREAKER_OPEN: &str = "pigeon_script_breaker_open";

/// The label of a pigeon's id.
pub const PIGEON: &str = "pigeon";
/// The label of a destination topic.
pub const DESTINATION: &str = "destination";

/// The series of one route: resolved when a table holding it is built; the default (handles
/// that count nowhere) until then.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Letters the pigeon took.
    pub letters_in: Counter,
    /// Its letters that failed before any destination (refused, script failed, outside the
    /// window).
    pub failed: Counter,
    /// Per destination topic, in the order of the route's destinations.
    pub destinations: Vec<DestinationMetrics>,
    /// A script pigeon's.
    pub script: Option<ScriptMetrics>,
}

/// A script pigeon's series.
#[derive(Debug)]
pub struct ScriptMetrics {
    /// Runs.
    pub runs: Counter,
    /// Failures.
    pub failures: Counter,
    /// Run time.
    pub seconds: Histogram,
    /// 1 while its breaker is open.
    pub breaker_open: metrics::Gauge,
}

/// The series of one destination of one pigeon.
#[derive(Debug)]
pub struct DestinationMetrics {
    /// The destination topic.
    pub topic: String,
    /// Outputs acknowledged.
    pub out: Counter,
    /// Outputs that became dead letters.
    pub failed: Counter,
    /// Produce latency (shared by every pigeon that sends to the topic).
    pub produce_seconds: Histogram,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        Self { letters_in: Counter::noop(), failed: Counter::noop(), destinations: Vec::new(), script: None }
    }
}

impl RouteMetrics {
    /// Resolves the handles of pigeon `id` (a script pigeon's with `script`) sending to the
    /// destination topics `topics` in the installed recorder.
    pub fn of<'a>(id: &str, topics: impl IntoIterator<Item = &'a str>, script: bool) -> Self {
        let pigeon = id.to_owned();
        let mut resolved: Vec<DestinationMetrics> = Vec::new();
        for topic in topics {
            // Two destinations on one topic (other tags) share its series.
            if resolved.iter().any(|r| r.topic == topic) {
                continue;
            }
            resolved.push(DestinationMetrics {
                topic: topic.to_owned(),
                out: metrics::counter!(LETTERS_OUT, PIGEON => pigeon.clone(), DESTINATION => topic.to_owned()),
                failed: metrics::counter!(LETTERS_FAILED, PIGEON => pigeon.clone(), DESTINATION => topic.to_owned()),
                produce_seconds: metrics::histogram!(PRODUCE_SECONDS, DESTINATION => topic.to_owned()),
            });
        }
        let script = script.then(|| ScriptMetrics {
            runs: metrics::counter!(SCRIPT_RUNS, PIGEON => pigeon.clone()),
            failures: metrics::counter!(SCRIPT_FAILURES, PIGEON => pigeon.clone()),
            seconds: metrics::histogram!(SCRIPT_SECONDS, PIGEON => pigeon.clone()),
            breaker_open: metrics::gauge!(SCRIPT_BREAKER_OPEN, PIGEON => pigeon.clone()),
        });
        Self {
            letters_in: metrics::counter!(LETTERS_IN, PIGEON => pigeon.clone()),
            failed: metrics::counter!(LETTERS_FAILED, PIGEON => pigeon),
            destinations: resolved,
            script,
        }
    }

    /// The index of the series of destination topic `topic`, or `None` (a topic the pigeon
    /// does not send to).
    pub fn destination(&self, topic: &str) -> Option<u16> {
        self.destinations.iter().position(|d| d.topic == topic).and_then(|i| u16::try_from(i).ok())
    }

    /// An output to destination `index` of the source letter at `offset` was acknowledged;
    /// `latency` (how long it took) is asked only for the letters [`samples_latency`] picks.
    pub fn delivered(
        &self,
        index: Option<u16>,
        offset: i64,
        latency: impl FnOnce() -> Option<std::time::Duration>,
    ) {
        if let Some(d) = index.and_then(|i| self.destinations.get(usize::from(i))) {
            d.out.increment(1);
            if samples_latency(offset) {
                if let Some(latency) = latency() {
                    d.produce_seconds.record(latency.as_secs_f64());
                }
            }
        }
    }

    /// An output to destination `index` became a dead letter (the pigeon's own series when
    /// the destination is unknown).
    pub fn output_failed(&self, index: Option<u16>) {
        match index.and_then(|i| self.destinations.get(usize::from(i))) {
            Some(d) => d.failed.increment(1),
            None => self.failed.increment(1),
        }
    }
}

/// One source letter in this many has its outputs' produce latency recorded.
pub const LATENCY_SAMPLE_EVERY: u64 = 64;

/// Whether the outputs of the source letter at `offset` have their produce latency recorded:
/// one letter in [`LATENCY_SAMPLE_EVERY`], by the offset hashed (Fibonacci hashing, so a period
/// in the traffic cannot line up with it). The recorder keeps each sample in a lock-free bucket
/// that allocates a block every 64 samples; sampling keeps that off the per-letter cost.
pub fn samples_latency(offset: i64) -> bool {
    let spread = (offset as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    spread < (1u64 << 32) / LATENCY_SAMPLE_EVERY
}

/// Registers the route series' help text and units with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(LETTERS_IN, "Letters each pigeon took (matched, inside its live window).");
    describe_counter!(LETTERS_OUT, "Outputs Kafka acknowledged, per pigeon and destination topic.");
    describe_counter!(
        LETTERS_FAILED,
        "Letters and outputs that became dead letters, per pigeon (and destination topic when one output failed)."
    );
    describe_histogram!(
        PRODUCE_SECONDS,
        Unit::Seconds,
        "From the producer call to Kafka's acknowledgement, per destination topic (the outputs of one source letter in 64)."
    );
    describe_counter!(SCRIPT_RUNS, "Letters each script pigeon ran its script on.");
    describe_counter!(SCRIPT_FAILURES, "Letters a script failed on (dead-lettered), per pigeon.");
    describe_histogram!(SCRIPT_SECONDS, Unit::Seconds, "How long each run of a pigeon's script took.");
    describe_gauge!(SCRIPT_BREAKER_OPEN, "1 while a script pigeon's circuit breaker is open.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_per_destination_topic_and_unknown_topics_count_on_the_pigeon() {
        let m = RouteMetrics::of("p", ["a", "b", "a"], false);
        assert_eq!(m.destinations.len(), 2);
        assert_eq!(m.destination("b"), Some(1));
        assert_eq!(m.destination("c"), None);
        // Without a recorder every handle counts nowhere, and nothing panics.
        m.delivered(Some(7), 0, || None);
        let sampled = (0..64_000).filter(|o| samples_latency(*o)).count();
        assert!((800..=1_200).contains(&sampled), "{sampled} of 64,000");
        m.output_failed(None);
    }
}
