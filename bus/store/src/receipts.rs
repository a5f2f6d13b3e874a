//! Receipts of modules' handlers: a sample kept whole (a letter's trace shows them), and
//! per-minute totals of all of them per module, capability and outcome.

use async_trait::async_trait;
use pigeon_wire::receipt::{Outcome, Receipt};

use super::sql::{values, Dialect, SqlStore};
use super::StoreError;

/// Receipts counted in one bucket (a minute, unix ms of its start).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReceiptTotal {
    pub bucket: i64,
    pub module: String,
    pub capability: String,
    pub outcome: Outcome,
    pub receipts: u64,
    pub duration_us_sum: u64,
    pub duration_us_max: u64,
}

/// Receipts and their totals.
#[async_trait]
pub trait ReceiptStore: Send + Sync {
    /// Keeps `sampled` receipts and adds `totals` to their buckets, in one transaction.
    async fn record_receipts(&self, sampled: &[Receipt], totals: &[ReceiptTotal]) -> Result<(), StoreError>;

    /// The kept receipts of a letter, oldest first.
    async fn receipts_of(&self, letter_id: &str) -> Result<Vec<Receipt>, StoreError>;

    /// The totals of buckets that start at or after `since` (unix ms), oldest first.
    async fn receipt_totals_since(&self, since: i64) -> Result<Vec<ReceiptTotal>, StoreError>;

    /// Deletes up to `limit` receipts older than `before` (unix ms), and totals of buckets that
    /// start before `totals_before`; returns how many receipts went.
    async fn prune_receipts(&self, before: i64, totals_before: i64, limit: u32) -> Result<u64, StoreError>;
}

/// Rows per multi-row `INSERT`.
const CHUNK: usize = 500;

/// An unsigned count as the database's signed integer (saturating).
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored count back (a negative one, which Pigeon never writes, reads as 0).
fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn outcome(text: &str) -> Result<Outcome, StoreError> {
    Outcome::parse(text).ok_or_else(|| StoreError::Corrupt(format!("receipt outcome {text:?}")))
}

type ReceiptRow = (String, String, String, String, String, i64, i64, i64, Option<String>, Option<String>);

#[async_trait]
impl<DB: Dialect> ReceiptStore for SqlStore<DB> {
    async fn record_receipts(&self, sampled: &[Receipt], totals: &[ReceiptTotal]) -> Result<(), StoreError> {
        if sampled.is_empty() && totals.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for chunk in sampled.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO receipts (letter_id, module, instance, capability, outcome, duration_us, attempts, \
                 at_ms, pigeon_id, error){}",
                values(chunk.len(), 10)
            );
            let mut query = sqlx::query(&sql);
            for r in chunk {
                query = query
                    .bind(r.letter_id.as_str())
                    .bind(r.module.as_str())
                    .bind(r.instance.as_str())
                    .bind(r.capability.as_str())
                    .bind(r.outcome.as_str())
                    .bind(signed(r.duration_us))
                    .bind(i64::from(r.attempts))
                    .bind(r.at_ms)
                    .bind(r.pigeon.clone())
                    .bind(r.error.clone());
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in totals.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO receipt_totals (bucket, module, capability, outcome, receipts, duration_us_sum, \
                 duration_us_max){}{}",
                values(chunk.len(), 7),
                DB::upsert_add(
                    "bucket, module, capability, outcome",
                    &["receipts", "duration_us_sum"],
                    &["duration_us_max"]
                )
            );
            let mut query = sqlx::query(&sql);
            for t in chunk {
                query = query
                    .bind(t.bucket)
                    .bind(t.module.as_str())
                    .bind(t.capability.as_str())
                    .bind(t.outcome.as_str())
                    .bind(signed(t.receipts))
                    .bind(signed(t.duration_us_sum))
                    .bind(signed(t.duration_us_max));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn receipts_of(&self, letter_id: &str) -> Result<Vec<Receipt>, StoreError> {
        let rows: Vec<ReceiptRow> = sqlx::query_as(
            "SELECT letter_id, module, instance, capability, outcome, duration_us, attempts, at_ms, pigeon_id, error \
             FROM receipts WHERE letter_id = ? ORDER BY at_ms, id LIMIT 1000",
        )
        .bind(letter_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(
                    letter_id,
                    module,
                    instance,
                    capability,
                    text,
                    duration_us,
                    attempts,
                    at_ms,
                    pigeon,
                    error,
                )| {
                    Ok(Receipt {
                        letter_id,
                        module,
                        instance,
                        capability,
                        outcome: outcome(&text)?,
                        duration_us: unsigned(duration_us),
                        attempts: u32::try_from(attempts).unwrap_or(0),
                        at_ms,
                        pigeon,
                        error,
                    })
                },
            )
            .collect()
    }

    async fn receipt_totals_since(&self, since: i64) -> Result<Vec<ReceiptTotal>, StoreError> {
        let rows: Vec<(i64, String, String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT bucket, module, capability, outcome, receipts, duration_us_sum, duration_us_max \
             FROM receipt_totals WHERE bucket >= ? ORDER BY bucket, module, capability, outcome",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(bucket, module, capability, text, receipts, sum, max)| {
                Ok(ReceiptTotal {
                    bucket,
                    module,
                    capability,
                    outcome: outcome(&text)?,
                    receipts: unsigned(receipts),
                    duration_us_sum: unsigned(sum),
                    duration_us_max: unsigned(max),
                })
            })
            .collect()
    }

    async fn prune_receipts(&self, before: i64, totals_before: i64, limit: u32) -> Result<u64, StoreError> {
        let sql = DB::delete_first("receipts", "at_ms < ?");
        let done = sqlx::query(&sql).bind(before).bind(i64::from(limit)).execute(&self.pool).await?;
        sqlx::query("DELETE FROM receipt_totals WHERE bucket < ?")
            .bind(totals_before)
            .execute(&self.pool)
            .await?;
        Ok(super::sql::Done::rows_affected(&done))
    }
}
