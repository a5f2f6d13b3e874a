//! The compiled route table: validated, immutable, cheap to look letters up in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use regex::Regex;

use super::pattern::{validate_tag, TagPattern};
use super::spec::SourceConfig;
use super::spec::{Action, DestinationSpec, PigeonSpec};
use super::window::{Phase, Window};
use crate::deadletter::schedule::Schedule;
use crate::script::{self, CompiledScript, ScriptDestination};

/// A pigeon as stored: its spec and version.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionedPigeon {
    /// The spec.
    pub spec: PigeonSpec,
    /// Version, starting at 1 and bumped by every change.
    pub version: i64,
    /// When this version was saved (unix ms): where a TTL without a start counts from.
    pub saved_at: i64,
}

/// One compiled pigeon.
#[derive(Debug)]
pub struct Route {
    /// Pigeon id.
    pub id: Arc<str>,
    /// Pigeon version the route was compiled from.
    pub version: i64,
    /// What it does.
    pub action: Action,
    /// Where letters fly.
    pub destinations: Vec<Destination>,
    /// The compiled script of a script pigeon.
    pub script: Option<RouteScript>,
    /// The compiled `match.filter` of an archive pigeon.
    pub filter: Option<CompiledScript>,
    /// How its letters are held to the dictionary.
    pub dictionary: crate::dictionary::Mode,
    /// When its failed deliveries are tried again.
    pub retry: Schedule,
    /// Letters fly only with a timestamp inside it; `None`: always.
    pub window: Option<Window>,
    /// Since when (unix ms) this version has been live: saved, and its window started.
    pub live_since: i64,
    /// What the pigeon did, shared by its every version in this process.
    pub counts: Arc<crate::counters::Counts>,
    /// Its Prometheus series, resolved when a table holding it is built.
    pub metrics: crate::series::RouteMetrics,
}

impl Route {
    /// Whether a letter with this timestamp flies with this pigeon.
    pub fn takes(&self, time_ms: i64) -> bool {
        self.window.is_none_or(|w| w.contains(time_ms))
    }
}

/// A script pigeon's compiled script and what it may send to.
#[derive(Debug)]
pub struct RouteScript {
    /// Compiled once for this pigeon version.
    pub compiled: CompiledScript,
    /// The pigeon's destinations as the script names them.
    pub destinations: Vec<ScriptDestination>,
}

/// A resolved destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Kafka topic.
    pub topic: String,
    /// Tag the letter carries there.
    pub tag: String,
}

impl Destination {
    /// The module capability this is (`module/capability`), when it is a module's topic.
    pub fn capability(&self) -> Option<String> {
        let module = self.topic.strip_prefix("pigeon.module.")?;
        Some(format!("{module}/{}", self.tag))
    }
}

/// What pigeons that hold letters to the dictionary check them against: the dictionary, and
/// the fields each capability requires (`module/capability` → fields), as registered.
#[derive(Debug, Default)]
pub struct Contracts {
    /// The dictionary, compiled.
    pub vocabulary: crate::dictionary::Vocabulary,
    /// Required fields by capability.
    pub requires: HashMap<String, Vec<String>>,
}

impl Contracts {
    /// The fields a destination requires (none for a raw topic or an unknown capability).
    pub fn required(&self, destination: &Destination) -> &[String] {
        destination.capability().and_then(|c| self.requires.get(&c)).map_or(&[], Vec::as_slice)
    }

    /// Why a letter with these top-level fields may not go to `destination`: the required
    /// fields it lacks (`missing anchorId, required by rank/gift`); `None` when it may.
    pub fn lacking(&self, fields: &[String], destination: &Destination) -> Option<String> {
        let missing = crate::dictionary::missing(fields, self.required(destination));
        (!missing.is_empty()).then(|| {
            format!(
                "missing {}, required by {}",
                missing.join(", "),
                destination.capability().unwrap_or_default()
            )
        })
    }
}

/// Where a source topic's letters keep their tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagSource {
    /// A header (`ce_type` unless configured).
    Header(String),
    /// A top-level JSON field of the payload.
    Field(String),
}

/// How to read letters of one source topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Where the tag is.
    pub tag: TagSource,
    /// Header with the letter id; when absent the id is derived from the Kafka position.
    pub id_header: String,
}

impl Source {
    fn from_config(config: Option<&SourceConfig>) -> Self {
        let config = config.cloned().unwrap_or_default();
        let tag = match (config.tag_field, config.tag_header) {
            (Some(field), _) => TagSource::Field(field),
            (None, Some(header)) => TagSource::Header(header),
            (None, None) => TagSource::Header(pigeon_wire::header::TYPE.into()),
        };
        Self { tag, id_header: config.id_header.unwrap_or_else(|| pigeon_wire::header::ID.into()) }
    }

    /// Whether reading this source's letters needs the payload parsed.
    pub fn reads_payload(&self) -> bool {
        matches!(self.tag, TagSource::Field(_))
    }
}

/// The pigeons of one source topic.
#[derive(Clone, Debug)]
pub struct TopicRoutes {
    /// How to read the topic's letters.
    pub source: Source,
    exact: HashMap<String, Vec<Arc<Route>>>,
    /// Patterns that begin with a literal segment (`gift.*`), by that segment: a letter is
    /// tried only against the patterns that share its tag's first segment.
    by_first: HashMap<String, Vec<(TagPattern, Arc<Route>)>>,
    /// Patterns that begin with a wildcard (`*.sent`, `**`): tried on every letter.
    wild: Vec<(TagPattern, Arc<Route>)>,
}

impl TopicRoutes {
    fn new(source: Source) -> Self {
        Self { source, exact: HashMap::new(), by_first: HashMap::new(), wild: Vec::new() }
    }

    fn add(&mut self, pattern: &TagPattern, route: Arc<Route>) {
        match pattern.as_exact() {
            Some(tag) => self.exact.entry(tag.to_owned()).or_default().push(route),
            None => match pattern.first_literal() {
                Some(first) => {
                    self.by_first.entry(first.to_owned()).or_default().push((pattern.clone(), route))
                }
                None => self.wild.push((pattern.clone(), route)),
            },
        }
    }

    /// The routes a tag matches: one hash probe for the exact tag, one for the patterns that
    /// share its first segment, then the patterns that begin with a wildcard. The cost does
    /// not grow with the pigeons waiting on other tags.
    pub fn matching<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Arc<Route>> + 'a {
        let exact = self.exact.get(tag).into_iter().flatten();
        let first = tag.split_once('.').map_or(tag, |(first, _)| first);
        let candidates = self.by_first.get(first).into_iter().flatten().chain(&self.wild);
        let patterns = candidates.filter(move |(pattern, _)| pattern.matches(tag)).map(|(_, r)| r);
        exact.chain(patterns)
    }

    /// Whether any route could match a letter without a tag (only `**` pigeons do not care).
    pub fn matching_untagged(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.wild.iter().filter(|(p, _)| p.as_str() == "**").map(|(_, r)| r)
    }

    fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        let patterns = self.by_first.values().flatten().chain(&self.wild);
        self.exact.values().flatten().chain(patterns.map(|(_, r)| r))
    }
}

/// Pigeons whose `match.topic` is a regular expression.
#[derive(Debug)]
struct TopicPattern {
    regex: Regex,
    routes: Vec<(TagPattern, Arc<Route>)>,
}

/// Which pigeons a table holds: each path consumes in a consumer group of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Paths {
    /// Forward and script pigeons: the router's.
    #[default]
    Deliver,
    /// Archive pigeons: the archiver's.
    Archive,
}

impl Paths {
    fn holds(self, action: Action) -> bool {
        (action == Action::Archive) == (self == Paths::Archive)
    }
}

/// What the router does with a letter of some topic.
#[derive(Debug)]
pub enum Lookup {
    /// A letter flown to a pigeon by id ([`INGRESS`]): read the CloudEvents headers.
    Flown(&'static Source),
    /// The pigeons listening on the topic.
    Routes(Arc<TopicRoutes>),
    /// No pigeon listens there.
    Nothing,
}

/// Every live pigeon, indexed by source topic.
#[derive(Debug, Default)]
pub struct RouteTable {
    paths: Paths,
    contracts: Arc<Contracts>,
    topics: HashMap<String, Arc<TopicRoutes>>,
    topic_patterns: Vec<TopicPattern>,
    /// Concrete topics resolved against `topics` and `topic_patterns` (only with patterns).
    resolved: Mutex<HashMap<String, Option<Arc<TopicRoutes>>>>,
    sources: BTreeMap<String, SourceConfig>,
    by_id: HashMap<Arc<str>, Arc<Route>>,
    next_change: Option<i64>,
}

/// A pigeon left out of the table because it does not compile: the rest run without it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// Pigeon id.
    pub id: String,
    /// The version that does not compile.
    pub version: i64,
    /// Every problem, each prefixed with the pigeon's id.
    pub problems: Vec<String>,
}

/// A table and the pigeons left out of it.
#[derive(Debug, Default)]
pub struct Built {
    /// The live pigeons.
    pub table: RouteTable,
    /// Pigeons that do not compile.
    pub quarantined: Vec<Quarantined>,
    /// Where every enabled pigeon that compiles stands in its window.
    pub phases: BTreeMap<String, Phase>,
}

/// The instant a table is built for, and how far around a live window the router consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Now, unix ms.
    pub now_ms: i64,
    /// Pigeons join the table this long before their window starts.
    pub lead_ms: i64,
    /// Pigeons stay in the table this long after their window ends.
    pub grace_ms: i64,
}

/// Every problem found while compiling pigeons.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct CompileErrors(pub Vec<String>);

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid pigeons ({} problem(s)):", self.0.len())?;
        for error in &self.0 {
            write!(f, "\n  - {error}")?;
        }
        Ok(())
    }
}

pub use pigeon_wire::registry::module_topic;

/// The topic modules fly letters on: each is routed to the pigeon its `ce_pigeon` header
/// names, whatever its tag. A pigeon whose `match.topic` is this one takes only flown letters.
pub const INGRESS: &str = pigeon_wire::INGRESS;

/// How flown letters are read: tag and id from the CloudEvents headers.
static FLOWN: std::sync::LazyLock<Source> = std::sync::LazyLock::new(|| Source::from_config(None));

/// Whether a topic is the bus's own or Kafka's, which topic patterns never match.
fn reserved_topic(topic: &str) -> bool {
    topic.starts_with("pigeon.") || topic.starts_with("__")
}

impl RouteTable {
    /// Compiles pigeons into a table, every window included; returns every problem of every
    /// pigeon at once.
    pub fn compile(
        pigeons: &[VersionedPigeon],
        sources: &BTreeMap<String, SourceConfig>,
    ) -> Result<Self, CompileErrors> {
        let built = Self::build(pigeons, sources, None, Arc::default());
        if built.quarantined.is_empty() {
            Ok(built.table)
        } else {
            Err(CompileErrors(built.quarantined.into_iter().flat_map(|q| q.problems).collect()))
        }
    }

    /// Compiles every pigeon that compiles and quarantines the others; the table holds the
    /// forward and script pigeons. With a clock, only pigeons whose live window the router
    /// consumes for at that instant are in the table. `contracts` are what pigeons that hold
    /// letters to the dictionary check them against.
    pub fn build(
        pigeons: &[VersionedPigeon],
        sources: &BTreeMap<String, SourceConfig>,
        clock: Option<Clock>,
        contracts: Arc<Contracts>,
    ) -> Built {
        Self::build_for(Paths::Deliver, pigeons, sources, clock, contracts)
    }

    /// [`RouteTable::build`] for one path's pigeons. Every pigeon is checked whatever its path,
    /// so each table's quarantine names every pigeon that does not compile.
    pub fn build_for(
        paths: Paths,
        pigeons: &[VersionedPigeon],
        sources: &BTreeMap<String, SourceConfig>,
        clock: Option<Clock>,
        contracts: Arc<Contracts>,
    ) -> Built {
        let mut built = Built::default();
        let mut seen = HashSet::new();
        let table = &mut built.table;
        table.paths = paths;
        table.contracts = contracts;
        table.sources = sources.clone();
        let mut topics: HashMap<String, TopicRoutes> = HashMap::new();
        for pigeon in pigeons {
            if !seen.insert(pigeon.spec.id.as_str()) {
                built.quarantined.push(Quarantined {
                    id: pigeon.spec.id.clone(),
                    version: pigeon.version,
                    problems: vec![format!("pigeon {:?}: id is used twice", pigeon.spec.id)],
                });
                continue;
            }
            let (mut route, pattern) = match compile_one(pigeon) {
                Ok(compiled) => compiled,
                Err(problems) => {
                    built.quarantined.push(Quarantined {
                        id: pigeon.spec.id.clone(),
                        version: pigeon.version,
                        problems,
                    });
                    continue;
                }
            };
            if !pigeon.spec.enabled || !paths.holds(route.action) {
                continue;
            }
            if let (Some(clock), Some(window)) = (clock, route.window) {
                built.phases.insert(pigeon.spec.id.clone(), window.phase(clock.now_ms));
                let next = window.next_change(clock.now_ms, clock.lead_ms, clock.grace_ms);
                table.next_change = table.next_change.into_iter().chain(next).min();
                if !window.consumed_at(clock.now_ms, clock.lead_ms, clock.grace_ms) {
                    continue;
                }
            } else {
                built.phases.insert(pigeon.spec.id.clone(), Phase::Live);
            }
            // Only pigeons a table holds get series: a pigeon that is only checked has none.
            route.metrics = crate::series::RouteMetrics::of(
                &route.id,
                route.destinations.iter().map(|d| d.topic.as_str()),
                route.script.is_some(),
            );
            let route = Arc::new(route);
            table.by_id.insert(Arc::clone(&route.id), Arc::clone(&route));
            let topic = &pigeon.spec.matcher.topic;
            if topic == INGRESS && paths == Paths::Deliver {
                continue; // only flown to, by id
            }
            if topic.starts_with('^') {
                let regex = Regex::new(topic).expect("validated by compile_one");
                match table.topic_patterns.iter_mut().find(|p| p.regex.as_str() == topic) {
                    Some(existing) => existing.routes.push((pattern, route)),
                    None => table.topic_patterns.push(TopicPattern { regex, routes: vec![(pattern, route)] }),
                }
                continue;
            }
            topics
                .entry(topic.clone())
                .or_insert_with(|| TopicRoutes::new(Source::from_config(sources.get(topic))))
                .add(&pattern, route);
        }
        table.topics = topics.into_iter().map(|(topic, routes)| (topic, Arc::new(routes))).collect();
        built
    }

    /// What to do with letters of a topic.
    pub fn lookup(&self, topic: &str) -> Lookup {
        if topic == INGRESS && self.paths == Paths::Deliver {
            return Lookup::Flown(&FLOWN);
        }
        let routes = if self.topic_patterns.is_empty() {
            self.topics.get(topic).cloned()
        } else {
            let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            resolved.entry(topic.to_owned()).or_insert_with(|| self.resolve_topic(topic)).clone()
        };
        routes.map_or(Lookup::Nothing, Lookup::Routes)
    }

    /// The pigeons of a concrete topic: its own, and those of every topic pattern matching it.
    fn resolve_topic(&self, topic: &str) -> Option<Arc<TopicRoutes>> {
        let exact = self.topics.get(topic);
        let matching: Vec<&TopicPattern> = match reserved_topic(topic) {
            true => Vec::new(),
            false => self.topic_patterns.iter().filter(|p| p.regex.is_match(topic)).collect(),
        };
        if matching.is_empty() {
            return exact.cloned();
        }
        let mut routes = match exact {
            Some(routes) => TopicRoutes::clone(routes),
            None => TopicRoutes::new(Source::from_config(self.sources.get(topic))),
        };
        for pattern in matching {
            for (tag, route) in &pattern.routes {
                routes.add(tag, Arc::clone(route));
            }
        }
        Some(Arc::new(routes))
    }

    /// The routes of a source topic, if any pigeon listens there.
    pub fn topic(&self, topic: &str) -> Option<Arc<TopicRoutes>> {
        match self.lookup(topic) {
            Lookup::Routes(routes) => Some(routes),
            Lookup::Flown(_) | Lookup::Nothing => None,
        }
    }

    /// A live pigeon's route.
    pub fn route(&self, id: &str) -> Option<&Arc<Route>> {
        self.by_id.get(id)
    }

    /// The pigeon a flown letter names (its `ce_pigeon` header); the error explains a letter
    /// that names none, or one that is unknown, disabled or not live.
    pub fn flown(&self, pigeon: Option<&str>) -> Result<&Arc<Route>, String> {
        let pigeon = pigeon.filter(|p| !p.is_empty()).ok_or_else(|| {
            format!(
                "a letter on {INGRESS} must name its pigeon in the {} header",
                pigeon_wire::header::PIGEON
            )
        })?;
        self.by_id
            .get(pigeon)
            .ok_or_else(|| format!("pigeon {pigeon:?} is unknown, disabled or outside its live window"))
    }

    /// What the path's consumer subscribes to: every source topic and topic pattern, sorted.
    /// The router always reads [`INGRESS`] too (letters flown to a pigeon that is gone are
    /// parked, not left unread).
    pub fn consumed_topics(&self) -> Vec<String> {
        let mut topics = self.source_topics();
        topics.extend(self.topic_patterns.iter().map(|p| p.regex.as_str().to_owned()));
        if self.paths == Paths::Deliver {
            topics.push(INGRESS.to_owned());
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// Concrete source topics the router must consume, sorted.
    pub fn source_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.topics.keys().cloned().collect();
        topics.sort();
        topics
    }

    /// Since when a subscription (a topic, or a topic pattern as written) has had a live
    /// pigeon: the earliest `live_since` of its own pigeons.
    pub fn subscription_since(&self, entry: &str) -> Option<i64> {
        if entry.starts_with('^') {
            let pattern = self.topic_patterns.iter().find(|p| p.regex.as_str() == entry)?;
            pattern.routes.iter().map(|(_, r)| r.live_since).min()
        } else {
            self.topics.get(entry)?.routes().map(|r| r.live_since).min()
        }
    }

    /// The next instant (unix ms) at which a live window changes what the table holds.
    pub fn next_change(&self) -> Option<i64> {
        self.next_change
    }

    /// Every destination topic, sorted.
    pub fn destination_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> =
            self.by_id.values().flat_map(|r| r.destinations.iter().map(|d| d.topic.clone())).collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// The dictionary and the capabilities' required fields.
    pub fn contracts(&self) -> &Contracts {
        &self.contracts
    }

    /// The same, shared.
    pub fn contracts_arc(&self) -> Arc<Contracts> {
        Arc::clone(&self.contracts)
    }

    /// Pigeons in the table.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no pigeon is in the table.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Checks one pigeon; every problem, each prefixed with the pigeon's id.
pub fn validate(spec: &PigeonSpec) -> Result<(), CompileErrors> {
    compile_one(&VersionedPigeon { spec: spec.clone(), version: 1, saved_at: crate::clock::now_ms() })
        .map(|_| ())
        .map_err(CompileErrors)
}

/// Where a stored pigeon's window stands at `now_ms`, or why it does not compile.
pub fn standing(pigeon: &VersionedPigeon, now_ms: i64) -> Result<Phase, Vec<String>> {
    compile_one(pigeon).map(|(route, _)| route.window.map_or(Phase::Live, |w| w.phase(now_ms)))
}

/// Checks a `match.topic`: a topic name, or a regular expression starting with `^`.
fn validate_source(topic: &str) -> Result<Option<Regex>, String> {
    if !topic.starts_with('^') {
        return validate_topic(topic).map(|()| None);
    }
    // librdkafka subscribes with POSIX extended regular expressions: refuse what only Rust's
    // engine knows, or the router could not subscribe at all.
    const NOT_POSIX: [&str; 16] = [
        "(?", "\\d", "\\D", "\\w", "\\W", "\\s", "\\S", "\\b", "\\B", "\\p", "\\P", "\\A", "\\z", "*?", "+?",
        "??",
    ];
    if let Some(bad) = NOT_POSIX.iter().find(|s| topic.contains(*s)) {
        return Err(format!(
            "topic pattern {topic:?} uses `{bad}`, which POSIX regular expressions (librdkafka's) lack; \
             use classes such as [0-9] or [a-z_-] and plain groups"
        ));
    }
    let regex = Regex::new(topic).map_err(|e| format!("topic pattern {topic:?} does not compile: {e}"))?;
    if regex.is_match(INGRESS) {
        return Err(format!("topic pattern {topic:?} matches {INGRESS}; fly to pigeons by id instead"));
    }
    Ok(Some(regex))
}

fn compile_one(pigeon: &VersionedPigeon) -> Result<(Route, TagPattern), Vec<String>> {
    let spec = &pigeon.spec;
    let mut errors = Vec::new();
    let mut error = |what: String| errors.push(format!("pigeon {:?}: {what}", spec.id));

    if spec.id.is_empty() || spec.id.len() > 128 {
        error("id must be 1 to 128 characters".into());
    } else if !spec.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)) {
        error("id may use only lower-case letters, digits, `.`, `_` and `-`".into());
    } else if ["apply", "test", "validate"].contains(&spec.id.as_str()) {
        error("id is reserved (it names an API action)".into());
    }
    let source = validate_source(&spec.matcher.topic);
    if let Err(e) = &source {
        error(format!("match.topic: {e}"));
    }
    // Whether a destination topic is one this pigeon reads.
    let reads = |topic: &str| match &source {
        Ok(Some(regex)) => !reserved_topic(topic) && regex.is_match(topic),
        _ => topic == spec.matcher.topic,
    };
    let pattern = TagPattern::parse(&spec.matcher.tag);
    if let Err(e) = &pattern {
        error(format!("match.tag: {e}"));
    }
    let archive = spec.action == Action::Archive;
    if archive && !spec.destinations.is_empty() {
        error("an archive pigeon keeps letters in the archive; it has no destinations".into());
    } else if !archive && spec.destinations.is_empty() {
        error("has no destinations".into());
    }
    let mut destinations = Vec::with_capacity(spec.destinations.len());
    for (i, dest) in spec.destinations.iter().enumerate() {
        match resolve(dest) {
            Ok(d) => {
                if let Ok(p) = &pattern {
                    if reads(&d.topic) && p.matches(&d.tag) {
                        error(format!(
                            "destinations[{i}]: {}/{} would be matched again by this pigeon (a loop)",
                            d.topic, d.tag
                        ));
                    }
                }
                if destinations.contains(&d) {
                    error(format!("destinations[{i}]: {}/{} is listed twice", d.topic, d.tag));
                }
                destinations.push(d);
            }
            Err(e) => error(format!("destinations[{i}]: {e}")),
        }
    }
    let script = match (spec.action, &spec.script) {
        (Action::Forward | Action::Archive, None) => None,
        (action @ (Action::Forward | Action::Archive), Some(_)) => {
            error(format!("has a script but its action is {} (set action = script)", action.as_str()));
            None
        }
        (Action::Script, None) => {
            error("action script needs a script".into());
            None
        }
        (Action::Script, Some(source)) => {
            if destinations.iter().any(|d| reads(&d.topic)) {
                error(
                    "a script may emit any tag, so it may not send to its own source topic (a loop)".into(),
                );
            }
            match script::default_engine().compile(source) {
                Ok(compiled) => Some(RouteScript {
                    compiled,
                    destinations: script_destinations(&spec.destinations).unwrap_or_default(),
                }),
                Err(e) => {
                    error(format!("script: {e}"));
                    None
                }
            }
        }
    };
    let filter = match (&spec.matcher.filter, archive) {
        (None, _) => None,
        (Some(_), false) => {
            error(
                "match.filter is for archive pigeons (forward pigeons never read the payload; a script \
                 filters in its script)"
                    .into(),
            );
            None
        }
        (Some(source), true) => {
            script::default_engine().compile(source).map_err(|e| error(format!("match.filter: {e}"))).ok()
        }
    };
    if archive && !spec.dictionary.is_off() {
        error("an archive pigeon keeps letters as they came: its dictionary mode is off".into());
    }
    if archive && spec.retry.is_some() {
        error("retry is for deliveries; an archive pigeon delivers nothing".into());
    }
    let retry = Schedule::parse(spec.retry.as_deref()).unwrap_or_else(|e| {
        error(e);
        Schedule::default()
    });
    let window = spec.window.as_ref().and_then(|w| {
        Window::compile(w, pigeon.saved_at).map_err(|problems| problems.into_iter().for_each(&mut error)).ok()
    });
    let live_since = window.map_or(pigeon.saved_at, |w| w.start.max(pigeon.saved_at));
    match pattern {
        Ok(pattern) if errors.is_empty() => Ok((
            Route {
                counts: crate::counters::book().of(&spec.id),
                metrics: Default::default(),
                id: Arc::from(spec.id.as_str()),
                version: pigeon.version,
                action: spec.action,
                destinations,
                script,
                filter,
                dictionary: spec.dictionary,
                retry,
                window,
                live_since,
            },
            pattern,
        )),
        _ => Err(errors),
    }
}

/// Resolves a destination to its topic and tag.
pub fn resolve(dest: &DestinationSpec) -> Result<Destination, String> {
    match (&dest.capability, &dest.topic, &dest.tag) {
        (Some(cap), None, None) => {
            let (module, capability) = cap
                .split_once('/')
                .ok_or_else(|| format!("capability {cap:?} must be written module/capability"))?;
            if module.is_empty() || !module.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) {
                return Err(format!("capability {cap:?}: module name uses letters, digits, `_` and `-`"));
            }
            validate_tag(capability).map_err(|e| format!("capability {cap:?}: {e}"))?;
            Ok(Destination { topic: module_topic(module), tag: capability.to_owned() })
        }
        (None, Some(topic), Some(tag)) => {
            validate_destination_topic(topic)?;
            validate_tag(tag)?;
            Ok(Destination { topic: topic.clone(), tag: tag.clone() })
        }
        (None, Some(_), None) => Err("a topic destination needs a tag".into()),
        (None, None, _) => Err("set capability, or topic and tag".into()),
        (Some(_), _, _) => Err("set capability, or topic and tag, not both".into()),
    }
}

/// Checks a topic letters may be sent to: a valid name, and neither one of the bus's own
/// topics (`pigeon.ingress`, `pigeon.registry`, `pigeon.failed`, `pigeon.receipts`,
/// `pigeon.control`, or any other `pigeon.` name but a module topic `pigeon.module.…`) nor one of
/// Kafka's internal ones (`__…`). A letter there would be read as a flown letter, a
/// registration, a failure report or a notice.
pub fn validate_destination_topic(topic: &str) -> Result<(), String> {
    validate_topic(topic)?;
    if topic.starts_with("__") {
        return Err(format!("topic {topic:?} is Kafka's own (a name starting with `__`)"));
    }
    if topic.starts_with("pigeon.") && !topic.starts_with("pigeon.module.") {
        return Err(format!(
            "topic {topic:?} is one of the bus's own topics; letters go to source, lane or module (`pigeon.module.…`) topics"
        ));
    }
    Ok(())
}

/// Checks a Kafka topic name.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err(format!("topic {topic:?} must be 1 to 249 characters"));
    }
    if topic == "." || topic == ".." || !topic.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!("topic {topic:?} may use only letters, digits, `.`, `_` and `-`"));
    }
    Ok(())
}

/// Names a destination as operators write it.
pub fn destination_name(spec: &DestinationSpec) -> String {
    match (&spec.capability, &spec.topic) {
        (Some(capability), _) => capability.clone(),
        (None, Some(topic)) => topic.clone(),
        _ => String::new(),
    }
}

/// The script's view of a pigeon's destinations.
pub fn script_destinations(specs: &[DestinationSpec]) -> Result<Vec<ScriptDestination>, String> {
    specs
        .iter()
        .map(|spec| {
            let d = resolve(spec)?;
            Ok(ScriptDestination { name: destination_name(spec), topic: d.topic, tag: d.tag })
        })
        .collect()
}

/// The route tables an instance runs, with what was left out of them. The watcher builds them
/// all from one load of the store, with the same contracts; nothing else builds tables for a
/// running role.
#[derive(Debug)]
pub struct Routes {
    /// The live forward and script pigeons: the router's.
    pub table: Arc<RouteTable>,
    /// Every enabled forward and script pigeon, whatever its live window (a letter read again
    /// keeps its own time, which the windows judge): what the retrier, replays and `POST /fly`
    /// deliver through.
    pub redeliver: Arc<RouteTable>,
    /// The live archive pigeons: the archiver's.
    pub archive: Arc<RouteTable>,
    /// Pigeons that do not compile.
    pub quarantined: Vec<Quarantined>,
    /// Bumped by every rebuild.
    pub generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::spec::MatchSpec;
    use crate::route::WindowSpec;

    fn pigeon(id: &str, topic: &str, tag: &str, dests: Vec<DestinationSpec>) -> VersionedPigeon {
        VersionedPigeon {
            spec: PigeonSpec {
                id: id.into(),
                name: String::new(),
                owner: String::new(),
                enabled: true,
                action: Action::Forward,
                script: None,
                matcher: MatchSpec::new(topic, tag),
                destinations: dests,
                retry: None,
                window: None,
                dictionary: Default::default(),
            },
            version: 1,
            saved_at: 1_000,
        }
    }

    fn ids<'a>(routes: impl Iterator<Item = &'a Arc<Route>>) -> Vec<String> {
        let mut ids: Vec<String> = routes.map(|r| r.id.to_string()).collect();
        ids.sort();
        ids
    }

    fn archiving(id: &str, topic: &str, tag: &str) -> VersionedPigeon {
        let mut p = pigeon(id, topic, tag, Vec::new());
        p.spec.action = Action::Archive;
        p
    }

    /// Archive pigeons live in the archiver's table only; forward and script pigeons in the
    /// router's. Each table checks every pigeon, so both name every broken one.
    #[test]
    fn each_path_holds_its_own_pigeons() {
        let mut filtered = archiving("big-gifts", "live.gift", "gift.*");
        filtered.spec.matcher.filter = Some("payload.amount >= 100".into());
        let mut broken_filter = archiving("broken", "live.gift", "**");
        broken_filter.spec.matcher.filter = Some("payload.amount >=".into());
        let pigeons = [
            pigeon(
                "forward",
                "live.gift",
                "gift.sent",
                vec![DestinationSpec::capability("toy/progress.add")],
            ),
            filtered,
            archiving("flown", INGRESS, "progress.*"),
            broken_filter,
        ];
        let deliver = RouteTable::build(&pigeons, &BTreeMap::new(), None, Arc::default());
        let archive = RouteTable::build_for(Paths::Archive, &pigeons, &BTreeMap::new(), None, Arc::default());
        assert_eq!(ids(deliver.table.topic("live.gift").unwrap().matching("gift.sent")), ["forward"]);
        assert_eq!(deliver.table.consumed_topics(), ["live.gift", INGRESS], "sorted");
        assert!(deliver.table.route("big-gifts").is_none(), "the router never flies an archive pigeon");
        assert_eq!(ids(archive.table.topic("live.gift").unwrap().matching("gift.sent")), ["big-gifts"]);
        assert!(archive.table.topic(INGRESS).is_some(), "the archiver reads flown letters like any topic");
        assert_eq!(archive.table.consumed_topics(), ["live.gift", INGRESS]);
        assert!(archive.table.route("big-gifts").unwrap().filter.is_some());
        for built in [&deliver, &archive] {
            let quarantined: Vec<&str> = built.quarantined.iter().map(|q| q.id.as_str()).collect();
            assert_eq!(quarantined, ["broken"]);
            assert!(built.quarantined[0].problems[0].contains("match.filter"), "{:?}", built.quarantined);
        }
    }

    #[test]
    fn archive_pigeons_keep_letters_and_nothing_else() {
        let problems = |p: VersionedPigeon| compile_one(&p).err().unwrap_or_default();
        assert!(problems(archiving("keep", "live.gift", "**")).is_empty());
        let mut with_destination = archiving("keep", "live.gift", "**");
        with_destination.spec.destinations = vec![DestinationSpec::capability("toy/progress.add")];
        assert!(problems(with_destination)[0].contains("has no destinations"));
        let mut with_script = archiving("keep", "live.gift", "**");
        with_script.spec.script = Some("payload".into());
        assert!(problems(with_script)[0].contains("its action is archive"));
        let mut normalizing = archiving("keep", "live.gift", "**");
        normalizing.spec.dictionary = crate::dictionary::Mode::Normalize;
        assert!(problems(normalizing)[0].contains("keeps letters as they came"));
        let mut with_retry = archiving("keep", "live.gift", "**");
        with_retry.spec.retry = Some(vec!["1s".into()]);
        assert!(problems(with_retry)[0].contains("delivers nothing"));
        let mut forward_filter =
            pigeon("fwd", "live.gift", "**", vec![DestinationSpec::capability("toy/progress.add")]);
        forward_filter.spec.matcher.filter = Some("true".into());
        assert!(problems(forward_filter)[0].contains("match.filter is for archive pigeons"));
        assert!(problems(pigeon("fwd", "live.gift", "**", Vec::new()))[0].contains("has no destinations"));
    }

    #[test]
    fn letters_find_their_pigeons() {
        let table = RouteTable::compile(
            &[
                pigeon(
                    "exact",
                    "live.gift",
                    "gift.sent",
                    vec![DestinationSpec::capability("act-toy/progress.add")],
                ),
                pigeon("wild", "live.gift", "gift.*", vec![DestinationSpec::topic("lane.gifts", "gift")]),
                pigeon("all", "live.gift", "**", vec![DestinationSpec::capability("audit/record")]),
                pigeon(
                    "views",
                    "live.view",
                    "view.*",
                    vec![DestinationSpec::capability("act-toy/view.count")],
                ),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let gifts = table.topic("live.gift").unwrap();
        assert_eq!(ids(gifts.matching("gift.sent")), ["all", "exact", "wild"]);
        assert_eq!(ids(gifts.matching("gift.combo")), ["all", "wild"]);
        assert_eq!(ids(gifts.matching("follow.new")), ["all"]);
        assert_eq!(ids(gifts.matching_untagged()), ["all"]);
        assert!(table.topic("live.view").unwrap().matching("gift.sent").next().is_none());
        assert!(table.topic("live.like").is_none());
        assert_eq!(table.source_topics(), ["live.gift", "live.view"]);

        let exact = gifts.matching("gift.sent").find(|r| &*r.id == "exact").unwrap();
        assert_eq!(
            exact.destinations,
            [Destination { topic: "pigeon.module.act-toy".into(), tag: "progress.add".into() }]
        );
    }

    /// Patterns are indexed by their first segment; a letter must still find every pattern
    /// that matches it, wherever its wildcards are, and no other.
    #[test]
    fn tag_patterns_are_found_through_their_first_segment() {
        let to = || vec![DestinationSpec::topic("lane.out", "out")];
        let table = RouteTable::compile(
            &[
                pigeon("gift-one", "live.gift", "gift.*", to()),
                pigeon("gift-rest", "live.gift", "gift.**", to()),
                pigeon("gift-combo-end", "live.gift", "gift.*.end", to()),
                pigeon("gifted", "live.gift", "gifted.*", to()),
                pigeon("any-sent", "live.gift", "*.sent", to()),
                pigeon("two", "live.gift", "*.*", to()),
                pigeon("like", "live.gift", "like.*", to()),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let gifts = table.topic("live.gift").unwrap();
        assert_eq!(ids(gifts.matching("gift.sent")), ["any-sent", "gift-one", "gift-rest", "two"]);
        assert_eq!(ids(gifts.matching("gift.combo.end")), ["gift-combo-end", "gift-rest"]);
        assert_eq!(ids(gifts.matching("gifted.sent")), ["any-sent", "gifted", "two"]);
        assert_eq!(ids(gifts.matching("like.sent")), ["any-sent", "like", "two"]);
        assert!(gifts.matching("gift").next().is_none(), "one segment: no pattern here takes it");
        assert!(gifts.matching("follow.new.x").next().is_none());
    }

    #[test]
    fn disabled_pigeons_match_nothing() {
        let mut p = pigeon("p", "live.gift", "gift.sent", vec![DestinationSpec::capability("m/c")]);
        p.spec.enabled = false;
        let table = RouteTable::compile(&[p], &BTreeMap::new()).unwrap();
        assert!(table.topic("live.gift").is_none());
        assert!(table.is_empty());
    }

    #[test]
    fn sources_say_where_the_tag_is() {
        let mut sources = BTreeMap::new();
        sources.insert(
            "legacy.gift".to_owned(),
            SourceConfig { tag_field: Some("event".into()), ..Default::default() },
        );
        let table = RouteTable::compile(
            &[
                pigeon("a", "legacy.gift", "gift", vec![DestinationSpec::capability("m/c")]),
                pigeon("b", "live.gift", "gift", vec![DestinationSpec::capability("m/c")]),
            ],
            &sources,
        )
        .unwrap();
        let legacy = table.topic("legacy.gift").unwrap();
        let legacy = &legacy.source;
        assert_eq!(legacy.tag, TagSource::Field("event".into()));
        assert!(legacy.reads_payload());
        let live = table.topic("live.gift").unwrap();
        let live = &live.source;
        assert_eq!(live.tag, TagSource::Header("ce_type".into()));
        assert_eq!(live.id_header, "ce_id");
        assert!(!live.reads_payload());
    }

    #[test]
    fn script_pigeons_compile_their_script_or_say_where_it_breaks() {
        let mut ok =
            pigeon("s", "live.gift", "gift.*", vec![DestinationSpec::capability("act-toy/progress.add")]);
        ok.spec.action = Action::Script;
        ok.spec.script = Some("payload".into());
        let table = RouteTable::compile(std::slice::from_ref(&ok), &BTreeMap::new()).unwrap();
        let routes = table.topic("live.gift").unwrap();
        let route = routes.matching("gift.sent").next().unwrap();
        let script = route.script.as_ref().expect("compiled");
        assert_eq!(script.destinations[0].name, "act-toy/progress.add");

        let mut broken = ok.clone();
        broken.spec.script = Some("let x = 1;\nlet y = ;".into());
        let mut missing = ok.clone();
        missing.spec.id = "missing".into();
        missing.spec.script = None;
        let mut stray = ok.clone();
        stray.spec.id = "stray".into();
        stray.spec.action = Action::Forward;
        let mut looping = ok.clone();
        looping.spec.id = "looping".into();
        looping.spec.destinations = vec![DestinationSpec::topic("live.gift", "other")];
        let errors = RouteTable::compile(&[broken, missing, stray, looping], &BTreeMap::new()).unwrap_err().0;
        let all = errors.join("\n");
        for expected in [
            "\"s\": script: script does not compile at line 2, column 9",
            "\"missing\": action script needs a script",
            "\"stray\": has a script but its action is forward",
            "\"looping\": a script may emit any tag, so it may not send to its own source topic",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn every_problem_of_every_pigeon_is_listed() {
        let errors = RouteTable::compile(
            &[
                pigeon("Bad Id", "live gift", "gift..x", vec![]),
                pigeon(
                    "loop",
                    "live.gift",
                    "gift.*",
                    vec![DestinationSpec::topic("live.gift", "gift.again")],
                ),
                pigeon(
                    "dests",
                    "live.gift",
                    "gift",
                    vec![
                        DestinationSpec::capability("no-slash"),
                        DestinationSpec { capability: None, topic: Some("t".into()), tag: None },
                        DestinationSpec { capability: None, topic: None, tag: None },
                        DestinationSpec::capability("m/c"),
                        DestinationSpec::capability("m/c"),
                    ],
                ),
                pigeon("loop", "live.gift", "gift", vec![DestinationSpec::capability("m/c")]),
            ],
            &BTreeMap::new(),
        )
        .unwrap_err()
        .0;
        let all = errors.join("\n");
        for expected in [
            "\"Bad Id\": id may use only",
            "\"Bad Id\": match.topic",
            "\"Bad Id\": match.tag",
            "\"Bad Id\": has no destinations",
            "\"loop\": destinations[0]: live.gift/gift.again would be matched again",
            "\"dests\": destinations[0]: capability \"no-slash\" must be written module/capability",
            "\"dests\": destinations[1]: a topic destination needs a tag",
            "\"dests\": destinations[2]: set capability, or topic and tag",
            "\"dests\": destinations[4]: pigeon.module.m/c is listed twice",
            "\"loop\": id is used twice",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(errors.len(), 10, "{all}");
    }

    #[test]
    fn pigeons_that_do_not_compile_are_quarantined_and_the_rest_run() {
        let good = pigeon("good", "live.gift", "gift.sent", vec![DestinationSpec::capability("m/c")]);
        let mut bad = pigeon("bad", "live.gift", "gift..x", vec![DestinationSpec::capability("m/c")]);
        bad.version = 3;
        let built = RouteTable::build(&[good, bad], &BTreeMap::new(), None, Arc::default());
        assert_eq!(built.table.len(), 1);
        assert!(built.table.route("good").is_some() && built.table.route("bad").is_none());
        assert_eq!(built.quarantined.len(), 1);
        let q = &built.quarantined[0];
        assert_eq!((q.id.as_str(), q.version), ("bad", 3));
        assert!(q.problems[0].contains("\"bad\": match.tag"), "{:?}", q.problems);
    }

    #[test]
    fn a_clocked_table_holds_the_pigeons_whose_window_it_consumes_for() {
        let windowed = |id: &str, start: &str, end: &str| {
            let mut p = pigeon(id, &format!("live.{id}"), "**", vec![DestinationSpec::capability("m/c")]);
            p.spec.window = Some(WindowSpec { start: Some(start.into()), end: Some(end.into()), ttl: None });
            p
        };
        let pigeons = [
            windowed("past", "2025-12-01T10:00:00Z", "2025-12-01T11:00:00Z"),
            windowed("now", "2025-12-01T11:30:00Z", "2025-12-01T12:30:00Z"),
            windowed("soon", "2025-12-01T12:00:30Z", "2025-12-01T13:00:00Z"),
            windowed("later", "2025-12-01T14:00:00Z", "2025-12-01T15:00:00Z"),
            pigeon("always", "live.always", "**", vec![DestinationSpec::capability("m/c")]),
        ];
        let noon = 1_764_590_400_000; // 2025-12-01T12:00:00Z
        let clock = Clock { now_ms: noon, lead_ms: 60_000, grace_ms: 60_000 };
        let built = RouteTable::build(&pigeons, &BTreeMap::new(), Some(clock), Arc::default());
        let mut ids: Vec<&str> = built.table.by_id.keys().map(|k| &**k).collect();
        ids.sort();
        assert_eq!(ids, ["always", "now", "soon"], "soon starts within the lead");
        assert_eq!(built.phases["past"], Phase::Ended);
        assert_eq!(built.phases["now"], Phase::Live);
        assert_eq!(built.phases["soon"], Phase::Scheduled);
        assert_eq!(built.phases["always"], Phase::Live);
        // Next: `soon` goes live at 12:00:30.
        assert_eq!(built.table.next_change(), Some(noon + 30_000));
        // Without a clock (the retrier, dry runs) every enabled pigeon is there.
        assert_eq!(RouteTable::build(&pigeons, &BTreeMap::new(), None, Arc::default()).table.len(), 5);
        // A letter is judged by its own time.
        let now = built.table.route("now").unwrap();
        assert!(now.takes(noon) && !now.takes(noon + 3_600_000));
        assert_eq!(now.live_since, noon - 30 * 60_000);
    }

    #[test]
    fn topic_patterns_match_topics_but_never_the_bus_s_own() {
        let table = RouteTable::compile(
            &[
                pigeon("any-live", "^live\\..*", "gift.*", vec![DestinationSpec::capability("m/c")]),
                pigeon("gift", "live.gift", "gift.sent", vec![DestinationSpec::capability("m/d")]),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(ids(table.topic("live.gift").unwrap().matching("gift.sent")), ["any-live", "gift"]);
        assert_eq!(ids(table.topic("live.other").unwrap().matching("gift.combo")), ["any-live"]);
        assert!(table.topic("other.gift").is_none());
        assert!(matches!(table.lookup(INGRESS), Lookup::Flown(_)));
        assert_eq!(table.consumed_topics(), ["^live\\..*", "live.gift", "pigeon.ingress"]);

        let errors = RouteTable::compile(
            &[
                pigeon("broken", "^live(", "**", vec![DestinationSpec::capability("m/c")]),
                pigeon("greedy", "^pigeon\\..*", "**", vec![DestinationSpec::capability("m/c")]),
                pigeon("loop", "^live\\..*", "**", vec![DestinationSpec::topic("live.out", "x")]),
                pigeon("rust-only", "^live\\.(?:a|b)\\d", "**", vec![DestinationSpec::capability("m/c")]),
            ],
            &BTreeMap::new(),
        )
        .unwrap_err()
        .0
        .join("\n");
        assert!(
            errors.contains("\"broken\": match.topic: topic pattern \"^live(\" does not compile"),
            "{errors}"
        );
        assert!(errors.contains("\"greedy\": match.topic: topic pattern"), "{errors}");
        assert!(errors.contains("\"loop\": destinations[0]: live.out/x would be matched again"), "{errors}");
        assert!(
            errors.contains("\"rust-only\": match.topic: topic pattern \"^live\\\\.(?:a|b)\\\\d\" uses `(?`"),
            "{errors}"
        );
    }

    #[test]
    fn no_destination_is_one_of_the_bus_topics_or_kafkas() {
        let to = |topic: &str| pigeon("p", "live.gift", "**", vec![DestinationSpec::topic(topic, "t")]);
        for topic in [
            "pigeon.ingress",
            "pigeon.registry",
            "pigeon.failed",
            "pigeon.receipts",
            "pigeon.control",
            "pigeon.other",
            "__consumer_offsets",
        ] {
            let errors = RouteTable::compile(&[to(topic)], &BTreeMap::new()).unwrap_err().0.join("\n");
            assert!(errors.contains("destinations[0]: topic") && errors.contains("own"), "{topic}: {errors}");
        }
        for topic in ["pigeon.module.act-toy", "lane.audit"] {
            assert!(RouteTable::compile(&[to(topic)], &BTreeMap::new()).is_ok(), "{topic}");
        }
    }
}
