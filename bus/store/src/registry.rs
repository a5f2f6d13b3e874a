//! Module instances as they register, the capabilities they declare and the tags they fly.

use std::collections::HashSet;

use async_trait::async_trait;
use pigeon_wire::registry::{CapabilityInfo, Registration};

use super::sql::{Dialect, SqlStore};
use super::StoreError;

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
    /// It missed [`pigeon_wire::registry::MISSED_HEARTBEATS`] heartbeats.
    Stale,
    /// It shut down and said so.
    Left,
}

impl ModuleInstance {
    /// Its state at `now` (unix ms).
    pub fn state(&self, now: i64) -> InstanceState {
        let missed = pigeon_wire::registry::MISSED_HEARTBEATS as i64;
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

/// The modules' registrations. Capability changes are audited; heartbeats are not.
#[async_trait]
pub trait RegistryStore: Send + Sync {
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

    /// The tags modules declare they fly, by module and tag.
    async fn declared_tags(&self) -> Result<Vec<DeclaredTag>, StoreError>;
}

#[derive(sqlx::FromRow)]
struct InstanceRow {
    module: String,
    instance: String,
    host: String,
    version: String,
    topic: String,
    lanes: String,
    capabilities: String,
    heartbeat_ms: i64,
    started_at: i64,
    last_seen: i64,
    left_at: Option<i64>,
}

const SELECT_INSTANCES: &str = "SELECT module, instance, host, version, topic, lanes, capabilities, \
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
struct CapabilityRow {
    module: String,
    name: String,
    description: String,
    requires: String,
    first_seen: i64,
    updated_at: i64,
    retired_at: Option<i64>,
}

const SELECT_CAPABILITIES: &str =
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
fn capability_json(module: &str, c: &CapabilityInfo) -> String {
    serde_json::json!({ "module": module, "name": c.name, "description": c.description, "requires": c.requires })
        .to_string()
}

#[async_trait]
impl<DB: Dialect> RegistryStore for SqlStore<DB> {
    async fn record_registration(
        &self,
        registration: &Registration,
        at: i64,
    ) -> Result<RegistrationChanges, StoreError> {
        let reg = registration;
        let json = |v: &Vec<String>| serde_json::to_string(v).expect("strings serialize");
        let declared: Vec<String> = reg.capabilities.iter().map(|c| c.name.clone()).collect();
        let left_at = reg.leaving.then_some(at);
        let mut changes = RegistrationChanges::default();
        let mut tx = self.begin().await?;
        let existing: Option<(i64,)> = sqlx::query_as(&format!(
            "SELECT started_at FROM module_instances WHERE module = ? AND instance = ?{}",
            DB::LOCK_ROW
        ))
        .bind(&reg.module)
        .bind(&reg.instance)
        .fetch_optional(&mut *tx)
        .await?;
        if existing.is_some() {
            sqlx::query(
                "UPDATE module_instances SET host = ?, version = ?, topic = ?, lanes = ?, capabilities = ?, \
                 heartbeat_ms = ?, last_seen = ?, left_at = ? WHERE module = ? AND instance = ?",
            )
            .bind(&reg.host)
            .bind(&reg.version)
            .bind(&reg.topic)
            .bind(json(&reg.lanes))
            .bind(json(&declared))
            .bind(i64::try_from(reg.heartbeat_ms).unwrap_or(i64::MAX))
            .bind(at)
            .bind(left_at)
            .bind(&reg.module)
            .bind(&reg.instance)
            .execute(&mut *tx)
            .await?;
        } else {
            changes.new_instance = true;
            sqlx::query(
                "INSERT INTO module_instances (module, instance, host, version, topic, lanes, capabilities, \
                 heartbeat_ms, started_at, last_seen, left_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&reg.module)
            .bind(&reg.instance)
            .bind(&reg.host)
            .bind(&reg.version)
            .bind(&reg.topic)
            .bind(json(&reg.lanes))
            .bind(json(&declared))
            .bind(i64::try_from(reg.heartbeat_ms).unwrap_or(i64::MAX))
            .bind(at)
            .bind(at)
            .bind(left_at)
            .execute(&mut *tx)
            .await?;
        }
        if reg.leaving {
            // A module that stops has not given its capabilities up.
            tx.commit().await?;
            return Ok(changes);
        }
        // What it flies, as its latest registration declares.
        sqlx::query("DELETE FROM declared_tags WHERE module = ?").bind(&reg.module).execute(&mut *tx).await?;
        // One row per tag as the key compares it (the registry refuses duplicates; a caller
        // that did not check must not make the whole registration fail).
        let mut tags = HashSet::new();
        let tag = |tag: &str| tag.chars().take(191).collect::<String>();
        for flown in reg.flies.iter().filter(|f| tags.insert(tag(&f.tag).to_lowercase())) {
            sqlx::query("INSERT INTO declared_tags (module, tag, fields, updated_at) VALUES (?, ?, ?, ?)")
                .bind(&reg.module)
                .bind(tag(&flown.tag))
                .bind(serde_json::to_string(&flown.fields).expect("field names serialize"))
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        let actor = format!("module:{}", reg.module);
        let audit = |action: &'static str, name: &str, before: Option<String>, after: Option<String>| {
            Self::audit_entry(at, &actor, action, format!("capability/{}/{name}", reg.module), before, after)
        };
        let current: Vec<CapabilityRow> = sqlx::query_as(&format!("{SELECT_CAPABILITIES} WHERE module = ?"))
            .bind(&reg.module)
            .fetch_all(&mut *tx)
            .await?;
        let current: Vec<CapabilityRecord> =
            current.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?;
        for capability in &reg.capabilities {
            let after = Some(capability_json(&reg.module, capability));
            match current.iter().find(|c| c.name == capability.name) {
                None => {
                    sqlx::query(
                        "INSERT INTO capabilities (module, name, description, requires, first_seen, updated_at) \
                         VALUES (?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&reg.module)
                    .bind(&capability.name)
                    .bind(&capability.description)
                    .bind(json(&capability.requires))
                    .bind(at)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                    audit("capability.register", &capability.name, None, after).execute(&mut *tx).await?;
                    changes.added.push(capability.name.clone());
                }
                Some(known)
                    if known.retired_at.is_some()
                        || known.description != capability.description
                        || known.requires != capability.requires =>
                {
                    sqlx::query(
                        "UPDATE capabilities SET description = ?, requires = ?, updated_at = ?, retired_at = NULL \
                         WHERE module = ? AND name = ?",
                    )
                    .bind(&capability.description)
                    .bind(json(&capability.requires))
                    .bind(at)
                    .bind(&reg.module)
                    .bind(&capability.name)
                    .execute(&mut *tx)
                    .await?;
                    let before = CapabilityInfo {
                        name: known.name.clone(),
                        description: known.description.clone(),
                        requires: known.requires.clone(),
                    };
                    let before = Some(capability_json(&reg.module, &before));
                    audit("capability.update", &capability.name, before, after).execute(&mut *tx).await?;
                    changes.updated.push(capability.name.clone());
                }
                Some(_) => {}
            }
        }
        // Retire what no live instance of the module declares (a rolling deploy keeps a
        // capability while an older instance that has it still runs).
        let instances: Vec<InstanceRow> = sqlx::query_as(&format!("{SELECT_INSTANCES} WHERE module = ?"))
            .bind(&reg.module)
            .fetch_all(&mut *tx)
            .await?;
        let mut still_declared: HashSet<String> = declared.iter().cloned().collect();
        for row in instances {
            let instance = ModuleInstance::try_from(row)?;
            if instance.state(at) == InstanceState::Live {
                still_declared.extend(instance.capabilities);
            }
        }
        for known in current.iter().filter(|c| c.retired_at.is_none() && !still_declared.contains(&c.name)) {
            sqlx::query(
                "UPDATE capabilities SET retired_at = ?, updated_at = ? WHERE module = ? AND name = ?",
            )
            .bind(at)
            .bind(at)
            .bind(&reg.module)
            .bind(&known.name)
            .execute(&mut *tx)
            .await?;
            audit("capability.retire", &known.name, None, None).execute(&mut *tx).await?;
            changes.retired.push(known.name.clone());
        }
        tx.commit().await?;
        Ok(changes)
    }

    async fn module_instances(&self) -> Result<Vec<ModuleInstance>, StoreError> {
        let rows: Vec<InstanceRow> = sqlx::query_as(&format!("{SELECT_INSTANCES} ORDER BY module, instance"))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn capabilities(&self) -> Result<Vec<CapabilityRecord>, StoreError> {
        let rows: Vec<CapabilityRow> =
            sqlx::query_as(&format!("{SELECT_CAPABILITIES} ORDER BY module, name"))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn declared_tags(&self) -> Result<Vec<DeclaredTag>, StoreError> {
        let rows: Vec<(String, String, String, i64)> =
            sqlx::query_as("SELECT module, tag, fields, updated_at FROM declared_tags ORDER BY module, tag")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(module, tag, fields, updated_at)| {
                let fields = serde_json::from_str(&fields)
                    .map_err(|e| StoreError::Corrupt(format!("declared tag {module}/{tag}: {e}")))?;
                Ok(DeclaredTag { module, tag, fields, updated_at })
            })
            .collect()
    }
}
