//! MySQL backend, for TiDB in production (tested on MariaDB). Only SQL TiDB supports.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

use super::archive::{self, archive_store};
use super::rows::{self, AttemptRow, AuditRow, DeadLetterRow, PigeonRow, TokenRow};
use super::sql::{delete_first_mysql, sql_store, update_first_mysql, upsert_add_mysql, Backend, Dialect};
use super::{
    audit_entry, bind_dead_letter, bind_dead_letter_filter, bind_selection, now_ms, AuditEntry, Claimed,
    NewToken, Saved, StoreError, StoredPigeon, Token,
};
use crate::archive::{ArchiveQuery, ArchivedLetter, KeyField, Position, ReplayJob, ReplaySpec, ReplayStatus};
use crate::deadletter::{Attempt, DeadLetter, DeadLetterFilter, NewDeadLetter, Outcome, Report, Selection};
use crate::route::PigeonSpec;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/mysql");

const MYSQL: Dialect = Dialect {
    begin_write: "BEGIN",
    lock_row: " FOR UPDATE",
    update_first: update_first_mysql,
    delete_first: delete_first_mysql,
    // IGNORE skips rows whose key exists (and reports only new ones as affected). It would
    // also turn a value too long for its column into a warning: the archive cuts every value
    // to its column before it writes.
    insert_once: ("INSERT IGNORE", ""),
    upsert_add: upsert_add_mysql,
};

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

impl Backend for MySqlStore {
    type Db = sqlx::MySql;
}

sql_store!(MySqlStore, MIGRATOR, MYSQL, |result| result.last_insert_id() as i64);
archive_store!(MySqlStore, MYSQL, |result| result.last_insert_id() as i64);
