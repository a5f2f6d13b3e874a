//! The global dictionary: the field names every module agrees on (`userId`, `roomId`, …), each
//! with its type, a description and the aliases found in older payloads (`uid`, `rid`, …).
//!
//! The store keeps it (seeded with the live-stream vocabulary by a migration); operators edit
//! it through the API and the CLI. A pigeon may hold its letters to it ([`Mode`]): a
//! [`Vocabulary`] renames aliases to dictionary names, coerces obvious types and says what does
//! not fit. Nothing here knows about Kafka or the store.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// The JSON type a field's values have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Text.
    String,
    /// A whole number (ids, counts, unix milliseconds).
    Integer,
    /// Any number (amounts).
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl FieldType {
    /// The name as stored and written.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Integer => "integer",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Object => "object",
            FieldType::Array => "array",
        }
    }
}

impl std::str::FromStr for FieldType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            format!("unknown field type {s:?} (use string, integer, number, boolean, object or array)")
        })
    }
}

/// One field of the dictionary, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// The name every module uses: camelCase, letters and digits (`userId`).
    pub name: String,
    /// The type of its values.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// What it means, in one line.
    pub description: String,
    /// Other names it goes by in older payloads (`uid`), renamed to `name` on normalisation.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// How a pigeon holds its letters to the dictionary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Letters fly as they are; a forward pigeon never reads the payload.
    #[default]
    Off,
    /// Aliases are renamed to dictionary names and obvious types coerced (`"42"` → `42`); what
    /// still does not fit flies as it is.
    Normalize,
    /// Normalised, then checked: a field of the wrong type, or missing a field a destination
    /// capability requires, makes the letter a dead letter that says exactly why.
    Enforce,
}

impl Mode {
    /// Whether this is the default (`off`).
    pub fn is_off(&self) -> bool {
        *self == Mode::Off
    }

    /// What a pigeon in this mode does with a letter, given the letter normalised (or why it
    /// could not be).
    pub fn judge(self, checked: &Result<Normalized, String>) -> Judgement {
        match (checked, self) {
            (_, Mode::Off) => Judgement::AsIs,
            (Ok(n), Mode::Enforce) if !n.problems.is_empty() => {
                Judgement::Unfit(format!("the letter does not fit the dictionary: {}", n.problems.join("; ")))
            }
            (Ok(_), _) => Judgement::Normalized,
            (Err(e), Mode::Enforce) => Judgement::Unfit(e.clone()),
            // Normalising is a courtesy: what cannot be read flies as it is.
            (Err(_), _) => Judgement::AsIs,
        }
    }
}

/// What a pigeon does with a letter, by its dictionary mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Sends the payload as it came.
    AsIs,
    /// Sends the normalised payload.
    Normalized,
    /// Dead-letters it: it does not fit the dictionary (`enforce`).
    Unfit(String),
}

/// The dictionary compiled for normalising letters: each field's type, and every name and
/// alias (compared without case) to the name it stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vocabulary {
    types: HashMap<String, FieldType>,
    names: HashMap<String, String>,
}

/// A letter's payload after normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalized {
    /// The payload, renamed and coerced.
    pub payload: Vec<u8>,
    /// Whether anything was renamed or coerced.
    pub changed: bool,
    /// Top-level fields the dictionary does not know (the drift report counts them).
    pub unknown: Vec<String>,
    /// Dictionary fields whose values do not have their type, even after coercion.
    pub problems: Vec<String>,
    /// The top-level field names after normalisation.
    pub fields: Vec<String>,
}

impl Vocabulary {
    /// The vocabulary of these fields.
    pub fn new(fields: &[Field]) -> Self {
        let mut vocabulary = Self::default();
        for field in fields {
            vocabulary.types.insert(field.name.clone(), field.kind);
            for name in std::iter::once(&field.name).chain(&field.aliases) {
                vocabulary.names.insert(name.to_ascii_lowercase(), field.name.clone());
            }
        }
        vocabulary
    }

    /// A dictionary field's type.
    pub fn type_of(&self, name: &str) -> Option<FieldType> {
        self.types.get(name).copied()
    }

    /// The dictionary name a payload field stands for, if any.
    pub fn name_of(&self, field: &str) -> Option<&str> {
        if let Some((name, _)) = self.types.get_key_value(field) {
            return Some(name);
        }
        self.names.get(&field.to_ascii_lowercase()).map(String::as_str)
    }

    /// Renames aliases at the payload's top level to dictionary names and coerces values to
    /// their field's type where the meaning is plain. A field given under two names (its name
    /// and an alias, or two aliases) is written once, under its name, when they agree; when
    /// they differ, both stay and the conflict is a problem. The dictionary never names a
    /// field twice that the payload gave once. Only what changes is written again: other values keep their exact text and
    /// the fields their order, and a payload with nothing to change comes back byte for byte.
    /// The error: the payload is not a JSON object.
    pub fn normalize(&self, payload: &[u8]) -> Result<Normalized, String> {
        let entries = serde_json::from_slice::<RawObject>(payload)
            .map_err(|e| format!("the payload is not a JSON object: {e}"))?
            .0;
        let value_of =
            |raw: &RawValue| serde_json::from_str::<serde_json::Value>(raw.get()).unwrap_or_default();
        // The values given under dictionary names, coerced, to compare aliases with.
        let canonical: HashMap<&str, serde_json::Value> = entries
            .iter()
            .filter_map(|(key, raw)| {
                self.types.get(key).map(|kind| (key.as_str(), coerce(value_of(raw), *kind).0))
            })
            .collect();
        // The values aliases gave, coerced, by the name they were renamed to.
        let mut renamed: HashMap<&str, serde_json::Value> = HashMap::new();
        let mut out: Vec<(String, Written)> = Vec::with_capacity(entries.len());
        let (mut changed, mut unknown, mut problems) = (false, Vec::new(), Vec::new());
        for (key, raw) in &entries {
            let Some(name) = self.name_of(key) else {
                unknown.push(key.clone());
                out.push((key.clone(), Written::Raw(raw)));
                continue;
            };
            let kind = self.types[name];
            // A value JSON allows but serde_json cannot hold (a number past f64, as 1e400) is
            // kept as written and said so, never read as null.
            if let Err(e) = serde_json::from_str::<serde_json::Value>(raw.get()) {
                let text: String = raw.get().chars().take(40).collect();
                problems.push(format!("{name}: expected {}, got {text} ({e})", kind.as_str()));
                changed |= name != key;
                out.push((name.to_owned(), Written::Raw(raw)));
                continue;
            }
            let (value, coerced) = coerce(value_of(raw), kind);
            if !fits(&value, kind) {
                problems.push(format!("{name}: expected {}, got {}", kind.as_str(), describe(&value)));
            }
            if name != key {
                if let Some(given) = canonical.get(name).or_else(|| renamed.get(name)) {
                    if *given == value {
                        changed = true; // the alias said the same: dropped
                    } else {
                        problems.push(format!(
                            "{name} is given twice with different values: {given} and {key}: {value}"
                        ));
                        out.push((key.clone(), Written::Raw(raw)));
                    }
                    continue;
                }
                renamed.insert(name, value.clone());
            }
            changed |= coerced || name != key;
            let written = if coerced { Written::Value(value) } else { Written::Raw(raw) };
            out.push((name.to_owned(), written));
        }
        let fields = out.iter().map(|(key, _)| key.clone()).collect();
        let payload = match changed {
            false => payload.to_vec(),
            true => {
                let mut text = String::with_capacity(payload.len() + 16);
                text.push('{');
                for (i, (key, value)) in out.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    text.push_str(&serde_json::to_string(key).expect("a key serializes"));
                    text.push(':');
                    match value {
                        Written::Raw(raw) => text.push_str(raw.get()),
                        Written::Value(value) => text.push_str(&value.to_string()),
                    }
                }
                text.push('}');
                text.into_bytes()
            }
        };
        Ok(Normalized { payload, changed, unknown, problems, fields })
    }
}

/// A value of a normalised payload: as it came, or coerced.
enum Written<'a> {
    Raw(&'a RawValue),
    Value(serde_json::Value),
}

/// A JSON object's top-level fields in order, each value's text untouched.
struct RawObject(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = RawObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<RawObject, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(RawObject(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// The value converted to `kind` where the meaning is plain: `"42"` for an integer, `"4.5"`
/// for a number, `"true"` for a boolean, `42` for a string, `42.0` for an integer. Returns
/// whether it changed.
fn coerce(value: serde_json::Value, kind: FieldType) -> (serde_json::Value, bool) {
    use serde_json::Value;
    let converted = match (&value, kind) {
        (Value::String(text), FieldType::Integer) => text.trim().parse::<i64>().ok().map(Value::from),
        (Value::String(text), FieldType::Number) => {
            let text = text.trim();
            text.parse::<i64>().ok().map(Value::from).or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
            })
        }
        (Value::String(text), FieldType::Boolean) => match text.trim() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        (Value::Number(n), FieldType::String) => Some(Value::String(n.to_string())),
        (Value::Number(n), FieldType::Integer) if n.as_i64().is_none() && n.as_u64().is_none() => {
            n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| Value::from(f as i64))
        }
        _ => None,
    };
    match converted {
        Some(converted) => (converted, true),
        None => (value, false),
    }
}

/// Whether a value has the field's type (`null` has none).
fn fits(value: &serde_json::Value, kind: FieldType) -> bool {
    use serde_json::Value;
    match kind {
        FieldType::String => value.is_string(),
        FieldType::Integer => value.is_i64() || value.is_u64(),
        FieldType::Number => value.is_number(),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Object => value.is_object(),
        FieldType::Array => matches!(value, Value::Array(_)),
    }
}

/// A value for an error message: its type, and itself when short.
fn describe(value: &serde_json::Value) -> String {
    let kind = match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    };
    let text = value.to_string();
    match text.len() <= 40 && text != kind {
        true => format!("{kind} {text}"),
        false => kind.to_owned(),
    }
}

/// Sightings of a top-level field the dictionary does not know, on one source topic.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Drift {
    /// Source topic.
    pub topic: String,
    /// The field name.
    pub field: String,
    /// How many letters carried it.
    pub seen: i64,
    /// First sighting (unix ms).
    pub first_seen: i64,
    /// Last sighting (unix ms).
    pub last_seen: i64,
}

/// Distinct (topic, field) pairs a tally keeps between flushes; more are counted as one
/// field named [`OTHER_FIELDS`].
pub const MAX_DRIFT_FIELDS: usize = 10_000;
/// Where sightings beyond [`MAX_DRIFT_FIELDS`] are counted.
pub const OTHER_FIELDS: &str = "(other fields)";

/// Per (topic, field): how often, first and last seen (unix ms).
type Sightings = HashMap<(String, String), (i64, i64, i64)>;

/// Unknown-field sightings since the last flush, in memory.
#[derive(Debug, Default)]
pub struct DriftTally {
    entries: std::sync::Mutex<Sightings>,
}

impl DriftTally {
    /// Counts one letter of `topic` carrying each of `fields`, seen at `now` (unix ms).
    pub fn record(&self, topic: &str, fields: &[String], now: i64) {
        if fields.is_empty() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for field in fields {
            let mut key = (topic.to_owned(), field.chars().take(255).collect::<String>());
            if entries.len() >= MAX_DRIFT_FIELDS && !entries.contains_key(&key) {
                key.1 = OTHER_FIELDS.to_owned();
            }
            let entry = entries.entry(key).or_insert((0, now, now));
            entry.0 += 1;
            entry.2 = entry.2.max(now);
        }
    }

    /// Takes everything counted so far.
    pub fn take(&self) -> Vec<Drift> {
        let entries = std::mem::take(&mut *self.entries.lock().unwrap_or_else(|p| p.into_inner()));
        entries
            .into_iter()
            .map(|((topic, field), (seen, first_seen, last_seen))| Drift {
                topic,
                field,
                seen,
                first_seen,
                last_seen,
            })
            .collect()
    }

    /// Puts back what could not be stored, for the next flush.
    pub fn restore(&self, drift: Vec<Drift>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for d in drift {
            let entry = entries.entry((d.topic, d.field)).or_insert((0, d.first_seen, d.last_seen));
            entry.0 += d.seen;
            entry.1 = entry.1.min(d.first_seen);
            entry.2 = entry.2.max(d.last_seen);
        }
    }
}

/// The fields one tag of one source topic was seen to carry, from sampled letters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Observed {
    /// Source topic.
    pub topic: String,
    /// Tag.
    pub tag: String,
    /// Letters sampled.
    pub sampled: i64,
    /// Last sample (unix ms).
    pub last_seen: i64,
    /// Each top-level field and JSON type seen, with how many sampled letters had it.
    pub fields: Vec<ObservedField>,
}

/// A field seen in sampled letters, with one JSON type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ObservedField {
    /// The field name.
    pub field: String,
    /// Its JSON type: string, integer, number, boolean, object, array or null.
    #[serde(rename = "type")]
    pub kind: String,
    /// Sampled letters that carried it with that type.
    pub seen: i64,
}

/// Distinct (topic, tag) pairs an observation tally keeps between flushes.
pub const MAX_OBSERVED_TAGS: usize = 2_000;
/// Distinct fields kept per (topic, tag).
pub const MAX_OBSERVED_FIELDS: usize = 200;

/// Per (topic, tag): letters sampled, last sample, and per (field, type) how many.
type TagSightings = HashMap<(String, String), (i64, i64, HashMap<(String, &'static str), i64>)>;

/// Sampled letters' fields since the last flush, in memory.
#[derive(Debug, Default)]
pub struct ObservedTally {
    entries: std::sync::Mutex<TagSightings>,
}

/// A JSON value's type name.
fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

impl ObservedTally {
    /// Notes one sampled letter: the type of each of its top-level fields. A payload that is
    /// not a JSON object counts as sampled with no fields.
    pub fn record(&self, topic: &str, tag: &str, payload: Option<&[u8]>, now: i64) {
        let object: serde_json::Map<String, serde_json::Value> =
            payload.and_then(|p| serde_json::from_slice(p).ok()).unwrap_or_default();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Names are cut to their columns (191 characters).
        let key = (topic.to_owned(), tag.chars().take(191).collect::<String>());
        if entries.len() >= MAX_OBSERVED_TAGS && !entries.contains_key(&key) {
            return;
        }
        let entry = entries.entry(key).or_insert_with(|| (0, now, HashMap::new()));
        entry.0 += 1;
        entry.1 = entry.1.max(now);
        for (field, value) in &object {
            let kind = json_type(value);
            let field: String = field.chars().take(191).collect();
            let known = entry.2.contains_key(&(field.clone(), kind));
            if known || entry.2.len() < MAX_OBSERVED_FIELDS {
                *entry.2.entry((field, kind)).or_default() += 1;
            }
        }
    }

    /// Takes everything noted so far.
    pub fn take(&self) -> Vec<Observed> {
        let entries = std::mem::take(&mut *self.entries.lock().unwrap_or_else(|p| p.into_inner()));
        entries
            .into_iter()
            .map(|((topic, tag), (sampled, last_seen, fields))| {
                let mut fields: Vec<ObservedField> = fields
                    .into_iter()
                    .map(|((field, kind), seen)| ObservedField { field, kind: kind.to_owned(), seen })
                    .collect();
                fields.sort_by(|a, b| (&a.field, &a.kind).cmp(&(&b.field, &b.kind)));
                Observed { topic, tag, sampled, last_seen, fields }
            })
            .collect()
    }

    /// Puts back what could not be stored, for the next flush.
    pub fn restore(&self, observed: Vec<Observed>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for o in observed {
            let entry = entries.entry((o.topic, o.tag)).or_insert_with(|| (0, o.last_seen, HashMap::new()));
            entry.0 += o.sampled;
            entry.1 = entry.1.max(o.last_seen);
            for f in o.fields {
                let kind = ["null", "boolean", "integer", "number", "string", "array", "object"]
                    .into_iter()
                    .find(|k| *k == f.kind)
                    .unwrap_or("null");
                *entry.2.entry((f.field, kind)).or_default() += f.seen;
            }
        }
    }
}

/// The fields of `required` that a normalised letter lacks.
pub fn missing<'a>(fields: &[String], required: &'a [String]) -> Vec<&'a str> {
    required.iter().filter(|r| !fields.contains(r)).map(String::as_str).collect()
}

/// Checks a field against the rest of the dictionary; every problem at once.
///
/// A name or alias may stand for one field only, so normalising a letter is never ambiguous.
pub fn validate(field: &Field, dictionary: &[Field]) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let name = &field.name;
    if name.is_empty() || name.len() > 64 {
        problems.push("name must be 1 to 64 characters".to_owned());
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase())
        || !name.chars().all(|c| c.is_ascii_alphanumeric())
    {
        problems
            .push(format!("name {name:?} must be camelCase: a lower-case letter, then letters and digits"));
    }
    if field.description.trim().is_empty() || field.description.len() > 500 {
        problems.push("description must be 1 to 500 characters".to_owned());
    }
    // Who already uses each name: the other fields' names and aliases.
    let mut taken: BTreeMap<String, &str> = BTreeMap::new();
    for other in dictionary.iter().filter(|o| o.name != *name) {
        taken.insert(other.name.to_ascii_lowercase(), &other.name);
        for alias in &other.aliases {
            taken.insert(alias.to_ascii_lowercase(), &other.name);
        }
    }
    if let Some(owner) = taken.get(&name.to_ascii_lowercase()) {
        problems.push(format!("name {name:?} is already used by field {owner:?}"));
    }
    let mut seen = vec![name.to_ascii_lowercase()];
    for (i, alias) in field.aliases.iter().enumerate() {
        let folded = alias.to_ascii_lowercase();
        if alias.is_empty()
            || alias.len() > 64
            || !alias.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            problems.push(format!("aliases[{i}]: {alias:?} must be 1 to 64 letters, digits or `_`"));
        } else if seen.contains(&folded) {
            problems.push(format!("aliases[{i}]: {alias:?} is listed twice (or is the name itself)"));
        } else if let Some(owner) = taken.get(&folded) {
            problems.push(format!("aliases[{i}]: {alias:?} is already used by field {owner:?}"));
        }
        seen.push(folded);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, kind: FieldType, aliases: &[&str]) -> Field {
        Field {
            name: name.into(),
            kind,
            description: format!("the {name}"),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn fields_are_checked_against_the_rest_of_the_dictionary() {
        let dictionary =
            [field("userId", FieldType::Integer, &["uid"]), field("roomId", FieldType::String, &["rid"])];
        let ok = field("giftId", FieldType::Integer, &["gid", "gift_id"]);
        assert_eq!(validate(&ok, &dictionary), Ok(()));
        // Changing a field may keep its own name and aliases.
        assert_eq!(validate(&field("userId", FieldType::Integer, &["uid", "user_id"]), &dictionary), Ok(()));

        let cases: [(Field, &[&str]); 4] = [
            (field("User-Id", FieldType::Integer, &[]), &["must be camelCase"]),
            (
                field("giftId", FieldType::Integer, &["UID"]),
                &["aliases[0]: \"UID\" is already used by field \"userId\""],
            ),
            (field("rid", FieldType::String, &[]), &["name \"rid\" is already used by field \"roomId\""]),
            (
                field("giftId", FieldType::Integer, &["gid", "gid", "bad alias", "giftid"]),
                &[
                    "aliases[1]: \"gid\" is listed twice",
                    "aliases[2]: \"bad alias\" must be",
                    "aliases[3]: \"giftid\" is listed twice",
                ],
            ),
        ];
        for (field, expected) in cases {
            let problems = validate(&field, &dictionary).unwrap_err().join("\n");
            for e in expected {
                assert!(problems.contains(e), "{field:?}: missing {e:?} in:\n{problems}");
            }
        }
        let mut empty = field("x", FieldType::Boolean, &[]);
        empty.description = " ".into();
        assert_eq!(validate(&empty, &[]).unwrap_err(), ["description must be 1 to 500 characters"]);
    }

    fn vocabulary() -> Vocabulary {
        Vocabulary::new(&[
            field("userId", FieldType::Integer, &["uid", "user_id"]),
            field("anchorId", FieldType::Integer, &["aid"]),
            field("roomId", FieldType::String, &["rid"]),
            field("amount", FieldType::Number, &["amt"]),
            field("vip", FieldType::Boolean, &[]),
        ])
    }

    /// Letter in, letter or error out.
    #[test]
    fn normalisation_renames_aliases_and_coerces_plain_values() {
        let v = vocabulary();
        // Payload in, payload out (or the error), unknown fields, problems.
        type Case<'a> = (&'a str, Result<&'a str, &'a str>, &'a [&'a str], &'a [&'a str]);
        let cases: [Case; 9] = [
            (r#"{"userId":42,"roomId":"r1"}"#, Ok(r#"{"roomId":"r1","userId":42}"#), &[], &[]),
            (
                r#"{"uid":"42","RID":7,"amt":"4.5"}"#,
                Ok(r#"{"amount":4.5,"roomId":"7","userId":42}"#),
                &[],
                &[],
            ),
            (
                r#"{"USER_ID":42.0,"vip":"true","gift":1}"#,
                Ok(r#"{"gift":1,"userId":42,"vip":true}"#),
                &["gift"],
                &[],
            ),
            (
                r#"{"userId":"abc","vip":1}"#,
                Ok(r#"{"userId":"abc","vip":1}"#),
                &[],
                &["userId: expected integer, got string \"abc\"", "vip: expected boolean, got number 1"],
            ),
            (r#"{"userId":7,"uid":7}"#, Ok(r#"{"userId":7}"#), &[], &[]),
            (
                r#"{"userId":7,"uid":8}"#,
                Ok(r#"{"uid":8,"userId":7}"#),
                &[],
                &["userId is given twice with different values: 7 and uid: 8"],
            ),
            (r#"{"amount":null}"#, Ok(r#"{"amount":null}"#), &[], &["amount: expected number, got null"]),
            (
                r#"{"amt":1e400}"#,
                Ok(r#"{"amount":1e400}"#),
                &[],
                &["amount: expected number, got 1e400 (number out of range at line 1 column 5)"],
            ),
            ("[1,2]", Err("the payload is not a JSON object"), &[], &[]),
        ];
        for (input, expected, unknown, problems) in cases {
            match (v.normalize(input.as_bytes()), expected) {
                (Ok(out), Ok(payload)) => {
                    assert_eq!(out.unknown, unknown, "{input}");
                    assert_eq!(out.problems, problems, "{input}");
                    // serde_json cannot read 1e400 back: compared as text.
                    let Ok(got) = serde_json::from_slice::<serde_json::Value>(&out.payload) else {
                        assert_eq!(String::from_utf8_lossy(&out.payload), payload, "{input}");
                        continue;
                    };
                    let want: serde_json::Value = serde_json::from_str(payload).unwrap();
                    assert_eq!(got, want, "{input}");
                    let unchanged = serde_json::from_str::<serde_json::Value>(input).unwrap() == got;
                    assert_eq!(out.changed, !unchanged, "{input}");
                }
                (Err(e), Err(want)) => assert!(e.starts_with(want), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, expected {want:?}"),
            }
        }
        assert_eq!(missing(&["userId".into()], &["userId".into(), "anchorId".into()]), ["anchorId"]);

        // Only what changes is written again: big numbers, nested values and order stay.
        let exact =
            r#"{"z":123456789012345678901234567890,"uid":"7","nested":{"b":1.0000000000000000001,"a":[1]}}"#;
        let out = v.normalize(exact.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(out.payload).unwrap(),
            r#"{"z":123456789012345678901234567890,"userId":7,"nested":{"b":1.0000000000000000001,"a":[1]}}"#
        );
        // Two aliases of one field: written once when they agree, both kept when they differ.
        let twice = v.normalize(br#"{"uid":"7","user_id":7,"aid":1,"AID":2}"#).unwrap();
        assert_eq!(
            String::from_utf8(twice.payload).unwrap(),
            r#"{"userId":7,"anchorId":1,"AID":2}"#,
            "no field named twice"
        );
        assert_eq!(twice.problems, ["anchorId is given twice with different values: 1 and AID: 2"]);
        let untouched = br#"{ "userId" : 7, "x": 1e400 }"#;
        let out = v.normalize(untouched).unwrap();
        assert_eq!((out.payload.as_slice(), out.changed), (&untouched[..], false), "byte for byte");
    }

    #[test]
    fn types_read_and_write_by_name() {
        for kind in [
            FieldType::String,
            FieldType::Integer,
            FieldType::Number,
            FieldType::Boolean,
            FieldType::Object,
            FieldType::Array,
        ] {
            assert_eq!(kind.as_str().parse::<FieldType>(), Ok(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert!("float".parse::<FieldType>().unwrap_err().contains("unknown field type \"float\""));
    }
}
