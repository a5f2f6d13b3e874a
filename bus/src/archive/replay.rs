//! Replay jobs: archived letters sent again, to a topic or through today's pigeons.
//!
//! Jobs are created through the admin API and kept in the store; every instance with the
//! admin role runs a runner that claims one job at a time under a lease. A runner reads the
//! archive a page at a time in archive order (letter time, then Kafka position, so the
//! letters of one key keep their order), paces sending to the job's rate, waits until Kafka
//! has acknowledged the whole page, then records the page's last letter as the checkpoint
//! together with how many letters the next page puts in flight. A job whose runner dies is
//! taken over when the lease runs out and resumes after its checkpoint; the letters that were
//! in flight are the only ones that may be sent twice, and they are counted (`resent`).
//!
//! A replayed letter is the original with a new `ce_id` (derived from the job and the original
//! id, so a module that drops duplicates still takes it, and the same each time the job sends
//! it) and `ce_replayof` naming the original.

use std::sync::Arc;
use std::time::Duration;

use pigeon_headers::RawHeaders;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ArchivedLetter, Position, ReplayJob, ReplaySpec, ReplayStatus};
use crate::config::ReplayConfig;
use crate::route::RouteTable;
use crate::router::output::{owned_outputs, reroute, OwnedOutput, Planned};
use crate::store::archive::ReplayProgress;
use crate::store::{now_ms, Store};
use pigeon_sdk::{header, LetterId};

/// The replay runner's series.
pub type ReplayStats = crate::prometheus::ReplayMetrics;

/// Everything a runner needs.
#[derive(Clone)]
pub struct ReplayParts {
    /// Jobs and the archive.
    pub store: Arc<dyn Store>,
    /// Sends the letters.
    pub producer: FutureProducer,
    /// Leases and pages.
    pub config: ReplayConfig,
    /// The watcher's tables: replays through the pigeons use its `redeliver` table.
    pub tables: crate::control::Tables,
    /// This runner in job records.
    pub owner: String,
    /// Counters.
    pub stats: Arc<ReplayStats>,
}

/// How a runner's turn with a job ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Every letter was sent.
    Done { skipped: u64, dead: u64 },
    /// The job was cancelled or taken over: this runner lets it go.
    Lost,
    /// The process is stopping; the job waits for the next runner, at its checkpoint.
    Interrupted,
}

/// Runs replay jobs until `cancel` fires.
pub async fn run(parts: ReplayParts, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(parts.config.check_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        while !cancel.is_cancelled() {
            let now = now_ms();
            let lease_until = now + parts.config.lease_ms as i64;
            let job = match parts.store.archive().claim_replay(&parts.owner, now, lease_until).await {
                Ok(Some(job)) => job,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for replay jobs");
                    break;
                }
            };
            let id = job.id;
            tracing::info!(job = id, total = job.total, sent = job.sent, resent = job.resent, checkpoint = ?job.checkpoint, "replay job taken");
            let ended = run_job(&parts, job, &cancel).await;
            let (status, message) = match ended {
                Ok(Ended::Done { skipped, dead }) => (ReplayStatus::Done, done_message(skipped, dead)),
                Ok(Ended::Lost) => {
                    tracing::info!(job = id, "replay job cancelled or taken over; this runner lets it go");
                    parts.stats.jobs_ended.increment(1);
                    continue;
                }
                Ok(Ended::Interrupted) => {
                    tracing::info!(job = id, "replay job interrupted; it resumes at its checkpoint");
                    return Ok(());
                }
                // The store, not the job, failed: the job keeps its claim until the lease runs
                // out, then resumes at its checkpoint (here or elsewhere).
                Err(e) if e.downcast_ref::<crate::store::StoreError>().is_some() => {
                    tracing::warn!(job = id, error = %e, "replay job paused: the store cannot be reached; it resumes at its checkpoint");
                    break;
                }
                Err(e) => (ReplayStatus::Failed, format!("{e:#}")),
            };
            parts.stats.jobs_ended.increment(1);
            tracing::info!(job = id, status = status.as_str(), message, "replay job ended");
            if let Err(e) = parts.store.archive().finish_replay(id, &parts.owner, status, &message).await {
                tracing::warn!(job = id, error = %e, "cannot record the end of a replay job; another runner finishes it");
            }
        }
    }
}

fn done_message(skipped: u64, dead: u64) -> String {
    let mut message = "every letter sent".to_owned();
    if skipped > 0 {
        message.push_str(&format!("; {skipped} taken by no pigeon now"));
    }
    if dead > 0 {
        message.push_str(&format!("; {dead} failed their pigeon's script and are dead letters"));
    }
    message
}

/// How many letters a page holds: at most `page`, and no more than a third of the lease
/// takes to send at the job's rate, so the lease is renewed in time.
fn page_size(page: u32, rate: Option<u32>, lease_ms: u64) -> u32 {
    match rate {
        Some(rate) => page.min(((u64::from(rate) * lease_ms / 3_000).max(1)) as u32),
        None => page,
    }
}

/// Spaces letters to a rate: letter `n` goes no earlier than `n / rate` after the start.
struct Pacer {
    rate: Option<u32>,
    start: Instant,
    sent: u64,
}

impl Pacer {
    fn new(rate: Option<u32>) -> Self {
        Self { rate, start: Instant::now(), sent: 0 }
    }

    async fn wait(&mut self) {
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(self.sent as f64 / f64::from(rate));
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
        }
        self.sent += 1;
    }
}

async fn run_job(parts: &ReplayParts, job: ReplayJob, cancel: &CancellationToken) -> anyhow::Result<Ended> {
    let archive = parts.store.archive();
    let spec = &job.spec;
    let table = match spec.through_pigeons {
        true => Some(Arc::clone(&parts.tables.fresh(Duration::from_secs(5)).await.redeliver)),
        false => None,
    };
    let lease = parts.config.lease_ms as i64;
    let size = page_size(parts.config.page, spec.rate, parts.config.lease_ms);
    let mut pacer = Pacer::new(spec.rate);
    let mut checkpoint = job.checkpoint.clone();
    let (mut skipped, mut dead) = (0, 0);
    let mut page = archive.archived(&spec.query, checkpoint.as_ref(), size).await?;
    let progress = ReplayProgress {
        checkpoint: None,
        sent: 0,
        in_flight: page.len() as i64,
        lease_until: now_ms() + lease,
    };
    if !archive.replay_progress(job.id, &parts.owner, &progress).await? {
        return Ok(Ended::Lost);
    }
    while !page.is_empty() {
        let mut deliveries = Vec::with_capacity(page.len());
        for letter in &page {
            pacer.wait().await;
            match plan(letter, spec, job.id, table.as_deref()) {
                Ok(Planned { outputs, refused }) => {
                    // A pigeon that refuses the letter makes a dead letter; the others' go.
                    for failed in &refused {
                        dead += 1;
                        parts.store.insert_dead_letter(failed).await?;
                    }
                    for output in outputs {
                        // An output its destination would refuse is parked on its own.
                        if let Some(parked) = output.parked() {
                            dead += 1;
                            parts.store.insert_dead_letter(&parked).await?;
                            continue;
                        }
                        deliveries.push(send(&parts.producer, output).await?);
                    }
                }
                Err(reason) => {
                    skipped += 1;
                    tracing::debug!(job = job.id, letter = %letter.letter_id, reason, "replayed letter taken by no pigeon");
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => anyhow::bail!(
                    "Kafka refused a replayed letter ({e}); the job stopped after {}",
                    checkpoint.as_ref().map_or("its start".to_owned(), Position::to_string)
                ),
                Err(_) => anyhow::bail!("the producer closed while replaying"),
            }
        }
        parts.stats.letters.increment(page.len() as u64);
        checkpoint = page.last().map(|l| l.position.clone());
        let sent = page.len() as i64;
        if cancel.is_cancelled() {
            // Nothing in flight: the next runner may take the job at once.
            let progress = ReplayProgress { checkpoint, sent, in_flight: 0, lease_until: now_ms() };
            archive.replay_progress(job.id, &parts.owner, &progress).await?;
            return Ok(Ended::Interrupted);
        }
        page = archive.archived(&spec.query, checkpoint.as_ref(), size).await?;
        let progress = ReplayProgress {
            checkpoint: checkpoint.clone(),
            sent,
            in_flight: page.len() as i64,
            lease_until: now_ms() + lease,
        };
        if !archive.replay_progress(job.id, &parts.owner, &progress).await? {
            return Ok(Ended::Lost);
        }
    }
    Ok(Ended::Done { skipped, dead })
}

/// Enqueues one letter, waiting while the producer's queue is full; the future settles when
/// Kafka acknowledges it.
async fn send(
    producer: &FutureProducer,
    output: OwnedOutput,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    loop {
        match producer.send_result(output.record()) {
            Ok(delivery) => return Ok(delivery),
            Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => anyhow::bail!("cannot send a replayed letter: {e}"),
        }
    }
}

/// What replaying one archived letter sends, or why no pigeon takes it now (through the
/// pigeons only).
pub fn plan(
    letter: &ArchivedLetter,
    spec: &ReplaySpec,
    job: i64,
    table: Option<&RouteTable>,
) -> Result<Planned, String> {
    let replay_id =
        LetterId::replayed(&letter.letter_id, job, letter.position.time.max(0) as u64).to_string();
    // The original's headers, without a replay marker of its own (a replay of a replay names
    // the letter it replays).
    let original = || {
        letter
            .headers
            .iter()
            .filter(|h| h.name != header::REPLAYOF)
            .fold(OwnedHeaders::new_with_capacity(letter.headers.len() + 1), |headers, h| {
                pigeon_headers::add(headers, h.name_bytes(), h.value())
            })
    };
    // Always a `ce_id` of its own (a foreign letter archived under a derived id had none).
    let marked = |headers: &OwnedHeaders| {
        let mut out = OwnedHeaders::new_with_capacity(headers.count() + 2);
        for h in headers.raw().filter(|h| !h.is(header::ID)) {
            out = pigeon_headers::add(out, h.name, h.value);
        }
        out.insert(Header { key: header::ID, value: Some(replay_id.as_bytes()) })
            .insert(Header { key: header::REPLAYOF, value: Some(letter.letter_id.as_bytes()) })
    };
    if let Some(topic) = &spec.to_topic {
        let output = OwnedOutput {
            topic: topic.clone(),
            key: letter.key.clone(),
            headers: crate::telemetry::retrace(
                "replay",
                marked(&original()),
                crate::telemetry::At {
                    pigeon: "",
                    topic: &letter.position.topic,
                    partition: letter.position.partition,
                    offset: letter.position.offset,
                    letter_id: &replay_id,
                },
            ),
            payload: letter.payload.clone(),
            unfit: None,
        };
        return Ok(Planned { outputs: vec![output], refused: Vec::new() });
    }
    let Some(table) = table else {
        return Err("the job names no topic and runs through no pigeons".into());
    };
    let message = super::as_message(letter, original());
    let (tag, routes) = reroute(table, &message, letter.position.time)?;
    let routes: Vec<_> = routes.iter().collect();
    let Planned { outputs, mut refused } = owned_outputs(
        "replay",
        &message,
        &replay_id,
        &tag,
        letter.position.time,
        &routes,
        1,
        table.contracts(),
    );
    for failed in &mut refused {
        failed.letter_id.clone_from(&letter.letter_id);
        failed.error_message = format!("replay job {job}: {}", failed.error_message);
    }
    let outputs = outputs
        .into_iter()
        .map(|output| OwnedOutput {
            headers: output
                .headers
                .insert(Header { key: header::REPLAYOF, value: Some(letter.letter_id.as_bytes()) }),
            ..output
        })
        .collect();
    Ok(Planned { outputs, refused })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{ArchiveQuery, KeyField};
    use crate::deadletter::StoredHeader;
    use crate::route::VersionedPigeon;
    use std::collections::BTreeMap;

    fn archived() -> ArchivedLetter {
        let original = pigeon_sdk::Letter::new("live", "gift.sent", serde_json::json!({ "userId": 42 }))
            .with_key("room-7");
        let headers = original.headers();
        ArchivedLetter {
            letter_id: original.id.to_string(),
            pigeon_id: "gifts-archive".into(),
            position: Position {
                time: 1_700_000_000_000,
                topic: "live.gift".into(),
                partition: 3,
                offset: 99,
            },
            tag: "gift.sent".into(),
            keys: [(KeyField::UserId, "42".to_owned())].into(),
            key: Some(b"room-7".to_vec()),
            headers: headers.iter().map(|h| StoredHeader::new(h.key, h.value)).collect(),
            payload: Some(original.payload_bytes()),
            archived_at: 1,
        }
    }

    fn spec(to_topic: Option<&str>) -> ReplaySpec {
        ReplaySpec {
            query: ArchiveQuery { since: 0, until: i64::MAX, ..Default::default() },
            to_topic: to_topic.map(str::to_owned),
            through_pigeons: to_topic.is_none(),
            rate: None,
        }
    }

    #[test]
    fn a_replayed_letter_is_the_original_with_a_new_id_and_the_replay_marker() {
        let letter = archived();
        let outputs = plan(&letter, &spec(Some("replayed.gift")), 7, None).unwrap().outputs;
        assert_eq!(outputs.len(), 1);
        let out = &outputs[0];
        assert_eq!(out.topic, "replayed.gift");
        assert_eq!(out.key, letter.key);
        assert_eq!(out.payload, letter.payload);
        assert_eq!(out.header(header::REPLAYOF).as_deref(), Some(letter.letter_id.as_str()));
        let id = out.header(header::ID).unwrap();
        assert_ne!(id, letter.letter_id, "a new id, so modules that drop duplicates take it");
        let again = plan(&letter, &spec(Some("replayed.gift")), 7, None).unwrap().outputs;
        assert_eq!(again[0].header(header::ID).unwrap(), id, "the same job gives the same id");
        let other_job = plan(&letter, &spec(Some("replayed.gift")), 8, None).unwrap().outputs;
        assert_ne!(other_job[0].header(header::ID).unwrap(), id);
        let mut foreign = archived();
        foreign.headers.retain(|h| h.name != header::ID);
        let foreign_out = &plan(&foreign, &spec(Some("replayed.gift")), 7, None).unwrap().outputs[0];
        let expected = LetterId::replayed(&foreign.letter_id, 7, foreign.position.time as u64).to_string();
        assert_eq!(foreign_out.header(header::ID), Some(expected), "a foreign letter gets an id too");
        for h in &letter.headers {
            if h.name != header::ID {
                assert_eq!(out.header(&h.name).as_deref(), h.text.as_deref(), "header {} kept", h.name);
            }
        }
    }

    #[test]
    fn a_replay_through_the_pigeons_goes_where_todays_pigeons_send_it() {
        let pigeon: crate::route::PigeonSpec = serde_json::from_value(serde_json::json!({
            "id": "gifts", "match": { "topic": "live.gift", "tag": "gift.*" },
            "destinations": [{ "capability": "rank/gift" }]
        }))
        .unwrap();
        let table = RouteTable::compile(
            &[VersionedPigeon { spec: pigeon, version: 1, saved_at: 0 }],
            &BTreeMap::new(),
        )
        .unwrap();
        let letter = archived();
        let outputs = plan(&letter, &spec(None), 7, Some(&table)).unwrap().outputs;
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].topic, "pigeon.module.rank");
        assert_eq!(outputs[0].header(header::TYPE).as_deref(), Some("gift"));
        assert_eq!(outputs[0].header(header::REPLAYOF).as_deref(), Some(letter.letter_id.as_str()));

        let mut view = archived();
        view.position.topic = "live.view".into();
        match plan(&view, &spec(None), 7, Some(&table)) {
            Err(reason) => assert!(reason.contains("live.view"), "{reason}"),
            Ok(planned) => panic!("expected no pigeon, got {planned:?}"),
        }
    }

    #[test]
    fn pages_are_small_enough_to_renew_the_lease_at_slow_rates() {
        assert_eq!(page_size(500, None, 15_000), 500);
        assert_eq!(page_size(500, Some(10), 15_000), 50, "5 s of sending at 10/s");
        assert_eq!(page_size(500, Some(1), 1_000), 1);
    }
}
