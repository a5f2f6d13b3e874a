//! MySQL backend, for TiDB in production (tested on MariaDB). Only SQL TiDB supports.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

use super::rows::{self, DeadLetterRow, PigeonRow};
use super::{bind_dead_letter, bind_dead_letter_filter, now_ms, Store, StoreError, StoredPigeon};
use crate::deadletter::{DeadLetter, DeadLetterFilter, NewDeadLetter};
use crate::route::PigeonSpec;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/mysql");

/// The MySQL/TiDB store.
#[derive(Clone, Debug)]
pub struct MySqlStore {
    pool: MySqlPool,
}

impl MySqlStore {
    /// Connects to the database a `mysql://USER:PASSWORD@HOST:PORT/DB` URL names.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = MySqlConnectOptions::from_str(url)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for MySqlStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn save_pigeon(&self, spec: &PigeonSpec) -> Result<i64, StoreError> {
        let now = now_ms();
        let json = rows::spec_json(spec);
        let mut tx = self.pool.begin().await?;
        // MySQL evaluates assignments left to right: compare before `spec` is overwritten.
        sqlx::query(
            "INSERT INTO pigeons (id, version, enabled, spec, updated_at) VALUES (?, 1, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE \
               version = IF(spec <> VALUES(spec), version + 1, version), \
               updated_at = IF(spec <> VALUES(spec), VALUES(updated_at), updated_at), \
               enabled = VALUES(enabled), \
               spec = VALUES(spec)",
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
            "INSERT IGNORE INTO pigeon_versions (pigeon_id, version, spec, created_at) VALUES (?, ?, ?, ?)",
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
        Ok(query.execute(&self.pool).await?.last_insert_id() as i64)
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = rows::dead_letter_query(filter);
        let query = bind_dead_letter_filter!(sqlx::query_as::<_, DeadLetterRow>(&sql), filter);
        query.fetch_all(&self.pool).await?.into_iter().map(TryInto::try_into).collect()
    }
}
