//! What the benchmarks share: gift letters as the router reads them, a table of `n` pigeons
//! and the router's forward step over it, a process's CPU time. Each benchmark uses a part.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use pigeon_bus::route::{DestinationSpec, MatchSpec, PigeonSpec, RouteTable, VersionedPigeon};
use pigeon_bus::router::output::output_headers;
use pigeon_bus::source;
use pigeon_bus::telemetry;
use pigeon_core::plan;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::Timestamp;

/// `count` gift letters on `live.gift` as the router reads them: keyed by one of 100 rooms,
/// spread over 16 partitions, with the payload `payload(n, room)`.
pub fn gift_messages(count: usize, payload: impl Fn(usize, &str) -> serde_json::Value) -> Vec<OwnedMessage> {
    (0..count)
        .map(|n| {
            let room = format!("room-{}", n % 100);
            let letter = pigeon_sdk::Letter::new("live-platform", "gift.sent", payload(n, &room))
                .with_key(room.clone());
            OwnedMessage::new(
                Some(letter.payload_bytes()),
                letter.key.clone(),
                "live.gift".into(),
                Timestamp::CreateTime(1_700_000_000_000),
                (n % 16) as i32,
                n as i64,
                Some(letter.headers()),
            )
        })
        .collect()
}

/// User plus system CPU time of a process, from /proc (10 ms ticks).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

pub fn spec(id: String, topic: &str, tag: &str, destinations: Vec<DestinationSpec>) -> VersionedPigeon {
    let spec = PigeonSpec {
        id,
        name: String::new(),
        owner: String::new(),
        enabled: true,
        action: Default::default(),
        script: None,
        matcher: MatchSpec::new(topic, tag),
        destinations,
        retry: None,
        window: None,
        dictionary: Default::default(),
    };
    VersionedPigeon { spec, version: 1, saved_at: 0 }
}

/// `n` pigeons: the one that takes gifts (two destinations), and `n - 1` that do not; with
/// `patterns`, one in ten of those has a tag pattern.
pub fn table(n: usize, patterns: bool) -> RouteTable {
    pigeon_bus::prometheus::install();
    let mut pigeons = vec![spec(
        "gift-points".into(),
        "live.gift",
        "gift.sent",
        vec![
            DestinationSpec::topic("lane.points", "points.add"),
            DestinationSpec::topic("lane.rank", "rank.add"),
        ],
    )];
    for i in 1..n {
        let topic = if i % 2 == 0 { "live.gift".to_owned() } else { format!("live.t{}", i % 100) };
        let tag = if patterns && i % 10 == 0 { format!("act{i}.*") } else { format!("act{i}.done") };
        pigeons.push(spec(
            format!("p{i}"),
            &topic,
            &tag,
            vec![DestinationSpec::capability(&format!("m{i}/cap"))],
        ));
    }
    RouteTable::compile(&pigeons, &BTreeMap::new()).expect("the pigeons compile")
}

/// The per-letter step, counting into the Prometheus recorder the bus installs (installed by
/// [`table`], before the table resolves its series); returns the header count of the outputs built.
pub fn forward(table: &RouteTable, m: &OwnedMessage) -> usize {
    let routes = table.topic(m.topic()).expect("gifts have pigeons");
    let input = source::LetterHeaders::of(m);
    let meta = source::read(m, &input, &routes.source).expect("a readable letter");
    let tag = meta.tag.as_deref().expect("tagged");
    let id = meta.id.expect("with an id");
    let mut n = 0;
    // As the router: the sampling decision, and a span for a sampled letter.
    let span = telemetry::sampled(&input).and_then(|sampled| {
        let at = telemetry::At {
            pigeon: "gift-points",
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            letter_id: id,
        };
        telemetry::LetterSpan::start("route", sampled, at)
    });
    let trace = span.as_ref().map(|s| &s.traceparent);
    for route in routes.matching(tag) {
        route.counts.took();
        route.metrics.letters_in.increment(1);
        for planned in plan::forwards(route, id, m.key(), m.payload(), None, table.contracts()) {
            let destination = route.metrics.destination(planned.topic);
            let headers =
                output_headers(m, &input, &planned.id, &planned.tag, &route.id, planned.rewritten, trace);
            n += std::hint::black_box(headers).count();
            // What the delivery report adds per output (the router counts it there).
            route.metrics.delivered(destination, m.offset(), || Some(Duration::from_micros(700)));
        }
    }
    n
}
