//! What the admin role measures on a timer, whatever else runs on the bus: the consumer groups'
//! lag per partition (their committed offsets against the high watermarks, so the lag shows
//! while every router is down), the module instances the registry knows, and the dead letters
//! the store holds. Each round is bounded in time; a round that fails leaves the gauges as they
//! were and says why in the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use metrics::Gauge;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::control::Tables;
use crate::prometheus::{CONSUMER_LAG, DEAD_LETTERS_STORED, REGISTRY_INSTANCES};
use crate::route::RouteTable;
use crate::store::{now_ms, Store};

/// How often a round runs.
pub const EVERY: Duration = Duration::from_secs(15);
/// The longest one Kafka request of a round waits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a whole round takes.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// A consumer group whose lag is measured, and which of the watcher's tables says what it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// The router's table (`pigeon.ingress` included).
    Router,
    /// The archiver's table.
    Archiver,
}

/// One group to measure.
pub struct Group {
    /// Its name (the `group` label).
    pub name: String,
    /// A client configured with the group's id that never joins it: it only reads the group's
    /// committed offsets and the watermarks.
    pub client: ClientConfig,
    /// Which table's topics it consumes.
    pub reads: Reads,
}

/// Lag per (group, topic, partition), as one round found it.
pub type Lags = BTreeMap<(String, String, i32), i64>;

/// Runs a round every [`EVERY`] until `cancel` fires.
pub async fn run(groups: Vec<Group>, tables: Tables, store: Arc<dyn Store>, cancel: CancellationToken) {
    let mut clients = Vec::new();
    for group in groups {
        match group.client.create::<BaseConsumer>() {
            Ok(client) => clients.push((group.name, Arc::new(client), group.reads)),
            Err(e) => {
                tracing::warn!(group = group.name, error = %e, "cannot create a client to measure the group's lag")
            }
        }
    }
    let mut gauges = Gauges::default();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = cancel.cancelled() => return,
        }
        let routes = tables.current();
        let round = async {
            for (name, client, reads) in &clients {
                let table = match reads {
                    Reads::Router => Arc::clone(&routes.table),
                    Reads::Archiver => Arc::clone(&routes.archive),
                };
                match measure(name, client, &table).await {
                    Ok(lags) => gauges.lags(name, &lags),
                    Err(e) => tracing::warn!(group = name, error = %e, "cannot measure the group's lag"),
                }
            }
            gauges.store(store.as_ref()).await;
        };
        if tokio::time::timeout(ROUND_TIMEOUT, round).await.is_err() {
            tracing::warn!(
                seconds = ROUND_TIMEOUT.as_secs(),
                "measuring lag and the store took too long; tried again next round"
            );
        }
    }
}

/// The lag of group `name` on every partition of the topics `table` consumes: the high
/// watermark less the committed offset. Partitions where the group committed nothing are left
/// out (where it would start depends on its consumers' settings).
pub async fn measure(name: &str, client: &Arc<BaseConsumer>, table: &RouteTable) -> anyhow::Result<Lags> {
    let consumed = table.consumed_topics();
    let client = Arc::clone(client);
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = client.fetch_metadata(None, REQUEST_TIMEOUT)?;
        let mut partitions = TopicPartitionList::new();
        for topic in metadata.topics() {
            if topic.error().is_some() || !consumes(&consumed, topic.name()) {
                continue;
            }
            for p in topic.partitions() {
                partitions.add_partition(topic.name(), p.id());
            }
        }
        let mut lags = Lags::new();
        if partitions.count() == 0 {
            return Ok(lags);
        }
        let committed = client.committed_offsets(partitions.clone(), REQUEST_TIMEOUT)?;
        let mut ends = TopicPartitionList::new();
        for e in partitions.elements() {
            ends.add_partition_offset(e.topic(), e.partition(), Offset::End)?;
        }
        let ends = client.offsets_for_times(ends, REQUEST_TIMEOUT)?;
        for e in committed.elements() {
            let Offset::Offset(done) = e.offset() else { continue };
            let high =
                ends.find_partition(e.topic(), e.partition()).filter(|h| h.error().is_ok()).and_then(|h| {
                    match h.offset() {
                        Offset::Offset(high) => Some(high),
                        _ => None,
                    }
                });
            if let Some(high) = high {
                lags.insert(
                    (name.clone(), e.topic().to_owned(), e.partition()),
                    high.saturating_sub(done).max(0),
                );
            }
        }
        Ok(lags)
    })
    .await?
}

/// Whether a topic is one of `consumed` (topics, and patterns starting with `^`; patterns
/// never match the bus's own topics nor Kafka's, as in the route table).
fn consumes(consumed: &[String], topic: &str) -> bool {
    consumed.iter().any(|entry| match entry.strip_prefix('^') {
        None => entry == topic,
        Some(_) => {
            !(topic.starts_with("pigeon.") || topic.starts_with("__"))
                && regex::Regex::new(entry).is_ok_and(|r| r.is_match(topic))
        }
    })
}

/// The gauges the rounds set, resolved when a partition (or a status and kind) first shows.
#[derive(Default)]
struct Gauges {
    lag: HashMap<(String, String, i32), Gauge>,
    stored: HashMap<(&'static str, &'static str), Gauge>,
    instances: HashMap<&'static str, Gauge>,
}

impl Gauges {
    /// Sets group `group`'s lags; a partition it no longer reads shows 0.
    fn lags(&mut self, group: &str, lags: &Lags) {
        for (key, gauge) in self.lag.iter().filter(|(k, _)| k.0 == group) {
            if !lags.contains_key(key) {
                gauge.set(0.0);
            }
        }
        for (key, lag) in lags {
            let gauge = self.lag.entry(key.clone()).or_insert_with(|| {
                metrics::gauge!(CONSUMER_LAG, "group" => key.0.clone(), "topic" => key.1.clone(), "partition" => key.2.to_string())
            });
            gauge.set(*lag as f64);
        }
    }

    async fn store(&mut self, store: &dyn Store) {
        match store.dead_letter_tally().await {
            Ok(tally) => {
                let seen: BTreeSet<_> = tally.iter().map(|(s, k, _)| (s.as_str(), k.as_str())).collect();
                for (key, gauge) in &self.stored {
                    if !seen.contains(key) {
                        gauge.set(0.0);
                    }
                }
                for (status, kind, count) in tally {
                    let key = (status.as_str(), kind.as_str());
                    let gauge = self.stored.entry(key).or_insert_with(
                        || metrics::gauge!(DEAD_LETTERS_STORED, "status" => key.0, "kind" => key.1),
                    );
                    gauge.set(count as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the stored dead letters"),
        }
        match store.module_instances().await {
            Ok(instances) => {
                let now = now_ms();
                let mut counts: BTreeMap<&'static str, u64> =
                    [("live", 0), ("stale", 0), ("left", 0)].into_iter().collect();
                for instance in &instances {
                    let state = match instance.state(now) {
                        crate::store::InstanceState::Live => "live",
                        crate::store::InstanceState::Stale => "stale",
                        crate::store::InstanceState::Left => "left",
                    };
                    *counts.entry(state).or_default() += 1;
                }
                for (state, count) in counts {
                    let gauge = self
                        .instances
                        .entry(state)
                        .or_insert_with(|| metrics::gauge!(REGISTRY_INSTANCES, "state" => state));
                    gauge.set(count as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the module instances"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::consumes;

    #[test]
    fn patterns_match_source_topics_but_never_the_bus_s_own() {
        let consumed = vec!["^live\\..*".to_owned(), "pigeon.ingress".to_owned(), "gifts".to_owned()];
        assert!(consumes(&consumed, "live.gift"));
        assert!(consumes(&consumed, "gifts"));
        assert!(consumes(&consumed, "pigeon.ingress"));
        assert!(!consumes(&consumed, "pigeon.failed"));
        assert!(!consumes(&consumed, "giftsx"));
        let everything = vec!["^.*".to_owned()];
        assert!(!consumes(&everything, "__consumer_offsets"));
        assert!(!consumes(&everything, "pigeon.registry"));
    }
}
