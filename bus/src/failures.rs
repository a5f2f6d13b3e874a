//! Handler failures reported by modules on `pigeon.failed`, stored as dead letters so the
//! retrier sends them to the module again on the pigeon's schedule.
//!
//! A report is the letter exactly as the module received it (key, headers, payload) plus
//! [`header`]s naming the topic it was consumed from, the module, and the error. The report's
//! offset is committed only once its dead letter is stored (the same writer as the router's).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pigeon_headers::RawHeaders;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::deadletter::schedule::Schedule;
use crate::deadletter::{self, ErrorKind, Job, NewDeadLetter, StoredHeader};
use crate::router::tracker::PartitionTracker;
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
    let module = text(header::MODULE).unwrap_or_else(|| "an unnamed module".into());
    let error = text(header::ERROR).unwrap_or_else(|| "no error given".into());
    let (error_kind, error_message) = match &topic {
        Some(_) => (ErrorKind::Handler, format!("handler of {module} failed: {error}")),
        None => (
            ErrorKind::Malformed,
            format!("failure report from {module} without the {} header: {error}", header::TOPIC),
        ),
    };
    let mut dead = NewDeadLetter::from_message(report, error_kind, error_message);
    dead.letter_id = text(pigeon_sdk::header::ID).unwrap_or_default();
    dead.pigeon_id = text(pigeon_sdk::header::PIGEON);
    dead.dest_tag = text(pigeon_sdk::header::TYPE);
    dead.dest_topic = topic;
    dead.headers.retain(|h| !header::ALL.contains(&h.name.as_str()));
    dead.first_retry = Schedule::default().after(1);
    dead
}

/// Pigeons' retry schedules, read from the store and kept for a little while.
struct Schedules {
    store: Arc<dyn Store>,
    known: HashMap<String, (Schedule, std::time::Instant)>,
}

impl Schedules {
    const KEEP: Duration = Duration::from_secs(10);

    /// The pigeon's schedule; the default one for a pigeon that is gone or unreadable.
    async fn of(&mut self, pigeon: &str) -> Schedule {
        if let Some((schedule, read)) = self.known.get(pigeon) {
            if read.elapsed() < Self::KEEP {
                return schedule.clone();
            }
        }
        let schedule = match self.store.pigeon(pigeon).await {
            Ok(Some(stored)) => Schedule::parse(stored.spec.retry.as_deref()).unwrap_or_default(),
            Ok(None) => Schedule::default(),
            Err(e) => {
                tracing::warn!(pigeon, error = %e, "cannot read the pigeon's retry schedule; using the default");
                return Schedule::default();
            }
        };
        self.known.insert(pigeon.to_owned(), (schedule.clone(), std::time::Instant::now()));
        schedule
    }
}

/// Consumes `pigeon.failed` until `cancel` fires, then stores what it read and commits.
pub async fn run(
    consumer: ClientConfig,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = consumer.create()?;
    consumer.subscribe(&[FAILED])?;
    let (jobs, jobs_rx) = mpsc::unbounded_channel();
    let writer_stop = CancellationToken::new();
    let mut schedules = Schedules { store: Arc::clone(&store), known: HashMap::new() };
    let writer = tokio::spawn(deadletter::write_dead_letters(store, jobs_rx, writer_stop.clone()));
    // Trackers only settle here (never pause), so their resume channel stays unused.
    let (resume, _) = mpsc::unbounded_channel();
    let mut trackers: HashMap<i32, Arc<PartitionTracker>> = HashMap::new();
    let mut store_tick = tokio::time::interval(Duration::from_millis(200));
    tracing::info!(topic = FAILED, "reading handler failures");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = store_tick.tick() => {
                store_offsets(&consumer, &trackers);
            }
            received = consumer.recv() => match received {
                Ok(report) => {
                    let tracker = Arc::clone(trackers.entry(report.partition()).or_insert_with(|| {
                        PartitionTracker::new(Arc::from(FAILED), report.partition(), usize::MAX, resume.clone())
                    }));
                    let offset = report.offset();
                    tracker.begin(offset, 1, usize::MAX);
                    let mut dead_letter = dead_letter_of(&report);
                    if let (Some(pigeon), ErrorKind::Handler) = (&dead_letter.pigeon_id, dead_letter.error_kind) {
                        dead_letter.first_retry = schedules.of(pigeon).await.after(1);
                        crate::counters::book().of(pigeon).failed();
                    }
                    let _ = jobs.send(Job { dead_letter, tracker, offset });
                }
                Err(e) => tracing::warn!(error = %e, "reading pigeon.failed"),
            },
        }
    }
    // Store what was read (bounded), then commit up to it.
    let pending: Vec<Arc<PartitionTracker>> = trackers.values().cloned().collect();
    let _ =
        tokio::task::spawn_blocking(move || pending.iter().all(|t| t.wait_settled(Duration::from_secs(10))))
            .await;
    {
        let offsets = store_offsets(&consumer, &trackers);
        if offsets.count() > 0 {
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(error = %e, "final commit of pigeon.failed");
            }
        }
    }
    drop(jobs);
    writer_stop.cancel();
    let _ = writer.await;
    Ok(())
}

fn store_offsets(
    consumer: &StreamConsumer,
    trackers: &HashMap<i32, Arc<PartitionTracker>>,
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for tracker in trackers.values() {
        if let Some(watermark) = tracker.watermark() {
            let _ = tpl.add_partition_offset(FAILED, tracker.partition, Offset::Offset(watermark));
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "store offsets of pigeon.failed");
        }
    }
    tpl
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
