//! SQLite backend: the embedded default. WAL mode, so readers never block the writer.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult, SqliteSynchronous,
};
use sqlx::Sqlite;

use super::sql::{Dialect, Done, SqlStore};
use super::StoreError;

/// The SQLite store.
pub type SqliteStore = SqlStore<Sqlite>;

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

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

impl Dialect for Sqlite {
    // The write lock at once: a reader that upgrades to a writer can deadlock.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    // One writer at a time: what a write transaction read stays as it read it.
    const LOCK_ROW: &'static str = "";
    const INSERT_ONCE: (&'static str, &'static str) = ("INSERT", " ON CONFLICT (letter_id) DO NOTHING");

    // SQLite takes `ORDER BY … LIMIT` in an `IN` subquery, not on an `UPDATE`.
    fn update_first(set: &str, condition: &str, order: &str) -> String {
        format!(
            "UPDATE dead_letters SET {set} WHERE id IN \
             (SELECT id FROM dead_letters WHERE {condition} ORDER BY {order} LIMIT ?)"
        )
    }

    // SQLite is built without `DELETE … LIMIT`.
    fn delete_first(table: &str, condition: &str) -> String {
        format!("DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {condition} LIMIT ?)")
    }

    fn upsert_add(conflict: &str, add: &[&str], max: &[&str]) -> String {
        let sets: Vec<String> = add
            .iter()
            .map(|c| format!("{c} = {c} + excluded.{c}"))
            .chain(max.iter().map(|c| format!("{c} = MAX({c}, excluded.{c})")))
            .collect();
        format!(" ON CONFLICT ({conflict}) DO UPDATE SET {}", sets.join(", "))
    }

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }
}

// The inherent methods, for the generic SQL.
impl Done for SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        SqliteQueryResult::rows_affected(self)
    }

    fn last_insert_id(&self) -> i64 {
        SqliteQueryResult::last_insert_rowid(self)
    }
}
