//! Dead letters: letters that could not be delivered, kept so that nothing is ever lost.
//!
//! The records are `pigeon_core::deadletter`'s; here is what needs Kafka and the store: a
//! message captured as a dead letter, and the writer. Writing a dead letter is a letter's
//! terminal outcome for offset commits, so the writer keeps trying while the store is down: the
//! partition's offset simply does not move (backpressure).

use std::sync::Arc;
use std::time::Duration;

use pigeon_headers::{RawHeader, RawHeaders};
use rdkafka::message::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use pigeon_core::deadletter::*;
use pigeon_sdk::ledger::PartitionLedger;

use crate::store::Store;

/// A header read off Kafka, kept whatever its name's bytes.
pub trait CaptureHeader {
    /// Keeps a header read off Kafka, its name whatever its bytes.
    fn raw(header: RawHeader<'_>) -> Self;
}

impl CaptureHeader for StoredHeader {
    fn raw(header: RawHeader<'_>) -> Self {
        match header.name_str() {
            Some(name) => Self::new(name, header.value),
            None => Self {
                name_bytes: Some(header.name.to_vec()),
                ..Self::new(&header.name_lossy(), header.value)
            },
        }
    }
}

/// A Kafka message kept whole as a dead letter.
pub trait CaptureMessage {
    /// Captures a Kafka message (source or output) with the failure.
    fn from_message<M>(message: &M, error_kind: ErrorKind, error_message: String) -> Self
    where
        M: Message,
        M::Headers: RawHeaders;
}

impl CaptureMessage for NewDeadLetter {
    fn from_message<M>(message: &M, error_kind: ErrorKind, error_message: String) -> Self
    where
        M: Message,
        M::Headers: RawHeaders,
    {
        let headers = pigeon_headers::of(message).map(StoredHeader::raw).collect();
        Self {
            letter_id: String::new(),
            pigeon_id: None,
            pigeon_version: None,
            source_topic: message.topic().to_owned(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            dest_topic: None,
            dest_tag: None,
            key: message.key().map(<[u8]>::to_vec),
            headers,
            payload: message.payload().map(<[u8]>::to_vec),
            error_kind,
            error_message,
            first_retry: schedule::DEFAULT_STEPS.first().copied(),
        }
    }
}

/// A dead letter to store, and the in-flight letter it settles once stored.
pub struct Job {
    /// The record.
    pub dead_letter: NewDeadLetter,
    /// The ledger of the partition the letter came from.
    pub ledger: Arc<PartitionLedger>,
    /// The letter's offset there.
    pub offset: i64,
}

/// Dead letters stored per transaction at most.
const WRITE_BATCH: usize = 256;
/// Bytes stored per transaction at most (TiDB caps a transaction at 100 MB by default); a
/// larger letter goes alone.
const WRITE_BATCH_BYTES: usize = 8 << 20;

/// Inserts `letters` in one transaction, trying again while the store is away (`None` when
/// cancelled meanwhile). A refusal of the statement itself is permanent: it is returned, never
/// tried again as it was.
async fn insert_retrying(
    store: &dyn Store,
    letters: &[&NewDeadLetter],
    cancel: &CancellationToken,
) -> Option<Result<(), crate::store::StoreError>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.insert_dead_letters(letters).await {
            Ok(()) => return Some(Ok(())),
            Err(e) if !e.is_transient() => return Some(Err(e)),
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?backoff, letters = letters.len(), "cannot store dead letters; holding offsets");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Stores `letters` for good (`None` when cancelled first). When the store refuses the
/// statement itself (not the database being away), the letters go one by one, so the others
/// are kept; one it still refuses is stored without its payload, key and headers, saying why
/// and what its size was (its place in Kafka stays in the row); one refused even so is logged
/// with its place and dropped, never tried for ever.
pub async fn store_durably(
    store: &dyn Store,
    letters: &[&NewDeadLetter],
    cancel: &CancellationToken,
) -> Option<()> {
    let refused = match insert_retrying(store, letters, cancel).await? {
        Ok(()) => return Some(()),
        Err(e) => e,
    };
    tracing::error!(error = %refused, letters = letters.len(), "the store refuses these dead letters; storing them one by one");
    for letter in letters {
        let error = match letters.len() {
            1 => refused.to_string(),
            _ => match insert_retrying(store, &[*letter], cancel).await? {
                Ok(()) => continue,
                Err(e) => e.to_string(),
            },
        };
        let mut bare = (*letter).clone();
        bare.error_message = format!(
            "{} [stored without its payload, key and headers ({} bytes), which the store refused: {error}]",
            letter.error_message,
            letter.size()
        );
        (bare.payload, bare.key, bare.headers) = (None, None, Vec::new());
        if let Err(e) = insert_retrying(store, &[&bare], cancel).await? {
            tracing::error!(
                error = %e,
                letter = %letter.letter_id,
                topic = %letter.source_topic,
                partition = letter.source_partition,
                offset = letter.source_offset,
                "the store refuses even the bare dead letter; it is only in this log"
            );
        }
    }
    Some(())
}

/// Stores dead letters as they come (what queued up meanwhile in one transaction), retrying
/// while the store is down, and settles each letter only once its dead letter is durable.
/// Returns when `jobs` closes or on cancellation (letters not yet stored then stay unsettled,
/// so their offsets are not committed).
pub async fn write_dead_letters(
    store: Arc<dyn Store>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        batch.clear();
        tokio::select! {
            received = jobs.recv_many(&mut batch, WRITE_BATCH) => if received == 0 { return },
            _ = cancel.cancelled() => return,
        }
        let mut start = 0;
        while start < batch.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < batch.len()
                && (end == start || bytes + batch[end].dead_letter.size() <= WRITE_BATCH_BYTES)
            {
                bytes += batch[end].dead_letter.size();
                end += 1;
            }
            let letters: Vec<&NewDeadLetter> = batch[start..end].iter().map(|job| &job.dead_letter).collect();
            if store_durably(store.as_ref(), &letters, &cancel).await.is_none() {
                return;
            }
            start = end;
        }
        for job in &batch {
            let dead = &job.dead_letter;
            tracing::warn!(
                letter = %dead.letter_id,
                pigeon = dead.pigeon_id.as_deref().unwrap_or("-"),
                topic = %dead.source_topic,
                partition = dead.source_partition,
                offset = dead.source_offset,
                kind = %dead.error_kind,
                error = %dead.error_message,
                "letter dead-lettered"
            );
            job.ledger.settle(job.offset);
        }
    }
}
