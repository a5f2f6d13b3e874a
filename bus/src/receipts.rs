//! Keeps modules' receipts (run with the registry role): reads `pigeon.receipts`, counts every
//! receipt in its minute's total per module, capability and outcome, keeps a sample whole (by
//! letter id, so a letter's receipts from every module are kept together; failed ones always),
//! and writes both to the store every `receipts.flush_ms`, never one write per receipt.
//!
//! Offsets are committed once a flush is stored (at least once: a keeper that stops between
//! the two counts those receipts again). While the store is down the keeper waits and reads
//! nothing more, so what it holds stays bounded by one flush. A receipt that cannot be read is
//! logged and skipped; a receipt is an observation, and a letter never waits on one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use pigeon_sdk::ledger::{Ledger, LedgerContext, PartitionLedger};
use pigeon_sdk::receipt::{self, Outcome, Receipt};

use crate::config::ReceiptsConfig;
use crate::store::{now_ms, ReceiptTotal, Store};

/// The consumer group that reads `pigeon.receipts`.
pub const GROUP: &str = "pigeon-receipts";
/// The largest receipt read; a larger message is skipped.
const MAX_RECEIPT: usize = 16 * 1024;
/// A receipt's minute is its own time's, unless that is further than this from now (a wrong
/// clock, or a hostile receipt): then it counts in the minute it was read.
const TRUSTED_SKEW_MS: i64 = 7 * 86_400_000;
/// Receipts deleted per statement when pruning.
const PRUNE_CHUNK: u32 = 5_000;
const MINUTE_MS: i64 = 60_000;

/// Reads a receipt and checks it; the error says why it is skipped.
pub fn parse(payload: Option<&[u8]>) -> Result<Receipt, String> {
    let payload = payload.ok_or("the receipt has no payload")?;
    if payload.len() > MAX_RECEIPT {
        return Err(format!("the receipt is {} bytes, more than {MAX_RECEIPT}", payload.len()));
    }
    let receipt: Receipt = serde_json::from_slice(payload).map_err(|e| format!("not a receipt: {e}"))?;
    let receipt = receipt.bounded();
    for (field, value) in
        [("letter_id", &receipt.letter_id), ("module", &receipt.module), ("capability", &receipt.capability)]
    {
        if value.trim().is_empty() {
            return Err(format!("the receipt's {field} is empty"));
        }
    }
    Ok(receipt)
}

/// Whether a letter's receipts are kept whole: the same answer for the same id in every
/// process (FNV-1a of the id against `ratio`).
pub fn sampled(letter_id: &str, ratio: f64) -> bool {
    const SCALE: u64 = 1_000_000;
    let hash = letter_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    // A ratio is at most 1, so the product fits; `as` saturates, never wraps.
    (hash % SCALE) < (ratio.clamp(0.0, 1.0) * SCALE as f64) as u64
}

/// A total's bucket: (minute, module, capability, outcome).
type Bucket = (i64, String, String, Outcome);
/// A bucket's receipts, the sum and the most of their durations.
type Counted = (u64, u64, u64);

/// What the keeper holds between flushes.
#[derive(Default)]
struct Batch {
    totals: HashMap<Bucket, Counted>,
    sampled: Vec<Receipt>,
    /// Read and not yet stored: (partition, offset).
    read: Vec<(Arc<PartitionLedger>, i64)>,
}

impl Batch {
    fn add(&mut self, receipt: Receipt, ratio: f64, now: i64) {
        let at = if (receipt.at_ms - now).abs() <= TRUSTED_SKEW_MS { receipt.at_ms } else { now };
        let bucket = at - at.rem_euclid(MINUTE_MS);
        let total = self
            .totals
            .entry((bucket, receipt.module.clone(), receipt.capability.clone(), receipt.outcome))
            .or_default();
        total.0 += 1;
        total.1 = total.1.saturating_add(receipt.duration_us);
        total.2 = total.2.max(receipt.duration_us);
        if receipt.outcome == Outcome::Failed || sampled(&receipt.letter_id, ratio) {
            self.sampled.push(receipt);
        }
    }

    fn totals(&self) -> Vec<ReceiptTotal> {
        self.totals
            .iter()
            .map(|((bucket, module, capability, outcome), (receipts, sum, max))| ReceiptTotal {
                bucket: *bucket,
                module: module.clone(),
                capability: capability.clone(),
                outcome: *outcome,
                receipts: *receipts,
                duration_us_sum: *sum,
                duration_us_max: *max,
            })
            .collect()
    }
}

/// Consumes `pigeon.receipts` until `cancel` fires.
pub async fn run(
    consumer: ClientConfig,
    store: Arc<dyn Store>,
    config: ReceiptsConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (retention, totals_retention) = config.retentions().map_err(anyhow::Error::msg)?;
    let mut consumer = consumer;
    consumer.set("enable.auto.offset.store", "false");
    let ledger = Arc::new(Ledger::new("receipts"));
    let consumer: StreamConsumer<LedgerContext> =
        consumer.create_with_context(LedgerContext::new(Arc::clone(&ledger), Duration::ZERO))?;
    consumer.subscribe(&[receipt::TOPIC])?;
    tracing::info!(topic = receipt::TOPIC, sample_ratio = config.sample_ratio, "keeping module receipts");
    let mut flush = tokio::time::interval(Duration::from_millis(config.flush_ms));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(Duration::from_secs(3_600));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Batch::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = flush.tick() => {
                if !store_batch(&mut batch, store.as_ref(), &cancel).await {
                    break;
                }
                ledger.store_offsets(&consumer);
            }
            _ = prune.tick() => {
                prune_old(store.as_ref(), retention, totals_retention).await;
            }
            received = consumer.recv() => match received {
                Ok(message) => {
                    let partition = ledger.partition(message.topic(), message.partition());
                    partition.begin(message.offset(), 1);
                    match parse(message.payload()) {
                        Ok(receipt) => batch.add(receipt, config.sample_ratio, now_ms()),
                        Err(reason) => tracing::warn!(
                            partition = message.partition(),
                            offset = message.offset(),
                            reason,
                            "skipping a receipt"
                        ),
                    }
                    batch.read.push((partition, message.offset()));
                }
                Err(e) => tracing::warn!(error = %e, "reading pigeon.receipts"),
            },
        }
    }
    if store_batch(&mut batch, store.as_ref(), &CancellationToken::new()).await {
        if let Err(e) = ledger.commit(&consumer) {
            tracing::debug!(error = %e, "final commit of pigeon.receipts");
        }
    }
    Ok(())
}

/// Writes the batch, waiting out store failures (at most a minute once `cancel` fired); true
/// when it was stored, or refused for good and dropped. Either way its offsets are settled.
async fn store_batch(batch: &mut Batch, store: &dyn Store, cancel: &CancellationToken) -> bool {
    if batch.read.is_empty() {
        return true;
    }
    let totals = batch.totals();
    let mut wait = Duration::from_millis(200);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match store.record_receipts(&batch.sampled, &totals).await {
            Ok(()) => break,
            Err(e) if !e.is_transient() => {
                tracing::error!(error = %e, receipts = batch.read.len(), "the store refuses these receipts; they are left out");
                break;
            }
            Err(e) => {
                if cancel.is_cancelled() && tokio::time::Instant::now() >= give_up {
                    tracing::warn!(error = %e, "the store is away; the receipts not stored are read again after the restart");
                    return false;
                }
                tracing::warn!(error = %e, "storing receipts; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    for (partition, offset) in batch.read.drain(..) {
        partition.settle(offset);
    }
    batch.totals.clear();
    batch.sampled.clear();
    true
}

/// Deletes kept receipts and totals past their retention.
async fn prune_old(store: &dyn Store, retention: Duration, totals_retention: Duration) {
    let now = now_ms();
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let (before, totals_before) =
        (now.saturating_sub(ms(retention)), now.saturating_sub(ms(totals_retention)));
    loop {
        match store.prune_receipts(before, totals_before, PRUNE_CHUNK).await {
            Ok(deleted) if deleted >= u64::from(PRUNE_CHUNK) => continue,
            Ok(deleted) => {
                if deleted > 0 {
                    tracing::info!(deleted, "receipts past their retention deleted");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning receipts");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(id: &str, outcome: Outcome, at_ms: i64, duration_us: u64) -> Receipt {
        Receipt {
            letter_id: id.into(),
            module: "act-toy".into(),
            instance: "i-1".into(),
            capability: "progress.add".into(),
            outcome,
            duration_us,
            attempts: 1,
            at_ms,
            pigeon: None,
            error: None,
        }
    }

    #[test]
    fn a_receipt_that_cannot_be_read_says_why() {
        assert!(parse(None).unwrap_err().contains("no payload"));
        assert!(parse(Some(b"{")).unwrap_err().contains("not a receipt"));
        assert!(parse(Some(&vec![b' '; MAX_RECEIPT + 1])).unwrap_err().contains("more than"));
        let empty = serde_json::to_vec(&receipt(" ", Outcome::Handled, 0, 1)).unwrap();
        assert!(parse(Some(&empty)).unwrap_err().contains("letter_id is empty"));
        let good = serde_json::to_vec(&receipt("l-1", Outcome::Handled, 0, 1)).unwrap();
        assert_eq!(parse(Some(&good)).unwrap().letter_id, "l-1");
    }

    #[test]
    fn sampling_keeps_about_the_ratio_and_the_same_letters_everywhere() {
        let ids: Vec<String> =
            (0..20_000).map(|n| format!("0190a8f0-{n:04x}-7000-8000-000000000000")).collect();
        let kept = ids.iter().filter(|id| sampled(id, 0.1)).count();
        assert!((1_600..2_400).contains(&kept), "{kept} of 20,000 kept at 10%");
        assert!(ids.iter().all(|id| sampled(id, 1.0)));
        assert!(!ids.iter().any(|id| sampled(id, 0.0)));
    }

    #[test]
    fn a_batch_counts_each_receipt_in_its_minute_and_keeps_failures_whole() {
        let now = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE_MS + 30_000;
        let mut batch = Batch::default();
        batch.add(receipt("a", Outcome::Handled, now, 100), 0.0, now);
        batch.add(receipt("b", Outcome::Handled, now + 1_000, 300), 0.0, now);
        batch.add(receipt("c", Outcome::Failed, now, 50), 0.0, now);
        // A clock a year off counts in the minute it was read.
        batch.add(receipt("d", Outcome::Handled, now + 365 * 86_400_000, 10), 0.0, now);
        let mut totals = batch.totals();
        totals.sort_by_key(|t| (t.outcome, t.bucket));
        assert_eq!(totals.len(), 2, "{totals:?}");
        let handled = &totals[0];
        assert_eq!((handled.bucket, handled.receipts), (now - 30_000, 3));
        assert_eq!((handled.duration_us_sum, handled.duration_us_max), (410, 300));
        assert_eq!((totals[1].outcome, totals[1].receipts), (Outcome::Failed, 1));
        let kept: Vec<&str> = batch.sampled.iter().map(|r| r.letter_id.as_str()).collect();
        assert_eq!(kept, ["c"], "failures are kept whole at any ratio");
    }
}
