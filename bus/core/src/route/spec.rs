//! The raw, serde form of a pigeon, as operators write it and the store keeps it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::window::WindowSpec;

/// Reads a pigeon from JSON and validates it: every unknown key and every invalid value at once
/// (a value of the wrong type stops the reading, so it is reported alone with the unknown keys).
pub fn parse_spec(value: serde_json::Value) -> Result<PigeonSpec, Vec<String>> {
    let mut problems = Vec::new();
    let parsed = serde_ignored::deserialize(value, |path| problems.push(format!("unknown key `{path}`")));
    match parsed {
        Ok(spec) => {
            if let Err(invalid) = super::validate(&spec) {
                problems.extend(invalid.0);
            }
            if problems.is_empty() {
                Ok(spec)
            } else {
                Err(problems)
            }
        }
        Err(e) => {
            problems.push(e.to_string());
            Err(problems)
        }
    }
}

/// A pigeon (route) as written: not yet validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PigeonSpec {
    /// Stable id, `[a-z0-9._-]`, used in headers (`ce_pigeon`) and the API.
    pub id: String,
    /// Human name.
    #[serde(default)]
    pub name: String,
    /// Owning team or activity.
    #[serde(default)]
    pub owner: String,
    /// Disabled pigeons are kept but match nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What the pigeon does with a matching letter.
    #[serde(default)]
    pub action: Action,
    /// The Rhai cleansing script of a `script` pigeon (see `docs/scripts.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Which letters the pigeon takes.
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// Where the letters fly.
    #[serde(default)]
    pub destinations: Vec<DestinationSpec>,
    /// When the pigeon flies, judged by each letter's timestamp; none: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// How letters are held to the global dictionary: `off` (default), `normalize` (aliases
    /// renamed, plain types coerced) or `enforce` (normalised, then a wrong type or a field a
    /// destination capability requires but the letter lacks makes it a dead letter).
    #[serde(default, skip_serializing_if = "crate::dictionary::Mode::is_off")]
    pub dictionary: crate::dictionary::Mode,
    /// When failed deliveries are tried again, as delays after each failure (`"10s"`, `"5m"`);
    /// the letter is parked after the last. Default: 10s, 30s, 1m, 5m, 10m, 30m, 1h, 2h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

/// What a pigeon does with a letter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Re-publish with the destination tag; the payload is not parsed.
    #[default]
    Forward,
    /// Run the pigeon's script, which reshapes, filters or splits the letter.
    Script,
    /// Keep the letter whole in the archive (the archiver role), for search and replay. An
    /// archive pigeon has no destinations; `match.filter` narrows what it keeps.
    Archive,
}

impl Action {
    /// The name operators write.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Forward => "forward",
            Action::Script => "script",
            Action::Archive => "archive",
        }
    }
}

/// Which letters a pigeon takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MatchSpec {
    /// Source topic, or a regular expression of source topics when it starts with `^`
    /// (`^live\\.gift\\..*`); a pattern never matches the bus's own `pigeon.*` topics.
    pub topic: String,
    /// Tag pattern (see [`super::pattern`]); default `**`, every tag.
    #[serde(default = "every_tag")]
    pub tag: String,
    /// Archive pigeons only: a Rhai expression on the letter (`payload`, `tag`, `key`, …, as
    /// scripts see it) that must be true for the letter to be kept, e.g. `payload.amount >= 100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

impl MatchSpec {
    /// Letters of `topic` whose tag matches `tag`, unfiltered.
    pub fn new(topic: &str, tag: &str) -> Self {
        Self { topic: topic.into(), tag: tag.into(), filter: None }
    }
}

fn every_tag() -> String {
    "**".into()
}

/// One destination: a module capability, or a raw topic and tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DestinationSpec {
    /// `module/capability`: the module's topic `pigeon.module.<module>`, tag `<capability>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// A raw topic (with `tag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The tag the letter carries on a raw topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl DestinationSpec {
    /// A destination that is a module capability.
    pub fn capability(capability: &str) -> Self {
        Self { capability: Some(capability.into()), topic: None, tag: None }
    }

    /// A destination that is a raw topic and tag.
    pub fn topic(topic: &str, tag: &str) -> Self {
        Self { capability: None, topic: Some(topic.into()), tag: Some(tag.into()) }
    }
}

/// How to read letters from a source topic that does not carry CloudEvents headers.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SourceConfig {
    /// Header holding the tag; default `ce_type`.
    pub tag_header: Option<String>,
    /// Top-level JSON field holding the tag (the payload is then parsed).
    pub tag_field: Option<String>,
    /// Header holding the letter id; default `ce_id`. Without one, the id is derived from
    /// topic, partition and offset.
    pub id_header: Option<String>,
    /// The top-level fields letters of each tag carry, as their producers declare them
    /// (`fields."gift.sent" = ["userId", "giftId"]`): the declared source schema.
    pub fields: BTreeMap<String, Vec<String>>,
}
