//! librdkafka callbacks: delivery reports settle letters; revokes drain before they commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;

use super::tracker::PartitionTracker;
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
                delivery.tracker.settle(delivery.offset);
            }
            Err((error, message)) => {
                self.breakers.failed(message.topic());
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
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
pub fn output_dead_letter<M: Message>(output: &M, delivery: &Delivery, error: String) -> NewDeadLetter {
    let mut dead = NewDeadLetter::from_message(output, ErrorKind::Produce, error);
    let header = |name: &str| {
        output
            .headers()
            .and_then(|hs| hs.iter().find(|h| h.key == name))
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
}

impl ClientContext for RouterConsumerContext {}

impl ConsumerContext for RouterConsumerContext {
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
        tracing::info!(partitions = revoked.count(), "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            tracing::info!(partitions = assigned.count(), "partitions assigned");
            self.ready.store(true, Ordering::Release);
        }
    }
}
