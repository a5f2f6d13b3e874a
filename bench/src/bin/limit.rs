//! The limit: a bare consume→produce loop with rdkafka and nothing else. Every message of the
//! source topic is produced, as it came (key, payload, headers), to each destination topic. No
//! routing, no tracking: offsets are committed by librdkafka as the consumer reads, so this is
//! what the Kafka client alone costs for the same traffic.
//!
//! `pigeon-limit --brokers B --group G --source T --to A --to B [-X key=value …]`: `-X` sets a
//! client property on both consumer and producer (`consumer.`/`producer.` prefixes pick one).
//! Runs until it is stopped; the harness stops it only once every output is on its topic.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

#[derive(Parser)]
#[command(
    name = "pigeon-limit",
    about = "A bare rdkafka consume→produce loop: the limit Pigeon is measured against"
)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    source: String,
    /// A destination topic (repeat for each).
    #[arg(long = "to", required = true)]
    destinations: Vec<String>,
    /// A client property, `key=value`; `consumer.key=value` or `producer.key=value` for one side.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    properties: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut consumer_config = ClientConfig::new();
    consumer_config
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group)
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    let mut producer_config = ClientConfig::new();
    producer_config.set("bootstrap.servers", &args.brokers);
    for property in &args.properties {
        let Some((key, value)) = property.split_once('=') else {
            bail!("-X {property}: expected KEY=VALUE");
        };
        if let Some(key) = key.strip_prefix("consumer.") {
            consumer_config.set(key, value);
        } else if let Some(key) = key.strip_prefix("producer.") {
            producer_config.set(key, value);
        } else {
            consumer_config.set(key, value);
            producer_config.set(key, value);
        }
    }
    let consumer: BaseConsumer = consumer_config.create().context("consumer")?;
    let producer: ThreadedProducer<DefaultProducerContext> = producer_config.create().context("producer")?;
    consumer.subscribe(&[&args.source]).context("subscribe")?;
    println!("limit: consuming {} to {}", args.source, args.destinations.join(", "));
    loop {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                eprintln!("limit: consume: {e}");
                continue;
            }
        };
        for destination in &args.destinations {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(destination);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            if let Some(headers) = message.headers() {
                record = record.headers(headers.detach());
            }
            // A full queue waits for delivery reports to free room; nothing is dropped.
            while let Err((e, back)) = producer.send(record) {
                if !matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) {
                    bail!("produce to {destination}: {e}");
                }
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}
