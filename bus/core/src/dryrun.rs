//! Dry runs: a script on a sample letter, without Kafka. Backs `pigeon scripts test` (and the
//! pigeon test endpoint to come), so what an operator tries is what the router runs.

use serde::{Deserialize, Serialize};

use crate::route::{script_destinations, DestinationSpec};
use crate::script::{ScriptEngine, ScriptError, ScriptLetter};

/// A sample letter, as written in a JSON file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SampleLetter {
    /// Tag.
    pub tag: String,
    /// Letter id (default `sample`).
    #[serde(default = "sample_id")]
    pub id: String,
    /// Source (default `sample`).
    #[serde(default = "sample_id")]
    pub source: String,
    /// Partition key.
    #[serde(default)]
    pub key: Option<String>,
    /// `ce_time`.
    #[serde(default)]
    pub time: Option<String>,
    /// The payload.
    pub payload: serde_json::Value,
    /// The pigeon's destinations, when the file stands for a whole case.
    #[serde(default)]
    pub destinations: Vec<DestinationSpec>,
}

fn sample_id() -> String {
    "sample".into()
}

/// One emitted letter, as a dry run prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunOutput {
    /// The destination, as the pigeon names it.
    pub dest: String,
    /// Topic it would go to.
    pub topic: String,
    /// Tag there.
    pub tag: String,
    /// Partition key.
    pub key: Option<String>,
    /// Payload.
    pub payload: serde_json::Value,
}

/// What a whole pigeon would emit for `letter`: its script's letters, or for a forward pigeon
/// the letter itself on each destination with that destination's tag.
pub fn dry_run_pigeon(
    engine: &ScriptEngine,
    pigeon: &crate::route::PigeonSpec,
    letter: &SampleLetter,
) -> Result<Vec<DryRunOutput>, ScriptError> {
    match &pigeon.script {
        Some(source) => dry_run(engine, source, letter, &pigeon.destinations),
        None => {
            let destinations = script_destinations(&pigeon.destinations).map_err(ScriptError::Output)?;
            Ok(destinations
                .into_iter()
                .map(|d| DryRunOutput {
                    dest: d.name,
                    topic: d.topic,
                    tag: d.tag,
                    key: letter.key.clone(),
                    payload: letter.payload.clone(),
                })
                .collect())
        }
    }
}

/// Compiles and runs `source` on `letter`, sending to `destinations` (or the letter file's own).
pub fn dry_run(
    engine: &ScriptEngine,
    source: &str,
    letter: &SampleLetter,
    destinations: &[DestinationSpec],
) -> Result<Vec<DryRunOutput>, ScriptError> {
    let specs = if destinations.is_empty() { &letter.destinations } else { destinations };
    let specs: Vec<DestinationSpec> =
        if specs.is_empty() { vec![DestinationSpec::topic("dry-run", "dry-run")] } else { specs.to_vec() };
    let destinations = script_destinations(&specs).map_err(ScriptError::Output)?;
    let script = engine.compile(source)?;
    let payload = serde_json::to_vec(&letter.payload).expect("a JSON value serializes");
    let input = ScriptLetter {
        id: &letter.id,
        tag: &letter.tag,
        source: &letter.source,
        key: letter.key.as_deref().map(str::as_bytes),
        time: letter.time.as_deref(),
        payload: &payload,
    };
    let outputs = engine.run(&script, &input, &destinations)?;
    Ok(outputs
        .into_iter()
        .map(|o| DryRunOutput {
            dest: destinations[o.dest].name.clone(),
            topic: destinations[o.dest].topic.clone(),
            payload: o.payload_json(),
            tag: o.tag,
            key: o.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::Limits;

    #[test]
    fn the_example_scripts_produce_their_expected_letters() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rhai");
        let engine = ScriptEngine::new(Limits::default());
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("rhai") {
                continue;
            }
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let source = std::fs::read_to_string(&path).unwrap();
            for case in ["", ".2"] {
                let letter_path = dir.join(format!("{stem}{case}.letter.json"));
                if !letter_path.exists() {
                    continue;
                }
                let letter: SampleLetter =
                    serde_json::from_str(&std::fs::read_to_string(&letter_path).unwrap()).unwrap();
                let expected: Vec<DryRunOutput> = serde_json::from_str(
                    &std::fs::read_to_string(dir.join(format!("{stem}{case}.expected.json"))).unwrap(),
                )
                .unwrap();
                let got = dry_run(&engine, &source, &letter, &[]).unwrap_or_else(|e| panic!("{stem}: {e}"));
                assert_eq!(got, expected, "{}", letter_path.display());
                checked += 1;
            }
        }
        assert!(checked >= 4, "example cases checked: {checked}");
    }
}
