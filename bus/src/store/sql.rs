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
}

/// Implements [`Store`](super::Store) for `$store` (with a `pool` field of the backend's pool).
macro_rules! sql_store {
    ($store:ty, $migrator:expr, $dialect:expr, |$result:ident| $last_id:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
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
                rows.into_iter().map(TryInto::try_into).collect()
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
                let query = bind_dead_letter!(sqlx::query(rows::INSERT_DEAD_LETTER), letter, now_ms());
                let $result = query.execute(&self.pool).await?;
                Ok($last_id)
            }

            async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
                let sql = rows::dead_letter_query(filter);
                let query = bind_dead_letter_filter!(sqlx::query_as::<_, DeadLetterRow>(&sql), filter);
                query.fetch_all(&self.pool).await?.into_iter().map(TryInto::try_into).collect()
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
                sqlx::query(rows::INSERT_AUDIT)
                    .bind(now_ms())
                    .bind(actor)
                    .bind("token.create")
                    .bind(format!("token/{}", token.name))
                    .bind(None::<String>)
                    .bind(Some(after.to_string()))
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
                    sqlx::query(rows::INSERT_AUDIT)
                        .bind(now_ms())
                        .bind(actor)
                        .bind("token.revoke")
                        .bind(format!("token/{name}"))
                        .bind(None::<String>)
                        .bind(None::<String>)
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
        }

        impl $store {
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
                sqlx::query(rows::INSERT_AUDIT)
                    .bind(now)
                    .bind(actor)
                    .bind(action)
                    .bind(format!("pigeon/{}", spec.id))
                    .bind(before.map(|b| rows::spec_json(&b.spec)))
                    .bind(Some(json))
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
                sqlx::query(rows::INSERT_AUDIT)
                    .bind(now_ms())
                    .bind(actor)
                    .bind("pigeon.delete")
                    .bind(format!("pigeon/{id}"))
                    .bind(Some(current.spec))
                    .bind(None::<String>)
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
