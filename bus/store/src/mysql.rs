//! MySQL backend, for TiDB in production (tested on MariaDB). Only SQL TiDB supports.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlQueryResult};
use sqlx::MySql;

use super::sql::{Dialect, Done, SqlStore};
use super::StoreError;

/// The MySQL/TiDB store.
pub type MySqlStore = SqlStore<MySql>;

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/mysql");

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

impl Dialect for MySql {
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCK_ROW: &'static str = " FOR UPDATE";
    // IGNORE skips rows whose key exists (and reports only new ones as affected). It would
    // also turn a value too long for its column into a warning: the archive cuts every value
    // to its column before it writes.
    const INSERT_ONCE: (&'static str, &'static str) = ("INSERT IGNORE", "");

    // MySQL and TiDB take `ORDER BY … LIMIT` on an `UPDATE`, not in an `IN` subquery.
    fn update_first(set: &str, condition: &str, order: &str) -> String {
        format!("UPDATE dead_letters SET {set} WHERE {condition} ORDER BY {order} LIMIT ?")
    }

    fn delete_first(table: &str, condition: &str) -> String {
        format!("DELETE FROM {table} WHERE {condition} LIMIT ?")
    }

    fn upsert_add(_conflict: &str, add: &[&str], max: &[&str]) -> String {
        let sets: Vec<String> = add
            .iter()
            .map(|c| format!("{c} = {c} + VALUES({c})"))
            .chain(max.iter().map(|c| format!("{c} = GREATEST({c}, VALUES({c}))")))
            .collect();
        format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
    }

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }
}

// The inherent methods, for the generic SQL.
impl Done for MySqlQueryResult {
    fn rows_affected(&self) -> u64 {
        MySqlQueryResult::rows_affected(self)
    }

    fn last_insert_id(&self) -> i64 {
        MySqlQueryResult::last_insert_id(self) as i64
    }
}
