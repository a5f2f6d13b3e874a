//! Pigeons that hold letters to the dictionary: normalised on the way, refused with a precise
//! dead letter in `enforce` mode, and unknown fields counted in the drift report.

use std::time::Duration;

use pigeon_bus::deadletter::{DeadLetterFilter, ErrorKind, Status};
use pigeon_bus::dictionary::Mode;
use pigeon_bus::route::{Action, DestinationSpec, PigeonSpec};
use pigeon_sdk::registry::{CapabilityInfo, Registration};
use pigeon_sdk::Letter;
use rdkafka::message::Message;
use serde_json::{json, Value};

use crate::support::*;

/// The `rank` module, registered with `gift`, which requires `userId` and `anchorId`.
pub(crate) fn rank_module() -> Registration {
    Registration {
        module: "rank".into(),
        instance: "rank-1".into(),
        host: "h1".into(),
        version: "1.0".into(),
        topic: "pigeon.module.rank".into(),
        lanes: Vec::new(),
        capabilities: vec![CapabilityInfo {
            name: "gift".into(),
            description: "ranks gifts".into(),
            requires: vec!["userId".into(), "anchorId".into()],
        }],
        flies: vec![pigeon_sdk::registry::FlownTag {
            tag: "rank.top".into(),
            fields: vec!["userId".into(), "score".into()],
        }],
        heartbeat_ms: 60_000,
        leaving: false,
        sent_at_ms: pigeon_bus::store::now_ms(),
    }
}

/// `GET /api/v1{path}` as JSON.
async fn get_json(bus: &Bus, token: &str, path: &str) -> Value {
    let url = format!("{}/api/v1{path}", bus.admin);
    reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

fn checked(id: &str, topic: &str, mode: Mode) -> PigeonSpec {
    let mut spec = pigeon(id, topic, "**", vec![DestinationSpec::capability("rank/gift")]);
    spec.dictionary = mode;
    spec
}

fn letter(topic_tag: &str, payload: &[u8]) -> Outgoing {
    let mut outgoing = Outgoing::from(&Letter::new("tests", topic_tag, Value::Null));
    outgoing.payload = Some(payload.to_vec());
    outgoing
}

#[tokio::test(flavor = "multi_thread")]
async fn enforced_pigeons_normalise_refuse_and_report_drift() {
    let kafka = Kafka::new(1);
    for topic in ["live.gift", "live.like", "live.view", "pigeon.module.rank"] {
        kafka.topic(topic, 4);
    }
    let mut scripted = checked("scripted", "live.view", Mode::Enforce);
    scripted.action = Action::Script;
    scripted.script = Some("let out = #{ userId: payload.userId }; if payload.anchorId != () { out.anchorId = payload.anchorId; } out".into());
    let db = Db::with_pigeons(&[
        checked("enforced", "live.gift", Mode::Enforce),
        checked("normalized", "live.like", Mode::Normalize),
        scripted,
    ])
    .await;
    db.store().await.record_registration(&rank_module(), pigeon_bus::store::now_ms()).await.unwrap();
    let token = pigeon::cli::tokens::create(
        db.store().await.as_ref(),
        "viewer",
        pigeon_bus::token::Role::Viewer,
        "tests",
    )
    .await
    .unwrap();
    let config = db.path("bus.toml");
    std::fs::write(
        &config,
        "[router]\nschema_sample_every = 1\n[sources.\"live.gift\"]\nfields.\"gift.sent\" = [\"userId\", \"anchorId\"]\n",
    )
    .unwrap();
    let bus = Bus::start(&kafka, &db, &["--roles", "router,admin", "-c", config.to_str().unwrap()]);

    // Letter in → letter or dead letter out, in enforce mode.
    kafka.produce(
        "live.gift",
        [
            letter("gift.sent", br#"{"uid":"42","AID":7,"amount":"5","mystery":true}"#),
            letter("gift.sent", br#"{"userId":42}"#),
            letter("gift.sent", br#"{"userId":"abc","anchorId":7}"#),
            letter("gift.sent", b"not json"),
        ],
    );
    // Normalize mode delivers what it cannot fix; a script sees dictionary names.
    kafka.produce("live.like", [letter("like.sent", br#"{"uid":"x","mystery":1}"#)]);
    kafka.produce(
        "live.view",
        [letter("view.enter", br#"{"uid":1,"aid":2}"#), letter("view.enter", br#"{"uid":3}"#)],
    );

    let delivered = kafka.collect("pigeon.module.rank", 3, Duration::from_secs(2));
    let mut payloads: Vec<Value> =
        delivered.iter().map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap()).collect();
    payloads.sort_by_key(|p| p.to_string());
    assert_eq!(
        payloads,
        [
            json!({"amount": 5, "anchorId": 7, "mystery": true, "userId": 42}),
            json!({"anchorId": 2, "userId": 1}),
            json!({"mystery": 1, "userId": "x"}),
        ],
        "aliases renamed, plain types coerced; the rest as it came"
    );
    for m in &delivered {
        assert_eq!(header(m, "content-type").as_deref(), Some("application/json"));
    }

    let store = db.store().await;
    let filter = DeadLetterFilter { error_kind: Some(ErrorKind::Dictionary), ..Default::default() };
    let deadline = std::time::Instant::now() + DEADLINE;
    let dead = loop {
        let dead = store.dead_letters(&filter, None, 10).await.unwrap();
        if dead.len() >= 4 {
            break dead;
        }
        assert!(std::time::Instant::now() < deadline, "only {} letters refused:\n{}", dead.len(), bus.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut reasons: Vec<(String, Option<String>)> =
        dead.iter().map(|d| (d.letter.error_message.clone(), d.letter.dest_topic.clone())).collect();
    reasons.sort();
    let texts: Vec<&str> = reasons.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(dead.len(), 4, "{texts:?}");
    assert!(texts[0].starts_with("missing anchorId, required by rank/gift"), "{texts:?}");
    assert_eq!(reasons[0].1.as_deref(), Some("pigeon.module.rank"), "kept as the output it would have been");
    assert!(
        texts[1].starts_with("missing anchorId, required by rank/gift"),
        "the script's output: {texts:?}"
    );
    assert!(
        texts[2].starts_with(
            "the letter does not fit the dictionary: userId: expected integer, got string \"abc\""
        ),
        "{texts:?}"
    );
    assert!(texts[3].starts_with("the payload is not a JSON object"), "{texts:?}");
    assert!(
        dead.iter().all(|d| d.status == Status::Parked),
        "an operator decides: none is retried by itself"
    );
    assert!(dead.iter().all(|d| d.letter.pigeon_id.is_some()));

    // Unknown fields, counted per source topic.
    let deadline = std::time::Instant::now() + DEADLINE;
    let drift = loop {
        let drift = store.drift().await.unwrap();
        if drift.len() >= 2 {
            break drift;
        }
        assert!(std::time::Instant::now() < deadline, "no drift report:\n{}", bus.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rows: Vec<(&str, &str, i64)> =
        drift.iter().map(|d| (d.topic.as_str(), d.field.as_str(), d.seen)).collect();
    assert!(
        rows.contains(&("live.gift", "mystery", 1)) && rows.contains(&("live.like", "mystery", 1)),
        "{rows:?}"
    );
    assert!(
        !rows.iter().any(|(_, f, _)| ["uid", "AID", "amount", "userId"].contains(f)),
        "known fields are not drift: {rows:?}"
    );

    // Source schemas: declared in the source-topic settings, observed in sampled letters.
    let schemas: Value = get_json(&bus, &token, "/schemas?topic=live.gift").await;
    let sent = schemas.as_array().unwrap().iter().find(|s| s["tag"] == "gift.sent").expect("gift.sent");
    assert_eq!(sent["declared"], json!(["userId", "anchorId"]), "{schemas:#}");
    assert_eq!(sent["sampled"], 4, "every letter sampled at schema_sample_every = 1: {schemas:#}");
    let seen = |field: &str, kind: &str| {
        sent["observed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == field && f["type"] == kind)
            .cloned()
    };
    assert_eq!(seen("userId", "integer").unwrap()["frequency"], 0.25, "{schemas:#}");
    assert_eq!(seen("userId", "string").unwrap()["seen"], 1);
    assert_eq!(seen("uid", "string").unwrap()["seen"], 1, "observed as the letters came");
    assert!(seen("anchorId", "integer").is_some() && seen("mystery", "boolean").is_some());
    assert_eq!(sent["declared_by"], json!(["settings"]));

    // What modules declare they fly, on pigeon.ingress.
    let flown: Value = get_json(&bus, &token, "/schemas?topic=pigeon.ingress").await;
    assert_eq!(
        flown,
        json!([{ "topic": "pigeon.ingress", "tag": "rank.top", "declared": ["userId", "score"],
                 "declared_by": ["module:rank"], "sampled": 0, "last_seen": null, "observed": [] }])
    );
    bus.stop();
}

/// Saving a pigeon checks its wiring: a destination requiring a field the source is declared
/// without is refused with the reason, accepted once a script maps it, accepted with a warning
/// when nothing is known yet, and forced only on purpose (audited).
#[tokio::test(flavor = "multi_thread")]
async fn wiring_is_checked_before_a_pigeon_is_saved() {
    let kafka = Kafka::new(1);
    let db = Db::with_pigeons(&[]).await;
    let store = db.store().await;
    let now = pigeon_bus::store::now_ms();
    store.record_registration(&rank_module(), now).await.unwrap();
    let mut chest = rank_module();
    chest.module = "chest".into();
    chest.topic = "pigeon.module.chest".into();
    chest.capabilities[0].name = "drop".into();
    chest.capabilities[0].requires.clear();
    store.record_registration(&chest, now).await.unwrap();
    store.record_registration(&Registration { leaving: true, ..chest }, now).await.unwrap();
    let token =
        pigeon::cli::tokens::create(store.as_ref(), "ops", pigeon_bus::token::Role::Operator, "tests")
            .await
            .unwrap();
    let config = db.path("bus.toml");
    std::fs::write(&config, "[sources.\"live.gift\"]\nfields.\"gift.sent\" = [\"userId\", \"roomId\"]\n")
        .unwrap();
    let bus = Bus::start(&kafka, &db, &["--roles", "admin", "-c", config.to_str().unwrap()]);
    let create = |spec: PigeonSpec, force: bool| {
        let (admin, token) = (bus.admin.clone(), token.clone());
        async move {
            let response = reqwest::Client::new()
                .post(format!("{admin}/api/v1/pigeons{}", if force { "?force=true" } else { "" }))
                .bearer_auth(token)
                .json(&spec)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };

    let forward = pigeon("gifts", "live.gift", "gift.sent", vec![DestinationSpec::capability("rank/gift")]);
    let (status, refused) = create(forward.clone(), false).await;
    assert_eq!((status, refused["code"].as_str()), (422, Some("unfit_wiring")), "{refused}");
    assert_eq!(
        refused["details"],
        json!(["rank/gift requires anchorId, which live.gift gift.sent letters do not carry (declared by settings: roomId, userId)"])
    );

    let mut mapped = forward.clone();
    mapped.id = "gifts-mapped".into();
    mapped.action = Action::Script;
    mapped.script = Some("payload.anchorId = payload.roomId; payload".into());
    let (status, saved) = create(mapped, false).await;
    assert_eq!(status, 201, "{saved}");
    assert!(saved.get("warnings").is_none(), "{saved}");

    let likes = pigeon("likes", "live.like", "**", vec![DestinationSpec::capability("rank/gift")]);
    let (status, saved) = create(likes, false).await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(
        saved["warnings"],
        json!([
            "nothing is declared or observed yet for live.like tags **: the wiring is accepted unchecked"
        ])
    );

    let chests = pigeon("chests", "live.gift", "gift.sent", vec![DestinationSpec::capability("chest/drop")]);
    let (status, saved) = create(chests, false).await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(
        saved["warnings"],
        json!(["chest/drop: no live instance of module chest; its letters wait on its topic"])
    );

    let (status, forced) = create(forward, true).await;
    assert_eq!(status, 201, "{forced}");
    assert!(
        forced["warnings"][0].as_str().unwrap().starts_with("forced: rank/gift requires anchorId"),
        "{forced}"
    );
    let audit: Value = get_json(&bus, &token, "/audit?limit=2").await;
    let actions: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["pigeon.create", "pigeon.force"], "{audit:#}");
    assert_eq!(audit["items"][1]["actor"], "ops");
    assert_eq!(audit["items"][1]["after"]["pigeons"], json!(["gifts"]));
    bus.stop();
}
