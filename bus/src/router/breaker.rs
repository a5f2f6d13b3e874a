//! Destination circuit breakers: after `threshold` consecutive failed deliveries to one topic,
//! the router stops reading the source partitions that feed it (instead of writing a dead
//! letter per letter while the destination is down), and probes by resuming them after
//! `probe_after`. One acknowledged delivery closes the breaker; another failure opens it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

/// What the router is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Stop reading what feeds this topic.
    Opened(String),
    /// Deliveries to this topic work again.
    Closed(String),
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    /// Since when it is open; `None` when closed or probing.
    open_since: Option<Instant>,
    /// Since when it is probing (half-open).
    probing_since: Option<Instant>,
    /// Open or probing: not closed yet.
    tripped: bool,
}

/// Every destination's breaker.
#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    probe_after: Duration,
    any_tripped: AtomicBool,
    /// Some topic has failures counted since its last success.
    any_failing: AtomicBool,
    states: Mutex<HashMap<String, State>>,
    changes: UnboundedSender<Change>,
}

impl Breakers {
    /// Breakers that open after `threshold` consecutive failures (0: never) and probe after
    /// `probe_after`; changes go to the router on `changes`.
    pub fn new(threshold: u32, probe_after: Duration, changes: UnboundedSender<Change>) -> Self {
        Self {
            threshold,
            probe_after,
            any_tripped: AtomicBool::new(false),
            any_failing: AtomicBool::new(false),
            states: Mutex::default(),
            changes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A delivery to `topic` was acknowledged.
    pub fn succeeded(&self, topic: &str) {
        // The hot path: no failure counted anywhere, nothing to reset.
        if !self.any_failing.load(Ordering::Relaxed) {
            return;
        }
        let mut states = self.lock();
        let Some(state) = states.get_mut(topic) else { return };
        let was_tripped = state.tripped;
        *state = State::default();
        states.retain(|_, s| s.consecutive > 0 || s.tripped);
        self.any_tripped.store(states.values().any(|s| s.tripped), Ordering::Relaxed);
        self.any_failing.store(!states.is_empty(), Ordering::Relaxed);
        if was_tripped {
            tracing::info!(topic, "destination circuit breaker closed: deliveries work again");
            crate::prometheus::breaker_open(topic).set(0.0);
            let _ = self.changes.send(Change::Closed(topic.to_owned()));
        }
    }

    /// A delivery to `topic` failed after the client's own retries.
    pub fn failed(&self, topic: &str) {
        if self.threshold == 0 {
            return;
        }
        let mut states = self.lock();
        self.any_failing.store(true, Ordering::Relaxed);
        let state = states.entry(topic.to_owned()).or_default();
        state.consecutive = state.consecutive.saturating_add(1);
        if state.consecutive >= self.threshold && state.open_since.is_none() {
            state.open_since = Some(Instant::now());
            state.probing_since = None;
            state.tripped = true;
            self.any_tripped.store(true, Ordering::Relaxed);
            tracing::error!(
                topic,
                failures = state.consecutive,
                probe_in = ?self.probe_after,
                "destination circuit breaker open: pausing the source partitions that feed it"
            );
            crate::prometheus::breaker_open(topic).set(1.0);
            let _ = self.changes.send(Change::Opened(topic.to_owned()));
        }
    }

    /// Whether any breaker is open or probing: one atomic load, for the per-letter path.
    pub fn any_tripped(&self) -> bool {
        self.any_tripped.load(Ordering::Relaxed)
    }

    /// Whether letters for `topic` should wait (its breaker is open, not probing).
    pub fn is_open(&self, topic: &str) -> bool {
        self.any_tripped.load(Ordering::Relaxed)
            && self.lock().get(topic).is_some_and(|s| s.open_since.is_some())
    }

    /// Open breakers whose probe is due: they turn half-open (the caller resumes one paused
    /// partition; the next delivery decides). A probe that brought no verdict within
    /// `probe_after` (its partition had nothing for this destination) is due again, so the
    /// caller tries another partition.
    pub fn due_probes(&self) -> Vec<String> {
        if !self.any_tripped.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (topic, state) in self.lock().iter_mut() {
            let open_due = state.open_since.is_some_and(|since| since.elapsed() >= self.probe_after);
            let probe_silent = state.probing_since.is_some_and(|since| since.elapsed() >= self.probe_after);
            if state.tripped && (open_due || probe_silent) {
                state.open_since = None;
                state.probing_since = Some(Instant::now());
                tracing::info!(topic = %topic, "destination circuit breaker half-open: probing");
                due.push(topic.clone());
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_probes_then_closes_or_reopens() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let breakers = Breakers::new(3, Duration::ZERO, tx);
        breakers.failed("dst");
        breakers.failed("dst");
        breakers.succeeded("dst");
        breakers.failed("dst");
        breakers.failed("dst");
        assert!(!breakers.is_open("dst"), "a success resets the count");
        breakers.failed("dst");
        assert!(breakers.is_open("dst"));
        assert!(!breakers.is_open("other"));
        assert_eq!(rx.try_recv().unwrap(), Change::Opened("dst".into()));
        breakers.failed("dst");
        assert!(rx.try_recv().is_err(), "told once");

        assert_eq!(breakers.due_probes(), ["dst"]);
        assert!(!breakers.is_open("dst"), "half-open lets letters through");
        breakers.failed("dst");
        assert_eq!(rx.try_recv().unwrap(), Change::Opened("dst".into()), "a failed probe opens it again");
        assert_eq!(breakers.due_probes(), ["dst"]);
        assert_eq!(breakers.due_probes(), ["dst"], "a probe without a verdict is tried again");
        breakers.succeeded("dst");
        assert_eq!(rx.try_recv().unwrap(), Change::Closed("dst".into()));
        assert!(breakers.due_probes().is_empty());
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let breakers = Breakers::new(0, Duration::ZERO, tx);
        for _ in 0..1000 {
            breakers.failed("dst");
        }
        assert!(!breakers.is_open("dst"));
    }
}
