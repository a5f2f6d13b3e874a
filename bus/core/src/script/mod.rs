//! Script pigeons: a Rhai script reshapes, filters, enriches or splits a letter.
//!
//! One hardened [`ScriptEngine`] is shared by every script; each pigeon version compiles its
//! script once ([`ScriptEngine::compile`]) and each letter runs with a fresh scope
//! ([`ScriptEngine::run`]). The script sees:
//!
//! | variable  | what                                              |
//! |-----------|---------------------------------------------------|
//! | `payload` | the letter's JSON payload (a map, usually)        |
//! | `tag`     | the letter's tag                                  |
//! | `id`      | the letter id                                     |
//! | `source`  | `ce_source`, or the source topic                  |
//! | `key`     | the partition key as a string, or `()`            |
//! | `time`    | `ce_time` (RFC 3339), or `()`                     |
//!
//! and returns `()` (drop the letter), a map (the payload of one letter to the pigeon's first
//! destination), or an array of `#{ payload, tag, key, dest }` maps, one per output letter:
//! `payload` is required; `tag` defaults to the destination's tag, `key` to the input key, `dest`
//! to the first destination (an index, a `module/capability` or a topic of the pigeon's
//! destinations). See `docs/scripts.md`.

mod engine;
mod json;
#[cfg(test)]
mod tests;

pub use engine::{
    budgeted, Budget, Limits, ScriptEngine, TooManyScripts, DEFAULT_MAX_OPERATIONS, STACK_SIZE,
};

use std::fmt;

/// The engine every pigeon's script runs on, with the default limits.
pub fn default_engine() -> &'static ScriptEngine {
    static ENGINE: std::sync::LazyLock<ScriptEngine> =
        std::sync::LazyLock::new(|| ScriptEngine::new(Limits::default()));
    &ENGINE
}

/// A script compiled for one pigeon version.
#[derive(Debug, Clone)]
pub struct CompiledScript {
    ast: rhai::AST,
}

/// The letter a script runs on.
#[derive(Debug, Clone, Copy)]
pub struct ScriptLetter<'a> {
    /// Letter id.
    pub id: &'a str,
    /// Tag.
    pub tag: &'a str,
    /// `ce_source` or the topic.
    pub source: &'a str,
    /// Partition key.
    pub key: Option<&'a [u8]>,
    /// `ce_time`.
    pub time: Option<&'a str>,
    /// JSON payload bytes.
    pub payload: &'a [u8],
}

/// Where a script may send letters: the pigeon's destinations, by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptDestination {
    /// How operators name it: `module/capability` or the topic.
    pub name: String,
    /// Its topic.
    pub topic: String,
    /// Its default tag.
    pub tag: String,
}

/// One letter a script emits.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptOutput {
    /// Index into the pigeon's destinations.
    pub dest: usize,
    /// Tag on the destination.
    pub tag: String,
    /// Partition key.
    pub key: Option<Vec<u8>>,
    /// The new payload, JSON.
    pub payload: Vec<u8>,
}

impl ScriptOutput {
    /// The payload as a JSON value.
    pub fn payload_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("a script's payload is serialized JSON")
    }
}

/// Why a script did not produce letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// The script does not compile.
    #[error("script does not compile at line {line}, column {column}: {message}")]
    Compile {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The payload is not JSON.
    #[error("payload is not JSON: {0}")]
    Payload(String),
    /// The script failed (threw, or hit a limit).
    #[error("script failed{}: {message}", .line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Runtime {
        /// Line, when known.
        line: Option<usize>,
        /// What happened.
        message: String,
    },
    /// The script returned something that is not `()`, a map or an array of letters.
    #[error("script returned an invalid result: {0}")]
    Output(String),
    /// The work at hand already compiled or ran as many scripts as it may ([`budgeted`]).
    #[error("not run: this request already compiled or ran {limit} scripts, the most one request may")]
    Budget {
        /// The bound.
        limit: u32,
    },
}

impl ScriptError {
    /// Whether the same letter could succeed later (never: scripts are deterministic).
    pub fn kind(&self) -> &'static str {
        match self {
            ScriptError::Compile { .. } => "compile",
            ScriptError::Payload(_) => "payload",
            ScriptError::Runtime { .. } => "runtime",
            ScriptError::Output(_) => "output",
            ScriptError::Budget { .. } => "budget",
        }
    }
}

impl fmt::Display for ScriptOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key.as_deref().map(String::from_utf8_lossy);
        write!(
            f,
            "dest={} tag={} key={} payload={}",
            self.dest,
            self.tag,
            key.as_deref().unwrap_or("-"),
            String::from_utf8_lossy(&self.payload)
        )
    }
}
