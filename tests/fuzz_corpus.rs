//! The fuzz targets' inputs replayed as ordinary tests: every file under
//! `fuzz/regressions/<target>/` (inputs that once found a bug, minimised) and
//! `fuzz/seeds/<target>/` (the corpus `scripts/fuzz` starts from) goes through the target's
//! body in `fuzz/targets.rs`, and a few structured seeds through the checks themselves. The
//! fuzzing itself (nightly, cargo-fuzz) is `scripts/fuzz`, run by hand, not in CI.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

use targets::{Name, SourceMessage, Stamp, Topic};

fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut count = 0;
    for (target, body) in targets::TARGETS {
        for file in files(kind, target) {
            let data = std::fs::read(&file).unwrap();
            let replayed = std::panic::catch_unwind(|| body(&data));
            assert!(replayed.is_ok(), "{target}: {} panics", file.display());
            count += 1;
        }
    }
    count
}

#[test]
fn every_regression_replays_without_a_panic() {
    replay("regressions");
}

#[test]
fn every_seed_replays_without_a_panic() {
    assert!(replay("seeds") > 0, "the seeds are there");
}

#[test]
fn every_target_takes_empty_and_short_inputs() {
    for (_, body) in targets::TARGETS {
        for data in [&b""[..], b"\0", b"\x01", b"\x02{}", b"\xff\xff\xff\xff"] {
            body(data);
        }
    }
}

fn letter(topic: Topic, headers: &[(&str, &[u8])], payload: &[u8]) -> SourceMessage {
    SourceMessage {
        topic,
        partition: 3,
        offset: 42,
        timestamp: Stamp::CreateTime(1_764_590_400_000),
        key: Some(b"user-7".to_vec()),
        headers: headers
            .iter()
            .map(|(n, v)| (Name::Bytes(n.as_bytes().to_vec()), Some(v.to_vec())))
            .collect(),
        payload: Some(payload.to_vec()),
    }
}

#[test]
fn source_messages_of_every_kind_go_through_the_router_s_steps() {
    let gift = br#"{"uid":"7","gid":3,"amount":"2.5","roomId":"r1"}"#;
    let sdk = [
        ("ce_id", &b"0190b6a8-9d1e-7c3a-8f00-000000000001"[..]),
        ("ce_source", b"gifts"),
        ("ce_specversion", b"1.0"),
        ("ce_time", b"2025-12-01T12:00:00.000Z"),
        ("ce_hops", b"3"),
    ];
    let mut tagged = sdk.to_vec();
    tagged.push(("ce_type", b"gift.sent"));
    targets::check_source_message(&letter(Topic::LiveGift, &tagged, gift));
    targets::check_source_message(&letter(Topic::LiveGift, &sdk, gift));
    targets::check_source_message(&letter(
        Topic::ForeignOrders,
        &[("msg_id", b"m-1")],
        br#"{"type":"order.paid"}"#,
    ));
    targets::check_source_message(&letter(Topic::ForeignOrders, &[], b"[1,2]"));
    targets::check_source_message(&letter(Topic::OtherEvents, &[("event", b"follow")], b"{}"));
    targets::check_source_message(&letter(Topic::Pattern, &[("ce_type", b"x.y")], b"not json"));
    targets::check_source_message(&letter(
        Topic::Ingress,
        &[("ce_pigeon", b"flown"), ("ce_type", b"t")],
        b"{}",
    ));
    let mut odd = letter(Topic::Other("t".into()), &[], b"");
    odd.headers.push((Name::Bytes(b"x-\xff\0cut".to_vec()), None));
    odd.headers.push((Name::Known(5), Some(b"99999999999".to_vec())));
    for timestamp in [Stamp::NotAvailable, Stamp::CreateTime(i64::MIN), Stamp::LogAppendTime(i64::MAX)] {
        odd.timestamp = timestamp;
        targets::check_source_message(&odd);
    }
}

#[test]
fn seeded_payloads_normalise_as_the_properties_say() {
    for data in
        [&b"\0{\"uid\":\"7\",\"userId\":7}"[..], b"\0{\"amt\":\"1e3\",\"x\":[1]}", b"\0[]", b"\0{\"rid\":1}"]
    {
        targets::dictionary(data);
    }
}

#[test]
fn every_fixed_script_takes_a_gift() {
    for index in 0..7u8 {
        let mut data = vec![index];
        data.extend_from_slice(b"gift.sent\0id-1\0live.gift\0user-7\0\0");
        data.extend_from_slice(
            br#"{"uid":7,"aid":9,"roomId":"r1","giftCount":2,"price":5,"level":3,"userId":7}"#,
        );
        targets::script(&data);
    }
}

#[test]
fn route_files_in_every_format_read_back() {
    let yaml = "\0pigeons:\n- id: a\n  match: {topic: live.gift, tag: 'gift.*'}\n  destinations: [{capability: act-toy/progress.add}]\n";
    let toml = "\u{1}[[pigeons]]\nid = \"a\"\nmatch = { topic = \"live.gift\" }\ndestinations = [{ topic = \"out\", tag = \"t\" }]\n";
    let json = "\u{2}[{\"id\":\"a\",\"match\":{\"topic\":\"^live\\\\..*\"},\"destinations\":[{\"topic\":\"out\",\"tag\":\"t\"}]}]";
    for text in [yaml, toml, json] {
        targets::route_file(text.as_bytes());
    }
}

/// With several `ce_hops` headers, the router judges a letter by the most of them and its
/// outputs count on from the same: `ce_hops: 15` then `ce_hops: 0` leaves as 16 (it read the
/// first and the outputs the last, so a second header saying 0 hid a loop).
#[test]
fn outputs_count_hops_on_from_the_header_the_router_judged() {
    use pigeon_bus::router::output;
    use pigeon_bus::source::LetterHeaders;
    let message =
        letter(Topic::LiveGift, &[("ce_hops", b"15"), ("ce_hops", b"0"), ("ce_type", b"gift.sent")], b"{}")
            .message();
    let input = LetterHeaders::of(&message);
    let judged = output::hops_in(&input);
    assert_eq!(judged, 15);
    let headers = output::output_headers(&message, &input, "id", "gift.copy", "gift-copy", false, None);
    let written = pigeon_headers::text(&headers, "ce_hops").map(str::to_owned);
    assert_eq!(written, Some((judged + 1).to_string()));
}
