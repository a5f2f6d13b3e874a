//! The retry worker: redelivers due dead letters on their pigeon's stepped schedule.
//!
//! Each sweep claims a batch of due rows under a fresh claim token with a lease longer than
//! the producer's delivery timeout, delivers them concurrently, and reports each outcome under
//! that token. Claims never overlap while their lease holds, so live retriers never send one
//! dead letter at the same time; rows of a retrier that died mid-claim are taken over when the
//! lease runs out (and may then have been sent twice: counted, and written in their history).
//!
//! A failed delivery (a `produce` dead letter) is sent again as it was, to the topic that
//! refused it, with `ce_attempt` raised. A letter parked by its script, or unreadable, is only
//! retried by an operator; it is then redriven through the *current* version of its pigeon (or
//! of every pigeon of its source topic).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{RetrierConfig, Sweep};
use crate::deadletter::schedule::Schedule;
use crate::deadletter::{DeadLetter, NewDeadLetter, Outcome, Report};
use crate::route::{Lookup, Route, RouteTable};
use crate::router::output::{owned_outputs, reroute, with_attempt, OwnedOutput as Output, Planned};
use crate::source;
use crate::store::{now_ms, Store};
use pigeon_sdk::{header, LetterId};

/// The retrier's series.
pub type RetrierStats = crate::prometheus::RetrierMetrics;

/// How long a sweep waits for the watcher to read the store; after that it redelivers through
/// the tables it has.
const TABLES_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the retrier runs with.
#[derive(Clone)]
pub struct RetrierParts {
    /// Sweep, batch and lease.
    pub config: RetrierConfig,
    /// The watcher's tables: redeliveries go through its `redeliver` table.
    pub tables: crate::control::Tables,
    /// Producer properties; the delivery timeout is set from the config.
    pub producer: ClientConfig,
    /// Dead letters live here.
    pub store: Arc<dyn Store>,
    /// This instance's name in the letters' history.
    pub instance: String,
    /// Counters.
    pub stats: Arc<RetrierStats>,
}

/// Runs sweeps until `cancel` fires; a sweep under way finishes first.
pub async fn run(parts: RetrierParts, cancel: CancellationToken) -> anyhow::Result<()> {
    let sweep = Sweep::parse(&parts.config.sweep).map_err(anyhow::Error::msg)?;
    let mut producer_config = parts.producer.clone();
    producer_config.set("message.timeout.ms", parts.config.delivery_timeout_ms.to_string());
    let producer: FutureProducer = producer_config.create()?;
    let mut retrier = Retrier { parts, producer };
    tracing::info!(instance = %retrier.parts.instance, sweep = %retrier.parts.config.sweep, "retrier started");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(sweep.wait()) => {}
            _ = cancel.cancelled() => break,
        }
        // Keep going while whole batches come back: a backlog drains at full speed.
        loop {
            match retrier.sweep().await {
                Ok(claimed) if claimed == retrier.parts.config.batch as usize && !cancel.is_cancelled() => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "retry sweep failed; trying again at the next one");
                    break;
                }
            }
        }
    }
    tracing::info!("retrier stopped");
    Ok(())
}

struct Retrier {
    parts: RetrierParts,
    producer: FutureProducer,
}

impl Retrier {
    /// Claims, delivers and reports one batch; returns how many were claimed.
    async fn sweep(&mut self) -> anyhow::Result<usize> {
        let config = &self.parts.config;
        let token = uuid::Uuid::now_v7().to_string();
        let lease_until = now_ms() + config.lease_ms as i64;
        let claimed = self.parts.store.claim_dead_letters(&token, lease_until, config.batch).await?;
        let stats = Arc::clone(&self.parts.stats);
        if claimed.taken_over > 0 {
            stats.taken_over.increment(claimed.taken_over);
            tracing::warn!(
                count = claimed.taken_over,
                "took over dead letters whose claim ran out (a retrier died?); they may be delivered twice"
            );
        }
        let count = claimed.letters.len();
        if count == 0 {
            return Ok(0);
        }
        stats.claimed.increment(count as u64);
        let table = self.table().await;
        let attempts = claimed.letters.iter().map(|letter| self.attempt(letter, &table));
        let reports = futures::future::join_all(attempts).await;
        for (letter, report) in claimed.letters.iter().zip(&reports) {
            let counter = match report.outcome {
                Outcome::Delivered => &stats.delivered,
                Outcome::Failed => &stats.failed,
                Outcome::Parked | Outcome::TakenOver => &stats.parked,
            };
            counter.increment(1);
            tracing::info!(
                dead_letter = letter.id,
                letter = %letter.letter.letter_id,
                attempt = letter.attempts + 1,
                outcome = report.outcome.as_str(),
                error = %report.message,
                "dead letter retried"
            );
        }
        let reports: Vec<(i64, Report)> = claimed.letters.iter().map(|l| l.id).zip(reports).collect();
        self.report(&token, &reports, lease_until).await;
        Ok(count)
    }

    /// Records the outcomes in one transaction, trying again while the store is down and the
    /// lease holds (after that another retrier owns the letters).
    async fn report(&self, token: &str, reports: &[(i64, Report)], lease_until: i64) {
        let store = &self.parts.store;
        let stats = &self.parts.stats;
        let mut backoff = Duration::from_millis(100);
        loop {
            match store.report_attempts(token, &self.parts.instance, reports).await {
                Ok(recorded) => {
                    let lost = recorded.iter().filter(|r| !**r).count();
                    if lost > 0 {
                        stats.lost_claims.increment(lost as u64);
                        tracing::warn!(lost, "claims lost before the report; another retrier took them over");
                    }
                    return;
                }
                Err(e) if now_ms() + (backoff.as_millis() as i64) < lease_until => {
                    tracing::warn!(error = %e, "cannot record the attempts; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    stats.lost_claims.increment(reports.len() as u64);
                    tracing::error!(
                        error = %e,
                        count = reports.len(),
                        "attempts not recorded before the lease ran out; they will be taken over"
                    );
                    return;
                }
            }
        }
    }

    /// The pigeons as stored now, every live window included (a letter of an ended window is
    /// still owed): a pigeon fixed just before its letters are redriven runs fixed.
    async fn table(&self) -> Arc<RouteTable> {
        Arc::clone(&self.parts.tables.fresh(TABLES_TIMEOUT).await.redeliver)
    }

    /// Delivers one dead letter and says how it went.
    async fn attempt(&self, letter: &DeadLetter, table: &RouteTable) -> Report {
        let attempt = letter.attempts + 1;
        let Planned { outputs, refused } = match plan(letter, table, attempt) {
            Ok(planned) => planned,
            Err(message) => return Report { outcome: Outcome::Parked, message, next_attempt_at: None },
        };
        // Outputs their destination would refuse are parked on their own, and so is the letter
        // for a pigeon that refuses it; the others go.
        let (unfit, outputs): (Vec<Output>, Vec<Output>) =
            outputs.into_iter().partition(|o| o.unfit.is_some());
        let mut parked: Vec<NewDeadLetter> = unfit.iter().filter_map(Output::parked).collect();
        let refusals: Vec<String> = refused
            .iter()
            .map(|d| {
                format!("; pigeon {} refused it: {}", d.pigeon_id.as_deref().unwrap_or("?"), d.error_message)
            })
            .collect();
        parked.extend(refused);
        if !parked.is_empty() {
            let refs: Vec<&NewDeadLetter> = parked.iter().collect();
            if let Err(e) = self.parts.store.insert_dead_letters(&refs).await {
                return Report {
                    outcome: Outcome::Failed,
                    message: format!("cannot park {} unfit output(s): {e}", refs.len()),
                    next_attempt_at: Some(now_ms() + TABLES_TIMEOUT.as_millis() as i64),
                };
            }
        }
        let sends = outputs.iter().map(|output| {
            let record = output.record();
            self.producer.send(record, Duration::from_secs(5))
        });
        let failure = futures::future::join_all(sends).await.into_iter().find_map(|sent| sent.err());
        let Some((error, _)) = failure else {
            if let Some(id) = letter.letter.pigeon_id.as_deref() {
                crate::counters::book().of(id).delivered_many(outputs.len() as u64);
                // The pigeon's series, when today's table still holds it (no latency: the
                // retrier waits for each acknowledgement itself).
                if let Some(route) = table.route(id) {
                    for output in &outputs {
                        route.metrics.delivered(route.metrics.destination(&output.topic), 0, || None);
                    }
                }
            }
            let topics: Vec<&str> = outputs.iter().map(|o| o.topic.as_str()).collect();
            let mut message = match topics.is_empty() {
                true => "nothing to send".to_owned(),
                false => format!("delivered to {}", topics.join(", ")),
            };
            for output in &unfit {
                let reason = output.unfit.as_ref().map_or("", |u| u.reason.as_str());
                message.push_str(&format!("; parked the output to {}: {reason}", output.topic));
            }
            message.extend(refusals);
            return Report { outcome: Outcome::Delivered, message, next_attempt_at: None };
        };
        let schedule = letter
            .letter
            .pigeon_id
            .as_deref()
            .and_then(|id| table.route(id))
            .map_or_else(Schedule::default, |route| route.retry.clone());
        match schedule.after(attempt) {
            Some(delay) => Report {
                outcome: Outcome::Failed,
                message: error.to_string(),
                next_attempt_at: Some(now_ms() + delay.as_millis() as i64),
            },
            None => Report {
                outcome: Outcome::Parked,
                message: format!("{error} (retries used up)"),
                next_attempt_at: None,
            },
        }
    }
}

/// What redelivering a dead letter sends, or why it cannot be sent (it is then parked): no
/// pigeon takes it now, or every one that does refuses it.
fn plan(letter: &DeadLetter, table: &RouteTable, attempt: i32) -> Result<Planned, String> {
    let dead = &letter.letter;
    let stored_headers = || {
        dead.headers.iter().fold(OwnedHeaders::new_with_capacity(dead.headers.len()), |headers, h| {
            pigeon_headers::add(headers, h.name_bytes(), h.value())
        })
    };
    if let Some(topic) = &dead.dest_topic {
        // A delivery Kafka refused: the same output again.
        let output = Output {
            topic: topic.clone(),
            key: dead.key.clone(),
            headers: crate::telemetry::retrace(
                "retry",
                with_attempt(&stored_headers(), attempt),
                crate::telemetry::At {
                    pigeon: dead.pigeon_id.as_deref().unwrap_or_default(),
                    topic: &dead.source_topic,
                    partition: dead.source_partition,
                    offset: dead.source_offset,
                    letter_id: &dead.letter_id,
                },
            ),
            payload: dead.payload.clone(),
            unfit: None,
        };
        return Ok(Planned { outputs: vec![output], refused: Vec::new() });
    }
    // The letter never left: route it again through the pigeons as they are now.
    let time_ms = dead
        .header_text(header::TIME)
        .and_then(pigeon_sdk::letter::parse_time)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(letter.created_at, |t| t.as_millis() as i64);
    let message = OwnedMessage::new(
        dead.payload.clone(),
        dead.key.clone(),
        dead.source_topic.clone(),
        rdkafka::Timestamp::CreateTime(time_ms),
        dead.source_partition,
        dead.source_offset,
        Some(stored_headers()),
    );
    let (tag, matched) = match &dead.pigeon_id {
        Some(id) => {
            let route = table.route(id).ok_or_else(|| format!("pigeon {id} was deleted or disabled"))?;
            let headers = source::LetterHeaders::of(&message);
            let tag = match table.lookup(&dead.source_topic) {
                Lookup::Routes(routes) => source::read(&message, &headers, &routes.source)?.tag,
                Lookup::Flown(source) => source::read(&message, &headers, source)?.tag,
                Lookup::Nothing => {
                    return Err(format!("no enabled pigeon listens on {} now", dead.source_topic))
                }
            };
            (tag.unwrap_or_default().into_owned(), vec![Arc::clone(route)])
        }
        None => reroute(table, &message, time_ms)?,
    };
    let matched: Vec<&Arc<Route>> = matched.iter().collect();
    let id = if dead.letter_id.is_empty() {
        LetterId::derived(&dead.source_topic, dead.source_partition, dead.source_offset, time_ms as u64)
            .to_string()
    } else {
        dead.letter_id.clone()
    };
    let planned = owned_outputs("retry", &message, &id, &tag, time_ms, &matched, attempt, table.contracts());
    if planned.outputs.is_empty() && planned.refused.len() == matched.len() {
        let reasons: Vec<&str> = planned.refused.iter().map(|d| d.error_message.as_str()).collect();
        return Err(reasons.join("; "));
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadletter::{CaptureMessage, ErrorKind, NewDeadLetter, Status};
    use crate::route::{PigeonSpec, VersionedPigeon, WindowSpec};
    use std::collections::BTreeMap;

    /// A letter that never left (an unreadable one an operator fixed) is routed again through
    /// the pigeons of its topic whose live window holds its time, as the router would.
    #[test]
    fn a_redriven_letter_flies_only_with_pigeons_whose_window_holds_its_time() {
        let spec = |id: &str, capability: &str, window: Option<WindowSpec>| {
            let mut spec: PigeonSpec = serde_json::from_value(serde_json::json!({
                "id": id, "match": { "topic": "live.gift", "tag": "gift.sent" },
                "destinations": [{ "capability": capability }]
            }))
            .unwrap();
            spec.window = window;
            VersionedPigeon { spec, version: 1, saved_at: 0 }
        };
        let ended = WindowSpec { end: Some("2020-01-01T00:00:00Z".into()), ..Default::default() };
        let table = RouteTable::compile(
            &[spec("always", "a/x", None), spec("ended", "b/y", Some(ended))],
            &BTreeMap::new(),
        )
        .unwrap();
        let letter = pigeon_sdk::Letter::new("live", "gift.sent", serde_json::json!({ "roomId": "r" }));
        let message = OwnedMessage::new(
            Some(letter.payload_bytes()),
            None,
            "live.gift".into(),
            rdkafka::Timestamp::CreateTime(now_ms()),
            0,
            7,
            Some(letter.headers()),
        );
        let dead = DeadLetter {
            id: 1,
            letter: NewDeadLetter::from_message(&message, ErrorKind::Malformed, "fixed by hand".into()),
            attempts: 1,
            status: Status::Parked,
            next_attempt_at: None,
            created_at: now_ms(),
            updated_at: now_ms(),
        };
        let planned = plan(&dead, &table, 2).unwrap();
        let topics: Vec<&str> = planned.outputs.iter().map(|o| o.topic.as_str()).collect();
        assert_eq!(topics, ["pigeon.module.a"], "the ended pigeon does not take today's letter");
    }
}
