//! The one SQL implementation of [`Store`](super::Store), expanded once per backend.
//!
//! sqlx checks queries per database type, and the two backends' pools are different types, so
//! the implementation is a macro; what differs between SQLite and MySQL/TiDB is passed in as a
//! [`Dialect`] and a closure for the id of an inserted row.

/// SQL that differs between backends.
pub struct Dialect {
    /// Starts a write transaction (SQLite takes the write lock at once to avoid upgrade deadlocks).
    pub begin_write: &'static str,
    /// Appended to a `SELECT` that reads a row the transaction then updates.
    pub lock_row: &'static str,
    /// An `UPDATE dead_letters SET {set} WHERE {where} ORDER BY {order} LIMIT ?`: MySQL and
    /// TiDB take `ORDER BY … LIMIT` on an `UPDATE` but not in an `IN` subquery; SQLite the
    /// other way round.
    pub update_first: fn(set: &str, condition: &str, order: &str) -> String,
    /// A `DELETE FROM {table} WHERE {condition} LIMIT ?`: MySQL and TiDB take it as it is,
    /// SQLite (built without that option) through a subquery.
    pub delete_first: fn(table: &str, condition: &str) -> String,
    /// How to insert rows that may exist already, leaving those as they are: the statement's
    /// start, and what follows its `VALUES`.
    pub insert_once: (&'static str, &'static str),
    /// What follows an `INSERT … VALUES …` so a row whose key (`conflict`, its columns) exists
    /// adds the new values of the `add` columns and keeps the greater of the `max` columns.
    pub upsert_add: fn(conflict: &str, add: &[&str], max: &[&str]) -> String,
}

/// [`Dialect::upsert_add`] for MySQL and TiDB.
pub fn upsert_add_mysql(_conflict: &str, add: &[&str], max: &[&str]) -> String {
    let sets: Vec<String> = add
        .iter()
        .map(|c| format!("{c} = {c} + VALUES({c})"))
        .chain(max.iter().map(|c| format!("{c} = GREATEST({c}, VALUES({c}))")))
        .collect();
    format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
}

/// [`Dialect::upsert_add`] for SQLite.
pub fn upsert_add_sqlite(conflict: &str, add: &[&str], max: &[&str]) -> String {
    let sets: Vec<String> = add
        .iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .chain(max.iter().map(|c| format!("{c} = MAX({c}, excluded.{c})")))
        .collect();
    format!(" ON CONFLICT ({conflict}) DO UPDATE SET {}", sets.join(", "))
}

/// [`Dialect::delete_first`] for MySQL and TiDB.
pub fn delete_first_mysql(table: &str, condition: &str) -> String {
    format!("DELETE FROM {table} WHERE {condition} LIMIT ?")
}

/// [`Dialect::delete_first`] for SQLite.
pub fn delete_first_sqlite(table: &str, condition: &str) -> String {
    format!("DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {condition} LIMIT ?)")
}

/// [`Dialect::update_first`] for MySQL and TiDB.
pub fn update_first_mysql(set: &str, condition: &str, order: &str) -> String {
    format!("UPDATE dead_letters SET {set} WHERE {condition} ORDER BY {order} LIMIT ?")
}

/// [`Dialect::update_first`] for SQLite.
pub fn update_first_sqlite(set: &str, condition: &str, order: &str) -> String {
    format!(
        "UPDATE dead_letters SET {set} WHERE id IN \
         (SELECT id FROM dead_letters WHERE {condition} ORDER BY {order} LIMIT ?)"
    )
}

/// Implements [`Store`](super::Store) for `$store` (with a `pool` field of the backend's pool).
macro_rules! sql_store {
    ($store:ty, $migrator:expr, $dialect:expr, |$result:ident| $last_id:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn archive(&self) -> &dyn $crate::store::archive::Archive {
                self
            }

            async fn record_drift(&self, sightings: &[$crate::store::Drift]) -> Result<(), StoreError> {
                if sightings.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                for chunk in sightings.chunks(500) {
                    let mut builder = sqlx::QueryBuilder::new(
                        "INSERT INTO dictionary_drift (topic, field, seen, first_seen, last_seen) ",
                    );
                    builder.push_values(chunk, |mut row, s| {
                        row.push_bind(s.topic.clone())
                            .push_bind(s.field.clone())
                            .push_bind(s.seen)
                            .push_bind(s.first_seen)
                            .push_bind(s.last_seen);
                    });
                    builder.push(($dialect.upsert_add)("topic, field", &["seen"], &["last_seen"]));
                    builder.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn drift(&self) -> Result<Vec<$crate::store::Drift>, StoreError> {
                let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
                    "SELECT topic, field, seen, first_seen, last_seen FROM dictionary_drift \
                     ORDER BY seen DESC, topic, field",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(topic, field, seen, first_seen, last_seen)| $crate::store::Drift {
                        topic,
                        field,
                        seen,
                        first_seen,
                        last_seen,
                    })
                    .collect())
            }

            async fn record_counts(&self, counts: &[$crate::counters::BucketCount]) -> Result<(), StoreError> {
                if counts.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                for chunk in counts.chunks(500) {
                    let mut builder = sqlx::QueryBuilder::new(
                        "INSERT INTO pigeon_counts (bucket, pigeon_id, letters_in, letters_out, failures) ",
                    );
                    builder.push_values(chunk, |mut row, c| {
                        row.push_bind(c.bucket)
                            .push_bind(c.pigeon_id.clone())
                            .push_bind(c.tally.letters_in as i64)
                            .push_bind(c.tally.letters_out as i64)
                            .push_bind(c.tally.failures as i64);
                    });
                    builder.push(($dialect.upsert_add)(
                        "bucket, pigeon_id",
                        &["letters_in", "letters_out", "failures"],
                        &[],
                    ));
                    builder.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn counts_since(&self, since: i64) -> Result<Vec<$crate::counters::BucketCount>, StoreError> {
                let rows: Vec<(i64, String, i64, i64, i64)> = sqlx::query_as(
                    "SELECT bucket, pigeon_id, letters_in, letters_out, failures FROM pigeon_counts \
                     WHERE bucket >= ? ORDER BY bucket, pigeon_id",
                )
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(bucket, pigeon_id, letters_in, letters_out, failures)| {
                        $crate::counters::BucketCount {
                            bucket,
                            pigeon_id,
                            tally: $crate::counters::Tally {
                                letters_in: letters_in.max(0) as u64,
                                letters_out: letters_out.max(0) as u64,
                                failures: failures.max(0) as u64,
                            },
                        }
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

            async fn dead_letter_backlog(
                &self,
            ) -> Result<Vec<($crate::deadletter::Status, u64)>, StoreError> {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as(
                        "SELECT status, COUNT(*) FROM dead_letters \
                         WHERE status IN ('pending', 'retrying', 'parked') GROUP BY status",
                    )
                        .fetch_all(&self.pool)
                        .await?;
                rows.into_iter()
                    .map(|(status, count)| {
                        let status = status
                            .parse::<$crate::deadletter::Status>()
                            .map_err(|e| StoreError::Corrupt(format!("dead letter status {status:?}: {e}")))?;
                        Ok((status, count.max(0) as u64))
                    })
                    .collect()
            }

            async fn record_observed(&self, observed: &[$crate::store::Observed]) -> Result<(), StoreError> {
                if observed.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                for chunk in observed.chunks(500) {
                    let mut tags =
                        sqlx::QueryBuilder::new("INSERT INTO observed_tags (topic, tag, sampled, last_seen) ");
                    tags.push_values(chunk, |mut row, o| {
                        row.push_bind(o.topic.clone()).push_bind(o.tag.clone()).push_bind(o.sampled).push_bind(o.last_seen);
                    });
                    tags.push(($dialect.upsert_add)("topic, tag", &["sampled"], &["last_seen"]));
                    tags.build().execute(&mut *tx).await?;
                }
                let fields: Vec<(&str, &str, &$crate::dictionary::ObservedField)> = observed
                    .iter()
                    .flat_map(|o| o.fields.iter().map(move |f| (o.topic.as_str(), o.tag.as_str(), f)))
                    .collect();
                for chunk in fields.chunks(500) {
                    let mut rows =
                        sqlx::QueryBuilder::new("INSERT INTO observed_fields (topic, tag, field, kind, seen) ");
                    rows.push_values(chunk, |mut row, (topic, tag, f)| {
                        row.push_bind(topic.to_string())
                            .push_bind(tag.to_string())
                            .push_bind(f.field.clone())
                            .push_bind(f.kind.clone())
                            .push_bind(f.seen);
                    });
                    rows.push(($dialect.upsert_add)("topic, tag, field, kind", &["seen"], &[]));
                    rows.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn observed(&self, topic: Option<&str>) -> Result<Vec<$crate::store::Observed>, StoreError> {
                let tags: Vec<(String, String, i64, i64)> = sqlx::query_as(
                    "SELECT topic, tag, sampled, last_seen FROM observed_tags \
                     WHERE (? IS NULL OR topic = ?) ORDER BY topic, tag",
                )
                .bind(topic)
                .bind(topic)
                .fetch_all(&self.pool)
                .await?;
                let fields: Vec<(String, String, String, String, i64)> = sqlx::query_as(
                    "SELECT topic, tag, field, kind, seen FROM observed_fields \
                     WHERE (? IS NULL OR topic = ?) ORDER BY topic, tag, field, kind",
                )
                .bind(topic)
                .bind(topic)
                .fetch_all(&self.pool)
                .await?;
                let mut by_tag: std::collections::BTreeMap<(String, String), Vec<$crate::dictionary::ObservedField>> =
                    Default::default();
                for (topic, tag, field, kind, seen) in fields {
                    by_tag.entry((topic, tag)).or_default().push($crate::dictionary::ObservedField { field, kind, seen });
                }
                Ok(tags
                    .into_iter()
                    .map(|(topic, tag, sampled, last_seen)| {
                        let fields = by_tag.remove(&(topic.clone(), tag.clone())).unwrap_or_default();
                        $crate::store::Observed { topic, tag, sampled, last_seen, fields }
                    })
                    .collect())
            }

            async fn declared_tags(&self) -> Result<Vec<$crate::store::DeclaredTag>, StoreError> {
                let rows: Vec<(String, String, String, i64)> =
                    sqlx::query_as("SELECT module, tag, fields, updated_at FROM declared_tags ORDER BY module, tag")
                        .fetch_all(&self.pool)
                        .await?;
                rows.into_iter()
                    .map(|(module, tag, fields, updated_at)| {
                        let fields = serde_json::from_str(&fields)
                            .map_err(|e| StoreError::Corrupt(format!("declared tag {module}/{tag}: {e}")))?;
                        Ok($crate::store::DeclaredTag { module, tag, fields, updated_at })
                    })
                    .collect()
            }

            async fn audit_note(
                &self,
                actor: &str,
                action: &str,
                target: &str,
                note: &serde_json::Value,
            ) -> Result<(), StoreError> {
                audit_entry!(now_ms(), actor, action, target, None::<String>, Some(note.to_string()))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn migrate(&self) -> Result<(), StoreError> {
                $migrator.run(&self.pool).await?;
                Ok(())
            }

            async fn save_pigeon(&self, spec: &PigeonSpec, actor: &str) -> Result<Saved, StoreError> {
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let saved = self.save_in(&mut tx, spec, actor).await?;
                tx.commit().await?;
                Ok(saved)
            }

            async fn apply_pigeons(
                &self,
                save: &[PigeonSpec],
                delete: &[String],
                actor: &str,
            ) -> Result<Vec<Saved>, StoreError> {
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let mut saved = Vec::with_capacity(save.len());
                for spec in save {
                    saved.push(self.save_in(&mut tx, spec, actor).await?);
                }
                for id in delete {
                    self.delete_in(&mut tx, id, actor).await?;
                }
                tx.commit().await?;
                Ok(saved)
            }

            async fn pigeon(&self, id: &str) -> Result<Option<StoredPigeon>, StoreError> {
                let row: Option<PigeonRow> =
                    sqlx::query_as("SELECT spec, version, updated_at FROM pigeons WHERE id = ?")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn pigeons(&self) -> Result<Vec<StoredPigeon>, StoreError> {
                let rows: Vec<PigeonRow> =
                    sqlx::query_as("SELECT spec, version, updated_at FROM pigeons ORDER BY id")
                        .fetch_all(&self.pool)
                        .await?;
                let mut pigeons = rows.into_iter().map(TryInto::try_into).collect::<Result<Vec<StoredPigeon>, _>>()?;
                // MySQL's collation orders `_` after letters; the API's cursors compare bytes.
                pigeons.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
                Ok(pigeons)
            }

            async fn pigeon_versions(&self, id: &str) -> Result<Vec<StoredPigeon>, StoreError> {
                let rows: Vec<PigeonRow> = sqlx::query_as(
                    "SELECT spec, version, created_at AS updated_at FROM pigeon_versions \
                     WHERE pigeon_id = ? ORDER BY version",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn delete_pigeon(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let deleted = self.delete_in(&mut tx, id, actor).await?;
                tx.commit().await?;
                Ok(deleted)
            }

            async fn insert_dead_letter(&self, letter: &NewDeadLetter) -> Result<i64, StoreError> {
                // Bounded to what the columns hold: a refused row would be refused for ever.
                let letter = $crate::store::fit::dead_letter(letter);
                let query = bind_dead_letter!(sqlx::query(rows::INSERT_DEAD_LETTER), &*letter, now_ms());
                let $result = query.execute(&self.pool).await?;
                Ok($last_id)
            }

            async fn insert_dead_letters(&self, letters: &[&NewDeadLetter]) -> Result<(), StoreError> {
                let now = now_ms();
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                for letter in letters {
                    let letter = $crate::store::fit::dead_letter(letter);
                    bind_dead_letter!(sqlx::query(rows::INSERT_DEAD_LETTER), &*letter, now).execute(&mut *tx).await?;
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
                    "SELECT {} FROM dead_letters WHERE {} AND id < ? ORDER BY id DESC LIMIT ?",
                    rows::DEAD_LETTER_COLUMNS,
                    rows::filter_sql(filter)
                );
                let query = bind_dead_letter_filter!(sqlx::query_as::<_, DeadLetterRow>(&sql), filter);
                let query = query.bind(before_id.unwrap_or(i64::MAX)).bind(i64::from(limit));
                query.fetch_all(&self.pool).await?.into_iter().map(TryInto::try_into).collect()
            }

            async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
                let sql = format!("SELECT {} FROM dead_letters WHERE id = ?", rows::DEAD_LETTER_COLUMNS);
                let row: Option<DeadLetterRow> = sqlx::query_as(&sql).bind(id).fetch_optional(&self.pool).await?;
                row.map(TryInto::try_into).transpose()
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
                // Two retriers claiming at once may deadlock in the database, which then rolls
                // one back: that one claims again.
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
                    "SELECT {} FROM dead_letters WHERE claim_token = ? AND status = 'retrying' ORDER BY next_attempt_at, id",
                    rows::DEAD_LETTER_COLUMNS
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
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let mut recorded = Vec::with_capacity(reports.len());
                for (id, report) in reports {
                    let claimed: Option<(i32,)> = sqlx::query_as(&format!(
                        "SELECT attempts FROM dead_letters WHERE id = ? AND claim_token = ? AND status = 'retrying'{}",
                        $dialect.lock_row
                    ))
                    .bind(id)
                    .bind(token)
                    .fetch_optional(&mut *tx)
                    .await?;
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
                    // A delivered letter keeps the error that dead-lettered it; the history says
                    // how it was delivered.
                    let latest_error = if report.outcome == Outcome::Delivered { "" } else { report.message.as_str() };
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
                    sqlx::query(rows::INSERT_ATTEMPT)
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
                self.operate(
                    selection,
                    actor,
                    "status = 'pending', next_attempt_at = ?, updated_at = ?",
                    "dead_letter.retry",
                )
                .await
            }

            async fn discard_dead_letters(&self, selection: &Selection, actor: &str) -> Result<u64, StoreError> {
                self.operate(
                    selection,
                    actor,
                    "status = 'discarded', next_attempt_at = NULL, updated_at = ?",
                    "dead_letter.discard",
                )
                .await
            }

            async fn edit_dead_letter(&self, id: i64, payload: &[u8], actor: &str) -> Result<bool, StoreError> {
                let now = now_ms();
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let current: Option<(Option<Vec<u8>>,)> = sqlx::query_as(&format!(
                    "SELECT payload FROM dead_letters WHERE id = ? AND {}{}",
                    rows::OPERABLE,
                    $dialect.lock_row
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
                let text = |bytes: &[u8]| serde_json::json!({ "payload": String::from_utf8_lossy(bytes) }).to_string();
                audit_entry!(now, actor, "dead_letter.edit", format!("dead-letter/{id}"), before.as_deref().map(text), Some(text(payload)))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn create_token(&self, token: &NewToken, actor: &str) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let existing: Option<(String,)> =
                    sqlx::query_as("SELECT name FROM tokens WHERE name = ?").bind(&token.name).fetch_optional(&mut *tx).await?;
                if existing.is_some() {
                    return Err(StoreError::Conflict(format!("a token named {:?} exists (names are never reused)", token.name)));
                }
                sqlx::query("INSERT INTO tokens (name, role, hash, created_at, created_by) VALUES (?, ?, ?, ?, ?)")
                    .bind(&token.name)
                    .bind(token.role.as_str())
                    .bind(&token.hash)
                    .bind(now_ms())
                    .bind(actor)
                    .execute(&mut *tx)
                    .await?;
                let after = serde_json::json!({ "name": token.name, "role": token.role });
                audit_entry!(now_ms(), actor, "token.create", format!("token/{}", token.name), None::<String>, Some(after.to_string()))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError> {
                let row: Option<TokenRow> = sqlx::query_as(rows::SELECT_TOKEN_BY_HASH).bind(hash).fetch_optional(&self.pool).await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn tokens(&self) -> Result<Vec<Token>, StoreError> {
                let rows: Vec<TokenRow> = sqlx::query_as(rows::SELECT_TOKENS).fetch_all(&self.pool).await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn revoke_token(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let done = sqlx::query("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
                    .bind(now_ms())
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                let revoked = done.rows_affected() > 0;
                if revoked {
                    audit_entry!(now_ms(), actor, "token.revoke", format!("token/{name}"), None::<String>, None::<String>)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(revoked)
            }

            async fn audit(&self, before_id: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
                let rows: Vec<AuditRow> = sqlx::query_as(
                    "SELECT id, at, actor, action, target, before_json, after_json FROM audit \
                     WHERE id < ? ORDER BY id DESC LIMIT ?",
                )
                .bind(before_id.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn record_registration(
                &self,
                registration: &pigeon_sdk::registry::Registration,
                at: i64,
            ) -> Result<$crate::store::RegistrationChanges, StoreError> {
                use $crate::store::rows::{capability_json, CapabilityRow, InstanceRow, SELECT_CAPABILITIES, SELECT_INSTANCES};
                use $crate::store::{CapabilityRecord, InstanceState, ModuleInstance, RegistrationChanges};
                let reg = registration;
                let json = |v: &Vec<String>| serde_json::to_string(v).expect("strings serialize");
                let declared: Vec<String> = reg.capabilities.iter().map(|c| c.name.clone()).collect();
                let left_at = reg.leaving.then_some(at);
                let mut changes = RegistrationChanges::default();
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let existing: Option<(i64,)> = sqlx::query_as(&format!(
                    "SELECT started_at FROM module_instances WHERE module = ? AND instance = ?{}",
                    $dialect.lock_row
                ))
                .bind(&reg.module)
                .bind(&reg.instance)
                .fetch_optional(&mut *tx)
                .await?;
                if existing.is_some() {
                    sqlx::query(
                        "UPDATE module_instances SET host = ?, version = ?, topic = ?, lanes = ?, capabilities = ?, \
                         heartbeat_ms = ?, last_seen = ?, left_at = ? WHERE module = ? AND instance = ?",
                    )
                    .bind(&reg.host)
                    .bind(&reg.version)
                    .bind(&reg.topic)
                    .bind(json(&reg.lanes))
                    .bind(json(&declared))
                    .bind(reg.heartbeat_ms as i64)
                    .bind(at)
                    .bind(left_at)
                    .bind(&reg.module)
                    .bind(&reg.instance)
                    .execute(&mut *tx)
                    .await?;
                } else {
                    changes.new_instance = true;
                    sqlx::query(
                        "INSERT INTO module_instances (module, instance, host, version, topic, lanes, capabilities, \
                         heartbeat_ms, started_at, last_seen, left_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&reg.module)
                    .bind(&reg.instance)
                    .bind(&reg.host)
                    .bind(&reg.version)
                    .bind(&reg.topic)
                    .bind(json(&reg.lanes))
                    .bind(json(&declared))
                    .bind(reg.heartbeat_ms as i64)
                    .bind(at)
                    .bind(at)
                    .bind(left_at)
                    .execute(&mut *tx)
                    .await?;
                }
                if reg.leaving {
                    // A module that stops has not given its capabilities up.
                    tx.commit().await?;
                    return Ok(changes);
                }
                // What it flies, as its latest registration declares.
                sqlx::query("DELETE FROM declared_tags WHERE module = ?").bind(&reg.module).execute(&mut *tx).await?;
                // One row per tag as the key compares it (the registry refuses duplicates; a
                // caller that did not check must not make the whole registration fail).
                let mut tags = std::collections::HashSet::new();
                for flown in reg.flies.iter().filter(|f| tags.insert(f.tag.chars().take(191).collect::<String>().to_lowercase())) {
                    sqlx::query("INSERT INTO declared_tags (module, tag, fields, updated_at) VALUES (?, ?, ?, ?)")
                        .bind(&reg.module)
                        .bind(flown.tag.chars().take(191).collect::<String>())
                        .bind(serde_json::to_string(&flown.fields).expect("field names serialize"))
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                }
                let actor = format!("module:{}", reg.module);
                let audit = |action: &'static str, name: &str, before: Option<String>, after: Option<String>| {
                    audit_entry!(at, actor.clone(), action, format!("capability/{}/{}", reg.module, name), before, after)
                };
                let current: Vec<CapabilityRow> =
                    sqlx::query_as(&format!("{SELECT_CAPABILITIES} WHERE module = ?"))
                        .bind(&reg.module)
                        .fetch_all(&mut *tx)
                        .await?;
                let current: Vec<CapabilityRecord> =
                    current.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?;
                for capability in &reg.capabilities {
                    let after = Some(capability_json(&reg.module, capability));
                    match current.iter().find(|c| c.name == capability.name) {
                        None => {
                            sqlx::query(
                                "INSERT INTO capabilities (module, name, description, requires, first_seen, updated_at) \
                                 VALUES (?, ?, ?, ?, ?, ?)",
                            )
                            .bind(&reg.module)
                            .bind(&capability.name)
                            .bind(&capability.description)
                            .bind(json(&capability.requires))
                            .bind(at)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                            audit("capability.register", &capability.name, None, after).execute(&mut *tx).await?;
                            changes.added.push(capability.name.clone());
                        }
                        Some(known)
                            if known.retired_at.is_some()
                                || known.description != capability.description
                                || known.requires != capability.requires =>
                        {
                            sqlx::query(
                                "UPDATE capabilities SET description = ?, requires = ?, updated_at = ?, retired_at = NULL \
                                 WHERE module = ? AND name = ?",
                            )
                            .bind(&capability.description)
                            .bind(json(&capability.requires))
                            .bind(at)
                            .bind(&reg.module)
                            .bind(&capability.name)
                            .execute(&mut *tx)
                            .await?;
                            let before = pigeon_sdk::registry::CapabilityInfo {
                                name: known.name.clone(),
                                description: known.description.clone(),
                                requires: known.requires.clone(),
                            };
                            let before = Some(capability_json(&reg.module, &before));
                            audit("capability.update", &capability.name, before, after).execute(&mut *tx).await?;
                            changes.updated.push(capability.name.clone());
                        }
                        Some(_) => {}
                    }
                }
                // Retire what no live instance of the module declares (a rolling deploy keeps a
                // capability while an older instance that has it still runs).
                let instances: Vec<InstanceRow> = sqlx::query_as(&format!("{SELECT_INSTANCES} WHERE module = ?"))
                    .bind(&reg.module)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut still_declared: std::collections::HashSet<String> = declared.iter().cloned().collect();
                for row in instances {
                    let instance = ModuleInstance::try_from(row)?;
                    if instance.state(at) == InstanceState::Live {
                        still_declared.extend(instance.capabilities);
                    }
                }
                for known in current.iter().filter(|c| c.retired_at.is_none() && !still_declared.contains(&c.name)) {
                    sqlx::query("UPDATE capabilities SET retired_at = ?, updated_at = ? WHERE module = ? AND name = ?")
                        .bind(at)
                        .bind(at)
                        .bind(&reg.module)
                        .bind(&known.name)
                        .execute(&mut *tx)
                        .await?;
                    audit("capability.retire", &known.name, None, None).execute(&mut *tx).await?;
                    changes.retired.push(known.name.clone());
                }
                tx.commit().await?;
                Ok(changes)
            }

            async fn module_instances(&self) -> Result<Vec<$crate::store::ModuleInstance>, StoreError> {
                let rows: Vec<$crate::store::rows::InstanceRow> =
                    sqlx::query_as(&format!("{} ORDER BY module, instance", $crate::store::rows::SELECT_INSTANCES))
                        .fetch_all(&self.pool)
                        .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn capabilities(&self) -> Result<Vec<$crate::store::CapabilityRecord>, StoreError> {
                let rows: Vec<$crate::store::rows::CapabilityRow> =
                    sqlx::query_as(&format!("{} ORDER BY module, name", $crate::store::rows::SELECT_CAPABILITIES))
                        .fetch_all(&self.pool)
                        .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn dictionary(&self) -> Result<Vec<$crate::store::StoredField>, StoreError> {
                let rows: Vec<$crate::store::rows::FieldRow> =
                    sqlx::query_as(&format!("{} ORDER BY name", $crate::store::rows::SELECT_FIELDS))
                        .fetch_all(&self.pool)
                        .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn save_field(
                &self,
                field: &$crate::dictionary::Field,
                actor: &str,
            ) -> Result<Saved, StoreError> {
                let now = now_ms();
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let before = Self::field_for_update(&mut tx, &field.name).await?;
                if let Some(before) = &before {
                    if before.field == *field {
                        return Ok(Saved { version: before.version, changed: false });
                    }
                }
                let version = before.as_ref().map_or(1, |b| b.version + 1);
                let aliases = serde_json::to_string(&field.aliases).expect("aliases serialize");
                let sql = match before {
                    Some(_) => "UPDATE dictionary SET kind = ?, description = ?, aliases = ?, version = ?, updated_at = ? WHERE name = ?",
                    None => "INSERT INTO dictionary (kind, description, aliases, version, updated_at, name) VALUES (?, ?, ?, ?, ?, ?)",
                };
                sqlx::query(sql)
                    .bind(field.kind.as_str())
                    .bind(&field.description)
                    .bind(aliases)
                    .bind(version)
                    .bind(now)
                    .bind(&field.name)
                    .execute(&mut *tx)
                    .await?;
                audit_entry!(now, actor, if before.is_some() { "dictionary.update" } else { "dictionary.create" }, format!("dictionary/{}", field.name), before.as_ref().map(|b| $crate::store::rows::field_json(&b.field)), Some($crate::store::rows::field_json(field)))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Saved { version, changed: true })
            }

            async fn delete_field(
                &self,
                name: &str,
                actor: &str,
            ) -> Result<Option<$crate::store::StoredField>, StoreError> {
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let Some(before) = Self::field_for_update(&mut tx, name).await? else {
                    return Ok(None);
                };
                sqlx::query("DELETE FROM dictionary WHERE name = ?").bind(name).execute(&mut *tx).await?;
                audit_entry!(now_ms(), actor, "dictionary.delete", format!("dictionary/{name}"), Some($crate::store::rows::field_json(&before.field)), None::<String>)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some(before))
            }
        }

        impl $store {
            /// A dictionary field, locked for the rest of the transaction.
            async fn field_for_update(
                tx: &mut sqlx::Transaction<'_, <$store as Backend>::Db>,
                name: &str,
            ) -> Result<Option<$crate::store::StoredField>, StoreError> {
                let row: Option<$crate::store::rows::FieldRow> = sqlx::query_as(&format!(
                    "{} WHERE name = ?{}",
                    $crate::store::rows::SELECT_FIELDS,
                    $dialect.lock_row
                ))
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            /// One claim transaction: expired claims taken over, then due letters claimed;
            /// returns how many were taken over.
            async fn claim_once(&self, token: &str, lease_until: i64, limit: u32) -> Result<u64, StoreError> {
                let now = now_ms();
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                // Claims whose lease ran out first: their retrier died or hung mid-attempt. That
                // attempt counts, so a letter that keeps killing retriers still reaches the end
                // of its schedule.
            let taken_over = sqlx::query(&($dialect.update_first)(
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
                        sqlx::query(rows::INSERT_ATTEMPT)
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
                    sqlx::query(&($dialect.update_first)(
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

            /// Updates the pending and parked dead letters a selection names, and audits it.
            /// Each `?` of `set` is bound to the current time.
            async fn operate(
                &self,
                selection: &Selection,
                actor: &str,
                set: &str,
                action: &str,
            ) -> Result<u64, StoreError> {
                let now = now_ms();
                let mut tx = self.pool.begin_with($dialect.begin_write).await?;
                let sql = format!(
                    "UPDATE dead_letters SET {set} WHERE {} AND ({})",
                    rows::OPERABLE,
                    rows::selection_sql(selection)
                );
                let mut query = sqlx::query(&sql);
                for _ in 0..set.matches('?').count() {
                    query = query.bind(now);
                }
                let count = bind_selection!(query, selection).execute(&mut *tx).await?.rows_affected();
                audit_entry!(now, actor, action, "dead-letters", None::<String>, Some(rows::selection_json(selection, count)))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(count)
            }

            async fn save_in(
                &self,
                tx: &mut sqlx::Transaction<'_, <$store as Backend>::Db>,
                spec: &PigeonSpec,
                actor: &str,
            ) -> Result<Saved, StoreError> {
                let now = now_ms();
                let json = rows::spec_json(spec);
                let current: Option<PigeonRow> = sqlx::query_as(&format!(
                    "SELECT spec, version, updated_at FROM pigeons WHERE id = ?{}",
                    $dialect.lock_row
                ))
                .bind(&spec.id)
                .fetch_optional(&mut **tx)
                .await?;
                let before = match current {
                    Some(row) if row.spec == json => return Ok(Saved { version: row.version, changed: false }),
                    Some(row) => Some(StoredPigeon::try_from(row)?),
                    None => None,
                };
                // A deleted pigeon saved again continues its version history.
                let version = match &before {
                    Some(b) => b.version + 1,
                    None => {
                        let (latest,): (Option<i64>,) =
                            sqlx::query_as("SELECT MAX(version) FROM pigeon_versions WHERE pigeon_id = ?")
                                .bind(&spec.id)
                                .fetch_one(&mut **tx)
                                .await?;
                        latest.unwrap_or(0) + 1
                    }
                };
                let written = match &before {
                    Some(b) => sqlx::query(
                        "UPDATE pigeons SET version = ?, enabled = ?, spec = ?, updated_at = ? WHERE id = ? AND version = ?",
                    )
                    .bind(version)
                    .bind(spec.enabled)
                    .bind(&json)
                    .bind(now)
                    .bind(&spec.id)
                    .bind(b.version)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected(),
                    None => sqlx::query("INSERT INTO pigeons (id, version, enabled, spec, updated_at) VALUES (?, ?, ?, ?, ?)")
                        .bind(&spec.id)
                        .bind(version)
                        .bind(spec.enabled)
                        .bind(&json)
                        .bind(now)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected(),
                };
                if written != 1 {
                    return Err(StoreError::Conflict(format!("pigeon {:?} changed concurrently; try again", spec.id)));
                }
                sqlx::query("INSERT INTO pigeon_versions (pigeon_id, version, spec, created_at) VALUES (?, ?, ?, ?)")
                    .bind(&spec.id)
                    .bind(version)
                    .bind(&json)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                let action = if before.is_some() { "pigeon.update" } else { "pigeon.create" };
                audit_entry!(now, actor, action, format!("pigeon/{}", spec.id), before.map(|b| rows::spec_json(&b.spec)), Some(json))
                    .execute(&mut **tx)
                    .await?;
                Ok(Saved { version, changed: true })
            }

            async fn delete_in(
                &self,
                tx: &mut sqlx::Transaction<'_, <$store as Backend>::Db>,
                id: &str,
                actor: &str,
            ) -> Result<bool, StoreError> {
                let current: Option<PigeonRow> = sqlx::query_as(&format!(
                    "SELECT spec, version, updated_at FROM pigeons WHERE id = ?{}",
                    $dialect.lock_row
                ))
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
                let Some(current) = current else { return Ok(false) };
                sqlx::query("DELETE FROM pigeons WHERE id = ?").bind(id).execute(&mut **tx).await?;
                audit_entry!(now_ms(), actor, "pigeon.delete", format!("pigeon/{id}"), Some(current.spec), None::<String>)
                    .execute(&mut **tx)
                    .await?;
                Ok(true)
            }
        }
    };
}
pub(crate) use sql_store;

/// Ties a store to its sqlx database type.
pub trait Backend {
    /// The sqlx database.
    type Db: sqlx::Database;
}
