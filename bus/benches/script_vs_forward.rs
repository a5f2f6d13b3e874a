//! CPU time per letter: a typical cleansing script next to the plain forward path, without a
//! broker. Prints figures; asserts nothing. Run with
//! `cargo bench -p pigeon-bus --bench script_vs_forward`.
//!
//! Both paths do the router's per-letter work up to the producer call: read the tag and id,
//! look the pigeon up, build the output headers; the script path also runs the script
//! (`scripts/rhai/gift-to-progress.rhai`, 19 lines), which parses and serializes the payload.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pigeon_bus::route::{Action, DestinationSpec, MatchSpec, PigeonSpec, RouteTable, VersionedPigeon};
use pigeon_bus::router::output::output_headers;
use pigeon_bus::script::{self, ScriptLetter};
use pigeon_bus::source;
use pigeon_sdk::LetterId;
use rdkafka::message::{Headers, Message, OwnedMessage};

mod common;

const LETTERS: usize = 20_000;
const ROUNDS: usize = 5;

fn pigeon(id: &str, script: Option<String>) -> VersionedPigeon {
    let spec = PigeonSpec {
        id: id.into(),
        name: String::new(),
        owner: String::new(),
        enabled: true,
        action: if script.is_some() { Action::Script } else { Action::Forward },
        script,
        matcher: MatchSpec::new("live.gift", "gift.sent"),
        destinations: vec![DestinationSpec::capability("act-toy/progress.add")],
        retry: None,
        window: None,
        dictionary: Default::default(),
    };
    VersionedPigeon { spec, version: 1, saved_at: 0 }
}

fn letters() -> Vec<OwnedMessage> {
    common::gift_messages(
        LETTERS,
        |n, room| serde_json::json!({"uid": n, "aid": n % 100, "roomId": room, "giftId": 7, "giftCount": 1 + n % 5, "price": 10}),
    )
}

/// This process's CPU time.
fn cpu_time() -> Duration {
    common::cpu_time(std::process::id())
}

fn measure(name: &str, messages: &[OwnedMessage], mut per_letter: impl FnMut(&OwnedMessage) -> usize) -> f64 {
    let mut outputs = 0;
    for m in messages.iter().take(1000) {
        outputs += per_letter(m); // warm up
    }
    let (wall, cpu) = (Instant::now(), cpu_time());
    for _ in 0..ROUNDS {
        for m in messages {
            outputs += per_letter(m);
        }
    }
    let letters = (ROUNDS * messages.len()) as f64;
    let wall_ns = wall.elapsed().as_nanos() as f64 / letters;
    let cpu_ns = (cpu_time() - cpu).as_nanos() as f64 / letters;
    println!("{name:<10} {wall_ns:>9.0} ns/letter wall  {cpu_ns:>9.0} ns/letter CPU  ({outputs} outputs)");
    // /proc counts in 10 ms ticks: fall back to wall time on a run too short to register.
    if cpu_ns > 0.0 {
        cpu_ns
    } else {
        wall_ns
    }
}

fn main() {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/rhai/gift-to-progress.rhai"
    ))
    .expect("the example script");
    let forward = RouteTable::compile(&[pigeon("fwd", None)], &BTreeMap::new()).unwrap();
    let scripted = RouteTable::compile(&[pigeon("scr", Some(source))], &BTreeMap::new()).unwrap();
    let messages = letters();
    println!("{LETTERS} gift letters x {ROUNDS} rounds, one pigeon, one destination, one thread");

    let fwd = measure("forward", &messages, |m| {
        let routes = forward.topic(m.topic()).unwrap();
        let meta = source::read(m, &routes.source).unwrap();
        let tag = meta.tag.as_deref().unwrap();
        let mut n = 0;
        for route in routes.matching(tag) {
            for d in &route.destinations {
                let headers = output_headers(m, meta.id.unwrap(), &d.tag, &route.id, false);
                n += std::hint::black_box(headers).count();
            }
        }
        n
    });

    let engine = script::default_engine();
    let identity = engine.compile("payload").unwrap();
    let scripted_routes = scripted.topic("live.gift").unwrap();
    let destinations =
        &scripted_routes.matching("gift.sent").next().unwrap().script.as_ref().unwrap().destinations;
    measure("identity", &messages, |m| {
        let letter = ScriptLetter {
            id: "x",
            tag: "gift.sent",
            source: "s",
            key: m.key(),
            time: None,
            payload: m.payload().unwrap(),
        };
        engine.run(&identity, &letter, destinations).unwrap().len()
    });
    let scr = measure("script", &messages, |m| {
        let routes = scripted.topic(m.topic()).unwrap();
        let meta = source::read(m, &routes.source).unwrap();
        let tag = meta.tag.as_deref().unwrap();
        let id = meta.id.unwrap();
        let mut n = 0;
        for route in routes.matching(tag) {
            let script = route.script.as_ref().unwrap();
            let letter = ScriptLetter {
                id,
                tag,
                source: "live-platform",
                key: m.key(),
                time: None,
                payload: m.payload().unwrap(),
            };
            for (i, out) in
                engine.run(&script.compiled, &letter, &script.destinations).unwrap().into_iter().enumerate()
            {
                let out_id = LetterId::derived_output(id, route.version, i, 1_700_000_000_000).to_string();
                let headers = output_headers(m, &out_id, &out.tag, &route.id, true);
                n += std::hint::black_box((headers, out.payload)).0.count();
            }
        }
        n
    });
    println!("script / forward: {:.1}x CPU per letter (goal: at most 5x)", scr / fwd);
}
