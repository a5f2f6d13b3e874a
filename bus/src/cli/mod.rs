//! The operator's commands: `pigeon tokens …` (local, on the store), `pigeon routes …`,
//! `pigeon dead-letters …` and `pigeon dictionary …` (remote, through the admin API).

pub mod client;
pub mod deadletters;
pub mod dictionary;
pub mod routes;
pub mod tokens;

/// Who a local command acts as in the audit log.
pub fn local_actor() -> String {
    format!("local:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}
