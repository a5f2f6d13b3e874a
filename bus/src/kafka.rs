//! Kafka client settings: Pigeon's defaults, then the operator's properties on top.

use rdkafka::config::ClientConfig;

use crate::config::{redact_properties, KafkaConfig};

/// A consumer in `group`: offsets are stored by the application and committed by librdkafka.
pub fn consumer_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = group_consumer(kafka, group);
    apply(&mut config, &kafka.consumer);
    config
}

/// The router's consumer. Its subscription changes with the pigeons, so rebalancing is
/// cooperative (only the partitions concerned move).
///
/// Under Kafka 4's consumer group protocol (`consumer.group.protocol=consumer`, KIP-848) the
/// broker assigns partitions, incrementally, and librdkafka refuses an assignment strategy:
/// none is set then (`group.remote.assignor` names the broker's, if wanted).
pub fn router_consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = group_consumer(kafka, &kafka.router_group);
    if !broker_assigns(kafka) {
        config.set("partition.assignment.strategy", "cooperative-sticky");
    }
    apply(&mut config, &kafka.consumer);
    config
}

/// Whether the consumers use Kafka 4's consumer group protocol, where the broker assigns.
pub fn broker_assigns(kafka: &KafkaConfig) -> bool {
    kafka.consumer.get("group.protocol").is_some_and(|p| p.eq_ignore_ascii_case("consumer"))
}

/// A consumer of assigned partitions that joins no group and commits nothing, so that every
/// instance reads the whole topic. librdkafka wants a group id even to assign partitions: it
/// gets one of its own (`{name}-…`), never joined nor committed to, so nothing stays behind on
/// the brokers.
pub fn assigned_consumer_config(kafka: &KafkaConfig, name: &str) -> ClientConfig {
    let mut config = base(kafka);
    apply(&mut config, &kafka.consumer);
    config
        .set("group.id", format!("{name}-{}", uuid::Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    config
}

/// A client that reads group `group`'s committed offsets and the watermarks for the lag, and
/// never joins the group nor commits (it never subscribes).
pub fn lag_reader_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = base(kafka);
    apply(&mut config, &kafka.consumer);
    config.set("group.id", group).set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
    config
}

/// Every group consumer refreshes metadata every 10 s (librdkafka's default is 5 minutes):
/// partitions added to a topic it reads, a topic created after its pigeon and a topic matching
/// a pattern are found soon, and read from their start.
fn group_consumer(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = base(kafka);
    config
        .set("group.id", group)
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    config
}

/// The router's producer: idempotent (no duplicates or reordering from its own retries),
/// batched, and partitioning keys as the Java client does so every client agrees.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = base(kafka);
    config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .set("partitioner", "murmur2_random");
    apply(&mut config, &kafka.producer);
    config
}

/// An admin or tooling client.
pub fn admin_config(kafka: &KafkaConfig) -> ClientConfig {
    base(kafka)
}

fn base(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    apply(&mut config, &kafka.common);
    config
}

fn apply<'a>(config: &mut ClientConfig, props: impl IntoIterator<Item = (&'a String, &'a String)>) {
    for (key, value) in props {
        config.set(key, value);
    }
}

/// A client configuration for logs, secrets redacted.
pub fn describe(config: &ClientConfig) -> String {
    // A BTreeMap: sorted already.
    redact_properties(config.config_map())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_properties_override_defaults_and_secrets_stay_hidden() {
        let mut kafka = KafkaConfig::default();
        kafka.common.insert("sasl.password".into(), "hunter2".into());
        kafka.producer.insert("linger.ms".into(), "50".into());
        kafka.consumer.insert("auto.offset.reset".into(), "latest".into());
        let producer = producer_config(&kafka);
        assert_eq!(producer.get("linger.ms"), Some("50"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        let consumer = consumer_config(&kafka, "g");
        assert_eq!(consumer.get("auto.offset.reset"), Some("latest"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("sasl.password"), Some("hunter2"));
        let shown = describe(&consumer);
        assert!(shown.contains("sasl.password=***") && !shown.contains("hunter2"), "{shown}");

        let router = router_consumer_config(&kafka);
        assert_eq!(router.get("partition.assignment.strategy"), Some("cooperative-sticky"));
        assert_eq!(router.get("group.id"), Some("pigeon-router"));
        kafka.consumer.insert("partition.assignment.strategy".into(), "range,roundrobin".into());
        let router = router_consumer_config(&kafka);
        assert_eq!(
            router.get("partition.assignment.strategy"),
            Some("range,roundrobin"),
            "the operator wins"
        );

        // Under the consumer group protocol the broker assigns: no strategy is set.
        let mut kip848 = KafkaConfig::default();
        kip848.consumer.insert("group.protocol".into(), "consumer".into());
        let router = router_consumer_config(&kip848);
        assert_eq!(router.get("partition.assignment.strategy"), None);
        assert_eq!(router.get("group.protocol"), Some("consumer"));

        // Every instance its own group id, never committing.
        let (one, two) = (
            assigned_consumer_config(&kafka, "pigeon-control"),
            assigned_consumer_config(&kafka, "pigeon-control"),
        );
        assert!(one.get("group.id").unwrap().starts_with("pigeon-control-"));
        assert_ne!(one.get("group.id"), two.get("group.id"));
        assert_eq!(one.get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn tls_and_sasl_scram_are_built_in() {
        // librdkafka refuses unknown mechanisms or protocols at client creation, before any
        // connection: creating the client proves the build has OpenSSL and SCRAM.
        let mut kafka = KafkaConfig::default();
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "pigeon"),
            ("sasl.password", "secret"),
        ] {
            kafka.common.insert(k.into(), v.into());
        }
        let producer: Result<rdkafka::producer::BaseProducer, _> = producer_config(&kafka).create();
        assert!(producer.is_ok(), "{:?}", producer.err());
        kafka.common.insert("sasl.mechanism".into(), "NOT-A-MECHANISM".into());
        let refused: Result<rdkafka::producer::BaseProducer, _> = producer_config(&kafka).create();
        assert!(refused.is_err(), "an unknown mechanism must be refused");
    }
}
