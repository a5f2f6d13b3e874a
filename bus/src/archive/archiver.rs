//! The archiver role: reads the topics of archive pigeons in a consumer group of its own and
//! writes the letters they choose to the archive in batches.
//!
//! A batch is written when it holds `batch_rows` letters or `flush_ms` after its first letter,
//! in one transaction of multi-row inserts that leave an already archived letter id alone. Only
//! then are the batch's messages settled in the archiver's [`Ledger`] and the offsets it allows
//! handed to the consumer to commit, so a letter is archived before its offset is committed,
//! and a redelivered one is stored once. While the database cannot be reached the archiver
//! pauses its partitions and tries the same batch again, with a growing wait, committing
//! nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pigeon_sdk::ledger::{Ledger, LedgerContext, PartitionLedger};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ArchivedLetter, KeyField, Position, MAX_KEY_LEN};
use crate::config::ArchiverConfig;
use crate::control::Routes;
use crate::deadletter::StoredHeader;
use crate::deadletter::{CaptureHeader, CaptureMessage, ErrorKind, NewDeadLetter};
use crate::route::{Lookup, Route, RouteTable};
use crate::script::{self, ScriptLetter};
use crate::source::LetterHeaders;
use crate::store::{now_ms, Store};
use pigeon_core::fault;

/// The archiver's series.
pub type ArchiverStats = crate::prometheus::ArchiverMetrics;

/// Everything the archiver runs with.
#[derive(Clone)]
pub struct ArchiverParts {
    /// The route tables; the archiver runs `archive`.
    pub routes: watch::Receiver<Arc<Routes>>,
    /// Batching and retention.
    pub config: ArchiverConfig,
    /// Consumer properties (the archiver's group).
    pub consumer: ClientConfig,
    /// The archive's database.
    pub store: Arc<dyn Store>,
    /// Counters.
    pub stats: Arc<ArchiverStats>,
}

/// Where the business keys are found in payloads: each key's dictionary name and aliases.
#[derive(Clone, Debug)]
pub struct KeyNames(Vec<(String, KeyField)>);

impl Default for KeyNames {
    fn default() -> Self {
        Self(KeyField::ALL.iter().map(|k| (k.name().to_owned(), *k)).collect())
    }
}

impl KeyNames {
    /// The keys' names and the aliases the dictionary knows for them.
    pub async fn from_dictionary(store: &dyn Store) -> Self {
        let mut names = Self::default();
        match store.dictionary().await {
            Ok(fields) => {
                for stored in fields {
                    if let Ok(key) = stored.field.name.parse::<KeyField>() {
                        names.0.extend(stored.field.aliases.iter().map(|alias| (alias.clone(), key)));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the dictionary; business keys are found by name only")
            }
        }
        names
    }

    /// The business keys of a JSON payload's top level: strings as they are, numbers as written.
    pub fn find(&self, payload: Option<&[u8]>) -> std::collections::BTreeMap<KeyField, String> {
        let mut keys = std::collections::BTreeMap::new();
        let Some(payload) = payload else { return keys };
        let Ok(object) = serde_json::from_slice::<HashMap<String, &serde_json::value::RawValue>>(payload)
        else {
            return keys;
        };
        for (name, key) in &self.0 {
            if keys.contains_key(key) {
                continue;
            }
            let Some(raw) = object.get(name.as_str()) else { continue };
            let text = raw.get();
            let value = match text.as_bytes().first() {
                Some(b'"') => serde_json::from_str::<String>(text).ok(),
                Some(b'-' | b'0'..=b'9') => Some(text.to_owned()),
                _ => None,
            };
            if let Some(value) = value.filter(|v| !v.is_empty() && v.len() <= MAX_KEY_LEN) {
                keys.insert(*key, value);
            }
        }
        keys
    }
}

/// A message one of the archive pigeons may keep; the filter is run when the batch is written.
struct Candidate {
    message: OwnedMessage,
    id: String,
    tag: String,
    time: i64,
    routes: Vec<Arc<Route>>,
}

/// Letters read since the last write, and the offsets they reach.
#[derive(Default)]
struct Batch {
    candidates: Vec<Candidate>,
    /// Built at the first try to write, kept for the next tries.
    letters: Option<Vec<ArchivedLetter>>,
    /// Letters whose building panicked (a bug not found yet), parked as `internal` dead
    /// letters with the batch.
    internal: Vec<NewDeadLetter>,
    /// Every message read into it, with its partition's ledger: settled once it is durable.
    read: Vec<(Arc<PartitionLedger>, i64)>,
    /// When the first message of the batch was read.
    started: Option<Instant>,
    /// About how many bytes its letters hold.
    bytes: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.started.is_none()
    }

    fn len(&self) -> usize {
        self.candidates.len() + self.letters.as_ref().map_or(0, Vec::len)
    }

    /// Whether it should be written now: `rows` letters, or [`MAX_BATCH_BYTES`].
    fn is_full(&self, rows: usize) -> bool {
        self.len() >= rows || self.bytes >= MAX_BATCH_BYTES
    }
}

/// The most bytes of letters one batch (one transaction) holds, whatever `batch_rows` says:
/// TiDB and MySQL refuse transactions and packets beyond their limits.
pub const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// A batch being written, and how it went.
type Writing = tokio::task::JoinHandle<(Batch, anyhow::Result<()>)>;

/// Runs the archiver until `cancel` fires; the batches in hand are written before it returns.
///
/// One batch is written while the next fills, so reading and writing overlap. Batches are
/// written in order and a batch's offsets are stored only once it is durable; a batch that
/// fails is tried again before any later one, so no offset ever passes an unwritten letter.
pub async fn run(parts: ArchiverParts, cancel: CancellationToken) -> anyhow::Result<()> {
    let ArchiverParts { mut routes, config, consumer, store, stats } = parts;
    // A batch settles on this task, which a revoke callback holds up: a revoke commits what is
    // durable, without waiting (the next owner reads the rest again; the archive keeps each
    // letter once).
    let ledger = Arc::new(Ledger::new("archiver"));
    let consumer: Archiving =
        consumer.create_with_context(LedgerContext::new(Arc::clone(&ledger), Duration::ZERO))?;
    let names = Arc::new(KeyNames::from_dictionary(store.as_ref()).await);
    let mut table = Arc::clone(&routes.borrow_and_update().archive);
    let mut topics = table.consumed_topics();
    subscribe(&consumer, &topics);

    let retention =
        tokio::spawn(retention(Arc::clone(&store), config.clone(), Arc::clone(&stats), cancel.clone()));
    let flush_after = Duration::from_millis(config.flush_ms);
    let spawn_write = |mut batch: Batch| -> Writing {
        let (store, names, stats) = (Arc::clone(&store), Arc::clone(&names), Arc::clone(&stats));
        tokio::spawn(async move {
            let result = write(&mut batch, &store, &names, &stats).await;
            (batch, result)
        })
    };
    let mut batch = Batch::default();
    let mut writing: Option<Writing> = None;
    // A batch the database refused, waiting to be tried again; when, and the wait after that.
    let mut failed: Option<Batch> = None;
    let mut outage: Option<(Instant, Duration)> = None;
    loop {
        let due = match (&writing, &outage, batch.started) {
            (Some(_), _, _) => None,
            (None, Some((retry_at, _)), _) => Some(*retry_at),
            (None, None, Some(started)) => Some(started + flush_after),
            (None, None, None) => None,
        };
        // A full batch waits for the write before it; one waiting for the database still takes
        // what was fetched before its partitions paused.
        let full = outage.is_none() && batch.is_full(config.batch_rows);
        let written = async {
            match writing.as_mut() {
                Some(handle) => handle.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Ok(()) = routes.changed() => {
                table = Arc::clone(&routes.borrow_and_update().archive);
                let now = table.consumed_topics();
                if now != topics {
                    tracing::info!(topics = ?now, "archiver subscription changed");
                    topics = now;
                    subscribe(&consumer, &topics);
                }
                continue;
            }
            done = written => {
                writing = None;
                let (done, result) = done?;
                match result {
                    Ok(()) => {
                        settle(&ledger, &consumer, &done);
                        if outage.take().is_some() {
                            stats.paused.set(0.0);
                            set_paused(&consumer, false);
                            tracing::info!("the archive's database is back; archiving again");
                        }
                    }
                    Err(e) => {
                        stats.write_failures.increment(1);
                        let wait = match outage {
                            None => {
                                tracing::warn!(error = %e, letters = done.len(), "cannot write to the archive; partitions paused, nothing committed, trying again");
                                stats.paused.set(1.0);
                                Duration::from_millis(config.retry_ms)
                            }
                            Some((_, wait)) => {
                                tracing::debug!(error = %e, "archive still unreachable");
                                (wait * 2).min(Duration::from_millis(config.retry_max_ms))
                            }
                        };
                        // Partitions assigned since the last try are paused too.
                        set_paused(&consumer, true);
                        outage = Some((Instant::now() + wait, wait));
                        failed = Some(done);
                    }
                }
            }
            _ = sleep_until(due), if due.is_some() => {}
            received = consumer.recv(), if !full => {
                match received {
                    Ok(message) => take(&mut batch, &message, &ledger, &table, &names, &stats),
                    Err(e) => tracing::warn!(error = %e, "archiver consumer error"),
                }
                if !batch.is_full(config.batch_rows) {
                    continue;
                }
            }
        }
        if writing.is_some() {
            continue;
        }
        if let Some((retry_at, _)) = outage {
            if Instant::now() >= retry_at {
                if let Some(again) = failed.take() {
                    writing = Some(spawn_write(again));
                }
            }
            continue;
        }
        let due = batch.started.is_some_and(|started| started + flush_after <= Instant::now());
        if due || batch.is_full(config.batch_rows) {
            writing = Some(spawn_write(std::mem::take(&mut batch)));
        }
    }

    // Finish in order: the write in flight, the one that failed, then the batch in hand.
    let mut ready = true;
    if let Some(handle) = writing.take() {
        let (done, result) = handle.await?;
        match result {
            Ok(()) => settle(&ledger, &consumer, &done),
            Err(_) => failed = Some(done),
        }
    }
    for mut last in failed.into_iter().chain(Some(batch)).filter(|b| !b.is_empty()) {
        if !ready {
            break;
        }
        match write(&mut last, &store, &names, &stats).await {
            Ok(()) => settle(&ledger, &consumer, &last),
            Err(e) => {
                tracing::warn!(error = %e, letters = last.len(), "the last batches were not archived; their letters are read again after restart");
                ready = false;
            }
        }
    }
    // What was not archived stays unsettled: the commit stops before it.
    if let Err(e) = ledger.commit(&consumer) {
        tracing::debug!(error = %e, "final archiver commit");
    }
    consumer.unsubscribe();
    retention.abort();
    tracing::info!("archiver stopped");
    Ok(())
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The archiver's consumer: it commits through its ledger.
type Archiving = StreamConsumer<LedgerContext>;

/// Subscribes to the archive pigeons' topics and topic patterns; to nothing when there are none.
fn subscribe(consumer: &Archiving, topics: &[String]) {
    if topics.is_empty() {
        consumer.unsubscribe();
        return;
    }
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&refs) {
        tracing::error!(error = %e, ?topics, "the archiver cannot subscribe");
    }
}

/// Notes a message read: its offset, and the message itself if an archive pigeon may keep it.
fn take(
    batch: &mut Batch,
    message: &rdkafka::message::BorrowedMessage<'_>,
    ledger: &Ledger,
    table: &RouteTable,
    names: &KeyNames,
    stats: &ArchiverStats,
) {
    stats.read.increment(1);
    batch.started.get_or_insert_with(Instant::now);
    let partition = ledger.partition(message.topic(), message.partition());
    partition.begin(message.offset(), 1);
    batch.read.push((partition, message.offset()));
    let Lookup::Routes(topic_routes) = table.lookup(message.topic()) else { return };
    // A message without a timestamp is filed under its reading time, but its derived id must
    // not change when it is read again.
    let kafka_time = message.timestamp().to_millis();
    // Filed under the time its `ce_time` says: a search reaches every letter (a client may
    // stamp one i64::MAX, past any search's exclusive end).
    let time = kafka_time.map_or_else(now_ms, pigeon_sdk::letter::clamp_time_ms);
    batch.bytes += message.payload_len() + message.key().map_or(0, <[u8]>::len) + 256;
    let headers = LetterHeaders::of(message);
    let (tag, id) = match crate::source::read(message, &headers, &topic_routes.source) {
        Ok(meta) => (meta.tag.map(|t| t.into_owned()), meta.id.map(str::to_owned)),
        Err(_) => (None, None),
    };
    let routes: Vec<Arc<Route>> = match &tag {
        Some(tag) => topic_routes.matching(tag).filter(|r| r.takes(time)).cloned().collect(),
        None => topic_routes.matching_untagged().filter(|r| r.takes(time)).cloned().collect(),
    };
    if routes.is_empty() {
        return;
    }
    let id = match id.filter(|id| !id.is_empty() && id.len() <= 64) {
        Some(id) => id,
        None => {
            let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
            pigeon_sdk::LetterId::derived(topic, partition, offset, kafka_time.unwrap_or(0).max(0) as u64)
                .to_string()
        }
    };
    if routes.iter().all(|r| r.filter.is_none()) {
        // No script to run: built now, while the batch before is being written.
        match contained(message, id, tag.as_deref().unwrap_or_default(), time, &routes, names, stats) {
            Ok(letter) => batch.letters.get_or_insert_with(Vec::new).extend(letter),
            Err(parked) => batch.internal.push(*parked),
        }
        return;
    }
    batch.candidates.push(Candidate {
        message: message.detach(),
        id,
        tag: tag.unwrap_or_default(),
        time,
        routes,
    });
}

/// Writes the batch. Letters are built (filters run, keys found) off the async runtime, once:
/// a batch waiting for the database keeps them, and builds only what was read since.
async fn write(
    batch: &mut Batch,
    store: &Arc<dyn Store>,
    names: &Arc<KeyNames>,
    stats: &Arc<ArchiverStats>,
) -> anyhow::Result<()> {
    if !batch.candidates.is_empty() {
        let candidates = std::mem::take(&mut batch.candidates);
        let (names, stats) = (Arc::clone(names), Arc::clone(stats));
        let built = tokio::task::spawn_blocking(move || {
            let (mut letters, mut internal) = (Vec::new(), Vec::new());
            for c in candidates {
                match contained(&c.message, c.id, &c.tag, c.time, &c.routes, &names, &stats) {
                    Ok(letter) => letters.extend(letter),
                    Err(parked) => internal.push(*parked),
                }
            }
            (letters, internal)
        })
        .await
        // The candidates went with the task: failing here, before any later offset is stored,
        // is the only way not to skip them.
        .unwrap_or_else(|e| match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("building archive letters was cancelled: {e}"),
        });
        let (built, internal) = built;
        batch.letters.get_or_insert_with(Vec::new).extend(built);
        batch.internal.extend(internal);
    }
    if !batch.internal.is_empty() {
        let parked: Vec<&NewDeadLetter> = batch.internal.iter().collect();
        store.insert_dead_letters(&parked).await?;
        batch.internal.clear();
    }
    let letters = batch.letters.as_deref().unwrap_or_default();
    if letters.is_empty() {
        return Ok(());
    }
    stats.batch_letters.record(letters.len() as f64);
    let started = std::time::Instant::now();
    let new = match store.archive().archive_letters(letters).await {
        Ok(new) => new,
        Err(e) if !e.is_transient() => archive_one_by_one(store.as_ref(), letters, &e).await?,
        Err(e) => return Err(e.into()),
    };
    // Durable: each letter is one out for the pigeon that kept it.
    let mut kept: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for letter in letters {
        *kept.entry(letter.pigeon_id.as_str()).or_default() += 1;
    }
    for (pigeon, n) in kept {
        crate::counters::book().of(pigeon).delivered_many(n);
    }
    stats.write_seconds.record(started.elapsed().as_secs_f64());
    stats.batches.increment(1);
    stats.archived.increment(new);
    stats.duplicates.increment((letters.len() as u64).saturating_sub(new));
    Ok(())
}

/// Archives `letters` one at a time after the store refused their batch for good (the
/// statement, not the database being away), so the others are kept; a letter it still
/// refuses becomes a parked dead letter saying why, never a batch tried for ever. Returns how
/// many were new; an error means the database went away meanwhile (the batch is tried again,
/// and the letters archived already are not stored twice).
async fn archive_one_by_one(
    store: &dyn Store,
    letters: &[ArchivedLetter],
    refused: &crate::store::StoreError,
) -> anyhow::Result<u64> {
    tracing::error!(error = %refused, letters = letters.len(), "the archive refuses this batch; archiving its letters one by one");
    let mut new = 0;
    for letter in letters {
        let error = match store.archive().archive_letters(std::slice::from_ref(letter)).await {
            Ok(n) => {
                new += n;
                continue;
            }
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => e,
        };
        let dead = NewDeadLetter {
            letter_id: letter.letter_id.clone(),
            pigeon_id: Some(letter.pigeon_id.clone()),
            pigeon_version: None,
            source_topic: letter.position.topic.clone(),
            source_partition: letter.position.partition,
            source_offset: letter.position.offset,
            dest_topic: None,
            dest_tag: None,
            key: letter.key.clone(),
            headers: letter.headers.clone(),
            payload: letter.payload.clone(),
            error_kind: ErrorKind::Malformed,
            error_message: format!("the archive refused the letter: {error}"),
            first_retry: None,
        };
        // Never cancelled: the batch is not settled before this returns.
        let cancel = CancellationToken::new();
        crate::deadletter::store_durably(store, &[&dead], &cancel).await;
    }
    Ok(new)
}

/// [`letter`], or, when building it panicked (a bug not found yet), its dead letter: the
/// letter whole, for the first pigeon that would keep it, with the panic's message.
fn contained<M>(
    message: &M,
    id: String,
    tag: &str,
    time: i64,
    routes: &[Arc<Route>],
    names: &KeyNames,
    stats: &ArchiverStats,
) -> Result<Option<ArchivedLetter>, Box<NewDeadLetter>>
where
    M: Message,
    M::Headers: pigeon_headers::RawHeaders,
{
    let build = || letter(message, id.clone(), tag, time, routes, names, stats);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)).map_err(|panic| {
        let panic = fault::panic_text(panic.as_ref());
        tracing::error!(letter = %id, panic, "building an archive row panicked; the letter is parked");
        let reason = format!("archiving the letter panicked (a bug in the bus): {panic}");
        let mut dead = NewDeadLetter::from_message(message, ErrorKind::Internal, reason);
        dead.letter_id = id;
        dead.pigeon_id = routes.first().map(|r| r.id.to_string());
        Box::new(dead)
    })
}

/// The letter the first of its pigeons whose filter takes it keeps, if any. A filter that
/// fails on a letter keeps it (and counts it): an archive loses nothing over a bad filter.
fn letter<M>(
    message: &M,
    id: String,
    tag: &str,
    time: i64,
    routes: &[Arc<Route>],
    names: &KeyNames,
    stats: &ArchiverStats,
) -> Option<ArchivedLetter>
where
    M: Message,
    M::Headers: pigeon_headers::RawHeaders,
{
    fault::panic_point("an archive pigeon", tag);
    let input = LetterHeaders::of(message);
    let pigeon = routes.iter().find(|route| {
        let Some(filter) = &route.filter else { return true };
        let letter = ScriptLetter {
            id: &id,
            tag,
            source: input.text(pigeon_sdk::header::SOURCE).unwrap_or(message.topic()),
            key: message.key(),
            time: input.text(pigeon_sdk::header::TIME),
            payload: message.payload().unwrap_or(b"null"),
        };
        script::default_engine().test(filter, &letter).unwrap_or_else(|e| {
            stats.filter_errors.increment(1);
            tracing::debug!(pigeon = %route.id, letter = %id, error = %e, "archive filter failed; the letter is kept");
            true
        })
    })?;
    pigeon.counts.took();
    pigeon.metrics.letters_in.increment(1);
    let headers = input.iter().map(StoredHeader::raw).collect();
    Some(ArchivedLetter {
        letter_id: id,
        pigeon_id: pigeon.id.to_string(),
        position: Position {
            time,
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        },
        tag: truncate(tag, 255),
        keys: names.find(message.payload()),
        key: message.key().map(<[u8]>::to_vec),
        headers,
        payload: message.payload().map(<[u8]>::to_vec),
        archived_at: 0,
    })
}

/// At most `max` bytes of `text`, cut at a character boundary (the column's limit; the
/// letter's headers keep the whole tag).
fn truncate(text: &str, max: usize) -> String {
    crate::store::fit::prefix(text, max).to_owned()
}

/// Settles a durable batch's letters and hands the offsets they allow to the consumer for its
/// next commit. A partition revoked meanwhile is forgotten by the ledger: its next owner reads
/// from the last commit, and the letters it reads again are already archived.
fn settle(ledger: &Ledger, consumer: &Archiving, batch: &Batch) {
    for (partition, offset) in &batch.read {
        partition.settle(*offset);
    }
    ledger.store_offsets(consumer);
}

/// Pauses or resumes every assigned partition.
fn set_paused(consumer: &Archiving, paused: bool) {
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(e) => {
            tracing::warn!(error = %e, "reading the archiver's assignment");
            return;
        }
    };
    let result = match paused {
        true => consumer.pause(&assignment),
        false => consumer.resume(&assignment),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, paused, "pausing or resuming the archiver's partitions");
    }
}

/// Deletes letters older than the retention on its schedule, in small chunks.
async fn retention(
    store: Arc<dyn Store>,
    config: ArchiverConfig,
    stats: Arc<ArchiverStats>,
    cancel: CancellationToken,
) {
    let (Ok(Some(age)), Ok(schedule)) = (config.retention(), config.retention_schedule()) else {
        return; // no retention: letters stay (the configuration was checked at start)
    };
    loop {
        let wait = schedule
            .upcoming(chrono::Utc)
            .next()
            .and_then(|at| (at - chrono::Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let before = now_ms() - age.as_millis() as i64;
        match expire(store.as_ref(), before, config.retention_chunk, &cancel).await {
            Ok(deleted) => {
                stats.expired.increment(deleted);
                tracing::info!(deleted, before, "archive retention");
            }
            Err(e) => tracing::warn!(error = %e, "archive retention stopped; it runs again at its next time"),
        }
    }
}

/// Deletes every letter older than `before`, `chunk` rows per statement; returns how many.
pub async fn expire(
    store: &dyn Store,
    before: i64,
    chunk: u32,
    cancel: &CancellationToken,
) -> Result<u64, crate::store::StoreError> {
    let mut deleted = 0;
    while !cancel.is_cancelled() {
        let n = store.archive().delete_archived_before(before, chunk).await?;
        deleted += n;
        if n < u64::from(chunk) {
            break;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_keys_are_found_by_name_and_alias() {
        let mut names = KeyNames::default();
        names.0.push(("uid".into(), KeyField::UserId));
        let keys = |payload: &str| names.find(Some(payload.as_bytes()));
        let found = keys(r#"{"userId": 42, "anchorId": "a-7", "roomId": -3, "other": {"userId": 1}}"#);
        assert_eq!(found.get(&KeyField::UserId).map(String::as_str), Some("42"));
        assert_eq!(found.get(&KeyField::AnchorId).map(String::as_str), Some("a-7"));
        assert_eq!(found.get(&KeyField::RoomId).map(String::as_str), Some("-3"));
        assert_eq!(keys(r#"{"uid": "u\"1"}"#).get(&KeyField::UserId).map(String::as_str), Some("u\"1"));
        assert!(
            keys(r#"{"userId": true, "roomId": "", "anchorId": null}"#).is_empty(),
            "only strings and numbers"
        );
        let long = format!(r#"{{"userId": "{}"}}"#, "x".repeat(MAX_KEY_LEN + 1));
        assert!(keys(&long).is_empty(), "too long to index");
        assert!(keys("not json").is_empty());
        assert!(keys("[1, 2]").is_empty());
        assert!(names.find(None).is_empty());
    }

    /// The retention job deletes everything older than its cut-off, a chunk at a time.
    #[tokio::test]
    async fn retention_deletes_old_letters_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("archive.db").display());
        let store = crate::store::open_migrated(&url).await.unwrap();
        let letters: Vec<ArchivedLetter> = (0..30)
            .map(|i| ArchivedLetter {
                letter_id: format!("l{i}"),
                pigeon_id: "keep".into(),
                position: Position { time: i * 100, topic: "live.gift".into(), partition: 0, offset: i },
                tag: "gift.sent".into(),
                keys: Default::default(),
                key: None,
                headers: Vec::new(),
                payload: None,
                archived_at: 0,
            })
            .collect();
        store.archive().archive_letters(&letters).await.unwrap();
        let deleted = expire(store.as_ref(), 2_500, 10, &CancellationToken::new()).await.unwrap();
        assert_eq!(deleted, 25, "times 0 to 2400");
        let everything = crate::archive::ArchiveQuery { since: 0, until: i64::MAX, ..Default::default() };
        let left = store.archive().archived(&everything, None, 100).await.unwrap();
        let ids: Vec<&str> = left.iter().map(|l| l.letter_id.as_str()).collect();
        assert_eq!(ids, ["l25", "l26", "l27", "l28", "l29"]);
    }

    #[test]
    fn long_tags_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("gift.sent", 255), "gift.sent");
        assert_eq!(truncate("ééé", 3), "é");
    }
}
