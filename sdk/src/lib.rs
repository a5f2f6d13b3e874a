#![doc = include_str!("../README.md")]

mod capability;
mod consumer;
pub mod fields;
pub mod ledger;
pub mod letter;
mod module;
pub use pigeon_wire::registry;

pub use capability::{Capability, HandlerError, HandlerResult};
pub use fields::LetterBuilder;
pub use letter::{header, Letter, LetterError, LetterId};
pub use module::{
    Context, DeadLettered, Delivered, FlyError, FlyLetter, FlyRequest, Module, ModuleBuilder, Receipt, Retry,
    StartError, FAILED, INGRESS,
};
