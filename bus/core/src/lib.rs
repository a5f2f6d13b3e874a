//! Pigeon's core: what a pigeon is and what it does to a letter, without I/O.
//!
//! No Kafka client, no database, no runtime: this crate's dependencies say so, and
//! `tests/architecture.rs` checks it. Pigeons ([`route`]: specs, tag patterns, live windows,
//! the compiled route table), the output [`plan`] every sender follows, cleansing [`script`]s, the [`dictionary`] and
//! checked [`wiring`], retry schedules and the dead-letter, archive and counter records the
//! store keeps, operators' [`token`]s, the [`clock`], and [`redact`]ion of secrets in what is logged.

pub mod archive;
pub mod clock;
pub mod counters;
pub mod deadletter;
pub mod dictionary;
pub mod dryrun;
pub mod fault;
pub mod plan;
pub mod redact;
pub mod route;
pub mod script;
pub mod series;
pub mod tag;
pub mod token;
pub mod wiring;

/// Unit tests count what script runs hold, as the bus binary does.
#[cfg(test)]
#[global_allocator]
static ALLOC: pigeon_alloc::Counting = pigeon_alloc::Counting;
