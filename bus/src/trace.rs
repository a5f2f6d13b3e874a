//! A letter's path, from what the bus already keeps: where it was read (its archive row, or
//! Kafka searched around the time in its UUIDv7 id), which pigeons take it now and the outputs
//! the one output plan makes of it, whether the router acknowledged it (its group committed
//! past it), its dead letters, its archive row, the replays that sent it again, and each
//! module's receipt. Nothing is recorded per letter for this.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use pigeon_sdk::receipt::Receipt;
use pigeon_sdk::{header, LetterId};

use crate::archive::ArchivedLetter;
use crate::route::Routes;
use crate::router::output::{owned_outputs, reroute, OwnedOutput};
use crate::store::{Store, StoreError};

/// A letter's path.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LetterTrace {
    pub letter_id: String,
    /// When the letter was made, from its id (a UUIDv7, or a derived id, carries its time).
    pub id_time_ms: Option<i64>,
    /// Where the router read it.
    pub source: Option<SourcePosition>,
    /// Whether the router's group committed past it: its outputs were acknowledged by Kafka or
    /// stored as dead letters. Absent when that could not be asked.
    pub acknowledged: Option<bool>,
    /// The pigeons that take it now, each with its outputs.
    pub pigeons: Vec<TracedPigeon>,
    /// Its dead letters, oldest first.
    pub dead_letters: Vec<TracedDeadLetter>,
    /// Its archive row.
    pub archive: Option<TracedArchive>,
    /// Replays that sent it again.
    pub replays: Vec<TracedReplay>,
    /// Modules' receipts of it (those the bus sampled), oldest first.
    #[schema(value_type = Vec<Object>)]
    pub receipts: Vec<Receipt>,
    /// What could not be found or asked, in words.
    pub notes: Vec<String>,
}

/// Where a letter was read.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Its Kafka timestamp (unix ms).
    pub time_ms: i64,
    pub tag: Option<String>,
    /// How it was found: `archive`, `kafka` (searched around its id's time) or `dead_letter`.
    pub found_by: String,
}

/// A pigeon that takes the letter, as it stands now.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TracedPigeon {
    pub id: String,
    pub version: i64,
    pub action: String,
    pub outputs: Vec<TracedOutput>,
}

/// One output of the letter.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TracedOutput {
    pub topic: String,
    pub tag: Option<String>,
    /// `acknowledged` (the router committed past the letter and no dead letter says
    /// otherwise), `dead_letter` (see its status), `in_flight` (not yet committed) or `unknown`.
    pub status: String,
    /// The dead letter of this output, if one was stored.
    pub dead_letter: Option<i64>,
}

/// One dead letter of the letter.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TracedDeadLetter {
    pub id: i64,
    pub pigeon_id: Option<String>,
    pub pigeon_version: Option<i64>,
    pub dest_topic: Option<String>,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub error: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The letter's archive row.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TracedArchive {
    pub pigeon_id: String,
    pub archived_at: i64,
    pub keys: BTreeMap<String, String>,
}

/// A replay job that sent the letter again.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TracedReplay {
    pub job: i64,
    pub status: String,
    /// The id the replayed letter carried.
    pub replay_id: String,
    #[schema(value_type = Vec<Object>)]
    pub receipts: Vec<Receipt>,
}

/// How the trace asks Kafka: a client configuration (brokers, security) and the router's group.
#[derive(Clone)]
pub struct KafkaLookup {
    /// Properties of a consumer that joins no group and commits nothing.
    pub client: ClientConfig,
    /// The router's consumer group, whose committed offsets say what it acknowledged.
    pub router_group: String,
}

/// How far around the id's time Kafka is searched, and how much of it at most.
const SEARCH_BEFORE_MS: i64 = 10_000;
const SEARCH_AFTER_MS: i64 = 120_000;
const SEARCH_MESSAGES: usize = 500_000;
const SEARCH_TIME: Duration = Duration::from_secs(10);
const ASK: Duration = Duration::from_secs(5);

impl KafkaLookup {
    /// Searches `topics`, one after the other, for the message whose `ce_id` is `id`, from a
    /// little before `time_ms` to a while after it, within bounds ([`SEARCH_MESSAGES`]
    /// messages, [`SEARCH_TIME`] in all). Blocking.
    pub fn find(&self, topics: &[String], id: &str, time_ms: i64) -> Result<Option<OwnedMessage>, String> {
        let consumer: BaseConsumer = self
            .client
            .clone()
            .set("group.id", format!("pigeon-trace-{}", LetterId::new().as_uuid().simple()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(|e| format!("a Kafka client: {e}"))?;
        let (deadline, mut read) = (Instant::now() + SEARCH_TIME, 0usize);
        for topic in topics {
            let metadata =
                consumer.fetch_metadata(Some(topic), ASK).map_err(|e| format!("metadata of {topic}: {e}"))?;
            let mut start = TopicPartitionList::new();
            let since = Offset::Offset(time_ms.saturating_sub(SEARCH_BEFORE_MS));
            for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let _ = start.add_partition_offset(topic, p.id(), since);
            }
            if start.count() == 0 {
                continue;
            }
            let positions =
                consumer.offsets_for_times(start, ASK).map_err(|e| format!("offsets by time: {e}"))?;
            let mut assignment = TopicPartitionList::new();
            for e in positions.elements() {
                // A partition with nothing since then answers End: nothing to read there.
                if let Offset::Offset(offset) = e.offset() {
                    let _ = assignment.add_partition_offset(topic, e.partition(), Offset::Offset(offset));
                }
            }
            let mut open: std::collections::HashSet<i32> =
                assignment.elements().iter().map(|e| e.partition()).collect();
            consumer.assign(&assignment).map_err(|e| format!("assigning: {e}"))?;
            while !open.is_empty() {
                if read >= SEARCH_MESSAGES || Instant::now() >= deadline {
                    return Ok(None);
                }
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        read += 1;
                        if pigeon_headers::of(&m).any(|h| h.is(header::ID) && h.value == Some(id.as_bytes()))
                        {
                            return Ok(Some(m.detach()));
                        }
                        let past = m
                            .timestamp()
                            .to_millis()
                            .is_some_and(|t| t > time_ms.saturating_add(SEARCH_AFTER_MS));
                        if past && open.remove(&m.partition()) {
                            let _ = consumer.pause(&partition_list(topic, m.partition()));
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                        open.remove(&partition);
                    }
                    Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
                    None => {}
                }
            }
        }
        Ok(None)
    }

    /// The offset the router's group committed for a partition. Blocking.
    pub fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>, String> {
        let consumer: BaseConsumer = self
            .client
            .clone()
            .set("group.id", &self.router_group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| format!("a Kafka client: {e}"))?;
        let committed = consumer
            .committed_offsets(partition_list(topic, partition), ASK)
            .map_err(|e| format!("committed offsets: {e}"))?;
        Ok(committed.find_partition(topic, partition).and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
    }
}

fn partition_list(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// The time in a letter id: a UUIDv7's (or a derived id's) milliseconds.
pub fn id_time_ms(id: &str) -> Option<i64> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    let (seconds, nanos) = uuid.get_timestamp()?.to_unix();
    i64::try_from(seconds).ok()?.checked_mul(1_000)?.checked_add(i64::from(nanos / 1_000_000))
}

/// Builds a letter's trace. `routes` are the tables live now (absent where no watcher runs);
/// `kafka` is how to ask Kafka (absent: the trace says what it could not ask).
pub async fn trace(
    store: &dyn Store,
    routes: Option<Arc<Routes>>,
    kafka: Option<KafkaLookup>,
    letter_id: &str,
) -> Result<LetterTrace, StoreError> {
    let mut notes = Vec::new();
    let id_time = id_time_ms(letter_id);
    let archived = store.archived_letter(letter_id).await?;
    let dead = store.dead_letters_of(letter_id).await?;
    let receipts = store.receipts_of(letter_id).await?;

    // Where it was read: the archive row, else Kafka around its id's time, else a dead letter.
    let mut message = archived.as_ref().map(message_of);
    let mut found_by = archived.as_ref().map(|_| "archive");
    if message.is_none() {
        match (&kafka, id_time, &routes) {
            (Some(kafka), Some(time), Some(routes)) => {
                let mut topics = routes.table.source_topics();
                topics.push(pigeon_sdk::INGRESS.to_owned());
                let (lookup, id) = (kafka.clone(), letter_id.to_owned());
                match tokio::task::spawn_blocking(move || lookup.find(&topics, &id, time)).await {
                    Ok(Ok(Some(m))) => (message, found_by) = (Some(m), Some("kafka")),
                    Ok(Ok(None)) => notes.push(format!(
                        "not archived, and not found on the pigeons' source topics or pigeon.ingress from {} s before to {} s after its id's time",
                        SEARCH_BEFORE_MS / 1_000,
                        SEARCH_AFTER_MS / 1_000
                    )),
                    Ok(Err(e)) => notes.push(format!("searching Kafka: {e}")),
                    Err(e) => notes.push(format!("searching Kafka: {e}")),
                }
            }
            (_, None, _) => notes.push("not archived, and its id carries no time to search Kafka by".into()),
            _ => notes.push("not archived, and this instance cannot search Kafka".into()),
        }
    }
    let source = match (&message, found_by) {
        (Some(m), Some(by)) => Some(SourcePosition {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            time_ms: m.timestamp().to_millis().unwrap_or_default(),
            tag: pigeon_headers::of(m)
                .find(|h| h.is(header::TYPE))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            found_by: by.to_owned(),
        }),
        _ => dead.first().map(|d| SourcePosition {
            topic: d.letter.source_topic.clone(),
            partition: d.letter.source_partition,
            offset: d.letter.source_offset,
            time_ms: d.created_at,
            tag: None,
            found_by: "dead_letter".into(),
        }),
    };

    // Acknowledged: the router's group committed past it.
    let acknowledged = match (&kafka, &source) {
        (Some(kafka), Some(source)) => {
            let (lookup, topic, partition) = (kafka.clone(), source.topic.clone(), source.partition);
            match tokio::task::spawn_blocking(move || lookup.committed(&topic, partition)).await {
                Ok(Ok(committed)) => Some(committed.is_some_and(|c| c > source.offset)),
                Ok(Err(e)) => {
                    notes.push(format!("asking the router's committed offset: {e}"));
                    None
                }
                Err(e) => {
                    notes.push(format!("asking the router's committed offset: {e}"));
                    None
                }
            }
        }
        _ => None,
    };

    // The pigeons that take it now, and their outputs: the one output plan.
    let mut pigeons = Vec::new();
    match (&message, &routes) {
        (Some(m), Some(routes)) => {
            let time = m.timestamp().to_millis().unwrap_or_default();
            match reroute(&routes.table, m, time) {
                Ok((tag, matched)) => {
                    let refs: Vec<_> = matched.iter().collect();
                    let planned =
                        owned_outputs("trace", m, letter_id, &tag, time, &refs, 1, routes.table.contracts());
                    for route in &matched {
                        let outputs = planned
                            .outputs
                            .iter()
                            .filter(|o| output_header(o, header::PIGEON).as_deref() == Some(&*route.id))
                            .map(|o| {
                                let dead_letter = dead
                                    .iter()
                                    .find(|d| d.letter.dest_topic.as_deref() == Some(o.topic.as_str()))
                                    .map(|d| d.id);
                                let status = match (dead_letter, acknowledged) {
                                    (Some(_), _) => "dead_letter",
                                    (None, Some(true)) => "acknowledged",
                                    (None, Some(false)) => "in_flight",
                                    (None, None) => "unknown",
                                };
                                TracedOutput {
                                    topic: o.topic.clone(),
                                    tag: output_header(o, header::TYPE),
                                    status: status.into(),
                                    dead_letter,
                                }
                            })
                            .collect();
                        pigeons.push(TracedPigeon {
                            id: route.id.to_string(),
                            version: route.version,
                            action: format!("{:?}", route.action).to_lowercase(),
                            outputs,
                        });
                    }
                    if !planned.refused.is_empty() {
                        notes.push(format!("{} pigeon(s) refuse the letter now", planned.refused.len()));
                    }
                }
                Err(why) => notes.push(format!("no pigeon takes it now: {why}")),
            }
        }
        (Some(_), None) => notes.push("this instance holds no route tables".into()),
        _ => {}
    }

    // Replays that sent it again: jobs whose query holds it, with the id each gave it.
    let mut replays = Vec::new();
    if let Some(letter) = &archived {
        for job in store.replay_jobs(100).await? {
            if job.spec.query.matches(letter) {
                let replay_id = LetterId::replayed(
                    &letter.letter_id,
                    job.id,
                    u64::try_from(letter.position.time).unwrap_or(0),
                )
                .to_string();
                replays.push(TracedReplay {
                    job: job.id,
                    status: format!("{:?}", job.status).to_lowercase(),
                    receipts: store.receipts_of(&replay_id).await?,
                    replay_id,
                });
            }
        }
    }

    Ok(LetterTrace {
        letter_id: letter_id.to_owned(),
        id_time_ms: id_time,
        source,
        acknowledged,
        pigeons,
        dead_letters: dead
            .iter()
            .map(|d| TracedDeadLetter {
                id: d.id,
                pigeon_id: d.letter.pigeon_id.clone(),
                pigeon_version: d.letter.pigeon_version,
                dest_topic: d.letter.dest_topic.clone(),
                kind: d.letter.error_kind.as_str().to_owned(),
                status: d.status.as_str().to_owned(),
                attempts: d.attempts,
                error: d.letter.error_message.clone(),
                created_at: d.created_at,
                updated_at: d.updated_at,
            })
            .collect(),
        archive: archived.as_ref().map(|a| TracedArchive {
            pigeon_id: a.pigeon_id.clone(),
            archived_at: a.archived_at,
            keys: a.keys.iter().map(|(k, v)| (k.name().to_owned(), v.clone())).collect(),
        }),
        replays,
        receipts,
        notes,
    })
}

/// The archived letter as the message it was read as.
fn message_of(letter: &ArchivedLetter) -> OwnedMessage {
    let headers = letter
        .headers
        .iter()
        .fold(rdkafka::message::OwnedHeaders::new_with_capacity(letter.headers.len()), |headers, h| {
            pigeon_headers::add(headers, h.name_bytes(), h.value())
        });
    crate::archive::as_message(letter, headers)
}

fn output_header(output: &OwnedOutput, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    output
        .headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_id_tells_its_time_when_it_carries_one() {
        let id = LetterId::derived("live.gift", 3, 99, 1_700_000_000_123).to_string();
        assert_eq!(id_time_ms(&id), Some(1_700_000_000_123));
        let fresh = LetterId::new().to_string();
        let now = crate::store::now_ms();
        assert!(id_time_ms(&fresh).is_some_and(|t| (now - t).abs() < 5_000), "{fresh}");
        assert_eq!(id_time_ms("not-a-uuid"), None);
        assert_eq!(id_time_ms(&uuid::Uuid::new_v4().to_string()), None, "a v4 id has no time");
    }
}
