//! What a module tells the bus about itself on `pigeon.registry`: the registration it publishes
//! at start and then on every heartbeat, keyed by module name so one module's registrations
//! stay in order.

use serde::{Deserialize, Serialize};

/// The topic registrations and heartbeats go to.
pub const TOPIC: &str = "pigeon.registry";
/// The `ce_type` of a registration.
pub const TAG: &str = "pigeon.registration";
/// How many heartbeats an instance may miss before the bus calls it stale.
pub const MISSED_HEARTBEATS: u64 = 3;

/// One module instance's registration (also its heartbeat).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Module name, e.g. `act-toy`; also the Kafka key.
    pub module: String,
    /// This running instance, unique per process start.
    pub instance: String,
    /// Host the instance runs on.
    #[serde(default)]
    pub host: String,
    /// The module's own version.
    #[serde(default)]
    pub version: String,
    /// The topic the module consumes: `pigeon.module.<module>`.
    pub topic: String,
    /// Lane topics the module also consumes.
    #[serde(default)]
    pub lanes: Vec<String>,
    /// What the module can do.
    #[serde(default)]
    pub capabilities: Vec<CapabilityInfo>,
    /// The tags the module flies, each with the fields its letters carry: its declared
    /// schema, which the bus checks pigeons' wiring against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flies: Vec<FlownTag>,
    /// How often the instance sends this again; it is stale after
    /// [`MISSED_HEARTBEATS`] missed ones.
    pub heartbeat_ms: u64,
    /// Sent once by an instance shutting down gracefully.
    #[serde(default)]
    pub leaving: bool,
    /// When the instance sent this (unix ms).
    pub sent_at_ms: i64,
}

/// One capability as a module declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityInfo {
    /// The tag letters for it carry on the module topic, e.g. `chest.drop`.
    pub name: String,
    /// One line for operators.
    #[serde(default)]
    pub description: String,
    /// Dictionary fields a letter must carry for it (`userId`, `roomId`, …).
    #[serde(default)]
    pub requires: Vec<String>,
}

/// A tag a module flies, with the dictionary fields its letters carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlownTag {
    /// The tag, e.g. `progress.full`.
    pub tag: String,
    /// Dictionary fields every letter of it carries (`roomId`, `score`, …).
    #[serde(default)]
    pub fields: Vec<String>,
}

/// The topic a module's capabilities are delivered on.
pub fn module_topic(module: &str) -> String {
    format!("pigeon.module.{module}")
}

/// Whether a module name is usable: 1 to 64 of `[a-z0-9._-]`, as it becomes part of a topic.
pub fn validate_module_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("module name {name:?} must be 1 to 64 characters"));
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)) {
        return Err(format!(
            "module name {name:?} may use only lower-case letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// Whether a capability name is a usable tag: dot-separated segments of letters, digits, `_`
/// and `-`.
pub fn validate_capability_name(name: &str) -> Result<(), String> {
    let ok_segment =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
    if name.is_empty() || name.len() > 128 || !name.split('.').all(ok_segment) {
        return Err(format!(
            "capability name {name:?} must be 1 to 128 characters of dot-separated letters, digits, `_` and `-`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_reads_back_and_old_fields_default() {
        let minimal =
            r#"{"module":"m","instance":"i","topic":"pigeon.module.m","heartbeat_ms":1000,"sent_at_ms":5}"#;
        let reg: Registration = serde_json::from_str(minimal).unwrap();
        assert!(reg.capabilities.is_empty() && !reg.leaving && reg.lanes.is_empty());
        let json = serde_json::to_string(&reg).unwrap();
        assert_eq!(serde_json::from_str::<Registration>(&json).unwrap(), reg);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_module_name("act-toy").is_ok());
        assert!(validate_module_name("Act Toy").is_err());
        assert!(validate_module_name("").is_err());
        assert!(validate_capability_name("chest.drop").is_ok());
        assert!(validate_capability_name("chest..drop").is_err());
        assert!(validate_capability_name("chest/drop").is_err());
    }
}
