//! `pigeon dev`: the whole bus on one machine with embedded defaults and a demo activity.
//!
//! An in-process Kafka-protocol broker (librdkafka's mock cluster) and a SQLite file. Anything
//! that speaks Kafka can produce to and consume from the printed bootstrap servers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::serve;
use pigeon_bus::config::BusConfig;
use pigeon_bus::route::{DestinationSpec, MatchSpec, PigeonSpec};

/// The SDK's example module, `act-toy`: the demo provider.
#[path = "../../../sdk/examples/act_toy/toy.rs"]
pub mod act_toy;

/// The demo activity's source topic.
pub const DEMO_SOURCE: &str = "live.gift";
/// The demo module.
pub const DEMO_MODULE: &str = act_toy::NAME;

/// The demo pigeons: gifts fill the toy activity's progress bar; a full bar (flown by the
/// module) drops a treasure chest; every gift is archived for replay.
pub fn demo_pigeons() -> [PigeonSpec; 3] {
    let pigeon = |id: &str, name: &str, topic: &str, tag: &str, capability: &str| PigeonSpec {
        id: id.into(),
        name: name.into(),
        owner: "demo".into(),
        enabled: true,
        action: Default::default(),
        script: None,
        matcher: MatchSpec::new(topic, tag),
        destinations: vec![DestinationSpec::capability(&format!("{DEMO_MODULE}/{capability}"))],
        retry: None,
        window: None,
        dictionary: Default::default(),
    };
    [
        pigeon("demo-gift-progress", "Gifts fill the progress bar", DEMO_SOURCE, "gift.sent", "progress.add"),
        pigeon(
            act_toy::FULL_PIGEON,
            "A full progress bar drops a chest",
            pigeon_bus::route::INGRESS,
            "progress.full",
            "chest.drop",
        ),
        PigeonSpec {
            id: "demo-gift-archive".into(),
            name: "Every gift, kept for replay".into(),
            owner: "demo".into(),
            enabled: true,
            action: pigeon_bus::route::Action::Archive,
            script: None,
            matcher: MatchSpec::new(DEMO_SOURCE, "gift.*"),
            destinations: Vec::new(),
            retry: None,
            window: None,
            dictionary: Default::default(),
        },
    ]
}

/// Reads `NAME` or `NAME:PARTITIONS` (`pigeon dev-broker --topic`); 0 partitions stands for
/// the default.
pub fn parse_topic_spec(spec: &str) -> Result<(String, i32), String> {
    let (name, partitions) = match spec.rsplit_once(':') {
        Some((name, count)) => {
            let count = count
                .parse::<i32>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| format!("{count:?} is not a partition count from 1 to 10000"))?;
            (name, count)
        }
        None => (spec, 0),
    };
    let valid = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        return Err(format!(
            "{name:?} is not a Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249)"
        ));
    }
    Ok((name.to_owned(), partitions))
}

/// Options of `pigeon dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where the SQLite file lives.
    pub data_dir: PathBuf,
    /// Produce a demo gift letter every couple of seconds.
    pub demo_traffic: bool,
}

/// Settings that fit a single-machine bus: quick group joins on restart, and every module
/// receipt kept (a demo's few letters each show their handlers in their trace).
pub fn dev_config(mut config: BusConfig, bootstrap: &str, options: &DevOptions) -> BusConfig {
    config.receipts.sample_ratio = 1.0;
    config.kafka.brokers = bootstrap.to_owned();
    config.kafka.consumer.entry("session.timeout.ms".into()).or_insert_with(|| "6000".into());
    config.kafka.consumer.entry("heartbeat.interval.ms".into()).or_insert_with(|| "500".into());
    config.store.url = format!("sqlite://{}", options.data_dir.join("dev.db").display());
    config.topics.modules.push(DEMO_MODULE.into());
    config
}

/// Runs the dev bus until SIGTERM/SIGINT. The mock cluster stays with the caller's thread.
pub async fn run(config: BusConfig, options: DevOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating {}", options.data_dir.display()))?;
    let store = serve::open_store(&config.store.url).await?;
    for pigeon in demo_pigeons() {
        let saved = store.save_pigeon(&pigeon, "pigeon dev").await?;
        tracing::info!(pigeon = %pigeon.id, version = saved.version, "demo activity seeded");
    }
    let name = format!("dev-{}", pigeon_bus::store::now_ms());
    let token =
        crate::cli::tokens::create(store.as_ref(), &name, pigeon_bus::token::Role::Admin, "pigeon dev")
            .await?;
    println!("token: {token}");

    let cancel = CancellationToken::new();
    if options.demo_traffic {
        tokio::spawn(demo_traffic(pigeon_bus::kafka::producer_config(&config.kafka), cancel.clone()));
    }
    let module = tokio::spawn(demo_module(config.kafka.clone(), cancel.clone()));
    let served = serve::run(config, store, cancel.clone(), |url| println!("admin: {url}")).await;
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(35), module).await;
    served
}

/// Runs the `act-toy` module with the bus's Kafka settings until `cancel` fires.
async fn demo_module(kafka: pigeon_bus::config::KafkaConfig, cancel: CancellationToken) {
    let mut builder = act_toy::module().brokers(kafka.brokers.clone());
    for (name, value) in kafka.common.iter().chain(&kafka.consumer) {
        builder = builder.kafka_property(name, value);
    }
    let module = match builder.start().await {
        Ok(module) => module,
        Err(e) => return tracing::error!(error = %e, "the demo module did not start"),
    };
    cancel.cancelled().await;
    module.shutdown().await;
}

/// Produces a gift letter every two seconds, as a live room would.
async fn demo_traffic(config: rdkafka::ClientConfig, cancel: CancellationToken) {
    let producer: FutureProducer = match config.create() {
        Ok(p) => p,
        Err(e) => return tracing::error!(error = %e, "demo traffic producer"),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let room = format!("room-{}", n % 3);
        let letter = pigeon_sdk::Letter::new(
            "demo",
            "gift.sent",
            serde_json::json!({ "userId": 1000 + n % 7, "anchorId": 42, "roomId": room, "giftId": 7, "giftCount": 1 + n % 5 }),
        )
        .with_key(room.clone());
        let payload = letter.payload_bytes();
        let record = FutureRecord::to(DEMO_SOURCE).key(&room).payload(&payload).headers(letter.headers());
        if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
            tracing::warn!(error = %e, "demo gift not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_topic_spec;

    #[test]
    fn topic_specs_name_a_topic_and_maybe_its_partitions() {
        assert_eq!(parse_topic_spec("live.gift:16"), Ok(("live.gift".into(), 16)));
        assert_eq!(parse_topic_spec("lane_a"), Ok(("lane_a".into(), 0)), "0: the default count");
        assert!(parse_topic_spec("a:b:2").unwrap_err().contains("\"a:b\" is not a Kafka topic name"));
        assert!(parse_topic_spec("x:10001").unwrap_err().contains("from 1 to 10000"));
        assert!(parse_topic_spec(":3").is_err());
        assert!(parse_topic_spec("..").is_err());
    }
}
