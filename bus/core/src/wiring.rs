//! Checked wiring: before a pigeon is saved, its destinations' required fields are checked
//! against what its source letters carry, as declared (source-topic settings, modules' `flies`)
//! and observed (sampled letters), after its script on sample letters built from that
//! evidence. Nothing here knows about Kafka or the store: the caller gathers the evidence.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::dictionary::{Mode, Observed, Vocabulary};
use crate::route::{resolve, Action, PigeonSpec, TagPattern};
use crate::script::{self, ScriptLetter};

/// A declared schema of one tag: the fields its letters carry, and who says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    /// The tag.
    pub tag: String,
    /// Its fields.
    pub fields: Vec<String>,
    /// `settings` or `module:NAME`.
    pub by: String,
}

/// What a capability requires, and whether a module that has it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapabilityState {
    /// Required fields.
    pub requires: Vec<String>,
    /// Whether an instance of its module is live.
    pub online: bool,
}

/// Everything known about a pigeon's source and destinations.
#[derive(Debug, Default)]
pub struct Evidence {
    /// Declared schemas of the source topic's tags.
    pub declared: Vec<Declared>,
    /// Observed schemas of the source topic's tags.
    pub observed: Vec<Observed>,
    /// Capabilities by `module/capability` (retired ones left out).
    pub capabilities: HashMap<String, CapabilityState>,
    /// The dictionary, for normalised pigeons and sample values.
    pub vocabulary: Vocabulary,
}

/// The outcome: problems refuse the pigeon (unless forced); warnings only inform.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Destinations that would not get a field they require.
    pub problems: Vec<String>,
    /// What could not be checked, and destinations whose module is offline or unknown.
    pub warnings: Vec<String>,
}

/// What one tag's letters are known to carry, with the evidence in words.
struct Carried {
    fields: BTreeSet<String>,
    /// A JSON type per field, for sample letters.
    types: BTreeMap<String, String>,
    evidence: Vec<String>,
}

/// Checks a (valid) pigeon's wiring against the evidence.
pub fn check(spec: &PigeonSpec, evidence: &Evidence) -> Report {
    let mut report = Report::default();
    if spec.action == Action::Archive {
        return report;
    }
    // Each destination with what it requires.
    let mut required: Vec<(usize, String, &[String])> = Vec::new();
    for (i, destination) in spec.destinations.iter().enumerate() {
        let Some(capability) = resolve(destination).ok().and_then(|d| d.capability()) else { continue };
        match evidence.capabilities.get(&capability) {
            None => report.warnings.push(format!(
                "{capability} is not a registered capability (yet): its required fields are not checked"
            )),
            Some(state) => {
                if !state.online {
                    let module = capability.split('/').next().unwrap_or_default();
                    report.warnings.push(format!(
                        "{capability}: no live instance of module {module}; its letters wait on its topic"
                    ));
                }
                if !state.requires.is_empty() {
                    required.push((i, capability, &state.requires));
                }
            }
        }
    }
    // A script may give an output any tag, so it may reach any capability of its destinations'
    // modules: it is checked whenever one of them is a module topic.
    let script = spec.action == Action::Script;
    let to_modules = spec.destinations.iter().any(|d| resolve(d).ok().and_then(|d| d.capability()).is_some());
    if required.is_empty() && !(script && to_modules) {
        return report;
    }
    let source = &spec.matcher.topic;
    if source.starts_with('^') {
        report.warnings.push(format!("{source} is a topic pattern: what its letters carry is not checked"));
        return report;
    }
    let Ok(pattern) = TagPattern::parse(&spec.matcher.tag) else { return report };
    let carried = carried_by_tag(evidence, &pattern, spec.dictionary);
    if carried.is_empty() {
        report.warnings.push(format!(
            "nothing is declared or observed yet for {source} tags {}: the wiring is accepted unchecked",
            spec.matcher.tag
        ));
        return report;
    }
    for (tag, carried) in &carried {
        // Each output's capability (by its own tag) and fields.
        let outputs: Vec<(String, BTreeSet<String>)> = match (&spec.action, &spec.script) {
            (Action::Script, Some(source)) => {
                match script_outputs(source, spec, tag, carried, &evidence.vocabulary) {
                    Ok(outputs) => outputs,
                    Err(e) => {
                        report
                            .warnings
                            .push(format!("the script fails on a sample {tag} letter ({e}): not checked"));
                        continue;
                    }
                }
            }
            _ => required
                .iter()
                .map(|(_, capability, _)| (capability.clone(), carried.fields.clone()))
                .collect(),
        };
        for (capability, fields) in &outputs {
            let Some(state) = evidence.capabilities.get(capability) else { continue };
            let requires = &state.requires;
            {
                let missing: Vec<&str> =
                    requires.iter().filter(|r| !fields.contains(*r)).map(String::as_str).collect();
                if !missing.is_empty() {
                    report.problems.push(format!(
                        "{capability} requires {}, which {source} {tag} letters do not carry{} ({})",
                        missing.join(", "),
                        if spec.action == Action::Script { " after the script" } else { "" },
                        carried.evidence.join("; ")
                    ));
                }
            }
        }
    }
    report.problems.dedup();
    report
}

/// The share of sampled letters a field must be in to count as carried: a stray letter (a test
/// message, one that is not JSON) does not make a source look as if it lacked every field.
pub const OBSERVED_ALWAYS: f64 = 0.95;

/// Per matching tag, the fields its letters carry: declared (what every declaration promises)
/// or seen in every sampled letter. A normalising pigeon sees aliases under their names.
fn carried_by_tag(evidence: &Evidence, pattern: &TagPattern, mode: Mode) -> BTreeMap<String, Carried> {
    let name = |field: &str| match mode {
        Mode::Off => field.to_owned(),
        _ => evidence.vocabulary.name_of(field).unwrap_or(field).to_owned(),
    };
    let mut carried: BTreeMap<String, Carried> = BTreeMap::new();
    let empty = || Carried { fields: BTreeSet::new(), types: BTreeMap::new(), evidence: Vec::new() };
    let mut declared_by_tag: BTreeMap<&str, (BTreeSet<String>, Vec<&str>)> = BTreeMap::new();
    for d in evidence.declared.iter().filter(|d| pattern.matches(&d.tag)) {
        let fields: BTreeSet<String> = d.fields.iter().map(|f| name(f)).collect();
        let slot = declared_by_tag.entry(&d.tag).or_insert_with(|| (fields.clone(), Vec::new()));
        slot.0 = slot.0.intersection(&fields).cloned().collect();
        slot.1.push(&d.by);
    }
    for (tag, (fields, by)) in declared_by_tag {
        let c = carried.entry(tag.to_owned()).or_insert_with(empty);
        c.evidence.push(format!(
            "declared by {}: {}",
            by.join(", "),
            fields.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        c.fields.extend(fields);
    }
    for o in evidence.observed.iter().filter(|o| pattern.matches(&o.tag) && o.sampled > 0) {
        // Letters per field as written (one type each, so the types add up), then per name the
        // best-carried of its spellings: a letter with both `aid` and `anchorId` counts once.
        let mut per_spelling: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
        for f in &o.fields {
            let slot = per_spelling.entry(&f.field).or_insert((0, &f.kind));
            slot.0 += f.seen;
        }
        let mut per_name: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for (spelling, (seen, kind)) in per_spelling {
            let slot = per_name.entry(name(spelling)).or_insert((0, kind.to_owned()));
            if seen > slot.0 {
                *slot = (seen, kind.to_owned());
            }
        }
        let always: Vec<(String, String)> = per_name
            .into_iter()
            .filter(|(_, (seen, _))| *seen as f64 >= OBSERVED_ALWAYS * o.sampled as f64)
            .map(|(f, (_, k))| (f, k))
            .collect();
        let c = carried.entry(o.tag.clone()).or_insert_with(empty);
        c.evidence.push(format!(
            "in {}% of {} sampled letters: {}",
            (OBSERVED_ALWAYS * 100.0) as u32,
            o.sampled,
            always.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(", ")
        ));
        for (field, kind) in always {
            c.types.insert(field.clone(), kind);
            c.fields.insert(field);
        }
    }
    carried
}

/// The fields of each output the pigeon's script makes of a sample letter carrying exactly
/// the known fields, by destination index.
fn script_outputs(
    source: &str,
    spec: &PigeonSpec,
    tag: &str,
    carried: &Carried,
    vocabulary: &Vocabulary,
) -> Result<Vec<(String, BTreeSet<String>)>, String> {
    let compiled = script::default_engine().compile(source).map_err(|e| e.to_string())?;
    let destinations = crate::route::script_destinations(&spec.destinations)?;
    let sample: serde_json::Map<String, serde_json::Value> = carried
        .fields
        .iter()
        .map(|field| {
            let kind = carried
                .types
                .get(field)
                .cloned()
                .or_else(|| vocabulary.type_of(field).map(|t| t.as_str().to_owned()));
            (field.clone(), sample_value(kind.as_deref()))
        })
        .collect();
    let payload = serde_json::to_vec(&sample).expect("a sample serializes");
    let letter = ScriptLetter {
        id: "sample",
        tag,
        source: &spec.matcher.topic,
        key: None,
        time: None,
        payload: &payload,
    };
    let outputs =
        script::default_engine().run(&compiled, &letter, &destinations).map_err(|e| e.to_string())?;
    Ok(outputs
        .into_iter()
        .map(|out| {
            let fields = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&out.payload)
                .map(|o| o.into_iter().map(|(k, _)| k).collect())
                .unwrap_or_default();
            let target =
                crate::route::Destination { topic: destinations[out.dest].topic.clone(), tag: out.tag };
            (target.capability().unwrap_or_default(), fields)
        })
        .collect())
}

/// A plausible value of a JSON type.
fn sample_value(kind: Option<&str>) -> serde_json::Value {
    match kind {
        Some("integer") => 1.into(),
        Some("number") => 1.5.into(),
        Some("boolean") => true.into(),
        Some("object") => serde_json::json!({}),
        Some("array") => serde_json::json!([]),
        Some("null") => serde_json::Value::Null,
        _ => "sample".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dictionary::{Field, FieldType, ObservedField};
    use crate::route::DestinationSpec;

    fn pigeon(topic: &str, tag: &str, script: Option<&str>) -> PigeonSpec {
        let mut spec: PigeonSpec = serde_json::from_value(serde_json::json!({
            "id": "p", "match": { "topic": topic, "tag": tag },
            "destinations": [{ "capability": "rank/gift" }, { "topic": "lane.audit", "tag": "audit" }]
        }))
        .unwrap();
        if let Some(script) = script {
            spec.action = Action::Script;
            spec.script = Some(script.into());
        }
        spec
    }

    /// A tag, its sampled letters, and each (field, type, seen).
    type Sampled<'a> = (&'a str, i64, &'a [(&'a str, &'a str, i64)]);

    fn evidence(declared: &[(&str, &[&str])], observed: Option<Sampled>) -> Evidence {
        let field = |name: &str, kind| Field {
            name: name.into(),
            kind,
            description: "x".into(),
            aliases: Vec::new(),
        };
        let mut anchor = field("anchorId", FieldType::Integer);
        anchor.aliases = vec!["aid".into()];
        Evidence {
            declared: declared
                .iter()
                .map(|(tag, fields)| Declared {
                    tag: tag.to_string(),
                    fields: fields.iter().map(|f| f.to_string()).collect(),
                    by: "settings".into(),
                })
                .collect(),
            observed: observed
                .map(|(tag, sampled, fields)| Observed {
                    topic: "live.gift".into(),
                    tag: tag.into(),
                    sampled,
                    last_seen: 1,
                    fields: fields
                        .iter()
                        .map(|(f, k, seen)| ObservedField {
                            field: f.to_string(),
                            kind: k.to_string(),
                            seen: *seen,
                        })
                        .collect(),
                })
                .into_iter()
                .collect(),
            capabilities: [(
                "rank/gift".to_owned(),
                CapabilityState { requires: vec!["userId".into(), "anchorId".into()], online: true },
            )]
            .into(),
            vocabulary: Vocabulary::new(&[
                field("userId", FieldType::Integer),
                anchor,
                field("roomId", FieldType::String),
            ]),
        }
    }

    #[test]
    fn a_destination_requiring_a_field_the_source_does_not_declare_is_refused() {
        let declared = evidence(&[("gift.sent", &["userId", "roomId"])], None);
        let report = check(&pigeon("live.gift", "gift.sent", None), &declared);
        assert_eq!(report.problems.len(), 1, "{report:?}");
        let problem = &report.problems[0];
        assert!(
            problem
                .starts_with("rank/gift requires anchorId, which live.gift gift.sent letters do not carry"),
            "{problem}"
        );
        assert!(problem.contains("declared by settings: roomId, userId"), "{problem}");
        let both = evidence(&[("gift.sent", &["userId", "anchorId"])], None);
        assert_eq!(check(&pigeon("live.gift", "gift.*", None), &both), Report::default());
    }

    #[test]
    fn a_script_that_maps_the_field_makes_the_wiring_good() {
        let declared = evidence(&[("gift.sent", &["userId", "roomId"])], None);
        let maps = "payload.anchorId = payload.roomId; payload";
        assert_eq!(check(&pigeon("live.gift", "gift.sent", Some(maps)), &declared), Report::default());
        // An output's own tag names the capability it reaches.
        let mut vip = declared;
        vip.capabilities
            .insert("rank/vip".into(), CapabilityState { requires: vec!["level".into()], online: true });
        let retagged = r#"[#{ payload: #{ userId: payload.userId, anchorId: 1 }, tag: "vip" }]"#;
        let report = check(&pigeon("live.gift", "gift.sent", Some(retagged)), &vip);
        assert!(report.problems[0].starts_with("rank/vip requires level"), "{report:?}");
        let declared = evidence(&[("gift.sent", &["userId", "roomId"])], None);
        let forgets = "#{ userId: payload.userId }";
        let report = check(&pigeon("live.gift", "gift.sent", Some(forgets)), &declared);
        assert!(
            report.problems[0].contains(
                "requires anchorId, which live.gift gift.sent letters do not carry after the script"
            ),
            "{report:?}"
        );
    }

    #[test]
    fn observed_fields_count_when_every_sampled_letter_had_them() {
        let always =
            evidence(&[], Some(("gift.sent", 10, &[("userId", "integer", 10), ("anchorId", "integer", 10)])));
        assert_eq!(check(&pigeon("live.gift", "**", None), &always), Report::default());
        let sometimes =
            evidence(&[], Some(("gift.sent", 10, &[("userId", "integer", 10), ("anchorId", "integer", 7)])));
        let report = check(&pigeon("live.gift", "**", None), &sometimes);
        assert!(report.problems[0].contains("in 95% of 10 sampled letters: userId"), "{report:?}");
        // One stray letter in 40 (not JSON, say) does not hide the fields.
        let stray =
            evidence(&[], Some(("gift.sent", 40, &[("userId", "integer", 39), ("anchorId", "integer", 39)])));
        assert_eq!(check(&pigeon("live.gift", "**", None), &stray), Report::default());
        // Seen under an alias: a normalising pigeon renames it.
        let alias = evidence(
            &[],
            Some(("gift.sent", 4, &[("userId", "integer", 4), ("aid", "string", 2), ("aid", "integer", 2)])),
        );
        let mut normalizing = pigeon("live.gift", "**", None);
        assert_eq!(check(&normalizing, &alias).problems.len(), 1);
        normalizing.dictionary = Mode::Normalize;
        assert_eq!(check(&normalizing, &alias), Report::default());
    }

    #[test]
    fn no_evidence_and_offline_modules_are_warnings() {
        let nothing = evidence(&[], None);
        let report = check(&pigeon("live.gift", "gift.sent", None), &nothing);
        assert!(report.problems.is_empty());
        assert_eq!(report.warnings, ["nothing is declared or observed yet for live.gift tags gift.sent: the wiring is accepted unchecked"]);
        let mut offline = evidence(&[("gift.sent", &["userId", "anchorId"])], None);
        offline.capabilities.get_mut("rank/gift").unwrap().online = false;
        let report = check(&pigeon("live.gift", "gift.sent", None), &offline);
        assert_eq!(
            report.warnings,
            ["rank/gift: no live instance of module rank; its letters wait on its topic"]
        );
        let mut unknown = pigeon("live.gift", "gift.sent", None);
        unknown.destinations = vec![DestinationSpec::capability("chest/drop")];
        assert!(
            check(&unknown, &nothing).warnings[0].starts_with("chest/drop is not a registered capability")
        );
    }
}
