//! librdkafka callbacks: delivery reports settle letters; revokes drain before they commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pigeon_headers::RawHeaders;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;

use super::tracker::PartitionTracker;
use crate::deadletter::CaptureMessage;
use crate::deadletter::{ErrorKind, Job, NewDeadLetter};
use crate::route::Route;

/// Trackers of one topic's partitions, indexed by partition.
type TopicTrackers = Vec<Option<Arc<PartitionTracker>>>;

/// The partitions the router holds, with their trackers.
#[derive(Debug, Default)]
pub struct Trackers {
    by_topic: Mutex<HashMap<Arc<str>, TopicTrackers>>,
}

impl Trackers {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, TopicTrackers>> {
        self.by_topic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tracker of a partition, created on first use.
    pub fn get_or_insert(
        &self,
        topic: &str,
        partition: i32,
        create: impl FnOnce(Arc<str>) -> Arc<PartitionTracker>,
    ) -> Arc<PartitionTracker> {
        let mut map = self.lock();
        if let Some(Some(tracker)) = map.get(topic).and_then(|v| v.get(partition as usize)) {
            return Arc::clone(tracker);
        }
        let key: Arc<str> =
            map.get_key_value(topic).map(|(k, _)| Arc::clone(k)).unwrap_or_else(|| Arc::from(topic));
        let slots = map.entry(Arc::clone(&key)).or_default();
        let index = partition as usize;
        if slots.len() <= index {
            slots.resize(index + 1, None);
        }
        Arc::clone(slots[index].get_or_insert_with(|| create(key)))
    }

    /// The tracker of a partition, if it has one.
    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<PartitionTracker>> {
        self.lock().get(topic).and_then(|v| v.get(partition as usize)).and_then(Clone::clone)
    }

    /// Forgets a partition (it was revoked).
    pub fn remove(&self, topic: &str, partition: i32) -> Option<Arc<PartitionTracker>> {
        self.lock().get_mut(topic).and_then(|v| v.get_mut(partition as usize)).and_then(Option::take)
    }

    /// Every tracked partition.
    pub fn all(&self) -> Vec<Arc<PartitionTracker>> {
        self.lock().values().flatten().flatten().cloned().collect()
    }
}

/// What the producer needs to settle or dead-letter one output.
#[derive(Debug)]
pub struct Delivery {
    /// The source partition.
    pub tracker: Arc<PartitionTracker>,
    /// The source offset.
    pub offset: i64,
    /// The pigeon that sent it.
    pub route: Arc<Route>,
}

/// Producer callbacks.
pub struct RouterProducerContext {
    /// Where failed outputs go to be stored.
    pub dead_letters: UnboundedSender<Job>,
    /// Counters.
    pub stats: Arc<super::RouterStats>,
    /// Destination circuit breakers.
    pub breakers: Arc<super::breaker::Breakers>,
}

impl ClientContext for RouterProducerContext {}

impl ProducerContext for RouterProducerContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        match result {
            Ok(message) => {
                self.breakers.succeeded(message.topic());
                delivery.route.counts.delivered();
                delivery.tracker.settle(delivery.offset);
            }
            Err((error, message)) => {
                self.breakers.failed(message.topic());
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                delivery.route.counts.failed();
                let dead_letter = output_dead_letter(message, &delivery, error.to_string());
                // Without a writer (shutting down) the letter stays unsettled: its offset is
                // not committed and it is read again after the restart.
                let _ = self.dead_letters.send(Job {
                    dead_letter,
                    tracker: delivery.tracker,
                    offset: delivery.offset,
                });
            }
        }
    }
}

/// A dead letter for an output that Kafka would not take.
pub fn output_dead_letter<M>(output: &M, delivery: &Delivery, error: String) -> NewDeadLetter
where
    M: Message,
    M::Headers: RawHeaders,
{
    let mut dead = NewDeadLetter::from_message(output, ErrorKind::Produce, error);
    let header = |name: &str| {
        pigeon_headers::of(output)
            .find(|h| h.is(name))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    dead.letter_id = header(pigeon_sdk::header::ID).unwrap_or_default();
    dead.dest_topic = Some(output.topic().to_owned());
    dead.dest_tag = header(pigeon_sdk::header::TYPE);
    dead.source_topic = delivery.tracker.topic.to_string();
    dead.source_partition = delivery.tracker.partition;
    dead.source_offset = delivery.offset;
    dead.pigeon_id = Some(delivery.route.id.to_string());
    dead.pigeon_version = Some(delivery.route.version);
    dead.first_retry = delivery.route.retry.after(1);
    dead
}

/// Consumer callbacks.
pub struct RouterConsumerContext {
    /// Partitions held.
    pub trackers: Arc<Trackers>,
    /// How long a revoke waits for in-flight letters.
    pub drain_timeout: Duration,
    /// Set once partitions are assigned: the router consumes.
    pub ready: Arc<AtomicBool>,
    /// Which subscriptions are freshly needed.
    pub fresh: Arc<super::FreshTopics>,
    /// Partitions assigned to this router now.
    pub assigned: AtomicI64,
}

impl ClientContext for RouterConsumerContext {}

/// How long a rebalance waits for offset look-ups.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

impl RouterConsumerContext {
    /// Positions the assigned partitions of freshly needed topics at the first letter since
    /// their pigeons went live, unless the group has committed further; returns those
    /// positions, to be committed once assigned so any instance that takes the partition
    /// later continues from there. A look-up that fails leaves the partition at its committed
    /// offset: old letters may then fly, but none is skipped.
    fn position_fresh(
        &self,
        consumer: &BaseConsumer<Self>,
        assigned: &mut TopicPartitionList,
    ) -> TopicPartitionList {
        let mut positioned = TopicPartitionList::new();
        let fresh: Vec<(String, i32, i64)> = assigned
            .elements()
            .iter()
            .filter_map(|e| {
                Some((e.topic().to_owned(), e.partition(), self.fresh.since(e.topic(), e.partition())?))
            })
            .collect();
        if fresh.is_empty() {
            return positioned;
        }
        let list = |offset: &dyn Fn(i64) -> Offset| {
            let mut tpl = TopicPartitionList::new();
            for (topic, partition, since) in &fresh {
                let _ = tpl.add_partition_offset(topic, *partition, offset(*since));
            }
            tpl
        };
        // The ends before the times: a letter written between the two look-ups is then
        // found by the second, never skipped by the first.
        let looked_up = consumer.offsets_for_times(list(&|_| Offset::End), LOOKUP_TIMEOUT).and_then(|ends| {
            let since = consumer.offsets_for_times(list(&Offset::Offset), LOOKUP_TIMEOUT)?;
            let committed = consumer.committed_offsets(list(&|_| Offset::Invalid), LOOKUP_TIMEOUT)?;
            Ok((ends, since, committed))
        });
        let (ends, since, committed) = match looked_up {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, partitions = fresh.len(), "cannot find where newly needed topics start; they continue from their committed offsets");
                return positioned;
            }
        };
        for (topic, partition, since_ms) in fresh {
            let answer = |list: &TopicPartitionList| {
                list.find_partition(&topic, partition).filter(|e| e.error().is_ok()).map(|e| e.offset())
            };
            let start = match (answer(&since), answer(&ends)) {
                (Some(Offset::Offset(n)), _) if n >= 0 => n,
                // No letter since then (or a broker that cannot look up by time): the end as it
                // was before the look-up by time.
                (Some(Offset::End), Some(Offset::Offset(end))) if end >= 0 => end,
                _ => {
                    tracing::warn!(
                        topic,
                        partition,
                        "no start found for a newly needed topic; it continues from its committed offset"
                    );
                    continue;
                }
            };
            let position = match answer(&committed) {
                Some(Offset::Offset(c)) => c.max(start),
                _ => start,
            };
            let _ = assigned.set_partition_offset(&topic, partition, Offset::Offset(position));
            let _ = positioned.add_partition_offset(&topic, partition, Offset::Offset(position));
            self.fresh.positioned(&topic, partition);
            tracing::info!(
                topic,
                partition,
                offset = position,
                since_ms,
                "newly needed topic starts where its pigeons went live"
            );
        }
        positioned
    }
}

impl ConsumerContext for RouterConsumerContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let positioned = self.position_fresh(consumer, tpl);
                let assigned =
                    if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, "assigning partitions");
                }
                if positioned.count() > 0 {
                    if let Err(e) = consumer.commit(&positioned, CommitMode::Async) {
                        tracing::warn!(error = %e, "committing the start of newly needed topics");
                    }
                }
                self.post_rebalance(consumer, &Rebalance::Assign(tpl));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                let unassigned =
                    if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = unassigned {
                    tracing::error!(error = %e, "unassigning partitions");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; giving up the assignment");
                let unassigned =
                    if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = unassigned {
                    tracing::error!(error = %e, "unassigning partitions");
                }
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        // Settle what is in flight, then commit exactly up to it, so the next owner neither
        // skips nor repeats letters.
        let mut offsets = TopicPartitionList::new();
        for element in revoked.elements() {
            let Some(tracker) = self.trackers.remove(element.topic(), element.partition()) else {
                continue;
            };
            if !tracker.wait_settled(self.drain_timeout) {
                tracing::warn!(
                    topic = element.topic(),
                    partition = element.partition(),
                    in_flight = tracker.in_flight(),
                    "revoked before in-flight letters settled; they will be delivered again"
                );
            }
            if let Some(watermark) = tracker.watermark() {
                let _ = offsets.add_partition_offset(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(watermark),
                );
            }
        }
        if offsets.count() > 0 {
            if let Err(e) = consumer.store_offsets(&offsets) {
                tracing::debug!(error = %e, "storing offsets of revoked partitions");
            }
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(error = %e, "committing offsets of revoked partitions");
            }
        }
        self.assigned.fetch_sub(revoked.count() as i64, Ordering::AcqRel);
        tracing::info!(partitions = revoked.count(), "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            self.assigned.fetch_add(assigned.count() as i64, Ordering::AcqRel);
            tracing::info!(partitions = assigned.count(), "partitions assigned");
            self.ready.store(true, Ordering::Release);
        }
    }
}
