//! Bus configuration: a TOML file, overridden by command-line flags.
//!
//! Loading is two-phase like the route table: serde reads the raw form while every unknown key
//! is collected, then [`BusConfig::validate`] checks values; the caller gets every problem at
//! once, never only the first.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// Everything the `pigeon` binary needs to run.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct BusConfig {
    /// The roles this process runs (`pigeon serve --roles` overrides); default all.
    pub roles: Vec<Role>,
    /// Kafka connection and client properties.
    pub kafka: KafkaConfig,
    /// Where pigeons and dead letters are kept.
    pub store: StoreConfig,
    /// The forward path.
    pub router: RouterConfig,
    /// The retry worker.
    pub retrier: RetrierConfig,
    /// The archive path.
    pub archiver: ArchiverConfig,
    /// Replay jobs (run by the admin role).
    pub replay: ReplayConfig,
    /// Modules' receipts (kept by the registry role).
    pub receipts: ReceiptsConfig,
    /// The admin HTTP server.
    pub admin: AdminConfig,
    /// Topics `pigeon topics ensure` creates.
    pub topics: TopicsConfig,
    /// Source topics written by systems that do not use the SDK, by topic name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Traces of sampled letters.
    pub tracing: TracingConfig,
    /// Log lines.
    pub log: LogConfig,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            roles: vec![Role::Router, Role::Archiver, Role::Retrier, Role::Registry, Role::Admin],
            kafka: KafkaConfig::default(),
            store: StoreConfig::default(),
            router: RouterConfig::default(),
            retrier: RetrierConfig::default(),
            archiver: ArchiverConfig::default(),
            replay: ReplayConfig::default(),
            receipts: ReceiptsConfig::default(),
            admin: AdminConfig::default(),
            topics: TopicsConfig::default(),
            sources: BTreeMap::new(),
            tracing: TracingConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// Traces: a span per stage for sampled letters, exported over OTLP/HTTP.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TracingConfig {
    /// The share of letters traced (0 to 1), besides every letter whose `ce_traceparent` says
    /// sampled. Only with `otlp_endpoint`.
    pub sample_ratio: f64,
    /// An OTLP/HTTP receiver (a collector's `http://host:4318`; `/v1/traces` is added). None:
    /// no spans, and letters keep the trace context they came with.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the spans carry.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self { sample_ratio: 0.01, otlp_endpoint: None, service_name: "pigeon".into() }
    }
}

/// Log lines on standard error.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `text` (the default) or `json`, one object a line (`--log-format` overrides).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Kafka connection; any librdkafka property can be passed through.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group of the router role.
    pub router_group: String,
    /// librdkafka properties for every client (security settings go here).
    pub common: BTreeMap<String, String>,
    /// librdkafka properties for consumers only.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for producers only.
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            router_group: "pigeon-router".into(),
            common: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// The store: `sqlite://PATH` or `mysql://USER:PASSWORD@HOST:PORT/DB` (TiDB speaks MySQL).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Database URL.
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { url: "sqlite://pigeon.db".into() }
    }
}

/// Forward-path tuning.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RouterConfig {
    /// Letters of one partition in flight before the partition pauses.
    pub max_in_flight_per_partition: usize,
    /// How often settled offsets are handed to the consumer for its next commit.
    pub offset_store_interval_ms: u64,
    /// How long SIGTERM or a revoke waits for in-flight letters to settle.
    pub drain_timeout_secs: u64,
    /// Threads that run cleansing scripts, off the async runtime (0: one per core).
    pub script_workers: usize,
    /// Consecutive failed deliveries to one destination topic that pause the source
    /// partitions feeding it (0: never pause).
    pub breaker_failures: u32,
    /// How long a destination's breaker stays open before the router probes it again.
    pub breaker_probe_ms: u64,
    /// How often the store is checked for pigeon changes that no `pigeon.control` notice
    /// announced (notices take effect at once).
    pub reload_check_ms: u64,
    /// How long before a live window starts the router subscribes to its topic.
    pub window_lead_ms: u64,
    /// How long after a live window ends the router still reads its topic for late letters.
    pub window_grace_ms: u64,
    /// The router reads the payload of one letter in this many (by offset) to learn which
    /// fields each topic and tag carry: the observed source schema (0: never).
    pub schema_sample_every: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            max_in_flight_per_partition: 20_000,
            offset_store_interval_ms: 100,
            drain_timeout_secs: 30,
            script_workers: 0,
            breaker_failures: 100,
            breaker_probe_ms: 10_000,
            reload_check_ms: 10_000,
            window_lead_ms: 30_000,
            window_grace_ms: 60_000,
            schema_sample_every: 100,
        }
    }
}

/// The retry worker.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RetrierConfig {
    /// How often due dead letters are swept: an interval (`"1s"`) or a cron expression with
    /// seconds (`"*/5 * * * * *"`).
    pub sweep: String,
    /// Dead letters claimed per sweep.
    pub batch: u32,
    /// How long a claim holds; another retrier takes the letter over after it.
    pub lease_ms: u64,
    /// How long the retrier's producer tries one delivery (its `message.timeout.ms`); must be
    /// well below the lease, so a live retrier always reports before its claim runs out.
    pub delivery_timeout_ms: u64,
}

impl Default for RetrierConfig {
    fn default() -> Self {
        Self { sweep: "1s".into(), batch: 500, lease_ms: 120_000, delivery_timeout_ms: 60_000 }
    }
}

/// The archive path: the archiver role's batches and the archive's retention.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ArchiverConfig {
    /// Consumer group of the archiver role (its own, so archiving never holds back forwarding).
    pub group: String,
    /// A batch is written once it holds this many letters…
    pub batch_rows: usize,
    /// …or this long after its first letter was read.
    pub flush_ms: u64,
    /// While the database cannot be reached, the batch is tried again after this long,
    /// doubling up to `retry_max_ms`.
    pub retry_ms: u64,
    /// The longest wait between tries.
    pub retry_max_ms: u64,
    /// How long letters stay in the archive (`"90d"`); none: for ever.
    pub retention: Option<String>,
    /// When old letters are deleted: a cron expression with seconds.
    pub retention_schedule: String,
    /// Rows deleted per statement, so deleting never holds long locks.
    pub retention_chunk: u32,
}

impl Default for ArchiverConfig {
    fn default() -> Self {
        Self {
            group: "pigeon-archiver".into(),
            batch_rows: 5_000,
            flush_ms: 500,
            retry_ms: 500,
            retry_max_ms: 10_000,
            retention: None,
            retention_schedule: "0 30 3 * * *".into(),
            retention_chunk: 5_000,
        }
    }
}

impl ArchiverConfig {
    /// The retention as a duration, if one is set.
    pub fn retention(&self) -> Result<Option<std::time::Duration>, String> {
        self.retention
            .as_deref()
            .map(|text| match humantime::parse_duration(text) {
                Ok(age) if !age.is_zero() && age.as_secs() <= 100 * 365 * 86_400 => Ok(age),
                _ => Err(format!("archiver.retention {text:?} must be a duration such as \"90d\"")),
            })
            .transpose()
    }

    /// The retention schedule.
    pub fn retention_schedule(&self) -> Result<cron::Schedule, String> {
        self.retention_schedule.parse().map_err(|e| {
            format!("archiver.retention_schedule {:?} is not a cron expression: {e}", self.retention_schedule)
        })
    }
}

/// Modules' receipts on `pigeon.receipts`: the registry role keeps a sample of them whole and
/// every one in per-minute totals per module, capability and outcome.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ReceiptsConfig {
    /// The share of letters whose receipts are kept whole (0 to 1; chosen by letter id, so a
    /// letter's receipts from every module are kept together). Failed ones are always kept.
    pub sample_ratio: f64,
    /// How long kept receipts stay (`"7d"`).
    pub retention: String,
    /// How long per-minute totals stay (`"90d"`).
    pub totals_retention: String,
    /// How often what was read is written to the store.
    pub flush_ms: u64,
}

impl Default for ReceiptsConfig {
    fn default() -> Self {
        Self { sample_ratio: 0.01, retention: "7d".into(), totals_retention: "90d".into(), flush_ms: 2_000 }
    }
}

impl ReceiptsConfig {
    /// The two retentions, kept receipts' then totals'.
    pub fn retentions(&self) -> Result<(std::time::Duration, std::time::Duration), String> {
        let parse = |key: &str, text: &str| match humantime::parse_duration(text) {
            Ok(age) if !age.is_zero() && age.as_secs() <= 100 * 365 * 86_400 => Ok(age),
            _ => Err(format!("receipts.{key} {text:?} must be a duration such as \"7d\"")),
        };
        Ok((parse("retention", &self.retention)?, parse("totals_retention", &self.totals_retention)?))
    }

    fn problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            errors.push(format!("receipts.sample_ratio {} must be between 0 and 1", self.sample_ratio));
        }
        if let Err(e) = self.retentions() {
            errors.push(e);
        }
        if self.flush_ms == 0 {
            errors.push("receipts.flush_ms must be above 0".into());
        }
        errors
    }
}

/// Replay jobs.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ReplayConfig {
    /// How long a runner's claim on a job holds without progress; another instance takes the
    /// job over after it.
    pub lease_ms: u64,
    /// Letters read from the archive, sent and checkpointed at a time.
    pub page: u32,
    /// How often idle runners look for jobs.
    pub check_ms: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self { lease_ms: 15_000, page: 500, check_ms: 1_000 }
    }
}

/// When the retrier sweeps.
#[derive(Clone, Debug)]
pub enum Sweep {
    /// At a fixed interval.
    Every(std::time::Duration),
    /// On a cron schedule.
    Cron(Box<cron::Schedule>),
}

impl Sweep {
    /// Reads `"1s"` or a cron expression.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(every) = humantime::parse_duration(text) {
            if every.is_zero() {
                return Err("retrier.sweep must be longer than zero".into());
            }
            return Ok(Sweep::Every(every));
        }
        text.parse::<cron::Schedule>().map(|s| Sweep::Cron(Box::new(s))).map_err(|e| {
            format!("retrier.sweep {text:?} is neither an interval (\"1s\") nor a cron expression: {e}")
        })
    }

    /// How long until the next sweep.
    pub fn wait(&self) -> std::time::Duration {
        match self {
            Sweep::Every(every) => *every,
            Sweep::Cron(schedule) => schedule
                .upcoming(chrono::Utc)
                .next()
                .and_then(|at| (at - chrono::Utc::now()).to_std().ok())
                .unwrap_or(std::time::Duration::from_secs(1)),
        }
    }
}

/// Which parts of the bus one process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The forward path.
    Router,
    /// Keeps what archive pigeons choose in the archive.
    Archiver,
    /// Redelivers due dead letters (and stores module handler failures).
    Retrier,
    /// Keeps the providers, instances and capabilities modules register.
    Registry,
    /// The admin API (and UI).
    Admin,
}

/// The admin HTTP server.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Listen address; port 0 picks a free port.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:7800".into() }
    }
}

/// Topics `pigeon topics ensure` creates.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TopicsConfig {
    /// Partitions of every topic it creates.
    pub partitions: i32,
    /// Replication factor of every topic it creates.
    pub replication: i32,
    /// Modules whose `pigeon.module.<name>` topic is created.
    pub modules: Vec<String>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self { partitions: 16, replication: 3, modules: Vec::new() }
    }
}

pub use pigeon_core::redact::{is_secret_property, redact_properties, redact_url};
pub use pigeon_core::route::SourceConfig;

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for error in &self.0 {
            write!(f, "\n  - {error}")?;
        }
        Ok(())
    }
}

impl BusConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("cannot read {}: {e}", path.display())]))?;
        Self::parse(&text)
    }

    /// Parses and validates TOML text; unknown keys are errors, all of them listed.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        let mut unknown = Vec::new();
        let deserializer = toml::Deserializer::new(text);
        let parsed: Result<BusConfig, _> =
            serde_ignored::deserialize(deserializer, |path| unknown.push(format!("unknown key `{path}`")));
        let mut errors = unknown;
        match parsed {
            Ok(config) => {
                errors.extend(config.problems());
                if errors.is_empty() {
                    Ok(config)
                } else {
                    Err(ConfigErrors(errors))
                }
            }
            Err(e) => {
                errors.push(e.to_string().trim().to_owned());
                Err(ConfigErrors(errors))
            }
        }
    }

    /// Validates values (after flags were applied); every problem at once.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let errors = self.problems();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut errors = self.receipts.problems();
        if self.kafka.brokers.trim().is_empty() {
            errors.push("kafka.brokers is empty".into());
        }
        if self.kafka.router_group.trim().is_empty() {
            errors.push("kafka.router_group is empty".into());
        }
        if !(self.store.url.starts_with("sqlite:") || self.store.url.starts_with("mysql:")) {
            errors.push(format!(
                "store.url must start with sqlite: or mysql:, got {}",
                redact_url(&self.store.url)
            ));
        }
        if self.router.max_in_flight_per_partition == 0 {
            errors.push("router.max_in_flight_per_partition must be at least 1".into());
        }
        if self.router.reload_check_ms < 100 {
            errors.push("router.reload_check_ms must be at least 100".into());
        }
        if self.router.offset_store_interval_ms == 0 {
            errors.push("router.offset_store_interval_ms must be at least 1".into());
        }
        let tracing = &self.tracing;
        if !(0.0..=1.0).contains(&tracing.sample_ratio) {
            errors
                .push(format!("tracing.sample_ratio must be between 0 and 1, got {}", tracing.sample_ratio));
        }
        if let Some(endpoint) = &tracing.otlp_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                errors.push(format!(
                    "tracing.otlp_endpoint must be an http:// or https:// URL, got {}",
                    redact_url(endpoint)
                ));
            }
        }
        let archiver = &self.archiver;
        if archiver.group.trim().is_empty() {
            errors.push("archiver.group is empty".into());
        }
        if archiver.batch_rows == 0 || archiver.flush_ms == 0 {
            errors.push("archiver.batch_rows and archiver.flush_ms must be at least 1".into());
        }
        if archiver.retry_ms == 0 || archiver.retry_max_ms < archiver.retry_ms {
            errors.push("archiver.retry_ms must be at least 1 and at most archiver.retry_max_ms".into());
        }
        if archiver.retention_chunk == 0 {
            errors.push("archiver.retention_chunk must be at least 1".into());
        }
        errors.extend(archiver.retention().err());
        errors.extend(archiver.retention_schedule().err());
        if self.replay.page == 0
            || self.replay.check_ms == 0
            || !(1_000..=3_600_000).contains(&self.replay.lease_ms)
        {
            errors.push(
                "replay.page and replay.check_ms must be at least 1, replay.lease_ms 1000 to 3600000".into(),
            );
        }
        if let Err(e) = Sweep::parse(&self.retrier.sweep) {
            errors.push(e);
        }
        if self.retrier.batch == 0 {
            errors.push("retrier.batch must be at least 1".into());
        }
        if self.retrier.lease_ms < self.retrier.delivery_timeout_ms + 10_000 {
            errors.push(format!(
                "retrier.lease_ms ({}) must exceed retrier.delivery_timeout_ms ({}) by at least 10000, \
                 or a live retrier's claim could run out while it is still delivering",
                self.retrier.lease_ms, self.retrier.delivery_timeout_ms
            ));
        }
        if self.roles.is_empty() {
            errors.push("roles is empty: name at least one of router, retrier, registry, admin".into());
        }
        if self.topics.partitions < 1 {
            errors.push("topics.partitions must be at least 1".into());
        }
        if self.topics.replication < 1 {
            errors.push("topics.replication must be at least 1".into());
        }
        for (topic, source) in &self.sources {
            if source.tag_header.is_some() && source.tag_field.is_some() {
                errors.push(format!("sources.\"{topic}\": set tag_header or tag_field, not both"));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_and_log_settings_are_read_and_checked() {
        let config = BusConfig::parse(
            "[tracing]\nsample_ratio = 1.0\notlp_endpoint = \"http://c:4318\"\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        assert_eq!(config.tracing.otlp_endpoint.as_deref(), Some("http://c:4318"));
        assert_eq!(config.log.format, LogFormat::Json);
        let bad = BusConfig::parse(
            "[tracing]\nsample_ratio = 2.0\notlp_endpoint = \"ftp://u:secret@c\"\n[log]\nformat = \"xml\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("format"), "{bad}");
        let bad = BusConfig::parse("[tracing]\nsample_ratio = 2.0\notlp_endpoint = \"ftp://u:secret@c\"\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("sample_ratio") && bad.contains("otlp_endpoint"), "{bad}");
        assert!(!bad.contains("secret"), "the password is redacted: {bad}");
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = BusConfig::parse("").unwrap();
        assert_eq!(config.kafka.router_group, "pigeon-router");
        assert_eq!(config.store.url, "sqlite://pigeon.db");
    }

    #[test]
    fn the_documented_example_is_valid_and_shows_the_defaults() {
        let example = BusConfig::parse(include_str!("../../deploy/pigeon.example.toml")).unwrap();
        let defaults = BusConfig::default();
        assert_eq!(example.kafka.brokers, defaults.kafka.brokers);
        assert_eq!(example.kafka.router_group, defaults.kafka.router_group);
        assert_eq!(example.store.url, defaults.store.url);
        assert_eq!(example.router.max_in_flight_per_partition, defaults.router.max_in_flight_per_partition);
        assert_eq!(example.router.offset_store_interval_ms, defaults.router.offset_store_interval_ms);
        assert_eq!(example.router.drain_timeout_secs, defaults.router.drain_timeout_secs);
        assert_eq!(example.router.script_workers, defaults.router.script_workers);
        assert_eq!(example.router.breaker_failures, defaults.router.breaker_failures);
        assert_eq!(example.router.breaker_probe_ms, defaults.router.breaker_probe_ms);
        assert_eq!(example.router.reload_check_ms, defaults.router.reload_check_ms);
        assert_eq!(example.router.window_lead_ms, defaults.router.window_lead_ms);
        assert_eq!(example.router.window_grace_ms, defaults.router.window_grace_ms);
        assert_eq!(example.router.schema_sample_every, defaults.router.schema_sample_every);
        assert_eq!(example.admin.listen, defaults.admin.listen);
        let (t, d) = (&example.tracing, &defaults.tracing);
        assert_eq!(
            (t.sample_ratio, &t.otlp_endpoint, &t.service_name),
            (d.sample_ratio, &d.otlp_endpoint, &d.service_name)
        );
        assert_eq!(example.log.format, defaults.log.format);
        assert_eq!(example.topics.partitions, defaults.topics.partitions);
        assert_eq!(example.topics.replication, defaults.topics.replication);
        assert_eq!(example.roles, defaults.roles);
        assert_eq!(example.retrier.sweep, defaults.retrier.sweep);
        assert_eq!(example.retrier.batch, defaults.retrier.batch);
        assert_eq!(example.retrier.lease_ms, defaults.retrier.lease_ms);
        assert_eq!(example.retrier.delivery_timeout_ms, defaults.retrier.delivery_timeout_ms);
        let (a, d) = (&example.archiver, &defaults.archiver);
        assert_eq!((&a.group, a.batch_rows, a.flush_ms), (&d.group, d.batch_rows, d.flush_ms));
        assert_eq!((a.retry_ms, a.retry_max_ms, &a.retention), (d.retry_ms, d.retry_max_ms, &d.retention));
        assert_eq!((&a.retention_schedule, a.retention_chunk), (&d.retention_schedule, d.retention_chunk));
        let (r, d) = (&example.replay, &defaults.replay);
        assert_eq!((r.lease_ms, r.page, r.check_ms), (d.lease_ms, d.page, d.check_ms));
    }

    /// The configurations the deploy files carry start a bus: the image's own file and the
    /// Kubernetes ConfigMap's `pigeon.toml`.
    #[test]
    fn the_deploy_files_configurations_are_valid() {
        let image = BusConfig::parse(include_str!("../../deploy/pigeon.container.toml")).unwrap();
        assert_eq!(image.admin.listen, "0.0.0.0:7800");

        let manifest = include_str!("../../deploy/k8s/10-config.yaml");
        let toml = serde_yaml::Deserializer::from_str(manifest)
            .map(|doc| serde_yaml::Value::deserialize(doc).expect("10-config.yaml is YAML"))
            .find(|doc| doc["kind"] == "ConfigMap")
            .and_then(|map| map["data"]["pigeon.toml"].as_str().map(str::to_owned))
            .expect("a ConfigMap with data pigeon.toml");
        let k8s = BusConfig::parse(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(k8s.admin.listen, "0.0.0.0:7800");
        assert_eq!(k8s.kafka.brokers, "kafka-0.kafka:9092,kafka-1.kafka:9092,kafka-2.kafka:9092");
        assert_eq!((k8s.topics.partitions, k8s.topics.replication), (16, 3));
    }

    #[test]
    fn retrier_settings_are_checked() {
        let errors = BusConfig::parse(
            "roles = []\n[retrier]\nsweep = \"whenever\"\nbatch = 0\nlease_ms = 1000\ndelivery_timeout_ms = 5000\n",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "neither an interval",
            "retrier.batch must be at least 1",
            "must exceed retrier.delivery_timeout_ms",
            "roles is empty",
        ] {
            assert!(errors.contains(expected), "{expected:?} missing from:\n{errors}");
        }
        let cron = BusConfig::parse("[retrier]\nsweep = \"*/5 * * * * *\"\n").unwrap();
        let wait = Sweep::parse(&cron.retrier.sweep).unwrap().wait();
        assert!(wait <= std::time::Duration::from_secs(5), "next sweep within 5 s, got {wait:?}");
        assert!(BusConfig::parse("roles = [\"archivist\"]").is_err(), "unknown roles are refused");
        assert_eq!(BusConfig::parse("roles = [\"archiver\"]").unwrap().roles, vec![Role::Archiver]);
    }

    #[test]
    fn archiver_settings_are_checked() {
        let config = BusConfig::parse("[archiver]\nretention = \"30d\"\nbatch_rows = 500\n").unwrap();
        assert_eq!(config.archiver.retention().unwrap(), Some(std::time::Duration::from_secs(30 * 86_400)));
        assert_eq!(config.archiver.batch_rows, 500);
        let errors = BusConfig::parse(
            "[archiver]\nretention = \"soon\"\nretention_schedule = \"daily\"\nbatch_rows = 0\n",
        )
        .unwrap_err()
        .0;
        assert_eq!(errors.len(), 3, "every problem at once: {errors:?}");
        assert!(errors.iter().any(|e| e.contains("archiver.retention \"soon\"")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("archiver.retention_schedule")), "{errors:?}");
    }

    #[test]
    fn every_unknown_key_and_bad_value_is_listed() {
        let text = r#"
            colour = "blue"
            [kafka]
            brokers = ""
            bootstrap = "x"
            [router]
            max_in_flight_per_partition = 0
            [sources."live.gift"]
            tag_header = "type"
            tag_field = "type"
            tagfield = "oops"
        "#;
        let errors = BusConfig::parse(text).unwrap_err().0;
        let all = errors.join("\n");
        for expected in [
            "unknown key `colour`",
            "unknown key `kafka.bootstrap`",
            "unknown key `sources.live.gift.tagfield`",
            "kafka.brokers is empty",
            "max_in_flight_per_partition must be at least 1",
            "set tag_header or tag_field, not both",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(errors.len(), 6, "{all}");
    }

    #[test]
    fn librdkafka_properties_pass_through() {
        let config = BusConfig::parse(
            r#"
            [kafka.common]
            "security.protocol" = "SASL_SSL"
            "sasl.mechanism" = "SCRAM-SHA-512"
            [kafka.producer]
            "linger.ms" = "20"
            "#,
        )
        .unwrap();
        assert_eq!(config.kafka.common["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(config.kafka.producer["linger.ms"], "20");
    }
}
