//! Pigeons' letter counts, in time buckets.

use async_trait::async_trait;

use super::sql::{values, Dialect, Done, SqlStore};
use super::StoreError;
use pigeon_core::counters::{BucketCount, Tally};

/// Pigeons' counts per bucket.
#[async_trait]
pub trait CountStore: Send + Sync {
    /// Adds pigeons' counts to their buckets, in one transaction.
    async fn record_counts(&self, counts: &[BucketCount]) -> Result<(), StoreError>;

    /// Every pigeon's counts in buckets that start at or after `since` (unix ms), oldest first.
    async fn counts_since(&self, since: i64) -> Result<Vec<BucketCount>, StoreError>;

    /// Deletes the buckets that start before `before`; returns how many.
    async fn prune_counts(&self, before: i64) -> Result<u64, StoreError>;
}

/// Rows per multi-row `INSERT`.
const CHUNK: usize = 500;

#[async_trait]
impl<DB: Dialect> CountStore for SqlStore<DB> {
    async fn record_counts(&self, counts: &[BucketCount]) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for chunk in counts.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO pigeon_counts (bucket, pigeon_id, letters_in, letters_out, failures){}{}",
                values(chunk.len(), 5),
                DB::upsert_add("bucket, pigeon_id", &["letters_in", "letters_out", "failures"], &[])
            );
            let mut query = sqlx::query(&sql);
            for c in chunk {
                query = query
                    .bind(c.bucket)
                    .bind(&c.pigeon_id)
                    .bind(c.tally.letters_in as i64)
                    .bind(c.tally.letters_out as i64)
                    .bind(c.tally.failures as i64);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn counts_since(&self, since: i64) -> Result<Vec<BucketCount>, StoreError> {
        let rows: Vec<(i64, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT bucket, pigeon_id, letters_in, letters_out, failures FROM pigeon_counts \
             WHERE bucket >= ? ORDER BY bucket, pigeon_id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(bucket, pigeon_id, letters_in, letters_out, failures)| BucketCount {
                bucket,
                pigeon_id,
                tally: Tally {
                    letters_in: letters_in.max(0) as u64,
                    letters_out: letters_out.max(0) as u64,
                    failures: failures.max(0) as u64,
                },
            })
            .collect())
    }

    async fn prune_counts(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM pigeon_counts WHERE bucket < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
