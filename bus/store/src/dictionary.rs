//! The dictionary of fields, the drift report and the observed source schemas.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::Transaction;

use super::sql::{values, Dialect, SqlStore};
use super::{now_ms, Saved, StoreError};
use pigeon_core::dictionary::{Drift, Field, Observed, ObservedField};

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

/// The dictionary and what letters carry beside it. Field changes are audited in their
/// transaction.
#[async_trait]
pub trait DictionaryStore: Send + Sync {
    /// The dictionary, by name.
    async fn dictionary(&self) -> Result<Vec<StoredField>, StoreError>;

    /// Creates or changes a dictionary field: a new version, audited. An identical field
    /// changes nothing. The caller checks it against the rest ([`pigeon_core::dictionary::validate`]).
    async fn save_field(&self, field: &Field, actor: &str) -> Result<Saved, StoreError>;

    /// Deletes a dictionary field, audited; returns it as it was.
    async fn delete_field(&self, name: &str, actor: &str) -> Result<Option<StoredField>, StoreError>;

    /// Adds sightings of fields the dictionary does not know to the drift report, in one
    /// transaction.
    async fn record_drift(&self, sightings: &[Drift]) -> Result<(), StoreError>;

    /// The drift report, most seen first.
    async fn drift(&self) -> Result<Vec<Drift>, StoreError>;

    /// Adds sampled letters' fields to the observed source schemas, in one transaction.
    async fn record_observed(&self, observed: &[Observed]) -> Result<(), StoreError>;

    /// The observed source schemas (of one topic, or all), by topic and tag.
    async fn observed(&self, topic: Option<&str>) -> Result<Vec<Observed>, StoreError>;
}

#[derive(sqlx::FromRow)]
struct FieldRow {
    name: String,
    kind: String,
    description: String,
    aliases: String,
    version: i64,
    updated_at: i64,
}

/// The columns of [`FieldRow`].
const SELECT_FIELDS: &str = "SELECT name, kind, description, aliases, version, updated_at FROM dictionary";

impl TryFrom<FieldRow> for StoredField {
    type Error = StoreError;
    fn try_from(row: FieldRow) -> Result<Self, StoreError> {
        let kind = row.kind.parse().map_err(StoreError::Corrupt)?;
        let aliases = serde_json::from_str(&row.aliases)
            .map_err(|e| StoreError::Corrupt(format!("aliases of field {}: {e}", row.name)))?;
        let field = Field { name: row.name, kind, description: row.description, aliases };
        Ok(StoredField { field, version: row.version, updated_at: row.updated_at })
    }
}

/// A field as the audit log shows it.
fn field_json(field: &Field) -> String {
    serde_json::to_string(field).expect("a field serializes")
}

/// Rows per multi-row `INSERT` of the drift and observed tables.
const CHUNK: usize = 500;

#[async_trait]
impl<DB: Dialect> DictionaryStore for SqlStore<DB> {
    async fn dictionary(&self) -> Result<Vec<StoredField>, StoreError> {
        let rows: Vec<FieldRow> =
            sqlx::query_as(&format!("{SELECT_FIELDS} ORDER BY name")).fetch_all(&self.pool).await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn save_field(&self, field: &Field, actor: &str) -> Result<Saved, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let before = Self::field_for_update(&mut tx, &field.name).await?;
        if let Some(before) = &before {
            if before.field == *field {
                return Ok(Saved { version: before.version, changed: false });
            }
        }
        let version = before.as_ref().map_or(1, |b| b.version + 1);
        let aliases = serde_json::to_string(&field.aliases).expect("aliases serialize");
        let sql = match before {
            Some(_) => {
                "UPDATE dictionary SET kind = ?, description = ?, aliases = ?, version = ?, updated_at = ? \
                 WHERE name = ?"
            }
            None => {
                "INSERT INTO dictionary (kind, description, aliases, version, updated_at, name) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            }
        };
        sqlx::query(sql)
            .bind(field.kind.as_str())
            .bind(&field.description)
            .bind(aliases)
            .bind(version)
            .bind(now)
            .bind(&field.name)
            .execute(&mut *tx)
            .await?;
        let action = if before.is_some() { "dictionary.update" } else { "dictionary.create" };
        let before = before.as_ref().map(|b| field_json(&b.field));
        Self::audit_entry(
            now,
            actor,
            action,
            format!("dictionary/{}", field.name),
            before,
            Some(field_json(field)),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Saved { version, changed: true })
    }

    async fn delete_field(&self, name: &str, actor: &str) -> Result<Option<StoredField>, StoreError> {
        let mut tx = self.begin().await?;
        let Some(before) = Self::field_for_update(&mut tx, name).await? else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM dictionary WHERE name = ?").bind(name).execute(&mut *tx).await?;
        let target = format!("dictionary/{name}");
        Self::audit_entry(
            now_ms(),
            actor,
            "dictionary.delete",
            target,
            Some(field_json(&before.field)),
            None,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(before))
    }

    async fn record_drift(&self, sightings: &[Drift]) -> Result<(), StoreError> {
        if sightings.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for chunk in sightings.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO dictionary_drift (topic, field, seen, first_seen, last_seen){}{}",
                values(chunk.len(), 5),
                DB::upsert_add("topic, field", &["seen"], &["last_seen"])
            );
            let mut query = sqlx::query(&sql);
            for s in chunk {
                query = query.bind(&s.topic).bind(&s.field).bind(s.seen).bind(s.first_seen).bind(s.last_seen);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn drift(&self) -> Result<Vec<Drift>, StoreError> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT topic, field, seen, first_seen, last_seen FROM dictionary_drift \
             ORDER BY seen DESC, topic, field",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(topic, field, seen, first_seen, last_seen)| Drift {
                topic,
                field,
                seen,
                first_seen,
                last_seen,
            })
            .collect())
    }

    async fn record_observed(&self, observed: &[Observed]) -> Result<(), StoreError> {
        if observed.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for chunk in observed.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO observed_tags (topic, tag, sampled, last_seen){}{}",
                values(chunk.len(), 4),
                DB::upsert_add("topic, tag", &["sampled"], &["last_seen"])
            );
            let mut query = sqlx::query(&sql);
            for o in chunk {
                query = query.bind(&o.topic).bind(&o.tag).bind(o.sampled).bind(o.last_seen);
            }
            query.execute(&mut *tx).await?;
        }
        let fields: Vec<(&str, &str, &ObservedField)> = observed
            .iter()
            .flat_map(|o| o.fields.iter().map(move |f| (o.topic.as_str(), o.tag.as_str(), f)))
            .collect();
        for chunk in fields.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO observed_fields (topic, tag, field, kind, seen){}{}",
                values(chunk.len(), 5),
                DB::upsert_add("topic, tag, field, kind", &["seen"], &[])
            );
            let mut query = sqlx::query(&sql);
            for (topic, tag, f) in chunk {
                query = query.bind(*topic).bind(*tag).bind(&f.field).bind(&f.kind).bind(f.seen);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn observed(&self, topic: Option<&str>) -> Result<Vec<Observed>, StoreError> {
        let topic = topic.map(str::to_owned);
        let tags: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT topic, tag, sampled, last_seen FROM observed_tags \
             WHERE (? IS NULL OR topic = ?) ORDER BY topic, tag",
        )
        .bind(&topic)
        .bind(&topic)
        .fetch_all(&self.pool)
        .await?;
        let fields: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT topic, tag, field, kind, seen FROM observed_fields \
             WHERE (? IS NULL OR topic = ?) ORDER BY topic, tag, field, kind",
        )
        .bind(&topic)
        .bind(&topic)
        .fetch_all(&self.pool)
        .await?;
        let mut by_tag: BTreeMap<(String, String), Vec<ObservedField>> = BTreeMap::new();
        for (topic, tag, field, kind, seen) in fields {
            by_tag.entry((topic, tag)).or_default().push(ObservedField { field, kind, seen });
        }
        Ok(tags
            .into_iter()
            .map(|(topic, tag, sampled, last_seen)| {
                let fields = by_tag.remove(&(topic.clone(), tag.clone())).unwrap_or_default();
                Observed { topic, tag, sampled, last_seen, fields }
            })
            .collect())
    }
}

impl<DB: Dialect> SqlStore<DB> {
    /// A dictionary field, locked for the rest of the transaction.
    async fn field_for_update(
        tx: &mut Transaction<'_, DB>,
        name: &str,
    ) -> Result<Option<StoredField>, StoreError> {
        let row: Option<FieldRow> =
            sqlx::query_as(&format!("{SELECT_FIELDS} WHERE name = ?{}", DB::LOCK_ROW))
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
        row.map(TryInto::try_into).transpose()
    }
}
