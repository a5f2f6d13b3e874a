//! Per-partition bookkeeping of letters in flight.
//!
//! Many letters of a partition are in flight at once, and their outputs are acknowledged in any
//! order. The offset that may be committed is the lowest offset whose outputs are not all
//! settled (acknowledged by Kafka or stored as dead letters), or, when nothing is pending, the
//! offset after the last letter seen. Letters that had no output are never recorded: the
//! watermark covers them.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

/// One source partition's letters in flight.
#[derive(Debug)]
pub struct PartitionTracker {
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: i32,
    state: Mutex<State>,
    settled: Condvar,
    resume_below: usize,
    resume: UnboundedSender<Arc<PartitionTracker>>,
}

#[derive(Debug, Default)]
struct State {
    /// Letters with unsettled outputs, by ascending offset.
    pending: VecDeque<Pending>,
    /// The offset after the last letter begun; `None` before the first.
    next: Option<i64>,
    /// Whether the router paused the partition at the cap.
    paused: bool,
}

impl State {
    /// Adds `outputs` to settle for `offset`, keeping `pending` in offset order: appended, as
    /// a letter after the last one is; merged or inserted for a letter read again.
    fn expect(&mut self, offset: i64, outputs: u32) {
        if self.pending.back().is_none_or(|last| last.offset < offset) {
            return self.pending.push_back(Pending { offset, outstanding: outputs });
        }
        match self.pending.binary_search_by_key(&offset, |p| p.offset) {
            Ok(i) => self.pending[i].outstanding += outputs,
            Err(i) => self.pending.insert(i, Pending { offset, outstanding: outputs }),
        }
    }
}

#[derive(Debug)]
struct Pending {
    offset: i64,
    outstanding: u32,
}

/// What [`PartitionTracker::begin`] asks of the router.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Keep consuming.
    Continue,
    /// The cap is reached: pause the partition until the tracker asks to resume.
    Pause,
}

/// The outcome of [`PartitionTracker::begin`].
#[derive(Debug, PartialEq, Eq)]
pub struct Begun {
    /// Whether to pause.
    pub admission: Admission,
    /// Letters of the partition in flight now.
    pub in_flight: usize,
}

impl PartitionTracker {
    /// A tracker that asks for a resume on `resume` once fewer than `resume_below` letters are
    /// in flight after a pause.
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        resume_below: usize,
        resume: UnboundedSender<Arc<PartitionTracker>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            topic,
            partition,
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            resume_below: resume_below.max(1),
            resume,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (every update is one step).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a letter at `offset` with `outputs` outputs to settle. Offsets normally ascend,
    /// but a broker may hand a letter over again (Tansu does near a partition's end, after a
    /// pause): it is forwarded again, and its outputs join the ones of that offset still
    /// pending, or wait in offset order, so every delivery report finds its letter.
    pub fn begin(&self, offset: i64, outputs: u32, cap: usize) -> Begun {
        let mut state = self.lock();
        match state.next {
            Some(next) if offset < next => {
                tracing::debug!(topic = %self.topic, partition = self.partition, offset, next, "a letter read again");
            }
            _ => state.next = Some(offset + 1),
        }
        if outputs > 0 {
            state.expect(offset, outputs);
        }
        let in_flight = state.pending.len();
        let admission = if outputs > 0 && in_flight >= cap && !state.paused {
            state.paused = true;
            Admission::Pause
        } else {
            Admission::Continue
        };
        Begun { admission, in_flight }
    }

    /// Adds `outputs` to a letter still in flight (a script emitted them). The letter must
    /// have an unsettled output of its own until this returns.
    pub fn add(&self, offset: i64, outputs: u32) {
        let mut state = self.lock();
        if let Ok(i) = state.pending.binary_search_by_key(&offset, |p| p.offset) {
            state.pending[i].outstanding += outputs;
        } else {
            debug_assert!(false, "added outputs to an offset that is not pending");
        }
    }

    /// Settles one output of the letter at `offset`.
    pub fn settle(self: &Arc<Self>, offset: i64) {
        let mut state = self.lock();
        let Ok(i) = state.pending.binary_search_by_key(&offset, |p| p.offset) else {
            tracing::warn!(topic = %self.topic, partition = self.partition, offset, "settled an offset that is not pending");
            debug_assert!(false, "settled an offset that is not pending");
            return;
        };
        let entry = &mut state.pending[i];
        entry.outstanding = entry.outstanding.saturating_sub(1);
        if i == 0 {
            while state.pending.front().is_some_and(|p| p.outstanding == 0) {
                state.pending.pop_front();
            }
        }
        if state.paused && state.pending.len() < self.resume_below {
            state.paused = false;
            // The router may be gone at shutdown; then nobody needs the resume.
            let _ = self.resume.send(Arc::clone(self));
        }
        if state.pending.is_empty() {
            self.settled.notify_all();
        }
    }

    /// Whether the partition is paused at the in-flight cap, waiting to drain below half.
    pub fn paused_at_cap(&self) -> bool {
        self.lock().paused
    }

    /// The offset to commit: the next letter to read again after a restart.
    pub fn watermark(&self) -> Option<i64> {
        let state = self.lock();
        state.pending.front().map(|p| p.offset).or(state.next)
    }

    /// Letters in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().pending.len()
    }

    /// Blocks until nothing is in flight or `timeout` passes; returns whether it drained.
    pub fn wait_settled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.pending.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.settled.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn tracker(
        resume_below: usize,
    ) -> (Arc<PartitionTracker>, mpsc::UnboundedReceiver<Arc<PartitionTracker>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (PartitionTracker::new(Arc::from("t"), 0, resume_below, tx), rx)
    }

    #[test]
    fn the_watermark_stops_at_the_lowest_unsettled_letter() {
        let (t, _rx) = tracker(1);
        assert_eq!(t.watermark(), None, "nothing seen, nothing to commit");
        t.begin(10, 2, 100);
        t.begin(11, 1, 100);
        t.begin(12, 0, 100); // no output: covered by the watermark
        t.begin(13, 1, 100);
        assert_eq!(t.watermark(), Some(10));
        t.settle(11);
        t.settle(13);
        assert_eq!(t.watermark(), Some(10), "later acks do not move it past 10");
        t.settle(10);
        assert_eq!(t.watermark(), Some(10), "10 has a second output");
        t.settle(10);
        assert_eq!(t.watermark(), Some(14), "all settled: the next offset to read");
        assert_eq!(t.in_flight(), 0);
    }

    /// A letter handed over again (the broker re-delivers it) is tracked with the one still in
    /// flight or in offset order: every delivery settles, the watermark moves on, and a
    /// partition paused at the cap is resumed.
    #[test]
    fn a_letter_read_again_settles_and_the_partition_resumes() {
        let (t, mut rx) = tracker(2);
        for offset in 0..4 {
            t.begin(offset, 2, 100);
        }
        // 2 is read again while its first outputs are in flight: four outputs to settle.
        t.begin(2, 2, 100);
        assert_eq!(t.in_flight(), 4, "one entry per offset");
        for offset in [0, 0, 1, 1, 3, 3, 2, 2, 2] {
            t.settle(offset);
        }
        assert_eq!(t.watermark(), Some(2), "one output of 2 is still out");
        t.settle(2);
        assert_eq!(t.watermark(), Some(4));
        // 1 comes again after it settled: it is tracked at the front, below the next offset.
        t.begin(1, 1, 100);
        assert_eq!(t.watermark(), Some(1));
        t.begin(4, 1, 3);
        assert_eq!(t.begin(5, 1, 3).admission, Admission::Pause, "three in flight at a cap of three");
        t.settle(1);
        t.settle(4);
        assert!(rx.try_recv().is_ok(), "below half the cap: resumed");
        t.settle(5);
        assert_eq!(t.watermark(), Some(6), "the next offset after the last one read");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_script_step_holds_the_letter_until_its_outputs_settle() {
        let (t, _rx) = tracker(1);
        t.begin(5, 1, 100); // the script step
        t.add(5, 2); // the script emitted two letters
        t.settle(5); // the step itself is done
        assert_eq!(t.watermark(), Some(5));
        t.settle(5);
        t.settle(5);
        assert_eq!(t.watermark(), Some(6));
    }

    #[test]
    fn offsets_with_gaps_settle_in_any_order() {
        let (t, _rx) = tracker(1);
        for offset in [3, 7, 8, 20] {
            t.begin(offset, 1, 100);
        }
        t.settle(20);
        t.settle(7);
        assert_eq!(t.watermark(), Some(3));
        t.settle(3);
        assert_eq!(t.watermark(), Some(8));
        t.settle(8);
        assert_eq!(t.watermark(), Some(21));
    }

    #[test]
    fn the_cap_pauses_and_draining_resumes_once() {
        let (t, mut rx) = tracker(2);
        assert_eq!(t.begin(0, 1, 3), Begun { admission: Admission::Continue, in_flight: 1 });
        assert_eq!(t.begin(1, 1, 3), Begun { admission: Admission::Continue, in_flight: 2 });
        assert_eq!(t.begin(2, 1, 3), Begun { admission: Admission::Pause, in_flight: 3 });
        t.settle(0);
        assert!(rx.try_recv().is_err(), "2 in flight is not below 2");
        t.settle(1);
        assert!(rx.try_recv().is_ok(), "1 in flight: resume");
        t.settle(2);
        assert!(rx.try_recv().is_err(), "resume is asked once");
    }

    #[test]
    fn waiting_returns_when_settled_or_at_the_deadline() {
        let (t, _rx) = tracker(1);
        t.begin(0, 1, 10);
        assert!(!t.wait_settled(Duration::from_millis(20)));
        let t2 = Arc::clone(&t);
        let handle = std::thread::spawn(move || t2.wait_settled(Duration::from_secs(10)));
        t.settle(0);
        assert!(handle.join().unwrap());
    }
}
