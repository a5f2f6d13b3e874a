//! The brokers the contenders run on, each a process of its own: librdkafka's mock cluster
//! (`pigeon dev-broker`) and Tansu.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::process::Contender;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// librdkafka's mock cluster, as `pigeon dev-broker`.
    Mock,
    /// Tansu with its in-memory storage engine.
    Tansu,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mock => "mock",
            Kind::Tansu => "tansu",
        }
    }
}

pub struct Broker {
    pub kind: Kind,
    pub bootstrap: String,
    pub process: Contender,
}

/// Where the broker binaries are.
pub struct Binaries {
    pub pigeon: PathBuf,
    pub tansu: PathBuf,
}

impl Broker {
    /// Starts a broker holding `topics` (name, partitions). The mock creates them as it starts
    /// (it has no CreateTopics API); Tansu gets them through the admin API.
    pub fn start(kind: Kind, bin: &Binaries, topics: &[(String, i32)], logs: &Path) -> anyhow::Result<Self> {
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
                Self { kind, bootstrap, process }
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
                let broker = Self { kind, bootstrap: format!("127.0.0.1:{port}"), process };
                broker.wait_ready(Duration::from_secs(30))?;
                broker.create_topics(topics)?;
                broker
            }
        };
        broker.wait_for_topics(topics, Duration::from_secs(60))?;
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

    /// A client configuration for this broker.
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }
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
