//! The pigeons' counts (`pigeon_core::counters`) reach the store: every instance adds what its
//! book counted to the current bucket every few seconds, and old buckets are deleted.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use pigeon_core::counters::*;

use crate::store::{now_ms, Store};

/// How often an instance adds its counts to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How long buckets are kept.
pub const KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

/// Adds the book's counts to the store in the current bucket; what the store does not take
/// waits for the next flush. Returns whether the store took them.
pub async fn flush(store: &dyn Store, book: &CounterBook) -> bool {
    let taken = book.take();
    if taken.is_empty() {
        return true;
    }
    let bucket = bucket_of(now_ms());
    let rows: Vec<BucketCount> = taken
        .iter()
        .map(|(id, tally)| BucketCount { bucket, pigeon_id: id.to_string(), tally: *tally })
        .collect();
    match store.record_counts(&rows).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot store the pigeons' counts; they are kept for the next try");
            book.restore(&taken);
            false
        }
    }
}

/// Flushes the process's book every [`FLUSH_EVERY`] and once more when cancelled; deletes
/// buckets older than [`KEEP_MS`] every hour.
pub async fn run(store: Arc<dyn Store>, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(FLUSH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = cancel.cancelled() => break,
        }
        flush(store.as_ref(), book()).await;
        let now = now_ms();
        if now - last_prune >= 3_600_000 {
            last_prune = now;
            if let Err(e) = store.prune_counts(now - KEEP_MS).await {
                tracing::warn!(error = %e, "cannot delete old counter buckets");
            }
        }
    }
    flush(store.as_ref(), book()).await;
}
