//! One plan, four entries: a letter that reaches the pigeons from a source topic, from a
//! redriven dead letter, from a replay and from `POST /fly` makes the same outputs and the same
//! dead letters (the router's rule, destination by destination). Before the plan was shared,
//! the retrier, replays and `/fly` refused the whole letter where the router parked only the
//! destination that lacks a field, and a script failing for one pigeon cost the others theirs.

use std::collections::BTreeSet;
use std::time::Duration;

use pigeon_bus::deadletter::{CaptureMessage, DeadLetter, ErrorKind, NewDeadLetter};
use pigeon_bus::dictionary::Mode;
use pigeon_bus::route::{Action, DestinationSpec, PigeonSpec, WindowSpec};
use pigeon_bus::store::Store;
use pigeon_sdk::Letter;
use rdkafka::message::{Message, OwnedMessage};
use serde_json::{json, Value};

use crate::dictionary::rank_module;
use crate::support::*;

const SOURCE: &str = "live.gift";

/// The pigeons of the table, all on `live.gift` tag `gift.sent`:
/// - `checked` forwards to rank (which requires `userId` and `anchorId`) and to an audit lane,
///   in `enforce` mode;
/// - `scripted` retags its output to rank's `gift`, in `enforce` mode;
/// - `throws` runs a script that always fails;
/// - `ended` forwards to its own lane, but its live window ended in 2020;
/// - `kept` archives.
fn pigeons() -> Vec<PigeonSpec> {
    let mut checked = pigeon(
        "checked",
        SOURCE,
        "gift.sent",
        vec![DestinationSpec::capability("rank/gift"), DestinationSpec::topic("lane.audit", "audit.gift")],
    );
    checked.dictionary = Mode::Enforce;
    let mut scripted =
        pigeon("scripted", SOURCE, "gift.sent", vec![DestinationSpec::topic("pigeon.module.rank", "other")]);
    scripted.dictionary = Mode::Enforce;
    scripted.action = Action::Script;
    scripted.script = Some(r#"[#{ tag: "gift", payload: #{ userId: payload.userId } }]"#.into());
    let mut throws =
        pigeon("throws", SOURCE, "gift.sent", vec![DestinationSpec::topic("lane.thrown", "gift")]);
    throws.action = Action::Script;
    throws.script = Some(r#"throw "no gifts today""#.into());
    let mut ended = pigeon("ended", SOURCE, "gift.sent", vec![DestinationSpec::topic("lane.ended", "gift")]);
    ended.window = Some(WindowSpec { end: Some("2020-01-01T00:00:00Z".into()), ..Default::default() });
    let mut kept = pigeon("kept", SOURCE, "gift.*", Vec::new());
    kept.action = Action::Archive;
    vec![checked, scripted, throws, ended, kept]
}

/// A gift without `anchorId`: rank's capability requires it.
fn gift() -> Letter {
    Letter::new("tests", "gift.sent", json!({ "uid": 42 })).with_key("room-7")
}

/// What one entry made: outputs that reached Kafka (topic, tag, pigeon, payload) and dead
/// letters stored (pigeon, destination, tag, kind; whether one is retried or parked depends on
/// its kind, not on the entry).
#[derive(Debug, PartialEq, Eq)]
struct Made {
    delivered: BTreeSet<(String, String, String, String)>,
    dead: BTreeSet<(String, String, String, String)>,
}

/// Waits until `lane.audit` holds `outputs` letters and the store `dead` dead letters besides
/// those in `before`, then tells what arrived since `skip` outputs and `before`.
async fn made(
    kafka: &Kafka,
    store: &dyn Store,
    skip: usize,
    before: &BTreeSet<i64>,
    dead: usize,
) -> (Made, BTreeSet<i64>) {
    let lane = kafka.collect("lane.audit", skip + 1, Duration::from_millis(500));
    assert_eq!(lane.len(), skip + 1, "one audit output per entry");
    let delivered = lane[skip..]
        .iter()
        .map(|m: &OwnedMessage| {
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            (m.topic().to_owned(), header(m, "ce_type").unwrap(), header(m, "ce_pigeon").unwrap(), payload)
        })
        .collect();
    let rows =
        wait_dead_letters(store, |rows| rows.iter().filter(|d| !before.contains(&d.id)).count() >= dead)
            .await;
    let new: Vec<&DeadLetter> = rows.iter().filter(|d| !before.contains(&d.id)).collect();
    let dead = new
        .iter()
        .map(|d| {
            let l = &d.letter;
            let text = |v: &Option<String>| v.clone().unwrap_or_default();
            (text(&l.pigeon_id), text(&l.dest_topic), text(&l.dest_tag), format!("{:?}", l.error_kind))
        })
        .collect();
    (Made { delivered, dead }, rows.iter().map(|d| d.id).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_letter_makes_the_same_outputs_from_a_source_topic_a_redrive_a_replay_and_fly() {
    let kafka = Kafka::new(1);
    for topic in [SOURCE, "pigeon.ingress", "pigeon.module.rank", "lane.audit", "lane.ended", "lane.thrown"] {
        kafka.topic(topic, 2);
    }
    let db = Db::with_pigeons(&pigeons()).await;
    let store = db.store().await;
    store.record_registration(&rank_module(), pigeon_bus::store::now_ms()).await.unwrap();
    let token =
        pigeon::cli::tokens::create(store.as_ref(), "ops", pigeon_bus::token::Role::Operator, "tests")
            .await
            .unwrap();
    let bus = Bus::start(&kafka, &db, &[]);
    let api = |method: &str, path: &str, body: Value| {
        let request = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}/api/v1{path}", bus.admin))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let response = request.send().await.expect("the API answers");
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // What the router's rule makes of the gift: the audit lane gets it normalised; rank's
    // output lacks anchorId and the script's output, retagged to rank's gift, lacks it too:
    // both parked, each alone; the failing script costs only its own pigeon the letter; the
    // ended pigeon takes nothing.
    let expected = Made {
        delivered: BTreeSet::from([(
            "lane.audit".to_owned(),
            "audit.gift".to_owned(),
            "checked".to_owned(),
            r#"{"userId":42}"#.to_owned(),
        )]),
        dead: BTreeSet::from([
            ("checked".into(), "pigeon.module.rank".into(), "gift".into(), "Dictionary".into()),
            ("scripted".into(), "pigeon.module.rank".into(), "gift".into(), "Dictionary".into()),
            ("throws".into(), String::new(), String::new(), "Script".into()),
        ]),
    };

    // 1. From the source topic.
    let original = gift();
    kafka.produce(SOURCE, [Outgoing::from(&original)]);
    let (from_source, seen) = made(&kafka, store.as_ref(), 0, &BTreeSet::new(), 3).await;
    assert_eq!(from_source, expected, "from the source topic");

    // 2. A redrive: the letter stored as never routed (an operator fixed it), then retried.
    let fixed = gift();
    let message = OwnedMessage::new(
        Some(fixed.payload_bytes()),
        fixed.key.clone(),
        SOURCE.to_owned(),
        rdkafka::Timestamp::CreateTime(pigeon_bus::store::now_ms()),
        0,
        99,
        Some(fixed.headers()),
    );
    let mut stored = NewDeadLetter::from_message(&message, ErrorKind::Malformed, "fixed by hand".into());
    stored.letter_id = fixed.id.to_string();
    stored.first_retry = None;
    let redriven = store.insert_dead_letter(&stored).await.unwrap();
    let (status, answer) = api("POST", "/dead-letters/retry", json!({ "ids": [redriven] })).await;
    assert_eq!((status, &answer["count"]), (200, &json!(1)), "{answer}");
    let mut before = seen;
    before.insert(redriven);
    let (from_redrive, seen) = made(&kafka, store.as_ref(), 1, &before, 3).await;
    assert_eq!(from_redrive, expected, "from a redrive");

    // 3. A replay of the archived original through today's pigeons.
    let archived = wait_archived(store.as_ref()).await;
    assert_eq!(archived, 1, "the archive pigeon kept the source letter, and only it");
    let spec = json!({ "query": { "since": 0, "until": i64::MAX }, "through_pigeons": true });
    let (status, job) = api("POST", "/replays", spec).await;
    assert_eq!(status, 201, "{job}");
    let (from_replay, seen) = made(&kafka, store.as_ref(), 2, &seen, 3).await;
    assert_eq!(from_replay, expected, "from a replay");
    let lane = kafka.collect("lane.audit", 3, Duration::ZERO);
    assert_eq!(header(&lane[2], "ce_replayof"), Some(original.id.to_string()), "marked as a replay");

    // 4. POST /fly, to each pigeon by name.
    let fly = |pigeon: &str| {
        let body = json!({ "pigeon": pigeon, "letter": { "source": "tests", "tag": "gift.sent", "key": "room-7", "payload": { "uid": 42 } } });
        api("POST", "/fly", body)
    };
    let (status, checked) = fly("checked").await;
    assert_eq!(status, 200, "{checked}");
    assert_eq!(checked["delivered"].as_array().map(Vec::len), Some(1), "{checked}");
    assert_eq!(checked["dead_lettered"][0]["topic"], "pigeon.module.rank", "{checked}");
    assert!(checked["dead_lettered"][0]["error"].as_str().unwrap().contains("anchorId"), "{checked}");
    let (status, scripted) = fly("scripted").await;
    assert_eq!(status, 200, "{scripted}");
    assert_eq!(scripted["delivered"], json!([]), "{scripted}");
    assert_eq!(scripted["dead_lettered"][0]["topic"], "pigeon.module.rank", "{scripted}");
    let (status, throws) = fly("throws").await;
    assert_eq!(status, 200, "{throws}");
    assert!(throws["dead_lettered"][0]["error"].as_str().unwrap().contains("no gifts today"), "{throws}");
    let (from_fly, _) = made(&kafka, store.as_ref(), 3, &seen, 3).await;
    assert_eq!(from_fly, expected, "from POST /fly");
    let (status, ended) = fly("ended").await;
    assert_eq!(status, 409, "{ended}");
    assert!(ended["message"].as_str().unwrap().contains("live window"), "{ended}");
    let (status, kept) = fly("kept").await;
    assert_eq!(status, 409, "{kept}");
    assert!(kept["message"].as_str().unwrap().contains("archives letters"), "{kept}");

    // Nothing else went anywhere: no letter reached rank or the ended pigeon's lane, and the
    // archive holds the source letter alone.
    assert_eq!(kafka.collect("pigeon.module.rank", 0, Duration::from_secs(1)).len(), 0);
    assert_eq!(kafka.collect("lane.ended", 0, Duration::ZERO).len(), 0);
    assert_eq!(kafka.collect("lane.thrown", 0, Duration::ZERO).len(), 0);
    assert_eq!(wait_archived(store.as_ref()).await, 1);
    bus.stop();
}

/// How many letters the archive holds, once it holds any.
async fn wait_archived(store: &dyn Store) -> usize {
    let query = pigeon_bus::archive::ArchiveQuery { since: 0, until: i64::MAX, ..Default::default() };
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let found = store.archive().archived(&query, None, 100).await.unwrap();
        if !found.is_empty() {
            return found.len();
        }
        assert!(std::time::Instant::now() < deadline, "nothing was archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
