//! `/api/v1/pigeons`: create, read, update (a new version), enable/disable, delete, list,
//! validate, and apply a whole set atomically.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{AsOperator, AsViewer, Caller};
use super::error::{ApiError, ErrorBody};
use super::{ApiJson, ApiQuery, AppState, Page};
use pigeon_bus::dryrun::{dry_run_pigeon, DryRunOutput, SampleLetter};
use pigeon_bus::route::{self, parse_spec, Phase, PigeonSpec};
use pigeon_bus::script;
use pigeon_bus::store::{now_ms, StoredPigeon};
use pigeon_bus::token::Role;
use pigeon_bus::wiring;
use pigeon_core::script::Budget;

/// A pigeon with its version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PigeonView {
    /// The pigeon as written.
    #[serde(flatten)]
    pub spec: PigeonSpec,
    /// Version, bumped by every change.
    pub version: i64,
    /// When this version was saved (unix ms).
    pub updated_at: i64,
    /// Where it stands now.
    pub state: PigeonState,
    /// Why it is quarantined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// What saving it could not check, or overrode (`force`): see checked wiring.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Where a pigeon stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PigeonState {
    /// Switched off.
    Disabled,
    /// Its live window has not started.
    Scheduled,
    /// Flying.
    Live,
    /// Its live window is over.
    Ended,
    /// It does not compile (saved by an older bus, say): routers leave it out.
    Quarantined,
}

impl PigeonState {
    /// The name operators read.
    pub fn as_str(self) -> &'static str {
        match self {
            PigeonState::Disabled => "disabled",
            PigeonState::Scheduled => "scheduled",
            PigeonState::Live => "live",
            PigeonState::Ended => "ended",
            PigeonState::Quarantined => "quarantined",
        }
    }
}

impl From<StoredPigeon> for PigeonView {
    fn from(p: StoredPigeon) -> Self {
        let (state, problems) = match route::standing(&p.versioned(), now_ms()) {
            _ if !p.spec.enabled => (PigeonState::Disabled, Vec::new()),
            Ok(Phase::Scheduled) => (PigeonState::Scheduled, Vec::new()),
            Ok(Phase::Live) => (PigeonState::Live, Vec::new()),
            Ok(Phase::Ended) => (PigeonState::Ended, Vec::new()),
            Err(problems) => (PigeonState::Quarantined, problems),
        };
        Self {
            spec: p.spec,
            version: p.version,
            updated_at: p.updated_at,
            state,
            problems,
            warnings: Vec::new(),
        }
    }
}

/// Tells every running instance that pigeons (or what they check letters against) changed.
pub(crate) fn announce(state: &AppState, pigeons: Vec<String>, actor: &str) {
    if let Some(producer) = &state.producer {
        pigeon_bus::control::notify(producer, pigeons, actor);
    }
}

/// Filters and paging of the pigeon list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PigeonQuery {
    /// Only this owner's pigeons.
    pub owner: Option<String>,
    /// Only enabled (`true`) or disabled (`false`) pigeons.
    pub enabled: Option<bool>,
    /// Only pigeons reading this source topic.
    pub topic: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Parses and validates a pigeon; every problem at once.
pub fn checked_spec(value: serde_json::Value) -> Result<PigeonSpec, ApiError> {
    parse_spec(value).map_err(|d| ApiError::invalid("invalid_pigeon", "the pigeon is invalid", d))
}

/// Whether to save a pigeon whose wiring does not check out.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ForceQuery {
    /// Save even if a destination requires a field the source letters do not carry (the
    /// override is audited as `pigeon.force`).
    #[serde(default)]
    pub force: bool,
}

/// What is known about each of `topics`' letters and about the capabilities pigeons send to:
/// the capabilities, the dictionary and the modules' declarations are read once for all.
async fn evidence(
    state: &AppState,
    topics: &std::collections::BTreeSet<&str>,
) -> Result<BTreeMap<String, wiring::Evidence>, ApiError> {
    let now = now_ms();
    // What routers check letters against: the dictionary and every live capability's fields.
    let (contracts, _) = pigeon_bus::control::load_contracts(state.store.as_ref()).await?;
    let live: std::collections::HashSet<String> = state
        .store
        .module_instances()
        .await?
        .into_iter()
        .filter(|i| i.state(now) == pigeon_bus::store::InstanceState::Live)
        .map(|i| i.module)
        .collect();
    let capabilities: std::collections::HashMap<String, wiring::CapabilityState> = contracts
        .requires
        .into_iter()
        .map(|(name, requires)| {
            let online = live.contains(name.split('/').next().unwrap_or_default());
            (name, wiring::CapabilityState { requires, online })
        })
        .collect();
    let flown = match topics.contains(route::INGRESS) {
        true => state.store.declared_tags().await?,
        false => Vec::new(),
    };
    let mut evidence = BTreeMap::new();
    for topic in topics {
        let mut declared: Vec<wiring::Declared> = state.sources.get(*topic).map_or_else(Vec::new, |source| {
            let declare = |(tag, fields): (&String, &Vec<String>)| wiring::Declared {
                tag: tag.clone(),
                fields: fields.clone(),
                by: "settings".into(),
            };
            source.fields.iter().map(declare).collect()
        });
        if *topic == route::INGRESS {
            declared.extend(flown.iter().map(|d| wiring::Declared {
                tag: d.tag.clone(),
                fields: d.fields.clone(),
                by: format!("module:{}", d.module),
            }));
        }
        let known = wiring::Evidence {
            declared,
            observed: state.store.observed(Some(topic)).await?,
            capabilities: capabilities.clone(),
            vocabulary: contracts.vocabulary.clone(),
        };
        evidence.insert(topic.to_string(), known);
    }
    Ok(evidence)
}

/// How a wiring check ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checking {
    /// Problems refuse the save.
    Strict,
    /// Problems are audited as overridden, and reported.
    Forced,
    /// Nothing is saved (a dry run): problems are only reported.
    Report,
}

/// Checks pigeons' wiring before they are saved: the problems refuse them, unless forced (then
/// they are audited and become warnings); returns the warnings.
async fn check_wiring(
    state: &AppState,
    budget: &mut Budget,
    specs: &[&PigeonSpec],
    checking: Checking,
    actor: &str,
) -> Result<Vec<String>, ApiError> {
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    if specs.is_empty() {
        return Ok(warnings);
    }
    let topics = specs.iter().map(|s| s.matcher.topic.as_str()).collect();
    let evidence = evidence(state, &topics).await?;
    // Checking a script pigeon runs its script on sample letters: on the API's script threads.
    let owned: Vec<PigeonSpec> = specs.iter().map(|s| (*s).clone()).collect();
    let reports = state
        .scripts
        .run(budget, move || {
            let check = |spec: &PigeonSpec| {
                evidence.get(&spec.matcher.topic).map(|e| wiring::check(spec, e)).unwrap_or_default()
            };
            Ok(owned.iter().map(check).collect::<Vec<_>>())
        })
        .await?;
    for (spec, report) in specs.iter().zip(reports) {
        let prefix =
            |text: String| if specs.len() > 1 { format!("pigeon {:?}: {text}", spec.id) } else { text };
        problems.extend(report.problems.into_iter().map(prefix));
        warnings.extend(report.warnings.into_iter().map(prefix));
    }
    if problems.is_empty() {
        return Ok(warnings);
    }
    match checking {
        Checking::Strict => {
            return Err(ApiError::invalid(
                "unfit_wiring",
                "a destination requires fields the source letters do not carry; fix the wiring, or save with force=true",
                problems,
            ))
        }
        Checking::Report => {
            warnings.extend(problems.into_iter().map(|p| format!("would be refused: {p}")));
            return Ok(warnings);
        }
        Checking::Forced => {}
    }
    let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
    let note = serde_json::json!({ "pigeons": ids, "overridden": problems });
    state.store.audit_note(actor, "pigeon.force", &format!("pigeon/{}", ids.join(",")), &note).await?;
    warnings.extend(problems.into_iter().map(|p| format!("forced: {p}")));
    Ok(warnings)
}

fn checking(force: bool) -> Checking {
    if force {
        Checking::Forced
    } else {
        Checking::Strict
    }
}

async fn current(state: &AppState, id: &str) -> Result<StoredPigeon, ApiError> {
    state.store.pigeon(id).await?.ok_or_else(|| ApiError::not_found(format!("pigeon {id:?}")))
}

/// List pigeons, by id.
#[utoipa::path(get, path = "/pigeons", tag = "pigeons", params(PigeonQuery),
    responses((status = 200, body = Page<PigeonView>), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    _: AsViewer,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PigeonQuery>,
) -> Result<Json<Page<PigeonView>>, ApiError> {
    let limit = super::page_limit(q.limit)?;
    let matching = state.store.pigeons().await?.into_iter().filter(|p| {
        q.owner.as_ref().is_none_or(|o| &p.spec.owner == o)
            && q.enabled.is_none_or(|e| p.spec.enabled == e)
            && q.topic.as_ref().is_none_or(|t| &p.spec.matcher.topic == t)
            && q.cursor.as_ref().is_none_or(|c| &p.spec.id > c)
    });
    let items: Vec<PigeonView> = matching.take(limit + 1).map(PigeonView::from).collect();
    Ok(Json(Page::from_overfetch(items, limit, |p| p.spec.id.clone())))
}

/// Create a pigeon (409 if the id exists). Its wiring is checked first: a destination that
/// requires a field the source letters do not carry refuses it (422 `unfit_wiring`) unless
/// `force=true`; what cannot be checked comes back as `warnings`.
#[utoipa::path(post, path = "/pigeons", tag = "pigeons", request_body = PigeonSpec, params(ForceQuery),
    responses((status = 201, body = PigeonView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn create(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ForceQuery>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<(StatusCode, Json<PigeonView>), ApiError> {
    let mut budget = state.scripts.budget();
    let spec = state.scripts.run(&mut budget, move || checked_spec(body)).await?;
    if state.store.pigeon(&spec.id).await?.is_some() {
        return Err(ApiError::conflict(format!("pigeon {:?} exists; PUT /pigeons/{0} changes it", spec.id)));
    }
    let warnings = check_wiring(&state, &mut budget, &[&spec], checking(query.force), &caller.name).await?;
    state.store.save_pigeon(&spec, &caller.name).await?;
    announce(&state, vec![spec.id.clone()], &caller.name);
    let mut view = PigeonView::from(current(&state, &spec.id).await?);
    view.warnings = warnings;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Validate a pigeon without saving it.
#[utoipa::path(post, path = "/pigeons/validate", tag = "pigeons", request_body = PigeonSpec,
    responses((status = 200, description = "valid"), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn validate(
    _: AsViewer,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.scripts.run(&mut state.scripts.budget(), move || checked_spec(body)).await?;
    Ok(Json(serde_json::json!({ "valid": true })))
}

/// Read one pigeon.
#[utoipa::path(get, path = "/pigeons/{id}", tag = "pigeons", params(("id" = String, Path, description = "pigeon id")),
    responses((status = 200, body = PigeonView), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn get(
    _: AsViewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PigeonView>, ApiError> {
    Ok(Json(current(&state, &id).await?.into()))
}

/// Change a pigeon: a new version (the same one if nothing changed). Its wiring is checked as
/// on create.
#[utoipa::path(put, path = "/pigeons/{id}", tag = "pigeons", request_body = PigeonSpec,
    params(("id" = String, Path, description = "pigeon id"), ForceQuery),
    responses((status = 200, body = PigeonView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn update(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ForceQuery>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<PigeonView>, ApiError> {
    let mut budget = state.scripts.budget();
    let spec = state.scripts.run(&mut budget, move || checked_spec(body)).await?;
    if spec.id != id {
        return Err(ApiError::invalid(
            "invalid_pigeon",
            "the body's id differs from the path's",
            vec![format!("id {:?} in the body, {id:?} in the path", spec.id)],
        ));
    }
    let before = current(&state, &id).await?;
    let warnings = match before.spec == spec {
        true => Vec::new(),
        false => check_wiring(&state, &mut budget, &[&spec], checking(query.force), &caller.name).await?,
    };
    if state.store.save_pigeon(&spec, &caller.name).await?.changed {
        announce(&state, vec![id.clone()], &caller.name);
    }
    let mut view = PigeonView::from(current(&state, &id).await?);
    view.warnings = warnings;
    Ok(Json(view))
}

/// Delete a pigeon (its version history stays).
#[utoipa::path(delete, path = "/pigeons/{id}", tag = "pigeons", params(("id" = String, Path, description = "pigeon id")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_pigeon(&id, &caller.name).await? {
        announce(&state, vec![id], &caller.name);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("pigeon {id:?}")))
    }
}

async fn set_enabled(
    caller: Caller,
    state: AppState,
    id: String,
    enabled: bool,
) -> Result<Json<PigeonView>, ApiError> {
    let mut spec = current(&state, &id).await?.spec;
    spec.enabled = enabled;
    if state.store.save_pigeon(&spec, &caller.name).await?.changed {
        announce(&state, vec![id.clone()], &caller.name);
    }
    Ok(Json(current(&state, &id).await?.into()))
}

/// Enable a pigeon.
#[utoipa::path(post, path = "/pigeons/{id}/enable", tag = "pigeons", params(("id" = String, Path, description = "pigeon id")),
    responses((status = 200, body = PigeonView), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn enable(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PigeonView>, ApiError> {
    set_enabled(caller, state, id, true).await
}

/// Disable a pigeon: kept, but it matches nothing.
#[utoipa::path(post, path = "/pigeons/{id}/disable", tag = "pigeons", params(("id" = String, Path, description = "pigeon id")),
    responses((status = 200, body = PigeonView), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn disable(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PigeonView>, ApiError> {
    set_enabled(caller, state, id, false).await
}

/// Every saved version of a pigeon, oldest first.
#[utoipa::path(get, path = "/pigeons/{id}/versions", tag = "pigeons", params(("id" = String, Path, description = "pigeon id")),
    responses((status = 200, body = Vec<PigeonView>), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn versions(
    _: AsViewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<PigeonView>>, ApiError> {
    let versions = state.store.pigeon_versions(&id).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("pigeon {id:?}")));
    }
    Ok(Json(versions.into_iter().map(PigeonView::from).collect()))
}

/// A whole set of pigeons to make true.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ApplyRequest {
    /// The pigeons as they should be.
    #[schema(value_type = Vec<PigeonSpec>)]
    pub pigeons: Vec<serde_json::Value>,
    /// Delete stored pigeons that are not in `pigeons`.
    #[serde(default)]
    pub prune: bool,
    /// Only compute the changes.
    #[serde(default)]
    pub dry_run: bool,
    /// Save pigeons whose wiring does not check out (audited as `pigeon.force`).
    #[serde(default)]
    pub force: bool,
}

/// What applying does to one pigeon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// New.
    Create,
    /// Changed: a new version.
    Update,
    /// Removed (with `prune`).
    Delete,
    /// As it is already.
    Unchanged,
}

/// One line of the diff.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PigeonChange {
    /// Pigeon id.
    pub id: String,
    /// What happens to it.
    pub change: Change,
    /// The stored version before.
    pub from_version: Option<i64>,
}

/// The diff, and whether it was applied.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApplyResponse {
    /// Every pigeon's change, by id.
    pub changes: Vec<PigeonChange>,
    /// False on a dry run.
    pub applied: bool,
    /// What checking the changed pigeons' wiring could not check, or overrode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Make a set of pigeons true, atomically: the diff, then (unless a dry run) all of it or none.
#[utoipa::path(post, path = "/pigeons/apply", tag = "pigeons", request_body = ApplyRequest,
    responses((status = 200, body = ApplyResponse), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn apply(
    AsViewer(caller): AsViewer,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ApplyRequest>,
) -> Result<Json<ApplyResponse>, ApiError> {
    if !request.dry_run {
        caller.require(Role::Operator)?;
    }
    let mut budget = state.scripts.budget();
    let pigeons = request.pigeons;
    let (specs, mut problems) = state
        .scripts
        .run(&mut budget, move || {
            let (mut specs, mut problems) = (Vec::new(), Vec::new());
            for (i, value) in pigeons.into_iter().enumerate() {
                match checked_spec(value) {
                    Ok(spec) => specs.push(spec),
                    Err(e) => problems.extend(e.details().iter().map(|d| format!("pigeons[{i}]: {d}"))),
                }
            }
            Ok((specs, problems))
        })
        .await?;
    let mut wanted = BTreeMap::new();
    for spec in specs {
        if wanted.contains_key(&spec.id) {
            problems.push(format!("pigeon {:?} is listed twice", spec.id));
        }
        wanted.insert(spec.id.clone(), spec);
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(
            "invalid_pigeon",
            "some pigeons are invalid; nothing was applied",
            problems,
        ));
    }
    let stored: BTreeMap<String, StoredPigeon> =
        state.store.pigeons().await?.into_iter().map(|p| (p.spec.id.clone(), p)).collect();
    let mut changes = Vec::new();
    let mut save = Vec::new();
    let mut delete = Vec::new();
    for (id, spec) in &wanted {
        let (change, from_version) = match stored.get(id) {
            None => (Change::Create, None),
            Some(old) if old.spec == *spec => (Change::Unchanged, Some(old.version)),
            Some(old) => (Change::Update, Some(old.version)),
        };
        if change != Change::Unchanged {
            save.push(spec.clone());
        }
        changes.push(PigeonChange { id: id.clone(), change, from_version });
    }
    if request.prune {
        for (id, old) in stored.iter().filter(|(id, _)| !wanted.contains_key(*id)) {
            delete.push(id.clone());
            changes.push(PigeonChange {
                id: id.clone(),
                change: Change::Delete,
                from_version: Some(old.version),
            });
        }
    }
    changes.sort_by(|a, b| a.id.cmp(&b.id));
    let to_check: Vec<&PigeonSpec> = save.iter().collect();
    // A dry run reports refused wiring as warnings: it changes nothing to refuse.
    let mode = if request.dry_run { Checking::Report } else { checking(request.force) };
    let warnings = check_wiring(&state, &mut budget, &to_check, mode, &caller.name).await?;
    let applied = !request.dry_run;
    if applied && !(save.is_empty() && delete.is_empty()) {
        state.store.apply_pigeons(&save, &delete, &caller.name).await?;
        let ids = save.iter().map(|s| s.id.clone()).chain(delete).collect();
        announce(&state, ids, &caller.name);
    }
    Ok(Json(ApplyResponse { changes, applied, warnings }))
}

/// What a dry run emitted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TestResult {
    /// The letters, with their destinations.
    #[schema(value_type = Vec<Object>)]
    pub letters: Vec<DryRunOutput>,
}

/// A pigeon that is not saved, and a sample letter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsavedTest {
    /// The pigeon, as it would be saved.
    #[schema(value_type = PigeonSpec)]
    pub pigeon: serde_json::Value,
    /// The sample letter: `tag`, `payload`, and optionally `id`, `source`, `key`, `time`.
    #[schema(value_type = Object)]
    pub letter: SampleLetter,
}

/// The letters `pigeon` emits for `letter`, run on the API's script threads.
async fn test_result(
    state: &AppState,
    pigeon: PigeonSpec,
    letter: SampleLetter,
) -> Result<Json<TestResult>, ApiError> {
    let letters = state
        .scripts
        .run(&mut state.scripts.budget(), move || {
            dry_run_pigeon(script::default_engine(), &pigeon, &letter)
                .map_err(|e| ApiError::invalid("script_failed", e.to_string(), vec![e.to_string()]))
        })
        .await?;
    Ok(Json(TestResult { letters }))
}

/// Run a saved pigeon on a sample letter: the letters it would emit, or why it fails.
#[utoipa::path(post, path = "/pigeons/{id}/test", tag = "pigeons", params(("id" = String, Path, description = "pigeon id")),
    request_body(content = Object, description = "a sample letter: tag, payload, and optionally id, source, key, time"),
    responses((status = 200, body = TestResult), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn test(
    _: AsViewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(letter): ApiJson<SampleLetter>,
) -> Result<Json<TestResult>, ApiError> {
    let pigeon = current(&state, &id).await?.spec;
    test_result(&state, pigeon, letter).await
}

/// Run an unsaved pigeon (a script being written) on a sample letter.
#[utoipa::path(post, path = "/pigeons/test", tag = "pigeons", request_body = UnsavedTest,
    responses((status = 200, body = TestResult), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn test_unsaved(
    _: AsViewer,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<UnsavedTest>,
) -> Result<Json<TestResult>, ApiError> {
    let UnsavedTest { pigeon, letter } = request;
    let letters = state
        .scripts
        .run(&mut state.scripts.budget(), move || {
            let pigeon = checked_spec(pigeon)?;
            dry_run_pigeon(script::default_engine(), &pigeon, &letter)
                .map_err(|e| ApiError::invalid("script_failed", e.to_string(), vec![e.to_string()]))
        })
        .await?;
    Ok(Json(TestResult { letters }))
}
