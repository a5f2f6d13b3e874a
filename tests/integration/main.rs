//! Integration tests: one binary, shared helpers in `support`.
//!
//! Kafka tests own an in-process mock cluster and run the router as a child process (`pigeon
//! serve`), so it can be killed like a real one. Store tests run the same suite on SQLite and
//! on the local MariaDB.

mod archive;
mod archive_store;
mod cli;
mod dashboard;
mod dictionary;
mod faults;
mod forward;
mod hostile;
mod lifecycle;
mod metrics;
mod plan;
mod retry;
mod scripts;
mod sdk;
mod soak;
mod store;
mod support;
mod traces;
