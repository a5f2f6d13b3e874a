//! What each pigeon did, cluster-wide: every instance counts the letters its pigeons took,
//! delivered and failed in memory, and adds them to the store in short time buckets, so the
//! overview sums every instance's work and the history outlives restarts.
//!
//! A route holds its pigeon's [`Counts`] (one per pigeon id in the process, shared by every
//! version and every table built), so counting a letter is one relaxed atomic add.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The length of one bucket in the store: the overview's finest step.
pub const BUCKET_MS: i64 = 60_000;

/// One pigeon's counts since the last flush.
#[derive(Debug, Default)]
pub struct Counts {
    /// Letters the pigeon took (matched, inside its live window).
    pub taken: AtomicU64,
    /// Outputs delivered to a destination (by the router or a retry).
    pub delivered: AtomicU64,
    /// Letters or outputs that became dead letters.
    pub failed: AtomicU64,
}

impl Counts {
    /// Counts one letter taken.
    pub fn took(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one output delivered.
    pub fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` outputs delivered.
    pub fn delivered_many(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one failure.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` failures.
    pub fn failed_many(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    fn take(&self) -> Tally {
        Tally {
            letters_in: self.taken.swap(0, Ordering::Relaxed),
            letters_out: self.delivered.swap(0, Ordering::Relaxed),
            failures: self.failed.swap(0, Ordering::Relaxed),
        }
    }

    fn add(&self, tally: &Tally) {
        self.taken.fetch_add(tally.letters_in, Ordering::Relaxed);
        self.delivered.fetch_add(tally.letters_out, Ordering::Relaxed);
        self.failed.fetch_add(tally.failures, Ordering::Relaxed);
    }
}

/// Letters in, out and failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tally {
    /// Letters the pigeon took.
    pub letters_in: u64,
    /// Outputs delivered.
    pub letters_out: u64,
    /// Letters and outputs that became dead letters.
    pub failures: u64,
}

impl Tally {
    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.letters_in += other.letters_in;
        self.letters_out += other.letters_out;
        self.failures += other.failures;
    }
}

/// One pigeon's counts in one bucket, as the store keeps them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketCount {
    /// Start of the bucket (unix ms, a multiple of [`BUCKET_MS`]).
    pub bucket: i64,
    /// The pigeon.
    pub pigeon_id: String,
    /// What it did.
    pub tally: Tally,
}

/// The counts of every pigeon this process has routes for.
#[derive(Debug, Default)]
pub struct CounterBook {
    pigeons: Mutex<HashMap<Arc<str>, Arc<Counts>>>,
}

impl CounterBook {
    /// The counts of pigeon `id`, created on first use.
    pub fn of(&self, id: &str) -> Arc<Counts> {
        let mut pigeons = self.pigeons.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counts) = pigeons.get(id) {
            return Arc::clone(counts);
        }
        Arc::clone(pigeons.entry(Arc::from(id)).or_default())
    }

    /// Takes every non-zero count, leaving zeros, sorted by pigeon (so instances writing the
    /// same buckets lock their rows in the same order). Forgets pigeons no route holds any
    /// more (deleted, or only ever validated) once they have nothing to flush.
    pub fn take(&self) -> Vec<(Arc<str>, Tally)> {
        let mut pigeons = self.pigeons.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken = Vec::new();
        pigeons.retain(|id, counts| {
            let tally = counts.take();
            if tally.is_zero() {
                return Arc::strong_count(counts) > 1;
            }
            taken.push((Arc::clone(id), tally));
            true
        });
        taken.sort_by(|a, b| a.0.cmp(&b.0));
        taken
    }

    /// Puts back counts the store did not take, for the next flush.
    pub fn restore(&self, taken: &[(Arc<str>, Tally)]) {
        for (id, tally) in taken {
            self.of(id).add(tally);
        }
    }
}

/// The process's book: routes of every table built here count into it.
pub fn book() -> &'static CounterBook {
    static BOOK: LazyLock<CounterBook> = LazyLock::new(CounterBook::default);
    &BOOK
}

/// The bucket that `at_ms` falls in.
pub fn bucket_of(at_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(BUCKET_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_one_pigeon_share_its_counts_and_take_leaves_zeros() {
        let book = CounterBook::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let first = book.of("a");
        let again = book.of("a");
        first.took();
        again.took();
        again.delivered();
        book.of("b").failed();
        let taken = book.take();
        assert_eq!(
            taken,
            vec![
                (a.clone(), Tally { letters_in: 2, letters_out: 1, failures: 0 }),
                (b.clone(), Tally { letters_in: 0, letters_out: 0, failures: 1 }),
            ],
            "sorted by pigeon"
        );
        assert!(book.take().is_empty(), "a second take finds nothing new");
        assert_eq!(
            book.pigeons.lock().unwrap().len(),
            1,
            "b, which no route holds, is forgotten once flushed"
        );
        book.restore(&taken);
        first.took();
        let later = book.take();
        assert_eq!(
            later[0].1,
            Tally { letters_in: 3, letters_out: 1, failures: 0 },
            "restored counts add up"
        );
        drop((first, again));
        book.take();
        assert!(book.pigeons.lock().unwrap().is_empty(), "nothing held, nothing to flush: nothing kept");
    }

    #[test]
    fn buckets_start_on_multiples_of_their_length() {
        assert_eq!(bucket_of(BUCKET_MS + 1), BUCKET_MS);
        assert_eq!(bucket_of(2 * BUCKET_MS), 2 * BUCKET_MS);
        assert_eq!(bucket_of(-1), -BUCKET_MS);
    }
}
