#![doc = include_str!("../README.md")]

mod capability;
mod consumer;
pub mod fields;
mod fly;
pub mod ledger;
pub mod letter;
mod module;
pub mod trace;
pub use pigeon_wire::{receipt, registry};

pub use capability::{Capability, HandlerError, HandlerResult, Retry};
pub use fields::LetterBuilder;
pub use fly::{Context, DeadLettered, Delivered, FlyError, FlyLetter, FlyRequest, Receipt};
pub use letter::{header, Letter, LetterError, LetterId};
pub use module::{Module, ModuleBuilder, StartError, FAILED, INGRESS};
