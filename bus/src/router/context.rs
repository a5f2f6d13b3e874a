//! librdkafka callbacks: delivery reports settle letters in the router's ledger; revokes drain
//! before they commit (through the ledger, as every Pigeon consumer does).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pigeon_headers::RawHeaders;
use pigeon_sdk::ledger::{Ledger, PartitionLedger};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;

use crate::deadletter::{ErrorKind, Job, NewDeadLetter};
use crate::route::Route;

/// What the producer needs to settle or dead-letter one output.
#[derive(Debug)]
pub struct Delivery {
    /// The source partition's ledger.
    pub ledger: Arc<PartitionLedger>,
    /// The source offset.
    pub offset: i64,
    /// The pigeon that sent it.
    pub route: Arc<Route>,
    /// The index of its destination's series in the route's (`RouteMetrics::destination`).
    pub destination: Option<u16>,
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
                delivery.route.metrics.delivered(delivery.destination, delivery.offset, || {
                    pigeon_headers::produce_latency(message)
                });
                delivery.ledger.settle(delivery.offset);
            }
            Err((error, message)) => {
                self.breakers.failed(message.topic());
                self.stats.dead_lettered(ErrorKind::Produce);
                delivery.route.counts.failed();
                delivery.route.metrics.output_failed(delivery.destination);
                let dead_letter = output_dead_letter(message, &delivery, error.to_string());
                // Without a writer (shutting down) the letter stays unsettled: its offset is
                // not committed and it is read again after the restart.
                let _ = self.dead_letters.send(Job {
                    dead_letter,
                    ledger: delivery.ledger,
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
    let route = &delivery.route;
    let pigeon = (&*route.id, route.version);
    let mut dead =
        super::output::dead_output(output, pigeon, ErrorKind::Produce, error, route.retry.after(1));
    dead.source_topic = delivery.ledger.topic.to_string();
    dead.source_partition = delivery.ledger.partition;
    dead.source_offset = delivery.offset;
    dead
}

/// Consumer callbacks.
pub struct RouterConsumerContext {
    /// Letters in flight per partition held.
    pub ledger: Arc<Ledger>,
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
        self.ledger.commit_revoked(consumer, revoked, self.drain_timeout);
        self.assigned.fetch_sub(revoked.count() as i64, Ordering::AcqRel);
        tracing::info!(partitions = revoked.count(), which = %Partitions(revoked), "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            self.assigned.fetch_add(assigned.count() as i64, Ordering::AcqRel);
            tracing::info!(partitions = assigned.count(), which = %Partitions(assigned), "partitions assigned");
            self.ready.store(true, Ordering::Release);
        }
    }
}

/// A partition list for the log, by topic: `live.gift[0,3,7] pigeon.ingress[1]`.
struct Partitions<'a>(&'a TopicPartitionList);

impl std::fmt::Display for Partitions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
        for e in self.0.elements() {
            by_topic.entry(e.topic().to_owned()).or_default().push(e.partition());
        }
        for (i, (topic, partitions)) in by_topic.iter_mut().enumerate() {
            partitions.sort_unstable();
            let list = partitions.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
            write!(f, "{}{topic}[{list}]", if i == 0 { "" } else { " " })?;
        }
        Ok(())
    }
}
