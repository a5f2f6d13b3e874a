//! The bodies of the fuzz targets, as plain functions of the input's bytes: the cargo-fuzz
//! binaries in `fuzz_targets/` call them, and `tests/fuzz_corpus.rs` includes this file to
//! replay `fuzz/regressions/<target>/` and `fuzz/seeds/<target>/` in the ordinary test suite.
//!
//! Each target feeds untrusted input where the bus takes it, and checks that nothing panics
//! (no panic may be reachable from Kafka input, API input or a script) and that a few
//! properties hold; a property that fails panics, which is a crash to libFuzzer.
//!
//! - [`source_message`]: a Kafka message (topic, partition, offset, timestamp, key, headers
//!   with any bytes as names, payload) through what the router does with it: its headers read
//!   once, its tag and id read as each kind of source says, the hops count, the id derived for
//!   a letter without one, `ce_time` for its timestamp, the dead letter that captures it, the
//!   SDK's letter reading, and the output plan of a fixed table of pigeons (forward, dictionary
//!   modes, a script, a topic pattern, a flown pigeon, a live window) with every output's
//!   headers.
//! - [`dictionary`]: a payload normalised to the seeded dictionary or to one made of the input
//!   (first byte: which), checked to be a JSON object, unchanged when nothing changed, and
//!   normalised already when normalised again.
//! - [`script`]: a letter (payload, id, tag, source, key, time) through a few fixed scripts
//!   (the payload as it is, reshaped, an array of letters whose dest, tag and key come from the
//!   payload, the examples of `scripts/rhai`), checked to give valid outputs; and through the
//!   dry run the API serves.
//! - [`route_file`]: a route file (YAML, TOML, or the API's JSON; first byte: which) read as
//!   `pigeon routes apply` reads it, each pigeon parsed and validated as the API does, the
//!   valid ones compiled into route tables, and exported again: an export reads back as the
//!   same pigeons.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use arbitrary::{Arbitrary, Unstructured};
use pigeon_bus::deadletter::{CaptureMessage, ErrorKind, NewDeadLetter};
use pigeon_bus::router::output;
use pigeon_bus::source::{self, LetterHeaders};
use pigeon_core::dictionary::{self, Field, FieldType, Vocabulary};
use pigeon_core::route::{
    self, Clock, Contracts, Lookup, RouteTable, Source, SourceConfig, TagSource, VersionedPigeon,
};
use pigeon_core::script::{self, ScriptDestination, ScriptLetter};
use pigeon_sdk::{header, Letter, LetterId};
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::Timestamp;

/// A target's body: it takes any bytes.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/regressions/<name>/` and `fuzz/seeds/<name>/` are named.
pub const TARGETS: [(&str, Target); 4] = [
    ("source_message", source_message),
    ("dictionary", dictionary),
    ("script", script),
    ("route_file", route_file),
];

// ---------------------------------------------------------------------------------------------
// Reading a source message.

/// The pigeons [`source_message`] plans letters through, as the API takes them.
const PIGEONS: &str = r#"[
  {"id": "gift-copy", "match": {"topic": "live.gift", "tag": "gift.*"},
   "destinations": [{"topic": "out.gift", "tag": "gift.copy"}], "dictionary": "normalize"},
  {"id": "gift-rank", "match": {"topic": "live.gift"},
   "destinations": [{"capability": "rank/gift"}, {"topic": "out.all", "tag": "any"}], "dictionary": "enforce"},
  {"id": "gift-script", "action": "script", "match": {"topic": "live.gift", "tag": "gift.sent"},
   "destinations": [{"capability": "rank/gift"}, {"topic": "out.script", "tag": "scripted"}],
   "dictionary": "enforce",
   "script": "if type_of(payload) != \"map\" { return payload; } [#{ payload: payload }, #{ dest: 1, tag: tag, key: id, payload: #{ n: payload.len(), time: time, source: source } }]"},
  {"id": "orders", "match": {"topic": "foreign.orders", "tag": "order.*"},
   "destinations": [{"topic": "out.orders", "tag": "order"}]},
  {"id": "patterned", "match": {"topic": "^pattern\\.[a-z]+", "tag": "**"},
   "destinations": [{"topic": "out.pattern", "tag": "seen"}]},
  {"id": "events", "match": {"topic": "other.events", "tag": "*"},
   "destinations": [{"topic": "out.events", "tag": "event"}], "dictionary": "normalize"},
  {"id": "flown", "match": {"topic": "pigeon.ingress"},
   "destinations": [{"capability": "act-toy/progress.add"}]},
  {"id": "windowed", "match": {"topic": "live.gift", "tag": "gift.sent"},
   "destinations": [{"topic": "out.window", "tag": "w"}],
   "window": {"start": "2025-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z"}}
]"#;

/// The dictionary the seeding migration writes (a part of it), as fields.
fn seeded_fields() -> Vec<Field> {
    let field = |name: &str, kind, aliases: &[&str]| Field {
        name: name.into(),
        kind,
        description: format!("the {name}"),
        aliases: aliases.iter().map(|a| (*a).into()).collect(),
    };
    vec![
        field("userId", FieldType::Integer, &["uid", "user_id"]),
        field("anchorId", FieldType::Integer, &["aid", "anchor_id"]),
        field("roomId", FieldType::String, &["rid", "room_id"]),
        field("giftId", FieldType::Integer, &["gid", "gift_id"]),
        field("amount", FieldType::Number, &["amt"]),
        field("isTest", FieldType::Boolean, &["test"]),
        field("tags", FieldType::Array, &[]),
        field("extra", FieldType::Object, &["ext"]),
    ]
}

fn contracts() -> Contracts {
    Contracts {
        vocabulary: Vocabulary::new(&seeded_fields()),
        requires: [("rank/gift".to_owned(), vec!["userId".to_owned(), "giftId".to_owned()])].into(),
    }
}

fn sources() -> BTreeMap<String, SourceConfig> {
    let foreign = SourceConfig {
        tag_field: Some("type".into()),
        id_header: Some("msg_id".into()),
        ..SourceConfig::default()
    };
    let events = SourceConfig { tag_header: Some("event".into()), ..SourceConfig::default() };
    [("foreign.orders".to_owned(), foreign), ("other.events".to_owned(), events)].into()
}

static TABLE: LazyLock<RouteTable> = LazyLock::new(|| {
    let values: Vec<serde_json::Value> = serde_json::from_str(PIGEONS).expect("PIGEONS is JSON");
    let pigeons: Vec<VersionedPigeon> = values
        .into_iter()
        .map(|v| VersionedPigeon {
            spec: route::parse_spec(v).expect("PIGEONS are valid"),
            version: 3,
            saved_at: 1_700_000_000_000,
        })
        .collect();
    let built = RouteTable::build(&pigeons, &sources(), None, Arc::new(contracts()));
    assert!(built.quarantined.is_empty(), "{:?}", built.quarantined);
    built.table
});

/// The topic a message comes from: one the table knows, or any.
#[derive(Debug, Arbitrary)]
pub enum Topic {
    /// CloudEvents headers, several pigeons, a script, a window.
    LiveGift,
    /// The tag in the JSON field `type`, the id in `msg_id`.
    ForeignOrders,
    /// The tag in the header `event`.
    OtherEvents,
    /// Matched by a topic pattern.
    Pattern,
    /// Letters flown to a pigeon by id.
    Ingress,
    /// Any name.
    Other(String),
}

impl Topic {
    fn name(&self) -> &str {
        match self {
            Topic::LiveGift => "live.gift",
            Topic::ForeignOrders => "foreign.orders",
            Topic::OtherEvents => "other.events",
            Topic::Pattern => "pattern.abc",
            Topic::Ingress => pigeon_sdk::INGRESS,
            Topic::Other(name) => name,
        }
    }
}

/// A header's name: one the bus reads, or any bytes.
#[derive(Debug, Arbitrary)]
pub enum Name {
    /// One of the names the bus reads, by index.
    Known(u8),
    /// Any bytes.
    Bytes(Vec<u8>),
}

const KNOWN_NAMES: [&str; 14] = [
    header::ID,
    header::TYPE,
    header::SOURCE,
    header::TIME,
    header::PIGEON,
    header::HOPS,
    header::ATTEMPT,
    header::SPECVERSION,
    header::CONTENT_TYPE,
    header::REPLAYOF,
    header::TRACEPARENT,
    "event",
    "msg_id",
    "x-\u{ff}",
];

impl Name {
    fn bytes(&self) -> &[u8] {
        match self {
            Name::Known(i) => KNOWN_NAMES[usize::from(*i) % KNOWN_NAMES.len()].as_bytes(),
            Name::Bytes(bytes) => bytes,
        }
    }
}

/// A message's timestamp.
#[derive(Debug, Arbitrary)]
pub enum Stamp {
    /// None.
    NotAvailable,
    /// Set by the producer.
    CreateTime(i64),
    /// Set by the broker.
    LogAppendTime(i64),
}

/// A Kafka message, as [`source_message`] decodes it from the input.
#[derive(Debug, Arbitrary)]
pub struct SourceMessage {
    /// Where it comes from.
    pub topic: Topic,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp.
    pub timestamp: Stamp,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its headers, in order.
    pub headers: Vec<(Name, Option<Vec<u8>>)>,
    /// Its payload.
    pub payload: Option<Vec<u8>>,
}

impl SourceMessage {
    /// The message as rdkafka holds a consumed one.
    pub fn message(&self) -> OwnedMessage {
        let mut headers = OwnedHeaders::new();
        for (name, value) in &self.headers {
            headers = pigeon_headers::add(headers, name.bytes(), value.as_deref());
        }
        let timestamp = match self.timestamp {
            Stamp::NotAvailable => Timestamp::NotAvailable,
            Stamp::CreateTime(ms) => Timestamp::CreateTime(ms),
            Stamp::LogAppendTime(ms) => Timestamp::LogAppendTime(ms),
        };
        OwnedMessage::new(
            self.payload.clone(),
            self.key.clone(),
            self.topic.name().to_owned(),
            timestamp,
            self.partition,
            self.offset,
            Some(headers),
        )
    }
}

/// A message from the input's bytes, through [`check_source_message`].
pub fn source_message(data: &[u8]) {
    if let Ok(input) = SourceMessage::arbitrary_take_rest(Unstructured::new(data)) {
        check_source_message(&input);
    }
}

/// What the router, the retrier and a module do with `input`, checked.
pub fn check_source_message(input: &SourceMessage) {
    let message = input.message();
    let headers = LetterHeaders::of(&message);
    assert_eq!(headers.len(), input.headers.len(), "every header is read");
    // Each kind of source reads it, whether or not its topic is one.
    let kinds = [
        Source { tag: TagSource::Header(header::TYPE.into()), id_header: header::ID.into() },
        Source { tag: TagSource::Header("event".into()), id_header: "msg_id".into() },
        Source { tag: TagSource::Field("type".into()), id_header: "msg_id".into() },
    ];
    for kind in &kinds {
        let _ = source::read(&message, &headers, kind);
    }

    // The router's steps, in its order (bus/src/router/mod.rs, `forward`).
    let table = &*TABLE;
    let topic = message.topic();
    let lookup = table.lookup(topic);
    let source = match &lookup {
        Lookup::Flown(source) => *source,
        Lookup::Routes(routes) => &routes.source,
        Lookup::Nothing => &kinds[0],
    };
    let meta = source::read(&message, &headers, source);
    let hops = output::hops_of(headers.text(header::HOPS));
    let offset = message.offset();
    let ms = message.timestamp().to_millis().unwrap_or(0).max(0) as u64;
    let derived = LetterId::derived(topic, message.partition(), offset, ms);
    assert_eq!(derived, LetterId::derived(topic, message.partition(), offset, ms), "ids are stable");
    assert_eq!(derived.to_string().parse::<LetterId>().ok(), Some(derived), "ids read back");
    let at = derived
        .as_uuid()
        .get_timestamp()
        .map(|t| t.to_unix())
        .map(|(s, n)| s * 1000 + u64::from(n) / 1_000_000);
    if ms < 1 << 48 {
        assert_eq!(at, Some(ms), "a derived id keeps the message's time");
    }
    // Every timestamp writes a `ce_time` that reads back (clamped to what RFC 3339 writes).
    if let Some(ms) = message.timestamp().to_millis() {
        let text = pigeon_sdk::letter::format_time_ms(ms);
        let read = pigeon_sdk::letter::parse_time(&text).unwrap_or_else(|| panic!("{text} reads back"));
        let back = read.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let expected = u128::try_from(ms.clamp(0, 253_402_300_799_999)).unwrap_or(0);
        assert_eq!(back, expected, "{ms} as {text}");
    }
    // Whatever the router makes of it, a dead letter captures it whole.
    let reason = match &meta {
        Ok(_) => "no pigeon".to_owned(),
        Err(reason) => reason.clone(),
    };
    let dead = NewDeadLetter::from_message(&message, ErrorKind::Malformed, reason);
    assert_eq!(dead.headers.len(), input.headers.len());
    for (stored, raw) in dead.headers.iter().zip(headers.iter()) {
        let name = stored.name_bytes.as_deref().unwrap_or(stored.name.as_bytes());
        assert_eq!(name, raw.name, "a dead letter keeps each name's bytes");
    }
    // A module reads it as a letter, or says why not.
    let _ = Letter::from_message(&message);

    let Ok(meta) = meta else { return };
    let time_ms = message.timestamp().to_millis().unwrap_or(0);
    let id_text = derived.to_string();
    let id = meta.id.unwrap_or(&id_text);
    let tag = meta.tag.as_deref().unwrap_or_default();
    let routes: Vec<Arc<route::Route>> = match &lookup {
        Lookup::Routes(routes) => match &meta.tag {
            Some(tag) => routes.matching(tag).cloned().collect(),
            None => routes.matching_untagged().cloned().collect(),
        },
        Lookup::Flown(_) => table.flown(headers.text(header::PIGEON)).ok().cloned().into_iter().collect(),
        Lookup::Nothing => Vec::new(),
    };
    let routes: Vec<&Arc<route::Route>> = routes.iter().filter(|r| r.takes(time_ms)).collect();
    // Read again (a redriven dead letter, a replay, `POST /fly`): the same pigeons take it.
    if let Ok((again, taken)) = output::reroute(table, &message, time_ms) {
        assert_eq!(again, tag);
        let mut ids: Vec<&str> = taken.iter().map(|r| &*r.id).collect();
        let mut expected: Vec<&str> = routes.iter().map(|r| &*r.id).collect();
        ids.sort_unstable();
        expected.sort_unstable();
        assert_eq!(ids, expected, "reroute takes what the router takes");
    }
    let planned = output::owned_outputs("retry", &message, id, tag, time_ms, &routes, 2, table.contracts());
    for out in &planned.outputs {
        let one = |name: &str| out.headers_named(name);
        for name in [header::ID, header::TYPE, header::PIGEON, header::ATTEMPT, header::HOPS] {
            assert_eq!(one(name), 1, "one {name} on each output");
        }
        assert_eq!(out.header(header::ATTEMPT).as_deref(), Some("2"));
        // The router judges a letter's hops by its first `ce_hops` and its outputs count on
        // from the last (reported, bus/src/router/output.rs): one header, one count.
        if headers.iter().filter(|h| h.is(header::HOPS)).count() <= 1 {
            assert_eq!(out.header(header::HOPS), Some(hops.saturating_add(1).to_string()));
        }
        if out.unfit.is_none() && out.payload.is_some() {
            let _ = out.record();
        }
        let _ = out.parked();
    }
}

/// How many headers called `name` an output has.
trait HeadersNamed {
    fn headers_named(&self, name: &str) -> usize;
}

impl HeadersNamed for output::OwnedOutput {
    fn headers_named(&self, name: &str) -> usize {
        use pigeon_headers::RawHeaders;
        self.headers.raw().filter(|h| h.is(name)).count()
    }
}

// ---------------------------------------------------------------------------------------------
// Dictionary normalisation.

/// A field of a dictionary made of the input.
#[derive(Debug, Arbitrary)]
struct FieldIn {
    name: String,
    kind: u8,
    aliases: Vec<String>,
}

const KINDS: [FieldType; 6] = [
    FieldType::String,
    FieldType::Integer,
    FieldType::Number,
    FieldType::Boolean,
    FieldType::Object,
    FieldType::Array,
];

/// A payload normalised. The first byte chooses the dictionary: even, the seeded one, and the
/// rest is the payload; odd, the fields that come next (as the API would accept them, one by
/// one), then the payload.
pub fn dictionary(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    if first % 2 == 0 {
        check_normalize(&Vocabulary::new(&seeded_fields()), rest);
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(wanted) = Vec::<FieldIn>::arbitrary(&mut u) else { return };
    let payload = u.take_rest();
    let mut accepted: Vec<Field> = Vec::new();
    let mut any: Vec<Field> = Vec::new();
    for f in wanted {
        let field = Field {
            name: f.name,
            kind: KINDS[usize::from(f.kind) % KINDS.len()],
            description: "a field".into(),
            aliases: f.aliases,
        };
        if dictionary::validate(&field, &accepted).is_ok() {
            accepted.push(field.clone());
        }
        any.push(field);
    }
    check_normalize(&Vocabulary::new(&accepted), payload);
    // A dictionary the API would refuse must not panic either.
    let _ = Vocabulary::new(&any).normalize(payload);
}

/// Normalises `payload` and checks the result.
pub fn check_normalize(vocabulary: &Vocabulary, payload: &[u8]) {
    let Ok(once) = vocabulary.normalize(payload) else { return };
    if !once.changed {
        assert_eq!(once.payload, payload, "nothing changed: the payload comes back byte for byte");
    }
    // A number past f64's range (1e400) is JSON, but not a `serde_json::Value`: it stays as
    // it came, and the payload reads as a value only when it did.
    if serde_json::from_slice::<serde_json::Value>(payload).is_ok() {
        let value: serde_json::Value = serde_json::from_slice(&once.payload).unwrap_or_else(|e| {
            panic!("normalised payload is not JSON ({e}): {}", String::from_utf8_lossy(&once.payload))
        });
        assert!(value.is_object(), "a normalised payload is an object");
    }
    // Read with no dictionary, the payload's own fields, as they come.
    let given = Vocabulary::default().normalize(payload).expect("it read as an object").fields;
    if !has_twice(&given) {
        assert!(
            !has_twice(&once.fields),
            "normalising names a field twice: {} became {}",
            String::from_utf8_lossy(payload),
            String::from_utf8_lossy(&once.payload)
        );
    }
    let twice = vocabulary.normalize(&once.payload).expect("a normalised payload normalises");
    assert!(
        !twice.changed,
        "normalising twice changes nothing: {} became {}",
        String::from_utf8_lossy(&once.payload),
        String::from_utf8_lossy(&twice.payload)
    );
    assert_eq!(twice.fields, once.fields);
    // What a pigeon in each mode does with it.
    for mode in [dictionary::Mode::Off, dictionary::Mode::Normalize, dictionary::Mode::Enforce] {
        let _ = mode.judge(&Ok(once.clone()));
    }
}

/// Whether a name is in `names` twice.
fn has_twice(names: &[String]) -> bool {
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[0] == w[1])
}

// ---------------------------------------------------------------------------------------------
// Script input and output.

/// The fixed scripts [`script`] runs: (source, whether it gives the payload back as it is).
const SCRIPTS: [&str; 7] = [
    // The payload as it is.
    "payload",
    // Reshaped, with every variable.
    "#{ user: payload?.userId, amount: payload?.amount ?? 0, tag: tag, id: id, source: source, key: key, time: time, all: payload }",
    // An array of letters, dest, tag and key taken from the payload.
    r#"
    let items = if type_of(payload) == "array" { payload } else { [payload] };
    let out = [];
    for item in items {
        let letter = #{ payload: item };
        if type_of(item) == "map" {
            if "dest" in item { letter.dest = item.dest; }
            if "tag" in item { letter.tag = item.tag; }
            if "key" in item { letter.key = item.key; }
        }
        out.push(letter);
    }
    out
    "#,
    // The payload changed in place.
    "if type_of(payload) == \"map\" { payload.seen = tag; payload.key = key; payload.n = payload.len(); } payload",
    include_str!("../scripts/rhai/filter-test-rooms.rhai"),
    include_str!("../scripts/rhai/gift-to-progress.rhai"),
    include_str!("../scripts/rhai/task-complete-split.rhai"),
];

static COMPILED: LazyLock<Vec<script::CompiledScript>> = LazyLock::new(|| {
    SCRIPTS.iter().map(|s| script::default_engine().compile(s).expect("the fixed scripts compile")).collect()
});

static DESTINATIONS: LazyLock<Vec<ScriptDestination>> = LazyLock::new(|| {
    let specs = [
        route::DestinationSpec::capability("act-chest/chest.drop"),
        route::DestinationSpec::topic("lane.banner", "banner.show"),
        route::DestinationSpec::capability("act-toy/progress.add"),
        route::DestinationSpec::topic("out.a", "a.b"),
    ];
    route::script_destinations(&specs).expect("the destinations resolve")
});

/// A letter through a fixed script. The input is the script's number (first byte), then
/// `tag`, `id`, `source`, `key` and `time`, each ended by a NUL (an empty key or time is
/// none), then the payload; what is missing is empty.
pub fn script(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let mut parts = rest.splitn(6, |&b| b == 0);
    let mut next = || parts.next().unwrap_or_default();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (tag, id, source, key, time) = (text(next()), text(next()), text(next()), next(), text(next()));
    let payload = next();
    let letter = ScriptLetter {
        id: &id,
        tag: &tag,
        source: &source,
        key: (!key.is_empty()).then_some(key),
        time: (!time.is_empty()).then_some(time.as_str()),
        payload,
    };
    check_script(usize::from(first) % SCRIPTS.len(), &letter);
}

/// Runs fixed script `index` on `letter` and checks its outputs.
pub fn check_script(index: usize, letter: &ScriptLetter<'_>) {
    let engine = script::default_engine();
    let destinations = &*DESTINATIONS;
    let outcome = engine.run(&COMPILED[index], letter, destinations);
    if let Ok(outputs) = &outcome {
        assert!(outputs.len() <= engine.limits().max_outputs);
        for out in outputs {
            assert!(out.dest < destinations.len(), "dest {} is a destination", out.dest);
            pigeon_core::tag::validate_tag(&out.tag)
                .unwrap_or_else(|e| panic!("output tag {:?}: {e}", out.tag));
            let _ = out.payload_json();
            let _ = out.to_string();
        }
    }
    // The payload as it is: one letter to the first destination, whatever JSON it holds.
    if index == 0 {
        if let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(letter.payload) {
            let outputs = outcome.unwrap_or_else(|e| panic!("the payload script fails on an object: {e}"));
            assert_eq!(outputs.len(), 1);
            assert_eq!(
                outputs[0].payload_json(),
                serde_json::Value::Object(object),
                "the payload comes back as it is"
            );
        }
    }
    // An archive pigeon's filter on the same letter.
    let _ = engine.test(&FILTER, letter);
    // The dry run the API serves (`POST /pigeons/test`) takes the payload as JSON.
    if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(letter.payload) {
        let sample = pigeon_core::dryrun::SampleLetter {
            tag: letter.tag.to_owned(),
            id: letter.id.to_owned(),
            source: letter.source.to_owned(),
            key: letter.key.map(|k| String::from_utf8_lossy(k).into_owned()),
            time: letter.time.map(str::to_owned),
            payload,
            destinations: Vec::new(),
        };
        let _ = pigeon_core::dryrun::dry_run(engine, SCRIPTS[index], &sample, &[]);
    }
}

static FILTER: LazyLock<script::CompiledScript> = LazyLock::new(|| {
    script::default_engine().compile("payload?.amount >= 100 && tag != \"x\"").expect("the filter compiles")
});

// ---------------------------------------------------------------------------------------------
// Route files.

/// A route file. The first byte chooses its format: 0 YAML, 1 TOML, 2 the API's JSON (a list
/// of pigeons, or one); the rest is its text.
pub fn route_file(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    // `pigeon routes apply` reads the file as text.
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let format = match first % 3 {
        0 => Some(pigeon::cli::routes::Format::Yaml),
        1 => Some(pigeon::cli::routes::Format::Toml),
        _ => None,
    };
    let values = match format {
        Some(format) => match pigeon::cli::routes::parse(text, format) {
            Ok(values) => values,
            Err(_) => return,
        },
        None => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Array(values)) => values,
            Ok(value) => vec![value],
            Err(_) => return,
        },
    };
    check_pigeons(values, format);
}

/// Pigeons as the API takes them, checked, compiled, and exported again.
pub fn check_pigeons(values: Vec<serde_json::Value>, format: Option<pigeon::cli::routes::Format>) {
    let now = 1_760_000_000_000;
    let mut specs = Vec::new();
    for value in values {
        if let Ok(spec) = route::parse_spec(value) {
            route::validate(&spec).unwrap_or_else(|e| panic!("a parsed pigeon validates: {e}"));
            specs.push(spec);
        }
    }
    let pigeons: Vec<VersionedPigeon> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| VersionedPigeon { spec: spec.clone(), version: i as i64 + 1, saved_at: now })
        .collect();
    for pigeon in &pigeons {
        route::standing(pigeon, now).unwrap_or_else(|e| panic!("a valid pigeon stands somewhere: {e:?}"));
    }
    let clock = Clock { now_ms: now, lead_ms: 60_000, grace_ms: 300_000 };
    for paths in [route::Paths::Deliver, route::Paths::Archive] {
        let built = RouteTable::build_for(paths, &pigeons, &sources(), Some(clock), Arc::new(contracts()));
        let table = built.table;
        let _ = (table.consumed_topics(), table.destination_topics(), table.next_change(), table.len());
        for spec in &specs {
            let topic = &spec.matcher.topic;
            let _ = table.subscription_since(topic);
            if !topic.starts_with('^') {
                if let Lookup::Routes(routes) = table.lookup(topic) {
                    let _ = routes.matching(&spec.matcher.tag).count();
                    let _ = routes.matching_untagged().count();
                }
            }
            for destination in &spec.destinations {
                let _ = table.lookup(&route::destination_name(destination));
            }
        }
    }
    let compiled = RouteTable::compile(&pigeons, &sources());
    // Ids listed twice compile apart; otherwise every valid pigeon compiles.
    let mut ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() == specs.len() {
        compiled.unwrap_or_else(|e| panic!("valid pigeons compile: {e}"));
    }
    // `routes export` writes them, and `routes apply` of the export reads the same pigeons.
    let Some(format) = format else { return };
    let text = pigeon::cli::routes::render(&specs, format).unwrap_or_else(|e| panic!("pigeons render: {e}"));
    let back = pigeon::cli::routes::parse(&text, format)
        .unwrap_or_else(|e| panic!("an export reads back: {e}\n{text}"));
    let back: Vec<_> = back
        .into_iter()
        .map(|v| route::parse_spec(v).unwrap_or_else(|e| panic!("an exported pigeon parses: {e:?}\n{text}")))
        .collect();
    assert_eq!(back, specs, "an export reads back as the same pigeons:\n{text}");
}
