//! Dead letters: stored bounded, claimed by retriers, operated on (and audited).

use async_trait::async_trait;
use sqlx::query::Query;

use super::sql::{Bind, Dialect, Done, SqlStore};
use super::{fit, now_ms, StoreError};
use pigeon_core::deadletter::{
    Attempt, DeadLetter, DeadLetterFilter, ErrorKind, NewDeadLetter, Outcome, Report, Selection, Status,
    StoredHeader,
};

/// Dead letters a retrier claimed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claimed {
    /// The letters, due first.
    pub letters: Vec<DeadLetter>,
    /// How many of them were taken over from a claim whose lease ran out.
    pub taken_over: u64,
}

/// Dead letters and their attempts. Operators' changes are audited in their transaction.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Stores a dead letter durably; returns its id.
    async fn insert_dead_letter(&self, letter: &NewDeadLetter) -> Result<i64, StoreError>;

    /// Stores dead letters durably in one transaction: all or none.
    async fn insert_dead_letters(&self, letters: &[&NewDeadLetter]) -> Result<(), StoreError>;

    /// Dead letters the filter matches with ids below `before_id` (all when `None`), newest
    /// first.
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// One dead letter.
    async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError>;

    /// A dead letter's history, oldest first.
    async fn dead_letter_attempts(&self, id: i64) -> Result<Vec<Attempt>, StoreError>;

    /// The dead letters of one letter (by its id), oldest first, at most 100.
    async fn dead_letters_of(&self, letter_id: &str) -> Result<Vec<DeadLetter>, StoreError>;

    /// Claims up to `limit` dead letters for one retrier: pending ones that are due, and ones
    /// whose previous claim's lease ran out (taken over; recorded in their history). They are
    /// `retrying` under `token` until `lease_until` (unix ms). Live claims never overlap.
    async fn claim_dead_letters(
        &self,
        token: &str,
        lease_until: i64,
        limit: u32,
    ) -> Result<Claimed, StoreError>;

    /// Records the ends of claimed attempts, all in one transaction. For each, false when the
    /// claim was lost (its lease ran out and another retrier took the letter over): nothing is
    /// written for that one.
    async fn report_attempts(
        &self,
        token: &str,
        actor: &str,
        reports: &[(i64, Report)],
    ) -> Result<Vec<bool>, StoreError>;

    /// [`DeadLetterStore::report_attempts`] for one attempt.
    async fn report_attempt(
        &self,
        id: i64,
        token: &str,
        actor: &str,
        report: &Report,
    ) -> Result<bool, StoreError> {
        let recorded = self.report_attempts(token, actor, &[(id, report.clone())]).await?;
        Ok(recorded.first().copied().unwrap_or(false))
    }

    /// Makes pending and parked dead letters due now (redrive). Audited; returns how many.
    async fn retry_dead_letters(&self, selection: &Selection, actor: &str) -> Result<u64, StoreError>;

    /// Discards pending and parked dead letters. Audited; returns how many.
    async fn discard_dead_letters(&self, selection: &Selection, actor: &str) -> Result<u64, StoreError>;

    /// Replaces a pending or parked dead letter's payload. Audited with both payloads; returns
    /// false when there is no such letter in those states.
    async fn edit_dead_letter(&self, id: i64, payload: &[u8], actor: &str) -> Result<bool, StoreError>;

    /// How many dead letters wait in each status: pending, retrying, parked (statuses with
    /// none are left out). The status index answers it without reading the history.
    async fn dead_letter_backlog(&self) -> Result<Vec<(Status, u64)>, StoreError>;

    /// How many dead letters wait (pending, retrying or parked), by status and error kind.
    async fn dead_letter_tally(&self) -> Result<Vec<(Status, ErrorKind, u64)>, StoreError>;
}

#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    id: i64,
    letter_id: String,
    pigeon_id: Option<String>,
    pigeon_version: Option<i64>,
    source_topic: String,
    source_partition: i32,
    source_offset: i64,
    dest_topic: Option<String>,
    dest_tag: Option<String>,
    msg_key: Option<Vec<u8>>,
    headers: String,
    payload: Option<Vec<u8>>,
    error_kind: String,
    error_message: String,
    attempts: i32,
    status: String,
    next_attempt_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<DeadLetterRow> for DeadLetter {
    type Error = StoreError;
    fn try_from(row: DeadLetterRow) -> Result<Self, StoreError> {
        let corrupt =
            |what: &str, e: String| StoreError::Corrupt(format!("dead letter {}: {what}: {e}", row.id));
        let headers = serde_json::from_str(&row.headers).map_err(|e| corrupt("headers", e.to_string()))?;
        let error_kind: ErrorKind = row.error_kind.parse().map_err(|e| corrupt("error kind", e))?;
        let status: Status = row.status.parse().map_err(|e| corrupt("status", e))?;
        Ok(DeadLetter {
            id: row.id,
            letter: NewDeadLetter {
                letter_id: row.letter_id,
                pigeon_id: row.pigeon_id,
                pigeon_version: row.pigeon_version,
                source_topic: row.source_topic,
                source_partition: row.source_partition,
                source_offset: row.source_offset,
                dest_topic: row.dest_topic,
                dest_tag: row.dest_tag,
                key: row.msg_key,
                headers,
                payload: row.payload,
                error_kind,
                error_message: row.error_message,
                first_retry: None,
            },
            attempts: row.attempts,
            status,
            next_attempt_at: row.next_attempt_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    attempt: i32,
    at: i64,
    actor: String,
    outcome: String,
    message: String,
}

impl TryFrom<AttemptRow> for Attempt {
    type Error = StoreError;
    fn try_from(row: AttemptRow) -> Result<Self, StoreError> {
        Ok(Attempt {
            attempt: row.attempt,
            at: row.at,
            outcome: row.outcome.parse().map_err(StoreError::Corrupt)?,
            actor: row.actor,
            message: row.message,
        })
    }
}

const INSERT_ATTEMPT: &str = "INSERT INTO dead_letter_attempts \
    (dead_letter_id, attempt, at, actor, outcome, message) VALUES (?, ?, ?, ?, ?, ?)";

const DEAD_LETTER_COLUMNS: &str = "id, letter_id, pigeon_id, pigeon_version, source_topic, \
    source_partition, source_offset, dest_topic, dest_tag, msg_key, headers, payload, error_kind, \
    error_message, attempts, status, next_attempt_at, created_at, updated_at";

const INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters (letter_id, pigeon_id, pigeon_version, \
    source_topic, source_partition, source_offset, dest_topic, dest_tag, msg_key, headers, payload, \
    error_kind, error_message, attempts, status, next_attempt_at, created_at, updated_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)";

/// Statuses an operator may retry, discard or edit.
const OPERABLE: &str = "status IN ('pending', 'parked')";

fn headers_json(headers: &[StoredHeader]) -> String {
    serde_json::to_string(headers).expect("headers always serialize")
}

/// [`INSERT_DEAD_LETTER`] of a letter at `now` (once: the row's times must agree to the
/// millisecond).
fn insert_dead_letter<DB: Dialect>(letter: &NewDeadLetter, now: i64) -> Query<'_, DB, DB::Arguments<'_>> {
    let status = letter.initial_status();
    let next_attempt = match (status, letter.first_retry) {
        (Status::Pending, Some(delay)) => Some(now + delay.as_millis() as i64),
        _ => None,
    };
    sqlx::query(INSERT_DEAD_LETTER)
        .bind(&letter.letter_id)
        .bind(&letter.pigeon_id)
        .bind(letter.pigeon_version)
        .bind(&letter.source_topic)
        .bind(letter.source_partition)
        .bind(letter.source_offset)
        .bind(&letter.dest_topic)
        .bind(&letter.dest_tag)
        .bind(&letter.key)
        .bind(headers_json(&letter.headers))
        .bind(&letter.payload)
        .bind(letter.error_kind.as_str())
        .bind(&letter.error_message)
        .bind(status.as_str())
        .bind(next_attempt)
        .bind(now)
        .bind(now)
}

/// The conditions of a filter, each with one `?` bound by [`bind_filter`] in this order.
fn filter_sql(filter: &DeadLetterFilter) -> String {
    let mut sql = String::from("1 = 1");
    if filter.pigeon_id.is_some() {
        sql.push_str(" AND pigeon_id = ?");
    }
    if filter.status.is_some() {
        sql.push_str(" AND status = ?");
    }
    if filter.error_kind.is_some() {
        sql.push_str(" AND error_kind = ?");
    }
    if filter.since.is_some() {
        sql.push_str(" AND created_at >= ?");
    }
    sql
}

/// Binds the conditions of [`filter_sql`], in order.
fn bind_filter<'q, DB: Dialect, Q: Bind<'q, DB>>(mut query: Q, filter: &'q DeadLetterFilter) -> Q {
    if let Some(pigeon) = &filter.pigeon_id {
        query = query.bind(pigeon);
    }
    if let Some(status) = filter.status {
        query = query.bind(status.as_str());
    }
    if let Some(kind) = filter.error_kind {
        query = query.bind(kind.as_str());
    }
    if let Some(since) = filter.since {
        query = query.bind(since);
    }
    query
}

/// The conditions of a selection, bound by [`bind_selection`].
fn selection_sql(selection: &Selection) -> String {
    match selection {
        Selection::Ids(ids) if ids.is_empty() => "1 = 0".into(),
        Selection::Ids(ids) => format!("id IN ({})", vec!["?"; ids.len()].join(", ")),
        Selection::Filter(filter) => filter_sql(filter),
    }
}

/// Binds the conditions of [`selection_sql`], in order.
fn bind_selection<'q, DB: Dialect, Q: Bind<'q, DB>>(query: Q, selection: &'q Selection) -> Q {
    match selection {
        Selection::Ids(ids) => ids.iter().fold(query, |query, id| query.bind(*id)),
        Selection::Filter(filter) => bind_filter(query, filter),
    }
}

/// A selection as the audit log records it.
fn selection_json(selection: &Selection, count: u64) -> String {
    let what = match selection {
        Selection::Ids(ids) => serde_json::json!({ "ids": ids, "count": count }),
        Selection::Filter(filter) => serde_json::json!({ "filter": filter, "count": count }),
    };
    what.to_string()
}

#[async_trait]
impl<DB: Dialect> DeadLetterStore for SqlStore<DB> {
    async fn insert_dead_letter(&self, letter: &NewDeadLetter) -> Result<i64, StoreError> {
        // Bounded to what the columns hold: a refused row would be refused for ever.
        let letter = fit::dead_letter(letter);
        let done = insert_dead_letter::<DB>(&letter, now_ms()).execute(&self.pool).await?;
        Ok(done.last_insert_id())
    }

    async fn insert_dead_letters(&self, letters: &[&NewDeadLetter]) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        for letter in letters {
            let letter = fit::dead_letter(letter);
            insert_dead_letter::<DB>(&letter, now).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE {} AND id < ? ORDER BY id DESC LIMIT ?",
            filter_sql(filter)
        );
        let query = bind_filter(sqlx::query_as::<_, DeadLetterRow>(&sql), filter);
        let query = query.bind(before_id.unwrap_or(i64::MAX)).bind(i64::from(limit));
        query.fetch_all(&self.pool).await?.into_iter().map(TryInto::try_into).collect()
    }

    async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?");
        let row: Option<DeadLetterRow> = sqlx::query_as(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.map(TryInto::try_into).transpose()
    }

    async fn dead_letters_of(&self, letter_id: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE letter_id = ? ORDER BY id LIMIT 100"
        );
        let rows: Vec<DeadLetterRow> = sqlx::query_as(&sql).bind(letter_id).fetch_all(&self.pool).await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn dead_letter_attempts(&self, id: i64) -> Result<Vec<Attempt>, StoreError> {
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT attempt, at, actor, outcome, message FROM dead_letter_attempts \
             WHERE dead_letter_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn claim_dead_letters(
        &self,
        token: &str,
        lease_until: i64,
        limit: u32,
    ) -> Result<Claimed, StoreError> {
        // Two retriers claiming at once may deadlock in the database, which then rolls one
        // back: that one claims again.
        let mut tries = 0u64;
        let taken_over = loop {
            match self.claim_once(token, lease_until, limit).await {
                Err(e) if e.lost_a_race() && tries < 5 => {
                    tries += 1;
                    let jitter = (uuid::Uuid::new_v4().as_u128() % 20) as u64;
                    tokio::time::sleep(std::time::Duration::from_millis(10 * tries + jitter)).await;
                }
                other => break other?,
            }
        };
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE claim_token = ? AND status = 'retrying' \
             ORDER BY next_attempt_at, id"
        );
        let rows: Vec<DeadLetterRow> = sqlx::query_as(&sql).bind(token).fetch_all(&self.pool).await?;
        let letters = rows.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?;
        Ok(Claimed { letters, taken_over })
    }

    async fn report_attempts(
        &self,
        token: &str,
        actor: &str,
        reports: &[(i64, Report)],
    ) -> Result<Vec<bool>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let mut recorded = Vec::with_capacity(reports.len());
        let claimed_sql = format!(
            "SELECT attempts FROM dead_letters WHERE id = ? AND claim_token = ? AND status = 'retrying'{}",
            DB::LOCK_ROW
        );
        for (id, report) in reports {
            let claimed: Option<(i32,)> =
                sqlx::query_as(&claimed_sql).bind(id).bind(token).fetch_optional(&mut *tx).await?;
            let Some((attempts,)) = claimed else {
                recorded.push(false);
                continue;
            };
            let status = match report.outcome {
                Outcome::Delivered => "delivered",
                Outcome::Failed => "pending",
                Outcome::Parked | Outcome::TakenOver => "parked",
            };
            let next = if status == "pending" { report.next_attempt_at.or(Some(now)) } else { None };
            // A delivered letter keeps the error that dead-lettered it; the history says how
            // it was delivered.
            let latest_error =
                if report.outcome == Outcome::Delivered { "" } else { report.message.as_str() };
            sqlx::query(
                "UPDATE dead_letters SET status = ?, attempts = ?, next_attempt_at = ?, \
                 error_message = CASE WHEN ? = '' THEN error_message ELSE ? END, \
                 claim_token = NULL, claimed_until = NULL, updated_at = ? WHERE id = ?",
            )
            .bind(status)
            .bind(attempts + 1)
            .bind(next)
            .bind(latest_error)
            .bind(latest_error)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(INSERT_ATTEMPT)
                .bind(id)
                .bind(attempts + 1)
                .bind(now)
                .bind(actor)
                .bind(report.outcome.as_str())
                .bind(&report.message)
                .execute(&mut *tx)
                .await?;
            recorded.push(true);
        }
        tx.commit().await?;
        Ok(recorded)
    }

    async fn retry_dead_letters(&self, selection: &Selection, actor: &str) -> Result<u64, StoreError> {
        let set = "status = 'pending', next_attempt_at = ?, updated_at = ?";
        self.operate(selection, actor, set, "dead_letter.retry").await
    }

    async fn discard_dead_letters(&self, selection: &Selection, actor: &str) -> Result<u64, StoreError> {
        let set = "status = 'discarded', next_attempt_at = NULL, updated_at = ?";
        self.operate(selection, actor, set, "dead_letter.discard").await
    }

    async fn edit_dead_letter(&self, id: i64, payload: &[u8], actor: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let current: Option<(Option<Vec<u8>>,)> = sqlx::query_as(&format!(
            "SELECT payload FROM dead_letters WHERE id = ? AND {OPERABLE}{}",
            DB::LOCK_ROW
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((before,)) = current else { return Ok(false) };
        sqlx::query("UPDATE dead_letters SET payload = ?, updated_at = ? WHERE id = ?")
            .bind(payload)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let text =
            |bytes: &[u8]| serde_json::json!({ "payload": String::from_utf8_lossy(bytes) }).to_string();
        let (before, after) = (before.as_deref().map(text), Some(text(payload)));
        Self::audit_entry(now, actor, "dead_letter.edit", format!("dead-letter/{id}"), before, after)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn dead_letter_backlog(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM dead_letters \
             WHERE status IN ('pending', 'retrying', 'parked') GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(status, count)| {
                let status = status
                    .parse::<Status>()
                    .map_err(|e| StoreError::Corrupt(format!("dead letter status {status:?}: {e}")))?;
                Ok((status, count.max(0) as u64))
            })
            .collect()
    }

    async fn dead_letter_tally(&self) -> Result<Vec<(Status, ErrorKind, u64)>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT status, error_kind, COUNT(*) FROM dead_letters \
             WHERE status IN ('pending', 'retrying', 'parked') GROUP BY status, error_kind",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(status, kind, count)| {
                let status = status
                    .parse::<Status>()
                    .map_err(|e| StoreError::Corrupt(format!("dead letter status {status:?}: {e}")))?;
                let kind = kind
                    .parse::<ErrorKind>()
                    .map_err(|e| StoreError::Corrupt(format!("dead letter kind {kind:?}: {e}")))?;
                Ok((status, kind, count.max(0) as u64))
            })
            .collect()
    }
}

impl<DB: Dialect> SqlStore<DB> {
    /// One claim transaction: expired claims taken over, then due letters claimed; returns how
    /// many were taken over.
    async fn claim_once(&self, token: &str, lease_until: i64, limit: u32) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        // Claims whose lease ran out first: their retrier died or hung mid-attempt. That
        // attempt counts, so a letter that keeps killing retriers still reaches the end of its
        // schedule.
        let taken_over = sqlx::query(&DB::update_first(
            "claim_token = ?, claimed_until = ?, updated_at = ?, attempts = attempts + 1",
            "status = 'retrying' AND claimed_until < ?",
            "claimed_until",
        ))
        .bind(token)
        .bind(lease_until)
        .bind(now)
        .bind(now)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken_over > 0 {
            let stale: Vec<(i64, i32)> =
                sqlx::query_as("SELECT id, attempts FROM dead_letters WHERE claim_token = ?")
                    .bind(token)
                    .fetch_all(&mut *tx)
                    .await?;
            for (id, attempts) in stale {
                sqlx::query(INSERT_ATTEMPT)
                    .bind(id)
                    .bind(attempts)
                    .bind(now)
                    .bind(token)
                    .bind("taken_over")
                    .bind("the previous claim's lease ran out before it reported; it may have been delivered")
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let room = u64::from(limit).saturating_sub(taken_over);
        if room > 0 {
            sqlx::query(&DB::update_first(
                "status = 'retrying', claim_token = ?, claimed_until = ?, updated_at = ?",
                "status = 'pending' AND next_attempt_at <= ?",
                "next_attempt_at",
            ))
            .bind(token)
            .bind(lease_until)
            .bind(now)
            .bind(now)
            .bind(room as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(taken_over)
    }

    /// Updates the pending and parked dead letters a selection names, and audits it. Each `?`
    /// of `set` is bound to the current time.
    async fn operate(
        &self,
        selection: &Selection,
        actor: &str,
        set: &str,
        action: &str,
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let sql =
            format!("UPDATE dead_letters SET {set} WHERE {OPERABLE} AND ({})", selection_sql(selection));
        let query = (0..set.matches('?').count()).fold(sqlx::query(&sql), |query, _| query.bind(now));
        let count = bind_selection(query, selection).execute(&mut *tx).await?.rows_affected();
        let after = Some(selection_json(selection, count));
        Self::audit_entry(now, actor, action, "dead-letters".into(), None, after).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(count)
    }
}
