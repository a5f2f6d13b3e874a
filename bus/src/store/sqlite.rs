//! SQLite backend: the embedded default. WAL mode, so readers never block the writer.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::archive::{self, archive_store};
use super::rows::{self, AttemptRow, AuditRow, DeadLetterRow, PigeonRow, TokenRow};
use super::sql::{delete_first_sqlite, sql_store, update_first_sqlite, upsert_add_sqlite, Backend, Dialect};
use super::{
    audit_entry, bind_dead_letter, bind_dead_letter_filter, bind_selection, now_ms, AuditEntry, Claimed,
    NewToken, Saved, StoreError, StoredPigeon, Token,
};
use crate::archive::{ArchiveQuery, ArchivedLetter, KeyField, Position, ReplayJob, ReplaySpec, ReplayStatus};
use crate::deadletter::{Attempt, DeadLetter, DeadLetterFilter, NewDeadLetter, Outcome, Report, Selection};
use crate::route::PigeonSpec;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

const SQLITE: Dialect = Dialect {
    begin_write: "BEGIN IMMEDIATE",
    lock_row: "",
    update_first: update_first_sqlite,
    delete_first: delete_first_sqlite,
    insert_once: ("INSERT", " ON CONFLICT (letter_id) DO NOTHING"),
    upsert_add: upsert_add_sqlite,
};

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

impl Backend for SqliteStore {
    type Db = sqlx::Sqlite;
}

sql_store!(SqliteStore, MIGRATOR, SQLITE, |result| result.last_insert_rowid());
archive_store!(SqliteStore, SQLITE, |result| result.last_insert_rowid());
