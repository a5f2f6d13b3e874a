//! The compiled route table: validated, immutable, cheap to look letters up in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use super::pattern::{validate_tag, TagPattern};
use super::spec::{Action, DestinationSpec, PigeonSpec};
use crate::config::SourceConfig;
use crate::deadletter::schedule::Schedule;
use crate::script::{self, CompiledScript, ScriptDestination};

/// A pigeon as stored: its spec and version.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionedPigeon {
    /// The spec.
    pub spec: PigeonSpec,
    /// Version, starting at 1 and bumped by every change.
    pub version: i64,
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
    /// When its failed deliveries are tried again.
    pub retry: Schedule,
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
            (None, None) => TagSource::Header(pigeon_sdk::header::TYPE.into()),
        };
        Self { tag, id_header: config.id_header.unwrap_or_else(|| pigeon_sdk::header::ID.into()) }
    }

    /// Whether reading this source's letters needs the payload parsed.
    pub fn reads_payload(&self) -> bool {
        matches!(self.tag, TagSource::Field(_))
    }
}

/// The pigeons of one source topic.
#[derive(Debug)]
pub struct TopicRoutes {
    /// How to read the topic's letters.
    pub source: Source,
    exact: HashMap<String, Vec<Arc<Route>>>,
    patterns: Vec<(TagPattern, Arc<Route>)>,
}

impl TopicRoutes {
    /// The routes a tag matches: one hash probe, then only this topic's pattern pigeons.
    pub fn matching<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Arc<Route>> + 'a {
        let exact = self.exact.get(tag).into_iter().flatten();
        let patterns = self.patterns.iter().filter(move |(pattern, _)| pattern.matches(tag)).map(|(_, r)| r);
        exact.chain(patterns)
    }

    /// Whether any route could match a letter without a tag (only `**` pigeons do not care).
    pub fn matching_untagged(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.patterns.iter().filter(|(p, _)| p.as_str() == "**").map(|(_, r)| r)
    }
}

/// Every enabled pigeon, indexed by source topic.
#[derive(Debug, Default)]
pub struct RouteTable {
    topics: HashMap<String, TopicRoutes>,
    by_id: HashMap<Arc<str>, Arc<Route>>,
    pigeons: usize,
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

pub use pigeon_sdk::registry::module_topic;

/// The topic modules fly letters on: each is routed to the pigeon its `ce_pigeon` header
/// names, whatever its tag. A pigeon whose `match.topic` is this one takes only flown letters.
pub const INGRESS: &str = pigeon_sdk::INGRESS;

/// How flown letters are read: tag and id from the CloudEvents headers.
static FLOWN: std::sync::LazyLock<Source> = std::sync::LazyLock::new(|| Source::from_config(None));

impl RouteTable {
    /// Compiles pigeons into a table; returns every problem of every pigeon at once.
    pub fn compile(
        pigeons: &[VersionedPigeon],
        sources: &BTreeMap<String, SourceConfig>,
    ) -> Result<Self, CompileErrors> {
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        let mut table = RouteTable::default();
        for pigeon in pigeons {
            if !seen.insert(pigeon.spec.id.as_str()) {
                errors.push(format!("pigeon {:?}: id is used twice", pigeon.spec.id));
                continue;
            }
            let (route, pattern) = match compile_one(pigeon) {
                Ok(compiled) => compiled,
                Err(problems) => {
                    errors.extend(problems);
                    continue;
                }
            };
            if !pigeon.spec.enabled {
                continue;
            }
            table.pigeons += 1;
            table.by_id.insert(Arc::clone(&route.id), Arc::clone(&route));
            let topic = pigeon.spec.matcher.topic.clone();
            if topic == INGRESS {
                continue; // only flown to, by id
            }
            let routes = table.topics.entry(topic.clone()).or_insert_with(|| TopicRoutes {
                source: Source::from_config(sources.get(&topic)),
                exact: HashMap::new(),
                patterns: Vec::new(),
            });
            match pattern.as_exact() {
                Some(tag) => routes.exact.entry(tag.to_owned()).or_default().push(route),
                None => routes.patterns.push((pattern, route)),
            }
        }
        if errors.is_empty() {
            Ok(table)
        } else {
            Err(CompileErrors(errors))
        }
    }

    /// The routes of a source topic, if any pigeon listens there.
    pub fn topic(&self, topic: &str) -> Option<&TopicRoutes> {
        self.topics.get(topic)
    }

    /// An enabled pigeon's route.
    pub fn route(&self, id: &str) -> Option<&Arc<Route>> {
        self.by_id.get(id)
    }

    /// How to read a topic's letters: the configured source, or the CloudEvents headers for
    /// [`INGRESS`]; `None` when no pigeon listens there.
    pub fn source_of(&self, topic: &str) -> Option<&Source> {
        if topic == INGRESS {
            return (!self.by_id.is_empty()).then_some(&*FLOWN);
        }
        self.topics.get(topic).map(|t| &t.source)
    }

    /// The pigeon a flown letter names (its `ce_pigeon` header); the error explains a letter
    /// that names none, or one that is unknown or disabled.
    pub fn flown(&self, pigeon: Option<&str>) -> Result<&Arc<Route>, String> {
        let pigeon = pigeon.filter(|p| !p.is_empty()).ok_or_else(|| {
            format!("a letter on {INGRESS} must name its pigeon in the {} header", pigeon_sdk::header::PIGEON)
        })?;
        self.by_id.get(pigeon).ok_or_else(|| format!("pigeon {pigeon:?} is unknown or disabled"))
    }

    /// The topics the router consumes: every source topic, and [`INGRESS`] while any pigeon
    /// is enabled (any pigeon can be flown to), sorted.
    pub fn consumed_topics(&self) -> Vec<String> {
        let mut topics = self.source_topics();
        if !self.by_id.is_empty() {
            topics.push(INGRESS.to_owned());
            topics.sort();
        }
        topics
    }

    /// Source topics the router must consume, sorted.
    pub fn source_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.topics.keys().cloned().collect();
        topics.sort();
        topics
    }

    /// Every destination topic, sorted.
    pub fn destination_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> =
            self.by_id.values().flat_map(|r| r.destinations.iter().map(|d| d.topic.clone())).collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Enabled pigeons in the table.
    pub fn len(&self) -> usize {
        self.pigeons
    }

    /// Whether no pigeon is enabled.
    pub fn is_empty(&self) -> bool {
        self.pigeons == 0
    }
}

/// Checks one pigeon; every problem, each prefixed with the pigeon's id.
pub fn validate(spec: &PigeonSpec) -> Result<(), CompileErrors> {
    compile_one(&VersionedPigeon { spec: spec.clone(), version: 1 }).map(|_| ()).map_err(CompileErrors)
}

fn compile_one(pigeon: &VersionedPigeon) -> Result<(Arc<Route>, TagPattern), Vec<String>> {
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
    if let Err(e) = validate_topic(&spec.matcher.topic) {
        error(format!("match.topic: {e}"));
    }
    let pattern = TagPattern::parse(&spec.matcher.tag);
    if let Err(e) = &pattern {
        error(format!("match.tag: {e}"));
    }
    if spec.destinations.is_empty() {
        error("has no destinations".into());
    }
    let mut destinations = Vec::with_capacity(spec.destinations.len());
    for (i, dest) in spec.destinations.iter().enumerate() {
        match resolve(dest) {
            Ok(d) => {
                if let Ok(p) = &pattern {
                    if d.topic == spec.matcher.topic && p.matches(&d.tag) {
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
        (Action::Forward, None) => None,
        (Action::Forward, Some(_)) => {
            error("has a script but its action is forward (set action = script)".into());
            None
        }
        (Action::Script, None) => {
            error("action script needs a script".into());
            None
        }
        (Action::Script, Some(source)) => {
            if destinations.iter().any(|d| d.topic == spec.matcher.topic) {
                error(
                    "a script may emit any tag, so it may not send to its own source topic (a loop)".into(),
                );
            }
            match script::default_engine().compile(source) {
                Ok(compiled) => Some(RouteScript {
                    compiled,
                    destinations: script::dryrun::script_destinations(&spec.destinations).unwrap_or_default(),
                }),
                Err(e) => {
                    error(format!("script: {e}"));
                    None
                }
            }
        }
    };
    let retry = Schedule::parse(spec.retry.as_deref()).unwrap_or_else(|e| {
        error(e);
        Schedule::default()
    });
    match pattern {
        Ok(pattern) if errors.is_empty() => Ok((
            Arc::new(Route {
                id: Arc::from(spec.id.as_str()),
                version: pigeon.version,
                action: spec.action,
                destinations,
                script,
                retry,
            }),
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
            validate_topic(topic)?;
            validate_tag(tag)?;
            Ok(Destination { topic: topic.clone(), tag: tag.clone() })
        }
        (None, Some(_), None) => Err("a topic destination needs a tag".into()),
        (None, None, _) => Err("set capability, or topic and tag".into()),
        (Some(_), _, _) => Err("set capability, or topic and tag, not both".into()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::spec::MatchSpec;

    fn pigeon(id: &str, topic: &str, tag: &str, dests: Vec<DestinationSpec>) -> VersionedPigeon {
        VersionedPigeon {
            spec: PigeonSpec {
                id: id.into(),
                name: String::new(),
                owner: String::new(),
                enabled: true,
                action: Action::Forward,
                script: None,
                matcher: MatchSpec { topic: topic.into(), tag: tag.into() },
                destinations: dests,
                retry: None,
            },
            version: 1,
        }
    }

    fn ids<'a>(routes: impl Iterator<Item = &'a Arc<Route>>) -> Vec<String> {
        let mut ids: Vec<String> = routes.map(|r| r.id.to_string()).collect();
        ids.sort();
        ids
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
        let legacy = &table.topic("legacy.gift").unwrap().source;
        assert_eq!(legacy.tag, TagSource::Field("event".into()));
        assert!(legacy.reads_payload());
        let live = &table.topic("live.gift").unwrap().source;
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
        let route = table.topic("live.gift").unwrap().matching("gift.sent").next().unwrap();
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
}
