//! SQLite backend: the embedded default. WAL mode, so readers never block the writer.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::rows::{self, DeadLetterRow, PigeonRow};
use super::{bind_dead_letter, bind_dead_letter_filter, now_ms, Store, StoreError, StoredPigeon};
use crate::deadletter::{DeadLetter, DeadLetterFilter, NewDeadLetter};
use crate::route::PigeonSpec;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database a `sqlite://PATH` URL names.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn save_pigeon(&self, spec: &PigeonSpec) -> Result<i64, StoreError> {
        let now = now_ms();
        let json = rows::spec_json(spec);
        let mut tx = self.pool.begin().await?;
        // Writing first takes SQLite's write lock at once, so two savers never deadlock.
        sqlx::query(
            "INSERT INTO pigeons (id, version, enabled, spec, updated_at) VALUES (?, 1, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET version = version + 1, enabled = excluded.enabled, \
             spec = excluded.spec, updated_at = excluded.updated_at WHERE pigeons.spec <> excluded.spec",
        )
        .bind(&spec.id)
        .bind(spec.enabled)
        .bind(&json)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let (version,): (i64,) = sqlx::query_as("SELECT version FROM pigeons WHERE id = ?")
            .bind(&spec.id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO pigeon_versions (pigeon_id, version, spec, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (pigeon_id, version) DO NOTHING",
        )
        .bind(&spec.id)
        .bind(version)
        .bind(&json)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
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

    async fn delete_pigeon(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM pigeons WHERE id = ?").bind(id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_dead_letter(&self, letter: &NewDeadLetter) -> Result<i64, StoreError> {
        let query = bind_dead_letter!(sqlx::query(rows::INSERT_DEAD_LETTER), letter, now_ms());
        Ok(query.execute(&self.pool).await?.last_insert_rowid())
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = rows::dead_letter_query(filter);
        let query = bind_dead_letter_filter!(sqlx::query_as::<_, DeadLetterRow>(&sql), filter);
        query.fetch_all(&self.pool).await?.into_iter().map(TryInto::try_into).collect()
    }
}
