//! The contenders and how each is started: the limit (with each step of tuning), Pigeon's
//! router (forward and script pigeons) and the peer written with Quix Streams.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use pigeon_bus::config::KafkaConfig;
use pigeon_bus::route::{Action, DestinationSpec, MatchSpec, PigeonSpec};

use crate::letters::TAG;
use crate::process::Contender;

/// The cleansing script Pigeon runs (the peer runs its Python twin): every gift to both
/// destinations.
pub const SCRIPT: &str = include_str!("../gift-to-progress-and-rank.rhai");
/// The peer's code.
pub const PEER: &str = include_str!("../peer/quix_gifts.py");

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Work {
    /// The bare loop, with these client properties on top of librdkafka's defaults.
    Limit(Settings),
    Forward,
    Script,
    /// The peer doing the script pigeon's work.
    Peer,
    /// The peer doing the forward pigeon's work.
    PeerForward,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Run {
    /// Short name, used in topic and group names.
    pub name: String,
    /// What the report calls it.
    pub label: String,
    pub work: Work,
}

impl Run {
    pub fn destinations(&self) -> [String; 2] {
        [format!("bench.{}.a", self.name), format!("bench.{}.b", self.name)]
    }
}

/// Client properties as `-X` keys (`producer.…`, `consumer.…`) and values.
pub type Settings = Vec<(String, String)>;

/// One step of tuning the limit.
#[derive(Clone, Debug)]
pub struct LimitStep {
    pub name: &'static str,
    pub label: &'static str,
    /// Everything set so far, this step's properties included.
    pub settings: Settings,
}

/// Steps of tuning, each adding to the one before; the last is exactly Pigeon's settings.
pub fn limit_steps() -> Vec<LimitStep> {
    let pigeon = pigeon_settings();
    let pick = |keys: &[&str]| -> Settings {
        keys.iter().filter_map(|k| pigeon.iter().find(|(key, _)| key == k).cloned()).collect()
    };
    let guarantees = pick(&["producer.enable.idempotence", "producer.partitioner"]);
    let compression = pick(&["producer.compression.type"]);
    let batching =
        pick(&["producer.linger.ms", "producer.batch.num.messages", "producer.queue.buffering.max.messages"]);
    let mut so_far = Settings::new();
    let mut steps = Vec::new();
    for (name, label, mut adds) in [
        ("limit-default", "limit, librdkafka defaults", Settings::new()),
        ("limit-guarantees", "limit + idempotence, Java partitioner", guarantees),
        ("limit-lz4", "limit + lz4", compression),
        ("limit-batching", "limit + batching", batching),
    ] {
        so_far.append(&mut adds);
        steps.push(LimitStep { name, label, settings: so_far.clone() });
    }
    // What Pigeon sets beyond those (consumer fetch sizes and the rest), so the last step
    // is Pigeon's exact settings.
    steps.push(LimitStep { name: "limit-tuned", label: "limit, Pigeon's settings", settings: pigeon });
    steps
}

/// Pigeon's own client properties (producer and router consumer), as `-X` keys, without the
/// ones that name the broker or the group or that only Pigeon's offset tracking needs.
pub fn pigeon_settings() -> Settings {
    let kafka = KafkaConfig::default();
    let skip = [
        "bootstrap.servers",
        "group.id",
        "enable.auto.offset.store",
        "partition.assignment.strategy",
        "topic.metadata.refresh.interval.ms",
        "enable.partition.eof",
        "auto.offset.reset",
    ];
    let side = |prefix: &str, config: rdkafka::config::ClientConfig| {
        config
            .config_map()
            .into_iter()
            .filter(|(k, _)| !skip.contains(k))
            .map(|(k, v)| (format!("{prefix}.{k}"), v.to_owned()))
            .collect::<Vec<_>>()
    };
    let mut settings = side("producer", pigeon_bus::kafka::producer_config(&kafka));
    settings.extend(side("consumer", pigeon_bus::kafka::router_consumer_config(&kafka)));
    settings.sort();
    settings
}

/// The pigeon a forward or script run uses: `gift.sent` from the source to both destinations.
pub fn pigeon(run: &Run, source: &str) -> PigeonSpec {
    let script = run.work == Work::Script;
    let [a, b] = run.destinations();
    let out_tag = if script { "progress.add" } else { TAG };
    PigeonSpec {
        id: format!("bench-{}", run.name),
        name: run.label.clone(),
        owner: "bench".into(),
        enabled: true,
        action: if script { Action::Script } else { Action::Forward },
        script: script.then(|| SCRIPT.to_owned()),
        matcher: MatchSpec::new(source, TAG),
        destinations: vec![DestinationSpec::topic(&a, out_tag), DestinationSpec::topic(&b, out_tag)],
        retry: None,
        window: None,
        dictionary: Default::default(),
    }
}

/// Where the programs are.
pub struct Programs {
    pub pigeon: PathBuf,
    pub limit: PathBuf,
    /// The Python with Quix Streams installed; without it the peer does not run.
    pub python: Option<PathBuf>,
    pub peer: PathBuf,
}

/// Starts `run` against `bootstrap`, consuming `source` in group `group`.
pub fn start(
    run: &Run,
    programs: &Programs,
    bootstrap: &str,
    source: &str,
    group: &str,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Contender> {
    std::fs::create_dir_all(dir)?;
    let log = dir.join("contender.log");
    let [a, b] = run.destinations();
    match &run.work {
        Work::Limit(properties) => {
            let mut command = Command::new(&programs.limit);
            command.args([
                "--brokers",
                bootstrap,
                "--group",
                group,
                "--source",
                source,
                "--to",
                &a,
                "--to",
                &b,
            ]);
            for (k, v) in properties {
                command.arg("-X").arg(format!("{k}={v}"));
            }
            Contender::spawn(&run.label, command, &log)
        }
        Work::Forward | Work::Script => {
            let url = format!("sqlite://{}", dir.join("pigeon.db").display());
            rt.block_on(async {
                let store = pigeon_bus::store::open_migrated(&url).await?;
                store.save_pigeon(&pigeon(run, source), "bench").await?;
                anyhow::Ok(())
            })
            .context("saving the bench pigeon")?;
            let config = dir.join("pigeon.toml");
            std::fs::write(&config, pigeon_config(bootstrap, group, &url, "router"))?;
            let mut command = Command::new(&programs.pigeon);
            command.arg("--config").arg(&config).arg("serve").env("RUST_LOG", "warn");
            Contender::spawn(&run.label, command, &log)
        }
        Work::Peer | Work::PeerForward => {
            let python = programs.python.as_ref().context("the peer needs --python")?;
            let producer: BTreeMap<String, String> = pigeon_settings()
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix("producer.").map(|k| (k.to_owned(), v)))
                .collect();
            let mut command = Command::new(python);
            command
                .arg(&programs.peer)
                .args(["--brokers", bootstrap, "--group", group, "--source", source, "--to", &a, "--to", &b])
                .arg("--producer-config")
                .arg(serde_json::to_string(&producer)?);
            if run.work == Work::PeerForward {
                command.arg("--forward");
            }
            Contender::spawn(&run.label, command, &log)
        }
    }
}

/// A configuration file running only `role` against these brokers, this group and store.
pub fn pigeon_config(bootstrap: &str, group: &str, store: &str, role: &str) -> String {
    format!(
        "roles = [\"{role}\"]\n\n[kafka]\nbrokers = \"{bootstrap}\"\nrouter_group = \"{group}\"\n\n\
         [store]\nurl = \"{store}\"\n\n[archiver]\ngroup = \"{group}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_limit_step_is_pigeon_s_settings_and_each_step_adds_to_the_one_before() {
        let steps = limit_steps();
        assert!(steps[0].settings.is_empty(), "the first step is librdkafka's defaults");
        for pair in steps.windows(2) {
            for setting in &pair[0].settings {
                assert!(pair[1].settings.contains(setting), "{} drops {setting:?}", pair[1].name);
            }
            assert!(pair[1].settings.len() > pair[0].settings.len(), "{} adds nothing", pair[1].name);
        }
        let last = &steps.last().unwrap().settings;
        assert_eq!(last, &pigeon_settings());
        assert!(last.contains(&("producer.compression.type".into(), "lz4".into())), "{last:?}");
    }

    #[test]
    fn a_config_file_runs_one_role_against_the_given_broker_and_store() {
        let text = pigeon_config("127.0.0.1:9", "bench-g", "sqlite:///tmp/x.db", "router");
        let config: pigeon_bus::config::BusConfig = toml::from_str(&text).expect("a valid configuration");
        assert_eq!(config.kafka.brokers, "127.0.0.1:9");
        assert_eq!(config.kafka.router_group, "bench-g");
        assert_eq!(config.store.url, "sqlite:///tmp/x.db");
    }
}
