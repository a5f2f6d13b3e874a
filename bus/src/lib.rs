//! Pigeon, the event-routing bus for live-stream activity systems.
//!
//! The letter's path, in module order: [`source`] reads a message's tag and id, [`route`]
//! finds its pigeons, [`router`] forwards it and tracks offsets, [`deadletter`] keeps what
//! failed in the [`store`]. [`serve`] and [`dev`] run it all; [`admin`] is the HTTP side.

pub mod admin;
pub mod archive;
pub mod cli;
pub mod config;
pub mod control;
pub mod counters;
pub mod deadletter;
pub mod dev;
pub mod failures;
pub mod kafka;
pub mod registry;
pub mod retrier;
pub mod router;
pub mod serve;
pub mod source;
pub mod store;
pub mod supervise;
pub mod topics;

pub use pigeon_core::{clock, dictionary, dryrun, route, script, tag, token, wiring};
