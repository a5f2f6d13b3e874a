//! Sending outputs: headers of an output letter, and the producer call shared by the forward
//! path and the script workers (a refused record becomes a dead letter at once).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use tokio::sync::mpsc;

use super::context::{output_dead_letter, Delivery, RouterProducerContext};
use super::RouterStats;
use crate::deadletter::Job;
use pigeon_sdk::header;

/// A record of one output letter.
pub type OutputRecord<'a> = BaseRecord<'a, [u8], [u8], Box<Delivery>>;

/// The producer and where refused outputs go.
pub struct Outputs {
    /// The router's producer.
    pub producer: Arc<ThreadedProducer<RouterProducerContext>>,
    /// Dead letters to store.
    pub dead_letters: mpsc::UnboundedSender<Job>,
    /// Counters.
    pub stats: Arc<RouterStats>,
}

impl Outputs {
    /// Hands a record to the producer. Gives it back when the queue is full (try again after
    /// a moment); a record the producer refuses outright is dead-lettered.
    pub fn try_send<'a>(&self, record: OutputRecord<'a>) -> Result<(), OutputRecord<'a>> {
        match self.producer.send(record) {
            Ok(()) => {
                self.stats.letters_out.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => Err(back),
            Err((error, back)) => {
                // Refused before it left (too large, unknown topic…).
                let output = owned(&back);
                let delivery = back.delivery_opaque;
                let dead_letter = output_dead_letter(&output, &delivery, error.to_string());
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                let _ = self.dead_letters.send(Job {
                    dead_letter,
                    tracker: delivery.tracker,
                    offset: delivery.offset,
                });
                Ok(())
            }
        }
    }
}

/// The output's headers: the input's, with the output's id and tag, the pigeon, attempt 1,
/// and the CloudEvents attributes a foreign letter lacks. `json` marks a payload the bus wrote.
pub fn output_headers<M: Message>(
    message: &M,
    id: &str,
    tag: &str,
    pigeon: &str,
    json: bool,
) -> OwnedHeaders {
    let input = message.headers();
    let count = input.map_or(0, |h| h.count());
    let mut headers = OwnedHeaders::new_with_capacity(count + 8);
    let (mut has_spec, mut has_source, mut has_time) = (false, false, false);
    if let Some(input) = input {
        for h in input.iter() {
            match h.key {
                header::TYPE | header::PIGEON | header::ATTEMPT | header::ID => continue,
                header::CONTENT_TYPE if json => continue,
                header::SPECVERSION => has_spec = true,
                header::SOURCE => has_source = true,
                header::TIME => has_time = true,
                _ => {}
            }
            headers = headers.insert(Header { key: h.key, value: h.value });
        }
    }
    headers = headers
        .insert(text(header::ID, id))
        .insert(text(header::TYPE, tag))
        .insert(text(header::PIGEON, pigeon))
        .insert(text(header::ATTEMPT, "1"));
    if json {
        headers = headers.insert(text(header::CONTENT_TYPE, pigeon_sdk::letter::JSON));
    }
    if !has_spec {
        headers = headers.insert(text(header::SPECVERSION, pigeon_sdk::letter::SPEC_VERSION));
    }
    if !has_source {
        headers = headers.insert(text(header::SOURCE, message.topic()));
    }
    if !has_time {
        if let Some(ms) = message.timestamp().to_millis() {
            headers = headers.insert(text(header::TIME, &pigeon_sdk::letter::format_time_ms(ms)));
        }
    }
    headers
}

fn text<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header { key, value: Some(value.as_bytes()) }
}

/// A refused record copied into a message, so it can be dead-lettered like a failed delivery.
fn owned(record: &OutputRecord<'_>) -> OwnedMessage {
    OwnedMessage::new(
        record.payload.map(<[u8]>::to_vec),
        record.key.map(<[u8]>::to_vec),
        record.topic.to_owned(),
        rdkafka::Timestamp::NotAvailable,
        -1,
        -1,
        record.headers.clone(),
    )
}
