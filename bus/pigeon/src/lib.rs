//! The `pigeon` binary's commands, as a library so the integration tests drive them: [`serve`]
//! runs the roles a configuration names, [`dev`] runs everything embedded with a demo module,
//! and [`cli`] is the operator's side (over the admin API or straight on the store).

pub mod cli;
pub mod dev;
pub mod serve;
