//! Micro-benchmarks of the router's per-letter steps, without a broker (criterion). Run with
//! `cargo bench -p pigeon-bus --bench micro`.
//!
//! - `decode`: reading a letter's tag and id from its headers (what the router does), and
//!   reading a whole letter with the SDK (headers and the JSON payload, what a module does);
//! - `match`: finding a gift's pigeons among 10, 1,000 and 10,000 (one in ten on a tag
//!   pattern);
//! - `forward`: the whole forward step (read, match, count, build both outputs' headers);
//! - `script`: the script step (read, match, run `bench/gift-to-progress-and-rank.rhai`, which
//!   parses and writes the payload, build both outputs' headers).

use std::collections::BTreeMap;

use common::{forward, table};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pigeon_bus::route::{Action, DestinationSpec, MatchSpec, PigeonSpec, RouteTable, VersionedPigeon};
use pigeon_bus::router::output::output_headers;
use pigeon_bus::script::{self, ScriptLetter};
use pigeon_bus::source;
use pigeon_sdk::LetterId;
use rdkafka::message::{Headers, Message, OwnedMessage};

mod common;

const SCRIPT: &str = include_str!("../../bench/gift-to-progress-and-rank.rhai");

fn gifts() -> Vec<OwnedMessage> {
    common::gift_messages(
        1_000,
        |n, room| serde_json::json!({"uid": 100_000 + n, "aid": 1_000 + n % 100, "roomId": room, "giftId": 7, "giftCount": 1 + n % 5, "price": 10}),
    )
}

fn script_table() -> RouteTable {
    let spec = PigeonSpec {
        id: "gift-progress".into(),
        name: String::new(),
        owner: String::new(),
        enabled: true,
        action: Action::Script,
        script: Some(SCRIPT.into()),
        matcher: MatchSpec::new("live.gift", "gift.sent"),
        destinations: vec![
            DestinationSpec::topic("lane.points", "progress.add"),
            DestinationSpec::topic("lane.rank", "progress.add"),
        ],
        retry: None,
        window: None,
        dictionary: Default::default(),
    };
    RouteTable::compile(&[VersionedPigeon { spec, version: 1, saved_at: 0 }], &BTreeMap::new())
        .expect("compiles")
}

/// Runs `step` over the letters in turn, one letter per iteration.
fn per_letter<'a>(
    messages: &'a [OwnedMessage],
    mut step: impl FnMut(&'a OwnedMessage) -> usize + 'a,
) -> impl FnMut() -> usize + 'a {
    let mut i = 0;
    move || {
        i = (i + 1) % messages.len();
        step(&messages[i])
    }
}

fn decode(c: &mut Criterion) {
    let messages = gifts();
    let table = table(10, false);
    let routes = table.topic("live.gift").expect("gifts have pigeons");
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("tag and id (router)", |b| {
        b.iter(per_letter(&messages, |m| {
            let input = source::LetterHeaders::of(m);
            source::read(m, &input, &routes.source).expect("readable").tag.map_or(0, |t| t.len())
        }))
    });
    group.bench_function("whole letter (SDK)", |b| {
        b.iter(per_letter(&messages, |m| pigeon_sdk::Letter::from_message(m).expect("a letter").tag.len()))
    });
    group.finish();
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    group.throughput(Throughput::Elements(1));
    for pigeons in [10, 1_000, 10_000] {
        let table = table(pigeons, true);
        group.bench_with_input(BenchmarkId::new("pigeons", pigeons), &table, |b, table| {
            b.iter(|| {
                let routes = table.topic(std::hint::black_box("live.gift")).expect("gifts have pigeons");
                routes.matching(std::hint::black_box("gift.sent")).count()
            })
        });
    }
    group.finish();
}

fn forwarding(c: &mut Criterion) {
    let messages = gifts();
    let mut group = c.benchmark_group("forward");
    group.throughput(Throughput::Elements(1));
    for pigeons in [10, 10_000] {
        let table = table(pigeons, true);
        group.bench_function(BenchmarkId::new("pigeons", pigeons), |b| {
            b.iter(per_letter(&messages, |m| forward(&table, m)))
        });
    }
    group.finish();
}

fn scripting(c: &mut Criterion) {
    let messages = gifts();
    let table = script_table();
    let engine = script::default_engine();
    let mut group = c.benchmark_group("script");
    group.throughput(Throughput::Elements(1));
    group.bench_function("gift-to-progress", |b| {
        b.iter(per_letter(&messages, |m| {
            let routes = table.topic(m.topic()).expect("gifts have pigeons");
            let input = source::LetterHeaders::of(m);
            let meta = source::read(m, &input, &routes.source).expect("readable");
            let (tag, id) = (meta.tag.as_deref().expect("tagged"), meta.id.expect("with an id"));
            let mut n = 0;
            for route in routes.matching(tag) {
                let script = route.script.as_ref().expect("a script pigeon");
                let letter = ScriptLetter {
                    id,
                    tag,
                    source: "live-platform",
                    key: m.key(),
                    time: None,
                    payload: m.payload().expect("a payload"),
                };
                let outputs =
                    engine.run(&script.compiled, &letter, &script.destinations).expect("the script runs");
                for (i, out) in outputs.into_iter().enumerate() {
                    let out_id =
                        LetterId::derived_output(id, route.version, i, 1_700_000_000_000).to_string();
                    let headers = output_headers(m, &input, &out_id, &out.tag, &route.id, true, None);
                    n += std::hint::black_box((headers, out.payload)).0.count();
                }
            }
            n
        }))
    });
    group.finish();
}

criterion_group!(benches, decode, matching, forwarding, scripting);
criterion_main!(benches);
