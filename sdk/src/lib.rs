//! Pigeon SDK: what an activity module embeds to talk to the Pigeon bus.
//!
//! For now this crate holds the wire format every part of Pigeon shares: a [`Letter`] encoded
//! with the CloudEvents 1.0 Kafka protocol binding in binary mode (`ce_*` headers, the Kafka key
//! as partition key, a JSON payload). The bus depends on these types; this crate never depends
//! on the bus.

pub mod letter;

pub use letter::{header, Letter, LetterError, LetterId};
