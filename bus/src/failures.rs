//! Handler failures reported by modules on `pigeon.failed`, stored as dead letters so the
//! retrier sends them to the module again on the pigeon's schedule.
//!
//! A report is the letter exactly as the module received it (key, headers, payload) plus
//! [`header`]s naming the topic it was consumed from, the module, and the error. The report's
//! offset is committed only once its dead letter is stored (the same writer as the router's,
//! which settles it in the reader's [`Ledger`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pigeon_headers::RawHeaders;
use pigeon_sdk::ledger::{Ledger, LedgerContext};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::deadletter::schedule::Schedule;
use crate::deadletter::{self, ErrorKind, Job, NewDeadLetter, StoredHeader};
use crate::deadletter::{CaptureHeader, CaptureMessage};
use crate::store::fit;
use crate::store::Store;
use crate::topics::FAILED;

/// Headers a failure report adds to the failed letter.
pub mod header {
    pub use pigeon_sdk::header::{FAILED_ERROR as ERROR, FAILED_MODULE as MODULE, FAILED_TOPIC as TOPIC};
    /// Every report header.
    pub const ALL: [&str; 3] = [TOPIC, MODULE, ERROR];
}

/// The consumer group that reads `pigeon.failed`.
pub const GROUP: &str = "pigeon-failed";

/// How long a revoke or the shutdown waits for the reports read to be stored.
const DRAIN: Duration = Duration::from_secs(10);

/// Reads one failure report into a dead letter: kind `handler` (retried on the default
/// schedule) when it names its topic, `malformed` (parked) when it does not.
pub fn dead_letter_of<M>(report: &M) -> NewDeadLetter
where
    M: Message,
    M::Headers: RawHeaders,
{
    let headers: Vec<StoredHeader> = pigeon_headers::of(report).map(StoredHeader::raw).collect();
    let text = |name: &str| {
        headers.iter().find(|h| h.name == name).and_then(|h| h.text.clone()).filter(|t| !t.is_empty())
    };
    let topic = text(header::TOPIC);
    // What a module says is bounded before it is stored or logged.
    let module = text(header::MODULE)
        .map_or_else(|| "an unnamed module".into(), |m| fit::text(&m, MAX_MODULE).into_owned());
    let error = text(header::ERROR)
        .map_or_else(|| "no error given".into(), |e| fit::text(&e, MAX_ERROR).into_owned());
    let (error_kind, error_message) = match &topic {
        Some(topic) => match crate::route::validate_destination_topic(topic) {
            Ok(()) => (ErrorKind::Handler, format!("handler of {module} failed: {error}")),
            Err(e) => (
                ErrorKind::Malformed,
                format!("failure report from {module} names a topic no letter is sent to ({e}): {error}"),
            ),
        },
        None => (
            ErrorKind::Malformed,
            format!("failure report from {module} without the {} header: {error}", header::TOPIC),
        ),
    };
    let mut dead = NewDeadLetter::from_message(report, error_kind, error_message);
    dead.letter_id =
        text(pigeon_sdk::header::ID).map(|id| fit::id(&id, fit::ID).into_owned()).unwrap_or_default();
    dead.pigeon_id = text(pigeon_sdk::header::PIGEON).map(|p| fit::id(&p, fit::NAME).into_owned());
    dead.dest_tag = text(pigeon_sdk::header::TYPE).map(|t| fit::prefix(&t, fit::TOPIC).to_owned());
    dead.dest_topic = match error_kind {
        ErrorKind::Handler => topic,
        // Kept for the operator to read, never redriven there.
        _ => None,
    };
    dead.headers.retain(|h| !header::ALL.contains(&h.name.as_str()));
    dead.first_retry = Schedule::default().after(1);
    dead
}

/// The longest module name a stored report keeps.
const MAX_MODULE: usize = 100;
/// The longest error a stored report keeps.
const MAX_ERROR: usize = 2_000;

/// Whether a handler failure may be redriven to `topic`: the reporting module's own topic, or
/// a destination of the pigeon the report names (a lane, say). The reason when not.
fn redrive_refused(topic: &str, module: Option<&str>, pigeon: Option<&StoredPigeonTopics>) -> Option<String> {
    if module.is_some_and(|m| crate::route::module_topic(m) == topic) {
        return None;
    }
    if pigeon.is_some_and(|p| p.destinations.iter().any(|d| d == topic)) {
        return None;
    }
    Some(format!(
        "the failure report names topic {topic:?}, which is neither the reporting module's topic nor a destination of the pigeon it names; it is not redriven there"
    ))
}

/// What the failures reader keeps of a pigeon: its retry schedule and destination topics.
#[derive(Clone, Debug, Default)]
struct StoredPigeonTopics {
    schedule: Schedule,
    destinations: Vec<String>,
}

/// Pigeons' retry schedules, read from the store and kept for a little while.
struct Schedules {
    store: Arc<dyn Store>,
    known: HashMap<String, (StoredPigeonTopics, std::time::Instant)>,
}

impl Schedules {
    const KEEP: Duration = Duration::from_secs(10);

    /// The pigeon's schedule and destinations; the default schedule and none for a pigeon
    /// that is gone or unreadable.
    async fn of(&mut self, pigeon: &str) -> StoredPigeonTopics {
        if let Some((known, read)) = self.known.get(pigeon) {
            if read.elapsed() < Self::KEEP {
                return known.clone();
            }
        }
        let known = match self.store.pigeon(pigeon).await {
            Ok(Some(stored)) => StoredPigeonTopics {
                schedule: Schedule::parse(stored.spec.retry.as_deref()).unwrap_or_default(),
                destinations: stored
                    .spec
                    .destinations
                    .iter()
                    .filter_map(|d| crate::route::resolve(d).ok())
                    .map(|d| d.topic)
                    .collect(),
            },
            Ok(None) => StoredPigeonTopics::default(),
            Err(e) => {
                tracing::warn!(pigeon, error = %e, "cannot read the pigeon; using the default retry schedule");
                return StoredPigeonTopics::default();
            }
        };
        self.known.insert(pigeon.to_owned(), (known.clone(), std::time::Instant::now()));
        known
    }
}

/// Consumes `pigeon.failed` until `cancel` fires, then stores what it read and commits.
pub async fn run(
    consumer: ClientConfig,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let ledger = Arc::new(Ledger::new("failures reader"));
    let consumer: StreamConsumer<LedgerContext> =
        consumer.create_with_context(LedgerContext::new(Arc::clone(&ledger), DRAIN))?;
    consumer.subscribe(&[FAILED])?;
    let (jobs, jobs_rx) = mpsc::unbounded_channel();
    let writer_stop = CancellationToken::new();
    let mut schedules = Schedules { store: Arc::clone(&store), known: HashMap::new() };
    let writer = tokio::spawn(deadletter::write_dead_letters(store, jobs_rx, writer_stop.clone()));
    let mut store_tick = tokio::time::interval(Duration::from_millis(200));
    tracing::info!(topic = FAILED, "reading handler failures");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = store_tick.tick() => {
                ledger.store_offsets(&consumer);
            }
            received = consumer.recv() => match received {
                Ok(report) => {
                    let partition = ledger.partition(report.topic(), report.partition());
                    let offset = report.offset();
                    partition.begin(offset, 1);
                    let mut dead_letter = dead_letter_of(&report);
                    if dead_letter.error_kind == ErrorKind::Handler {
                        let pigeon = match &dead_letter.pigeon_id {
                            Some(id) => Some(schedules.of(id).await),
                            None => None,
                        };
                        let module = pigeon_headers::of(&report).find(|h| h.is(header::MODULE)).and_then(|h| h.text());
                        let topic = dead_letter.dest_topic.clone().unwrap_or_default();
                        if let Some(reason) = redrive_refused(&topic, module, pigeon.as_ref()) {
                            dead_letter.error_kind = ErrorKind::Malformed;
                            dead_letter.error_message = format!("{reason}: {}", dead_letter.error_message);
                            dead_letter.dest_topic = None;
                        } else if let (Some(id), Some(pigeon)) = (&dead_letter.pigeon_id, &pigeon) {
                            dead_letter.first_retry = pigeon.schedule.after(1);
                            crate::counters::book().of(id).failed();
                        }
                    }
                    let _ = jobs.send(Job { dead_letter, ledger: partition, offset });
                }
                Err(e) => tracing::warn!(error = %e, "reading pigeon.failed"),
            },
        }
    }
    // Store what was read (bounded), then commit up to it.
    ledger.drain_and_commit_async(&consumer, DRAIN).await;
    drop(jobs);
    writer_stop.cancel();
    let _ = writer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
    use rdkafka::Timestamp;

    fn report(headers: &[(&str, &str)]) -> OwnedMessage {
        let headers = headers
            .iter()
            .fold(OwnedHeaders::new(), |hs, (k, v)| hs.insert(Header { key: k, value: Some(v.as_bytes()) }));
        OwnedMessage::new(
            Some(br#"{"userId":42}"#.to_vec()),
            Some(b"room-1".to_vec()),
            FAILED.into(),
            Timestamp::NotAvailable,
            2,
            17,
            Some(headers),
        )
    }

    #[test]
    fn a_report_becomes_a_handler_dead_letter_for_the_module_topic() {
        let dead = dead_letter_of(&report(&[
            ("ce_id", "01a208e2-9eb6-7227-a459-797e4954dd34"),
            ("ce_type", "chest.drop"),
            ("ce_pigeon", "gift-chest"),
            ("ce_attempt", "1"),
            (header::TOPIC, "pigeon.module.act-toy"),
            (header::MODULE, "act-toy"),
            (header::ERROR, "chest service timed out"),
        ]));
        assert_eq!(dead.error_kind, ErrorKind::Handler);
        assert_eq!(dead.error_message, "handler of act-toy failed: chest service timed out");
        assert_eq!(dead.dest_topic.as_deref(), Some("pigeon.module.act-toy"));
        assert_eq!(dead.dest_tag.as_deref(), Some("chest.drop"));
        assert_eq!(dead.pigeon_id.as_deref(), Some("gift-chest"));
        assert_eq!(dead.letter_id, "01a208e2-9eb6-7227-a459-797e4954dd34");
        assert_eq!((dead.source_topic.as_str(), dead.source_partition, dead.source_offset), (FAILED, 2, 17));
        assert_eq!(dead.key.as_deref(), Some(b"room-1".as_slice()));
        let names: Vec<&str> = dead.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["ce_id", "ce_type", "ce_pigeon", "ce_attempt"], "report headers are not resent");
        assert_eq!(dead.initial_status(), crate::deadletter::Status::Pending);
    }

    #[test]
    fn a_report_naming_a_bus_topic_is_parked_and_never_redriven_there() {
        for topic in ["pigeon.control", "pigeon.ingress", "__consumer_offsets", "not a topic!"] {
            let dead = dead_letter_of(&report(&[
                (header::TOPIC, topic),
                (header::MODULE, "m"),
                (header::ERROR, "e"),
            ]));
            assert_eq!(dead.error_kind, ErrorKind::Malformed, "{topic}");
            assert_eq!(dead.dest_topic, None, "{topic}");
            assert_eq!(dead.initial_status(), crate::deadletter::Status::Parked);
        }
        // Its own module topic, or a destination of the pigeon it names; nothing else.
        let lanes = StoredPigeonTopics { destinations: vec!["lane.audit".into()], ..Default::default() };
        assert_eq!(redrive_refused("pigeon.module.m", Some("m"), None), None);
        assert_eq!(redrive_refused("lane.audit", Some("m"), Some(&lanes)), None);
        assert!(redrive_refused("pigeon.module.other", Some("m"), Some(&lanes)).is_some());
        assert!(redrive_refused("live.gift", None, None).is_some());
    }

    #[test]
    fn what_a_module_says_is_bounded() {
        let long = "x".repeat(100_000);
        let dead = dead_letter_of(&report(&[
            (header::TOPIC, "pigeon.module.m"),
            (header::MODULE, &long),
            (header::ERROR, &long),
            ("ce_id", &long),
            ("ce_pigeon", &long),
        ]));
        assert!(dead.error_message.len() < 2_500, "{}", dead.error_message.len());
        assert!(dead.error_message.contains("(100000 bytes)"));
        assert!(dead.letter_id.len() < 200 && dead.pigeon_id.as_ref().unwrap().len() < 200);
    }

    #[test]
    fn a_report_without_its_topic_is_parked_not_dropped() {
        let dead = dead_letter_of(&report(&[(header::ERROR, "boom")]));
        assert_eq!(dead.error_kind, ErrorKind::Malformed);
        assert!(
            dead.error_message.contains("without the pigeon_failed_topic header"),
            "{}",
            dead.error_message
        );
        assert_eq!(dead.initial_status(), crate::deadletter::Status::Parked);
        assert_eq!(dead.payload.as_deref(), Some(br#"{"userId":42}"#.as_slice()));
    }
}
