//! Scripts as data: a script, a letter in, the letters out (or the error).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

fn destinations() -> Vec<ScriptDestination> {
    vec![
        ScriptDestination {
            name: "act-toy/progress.add".into(),
            topic: "pigeon.module.act-toy".into(),
            tag: "progress.add".into(),
        },
        ScriptDestination {
            name: "act-chest/chest.drop".into(),
            topic: "pigeon.module.act-chest".into(),
            tag: "chest.drop".into(),
        },
        ScriptDestination {
            name: "lane.banner".into(),
            topic: "lane.banner".into(),
            tag: "banner.show".into(),
        },
    ]
}

fn run(source: &str, payload: Value) -> Result<Vec<ScriptOutput>, ScriptError> {
    run_raw(source, &serde_json::to_vec(&payload).unwrap())
}

fn run_raw(source: &str, payload: &[u8]) -> Result<Vec<ScriptOutput>, ScriptError> {
    let engine = ScriptEngine::new(Limits::default());
    let script = engine.compile(source)?;
    let letter = ScriptLetter {
        id: "0190b2c4-0000-7000-8000-000000000001",
        tag: "gift.sent",
        source: "live-platform",
        key: Some(b"room-7"),
        time: Some("2026-11-23T10:00:00.000Z"),
        payload,
    };
    engine.run(&script, &letter, &destinations())
}

/// An output as (dest, tag, key, payload value), comparable whatever the JSON key order.
type Out = (usize, String, Option<Vec<u8>>, Value);

fn out(dest: usize, tag: &str, key: Option<&str>, payload: Value) -> Out {
    (dest, tag.into(), key.map(|k| k.as_bytes().to_vec()), payload)
}

fn comparable(outputs: Vec<ScriptOutput>) -> Vec<Out> {
    outputs
        .into_iter()
        .map(|o| {
            let p = o.payload_json();
            (o.dest, o.tag, o.key, p)
        })
        .collect()
}

#[test]
fn the_script_api_as_data() {
    let gift = json!({"uid": 42, "anchorId": 7, "giftCount": 3, "roomType": "live"});
    let cases: Vec<(&str, &str, Value, Vec<Out>)> = vec![
        (
            "a returned map is one letter to the first destination, same key",
            r#"payload.userId = payload.uid; payload.remove("uid"); payload"#,
            gift.clone(),
            vec![out(
                0,
                "progress.add",
                Some("room-7"),
                json!({"userId": 42, "anchorId": 7, "giftCount": 3, "roomType": "live"}),
            )],
        ),
        ("() drops the letter", "()", gift.clone(), vec![]),
        (
            "filter",
            r#"if payload.roomType == "test" { () } else { #{ points: payload.giftCount * 10 } }"#,
            gift.clone(),
            vec![out(0, "progress.add", Some("room-7"), json!({"points": 30}))],
        ),
        (
            "filter drops",
            r#"if payload.roomType == "test" { () } else { payload }"#,
            json!({"roomType": "test"}),
            vec![],
        ),
        (
            "headers are visible",
            "#{ tag: tag, id: id, source: source, key: key, time: time }",
            json!({}),
            vec![out(
                0,
                "progress.add",
                Some("room-7"),
                json!({"tag": "gift.sent", "id": "0190b2c4-0000-7000-8000-000000000001", "source": "live-platform",
                       "key": "room-7", "time": "2026-11-23T10:00:00.000Z"}),
            )],
        ),
        (
            "change tag and key",
            r#"[#{ payload: payload, tag: "progress.bonus", key: "anchor-" + payload.anchorId }]"#,
            json!({"anchorId": 7}),
            vec![out(0, "progress.bonus", Some("anchor-7"), json!({"anchorId": 7}))],
        ),
        (
            "fan out by name and index; each destination's tag by default",
            r#"[#{ payload: #{ chest: 1 }, dest: "act-chest/chest.drop" }, #{ payload: #{ text: "hi" }, dest: 2 }, #{ payload: #{}, dest: "lane.banner", key: () }]"#,
            json!({}),
            vec![
                out(1, "chest.drop", Some("room-7"), json!({"chest": 1})),
                out(2, "banner.show", Some("room-7"), json!({"text": "hi"})),
                out(2, "banner.show", None, json!({})),
            ],
        ),
        (
            "nested values and arrays survive",
            "payload",
            json!({"a": {"b": [1, 2.5, "x", null, true]}}),
            vec![out(0, "progress.add", Some("room-7"), json!({"a": {"b": [1, 2.5, "x", null, true]}}))],
        ),
        ("an empty array emits nothing", "[]", json!({}), vec![]),
    ];
    for (what, script, payload, expected) in cases {
        assert_eq!(
            comparable(run(script, payload).unwrap_or_else(|e| panic!("{what}: {e}"))),
            expected,
            "{what}"
        );
    }
}

#[test]
fn mistakes_are_explained() {
    let cases: Vec<(&str, &str, &str)> = vec![
        ("let x = ;", "compile", "line 1, column 9"),
        ("payload.a = nosuchvar; payload", "compile", "nosuchvar"),
        ("\"a string\"", "output", "expected (), a map or an array of letters, got string"),
        ("[42]", "output", "letter [0] is i64, not a map"),
        ("[#{ tag: \"x\" }]", "output", "letter [0] has no payload"),
        ("[#{ payload: #{}, colour: 1 }]", "output", "unknown field \"colour\""),
        ("[#{ payload: #{}, dest: 9 }]", "output", "dest 9 is not one of the pigeon's 3"),
        (
            "[#{ payload: #{}, dest: \"nope\" }]",
            "output",
            "dest \"nope\" is not one of the pigeon's (act-toy/progress.add",
        ),
        ("[#{ payload: #{}, tag: \"bad tag\" }]", "output", "letter [0]: tag \"bad tag\""),
        ("throw \"no anchor\"", "runtime", "threw no anchor"),
        ("let x = payload.missing.deeper; payload", "runtime", "line 1"),
    ];
    for (script, kind, needle) in cases {
        let err = run(script, json!({})).unwrap_err();
        assert_eq!(err.kind(), kind, "{script}: {err}");
        assert!(err.to_string().contains(needle), "{script}: {err}");
    }
    let err = run_raw("payload", b"\x00 not json").unwrap_err();
    assert!(matches!(err, ScriptError::Payload(_)), "{err}");
}

#[test]
fn hostile_scripts_fail_only_their_letter_quickly() {
    let hostile = [
        ("endless loop", "loop { }", "operation budget"),
        ("endless while", "let i = 0; while true { i += 1; } payload", "operation budget"),
        ("deep recursion", "fn f(x) { f(x + 1) } f(0)", "recursed too deep"),
        ("string doubling", "let s = \"xxxxxxxx\"; loop { s += s; }", "grew past its limit"),
        ("array growth", "let a = [1]; loop { a += a; }", "grew past its limit"),
        ("map growth", "let m = #{}; let i = 0; loop { m[\"k\" + i] = i; i += 1; }", ""),
        ("throw", "throw #{ reason: \"boom\" }", "threw"),
        ("eval", "eval(\"1\")", "eval"),
        ("import", "import \"fs\" as fs; payload", ""),
    ];
    let engine = ScriptEngine::new(Limits::default());
    for (what, script, needle) in hostile {
        let started = Instant::now();
        let result = engine.compile(script).and_then(|compiled| {
            let letter =
                ScriptLetter { id: "x", tag: "t", source: "s", key: None, time: None, payload: b"{}" };
            engine.run(&compiled, &letter, &destinations())
        });
        let elapsed = started.elapsed();
        let err = result.expect_err(what);
        println!("{what}: {err} ({elapsed:?})");
        assert!(err.to_string().contains(needle), "{what}: {err}");
        assert!(elapsed < Duration::from_secs(2), "{what} took {elapsed:?}");
        // The engine is still fine for the next letter.
        assert_eq!(run("payload", json!({"ok": true})).unwrap().len(), 1, "after {what}");
    }
}

#[test]
fn the_time_limit_stops_slow_scripts_that_stay_under_the_budget() {
    let limits = Limits { max_operations: 0, max_time: Duration::from_millis(20), ..Limits::default() };
    let engine = ScriptEngine::new(limits);
    let script = engine.compile("let i = 0; loop { i += 1; }").unwrap();
    let letter = ScriptLetter { id: "x", tag: "t", source: "s", key: None, time: None, payload: b"{}" };
    let started = Instant::now();
    let err = engine.run(&script, &letter, &destinations()).unwrap_err();
    assert!(err.to_string().contains("time limit"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn the_deepest_value_a_script_can_build_leaves_its_thread_alive() {
    // No time limit: only the operation budget bounds how deep a value gets, and a script
    // worker's stack is sized by it. Each script nests as fast as Rhai allows, then drops its
    // value, checks it or returns it.
    let scripts = [
        "let x = []; loop { x = [x]; }",
        "let x = #{}; loop { x = #{ a: x }; }",
        "let x = []; for i in 0..9000 { x = [x]; } x",
    ];
    // On threads of their own at once: each takes seconds in a debug build (Rhai checks a
    // nested value's size at every step).
    let threads: Vec<_> = scripts
        .into_iter()
        .map(|source| {
            let thread = std::thread::Builder::new().stack_size(STACK_SIZE).spawn(move || {
                let engine =
                    ScriptEngine::new(Limits { max_time: Duration::from_secs(600), ..Limits::default() });
                let script = engine.compile(source).unwrap();
                let letter =
                    ScriptLetter { id: "i", tag: "t", source: "s", key: None, time: None, payload: b"{}" };
                engine.run(&script, &letter, &destinations()).map(|o| o.len()).map_err(|e| e.to_string())
            });
            (source, thread.unwrap())
        })
        .collect();
    for (source, thread) in threads {
        let outcome = thread.join().unwrap_or_else(|_| panic!("{source}: the thread died"));
        let error = outcome.expect_err(source);
        assert!(
            error.contains("budget") || error.contains("limit") || error.contains("not a map"),
            "{source}: {error}"
        );
    }
}

/// One run holds at most `max_memory` in all: a megabyte string copied into a hundred
/// variables (each value within its own limit) is stopped, and says why.
#[test]
fn a_run_holding_too_much_in_all_is_stopped() {
    let copies: String = (0..100).map(|n| format!("let v{n} = s + \"{n}\";\n")).collect();
    let source = format!("let s = \"\"; s.pad(1000000, \"x\");\n{copies}payload");
    let engine = ScriptEngine::new(Limits { max_time: Duration::from_secs(60), ..Limits::default() });
    let script = engine.compile(&source).unwrap();
    let letter = ScriptLetter { id: "i", tag: "t", source: "s", key: None, time: None, payload: b"{}" };
    let error = engine.run(&script, &letter, &destinations()).unwrap_err().to_string();
    assert!(error.contains("held more than 64 MiB in all"), "{error}");
    // The same copies, fewer of them, fit.
    let few: String = (0..10).map(|n| format!("let v{n} = s + \"{n}\";\n")).collect();
    let source = format!("let s = \"\"; s.pad(1000000, \"x\");\n{few}payload");
    let script = engine.compile(&source).unwrap();
    assert_eq!(engine.run(&script, &letter, &destinations()).map(|o| o.len()), Ok(1));
}

/// A returned value may nest as deep as a letter's reader takes (128 levels), no deeper.
#[test]
fn a_returned_value_deeper_than_a_letter_may_be_is_an_error() {
    let engine = default_engine();
    let letter = ScriptLetter { id: "i", tag: "t", source: "s", key: None, time: None, payload: b"{}" };
    let nested = |levels: usize| format!("let x = #{{}}; for i in 0..{levels} {{ x = #{{ a: x }}; }} x");
    let script = engine.compile(&nested(100)).unwrap();
    assert!(engine.run(&script, &letter, &destinations()).is_ok());
    let script = engine.compile(&nested(500)).unwrap();
    let error = engine.run(&script, &letter, &destinations()).unwrap_err().to_string();
    assert!(error.contains("nests deeper than 128 levels"), "{error}");
}

/// An integer past i64's range (up to u64's) comes back from a script as the same integer: Rhai
/// would have made it a float (found by the script fuzz target, 18106511857580896776 came back
/// as 1.8106511857580896e19). The script sees a u64, compares it and does arithmetic with other u64s.
#[test]
fn an_integer_past_i64_comes_back_from_a_script_as_it_was() {
    let payload = br#"{"mtaskId":18106511857580896776,"n":7}"#;
    let outputs = run_raw("payload", payload).unwrap();
    assert_eq!(outputs[0].payload, payload.to_vec(), "passed on untouched");
    let script = r#"#{ kind: type_of(payload.mtaskId), same: payload.mtaskId == payload.mtaskId,
        less: payload.mtaskId - payload.big, n: payload.n + 1, float: payload.big.to_float() }"#;
    let outputs = run_raw(script, br#"{"mtaskId":18106511857580896776,"big":9223372036854775808,"n":7}"#);
    assert_eq!(
        outputs.unwrap()[0].payload_json(),
        json!({"kind": "u64", "same": true, "less": 8_883_139_820_726_120_968u64, "n": 8, "float": 9.223_372_036_854_776e18}),
    );
    let error = run_raw("payload.mtaskId + 1", payload).unwrap_err().to_string();
    assert!(error.contains("u64"), "adding an i64 to a u64 is an error that names them: {error}");
}

/// Work given a budget compiles and runs that many scripts, and fails past it, even when it
/// made light of a script's failure.
#[test]
fn a_budget_bounds_the_scripts_one_piece_of_work_runs() {
    let engine = default_engine();
    let letter = ScriptLetter { id: "i", tag: "t", source: "s", key: None, time: None, payload: b"{}" };
    let run = |times: usize| {
        budgeted(&mut Budget::new(10), || {
            for _ in 0..times {
                let Ok(script) = engine.compile("payload") else { continue };
                let _ignored = engine.run(&script, &letter, &destinations());
            }
        })
    };
    assert_eq!(run(5), Ok(()), "5 compiles and 5 runs");
    assert_eq!(run(6), Err(TooManyScripts { limit: 10 }));
    // One budget spent by two pieces of work.
    let mut budget = Budget::new(10);
    assert_eq!(budgeted(&mut budget, || engine.compile("payload").is_ok()), Ok(true));
    assert_eq!(budget.left, 9);
    assert!(budgeted(&mut budget, || (0..9).all(|_| engine.compile("payload").is_ok())).unwrap());
    assert_eq!(
        budgeted(&mut budget, || engine.compile("payload").is_ok()),
        Err(TooManyScripts { limit: 10 })
    );
    // Outside the budgeted work, no bound.
    for _ in 0..20 {
        assert!(engine.compile("payload").is_ok());
    }
}

/// A script longer than the most is refused before it is compiled, saying so.
#[test]
fn a_script_longer_than_the_most_is_refused_before_compiling() {
    let engine = default_engine();
    let most = engine.limits().max_source;
    let statement = "let x = 1;\n";
    let long: String = statement.repeat(most / statement.len() + 1) + "payload";
    let error = engine.compile(&long).unwrap_err().to_string();
    assert!(error.contains(&format!("more than the most a script may have ({most})")), "{error}");
    let fits: String = statement.repeat((most - 16) / statement.len()) + "payload";
    assert!(engine.compile(&fits).is_ok());
}
