//! The output plan: what one pigeon makes of one letter.
//!
//! Every caller that sends letters on a pigeon's behalf plans them here: the router (its
//! forward path and its script workers), the retrier, replays and `POST /fly`. The plan is
//! pure: it reads the letter, the pigeon and the contracts (the dictionary and the fields each
//! capability requires) and answers with the outputs, or with the one reason the pigeon makes
//! none. Headers, producing and storing are the callers'.
//!
//! The rules, destination by destination:
//! - a pigeon in `normalize` or `enforce` mode works on the letter normalised to the
//!   dictionary; in `enforce` mode a letter that does not fit is refused (one dead letter for
//!   that pigeon, the others still fly);
//! - a forward pigeon makes one output per destination, with the letter's id and the
//!   destination's tag;
//! - a script pigeon makes what its script returns, each output with an id derived from the
//!   letter's, the pigeon's version and its index (a redelivery makes the same ids); a script
//!   that fails refuses the letter;
//! - in `enforce` mode an output that lacks a field its destination requires is marked
//!   [`Output::unfit`] and parked alone; a script's output is judged by the capability its own
//!   tag names, since the module dispatches on that tag.

use std::borrow::Cow;

use crate::deadletter::ErrorKind;
use crate::dictionary::{Judgement, Mode, Normalized};
use crate::route::{Contracts, Destination, Route};
use crate::script::{self, ScriptLetter};
use pigeon_wire::LetterId;

/// A letter as the plan reads it, borrowed from wherever it was read.
#[derive(Clone, Copy, Debug)]
pub struct LetterRef<'a> {
    /// What a script sees of it: id, tag, source, key, `ce_time` (and the payload, `null` when
    /// it has none).
    pub seen: ScriptLetter<'a>,
    /// Its payload as it came (`None`: a tombstone, forwarded as one).
    pub payload: Option<&'a [u8]>,
    /// Its time in milliseconds since the epoch (output ids derive from it).
    pub time_ms: i64,
}

impl<'a> LetterRef<'a> {
    /// The same letter carrying `payload` instead (normalised to the dictionary).
    pub fn with_payload(self, payload: Option<&'a [u8]>) -> Self {
        Self { seen: ScriptLetter { payload: payload.unwrap_or(b"null"), ..self.seen }, payload, ..self }
    }
}

/// One output letter: where it goes and what it carries (the caller adds the headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output<'a> {
    /// The destination topic.
    pub topic: &'a str,
    /// Its tag (`ce_type`).
    pub tag: Cow<'a, str>,
    /// Its id (`ce_id`).
    pub id: Cow<'a, str>,
    /// Its partition key.
    pub key: Option<Cow<'a, [u8]>>,
    /// Its payload.
    pub payload: Option<Cow<'a, [u8]>>,
    /// The bus wrote the payload (normalised, or a script's): it is JSON.
    pub rewritten: bool,
    /// Why it must not be sent: it lacks a field its destination requires (`enforce`). It is
    /// parked for an operator on its own; the pigeon's other outputs go.
    pub unfit: Option<String>,
}

/// Why a pigeon makes no output of a letter: one dead letter for that pigeon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `Dictionary` (the letter does not fit) or `Script` (the script failed).
    pub kind: ErrorKind,
    /// What exactly.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The letter read against the dictionary once for every pigeon that took it. `None` when
/// they all leave the dictionary off (the common case: the payload is not read and nothing is
/// allocated).
pub fn check<'r>(
    routes: impl IntoIterator<Item = &'r Route>,
    contracts: &Contracts,
    payload: Option<&[u8]>,
) -> Option<Result<Normalized, String>> {
    let mut routes = routes.into_iter();
    routes
        .any(|r| r.dictionary != Mode::Off)
        .then(|| contracts.vocabulary.normalize(payload.unwrap_or(b"null")))
}

/// How one pigeon takes a letter by its dictionary mode: the normalised letter it works on
/// (`None`: the letter as it came), or why it refuses the letter.
pub fn take<'a>(
    route: &Route,
    checked: Option<&'a Result<Normalized, String>>,
) -> Result<Option<&'a Normalized>, Refusal> {
    let Some(checked) = checked else { return Ok(None) };
    match route.dictionary.judge(checked) {
        Judgement::AsIs => Ok(None),
        Judgement::Normalized => Ok(checked.as_ref().ok()),
        Judgement::Unfit(reason) => Err(Refusal { kind: ErrorKind::Dictionary, reason }),
    }
}

/// A forward pigeon's outputs: one per destination, carrying the letter (`id`, `key`, and the
/// `payload` the pigeon took: normalised when `normalized` is). Allocates nothing for an
/// output that fits, and reads nothing else of the letter.
pub fn forwards<'a>(
    route: &'a Route,
    id: &'a str,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    normalized: Option<&'a Normalized>,
    contracts: &'a Contracts,
) -> impl Iterator<Item = Output<'a>> + 'a {
    route.destinations.iter().map(move |destination| Output {
        topic: &destination.topic,
        tag: Cow::Borrowed(&destination.tag),
        id: Cow::Borrowed(id),
        key: key.map(Cow::Borrowed),
        payload: payload.map(Cow::Borrowed),
        rewritten: normalized.is_some(),
        unfit: forward_unfit(route, normalized, contracts, destination),
    })
}

/// Why a forward pigeon's output to `destination` must not go: in `enforce` mode, the
/// normalised letter lacks a field the destination requires.
fn forward_unfit(
    route: &Route,
    normalized: Option<&Normalized>,
    contracts: &Contracts,
    destination: &Destination,
) -> Option<String> {
    match (route.dictionary, normalized) {
        (Mode::Enforce, Some(n)) => contracts.lacking(&n.fields, destination),
        _ => None,
    }
}

/// A script pigeon's outputs: its script run on `letter` (whose payload is the one the pigeon
/// took). A forward pigeon makes none here.
pub fn script<'a>(
    route: &'a Route,
    letter: &LetterRef<'_>,
    contracts: &Contracts,
) -> Result<Vec<Output<'a>>, Refusal> {
    let Some(script) = &route.script else { return Ok(Vec::new()) };
    crate::fault::panic_point("a script pigeon", letter.seen.tag);
    let refused = |reason: String| Refusal { kind: ErrorKind::Script, reason };
    let emitted = script::default_engine()
        .run(&script.compiled, &letter.seen, &script.destinations)
        .map_err(|e| refused(e.to_string()))?;
    let time_ms = u64::try_from(letter.time_ms).unwrap_or(0);
    emitted
        .into_iter()
        .enumerate()
        .map(|(index, out)| {
            let destination = script
                .destinations
                .get(out.dest)
                .ok_or_else(|| refused(format!("output {index} names no destination")))?;
            let unfit = script_output_unfit(route, contracts, &destination.topic, &out.tag, &out.payload);
            Ok(Output {
                topic: &destination.topic,
                id: Cow::Owned(
                    LetterId::derived_output(letter.seen.id, route.version, index, time_ms).to_string(),
                ),
                tag: Cow::Owned(out.tag),
                key: out.key.map(Cow::Owned),
                payload: Some(Cow::Owned(out.payload)),
                rewritten: true,
                unfit,
            })
        })
        .collect()
}

/// Why a script's output (to `topic`, with its own `tag`) must not go: in `enforce` mode, it
/// lacks a field the capability its tag names requires. The payload is read only when that
/// capability requires any.
fn script_output_unfit(
    route: &Route,
    contracts: &Contracts,
    topic: &str,
    tag: &str,
    payload: &[u8],
) -> Option<String> {
    if route.dictionary != Mode::Enforce {
        return None;
    }
    let target = Destination { topic: topic.to_owned(), tag: tag.to_owned() };
    if contracts.required(&target).is_empty() {
        return None;
    }
    let fields: Vec<String> = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload)
        .map(|object| object.into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default();
    contracts.lacking(&fields, &target)
}

/// Everything one pigeon makes of one letter: its outputs (an unfit one marked), or the
/// reason it makes none. `checked` is [`check`] of the pigeons that took the letter. The
/// router runs the same steps apart, to run scripts off its thread.
pub fn plan<'a>(
    route: &'a Route,
    letter: &LetterRef<'a>,
    checked: Option<&'a Result<Normalized, String>>,
    contracts: &'a Contracts,
) -> Result<Vec<Output<'a>>, Refusal> {
    let normalized = take(route, checked)?;
    let letter = letter.with_payload(normalized.map_or(letter.payload, |n| Some(&n.payload)));
    match route.script {
        Some(_) => script(route, &letter, contracts),
        None => {
            Ok(forwards(route, letter.seen.id, letter.seen.key, letter.payload, normalized, contracts)
                .collect())
        }
    }
}

#[cfg(test)]
mod tests;
