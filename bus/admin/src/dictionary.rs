//! `/api/v1/dictionary`: the global field names with their types and aliases.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{AsOperator, AsViewer};
use super::error::{ApiError, ErrorBody};
use super::{ApiJson, AppState};
use pigeon_bus::dictionary::{self, Field};
use pigeon_bus::store::{Drift, StoredField};

/// A dictionary field with its version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FieldView {
    /// The field.
    #[serde(flatten)]
    pub field: Field,
    /// Version, bumped by every change.
    pub version: i64,
    /// When this version was saved (unix ms; 0 for the seeded vocabulary).
    pub updated_at: i64,
}

impl From<StoredField> for FieldView {
    fn from(f: StoredField) -> Self {
        Self { field: f.field, version: f.version, updated_at: f.updated_at }
    }
}

/// The whole dictionary, by name.
#[utoipa::path(get, path = "/dictionary", tag = "dictionary",
    responses((status = 200, body = Vec<FieldView>), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(_: AsViewer, State(state): State<AppState>) -> Result<Json<Vec<FieldView>>, ApiError> {
    Ok(Json(state.store.dictionary().await?.into_iter().map(FieldView::from).collect()))
}

/// Create or change a field (a new version; the same one if nothing changed).
#[utoipa::path(put, path = "/dictionary/{name}", tag = "dictionary", request_body = Field,
    params(("name" = String, Path, description = "field name")),
    responses((status = 200, body = FieldView), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn put(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(field): ApiJson<Field>,
) -> Result<Json<FieldView>, ApiError> {
    if field.name != name {
        return Err(ApiError::invalid(
            "invalid_field",
            "the body's name differs from the path's",
            vec![format!("name {:?} in the body, {name:?} in the path", field.name)],
        ));
    }
    let others: Vec<Field> = state.store.dictionary().await?.into_iter().map(|f| f.field).collect();
    dictionary::validate(&field, &others)
        .map_err(|problems| ApiError::invalid("invalid_field", "the field is invalid", problems))?;
    if state.store.save_field(&field, &caller.name).await?.changed {
        // Pigeons that hold letters to the dictionary pick the change up at once.
        super::pigeons::announce(&state, Vec::new(), &caller.name);
    }
    let saved = state.store.dictionary().await?.into_iter().find(|f| f.field.name == name);
    Ok(Json(saved.ok_or_else(|| ApiError::not_found(format!("field {name:?}")))?.into()))
}

/// Delete a field; answers it as it was.
#[utoipa::path(delete, path = "/dictionary/{name}", tag = "dictionary",
    params(("name" = String, Path, description = "field name")),
    responses((status = 200, body = FieldView), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<FieldView>, ApiError> {
    match state.store.delete_field(&name, &caller.name).await? {
        Some(deleted) => {
            super::pigeons::announce(&state, Vec::new(), &caller.name);
            Ok(Json(deleted.into()))
        }
        None => Err(ApiError::not_found(format!("field {name:?}"))),
    }
}

/// The drift report: top-level fields the dictionary does not know, per source topic, most
/// seen first. Counted by routers running pigeons in `normalize` or `enforce` mode (the only
/// ones that read payloads), every few seconds.
#[utoipa::path(get, path = "/dictionary/drift", tag = "dictionary",
    responses((status = 200, body = Vec<Drift>), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn drift(_: AsViewer, State(state): State<AppState>) -> Result<Json<Vec<Drift>>, ApiError> {
    Ok(Json(state.store.drift().await?))
}

/// Which source schemas to show.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SchemaParams {
    /// Only this source topic's.
    pub topic: Option<String>,
}

/// What one tag of one source topic carries: as declared in the bus's source-topic settings,
/// and as observed in the letters routers sample.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SourceSchema {
    /// Source topic.
    pub topic: String,
    /// Tag.
    pub tag: String,
    /// The fields every declaration of it promises, if it is declared: in the bus's
    /// source-topic settings (`sources."TOPIC".fields."TAG"`), or by the modules that fly it
    /// (on `pigeon.ingress`).
    pub declared: Option<Vec<String>>,
    /// Who declared it: `settings`, `module:NAME`.
    pub declared_by: Vec<String>,
    /// Letters sampled (0 when none was).
    pub sampled: i64,
    /// The last sample (unix ms), if any.
    pub last_seen: Option<i64>,
    /// Each field and JSON type seen, with the share of sampled letters that had it.
    pub observed: Vec<ObservedFieldView>,
}

/// A field seen in sampled letters.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ObservedFieldView {
    /// The field name.
    pub field: String,
    /// Its JSON type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Sampled letters that had it with that type.
    pub seen: i64,
    /// `seen / sampled`, from 0 to 1.
    pub frequency: f64,
}

/// Source schemas, declared and observed, by topic and tag.
#[utoipa::path(get, path = "/schemas", tag = "dictionary", params(SchemaParams),
    responses((status = 200, body = Vec<SourceSchema>), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn schemas(
    _: AsViewer,
    State(state): State<AppState>,
    axum::extract::Query(params): axum::extract::Query<SchemaParams>,
) -> Result<Json<Vec<SourceSchema>>, ApiError> {
    let topic = params.topic.as_deref();
    let mut schemas: std::collections::BTreeMap<(String, String), SourceSchema> = Default::default();
    for observed in state.store.observed(topic).await? {
        let sampled = observed.sampled.max(1) as f64;
        let fields = observed
            .fields
            .into_iter()
            .map(|f| ObservedFieldView {
                frequency: f.seen as f64 / sampled,
                field: f.field,
                kind: f.kind,
                seen: f.seen,
            })
            .collect();
        let key = (observed.topic.clone(), observed.tag.clone());
        schemas.insert(
            key,
            SourceSchema {
                topic: observed.topic,
                tag: observed.tag,
                declared: None,
                declared_by: Vec::new(),
                sampled: observed.sampled,
                last_seen: Some(observed.last_seen),
                observed: fields,
            },
        );
    }
    let mut declare = |source: &str, tag: &str, fields: &[String], by: String| {
        let schema = schemas.entry((source.to_owned(), tag.to_owned())).or_insert_with(|| SourceSchema {
            topic: source.to_owned(),
            tag: tag.to_owned(),
            declared: None,
            declared_by: Vec::new(),
            sampled: 0,
            last_seen: None,
            observed: Vec::new(),
        });
        // What every declaration promises.
        schema.declared = Some(match schema.declared.take() {
            None => fields.to_vec(),
            Some(before) => before.into_iter().filter(|f| fields.contains(f)).collect(),
        });
        schema.declared_by.push(by);
    };
    for (source, config) in state.sources.iter() {
        for (tag, fields) in &config.fields {
            declare(source, tag, fields, "settings".into());
        }
    }
    for declared in state.store.declared_tags().await? {
        declare(
            pigeon_bus::route::INGRESS,
            &declared.tag,
            &declared.fields,
            format!("module:{}", declared.module),
        );
    }
    Ok(Json(schemas.into_values().filter(|s| topic.is_none_or(|want| want == s.topic)).collect()))
}
