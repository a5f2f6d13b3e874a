//! `POST /fly`: a module flies a letter to a pigeon and waits for the receipt.
//!
//! The bus runs the pigeon's current version on the letter (forward or script), sends every
//! output and waits for Kafka's acknowledgements. An output Kafka refuses, or a script that
//! fails, is stored as a dead letter (retried on the pigeon's schedule, or parked) and named in
//! the receipt: the letter is never lost, and the module learns where it went.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::Json;
use rdkafka::message::OwnedMessage;

use super::auth::AsModule;
use super::error::{ApiError, ErrorBody};
use super::{ApiJson, AppState};
use pigeon_bus::control::{Routes, Tables};
use pigeon_bus::deadletter::{ErrorKind, NewDeadLetter};
use pigeon_bus::route::{pattern::validate_tag, Action, Route, INGRESS};
use pigeon_bus::router::output::{owned_outputs, OwnedOutput};
// The wire types are the SDK's (named FlyBody, FlyLetterBody, ReceiptView, … in the OpenAPI
// document): what a module sends is exactly what the bus reads.
use pigeon_sdk::{header, DeadLettered, Delivered, FlyRequest, Letter, LetterId, Receipt};

/// How long the bus waits for Kafka to acknowledge each output.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Flies a letter to a pigeon and returns once every output is acknowledged or stored as a
/// dead letter. Needs any token; modules use a `module` token.
#[utoipa::path(post, path = "/fly", tag = "fly", request_body = FlyRequest,
    responses((status = 200, description = "Where the letter went", body = Receipt),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, description = "No such pigeon", body = ErrorBody),
              (status = 409, description = "The pigeon is disabled", body = ErrorBody),
              (status = 503, description = "This bus cannot reach Kafka", body = ErrorBody)),
    security(("token" = [])))]
pub async fn fly(
    AsModule(caller): AsModule,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<FlyRequest>,
) -> Result<Json<Receipt>, ApiError> {
    let letter = letter_of(&body)?;
    let tables = state.tables.as_ref().ok_or_else(|| {
        ApiError::unavailable("this bus runs no route tables; fly through another instance")
    })?;
    let (routes, route) = route_of(tables, &state, &body.pigeon).await?;
    let message = message_of(&letter);
    let id = letter.id.to_string();
    let time_ms = ms(letter.time);
    if !route.takes(time_ms) {
        return Err(ApiError::conflict(format!(
            "the letter's time is outside the live window of pigeon {:?}",
            body.pigeon
        )));
    }
    let producer = state.producer.clone().ok_or_else(|| {
        ApiError::unavailable("this bus runs without a Kafka producer; fly through pigeon.ingress")
    })?;

    let mut receipt = Receipt {
        letter_id: id.clone(),
        pigeon: body.pigeon.clone(),
        version: route.version,
        delivered: Vec::new(),
        dead_lettered: Vec::new(),
    };
    let mut dead_letters = Vec::new();
    // The pigeon's script runs on the API's script threads, not the runtime's.
    let planned = {
        let (id, tag, route) = (id.clone(), letter.tag.clone(), Arc::clone(&route));
        let work = move || {
            let table = &routes.redeliver;
            Ok(owned_outputs("fly", &message, &id, &tag, time_ms, &[&route], 1, table.contracts()))
        };
        state.scripts.run(&mut state.scripts.budget(), work).await?
    };
    for refused in planned.refused {
        receipt.dead_lettered.push(DeadLettered { topic: None, error: refused.error_message.clone() });
        dead_letters.push(refused);
    }
    // An output its destination would refuse is parked on its own; the others go.
    let (unfit, outputs): (Vec<OwnedOutput>, Vec<OwnedOutput>) =
        planned.outputs.into_iter().partition(|o| o.unfit.is_some());
    for output in &unfit {
        let reason = output.unfit.as_ref().map_or_else(String::new, |u| u.reason.clone());
        dead_letters.extend(output.parked());
        receipt.dead_lettered.push(DeadLettered { topic: Some(output.topic.clone()), error: reason });
    }
    let sends = outputs.iter().map(|output| producer.send(output.record(), DELIVERY_TIMEOUT));
    let results = futures::future::join_all(sends).await;
    for (output, result) in outputs.iter().zip(results) {
        match result {
            Ok(delivery) => receipt.delivered.push(Delivered {
                topic: output.topic.clone(),
                tag: output.header(header::TYPE).unwrap_or_default(),
                id: output.header(header::ID).unwrap_or_default(),
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _)) => {
                let error = error.to_string();
                let pigeon = (route.id.as_ref(), route.version);
                let mut dead =
                    output.dead_letter(pigeon, ErrorKind::Produce, error.clone(), route.retry.after(1));
                dead.source_topic = INGRESS.to_owned();
                dead_letters.push(dead);
                receipt.dead_lettered.push(DeadLettered { topic: Some(output.topic.clone()), error });
            }
        }
    }
    if !dead_letters.is_empty() {
        let refs: Vec<&NewDeadLetter> = dead_letters.iter().collect();
        state.store.insert_dead_letters(&refs).await.map_err(|e| {
            ApiError::unavailable(format!(
                "{} output(s) failed and could not be stored ({e}); fly the letter again with the same id",
                refs.len()
            ))
        })?;
    }
    // Counted once settled: a letter whose dead letters could not be stored is flown again.
    route.counts.took();
    route.counts.delivered_many(receipt.delivered.len() as u64);
    route.counts.failed_many(receipt.dead_lettered.len() as u64);
    route.metrics.letters_in.increment(1);
    for delivered in &receipt.delivered {
        route.metrics.delivered(route.metrics.destination(&delivered.topic), 0, || None);
    }
    for _ in &receipt.dead_lettered {
        route.metrics.failed.increment(1);
    }
    tracing::info!(
        pigeon = %receipt.pigeon, letter = %receipt.letter_id, by = %caller.name,
        delivered = receipt.delivered.len(), dead_lettered = receipt.dead_lettered.len(), "letter flown"
    );
    Ok(Json(receipt))
}

/// How long `POST /fly` waits for this instance's tables to hold a pigeon the store has (saved
/// a moment ago, perhaps on another instance).
const CATCH_UP: Duration = Duration::from_secs(5);

/// The pigeon a letter is flown to, from this instance's tables: when they lack it, or hold an
/// older version than the store's, the watcher is asked to catch up (bounded).
async fn route_of(
    tables: &Tables,
    state: &AppState,
    id: &str,
) -> Result<(Arc<Routes>, Arc<Route>), ApiError> {
    let routes = tables.current();
    if let Some(route) = routes.redeliver.route(id) {
        return Ok((Arc::clone(&routes), Arc::clone(route)));
    }
    let stored =
        state.store.pigeon(id).await?.ok_or_else(|| ApiError::not_found(format!("pigeon {id:?}")))?;
    if !stored.spec.enabled {
        return Err(ApiError::conflict(format!("pigeon {id:?} is disabled")));
    }
    if stored.spec.action == Action::Archive {
        return Err(ApiError::conflict(format!(
            "pigeon {id:?} archives letters; letters are flown to forward and script pigeons"
        )));
    }
    let version = stored.version;
    let held = |routes: &Routes| routes.redeliver.route(id).is_some_and(|r| r.version >= version);
    match tables.catch_up(CATCH_UP, held).await {
        Ok(routes) => {
            let route = routes.redeliver.route(id).map(Arc::clone);
            route
                .map(|route| (routes, route))
                .ok_or_else(|| ApiError::internal("a caught-up table lost its pigeon"))
        }
        Err(routes) => match routes.quarantined.iter().find(|q| q.id == id) {
            Some(q) => Err(ApiError::conflict(format!(
                "pigeon {id:?} version {} does not compile: {}",
                q.version,
                q.problems.join("; ")
            ))),
            None => Err(ApiError::unavailable_for(
                format!("pigeon {id:?} version {version} is not in this instance's tables yet; try again"),
                CATCH_UP,
            )),
        },
    }
}

/// Reads the request's letter, explaining what is wrong with it.
fn letter_of(body: &FlyRequest) -> Result<Letter, ApiError> {
    let l = &body.letter;
    if body.pigeon.is_empty() {
        return Err(ApiError::bad_request("name the pigeon to fly to"));
    }
    validate_tag(&l.tag).map_err(|e| ApiError::bad_request(format!("letter.tag: {e}")))?;
    if l.source.is_empty() {
        return Err(ApiError::bad_request("letter.source must name the module"));
    }
    let mut letter = Letter::new(&l.source, &l.tag, l.payload.clone());
    if let Some(id) = &l.id {
        letter.id = id
            .parse::<LetterId>()
            .map_err(|e| ApiError::bad_request(format!("letter.id {id:?} is not a UUID: {e}")))?;
    }
    if let Some(time) = &l.time {
        letter.time = pigeon_sdk::letter::parse_time(time)
            .ok_or_else(|| ApiError::bad_request(format!("letter.time {time:?} is not an RFC 3339 time")))?;
    }
    letter.key = l.key.as_ref().map(|k| k.clone().into_bytes());
    letter.traceparent = l.traceparent.clone();
    letter.pigeon = Some(body.pigeon.clone());
    Ok(letter)
}

/// The letter as if it had been read from `pigeon.ingress`.
fn message_of(letter: &Letter) -> OwnedMessage {
    OwnedMessage::new(
        Some(letter.payload_bytes()),
        letter.key.clone(),
        INGRESS.to_owned(),
        rdkafka::Timestamp::CreateTime(ms(letter.time)),
        -1,
        -1,
        Some(letter.headers()),
    )
}

fn ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
