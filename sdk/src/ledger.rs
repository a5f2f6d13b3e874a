//! The offset ledger, and consuming then committing through it: what every Pigeon consumer
//! (the module's, and the bus's router, archiver, registry and failures reader) commits.
//!
//! A consumer records each letter it reads ([`PartitionLedger::begin`]) and settles it once its
//! work is done for good ([`PartitionLedger::settle`]): handled, delivered, stored. Letters
//! settle in any order; a partition's committable offset is its lowest letter not yet settled,
//! or, when every letter read is settled, the offset after the last one read. So nothing is
//! ever committed past a letter whose work is not done, and a restart reads it again.
//!
//! The consumer hands the committable offsets over on a timer ([`Ledger::store_offsets`]), a
//! revoke drains the revoked partitions (bounded) before it commits them
//! ([`Ledger::commit_revoked`], which [`LedgerContext`] calls), and a shutdown drains every
//! partition (bounded) before its final commit ([`Ledger::drain_and_commit`]).
//!
//! A ledger may cap the letters in flight per partition ([`Ledger::capped`]): at the cap,
//! [`PartitionLedger::begin`] asks the consumer to pause the partition, and once fewer than
//! half the cap are in flight the partition is sent on the resume channel.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;

/// Every partition a consumer reads, each with its letters in flight.
#[derive(Debug)]
pub struct Ledger {
    /// Who consumes, for the logs (`router`, `archiver`, `module act-toy`…).
    name: Arc<str>,
    /// Per topic, its partitions by ascending partition number.
    partitions: Mutex<HashMap<Arc<str>, Vec<Arc<PartitionLedger>>>>,
    limit: Limit,
}

/// The in-flight cap every partition of a ledger shares.
#[derive(Clone, Debug)]
struct Limit {
    /// Letters in flight at which a partition pauses (`usize::MAX`: never).
    cap: usize,
    /// A paused partition resumes once fewer letters than this are in flight.
    resume_below: usize,
    /// Where a paused partition is sent when it may resume.
    resume: Option<UnboundedSender<Arc<PartitionLedger>>>,
}

/// One partition's letters in flight.
#[derive(Debug)]
pub struct PartitionLedger {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    state: Mutex<State>,
    settled: Condvar,
    limit: Limit,
}

#[derive(Debug, Default)]
struct State {
    /// Letters with unsettled work, by ascending offset; an entry whose work is all settled
    /// stays until every letter before it has settled too.
    pending: VecDeque<Pending>,
    /// The offset after the last letter begun; `None` before the first.
    next: Option<i64>,
    /// Whether the partition was paused at the cap.
    paused: bool,
}

#[derive(Debug)]
struct Pending {
    offset: i64,
    outstanding: u32,
}

impl State {
    /// Adds `work` to settle for `offset`, keeping `pending` in offset order: appended, as a
    /// letter after the last one is; merged or inserted for a letter read again.
    fn expect(&mut self, offset: i64, work: u32) {
        if self.pending.back().is_none_or(|last| last.offset < offset) {
            return self.pending.push_back(Pending { offset, outstanding: work });
        }
        match self.pending.binary_search_by_key(&offset, |p| p.offset) {
            Ok(i) => {
                if let Some(entry) = self.pending.get_mut(i) {
                    entry.outstanding += work;
                }
            }
            Err(i) => self.pending.insert(i, Pending { offset, outstanding: work }),
        }
    }

    fn committable(&self) -> Option<i64> {
        self.pending.front().map(|p| p.offset).or(self.next)
    }
}

/// What [`PartitionLedger::begin`] asks of the consumer.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Keep consuming.
    Continue,
    /// The cap is reached: pause the partition until the ledger sends it to resume.
    Pause,
}

/// The outcome of [`PartitionLedger::begin`].
#[derive(Debug, PartialEq, Eq)]
pub struct Begun {
    /// Whether to pause.
    pub admission: Admission,
    /// Letters of the partition in flight now.
    pub in_flight: usize,
}

impl PartitionLedger {
    fn new(topic: Arc<str>, partition: i32, limit: Limit) -> Self {
        Self { topic, partition, state: Mutex::new(State::default()), settled: Condvar::new(), limit }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (every update is one step).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the letter at `offset`, read with `work` pieces to settle (a consumer that
    /// settles each letter once passes 1; the router, one per output). A letter with no work
    /// is never recorded: the committable offset moves past it once the letters before it
    /// settle. Offsets normally ascend, but a broker may hand a letter over again: its work
    /// joins the work of that offset still pending, or waits in offset order, so every settle
    /// finds its letter.
    pub fn begin(&self, offset: i64, work: u32) -> Begun {
        let mut state = self.lock();
        match state.next {
            Some(next) if offset < next => {
                tracing::debug!(topic = %self.topic, partition = self.partition, offset, next, "a letter read again");
            }
            _ => state.next = Some(offset + 1),
        }
        if work > 0 {
            state.expect(offset, work);
        }
        let in_flight = state.pending.len();
        let admission = if work > 0 && in_flight >= self.limit.cap && !state.paused {
            state.paused = true;
            Admission::Pause
        } else {
            Admission::Continue
        };
        Begun { admission, in_flight }
    }

    /// Adds `work` to a letter still in flight (a script emitted outputs). The letter must
    /// have unsettled work of its own until this returns.
    pub fn add(&self, offset: i64, work: u32) {
        let mut state = self.lock();
        match state.pending.binary_search_by_key(&offset, |p| p.offset) {
            Ok(i) => {
                if let Some(entry) = state.pending.get_mut(i) {
                    entry.outstanding += work;
                }
            }
            Err(_) => debug_assert!(false, "added work to an offset that is not pending"),
        }
    }

    /// Settles one piece of work of the letter at `offset`.
    pub fn settle(self: &Arc<Self>, offset: i64) {
        let mut state = self.lock();
        let Ok(i) = state.pending.binary_search_by_key(&offset, |p| p.offset) else {
            tracing::warn!(topic = %self.topic, partition = self.partition, offset, "settled an offset that is not pending");
            debug_assert!(false, "settled an offset that is not pending");
            return;
        };
        if let Some(entry) = state.pending.get_mut(i) {
            entry.outstanding = entry.outstanding.saturating_sub(1);
        }
        if i == 0 {
            while state.pending.front().is_some_and(|p| p.outstanding == 0) {
                state.pending.pop_front();
            }
        }
        if state.paused && state.pending.len() < self.limit.resume_below {
            state.paused = false;
            if let Some(resume) = &self.limit.resume {
                // The consumer may be gone at shutdown; then nobody needs the resume.
                let _ = resume.send(Arc::clone(self));
            }
        }
        if state.pending.is_empty() {
            self.settled.notify_all();
        }
    }

    /// Whether the partition is paused at the cap, waiting to drain below half of it.
    pub fn paused_at_cap(&self) -> bool {
        self.lock().paused
    }

    /// The offset to commit: the lowest letter not settled, or the one after the last letter
    /// read; `None` before the first letter.
    pub fn committable(&self) -> Option<i64> {
        self.lock().committable()
    }

    /// Letters in flight: from the lowest unsettled letter to the last one read with work
    /// (settled letters after the lowest unsettled one count until it settles).
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

impl Ledger {
    /// A ledger without a cap, named for the logs.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self::with_limit(name, Limit { cap: usize::MAX, resume_below: 0, resume: None })
    }

    /// A ledger whose partitions ask to pause once `cap` letters are in flight, and are sent on
    /// `resume` once fewer than half of `cap` (at least one) are.
    pub fn capped(
        name: impl Into<Arc<str>>,
        cap: usize,
        resume: UnboundedSender<Arc<PartitionLedger>>,
    ) -> Self {
        Self::with_limit(name, Limit { cap, resume_below: (cap / 2).max(1), resume: Some(resume) })
    }

    fn with_limit(name: impl Into<Arc<str>>, limit: Limit) -> Self {
        Self { name: name.into(), partitions: Mutex::default(), limit }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<Arc<PartitionLedger>>>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The partition's ledger, created on its first letter.
    pub fn partition(&self, topic: &str, partition: i32) -> Arc<PartitionLedger> {
        let mut map = self.lock();
        if let Some(found) = map.get(topic).and_then(|known| find(known, partition)) {
            return Arc::clone(found);
        }
        let key = map.get_key_value(topic).map_or_else(|| Arc::from(topic), |(key, _)| Arc::clone(key));
        let created = Arc::new(PartitionLedger::new(Arc::clone(&key), partition, self.limit.clone()));
        let known = map.entry(key).or_default();
        let at = known.partition_point(|p| p.partition < partition);
        known.insert(at, Arc::clone(&created));
        created
    }

    /// The partition's ledger, if it has read a letter.
    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<PartitionLedger>> {
        self.lock().get(topic).and_then(|known| find(known, partition)).cloned()
    }

    /// Forgets a partition (it was revoked); returns its ledger, whose letters still settle.
    pub fn forget(&self, topic: &str, partition: i32) -> Option<Arc<PartitionLedger>> {
        let mut map = self.lock();
        let known = map.get_mut(topic)?;
        let at = known.binary_search_by_key(&partition, |p| p.partition).ok()?;
        let forgotten = known.remove(at);
        if known.is_empty() {
            map.remove(topic);
        }
        Some(forgotten)
    }

    /// Every partition known.
    pub fn partitions(&self) -> Vec<Arc<PartitionLedger>> {
        self.lock().values().flatten().cloned().collect()
    }

    /// Letters in flight, over every partition.
    pub fn in_flight(&self) -> usize {
        self.partitions().iter().map(|p| p.in_flight()).sum()
    }

    /// Every partition's committable offset.
    pub fn committable(&self) -> TopicPartitionList {
        committable(&self.partitions())
    }

    /// Blocks until every partition has nothing in flight or `timeout` passes; returns whether
    /// everything settled.
    pub fn wait_settled(&self, timeout: Duration) -> bool {
        wait_settled(&self.partitions(), timeout)
    }

    /// Hands every partition's committable offset to the consumer for its next commit
    /// (automatic or explicit); returns them.
    pub fn store_offsets<C, K>(&self, consumer: &K) -> TopicPartitionList
    where
        C: ConsumerContext,
        K: Consumer<C> + ?Sized,
    {
        let offsets = self.committable();
        if offsets.count() > 0 {
            if let Err(e) = consumer.store_offsets(&offsets) {
                // A partition revoked a moment ago cannot be stored; its revoke committed it.
                tracing::debug!(consumer = %self.name, error = %e, "storing offsets");
            }
        }
        offsets
    }

    /// Stores every partition's committable offset and commits them, synchronously.
    pub fn commit<C, K>(&self, consumer: &K) -> KafkaResult<()>
    where
        C: ConsumerContext,
        K: Consumer<C> + ?Sized,
    {
        let offsets = self.store_offsets(consumer);
        match offsets.count() {
            0 => Ok(()),
            _ => consumer.commit(&offsets, CommitMode::Sync),
        }
    }

    /// A revoke: forgets the revoked partitions, waits until their letters settle (at most
    /// `drain` for all of them), then commits exactly up to their committable offsets, so the
    /// next owner neither skips nor repeats letters. A letter still unsettled then is read
    /// again by the next owner.
    pub fn commit_revoked<C, K>(&self, consumer: &K, revoked: &TopicPartitionList, drain: Duration)
    where
        C: ConsumerContext,
        K: Consumer<C> + ?Sized,
    {
        let deadline = Instant::now() + drain;
        let mut offsets = TopicPartitionList::new();
        for element in revoked.elements() {
            let (topic, number) = (element.topic(), element.partition());
            let Some(partition) = self.forget(topic, number) else { continue };
            if !partition.wait_settled(deadline.saturating_duration_since(Instant::now())) {
                let in_flight = partition.in_flight();
                if drain.is_zero() {
                    tracing::debug!(consumer = %self.name, topic, partition = number, in_flight, "revoked with letters in flight; the next owner reads them again");
                } else {
                    tracing::warn!(consumer = %self.name, topic, partition = number, in_flight, "revoked before in-flight letters settled; they will be delivered again");
                }
            }
            if let Some(offset) = partition.committable() {
                let _ = offsets.add_partition_offset(topic, number, Offset::Offset(offset));
            }
        }
        if offsets.count() > 0 {
            if let Err(e) = consumer.store_offsets(&offsets) {
                tracing::debug!(consumer = %self.name, error = %e, "storing offsets of revoked partitions");
            }
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(consumer = %self.name, error = %e, "committing offsets of revoked partitions");
            }
        }
    }

    /// A shutdown: waits until every letter read settles (at most `drain`), then stores and
    /// commits every partition's committable offset. Returns whether everything settled. It
    /// blocks: async code calls [`Ledger::drain_and_commit_async`].
    pub fn drain_and_commit<C, K>(&self, consumer: &K, drain: Duration) -> bool
    where
        C: ConsumerContext,
        K: Consumer<C> + ?Sized,
    {
        let settled = self.wait_settled(drain);
        self.finish(consumer, settled)
    }

    /// [`Ledger::drain_and_commit`] for async code: the wait runs off the runtime's threads.
    pub async fn drain_and_commit_async<C, K>(self: &Arc<Self>, consumer: &K, drain: Duration) -> bool
    where
        C: ConsumerContext,
        K: Consumer<C> + ?Sized,
    {
        let partitions = self.partitions();
        let settled =
            tokio::task::spawn_blocking(move || wait_settled(&partitions, drain)).await.unwrap_or(false);
        self.finish(consumer, settled)
    }

    fn finish<C, K>(&self, consumer: &K, settled: bool) -> bool
    where
        C: ConsumerContext,
        K: Consumer<C> + ?Sized,
    {
        if !settled {
            tracing::warn!(consumer = %self.name, in_flight = self.in_flight(), "drain timed out; unsettled letters will be delivered again after restart");
        }
        if let Err(e) = self.commit(consumer) {
            tracing::warn!(consumer = %self.name, error = %e, "final commit");
        }
        settled
    }
}

/// A partition among a topic's, kept in partition order: at its own index when the consumer
/// holds every partition below it (the common case), else found by binary search.
fn find(known: &[Arc<PartitionLedger>], partition: i32) -> Option<&Arc<PartitionLedger>> {
    let direct = usize::try_from(partition).ok().and_then(|at| known.get(at));
    if let Some(found) = direct.filter(|p| p.partition == partition) {
        return Some(found);
    }
    let at = known.binary_search_by_key(&partition, |p| p.partition).ok()?;
    known.get(at)
}

fn committable(partitions: &[Arc<PartitionLedger>]) -> TopicPartitionList {
    let mut offsets = TopicPartitionList::new();
    for partition in partitions {
        if let Some(offset) = partition.committable() {
            let _ =
                offsets.add_partition_offset(&partition.topic, partition.partition, Offset::Offset(offset));
        }
    }
    offsets
}

fn wait_settled(partitions: &[Arc<PartitionLedger>], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    partitions.iter().all(|p| p.wait_settled(deadline.saturating_duration_since(Instant::now())))
}

/// Consumer callbacks for a consumer that commits through a [`Ledger`]: a revoke drains the
/// revoked partitions (at most `drain`) and commits them ([`Ledger::commit_revoked`]).
#[derive(Debug)]
pub struct LedgerContext {
    ledger: Arc<Ledger>,
    drain: Duration,
}

impl LedgerContext {
    /// Callbacks that commit through `ledger`, waiting at most `drain` on a revoke. A consumer
    /// whose letters settle only on its own task (which the revoke callback holds up) gains
    /// nothing by waiting: it passes zero, and commits what is settled.
    pub fn new(ledger: Arc<Ledger>, drain: Duration) -> Self {
        Self { ledger, drain }
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }
}

impl ClientContext for LedgerContext {}

impl ConsumerContext for LedgerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            self.ledger.commit_revoked(consumer, revoked, self.drain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn offset_of(offsets: &TopicPartitionList, topic: &str, partition: i32) -> Option<Offset> {
        offsets.find_partition(topic, partition).map(|e| e.offset())
    }

    #[test]
    fn the_committable_offset_stops_at_the_lowest_unsettled_letter() {
        let ledger = Ledger::new("test");
        let p = ledger.partition("t", 0);
        assert_eq!(p.committable(), None, "nothing read, nothing to commit");
        assert_eq!(ledger.committable().count(), 0);
        p.begin(10, 2);
        p.begin(11, 1);
        p.begin(12, 0); // no work: covered once the letters before it settle
        p.begin(13, 1);
        assert_eq!(p.committable(), Some(10));
        p.settle(11);
        p.settle(13);
        assert_eq!(p.committable(), Some(10), "later settles do not move it past 10");
        p.settle(10);
        assert_eq!(p.committable(), Some(10), "10 has a second piece of work");
        p.settle(10);
        assert_eq!(p.committable(), Some(14), "all settled: the offset after the last one read");
        assert_eq!(p.in_flight(), 0);
        assert_eq!(offset_of(&ledger.committable(), "t", 0), Some(Offset::Offset(14)));
    }

    #[test]
    fn out_of_order_settles_with_gaps_move_the_offset_only_past_settled_letters() {
        let ledger = Ledger::new("test");
        let p = ledger.partition("t", 3);
        for offset in [3, 7, 8, 20] {
            p.begin(offset, 1);
        }
        p.settle(20);
        p.settle(7);
        assert_eq!(p.committable(), Some(3));
        p.settle(3);
        assert_eq!(p.committable(), Some(8));
        p.settle(8);
        assert_eq!(p.committable(), Some(21));
    }

    #[test]
    fn partitions_and_topics_are_kept_apart() {
        let ledger = Ledger::new("test");
        ledger.partition("a", 1).begin(5, 1);
        ledger.partition("a", 0).begin(9, 1);
        ledger.partition("b", 1).begin(100, 0);
        assert!(Arc::ptr_eq(&ledger.partition("a", 1), &ledger.partition("a", 1)), "one ledger a partition");
        ledger.partition("a", 1).settle(5);
        let offsets = ledger.committable();
        assert_eq!(offsets.count(), 3);
        assert_eq!(offset_of(&offsets, "a", 0), Some(Offset::Offset(9)));
        assert_eq!(offset_of(&offsets, "a", 1), Some(Offset::Offset(6)));
        assert_eq!(offset_of(&offsets, "b", 1), Some(Offset::Offset(101)));
        assert_eq!(ledger.in_flight(), 1);
        // Some partitions only, in any order: each still finds its own ledger.
        for partition in [9, 2, 5, 0] {
            ledger.partition("c", partition).begin(i64::from(partition) * 10, 1);
        }
        for partition in [0, 2, 5, 9] {
            assert_eq!(
                ledger.get("c", partition).and_then(|p| p.committable()),
                Some(i64::from(partition) * 10)
            );
        }
        assert!(
            ledger.get("c", 1).is_none() && ledger.get("c", -1).is_none() && ledger.get("d", 0).is_none()
        );
    }

    #[test]
    fn work_added_later_holds_the_letter_until_it_settles() {
        let ledger = Ledger::new("test");
        let p = ledger.partition("t", 0);
        p.begin(5, 1); // a script step
        p.add(5, 2); // the script emitted two outputs
        p.settle(5); // the step itself is done
        assert_eq!(p.committable(), Some(5));
        p.settle(5);
        p.settle(5);
        assert_eq!(p.committable(), Some(6));
    }

    /// A letter handed over again is tracked with the one still in flight, or in offset order:
    /// every settle finds it and the committable offset moves on.
    #[test]
    fn a_letter_read_again_settles_in_offset_order() {
        let ledger = Ledger::new("test");
        let p = ledger.partition("t", 0);
        for offset in 0..4 {
            p.begin(offset, 2);
        }
        p.begin(2, 2); // read again while its first work is in flight
        assert_eq!(p.in_flight(), 4, "one entry per offset");
        for offset in [0, 0, 1, 1, 3, 3, 2, 2, 2] {
            p.settle(offset);
        }
        assert_eq!(p.committable(), Some(2), "one piece of 2 is still out");
        p.settle(2);
        assert_eq!(p.committable(), Some(4));
        p.begin(1, 1); // read again after it settled: held at the front
        assert_eq!(p.committable(), Some(1));
        p.settle(1);
        assert_eq!(p.committable(), Some(4), "the next offset after the last one read");
    }

    #[test]
    fn the_cap_pauses_and_draining_below_half_resumes_once() {
        let (resume, mut resumed) = mpsc::unbounded_channel();
        let ledger = Ledger::capped("test", 4, resume);
        let p = ledger.partition("t", 0);
        assert_eq!(p.begin(0, 1), Begun { admission: Admission::Continue, in_flight: 1 });
        assert_eq!(
            p.begin(1, 0),
            Begun { admission: Admission::Continue, in_flight: 1 },
            "no work, no count"
        );
        p.begin(2, 1);
        p.begin(3, 1);
        assert_eq!(p.begin(4, 1), Begun { admission: Admission::Pause, in_flight: 4 });
        assert!(p.paused_at_cap());
        assert_eq!(p.begin(5, 1).admission, Admission::Continue, "paused once, not again");
        p.settle(5);
        p.settle(4);
        p.settle(3);
        assert!(resumed.try_recv().is_err(), "settled after the lowest: still 5 in flight");
        p.settle(0);
        assert!(resumed.try_recv().is_err(), "4 in flight is not below 2");
        p.settle(2);
        let again = resumed.try_recv().expect("1 in flight: resume");
        assert!(Arc::ptr_eq(&again, &p), "the partition to resume");
        assert!(!p.paused_at_cap());
        assert!(resumed.try_recv().is_err(), "resume is asked once");
    }

    #[test]
    fn without_a_cap_a_partition_never_pauses() {
        let ledger = Ledger::new("test");
        let p = ledger.partition("t", 0);
        assert!((0..10_000).all(|offset| p.begin(offset, 1).admission == Admission::Continue));
        assert_eq!(p.in_flight(), 10_000);
    }

    #[test]
    fn a_revoked_partition_is_forgotten_and_starts_afresh() {
        let ledger = Ledger::new("test");
        let p = ledger.partition("t", 0);
        p.begin(7, 1);
        ledger.partition("t", 1).begin(3, 1);
        let forgotten = ledger.forget("t", 0).expect("known");
        assert!(Arc::ptr_eq(&forgotten, &p));
        assert!(ledger.get("t", 0).is_none());
        assert!(ledger.forget("t", 0).is_none(), "forgotten once");
        let offsets = ledger.committable();
        assert_eq!((offsets.count(), offset_of(&offsets, "t", 1)), (1, Some(Offset::Offset(3))));
        p.settle(7); // its letter still settles
        assert_eq!(forgotten.committable(), Some(8));
        let fresh = ledger.partition("t", 0);
        assert!(!Arc::ptr_eq(&fresh, &p), "assigned again: a new ledger");
        assert_eq!(fresh.committable(), None, "it commits only what it reads from now on");
        ledger.forget("t", 0);
        ledger.forget("t", 1);
        assert!(ledger.partitions().is_empty());
    }

    #[test]
    fn waiting_returns_when_settled_or_at_the_deadline() {
        let ledger = Arc::new(Ledger::new("test"));
        let p = ledger.partition("t", 0);
        let other = ledger.partition("t", 1);
        p.begin(0, 1);
        other.begin(0, 1);
        let started = Instant::now();
        assert!(!p.wait_settled(Duration::from_millis(20)));
        assert!(!ledger.wait_settled(Duration::from_millis(20)));
        assert!(started.elapsed() < Duration::from_secs(5), "bounded by the timeout");
        other.settle(0);
        let waiting = Arc::clone(&ledger);
        let waiter = std::thread::spawn(move || waiting.wait_settled(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        p.settle(0);
        assert!(waiter.join().unwrap(), "settled before the deadline");
        assert!(ledger.wait_settled(Duration::ZERO), "nothing in flight: at once");
    }

    /// The commit helpers against a broker (librdkafka's mock cluster): a shutdown commits up
    /// to the lowest unsettled letter, and a revoke waits for the revoked partition's letters
    /// to settle before it commits past them.
    #[test]
    fn consumers_commit_only_what_is_settled() {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        use rdkafka::ClientConfig;

        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let producer: BaseProducer =
            ClientConfig::new().set("bootstrap.servers", cluster.bootstrap_servers()).create().unwrap();
        let produce = |count: usize| {
            for _ in 0..count {
                producer.send(BaseRecord::<(), [u8]>::to("t").payload(b"{}".as_slice())).unwrap();
            }
            producer.flush(Duration::from_secs(10)).unwrap();
        };
        let ledger = Arc::new(Ledger::new("test"));
        let consumer: BaseConsumer<LedgerContext> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "g")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(LedgerContext::new(Arc::clone(&ledger), Duration::from_secs(5)))
            .unwrap();
        consumer.subscribe(&["t"]).unwrap();
        let read = |count: usize| {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut offsets = Vec::new();
            while offsets.len() < count && Instant::now() < deadline {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                    use rdkafka::Message;
                    ledger.partition(message.topic(), message.partition()).begin(message.offset(), 1);
                    offsets.push(message.offset());
                }
            }
            offsets
        };
        let committed = || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition("t", 0);
            let found = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
            found.find_partition("t", 0).map(|e| e.offset())
        };

        produce(5);
        assert_eq!(read(5), [0, 1, 2, 3, 4]);
        let p = ledger.get("t", 0).unwrap();
        for offset in [0, 1, 3] {
            p.settle(offset);
        }
        assert!(!ledger.drain_and_commit(&consumer, Duration::from_millis(50)), "2 and 4 are in flight");
        assert_eq!(committed(), Some(Offset::Offset(2)), "not past the lowest unsettled letter");
        p.settle(2);
        p.settle(4);
        assert!(ledger.drain_and_commit(&consumer, Duration::from_millis(50)));
        assert_eq!(committed(), Some(Offset::Offset(5)), "everything read");

        produce(2);
        assert_eq!(read(2), [5, 6]);
        let settler = Arc::clone(&p);
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            settler.settle(6);
            settler.settle(5);
        });
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 0);
        ledger.commit_revoked(&consumer, &revoked, Duration::from_secs(10));
        late.join().unwrap();
        assert_eq!(committed(), Some(Offset::Offset(7)), "the revoke waited for 5 and 6");
        assert!(ledger.get("t", 0).is_none(), "the revoked partition is forgotten");
    }
}
