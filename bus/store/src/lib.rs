//! The store: what the bus keeps in its database.
//!
//! One trait per domain ([`PigeonStore`], [`DeadLetterStore`], [`TokenStore`], [`RegistryStore`],
//! [`DictionaryStore`], [`CountStore`], [`ArchiveStore`], [`ReceiptStore`]), all of them [`Store`], the handle
//! the bus passes around as `Arc<dyn Store>`. One SQL implementation, [`SqlStore`], generic
//! over the database: [`sqlite`] (the embedded default, WAL mode) and [`mysql`] (MySQL and
//! TiDB; tested on MariaDB) hold only what differs. Every mutation writes its audit entry in
//! its own transaction. Times are unix milliseconds.

use std::sync::Arc;

use async_trait::async_trait;

pub mod archive;
mod counts;
mod dead_letters;
mod dictionary;
pub mod fit;
pub mod mysql;
mod pigeons;
mod receipts;
mod registry;
mod sql;
pub mod sqlite;
mod tokens;

pub use archive::ArchiveStore;
pub use counts::CountStore;
pub use dead_letters::{Claimed, DeadLetterStore};
pub use dictionary::{DictionaryStore, StoredField};
pub use pigeons::{PigeonStore, Saved, StoredPigeon};
pub use receipts::{ReceiptStore, ReceiptTotal};
pub use registry::{
    CapabilityRecord, DeclaredTag, InstanceState, ModuleInstance, RegistrationChanges, RegistryStore,
};
pub use sql::{Dialect, SqlStore};
pub use tokens::{AuditEntry, NewToken, Token, TokenStore};

pub use pigeon_core::dictionary::{Drift, Observed};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no, or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The change conflicts with what is stored.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The URL names no backend we have.
    #[error("unsupported store URL (use sqlite:// or mysql://): {0}")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// Whether trying the same thing again may work: the database could not be reached, or
    /// it broke a deadlock. A refusal of the statement itself (a constraint, a value that does
    /// not fit) fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(_)) => self.lost_a_race(),
            StoreError::Database(
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed,
            ) => true,
            _ => false,
        }
    }

    /// Whether the database rolled the transaction back to break a deadlock or a write
    /// conflict (MySQL/MariaDB 1213, TiDB 9007, SQLSTATE 40001): running it again is the cure.
    pub fn lost_a_race(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => {
                e.code().as_deref() == Some("40001")
                    || e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                        .is_some_and(|m| matches!(m.number(), 1213 | 9007))
            }
            _ => false,
        }
    }
}

/// What the bus keeps in its database: every domain's store. Methods of the domain traits are
/// callable on `dyn Store` without importing them.
#[async_trait]
pub trait Store:
    PigeonStore
    + DeadLetterStore
    + TokenStore
    + RegistryStore
    + DictionaryStore
    + CountStore
    + ArchiveStore
    + ReceiptStore
    + Send
    + Sync
    + 'static
{
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Whether the database answers now (one trivial query).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The archive and replay jobs, in the same database (this store, as an [`ArchiveStore`]).
    fn archive(&self) -> &dyn ArchiveStore;
}

#[async_trait]
impl<DB: sql::Dialect> Store for sql::SqlStore<DB> {
    async fn migrate(&self) -> Result<(), StoreError> {
        DB::migrator().run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn archive(&self) -> &dyn ArchiveStore {
        self
    }
}

/// Opens the store a URL names: `sqlite://PATH` or `mysql://…`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("mysql:") {
        Ok(Arc::new(mysql::MySqlStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(pigeon_core::redact::redact_url(url)))
    }
}

/// Opens the store a URL names and applies the migrations it lacks.
pub async fn open_migrated(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let store = open(url).await?;
    store.migrate().await?;
    Ok(store)
}

pub use pigeon_core::clock::now_ms;
