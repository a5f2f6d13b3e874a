//! Pigeons with their versions.

use async_trait::async_trait;
use sqlx::Transaction;

use super::sql::{Dialect, Done, SqlStore};
use super::{now_ms, StoreError};
use pigeon_core::route::{PigeonSpec, VersionedPigeon};

/// A pigeon as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPigeon {
    /// The spec.
    pub spec: PigeonSpec,
    /// Its version, bumped by every change.
    pub version: i64,
    /// When the current version was saved.
    pub updated_at: i64,
}

impl StoredPigeon {
    /// The spec and version, as the route table compiles them.
    pub fn versioned(&self) -> VersionedPigeon {
        VersionedPigeon { spec: self.spec.clone(), version: self.version, saved_at: self.updated_at }
    }
}

/// The outcome of saving a pigeon (or a dictionary field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The version now current.
    pub version: i64,
    /// Whether anything changed (an identical spec is not a new version).
    pub changed: bool,
}

/// Pigeons and their versions. Every change is audited in its own transaction.
#[async_trait]
pub trait PigeonStore: Send + Sync {
    /// Saves a pigeon: a new version when the spec changed, the same one otherwise. The spec
    /// must be validated by the caller. `actor` is recorded in the audit log.
    async fn save_pigeon(&self, spec: &PigeonSpec, actor: &str) -> Result<Saved, StoreError>;

    /// Saves and deletes pigeons in one transaction: all or nothing.
    async fn apply_pigeons(
        &self,
        save: &[PigeonSpec],
        delete: &[String],
        actor: &str,
    ) -> Result<Vec<Saved>, StoreError>;

    /// One pigeon.
    async fn pigeon(&self, id: &str) -> Result<Option<StoredPigeon>, StoreError>;

    /// Every pigeon, by id compared as bytes (whatever the database's collation).
    async fn pigeons(&self) -> Result<Vec<StoredPigeon>, StoreError>;

    /// Every saved version of a pigeon, oldest first (kept after deletion).
    async fn pigeon_versions(&self, id: &str) -> Result<Vec<StoredPigeon>, StoreError>;

    /// Deletes a pigeon; returns whether it existed.
    async fn delete_pigeon(&self, id: &str, actor: &str) -> Result<bool, StoreError>;
}

#[derive(sqlx::FromRow)]
struct PigeonRow {
    spec: String,
    version: i64,
    updated_at: i64,
}

impl TryFrom<PigeonRow> for StoredPigeon {
    type Error = StoreError;
    fn try_from(row: PigeonRow) -> Result<Self, StoreError> {
        let spec =
            serde_json::from_str(&row.spec).map_err(|e| StoreError::Corrupt(format!("pigeon spec: {e}")))?;
        Ok(StoredPigeon { spec, version: row.version, updated_at: row.updated_at })
    }
}

fn spec_json(spec: &PigeonSpec) -> String {
    serde_json::to_string(spec).expect("a pigeon spec always serializes")
}

#[async_trait]
impl<DB: Dialect> PigeonStore for SqlStore<DB> {
    async fn save_pigeon(&self, spec: &PigeonSpec, actor: &str) -> Result<Saved, StoreError> {
        let mut tx = self.begin().await?;
        let saved = Self::save_in(&mut tx, spec, actor).await?;
        tx.commit().await?;
        Ok(saved)
    }

    async fn apply_pigeons(
        &self,
        save: &[PigeonSpec],
        delete: &[String],
        actor: &str,
    ) -> Result<Vec<Saved>, StoreError> {
        let mut tx = self.begin().await?;
        let mut saved = Vec::with_capacity(save.len());
        for spec in save {
            saved.push(Self::save_in(&mut tx, spec, actor).await?);
        }
        for id in delete {
            Self::delete_in(&mut tx, id, actor).await?;
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
        let mut pigeons =
            rows.into_iter().map(TryInto::try_into).collect::<Result<Vec<StoredPigeon>, _>>()?;
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
        let mut tx = self.begin().await?;
        let deleted = Self::delete_in(&mut tx, id, actor).await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

impl<DB: Dialect> SqlStore<DB> {
    async fn save_in(
        tx: &mut Transaction<'_, DB>,
        spec: &PigeonSpec,
        actor: &str,
    ) -> Result<Saved, StoreError> {
        let now = now_ms();
        let json = spec_json(spec);
        let current: Option<PigeonRow> = sqlx::query_as(&format!(
            "SELECT spec, version, updated_at FROM pigeons WHERE id = ?{}",
            DB::LOCK_ROW
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
            return Err(StoreError::Conflict(format!(
                "pigeon {:?} changed concurrently; try again",
                spec.id
            )));
        }
        sqlx::query("INSERT INTO pigeon_versions (pigeon_id, version, spec, created_at) VALUES (?, ?, ?, ?)")
            .bind(&spec.id)
            .bind(version)
            .bind(&json)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        let action = if before.is_some() { "pigeon.update" } else { "pigeon.create" };
        let before = before.map(|b| spec_json(&b.spec));
        Self::audit_entry(now, actor, action, format!("pigeon/{}", spec.id), before, Some(json))
            .execute(&mut **tx)
            .await?;
        Ok(Saved { version, changed: true })
    }

    async fn delete_in(tx: &mut Transaction<'_, DB>, id: &str, actor: &str) -> Result<bool, StoreError> {
        let current: Option<PigeonRow> = sqlx::query_as(&format!(
            "SELECT spec, version, updated_at FROM pigeons WHERE id = ?{}",
            DB::LOCK_ROW
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(current) = current else { return Ok(false) };
        sqlx::query("DELETE FROM pigeons WHERE id = ?").bind(id).execute(&mut **tx).await?;
        Self::audit_entry(now_ms(), actor, "pigeon.delete", format!("pigeon/{id}"), Some(current.spec), None)
            .execute(&mut **tx)
            .await?;
        Ok(true)
    }
}
