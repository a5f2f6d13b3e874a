//! Pigeon's roles on Kafka: the router, the archiver and replays, the retrier and the failures
//! reader, the registry, and the watcher that keeps every role's route tables current.
//!
//! The letter's path, in module order: [`source`] reads a message's tag and id, [`route`]
//! (pigeon-core's) finds its pigeons, [`router`] forwards it and tracks offsets, [`deadletter`]
//! keeps what failed in the [`store`]. The `pigeon` binary runs the roles; `pigeon-admin` is
//! the HTTP side.

pub mod archive;
pub mod config;
pub mod control;
pub mod counters;
pub mod deadletter;
pub mod failures;
pub mod kafka;
pub mod prometheus;
pub mod receipts;
pub mod registry;
pub mod retrier;
pub mod router;
pub mod source;
pub mod supervise;
pub mod survey;
pub mod telemetry;
pub mod topics;
pub mod trace;

pub use pigeon_core::{clock, dictionary, dryrun, route, script, tag, token, wiring};
pub use pigeon_store as store;
