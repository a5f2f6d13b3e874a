use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::*;
use crate::dictionary::{Field, FieldType, Vocabulary};
use crate::route::{PigeonSpec, RouteTable, VersionedPigeon};
use crate::script::ScriptLetter;

/// Rank's capability requires `userId` and `anchorId`; the dictionary knows both, `uid` as an
/// alias of `userId`.
fn contracts() -> Contracts {
    let field = |name: &str, aliases: &[&str]| Field {
        name: name.into(),
        kind: FieldType::Integer,
        description: String::new(),
        aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
    };
    Contracts {
        vocabulary: Vocabulary::new(&[field("userId", &["uid"]), field("anchorId", &[])]),
        requires: HashMap::from([("rank/gift".to_owned(), vec!["userId".to_owned(), "anchorId".to_owned()])]),
    }
}

fn route(spec: serde_json::Value) -> (RouteTable, Arc<str>) {
    let spec: PigeonSpec = serde_json::from_value(spec).unwrap();
    let id: Arc<str> = spec.id.as_str().into();
    let built = RouteTable::build(
        &[VersionedPigeon { spec, version: 3, saved_at: 0 }],
        &BTreeMap::new(),
        None,
        Arc::new(contracts()),
    );
    assert!(built.quarantined.is_empty(), "{:?}", built.quarantined);
    (built.table, id)
}

fn letter(payload: &[u8]) -> LetterRef<'_> {
    let seen = ScriptLetter {
        id: "0190c1d2-0000-7000-8000-000000000001",
        tag: "gift.sent",
        source: "live.gift",
        key: Some(b"room-7"),
        time: None,
        payload,
    };
    LetterRef { seen, payload: Some(payload), time_ms: 1_700_000_000_000 }
}

/// The plan of the table's one pigeon for `payload`: (topic, tag, unfit?) per output.
fn outputs(table: &RouteTable, id: &str, payload: &[u8]) -> Result<Vec<(String, String, bool)>, Refusal> {
    let route = table.route(id).unwrap();
    let letter = letter(payload);
    let checked = check([route.as_ref()], table.contracts(), letter.payload);
    let planned = plan(route, &letter, checked.as_ref(), table.contracts())?;
    Ok(planned.into_iter().map(|o| (o.topic.to_owned(), o.tag.into_owned(), o.unfit.is_some())).collect())
}

fn forward(mode: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "gifts", "match": { "topic": "live.gift", "tag": "gift.sent" }, "dictionary": mode,
        "destinations": [{ "capability": "rank/gift" }, { "topic": "lane.audit", "tag": "audit.gift" }]
    })
}

#[test]
fn a_forward_pigeon_sends_the_letter_to_each_destination_with_its_tag_and_id() {
    let (table, id) = route(forward("off"));
    let route = table.route(&id).unwrap();
    let letter = letter(br#"{"uid":42}"#);
    let planned = plan(route, &letter, None, table.contracts()).unwrap();
    assert_eq!(planned.len(), 2);
    assert_eq!((planned[0].topic, planned[0].tag.as_ref()), ("pigeon.module.rank", "gift"));
    assert_eq!((planned[1].topic, planned[1].tag.as_ref()), ("lane.audit", "audit.gift"));
    for output in &planned {
        assert_eq!(output.id, letter.seen.id, "a forwarded letter keeps its id");
        assert_eq!(output.payload.as_deref(), letter.payload, "untouched when the dictionary is off");
        assert_eq!(output.key.as_deref(), letter.seen.key);
        assert!(!output.rewritten && output.unfit.is_none());
    }
}

#[test]
fn in_enforce_mode_only_the_destination_that_lacks_a_field_is_unfit() {
    let (table, id) = route(forward("enforce"));
    let got = outputs(&table, &id, br#"{"uid":42}"#).unwrap();
    assert_eq!(
        got,
        [
            ("pigeon.module.rank".to_owned(), "gift".to_owned(), true),
            ("lane.audit".to_owned(), "audit.gift".to_owned(), false)
        ]
    );
    let route = table.route(&id).unwrap();
    let payload = br#"{"uid":42}"#;
    let checked = check([route.as_ref()], table.contracts(), Some(payload));
    let planned = plan(route, &letter(payload), checked.as_ref(), table.contracts()).unwrap();
    assert_eq!(planned[0].unfit.as_deref(), Some("missing anchorId, required by rank/gift"));
    assert_eq!(planned[1].payload.as_deref(), Some(&br#"{"userId":42}"#[..]), "normalised: uid is userId");
    assert!(planned[1].rewritten);
    // Both fields there: both go.
    let fits = outputs(&table, &id, br#"{"userId":42,"anchorId":7}"#).unwrap();
    assert!(fits.iter().all(|(_, _, unfit)| !unfit), "{fits:?}");
}

#[test]
fn in_enforce_mode_a_letter_that_does_not_fit_the_dictionary_is_refused_in_other_modes_it_flies() {
    let bad = br#"{"userId":"not a number"}"#;
    let (table, id) = route(forward("enforce"));
    let refused = outputs(&table, &id, bad).unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Dictionary);
    assert!(refused.reason.contains("userId"), "{refused}");
    let (table, id) = route(forward("normalize"));
    assert_eq!(outputs(&table, &id, bad).unwrap().len(), 2);
    let not_json = b"\xff not json";
    let (table, id) = route(forward("enforce"));
    assert_eq!(outputs(&table, &id, not_json).unwrap_err().kind, ErrorKind::Dictionary);
    let (table, id) = route(forward("normalize"));
    assert_eq!(outputs(&table, &id, not_json).unwrap().len(), 2, "normalising is a courtesy");
}

fn scripted(mode: &str, script: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "scripted", "match": { "topic": "live.gift", "tag": "gift.sent" }, "dictionary": mode,
        "action": "script", "script": script,
        "destinations": [{ "topic": "pigeon.module.rank", "tag": "other" }]
    })
}

#[test]
fn a_scripts_outputs_get_ids_derived_from_the_letter_and_keep_their_own_tags() {
    let (table, id) =
        route(scripted("off", r#"[#{ tag: "gift", payload: #{ n: 1 } }, #{ payload: #{ n: 2 } }]"#));
    let route = table.route(&id).unwrap();
    let letter = letter(br#"{"userId":42}"#);
    let planned = plan(route, &letter, None, table.contracts()).unwrap();
    let tags: Vec<&str> = planned.iter().map(|o| o.tag.as_ref()).collect();
    assert_eq!(tags, ["gift", "other"], "a retagged output, then the destination's tag");
    assert_ne!(planned[0].id, planned[1].id);
    let again = plan(route, &letter, None, table.contracts()).unwrap();
    assert_eq!(planned, again, "a redelivered letter makes the same outputs and ids");
    assert!(planned.iter().all(|o| o.rewritten && o.topic == "pigeon.module.rank"));
}

#[test]
fn in_enforce_mode_a_retagged_script_output_is_held_to_the_capability_its_tag_names() {
    let lacks = r#"[#{ tag: "gift", payload: #{ userId: payload.userId } }]"#;
    let (table, id) = route(scripted("enforce", lacks));
    assert_eq!(
        outputs(&table, &id, br#"{"userId":42}"#).unwrap(),
        [("pigeon.module.rank".to_owned(), "gift".to_owned(), true)]
    );
    // Under the destination's own tag no capability requires anything.
    let untagged = r#"[#{ payload: #{ userId: payload.userId } }]"#;
    let (table, id) = route(scripted("enforce", untagged));
    assert_eq!(
        outputs(&table, &id, br#"{"userId":42}"#).unwrap(),
        [("pigeon.module.rank".to_owned(), "other".to_owned(), false)]
    );
}

#[test]
fn a_failing_script_refuses_the_letter_with_its_error() {
    let (table, id) = route(scripted("off", r#"throw "no gifts today""#));
    let refused = outputs(&table, &id, b"{}").unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Script);
    assert!(refused.reason.contains("no gifts today"), "{refused}");
}

#[test]
fn pigeons_that_leave_the_dictionary_off_never_read_the_payload() {
    let (table, id) = route(forward("off"));
    let off = table.route(&id).unwrap();
    assert!(check([off.as_ref()], table.contracts(), Some(b"\xff")).is_none());
    let (enforced, id) = route(forward("enforce"));
    let on = enforced.route(&id).unwrap();
    assert!(check([on.as_ref()], enforced.contracts(), Some(b"{}")).is_some());
}
