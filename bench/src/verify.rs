//! The verifier: reads every destination from its start while the contender works, and
//! checks what it reads against the source. Every source letter must reach every destination
//! (distinct sequence numbers), and a key's letters must keep their order on each
//! destination. It also notes when each letter arrived, for the latency figures.
//!
//! It counts by reading, not by the brokers' high watermarks: Tansu 0.6's ListOffsets answers
//! below the messages a consumer can read, so watermarks cannot tell when a run is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::letters::{now_ms, room, seq_of};

/// What one destination topic held.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Completeness {
    pub topic: String,
    /// Messages read.
    pub messages: u64,
    /// Distinct source letters among them.
    pub distinct: u64,
    /// Source letters (of those sent) not there.
    pub missing: u64,
    /// Messages repeating a letter already read.
    pub duplicates: u64,
    /// Letters that came after a later letter of the same key.
    pub order_violations: u64,
    /// Messages without a sequence number.
    pub foreign: u64,
}

impl Completeness {
    pub fn complete(&self) -> bool {
        self.missing == 0 && self.foreign == 0
    }
}

/// One destination as read so far.
#[derive(Default)]
struct Destination {
    c: Completeness,
    /// When each letter first arrived (ms since the epoch), by sequence number.
    arrived: Vec<Option<i64>>,
    last_of_key: HashMap<u64, u64>,
}

impl Destination {
    /// Notes letter `seq`; returns whether it is new here.
    fn note(&mut self, seq: u64, at: i64) -> bool {
        self.c.messages += 1;
        let i = seq as usize;
        if i >= self.arrived.len() {
            self.arrived.resize(i + 1, None);
        }
        if self.arrived[i].is_some() {
            self.c.duplicates += 1;
            return false;
        }
        self.arrived[i] = Some(at);
        let last = self.last_of_key.entry(room(seq)).or_insert(seq);
        if seq < *last {
            self.c.order_violations += 1;
        }
        *last = (*last).max(seq);
        true
    }
}

/// Distinct letters below and from a boundary, per destination, readable while it runs.
struct Progress {
    below: Vec<AtomicU64>,
    from: Vec<AtomicU64>,
    boundary: AtomicU64,
}

/// A verifier reading in a thread of its own.
pub struct Live {
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Vec<Destination>>>,
}

/// What the verifier found: per destination, and when each letter arrived there.
pub struct Verdict {
    pub completeness: Vec<Completeness>,
    /// (sequence number, arrival ms) of each letter on each destination.
    pub arrivals: Vec<(u64, i64)>,
}

impl Live {
    /// Starts reading `topics` from their beginning. `boundary` splits the progress counts:
    /// the backlog below it, the paced letters from it.
    pub fn start(
        client: &ClientConfig,
        topics: &[String],
        partitions: i32,
        boundary: u64,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = client
            .clone()
            .set("group.id", format!("bench-verifier-{}", uuid::Uuid::now_v7().simple()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for topic in topics {
            for p in 0..partitions {
                assignment.add_partition_offset(topic, p, Offset::Beginning)?;
            }
        }
        consumer.assign(&assignment).context("assigning the destinations")?;
        let progress = Arc::new(Progress {
            below: topics.iter().map(|_| AtomicU64::new(0)).collect(),
            from: topics.iter().map(|_| AtomicU64::new(0)).collect(),
            boundary: AtomicU64::new(boundary),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let topics = topics.to_vec();
        let thread = {
            let (progress, stop) = (progress.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut found: Vec<Destination> = topics
                    .iter()
                    .map(|t| Destination {
                        c: Completeness { topic: t.clone(), ..Default::default() },
                        ..Default::default()
                    })
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let Some(message) = consumer.poll(Duration::from_millis(50)) else { continue };
                    let at = now_ms();
                    let message = message.context("reading a destination")?;
                    let Some(d) = topics.iter().position(|t| t == message.topic()) else { continue };
                    let Some(seq) = seq_of(message.headers()) else {
                        found[d].c.foreign += 1;
                        continue;
                    };
                    if found[d].note(seq, at) {
                        let counter = if seq < progress.boundary.load(Ordering::Relaxed) {
                            &progress.below[d]
                        } else {
                            &progress.from[d]
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(found)
            })
        };
        Ok(Self { progress, stop, thread })
    }

    /// The fewest distinct backlog letters any destination has had so far.
    pub fn backlog_done(&self) -> u64 {
        self.progress.below.iter().map(|c| c.load(Ordering::Relaxed)).min().unwrap_or(0)
    }

    /// Distinct backlog letters on all destinations together.
    pub fn backlog_outputs(&self) -> u64 {
        self.progress.below.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The fewest distinct paced letters any destination has had so far.
    pub fn paced_done(&self) -> u64 {
        self.progress.from.iter().map(|c| c.load(Ordering::Relaxed)).min().unwrap_or(0)
    }

    /// Stops reading; checks letters `0..sent` on every destination.
    pub fn finish(self, sent: u64) -> anyhow::Result<Verdict> {
        self.stop.store(true, Ordering::Relaxed);
        let found = self.thread.join().map_err(|_| anyhow::anyhow!("the verifier thread panicked"))??;
        let mut verdict = Verdict { completeness: Vec::new(), arrivals: Vec::new() };
        for mut d in found {
            d.c.distinct = d.arrived.iter().filter(|a| a.is_some()).count() as u64;
            d.c.missing =
                (0..sent as usize).filter(|&i| d.arrived.get(i).is_none_or(|a| a.is_none())).count() as u64;
            verdict
                .arrivals
                .extend(d.arrived.iter().enumerate().filter_map(|(i, a)| Some((i as u64, (*a)?))));
            verdict.completeness.push(d.c);
        }
        Ok(verdict)
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

    #[test]
    fn duplicates_and_letters_out_of_their_key_s_order_are_counted() {
        let mut d = Destination::default();
        // Room 1: letters 1, 101, 201. 201 comes before 101.
        assert!(d.note(1, 10));
        assert!(d.note(201, 11));
        assert!(d.note(101, 12), "late, but new");
        assert!(!d.note(201, 13), "a duplicate");
        assert!(d.note(2, 14), "another room keeps its own order");
        assert_eq!((d.c.messages, d.c.duplicates, d.c.order_violations), (5, 1, 1));
        assert_eq!(d.arrived[201], Some(11), "the first arrival counts");
    }
}
