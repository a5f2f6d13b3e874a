//! The verifier: reads what a contender wrote and checks it against what the source holds.
//! Every source letter must reach every destination (distinct sequence numbers), and a key's
//! letters must keep their order on each destination. It also times letters end to end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::letters::{now_ms, room, seq_of};

/// Messages on a topic: the sum of its partitions' high watermarks.
pub fn on_topic(client: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let mut total = 0;
    for p in 0..partitions {
        let (_, high) = client
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}/{p}"))?;
        total += high;
    }
    Ok(total)
}

/// What one destination topic holds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Completeness {
    pub topic: String,
    /// Messages read.
    pub messages: u64,
    /// Distinct source letters among them.
    pub distinct: u64,
    /// Source letters not there.
    pub missing: u64,
    /// Messages repeating a letter already read.
    pub duplicates: u64,
    /// Letters that came after a later letter of the same key.
    pub order_violations: u64,
    /// Messages without a sequence number, or with one the source never had.
    pub foreign: u64,
}

impl Completeness {
    pub fn complete(&self) -> bool {
        self.missing == 0 && self.foreign == 0
    }
}

/// Reads all of `topic` (letters `0..expected` of the source) and checks it.
pub fn read_topic(
    client: &ClientConfig,
    topic: &str,
    partitions: i32,
    expected: u64,
) -> anyhow::Result<Completeness> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", format!("bench-verifier-{}", uuid::Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            assignment.add_partition_offset(topic, p, Offset::Offset(low))?;
            remaining += high - low;
        }
    }
    consumer.assign(&assignment)?;
    let mut seen = vec![false; expected as usize];
    let mut last_of_key: HashMap<u64, u64> = HashMap::new();
    let mut c = Completeness { topic: topic.to_owned(), ..Default::default() };
    let mut quiet_since = Instant::now();
    while remaining > 0 {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            if quiet_since.elapsed() > Duration::from_secs(30) {
                bail!("{topic}: {remaining} messages below the watermarks never came");
            }
            continue;
        };
        let message = message.with_context(|| format!("reading {topic}"))?;
        quiet_since = Instant::now();
        remaining -= 1;
        c.messages += 1;
        match seq_of(message.headers()) {
            Some(seq) if seq < expected => {
                if std::mem::replace(&mut seen[seq as usize], true) {
                    c.duplicates += 1;
                    continue;
                }
                let last = last_of_key.entry(room(seq)).or_insert(seq);
                if seq < *last {
                    c.order_violations += 1;
                }
                *last = (*last).max(seq);
            }
            _ => c.foreign += 1,
        }
    }
    c.distinct = seen.iter().filter(|s| **s).count() as u64;
    c.missing = expected - c.distinct;
    Ok(c)
}

/// Receives the letters a paced run sends, from the given offsets on, until each topic has
/// every letter of `wanted` (sequence numbers) or `within` passes. Returns, per letter and
/// topic, when it arrived (ms since the epoch).
pub struct Receiver {
    consumer: BaseConsumer,
    topics: Vec<String>,
}

impl Receiver {
    /// Positions a consumer at the current end of each topic, before any paced letter is sent.
    pub fn at_end(client: &ClientConfig, topics: &[String], partitions: i32) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = client
            .clone()
            .set("group.id", format!("bench-latency-{}", uuid::Uuid::now_v7().simple()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for topic in topics {
            for p in 0..partitions {
                let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
                assignment.add_partition_offset(topic, p, Offset::Offset(high))?;
            }
        }
        consumer.assign(&assignment)?;
        Ok(Self { consumer, topics: topics.to_vec() })
    }

    /// Receives until every topic has had `count` distinct letters numbered from `first`.
    pub fn receive(&self, first: u64, count: u64, within: Duration) -> anyhow::Result<Vec<(u64, i64)>> {
        let mut arrived: Vec<Vec<Option<i64>>> = vec![vec![None; count as usize]; self.topics.len()];
        let mut pending = count * self.topics.len() as u64;
        let deadline = Instant::now() + within;
        while pending > 0 {
            if Instant::now() > deadline {
                bail!("{pending} paced letters did not arrive within {within:?}");
            }
            let Some(message) = self.consumer.poll(Duration::from_millis(100)) else { continue };
            let at = now_ms();
            let message = message.context("receiving paced letters")?;
            let Some(topic) = self.topics.iter().position(|t| t == message.topic()) else { continue };
            let Some(seq) = seq_of(message.headers()) else { continue };
            if seq < first || seq >= first + count {
                continue;
            }
            let slot = &mut arrived[topic][(seq - first) as usize];
            if slot.is_none() {
                *slot = Some(at);
                pending -= 1;
            }
        }
        Ok(arrived
            .into_iter()
            .flat_map(|topic| {
                topic.into_iter().enumerate().map(|(i, at)| (first + i as u64, at.unwrap_or(0)))
            })
            .collect())
    }
}

/// The `q`-quantile of `values` (sorted in place), nearest rank.
pub fn quantile(values: &mut [i64], q: f64) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let mut v: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(quantile(&mut v, 0.5), 50);
        assert_eq!(quantile(&mut v, 0.99), 99);
        assert_eq!(quantile(&mut v, 1.0), 100);
        assert_eq!(quantile(&mut [7], 0.99), 7);
        assert_eq!(quantile(&mut [], 0.5), 0);
    }
}
