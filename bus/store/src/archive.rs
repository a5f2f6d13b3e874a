//! The archive: letters kept whole, and the replay jobs that send them again.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::sql::{values, Bind, Dialect, Done, SqlStore};
use super::{fit, now_ms, StoreError};
use pigeon_core::archive::{
    ArchiveQuery, ArchivedLetter, KeyField, Position, ReplayJob, ReplaySpec, ReplayStatus,
};
use pigeon_core::deadletter::StoredHeader;

/// Rows per multi-row `INSERT`: 14 parameters each stays under SQLite's and MySQL's limits.
pub const INSERT_CHUNK: usize = 1_000;
/// Bytes of letters per multi-row `INSERT`, well under MySQL's default `max_allowed_packet`
/// (16 MiB) and TiDB's entry limits.
pub const INSERT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// The letters of a batch in letter id order, the archive's primary key. A batch holds runs
/// of many partitions, whose ids interleave; in key order the rows go into the clustered index
/// (InnoDB keeps the row in it) in one sweep, and concurrent writers take their locks in one
/// order. (Measured on MariaDB: +45% at 200,000 letters, nothing at 1,000,000.)
pub fn in_key_order(letters: &[ArchivedLetter]) -> Vec<&ArchivedLetter> {
    let mut sorted: Vec<&ArchivedLetter> = letters.iter().collect();
    sorted.sort_unstable_by(|a, b| a.letter_id.cmp(&b.letter_id));
    sorted
}

/// Splits letters into statements of at most [`INSERT_CHUNK`] rows and about
/// [`INSERT_CHUNK_BYTES`] (a single larger letter goes alone).
pub fn insert_chunks<'a>(letters: &'a [&'a ArchivedLetter]) -> Vec<&'a [&'a ArchivedLetter]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, letter) in letters.iter().enumerate() {
        let size = letter.payload.as_ref().map_or(0, Vec::len)
            + letter.key.as_ref().map_or(0, Vec::len)
            + letter
                .headers
                .iter()
                .map(|h| h.name.len() + h.value().map_or(0, <[u8]>::len) + 32)
                .sum::<usize>()
            + 256;
        if i > start && (i - start >= INSERT_CHUNK || bytes + size > INSERT_CHUNK_BYTES) {
            chunks.push(&letters[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < letters.len() {
        chunks.push(&letters[start..]);
    }
    chunks
}

/// The archive: letters kept whole, and the replay jobs that send them again. Replay jobs'
/// creation and cancellation are audited in their transaction.
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Stores letters in one transaction, with multi-row inserts. A letter id already stored is
    /// left as it is, so a redelivered letter is stored once. Returns how many rows are new.
    async fn archive_letters(&self, letters: &[ArchivedLetter]) -> Result<u64, StoreError>;

    /// Archived letters the query matches, after `after` in archive order, at most `limit`.
    async fn archived(
        &self,
        query: &ArchiveQuery,
        after: Option<&Position>,
        limit: u32,
    ) -> Result<Vec<ArchivedLetter>, StoreError>;

    /// How many archived letters the query matches.
    async fn count_archived(&self, query: &ArchiveQuery) -> Result<i64, StoreError>;

    /// One archived letter.
    async fn archived_letter(&self, letter_id: &str) -> Result<Option<ArchivedLetter>, StoreError>;

    /// Deletes up to `limit` letters older than `before` (unix ms); returns how many.
    async fn delete_archived_before(&self, before: i64, limit: u32) -> Result<u64, StoreError>;

    /// Creates a pending replay job of `total` letters, audited; returns its id.
    async fn create_replay(&self, spec: &ReplaySpec, total: i64, actor: &str) -> Result<i64, StoreError>;

    /// Replay jobs, newest first.
    async fn replay_jobs(&self, limit: u32) -> Result<Vec<ReplayJob>, StoreError>;

    /// One replay job.
    async fn replay_job(&self, id: i64) -> Result<Option<ReplayJob>, StoreError>;

    /// Takes a pending job, or a running one whose runner's lease ran out (its letters in
    /// flight then count as resent), for `owner` until `lease_until`.
    async fn claim_replay(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<ReplayJob>, StoreError>;

    /// Records progress under `owner`: `sent` more letters acknowledged up to `checkpoint`,
    /// `in_flight` now on their way, the lease extended. False when the job is no longer this
    /// runner's (cancelled, or taken over): the runner stops.
    async fn replay_progress(
        &self,
        id: i64,
        owner: &str,
        progress: &ReplayProgress,
    ) -> Result<bool, StoreError>;

    /// Ends a job this runner holds as `done` or `failed`.
    async fn finish_replay(
        &self,
        id: i64,
        owner: &str,
        status: ReplayStatus,
        message: &str,
    ) -> Result<bool, StoreError>;

    /// Cancels a pending or running job, audited; false when it had finished.
    async fn cancel_replay(&self, id: i64, actor: &str) -> Result<bool, StoreError>;
}

/// A replay runner's progress report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayProgress {
    /// The last letter acknowledged.
    pub checkpoint: Option<Position>,
    /// Letters acknowledged since the last report.
    pub sent: i64,
    /// Letters on their way now.
    pub in_flight: i64,
    /// The runner's lease, extended.
    pub lease_until: i64,
}

/// An archived letter as read from the store.
#[derive(sqlx::FromRow)]
struct ArchivedRow {
    letter_id: String,
    pigeon_id: String,
    topic: String,
    kafka_partition: i32,
    kafka_offset: i64,
    letter_time: i64,
    tag: String,
    user_id: Option<String>,
    anchor_id: Option<String>,
    room_id: Option<String>,
    msg_key: Option<Vec<u8>>,
    headers: Vec<u8>,
    payload: Option<Vec<u8>>,
    archived_at: i64,
}

/// The columns of [`ArchivedRow`], in order.
const ARCHIVED_COLUMNS: &str = "letter_id, pigeon_id, topic, kafka_partition, kafka_offset, letter_time, \
    tag, user_id, anchor_id, room_id, msg_key, headers, payload, archived_at";

/// Archive order.
const ARCHIVE_ORDER: &str = "letter_time, topic, kafka_partition, kafka_offset";

impl TryFrom<ArchivedRow> for ArchivedLetter {
    type Error = StoreError;
    fn try_from(row: ArchivedRow) -> Result<Self, StoreError> {
        let headers: Vec<StoredHeader> = serde_json::from_slice(&row.headers)
            .map_err(|e| StoreError::Corrupt(format!("archived letter {}: headers: {e}", row.letter_id)))?;
        let keys: BTreeMap<KeyField, String> = [
            (KeyField::UserId, row.user_id),
            (KeyField::AnchorId, row.anchor_id),
            (KeyField::RoomId, row.room_id),
        ]
        .into_iter()
        .filter_map(|(field, value)| value.map(|v| (field, v)))
        .collect();
        Ok(ArchivedLetter {
            letter_id: row.letter_id,
            pigeon_id: row.pigeon_id,
            position: Position {
                time: row.letter_time,
                topic: row.topic,
                partition: row.kafka_partition,
                offset: row.kafka_offset,
            },
            tag: row.tag,
            keys,
            key: row.msg_key,
            headers,
            payload: row.payload,
            archived_at: row.archived_at,
        })
    }
}

/// A replay job as read from the store.
#[derive(sqlx::FromRow)]
struct ReplayRow {
    id: i64,
    spec: String,
    status: String,
    total: i64,
    sent: i64,
    resent: i64,
    in_flight: i64,
    checkpoint_time: Option<i64>,
    checkpoint_topic: Option<String>,
    checkpoint_partition: Option<i32>,
    checkpoint_offset: Option<i64>,
    message: Option<String>,
    owner: Option<String>,
    created_by: String,
    created_at: i64,
    updated_at: i64,
}

/// The columns of [`ReplayRow`], in order.
const REPLAY_COLUMNS: &str = "id, spec, status, total, sent, resent, in_flight, checkpoint_time, \
    checkpoint_topic, checkpoint_partition, checkpoint_offset, message, owner, created_by, created_at, updated_at";

impl TryFrom<ReplayRow> for ReplayJob {
    type Error = StoreError;
    fn try_from(row: ReplayRow) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("replay job {}: {what}", row.id));
        let spec: ReplaySpec = serde_json::from_str(&row.spec).map_err(|e| corrupt(format!("spec: {e}")))?;
        let status = row.status.parse().map_err(corrupt)?;
        let checkpoint = match (
            row.checkpoint_time,
            row.checkpoint_topic,
            row.checkpoint_partition,
            row.checkpoint_offset,
        ) {
            (Some(time), Some(topic), Some(partition), Some(offset)) => {
                Some(Position { time, topic, partition, offset })
            }
            _ => None,
        };
        Ok(ReplayJob {
            id: row.id,
            spec,
            status,
            total: row.total,
            sent: row.sent,
            resent: row.resent,
            in_flight: row.in_flight,
            checkpoint,
            message: row.message,
            owner: row.owner,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// The conditions of an archive query, and the position after which to start, each `?` bound
/// by [`bind_archive_query`] in this order.
fn archive_query_sql(query: &ArchiveQuery, after: Option<&Position>) -> String {
    let mut sql = String::from(" WHERE letter_time >= ? AND letter_time < ?");
    if query.topic.is_some() {
        sql.push_str(" AND topic = ?");
    }
    if query.tag.is_some() {
        sql.push_str(" AND tag = ?");
    }
    if query.pigeon.is_some() {
        sql.push_str(" AND pigeon_id = ?");
    }
    for field in query.keys.keys() {
        sql.push_str(&format!(" AND {} = ?", field.column()));
    }
    if after.is_some() {
        // The plain bound lets every database range-scan the time index; the row value orders
        // letters of the same millisecond.
        sql.push_str(
            " AND letter_time >= ? AND (letter_time, topic, kafka_partition, kafka_offset) > (?, ?, ?, ?)",
        );
    }
    sql
}

/// Binds the conditions of [`archive_query_sql`], in order.
fn bind_archive_query<'q, DB: Dialect, Q: Bind<'q, DB>>(
    statement: Q,
    query: &'q ArchiveQuery,
    after: Option<&'q Position>,
) -> Q {
    let mut statement = statement.bind(query.since).bind(query.until);
    for value in [&query.topic, &query.tag, &query.pigeon].into_iter().flatten() {
        statement = statement.bind(value);
    }
    for value in query.keys.values() {
        statement = statement.bind(value);
    }
    if let Some(after) = after {
        statement = statement
            .bind(after.time)
            .bind(after.time)
            .bind(&after.topic)
            .bind(after.partition)
            .bind(after.offset);
    }
    statement
}

#[async_trait]
impl<DB: Dialect> ArchiveStore for SqlStore<DB> {
    async fn archive_letters(&self, letters: &[ArchivedLetter]) -> Result<u64, StoreError> {
        if letters.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        let mut inserted = 0;
        let letters = in_key_order(letters);
        let (insert, once) = DB::INSERT_ONCE;
        for chunk in insert_chunks(&letters) {
            let rows = values(chunk.len(), ARCHIVED_COLUMNS.split(',').count());
            let sql = format!("{insert} INTO archived_letters ({ARCHIVED_COLUMNS}){rows}{once}");
            let mut query = sqlx::query(&sql);
            for letter in chunk {
                let headers = serde_json::to_vec(&letter.headers).expect("headers serialize");
                // Ids and business keys from letters, bounded to their columns.
                let key =
                    |field| letter.keys.get(&field).map(|k: &String| fit::id(k, fit::NAME).into_owned());
                query = query
                    .bind(fit::id(&letter.letter_id, fit::ID).into_owned())
                    .bind(fit::id(&letter.pigeon_id, fit::NAME).into_owned())
                    .bind(&letter.position.topic)
                    .bind(letter.position.partition)
                    .bind(letter.position.offset)
                    .bind(letter.position.time)
                    .bind(fit::text(&letter.tag, fit::TOPIC).into_owned())
                    .bind(key(KeyField::UserId))
                    .bind(key(KeyField::AnchorId))
                    .bind(key(KeyField::RoomId))
                    .bind(&letter.key)
                    .bind(headers)
                    .bind(&letter.payload)
                    .bind(now);
            }
            inserted += query.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn archived(
        &self,
        query: &ArchiveQuery,
        after: Option<&Position>,
        limit: u32,
    ) -> Result<Vec<ArchivedLetter>, StoreError> {
        let sql = format!(
            "SELECT {ARCHIVED_COLUMNS} FROM archived_letters{} ORDER BY {ARCHIVE_ORDER} LIMIT ?",
            archive_query_sql(query, after)
        );
        let statement = bind_archive_query(sqlx::query_as::<_, ArchivedRow>(&sql), query, after);
        let rows = statement.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn count_archived(&self, query: &ArchiveQuery) -> Result<i64, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM archived_letters{}", archive_query_sql(query, None));
        let statement = bind_archive_query(sqlx::query_as::<_, (i64,)>(&sql), query, None);
        let (count,) = statement.fetch_one(&self.pool).await?;
        Ok(count)
    }

    async fn archived_letter(&self, letter_id: &str) -> Result<Option<ArchivedLetter>, StoreError> {
        let sql = format!("SELECT {ARCHIVED_COLUMNS} FROM archived_letters WHERE letter_id = ?");
        let row: Option<ArchivedRow> =
            sqlx::query_as(&sql).bind(letter_id).fetch_optional(&self.pool).await?;
        row.map(TryInto::try_into).transpose()
    }

    async fn delete_archived_before(&self, before: i64, limit: u32) -> Result<u64, StoreError> {
        let sql = DB::delete_first("archived_letters", "letter_time < ?");
        let done = sqlx::query(&sql).bind(before).bind(i64::from(limit)).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn create_replay(&self, spec: &ReplaySpec, total: i64, actor: &str) -> Result<i64, StoreError> {
        let now = now_ms();
        let spec_json = serde_json::to_string(spec).expect("a replay spec serializes");
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO replay_jobs (spec, status, total, sent, resent, in_flight, created_by, \
             created_at, updated_at) VALUES (?, 'pending', ?, 0, 0, 0, ?, ?, ?)",
        )
        .bind(&spec_json)
        .bind(total)
        .bind(actor)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let id = done.last_insert_id();
        let after = serde_json::json!({ "spec": spec, "total": total });
        Self::audit_entry(now, actor, "replay.create", format!("replay/{id}"), None, Some(after.to_string()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn replay_jobs(&self, limit: u32) -> Result<Vec<ReplayJob>, StoreError> {
        let sql = format!("SELECT {REPLAY_COLUMNS} FROM replay_jobs ORDER BY id DESC LIMIT ?");
        let rows: Vec<ReplayRow> = sqlx::query_as(&sql).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn replay_job(&self, id: i64) -> Result<Option<ReplayJob>, StoreError> {
        let sql = format!("SELECT {REPLAY_COLUMNS} FROM replay_jobs WHERE id = ?");
        let row: Option<ReplayRow> = sqlx::query_as(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.map(TryInto::try_into).transpose()
    }

    async fn claim_replay(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<ReplayJob>, StoreError> {
        const CLAIMABLE: &str = "(status = 'pending' OR (status = 'running' AND lease_until < ?))";
        let candidates: Vec<(i64,)> =
            sqlx::query_as(&format!("SELECT id FROM replay_jobs WHERE {CLAIMABLE} ORDER BY id LIMIT 8"))
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
        for (id,) in candidates {
            // Only one runner's update finds the row still claimable.
            let claimed = sqlx::query(&format!(
                "UPDATE replay_jobs SET status = 'running', owner = ?, lease_until = ?, \
                 resent = resent + in_flight, in_flight = 0, updated_at = ? WHERE id = ? AND {CLAIMABLE}"
            ))
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if claimed == 1 {
                return self.replay_job(id).await;
            }
        }
        Ok(None)
    }

    async fn replay_progress(
        &self,
        id: i64,
        owner: &str,
        progress: &ReplayProgress,
    ) -> Result<bool, StoreError> {
        let checkpoint = progress.checkpoint.as_ref();
        let updated = sqlx::query(
            "UPDATE replay_jobs SET checkpoint_time = COALESCE(?, checkpoint_time), \
             checkpoint_topic = COALESCE(?, checkpoint_topic), \
             checkpoint_partition = COALESCE(?, checkpoint_partition), \
             checkpoint_offset = COALESCE(?, checkpoint_offset), sent = sent + ?, in_flight = ?, \
             lease_until = ?, updated_at = ? WHERE id = ? AND owner = ? AND status = 'running'",
        )
        .bind(checkpoint.map(|c| c.time))
        .bind(checkpoint.map(|c| c.topic.clone()))
        .bind(checkpoint.map(|c| c.partition))
        .bind(checkpoint.map(|c| c.offset))
        .bind(progress.sent)
        .bind(progress.in_flight)
        .bind(progress.lease_until)
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn finish_replay(
        &self,
        id: i64,
        owner: &str,
        status: ReplayStatus,
        message: &str,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE replay_jobs SET status = ?, message = ?, in_flight = 0, lease_until = NULL, \
             updated_at = ? WHERE id = ? AND owner = ? AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(message)
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn cancel_replay(&self, id: i64, actor: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let cancelled = sqlx::query(
            "UPDATE replay_jobs SET status = 'cancelled', message = ?, lease_until = NULL, \
             updated_at = ? WHERE id = ? AND status IN ('pending', 'running')",
        )
        .bind(format!("cancelled by {actor}"))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if cancelled == 1 {
            Self::audit_entry(now, actor, "replay.cancel", format!("replay/{id}"), None, None)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(cancelled == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archived(id: &str, payload: Option<Vec<u8>>) -> ArchivedLetter {
        ArchivedLetter {
            letter_id: id.into(),
            pigeon_id: "p".into(),
            position: Position::default(),
            tag: "t".into(),
            keys: BTreeMap::new(),
            key: None,
            headers: Vec::new(),
            payload,
            archived_at: 0,
        }
    }

    #[test]
    fn statements_are_cut_by_rows_and_by_bytes() {
        let letter = |payload: usize| archived("l", Some(vec![b'x'; payload]));
        let small: Vec<ArchivedLetter> = (0..2_500).map(|_| letter(10)).collect();
        let sizes: Vec<usize> = insert_chunks(&in_key_order(&small)).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [1_000, 1_000, 500]);
        let big: Vec<ArchivedLetter> = (0..10).map(|_| letter(1_500_000)).collect();
        let sizes: Vec<usize> = insert_chunks(&in_key_order(&big)).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [2, 2, 2, 2, 2], "about 4 MiB per statement");
        let huge = [letter(10_000_000)];
        assert_eq!(insert_chunks(&in_key_order(&huge)).len(), 1, "a letter larger than the cap goes alone");
        assert!(insert_chunks(&[]).is_empty());
    }

    #[test]
    fn a_batch_is_inserted_in_letter_id_order() {
        let letter = |id: &str| archived(id, None);
        // Two partitions read in turn: their ids interleave.
        let batch = [letter("01c"), letter("01d"), letter("01a"), letter("01e"), letter("01b")];
        let ids: Vec<&str> = in_key_order(&batch).iter().map(|l| l.letter_id.as_str()).collect();
        assert_eq!(ids, ["01a", "01b", "01c", "01d", "01e"]);
    }
}
