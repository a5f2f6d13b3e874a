//! Faults injected on purpose, to test that the bus contains a bug it has not found yet.
//!
//! With `PIGEON_FAULT_PANIC_TAGS` set to a comma-separated list of tags (tests set it; nothing
//! else should), handling a letter of one of those tags panics at each [`panic_point`], as a
//! bug would. Unset, a point costs one atomic load.

use std::sync::OnceLock;

/// The environment variable naming the tags whose letters panic.
pub const PANIC_TAGS: &str = "PIGEON_FAULT_PANIC_TAGS";

/// The message every injected panic starts with.
pub const INJECTED: &str = "injected fault";

fn tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        std::env::var(PANIC_TAGS)
            .map(|list| list.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    })
}

/// Panics when `tag` is one [`PANIC_TAGS`] names; `stage` says where, in the message.
pub fn panic_point(stage: &str, tag: &str) {
    let tags = tags();
    if !tags.is_empty() && tags.iter().any(|t| t == tag) {
        panic!("{INJECTED} at {stage} for a letter tagged {tag:?}");
    }
}

/// What a caught panic said.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
