//! The brokers the contenders run on, each a process of its own: librdkafka's mock cluster
//! (`pigeon dev-broker`), Tansu, and Apache Kafka (`scripts/kafka`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::process::Contender;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// librdkafka's mock cluster, as `pigeon dev-broker`.
    Mock,
    /// Tansu with its in-memory storage engine.
    Tansu,
    /// Apache Kafka 4: one KRaft node (broker and controller), started by `scripts/kafka`.
    Kafka,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mock => "mock",
            Kind::Tansu => "tansu",
            Kind::Kafka => "kafka",
        }
    }
}

pub struct Broker {
    pub kind: Kind,
    pub bootstrap: String,
    /// The broker's process, whose CPU is measured.
    pid: u32,
    /// Stops the broker when dropped.
    _running: Running,
}

/// How a broker is stopped.
enum Running {
    /// A child of this process, killed when the [`Contender`] is dropped.
    Child(#[allow(dead_code)] Contender),
    /// Started by `scripts/kafka` with its data in `dir`: `scripts/kafka stop` stops it.
    Script { script: PathBuf, dir: PathBuf },
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Script { script, dir } = self {
            let _ =
                Command::new(script.as_path()).arg("stop").env("PIGEON_KAFKA_DIR", dir.as_path()).output();
        }
    }
}

/// The topic [`check_fetch_inside_a_batch`] writes to, and its batches' size.
const PROBE: &str = "bench-probe";
const PROBE_BATCH: i64 = 10;

/// Where the broker binaries are.
pub struct Binaries {
    pub pigeon: PathBuf,
    pub tansu: PathBuf,
    /// `scripts/kafka`.
    pub kafka: PathBuf,
}

impl Broker {
    /// Starts a broker holding `topics` (name, partitions). The mock creates them as it starts
    /// (it has no CreateTopics API); Tansu gets them through the admin API.
    /// It must pass [`check_fetch_inside_a_batch`] too.
    pub fn start(kind: Kind, bin: &Binaries, topics: &[(String, i32)], logs: &Path) -> anyhow::Result<Self> {
        let topics = &[topics, &[(PROBE.to_owned(), 1)]].concat();
        let log = logs.join(format!("broker-{}.log", kind.name()));
        let broker = match kind {
            Kind::Mock => {
                let mut command = Command::new(&bin.pigeon);
                command.arg("dev-broker").env("RUST_LOG", "warn");
                for (topic, partitions) in topics {
                    command.arg("--topic").arg(format!("{topic}:{partitions}"));
                }
                let process = Contender::spawn("pigeon dev-broker", command, &log)?;
                let bootstrap = wait_for_line(&log, "kafka: ", Duration::from_secs(30))?;
                Self { kind, bootstrap, pid: process.pid(), _running: Running::Child(process) }
            }
            Kind::Tansu => {
                let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                let url = format!("tcp://127.0.0.1:{port}");
                let mut command = Command::new(&bin.tansu);
                command
                    .args(["broker", "--storage-engine", "memory://tansu/"])
                    .args(["--listener-url", &url, "--advertised-listener-url", &url])
                    .env("RUST_LOG", "warn");
                let process = Contender::spawn("tansu broker", command, &log)?;
                let bootstrap = format!("127.0.0.1:{port}");
                let broker = Self { kind, bootstrap, pid: process.pid(), _running: Running::Child(process) };
                broker.wait_ready(Duration::from_secs(30))?;
                broker.create_topics(topics)?;
                broker
            }
            Kind::Kafka => {
                // A fresh broker: its data under this run's directory.
                let dir = logs.join("kafka");
                let started = Command::new(&bin.kafka)
                    .arg("start")
                    .env("PIGEON_KAFKA_DIR", &dir)
                    .output()
                    .with_context(|| format!("running {}", bin.kafka.display()))?;
                let running = Running::Script { script: bin.kafka.clone(), dir: dir.clone() };
                let printed = String::from_utf8_lossy(&started.stdout);
                let bootstrap = printed.lines().find_map(|l| l.strip_prefix("kafka: ")).map(str::trim);
                let (Some(bootstrap), true) = (bootstrap, started.status.success()) else {
                    bail!(
                        "{} start failed ({}):\n{printed}{}",
                        bin.kafka.display(),
                        started.status,
                        String::from_utf8_lossy(&started.stderr)
                    );
                };
                let pid = std::fs::read_to_string(dir.join("kafka.pid"))
                    .ok()
                    .and_then(|pid| pid.trim().parse().ok())
                    .with_context(|| format!("no pid in {}", dir.join("kafka.pid").display()))?;
                let broker = Self { kind, bootstrap: bootstrap.to_owned(), pid, _running: running };
                broker.wait_ready(Duration::from_secs(30))?;
                broker.create_topics(topics)?;
                broker
            }
        };
        broker.wait_for_topics(topics, Duration::from_secs(60))?;
        check_fetch_inside_a_batch(&broker.client(), kind.name())?;
        Ok(broker)
    }

    fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let client: BaseConsumer = self.client().create()?;
        let deadline = Instant::now() + within;
        while client.fetch_metadata(None, Duration::from_secs(1)).is_err() {
            if Instant::now() > deadline {
                bail!("{} did not answer at {} within {within:?}", self.kind.name(), self.bootstrap);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn create_topics(&self, topics: &[(String, i32)]) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        for (topic, partitions) in topics {
            runtime
                .block_on(pigeon_bus::topics::ensure(
                    &self.client(),
                    std::slice::from_ref(topic),
                    *partitions,
                    1,
                ))
                .with_context(|| format!("creating {topic} on {}", self.kind.name()))?;
        }
        Ok(())
    }

    /// Waits until the broker's metadata shows every topic with its partitions.
    fn wait_for_topics(&self, topics: &[(String, i32)], within: Duration) -> anyhow::Result<()> {
        let client: BaseConsumer = self.client().create()?;
        let deadline = Instant::now() + within;
        for (topic, partitions) in topics {
            loop {
                let seen = client
                    .fetch_metadata(Some(topic), Duration::from_secs(5))
                    .ok()
                    .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                    .unwrap_or(0);
                if seen == *partitions {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{topic} has {seen} partitions on {}, not {partitions}", self.kind.name());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// The broker process's CPU time so far.
    pub fn cpu(&self) -> Duration {
        crate::process::cpu_time(self.pid)
    }

    /// A client configuration for this broker.
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }
}

/// Checks that a fetch starting inside a record batch is answered with the rest of that
/// batch, as Kafka answers it. Consumers resume inside a batch whenever they go on from
/// where they stood (after a pause, a rebalance, a restart). Tansu 0.6.0 answers from the
/// next batch on: the rest of the batch is never read, and at a partition's end the
/// consumer waits for ever, so a contender that pauses would stall the run.
pub fn check_fetch_inside_a_batch(client: &ClientConfig, broker: &str) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> =
        client.clone().set("linger.ms", "50").create().context("probe producer")?;
    for _batch in 0..2 {
        for n in 0..PROBE_BATCH {
            let payload = n.to_string();
            producer
                .send(BaseRecord::<(), str>::to(PROBE).partition(0).payload(&payload))
                .map_err(|(e, _)| e)
                .context("producing a probe letter")?;
        }
        producer.flush(Duration::from_secs(10)).context("flushing the probe letters")?;
    }
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", "bench-probe")
        .set("enable.auto.commit", "false")
        .create()
        .context("probe consumer")?;
    let start = PROBE_BATCH / 2;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(PROBE, 0, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let (wanted, mut read) = (2 * PROBE_BATCH - start, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(15);
    while (read.len() as i64) < wanted && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            read.push(message.context("reading the probe letters")?.offset());
        }
    }
    let expected: Vec<i64> = (start..2 * PROBE_BATCH).collect();
    if read != expected {
        bail!(
            "{}: a fetch from offset {start}, inside the batch of offsets 0..{PROBE_BATCH}, read \
             offsets {read:?}, not {start}..{}. This broker leaves out the rest of the batch a \
             fetch starts in (Tansu 0.6.0 does; scripts/bench builds it with \
             bench/tansu/fetch-inside-a-batch.patch): a consumer that resumes inside a batch \
             (after a pause, a rebalance or a restart) would skip letters or stall.",
            broker,
            2 * PROBE_BATCH
        );
    }
    Ok(())
}

/// Waits until `log` holds a line starting with `prefix`; returns the rest of that line.
pub fn wait_for_line(log: &Path, prefix: &str, within: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
            return Ok(rest.trim().to_owned());
        }
        if Instant::now() > deadline {
            bail!("no line `{prefix}…` in {} within {within:?}:\n{text}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;

    #[test]
    fn a_kafka_broker_answers_a_fetch_inside_a_batch_with_the_rest_of_it() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(PROBE, 1, 1).expect("probe topic");
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", cluster.bootstrap_servers());
        check_fetch_inside_a_batch(&client, "mock").expect("librdkafka's mock answers as Kafka does");
    }
}
