//! Kafka client settings: Pigeon's defaults, then the operator's properties on top.

use rdkafka::config::ClientConfig;

use crate::config::{redact_properties, KafkaConfig};

/// The router's consumer: offsets are stored by the router and committed by librdkafka.
pub fn consumer_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = base(kafka);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    apply(&mut config, &kafka.consumer);
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
