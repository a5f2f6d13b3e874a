//! The global dictionary: the field names every module agrees on (`userId`, `roomId`, …), each
//! with its type, a description and the aliases found in older payloads (`uid`, `rid`, …).
//!
//! The store keeps it (seeded with the live-stream vocabulary by a migration); operators edit
//! it through the API and the CLI. Nothing here knows about Kafka or the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
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
