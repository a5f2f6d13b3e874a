//! The archive path: archive pigeons keep chosen letters whole in the store, indexed by time,
//! topic, tag, pigeon and the business keys, and replay jobs send them again.
//!
//! [`archiver`] is the role that consumes (a consumer group of its own, so archiving never
//! slows forwarding) and writes in batches; [`replay`] runs replay jobs. The records they share
//! with the store, the API and the CLI are `pigeon_core::archive`'s.

pub mod archiver;
pub mod replay;

pub use pigeon_core::archive::*;

/// An archived letter as the Kafka message it was read as, with `headers`.
pub fn as_message(
    letter: &ArchivedLetter,
    headers: rdkafka::message::OwnedHeaders,
) -> rdkafka::message::OwnedMessage {
    rdkafka::message::OwnedMessage::new(
        letter.payload.clone(),
        letter.key.clone(),
        letter.position.topic.clone(),
        rdkafka::Timestamp::CreateTime(letter.position.time),
        letter.position.partition,
        letter.position.offset,
        Some(headers),
    )
}
