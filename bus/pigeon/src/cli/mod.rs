//! The operator's commands: `pigeon tokens …` (local, on the store), `pigeon routes …`,
//! `pigeon dead-letters …`, `pigeon dictionary …`, `pigeon replay …` and `pigeon archive …`
//! (remote, through the admin API).

pub mod client;
pub mod deadletters;
pub mod dictionary;
pub mod replay;
pub mod routes;
pub mod tokens;
pub mod trace;

/// Who a local command acts as in the audit log.
pub fn local_actor() -> String {
    format!("local:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}
