//! Pigeon's wire vocabulary, shared by the SDK (modules) and the bus: the CloudEvents header
//! names Pigeon reads and writes, letter ids, the bus's own topics, and what a module publishes about itself
//! on `pigeon.registry`. Nothing here does I/O.

mod id;
pub mod receipt;
pub mod registry;
pub mod trace;

pub use id::LetterId;
pub use trace::TraceParent;

/// Header names of the binary binding, and the extensions Pigeon adds.
pub mod header {
    /// CloudEvents spec version; always [`SPEC_VERSION`](crate::SPEC_VERSION).
    pub const SPECVERSION: &str = "ce_specversion";
    /// The letter id: time-ordered and unique.
    pub const ID: &str = "ce_id";
    /// Who produced the letter: a module name or a topic.
    pub const SOURCE: &str = "ce_source";
    /// The tag (CloudEvents `type`), e.g. `gift.sent` or `chest.drop`.
    pub const TYPE: &str = "ce_type";
    /// When the event happened, RFC 3339.
    pub const TIME: &str = "ce_time";
    /// Payload media type.
    pub const CONTENT_TYPE: &str = "content-type";
    /// The pigeon (route) that carried the letter, or that a module flies it to.
    pub const PIGEON: &str = "ce_pigeon";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "ce_traceparent";
    /// Delivery attempt of this output, 1 on first delivery.
    pub const ATTEMPT: &str = "ce_attempt";
    /// Set on replayed letters: the id of the archived original.
    pub const REPLAYOF: &str = "ce_replayof";
    /// How many pigeons the letter has passed through: each output of the bus counts one more,
    /// and the router parks a letter past `MAX_HOPS` (pigeons x→y and y→x would loop).
    pub const HOPS: &str = "ce_hops";
    /// On a failure report (`pigeon.failed`): the topic the module consumed the letter from
    /// (its module topic or a lane), where a retry sends it.
    pub const FAILED_TOPIC: &str = "pigeon_failed_topic";
    /// On a failure report: the module whose handler failed.
    pub const FAILED_MODULE: &str = "pigeon_failed_module";
    /// On a failure report: the handler's error, after the module's own retries.
    pub const FAILED_ERROR: &str = "pigeon_failed_error";
}

/// The CloudEvents spec version Pigeon speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The payload media type of every letter Pigeon creates.
pub const JSON: &str = "application/json";

/// Letters modules fly go here; the router sends each to the pigeon its `ce_pigeon` names.
pub const INGRESS: &str = "pigeon.ingress";
/// Where modules report letters their handlers failed; the bus stores them as dead letters.
pub const FAILED: &str = "pigeon.failed";
/// Registrations and heartbeats of module instances.
pub const REGISTRY: &str = registry::TOPIC;
/// Receipts of handled letters.
pub const RECEIPTS: &str = "pigeon.receipts";

/// Now, in unix milliseconds (0 before 1970, the largest `i64` past year 292 million).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
