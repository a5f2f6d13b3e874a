//! The store: pigeons with their versions, and dead letters.
//!
//! One small trait, one module per backend with its SQL beside it: [`sqlite`] (the embedded
//! default, WAL mode) and [`mysql`] (MySQL and TiDB; tested on MariaDB). Queries are checked at
//! run time, and the same conformance suite runs on both. Times are unix milliseconds.

use std::sync::Arc;

use async_trait::async_trait;

use crate::deadletter::{
    Attempt, DeadLetter, DeadLetterFilter, NewDeadLetter, Report, Selection, StoredHeader,
};
use crate::dictionary::Field;
use crate::route::{PigeonSpec, VersionedPigeon};
use crate::token::Role;
use pigeon_sdk::registry::Registration;

pub mod archive;
pub mod fit;
pub mod mysql;
mod sql;
pub mod sqlite;

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

/// The outcome of saving a pigeon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The version now current.
    pub version: i64,
    /// Whether anything changed (an identical spec is not a new version).
    pub changed: bool,
}

/// Dead letters a retrier claimed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claimed {
    /// The letters, due first.
    pub letters: Vec<DeadLetter>,
    /// How many of them were taken over from a claim whose lease ran out.
    pub taken_over: u64,
}

/// A token to store: its hash, never its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    /// Unique name; it names the actor in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the value, hex.
    pub hash: String,
}

/// A stored token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When it was created (unix ms).
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// One recorded mutation.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: i64,
    /// When (unix ms).
    pub at: i64,
    /// Who: a token name, or the local tool that acted.
    pub actor: String,
    /// What, e.g. `pigeon.update`.
    pub action: String,
    /// On what, e.g. `pigeon/gift-progress`.
    pub target: String,
    /// The thing before, if it existed.
    pub before: Option<serde_json::Value>,
    /// The thing after, if it still exists.
    pub after: Option<serde_json::Value>,
}

/// What the bus keeps in its database. Every mutation is audited in its own transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// The archive and replay jobs, in the same database.
    fn archive(&self) -> &dyn archive::Archive;

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

    /// Stores a dead letter durably; returns its id.
    async fn insert_dead_letter(&self, letter: &NewDeadLetter) -> Result<i64, StoreError>;

    /// Stores dead letters durably in one transaction: all or none.
    async fn insert_dead_letters(&self, letters: &[&NewDeadLetter]) -> Result<(), StoreError>;

    /// Dead letters the filter matches with ids below `before_id` (all when `None`), newest
    /// first.
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// One dead letter.
    async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError>;

    /// A dead letter's history, oldest first.
    async fn dead_letter_attempts(&self, id: i64) -> Result<Vec<Attempt>, StoreError>;

    /// Claims up to `limit` dead letters for one retrier: pending ones that are due, and ones
    /// whose previous claim's lease ran out (taken over; recorded in their history). They are
    /// `retrying` under `token` until `lease_until` (unix ms). Live claims never overlap.
    async fn claim_dead_letters(
        &self,
        token: &str,
        lease_until: i64,
        limit: u32,
    ) -> Result<Claimed, StoreError>;

    /// Records the ends of claimed attempts, all in one transaction. For each, false when the
    /// claim was lost (its lease ran out and another retrier took the letter over): nothing is
    /// written for that one.
    async fn report_attempts(
        &self,
        token: &str,
        actor: &str,
        reports: &[(i64, Report)],
    ) -> Result<Vec<bool>, StoreError>;

    /// [`Store::report_attempts`] for one attempt.
    async fn report_attempt(
        &self,
        id: i64,
        token: &str,
        actor: &str,
        report: &Report,
    ) -> Result<bool, StoreError> {
        let recorded = self.report_attempts(token, actor, &[(id, report.clone())]).await?;
        Ok(recorded.first().copied().unwrap_or(false))
    }

    /// Makes pending and parked dead letters due now (redrive). Audited; returns how many.
    async fn retry_dead_letters(&self, selection: &Selection, actor: &str) -> Result<u64, StoreError>;

    /// Discards pending and parked dead letters. Audited; returns how many.
    async fn discard_dead_letters(&self, selection: &Selection, actor: &str) -> Result<u64, StoreError>;

    /// Replaces a pending or parked dead letter's payload. Audited with both payloads; returns
    /// false when there is no such letter in those states.
    async fn edit_dead_letter(&self, id: i64, payload: &[u8], actor: &str) -> Result<bool, StoreError>;

    /// Stores a new token; a name is never reused.
    async fn create_token(&self, token: &NewToken, actor: &str) -> Result<(), StoreError>;

    /// The unrevoked token with this hash.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError>;

    /// Every token, revoked ones included, by name.
    async fn tokens(&self) -> Result<Vec<Token>, StoreError>;

    /// Revokes a token; returns whether an active one had that name.
    async fn revoke_token(&self, name: &str, actor: &str) -> Result<bool, StoreError>;

    /// Audit entries older than `before_id` (all when `None`), newest first.
    async fn audit(&self, before_id: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;

    /// Records a module instance's registration or heartbeat received at `at` (unix ms), in one
    /// transaction: the instance is upserted (or marked left); the capabilities it declares are
    /// added, updated or restored; the module's capabilities that no live instance declares
    /// any more are retired. Capability changes are audited; heartbeats are not.
    async fn record_registration(
        &self,
        registration: &Registration,
        at: i64,
    ) -> Result<RegistrationChanges, StoreError>;

    /// Every module instance ever registered, by module and instance.
    async fn module_instances(&self) -> Result<Vec<ModuleInstance>, StoreError>;

    /// Every capability ever declared, retired ones included, by module and name.
    async fn capabilities(&self) -> Result<Vec<CapabilityRecord>, StoreError>;

    /// The dictionary, by name.
    async fn dictionary(&self) -> Result<Vec<StoredField>, StoreError>;

    /// Creates or changes a dictionary field: a new version, audited. An identical field
    /// changes nothing. The caller checks it against the rest ([`crate::dictionary::validate`]).
    async fn save_field(&self, field: &Field, actor: &str) -> Result<Saved, StoreError>;

    /// Deletes a dictionary field, audited; returns it as it was.
    async fn delete_field(&self, name: &str, actor: &str) -> Result<Option<StoredField>, StoreError>;

    /// Adds sightings of fields the dictionary does not know to the drift report, in one
    /// transaction.
    async fn record_drift(&self, sightings: &[Drift]) -> Result<(), StoreError>;

    /// The drift report, most seen first.
    async fn drift(&self) -> Result<Vec<Drift>, StoreError>;

    /// Adds pigeons' counts to their buckets, in one transaction.
    async fn record_counts(&self, counts: &[crate::counters::BucketCount]) -> Result<(), StoreError>;

    /// Every pigeon's counts in buckets that start at or after `since` (unix ms), oldest first.
    async fn counts_since(&self, since: i64) -> Result<Vec<crate::counters::BucketCount>, StoreError>;

    /// Deletes the buckets that start before `before`; returns how many.
    async fn prune_counts(&self, before: i64) -> Result<u64, StoreError>;

    /// How many dead letters wait in each status: pending, retrying, parked (statuses with
    /// none are left out). The status index answers it without reading the history.
    async fn dead_letter_backlog(&self) -> Result<Vec<(crate::deadletter::Status, u64)>, StoreError>;

    /// Adds sampled letters' fields to the observed source schemas, in one transaction.
    async fn record_observed(&self, observed: &[Observed]) -> Result<(), StoreError>;

    /// The observed source schemas (of one topic, or all), by topic and tag.
    async fn observed(&self, topic: Option<&str>) -> Result<Vec<Observed>, StoreError>;

    /// The tags modules declare they fly, by module and tag.
    async fn declared_tags(&self) -> Result<Vec<DeclaredTag>, StoreError>;

    /// Records a decision that is not itself a change (an override, say) in the audit log.
    async fn audit_note(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        note: &serde_json::Value,
    ) -> Result<(), StoreError>;
}

/// A tag a module declares it flies (on `pigeon.ingress`), with the fields its letters carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredTag {
    /// The module.
    pub module: String,
    /// The tag.
    pub tag: String,
    /// Dictionary fields its letters carry.
    pub fields: Vec<String>,
    /// When the module last declared it (unix ms).
    pub updated_at: i64,
}

pub use crate::dictionary::{Drift, Observed};

/// A dictionary field as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredField {
    /// The field.
    pub field: Field,
    /// Its version, bumped by every change.
    pub version: i64,
    /// When this version was saved (unix ms; 0 for the seeded vocabulary).
    pub updated_at: i64,
}

/// A module instance as it last registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInstance {
    /// Module name.
    pub module: String,
    /// Instance id.
    pub instance: String,
    /// Host it runs on.
    pub host: String,
    /// The module's version.
    pub version: String,
    /// Its module topic.
    pub topic: String,
    /// Lane topics it consumes.
    pub lanes: Vec<String>,
    /// Capability names it declared.
    pub capabilities: Vec<String>,
    /// Its heartbeat interval.
    pub heartbeat_ms: i64,
    /// First registration (unix ms).
    pub started_at: i64,
    /// Last registration or heartbeat (unix ms).
    pub last_seen: i64,
    /// When it said it was leaving, if it did.
    pub left_at: Option<i64>,
}

/// Whether an instance is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// It heartbeats.
    Live,
    /// It missed [`pigeon_sdk::registry::MISSED_HEARTBEATS`] heartbeats.
    Stale,
    /// It shut down and said so.
    Left,
}

impl ModuleInstance {
    /// Its state at `now` (unix ms).
    pub fn state(&self, now: i64) -> InstanceState {
        let missed = pigeon_sdk::registry::MISSED_HEARTBEATS as i64;
        if self.left_at.is_some() {
            InstanceState::Left
        } else if now - self.last_seen > self.heartbeat_ms.saturating_mul(missed) {
            InstanceState::Stale
        } else {
            InstanceState::Live
        }
    }
}

/// A capability as modules declared it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapabilityRecord {
    /// Module name.
    pub module: String,
    /// Capability name (its tag).
    pub name: String,
    /// What it does.
    pub description: String,
    /// Dictionary fields its letters must carry.
    pub requires: Vec<String>,
    /// First declared (unix ms).
    pub first_seen: i64,
    /// Last changed (unix ms).
    pub updated_at: i64,
    /// When no live instance declared it any more, if so.
    pub retired_at: Option<i64>,
}

/// What one registration changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrationChanges {
    /// The instance registered for the first time.
    pub new_instance: bool,
    /// Capabilities declared for the first time.
    pub added: Vec<String>,
    /// Capabilities whose description or required fields changed, or that came back.
    pub updated: Vec<String>,
    /// Capabilities retired because no live instance declares them.
    pub retired: Vec<String>,
}

/// Opens the store a URL names: `sqlite://PATH` or `mysql://…`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("mysql:") {
        Ok(Arc::new(mysql::MySqlStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(crate::config::redact_url(url)))
    }
}

/// Opens the store a URL names and applies the migrations it lacks.
pub async fn open_migrated(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let store = open(url).await?;
    store.migrate().await?;
    Ok(store)
}

/// Current time, unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Row shapes shared by both backends (the SQL differs, the columns do not).
mod rows {
    use super::*;

    #[derive(sqlx::FromRow)]
    pub struct InstanceRow {
        pub module: String,
        pub instance: String,
        pub host: String,
        pub version: String,
        pub topic: String,
        pub lanes: String,
        pub capabilities: String,
        pub heartbeat_ms: i64,
        pub started_at: i64,
        pub last_seen: i64,
        pub left_at: Option<i64>,
    }

    pub const SELECT_INSTANCES: &str = "SELECT module, instance, host, version, topic, lanes, capabilities, \
        heartbeat_ms, started_at, last_seen, left_at FROM module_instances";

    fn names(json: &str, what: &str) -> Result<Vec<String>, StoreError> {
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
    }

    impl TryFrom<InstanceRow> for ModuleInstance {
        type Error = StoreError;
        fn try_from(row: InstanceRow) -> Result<Self, StoreError> {
            Ok(ModuleInstance {
                lanes: names(&row.lanes, "module_instances.lanes")?,
                capabilities: names(&row.capabilities, "module_instances.capabilities")?,
                module: row.module,
                instance: row.instance,
                host: row.host,
                version: row.version,
                topic: row.topic,
                heartbeat_ms: row.heartbeat_ms,
                started_at: row.started_at,
                last_seen: row.last_seen,
                left_at: row.left_at,
            })
        }
    }

    #[derive(sqlx::FromRow)]
    pub struct CapabilityRow {
        pub module: String,
        pub name: String,
        pub description: String,
        pub requires: String,
        pub first_seen: i64,
        pub updated_at: i64,
        pub retired_at: Option<i64>,
    }

    pub const SELECT_CAPABILITIES: &str =
        "SELECT module, name, description, requires, first_seen, updated_at, retired_at FROM capabilities";

    impl TryFrom<CapabilityRow> for CapabilityRecord {
        type Error = StoreError;
        fn try_from(row: CapabilityRow) -> Result<Self, StoreError> {
            Ok(CapabilityRecord {
                requires: names(&row.requires, "capabilities.requires")?,
                module: row.module,
                name: row.name,
                description: row.description,
                first_seen: row.first_seen,
                updated_at: row.updated_at,
                retired_at: row.retired_at,
            })
        }
    }

    /// A capability as the audit log shows it.
    pub fn capability_json(module: &str, c: &pigeon_sdk::registry::CapabilityInfo) -> String {
        serde_json::json!({ "module": module, "name": c.name, "description": c.description, "requires": c.requires })
            .to_string()
    }
    use crate::deadletter::{ErrorKind, Status};

    #[derive(sqlx::FromRow)]
    pub struct FieldRow {
        pub name: String,
        pub kind: String,
        pub description: String,
        pub aliases: String,
        pub version: i64,
        pub updated_at: i64,
    }

    /// The columns of [`FieldRow`].
    pub const SELECT_FIELDS: &str =
        "SELECT name, kind, description, aliases, version, updated_at FROM dictionary";

    impl TryFrom<FieldRow> for super::StoredField {
        type Error = StoreError;
        fn try_from(row: FieldRow) -> Result<Self, StoreError> {
            let kind = row.kind.parse().map_err(StoreError::Corrupt)?;
            let aliases = serde_json::from_str(&row.aliases)
                .map_err(|e| StoreError::Corrupt(format!("aliases of field {}: {e}", row.name)))?;
            let field =
                crate::dictionary::Field { name: row.name, kind, description: row.description, aliases };
            Ok(super::StoredField { field, version: row.version, updated_at: row.updated_at })
        }
    }

    /// A field as the audit log shows it.
    pub fn field_json(field: &crate::dictionary::Field) -> String {
        serde_json::to_string(field).expect("a field serializes")
    }

    #[derive(sqlx::FromRow)]
    pub struct PigeonRow {
        pub spec: String,
        pub version: i64,
        pub updated_at: i64,
    }

    impl TryFrom<PigeonRow> for StoredPigeon {
        type Error = StoreError;
        fn try_from(row: PigeonRow) -> Result<Self, StoreError> {
            let spec = serde_json::from_str(&row.spec)
                .map_err(|e| StoreError::Corrupt(format!("pigeon spec: {e}")))?;
            Ok(StoredPigeon { spec, version: row.version, updated_at: row.updated_at })
        }
    }

    pub fn spec_json(spec: &PigeonSpec) -> String {
        serde_json::to_string(spec).expect("a pigeon spec always serializes")
    }

    pub fn headers_json(headers: &[StoredHeader]) -> String {
        serde_json::to_string(headers).expect("headers always serialize")
    }

    #[derive(sqlx::FromRow)]
    pub struct DeadLetterRow {
        pub id: i64,
        pub letter_id: String,
        pub pigeon_id: Option<String>,
        pub pigeon_version: Option<i64>,
        pub source_topic: String,
        pub source_partition: i32,
        pub source_offset: i64,
        pub dest_topic: Option<String>,
        pub dest_tag: Option<String>,
        pub msg_key: Option<Vec<u8>>,
        pub headers: String,
        pub payload: Option<Vec<u8>>,
        pub error_kind: String,
        pub error_message: String,
        pub attempts: i32,
        pub status: String,
        pub next_attempt_at: Option<i64>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    impl TryFrom<DeadLetterRow> for DeadLetter {
        type Error = StoreError;
        fn try_from(row: DeadLetterRow) -> Result<Self, StoreError> {
            let corrupt =
                |what: &str, e: String| StoreError::Corrupt(format!("dead letter {}: {what}: {e}", row.id));
            let headers =
                serde_json::from_str(&row.headers).map_err(|e| corrupt("headers", e.to_string()))?;
            let error_kind: ErrorKind = row.error_kind.parse().map_err(|e| corrupt("error kind", e))?;
            let status: Status = row.status.parse().map_err(|e| corrupt("status", e))?;
            Ok(DeadLetter {
                id: row.id,
                letter: NewDeadLetter {
                    letter_id: row.letter_id,
                    pigeon_id: row.pigeon_id,
                    pigeon_version: row.pigeon_version,
                    source_topic: row.source_topic,
                    source_partition: row.source_partition,
                    source_offset: row.source_offset,
                    dest_topic: row.dest_topic,
                    dest_tag: row.dest_tag,
                    key: row.msg_key,
                    headers,
                    payload: row.payload,
                    error_kind,
                    error_message: row.error_message,
                    first_retry: None,
                },
                attempts: row.attempts,
                status,
                next_attempt_at: row.next_attempt_at,
                created_at: row.created_at,
                updated_at: row.updated_at,
            })
        }
    }

    #[derive(sqlx::FromRow)]
    pub struct AttemptRow {
        pub attempt: i32,
        pub at: i64,
        pub actor: String,
        pub outcome: String,
        pub message: String,
    }

    impl TryFrom<AttemptRow> for Attempt {
        type Error = StoreError;
        fn try_from(row: AttemptRow) -> Result<Self, StoreError> {
            Ok(Attempt {
                attempt: row.attempt,
                at: row.at,
                outcome: row.outcome.parse().map_err(StoreError::Corrupt)?,
                actor: row.actor,
                message: row.message,
            })
        }
    }

    pub const INSERT_ATTEMPT: &str = "INSERT INTO dead_letter_attempts \
        (dead_letter_id, attempt, at, actor, outcome, message) VALUES (?, ?, ?, ?, ?, ?)";

    #[derive(sqlx::FromRow)]
    pub struct TokenRow {
        pub name: String,
        pub role: String,
        pub created_at: i64,
        pub created_by: String,
        pub revoked_at: Option<i64>,
    }

    impl TryFrom<TokenRow> for Token {
        type Error = StoreError;
        fn try_from(row: TokenRow) -> Result<Self, StoreError> {
            let role = row.role.parse().map_err(StoreError::Corrupt)?;
            Ok(Token {
                name: row.name,
                role,
                created_at: row.created_at,
                created_by: row.created_by,
                revoked_at: row.revoked_at,
            })
        }
    }

    pub const SELECT_TOKEN_BY_HASH: &str =
        "SELECT name, role, created_at, created_by, revoked_at FROM tokens \
        WHERE hash = ? AND revoked_at IS NULL";
    pub const SELECT_TOKENS: &str =
        "SELECT name, role, created_at, created_by, revoked_at FROM tokens ORDER BY name";

    #[derive(sqlx::FromRow)]
    pub struct AuditRow {
        pub id: i64,
        pub at: i64,
        pub actor: String,
        pub action: String,
        pub target: String,
        pub before_json: Option<String>,
        pub after_json: Option<String>,
    }

    impl TryFrom<AuditRow> for AuditEntry {
        type Error = StoreError;
        fn try_from(row: AuditRow) -> Result<Self, StoreError> {
            let parse = |text: Option<String>| {
                text.map(|t| serde_json::from_str(&t))
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(format!("audit {}: {e}", row.id)))
            };
            Ok(AuditEntry {
                id: row.id,
                at: row.at,
                before: parse(row.before_json)?,
                after: parse(row.after_json)?,
                actor: row.actor,
                action: row.action,
                target: row.target,
            })
        }
    }

    pub const INSERT_AUDIT: &str =
        "INSERT INTO audit (at, actor, action, target, before_json, after_json) VALUES (?, ?, ?, ?, ?, ?)";

    pub const DEAD_LETTER_COLUMNS: &str = "id, letter_id, pigeon_id, pigeon_version, source_topic, \
        source_partition, source_offset, dest_topic, dest_tag, msg_key, headers, payload, error_kind, \
        error_message, attempts, status, next_attempt_at, created_at, updated_at";

    pub const INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters (letter_id, pigeon_id, pigeon_version, \
        source_topic, source_partition, source_offset, dest_topic, dest_tag, msg_key, headers, payload, \
        error_kind, error_message, attempts, status, next_attempt_at, created_at, updated_at) \
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)";

    /// The conditions of a filter, each with one `?` bound by [`bind_dead_letter_filter!`] in
    /// this order.
    pub fn filter_sql(filter: &DeadLetterFilter) -> String {
        let mut sql = String::from("1 = 1");
        if filter.pigeon_id.is_some() {
            sql.push_str(" AND pigeon_id = ?");
        }
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.error_kind.is_some() {
            sql.push_str(" AND error_kind = ?");
        }
        if filter.since.is_some() {
            sql.push_str(" AND created_at >= ?");
        }
        sql
    }

    /// The conditions of a selection, bound by [`bind_selection!`].
    pub fn selection_sql(selection: &Selection) -> String {
        match selection {
            Selection::Ids(ids) if ids.is_empty() => "1 = 0".into(),
            Selection::Ids(ids) => format!("id IN ({})", vec!["?"; ids.len()].join(", ")),
            Selection::Filter(filter) => filter_sql(filter),
        }
    }

    /// A selection as the audit log records it.
    pub fn selection_json(selection: &Selection, count: u64) -> String {
        let what = match selection {
            Selection::Ids(ids) => serde_json::json!({ "ids": ids, "count": count }),
            Selection::Filter(filter) => serde_json::json!({ "filter": filter, "count": count }),
        };
        what.to_string()
    }

    /// Statuses an operator may retry, discard or edit.
    pub const OPERABLE: &str = "status IN ('pending', 'parked')";
}

/// Binds a [`NewDeadLetter`] to [`rows::INSERT_DEAD_LETTER`], for either backend.
macro_rules! bind_dead_letter {
    ($query:expr, $dl:expr, $now:expr) => {{
        let dl = $dl;
        // Once: the row's times must agree to the millisecond.
        let now: i64 = $now;
        let status = dl.initial_status();
        let next_attempt = match (status, dl.first_retry) {
            ($crate::deadletter::Status::Pending, Some(delay)) => Some(now + delay.as_millis() as i64),
            _ => None,
        };
        $query
            .bind(&dl.letter_id)
            .bind(&dl.pigeon_id)
            .bind(dl.pigeon_version)
            .bind(&dl.source_topic)
            .bind(dl.source_partition)
            .bind(dl.source_offset)
            .bind(&dl.dest_topic)
            .bind(&dl.dest_tag)
            .bind(&dl.key)
            .bind($crate::store::rows::headers_json(&dl.headers))
            .bind(&dl.payload)
            .bind(dl.error_kind.as_str())
            .bind(&dl.error_message)
            .bind(status.as_str())
            .bind(next_attempt)
            .bind(now)
            .bind(now)
    }};
}
pub(crate) use bind_dead_letter;

/// The audit entry of one mutation, to run in its transaction: when, who, what, on what, and
/// the thing before and after (JSON text, `None` when it did not exist).
macro_rules! audit_entry {
    ($at:expr, $actor:expr, $action:expr, $target:expr, $before:expr, $after:expr) => {
        sqlx::query($crate::store::rows::INSERT_AUDIT)
            .bind($at)
            .bind($actor)
            .bind($action)
            .bind($target)
            .bind($before)
            .bind($after)
    };
}
pub(crate) use audit_entry;

/// Binds the conditions of [`rows::filter_sql`], in order.
macro_rules! bind_dead_letter_filter {
    ($query:expr, $filter:expr) => {{
        let mut query = $query;
        let filter: &$crate::deadletter::DeadLetterFilter = $filter;
        if let Some(pigeon) = &filter.pigeon_id {
            query = query.bind(pigeon.clone());
        }
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(kind) = filter.error_kind {
            query = query.bind(kind.as_str());
        }
        if let Some(since) = filter.since {
            query = query.bind(since);
        }
        query
    }};
}
pub(crate) use bind_dead_letter_filter;

/// Binds the conditions of [`rows::selection_sql`], in order.
macro_rules! bind_selection {
    ($query:expr, $selection:expr) => {{
        match $selection {
            $crate::deadletter::Selection::Ids(ids) => {
                let mut query = $query;
                for id in ids {
                    query = query.bind(*id);
                }
                query
            }
            $crate::deadletter::Selection::Filter(filter) => {
                $crate::store::bind_dead_letter_filter!($query, filter)
            }
        }
    }};
}
pub(crate) use bind_selection;
