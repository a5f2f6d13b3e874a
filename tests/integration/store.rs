//! One conformance suite, run on SQLite and on MariaDB (standing in for MySQL and TiDB).
//! Each run gets its own database.

use std::sync::Arc;

use std::collections::HashSet;
use std::time::Duration;

use pigeon_bus::deadletter::{
    DeadLetterFilter, ErrorKind, NewDeadLetter, Outcome, Report, Selection, Status, StoredHeader,
};
use pigeon_bus::dictionary::{Field, FieldType};
use pigeon_bus::route::DestinationSpec;
use pigeon_bus::store::{now_ms, InstanceState, NewToken, RegistrationChanges, Saved, Store, StoreError};
use pigeon_bus::token::{self, Role};
use pigeon_sdk::registry::{CapabilityInfo, Registration};
use sqlx::Connection;

use crate::support::pigeon;

const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

async fn conformance(store: Arc<dyn Store>) {
    store.migrate().await.expect("migrations apply again without harm");
    pigeons_are_versioned(store.as_ref()).await;
    pigeons_apply_atomically(store.as_ref()).await;
    tokens_are_kept_hashed(store.as_ref()).await;
    dead_letters_keep_everything(store.as_ref()).await;
    claims_never_overlap_and_expire(store.as_ref()).await;
    operators_retry_edit_and_discard(store.as_ref()).await;
    racing_retriers_claim_each_letter_once(Arc::clone(&store)).await;
    registrations_keep_instances_and_capabilities(store.as_ref()).await;
    the_dictionary_is_seeded_versioned_and_audited(store.as_ref()).await;
    drift_and_observed_schemas_add_up(store.as_ref()).await;
    pigeon_counts_add_up_per_bucket(store.as_ref()).await;
    receipts_are_sampled_and_totalled(store.as_ref()).await;
    pigeons_are_listed_in_byte_order(store.as_ref()).await;
    hostile_dead_letters_are_stored_bounded(store.as_ref()).await;
}

/// A dead letter whose ids are longer than their columns and whose row is past TiDB's 6 MiB
/// entry limit is stored bounded, saying what was cut: refused, it would be retried for ever
/// and hold the letters behind it. A header name that is not UTF-8 comes back byte for byte.
async fn hostile_dead_letters_are_stored_bounded(store: &dyn Store) {
    let mut hostile = dead_letter("p9", ErrorKind::Malformed, vec![b'z'; 8 << 20]);
    hostile.letter_id = "i".repeat(10_000);
    hostile.pigeon_id = Some("p".repeat(1_000));
    hostile.dest_tag = Some("t".repeat(5_000));
    hostile.error_message = "e".repeat(100_000);
    hostile.headers.push(StoredHeader {
        name_bytes: Some(b"x-\xff".to_vec()),
        ..StoredHeader::new("x-\u{fffd}", Some(b"v"))
    });
    let id = store.insert_dead_letter(&hostile).await.expect("stored, bounded");
    let filter = DeadLetterFilter::default();
    let stored =
        store.dead_letters(&filter, None, 500).await.unwrap().into_iter().find(|d| d.id == id).unwrap();
    let letter = &stored.letter;
    assert!(
        letter.letter_id.len() <= 64 && letter.letter_id.starts_with("iii"),
        "{}",
        letter.letter_id.len()
    );
    assert!(letter.pigeon_id.as_ref().is_some_and(|p| p.len() <= 128));
    assert!(letter.dest_tag.as_ref().is_some_and(|t| t.len() <= 255));
    assert!(letter.payload.as_ref().is_some_and(|p| p.len() <= 5 << 20 && p.len() > 4 << 20));
    assert!(
        letter.error_message.contains("payload cut from 8388608"),
        "{}",
        &letter.error_message[letter.error_message.len() - 200..]
    );
    assert!(letter.error_message.len() <= 60_000);
    let odd = letter.headers.iter().find(|h| h.name_bytes.is_some()).expect("the odd header is kept");
    assert_eq!(odd.name_bytes(), b"x-\xff");
}

/// The API pages pigeons with `id > cursor` compared as bytes: the store must list them in that
/// order whatever the database's collation (MySQL's sorts `_` after letters).
async fn pigeons_are_listed_in_byte_order(store: &dyn Store) {
    for id in ["z_1", "za", "z.1", "z-1", "zB"] {
        let spec =
            pigeon(&id.to_lowercase(), "live.gift", "gift.sent", vec![DestinationSpec::topic("t", "x")]);
        store.save_pigeon(&spec, "test").await.unwrap();
    }
    let ids: Vec<String> = store
        .pigeons()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.spec.id)
        .filter(|id| id.starts_with('z'))
        .collect();
    assert_eq!(ids, ["z-1", "z.1", "z_1", "za", "zb"]);
}

/// Receipts: the kept ones come back by letter id, oldest first; keepers' totals of one bucket
/// add up (counts and sums) and keep the longest duration; old ones are pruned.
async fn receipts_are_sampled_and_totalled(store: &dyn Store) {
    use pigeon_bus::store::ReceiptTotal;
    use pigeon_sdk::receipt::{Outcome, Receipt};
    let receipt = |letter: &str, module: &str, at_ms: i64, outcome: Outcome| Receipt {
        letter_id: letter.into(),
        module: module.into(),
        instance: format!("{module}-1"),
        capability: "chest.drop".into(),
        outcome,
        duration_us: 1_500,
        attempts: if outcome == Outcome::Failed { 3 } else { 1 },
        at_ms,
        pigeon: Some("full-chest".into()),
        error: (outcome == Outcome::Failed).then(|| "no chest today".to_owned()),
    };
    let total = |bucket: i64, outcome: Outcome, receipts: u64, max: u64| ReceiptTotal {
        bucket,
        module: "act-toy".into(),
        capability: "chest.drop".into(),
        outcome,
        receipts,
        duration_us_sum: receipts * 100,
        duration_us_max: max,
    };
    let kept = [
        receipt("l-1", "act-toy", 2_000, Outcome::Handled),
        receipt("l-1", "act-rank", 1_000, Outcome::Failed),
    ];
    store.record_receipts(&kept, &[total(60_000, Outcome::Handled, 2, 300)]).await.unwrap();
    store
        .record_receipts(
            &[],
            &[total(60_000, Outcome::Handled, 3, 200), total(60_000, Outcome::Failed, 1, 50)],
        )
        .await
        .unwrap();
    store.record_receipts(&[], &[]).await.unwrap();
    let of = store.receipts_of("l-1").await.unwrap();
    assert_eq!(of, [kept[1].clone(), kept[0].clone()], "oldest first, every field back");
    assert!(store.receipts_of("l-2").await.unwrap().is_empty());
    let totals = store.receipt_totals_since(0).await.unwrap();
    assert_eq!(
        totals,
        [
            total(60_000, Outcome::Failed, 1, 50),
            ReceiptTotal { duration_us_sum: 500, ..total(60_000, Outcome::Handled, 5, 300) },
        ],
        "two keepers' counts of one bucket add up; the longest stays"
    );
    assert_eq!(store.prune_receipts(1_500, 60_001, 100).await.unwrap(), 1, "the older receipt goes");
    assert_eq!(store.receipts_of("l-1").await.unwrap(), [kept[0].clone()]);
    assert!(store.receipt_totals_since(0).await.unwrap().is_empty(), "totals before 60,001 go");
}

async fn pigeon_counts_add_up_per_bucket(store: &dyn Store) {
    use pigeon_bus::counters::{BucketCount, Tally};
    let count = |bucket: i64, pigeon: &str, letters_in: u64| BucketCount {
        bucket,
        pigeon_id: pigeon.into(),
        tally: Tally { letters_in, letters_out: 2 * letters_in, failures: letters_in / 2 },
    };
    // Two instances flush into the same buckets.
    store
        .record_counts(&[count(10_000, "gift", 4), count(20_000, "gift", 1), count(20_000, "chest", 3)])
        .await
        .unwrap();
    store.record_counts(&[count(20_000, "gift", 6)]).await.unwrap();
    store.record_counts(&[]).await.unwrap();
    let all = store.counts_since(0).await.unwrap();
    assert_eq!(
        all,
        [
            count(10_000, "gift", 4),
            count(20_000, "chest", 3),
            BucketCount {
                tally: Tally { letters_in: 7, letters_out: 14, failures: 3 },
                ..count(20_000, "gift", 0)
            }
        ],
        "oldest first; one bucket's counts add up"
    );
    assert_eq!(store.counts_since(20_000).await.unwrap().len(), 2);
    assert_eq!(store.prune_counts(20_000).await.unwrap(), 1);
    assert_eq!(store.counts_since(0).await.unwrap().len(), 2);
    // Many pigeons at once: more rows than one INSERT statement takes.
    let many: Vec<BucketCount> = (0..1_200).map(|i| count(30_000, &format!("p{i:04}"), 1)).collect();
    store.record_counts(&many).await.unwrap();
    assert_eq!(store.counts_since(30_000).await.unwrap().len(), 1_200);
}

async fn drift_and_observed_schemas_add_up(store: &dyn Store) {
    use pigeon_bus::dictionary::{ObservedField, ObservedTally};
    use pigeon_bus::store::Drift;
    let drift = |field: &str, seen: i64, at: i64| Drift {
        topic: "live.gift".into(),
        field: field.into(),
        seen,
        first_seen: at,
        last_seen: at,
    };
    store.record_drift(&[drift("combo", 3, 100), drift("skin", 1, 100)]).await.unwrap();
    store.record_drift(&[drift("combo", 2, 500)]).await.unwrap();
    let report = store.drift().await.unwrap();
    assert_eq!(
        report,
        [Drift { seen: 5, last_seen: 500, ..drift("combo", 0, 100) }, drift("skin", 1, 100)],
        "counts add up, the first sighting stays, most seen first"
    );

    let tally = ObservedTally::default();
    tally.record("live.gift", "gift.sent", Some(br#"{"userId":1,"roomId":"r"}"#), 100);
    tally.record("live.gift", "gift.sent", Some(br#"{"userId":"2"}"#), 200);
    tally.record("live.gift", "gift.combo", Some(b"not json"), 300);
    store.record_observed(&tally.take()).await.unwrap();
    tally.record("live.gift", "gift.sent", Some(br#"{"userId":3}"#), 400);
    store.record_observed(&tally.take()).await.unwrap();
    let observed = store.observed(Some("live.gift")).await.unwrap();
    assert_eq!(observed.len(), 2);
    assert_eq!(
        (observed[0].tag.as_str(), observed[0].sampled, observed[0].fields.len()),
        ("gift.combo", 1, 0)
    );
    let sent = &observed[1];
    assert_eq!((sent.sampled, sent.last_seen), (3, 400));
    let field =
        |field: &str, kind: &str, seen: i64| ObservedField { field: field.into(), kind: kind.into(), seen };
    assert_eq!(
        sent.fields,
        [field("roomId", "string", 1), field("userId", "integer", 2), field("userId", "string", 1)]
    );
    assert!(store.observed(Some("live.view")).await.unwrap().is_empty());
    assert_eq!(store.observed(None).await.unwrap().len(), 2);
}

async fn the_dictionary_is_seeded_versioned_and_audited(store: &dyn Store) {
    let seeded = store.dictionary().await.unwrap();
    let names: Vec<&str> = seeded.iter().map(|f| f.field.name.as_str()).collect();
    let mut sdk: Vec<&str> = pigeon_sdk::fields::ALL.to_vec();
    sdk.sort();
    assert_eq!(names, sdk, "seeded with exactly the SDK's fields, by name");
    let user = &seeded.iter().find(|f| f.field.name == "userId").unwrap();
    assert_eq!((user.field.kind, user.version), (FieldType::Integer, 1));
    assert_eq!(user.field.aliases, ["uid", "user_id"]);

    let mut combo = Field {
        name: "comboCount".into(),
        kind: FieldType::Integer,
        description: "Gifts sent in one combo".into(),
        aliases: vec!["combo".into()],
    };
    assert_eq!(store.save_field(&combo, "ops").await.unwrap(), Saved { version: 1, changed: true });
    assert_eq!(store.save_field(&combo, "ops").await.unwrap(), Saved { version: 1, changed: false });
    combo.aliases.push("combo_count".into());
    assert_eq!(store.save_field(&combo, "ops").await.unwrap(), Saved { version: 2, changed: true });
    let stored =
        store.dictionary().await.unwrap().into_iter().find(|f| f.field.name == "comboCount").unwrap();
    assert_eq!((stored.field, stored.version), (combo.clone(), 2), "kept whole");

    let deleted = store.delete_field("comboCount", "ops").await.unwrap().expect("it was there");
    assert_eq!(deleted.version, 2);
    assert!(store.delete_field("comboCount", "ops").await.unwrap().is_none());
    let audit = store.audit(None, 3).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["dictionary.delete", "dictionary.update", "dictionary.create"]);
    assert_eq!(audit[1].before.as_ref().unwrap()["aliases"], serde_json::json!(["combo"]));
    assert_eq!(audit[0].target, "dictionary/comboCount");
}

fn registration(instance: &str, capabilities: &[(&str, &str)]) -> Registration {
    Registration {
        module: "act-toy".into(),
        instance: instance.into(),
        host: "h1".into(),
        version: "1.0".into(),
        topic: "pigeon.module.act-toy".into(),
        lanes: vec!["lane.toy".into()],
        capabilities: capabilities
            .iter()
            .map(|(name, description)| CapabilityInfo {
                name: name.to_string(),
                description: description.to_string(),
                requires: vec!["roomId".into()],
            })
            .collect(),
        flies: vec![pigeon_sdk::registry::FlownTag {
            tag: "progress.full".into(),
            fields: vec!["roomId".into()],
        }],
        heartbeat_ms: 1_000,
        leaving: false,
        sent_at_ms: 0,
    }
}

async fn registrations_keep_instances_and_capabilities(store: &dyn Store) {
    let t = 1_000_000;
    let both = [("chest.drop", "Drops a chest"), ("progress.add", "Adds progress")];
    let changes = store.record_registration(&registration("a", &both), t).await.unwrap();
    assert!(changes.new_instance);
    assert_eq!(changes.added, ["chest.drop", "progress.add"]);
    let again = store.record_registration(&registration("a", &both), t + 1_000).await.unwrap();
    assert_eq!(again, RegistrationChanges::default(), "a heartbeat changes nothing");

    // A second instance of a newer version no longer has progress.add: kept while `a` lives.
    let newer = [("chest.drop", "Drops a treasure chest")];
    let changes = store.record_registration(&registration("b", &newer), t + 1_500).await.unwrap();
    assert_eq!(
        (changes.updated.as_slice(), changes.retired.len()),
        (["chest.drop".to_string()].as_slice(), 0)
    );
    // `a` is silent past three heartbeats: the next registration of `b` retires progress.add.
    let changes = store.record_registration(&registration("b", &newer), t + 5_000).await.unwrap();
    assert_eq!(changes.retired, ["progress.add"]);

    let caps = store.capabilities().await.unwrap();
    let summary: Vec<(&str, &str, bool)> =
        caps.iter().map(|c| (c.name.as_str(), c.description.as_str(), c.retired_at.is_some())).collect();
    assert_eq!(
        summary,
        [("chest.drop", "Drops a treasure chest", false), ("progress.add", "Adds progress", true)]
    );
    assert_eq!(caps[0].requires, ["roomId"]);

    let instances = store.module_instances().await.unwrap();
    let states: Vec<(&str, InstanceState)> =
        instances.iter().map(|i| (i.instance.as_str(), i.state(t + 5_000))).collect();
    assert_eq!(states, [("a", InstanceState::Stale), ("b", InstanceState::Live)]);
    assert_eq!((instances[1].started_at, instances[1].last_seen), (t + 1_500, t + 5_000));
    assert_eq!(instances[1].lanes, ["lane.toy"]);

    // Leaving keeps the capabilities; coming back with progress.add restores it.
    let leaving = Registration { leaving: true, ..registration("b", &newer) };
    assert_eq!(store.record_registration(&leaving, t + 6_000).await.unwrap().retired.len(), 0);
    let b = store.module_instances().await.unwrap().into_iter().find(|i| i.instance == "b").unwrap();
    assert_eq!(b.state(t + 6_000), InstanceState::Left);
    let changes = store.record_registration(&registration("c", &both), t + 7_000).await.unwrap();
    assert_eq!(changes.updated, ["chest.drop", "progress.add"]);
    assert!(store.capabilities().await.unwrap().iter().all(|c| c.retired_at.is_none()));

    // Capability changes are audited, heartbeats are not.
    let audit = store.audit(None, 100).await.unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e.target.starts_with("capability/"))
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .rev()
        .collect();
    assert_eq!(
        actions,
        [
            ("capability.register", "capability/act-toy/chest.drop"),
            ("capability.register", "capability/act-toy/progress.add"),
            ("capability.update", "capability/act-toy/chest.drop"),
            ("capability.retire", "capability/act-toy/progress.add"),
            ("capability.update", "capability/act-toy/chest.drop"),
            ("capability.update", "capability/act-toy/progress.add"),
        ]
    );
    assert!(audit
        .iter()
        .filter(|e| e.target.starts_with("capability/"))
        .all(|e| e.actor == "module:act-toy"));
    let declared = store.declared_tags().await.unwrap();
    let tags: Vec<(&str, &str, Vec<String>)> =
        declared.iter().map(|d| (d.module.as_str(), d.tag.as_str(), d.fields.clone())).collect();
    assert_eq!(
        tags,
        [("act-toy", "progress.full", vec!["roomId".to_owned()])],
        "what the module flies, declared"
    );
}

async fn pigeons_are_versioned(store: &dyn Store) {
    let mut gift =
        pigeon("gift", "live.gift", "gift.sent", vec![DestinationSpec::capability("act-toy/progress.add")]);
    assert_eq!(store.save_pigeon(&gift, "alice").await.unwrap(), Saved { version: 1, changed: true });
    assert_eq!(
        store.save_pigeon(&gift, "alice").await.unwrap(),
        Saved { version: 1, changed: false },
        "saving the same spec is not a new version"
    );
    let v1 = gift.clone();
    gift.matcher.tag = "gift.*".into();
    gift.enabled = false;
    assert_eq!(store.save_pigeon(&gift, "bob").await.unwrap().version, 2);
    let other = pigeon("another", "live.view", "view", vec![DestinationSpec::topic("t", "x")]);
    store.save_pigeon(&other, "bob").await.unwrap();

    let stored = store.pigeon("gift").await.unwrap().expect("stored");
    assert_eq!((stored.spec, stored.version), (gift.clone(), 2));
    let ids: Vec<String> = store.pigeons().await.unwrap().into_iter().map(|p| p.spec.id).collect();
    assert_eq!(ids, ["another", "gift"]);
    let history = store.pigeon_versions("gift").await.unwrap();
    assert_eq!(history.iter().map(|p| (p.version, &p.spec)).collect::<Vec<_>>(), [(1, &v1), (2, &gift)]);

    assert!(store.delete_pigeon("gift", "carol").await.unwrap());
    assert!(!store.delete_pigeon("gift", "carol").await.unwrap(), "deleting twice says it was gone");
    assert!(store.pigeon("gift").await.unwrap().is_none());
    assert_eq!(store.pigeon_versions("gift").await.unwrap().len(), 2, "history outlives the pigeon");
    assert_eq!(
        store.save_pigeon(&v1, "carol").await.unwrap().version,
        3,
        "a pigeon saved again continues its history"
    );
    assert_eq!(store.pigeon_versions("gift").await.unwrap().len(), 3);

    // Every change is in the audit log, with who, what, before and after; no-ops are not.
    let audit = store.audit(None, 100).await.unwrap();
    let lines: Vec<(&str, &str, &str)> =
        audit.iter().map(|a| (a.actor.as_str(), a.action.as_str(), a.target.as_str())).collect();
    assert_eq!(
        lines,
        [
            ("carol", "pigeon.create", "pigeon/gift"),
            ("carol", "pigeon.delete", "pigeon/gift"),
            ("bob", "pigeon.create", "pigeon/another"),
            ("bob", "pigeon.update", "pigeon/gift"),
            ("alice", "pigeon.create", "pigeon/gift"),
        ]
    );
    let update = &audit[3];
    assert_eq!(update.before.as_ref().unwrap()["match"]["tag"], "gift.sent");
    assert_eq!(update.after.as_ref().unwrap()["match"]["tag"], "gift.*");
    assert!(audit[1].after.is_none() && audit[1].before.is_some());
    let older = store.audit(Some(audit[1].id), 2).await.unwrap();
    assert_eq!(
        older.iter().map(|a| a.id).collect::<Vec<_>>(),
        [audit[2].id, audit[3].id],
        "pages go back in time"
    );
    store.delete_pigeon("gift", "carol").await.unwrap();
}

async fn pigeons_apply_atomically(store: &dyn Store) {
    let a = pigeon("apply-a", "live.gift", "a", vec![DestinationSpec::capability("m/a")]);
    let b = pigeon("apply-b", "live.gift", "b", vec![DestinationSpec::capability("m/b")]);
    store.apply_pigeons(&[a.clone(), b.clone()], &[], "ops").await.unwrap();
    let mut b2 = b.clone();
    b2.name = "renamed".into();
    let saved = store.apply_pigeons(&[a.clone(), b2.clone()], &["apply-a".into()], "ops").await.unwrap();
    assert_eq!(saved, [Saved { version: 1, changed: false }, Saved { version: 2, changed: true }]);
    assert!(store.pigeon("apply-a").await.unwrap().is_none());
    assert_eq!(store.pigeon("apply-b").await.unwrap().unwrap().spec, b2);
}

async fn tokens_are_kept_hashed(store: &dyn Store) {
    let value = token::generate();
    let new = NewToken { name: "ci".into(), role: Role::Operator, hash: token::hash(&value) };
    store.create_token(&new, "local").await.unwrap();
    let err = store.create_token(&new, "local").await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let found = store.token_by_hash(&token::hash(&value)).await.unwrap().expect("found by hash");
    assert_eq!((found.name.as_str(), found.role, found.created_by.as_str()), ("ci", Role::Operator, "local"));
    assert!(store.token_by_hash(&token::hash("pgn_wrong")).await.unwrap().is_none());
    assert!(store.revoke_token("ci", "admin").await.unwrap());
    assert!(!store.revoke_token("ci", "admin").await.unwrap(), "revoked once");
    assert!(
        store.token_by_hash(&token::hash(&value)).await.unwrap().is_none(),
        "a revoked token opens nothing"
    );
    let listed = store.tokens().await.unwrap();
    assert!(listed.iter().any(|t| t.name == "ci" && t.revoked_at.is_some()));
    let audit = store.audit(None, 2).await.unwrap();
    assert_eq!(audit[0].action, "token.revoke");
    assert_eq!(audit[1].action, "token.create");
    assert!(!audit[1].after.as_ref().unwrap().to_string().contains(&value), "the audit never holds a token");
}

fn dead_letter(pigeon: &str, kind: ErrorKind, payload: Vec<u8>) -> NewDeadLetter {
    NewDeadLetter {
        letter_id: uuid::Uuid::now_v7().to_string(),
        pigeon_id: Some(pigeon.into()),
        pigeon_version: Some(3),
        source_topic: "live.gift".into(),
        source_partition: 5,
        source_offset: 123_456_789_012,
        dest_topic: Some("pigeon.module.act-toy".into()),
        dest_tag: Some("progress.add".into()),
        key: Some(vec![0, 159, 146, 150]),
        headers: vec![
            StoredHeader::new("ce_type", Some(b"progress.add")),
            StoredHeader::new("x-binary", Some(&[0xff, 0xfe, 0x00])),
            StoredHeader::new("x-null", None),
        ],
        payload: Some(payload),
        error_kind: kind,
        error_message: "Message production error: MessageTimedOut (Local: Message timed out)".into(),
        first_retry: Some(Duration::from_secs(10)),
    }
}

/// A produce dead letter of `pigeon`, due `due_in` after it is stored.
fn due(pigeon: &str, due_in: Duration) -> NewDeadLetter {
    NewDeadLetter { first_retry: Some(due_in), ..dead_letter(pigeon, ErrorKind::Produce, b"{}".to_vec()) }
}

fn ids(letters: &[pigeon_bus::deadletter::DeadLetter]) -> Vec<i64> {
    letters.iter().map(|d| d.id).collect()
}

async fn claims_never_overlap_and_expire(store: &dyn Store) {
    let later = now_ms() + 60_000;
    let mut due_now = Vec::new();
    for _ in 0..3 {
        due_now.push(store.insert_dead_letter(&due("claims", Duration::ZERO)).await.unwrap());
    }
    let not_yet = store.insert_dead_letter(&due("claims", Duration::from_secs(3600))).await.unwrap();

    let a = store.claim_dead_letters("token-a", later, 2).await.unwrap();
    assert_eq!(ids(&a.letters), due_now[..2], "the batch limit holds, oldest due first");
    assert!(a.letters.iter().all(|d| d.status == Status::Retrying));
    let b = store.claim_dead_letters("token-b", later, 10).await.unwrap();
    assert_eq!(ids(&b.letters), [due_now[2]], "a live claim is never claimed again; {not_yet} is not due");
    assert!(store.claim_dead_letters("token-c", later, 10).await.unwrap().letters.is_empty());

    let delivered =
        Report { outcome: Outcome::Delivered, message: "delivered to t".into(), next_attempt_at: None };
    assert!(!store.report_attempt(due_now[0], "token-b", "r2", &delivered).await.unwrap(), "not b's claim");
    assert!(store.report_attempt(due_now[0], "token-a", "r1", &delivered).await.unwrap());
    assert!(!store.report_attempt(due_now[0], "token-a", "r1", &delivered).await.unwrap(), "reported once");
    let row = store.dead_letter(due_now[0]).await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts, row.next_attempt_at), (Status::Delivered, 2, None));

    // A failed retry waits for its next step; one due again at once is claimed again.
    let failed = Report {
        outcome: Outcome::Failed,
        message: "broker down".into(),
        next_attempt_at: Some(now_ms() - 1),
    };
    assert!(store.report_attempt(due_now[1], "token-a", "r1", &failed).await.unwrap());
    let row = store.dead_letter(due_now[1]).await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts), (Status::Pending, 2));
    assert_eq!(row.letter.error_message, "broker down", "the latest error is shown");

    // A retrier that dies keeps its claim only until the lease runs out.
    let dying = store.claim_dead_letters("token-dying", now_ms() - 1, 10).await.unwrap();
    assert_eq!(ids(&dying.letters), [due_now[1]]);
    let heir = store.claim_dead_letters("token-heir", later, 10).await.unwrap();
    assert_eq!(ids(&heir.letters), [due_now[1]], "taken over after the lease");
    assert_eq!(heir.taken_over, 1, "and counted");
    assert!(!store.report_attempt(due_now[1], "token-dying", "r3", &delivered).await.unwrap(), "claim lost");
    assert!(store.report_attempt(due_now[1], "token-heir", "r4", &delivered).await.unwrap());

    let history = store.dead_letter_attempts(due_now[1]).await.unwrap();
    let outcomes: Vec<(i32, Outcome, &str)> =
        history.iter().map(|a| (a.attempt, a.outcome.clone(), a.actor.as_str())).collect();
    assert_eq!(
        outcomes,
        [(2, Outcome::Failed, "r1"), (3, Outcome::TakenOver, "token-heir"), (4, Outcome::Delivered, "r4")]
    );
    assert!(store.report_attempt(due_now[2], "token-b", "r2", &delivered).await.unwrap());

    // Parked after the last step.
    let parked =
        Report { outcome: Outcome::Parked, message: "retries used up".into(), next_attempt_at: None };
    let last = store.insert_dead_letter(&due("claims", Duration::ZERO)).await.unwrap();
    store.claim_dead_letters("token-e", later, 10).await.unwrap();
    assert!(store.report_attempt(last, "token-e", "r5", &parked).await.unwrap());
    assert_eq!(store.dead_letter(last).await.unwrap().unwrap().status, Status::Parked);
    assert_eq!(store.dead_letter(not_yet).await.unwrap().unwrap().status, Status::Pending);
}

async fn operators_retry_edit_and_discard(store: &dyn Store) {
    let script = store
        .insert_dead_letter(&dead_letter("ops", ErrorKind::Script, br#"{"uid":1}"#.to_vec()))
        .await
        .unwrap();
    let waiting = store.insert_dead_letter(&due("ops", Duration::from_secs(3600))).await.unwrap();
    assert_eq!(store.dead_letter(script).await.unwrap().unwrap().status, Status::Parked);

    // Edit, then redrive: due at once.
    assert!(store.edit_dead_letter(script, br#"{"uid":2}"#, "alice").await.unwrap());
    let count = store.retry_dead_letters(&Selection::Ids(vec![script, 999_999_999]), "alice").await.unwrap();
    assert_eq!(count, 1, "unknown ids change nothing");
    let row = store.dead_letter(script).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Pending);
    assert!(row.next_attempt_at.unwrap() <= now_ms());
    assert_eq!(row.letter.payload.as_deref(), Some(br#"{"uid":2}"#.as_slice()));

    // Discard by filter; discarded and delivered letters are not operable.
    let filter = DeadLetterFilter { pigeon_id: Some("ops".into()), ..Default::default() };
    let count = store.discard_dead_letters(&Selection::Filter(filter.clone()), "bob").await.unwrap();
    assert_eq!(count, 2);
    assert_eq!(store.dead_letter(waiting).await.unwrap().unwrap().status, Status::Discarded);
    assert_eq!(store.retry_dead_letters(&Selection::Filter(filter), "bob").await.unwrap(), 0);
    assert!(!store.edit_dead_letter(script, b"{}", "bob").await.unwrap());

    let audit = store.audit(None, 3).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["dead_letter.retry", "dead_letter.discard", "dead_letter.retry"]);
    assert_eq!(audit[1].actor, "bob");
    assert_eq!(audit[1].after.as_ref().unwrap()["count"], 2);
    let edit = store.audit(Some(audit[2].id), 1).await.unwrap();
    assert_eq!(edit[0].action, "dead_letter.edit");
    assert_eq!(edit[0].target, format!("dead-letter/{script}"));
    assert_eq!(edit[0].before.as_ref().unwrap()["payload"], r#"{"uid":1}"#);
}

async fn racing_retriers_claim_each_letter_once(store: Arc<dyn Store>) {
    let mut inserted = HashSet::new();
    for _ in 0..200 {
        inserted.insert(store.insert_dead_letter(&due("race", Duration::ZERO)).await.unwrap());
    }
    let start = Arc::new(tokio::sync::Barrier::new(2));
    // Spawned before either is awaited, so they really race.
    let claimers: Vec<_> = (0..2)
        .map(|n| {
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                let mut mine = Vec::new();
                for round in 0.. {
                    let token = format!("racer-{n}-{round}");
                    let claimed = store.claim_dead_letters(&token, now_ms() + 60_000, 4).await.unwrap();
                    if claimed.letters.is_empty() {
                        return mine;
                    }
                    mine.extend(claimed.letters.iter().map(|d| d.id));
                }
                mine
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut per_claimer = Vec::new();
    for claimer in claimers {
        let mine = claimer.await.unwrap();
        per_claimer.push(mine.len());
        for id in mine {
            assert!(seen.insert(id), "dead letter {id} claimed twice");
        }
    }
    let raced: HashSet<i64> = seen.intersection(&inserted).copied().collect();
    assert_eq!(raced, inserted, "every due letter claimed");
    println!("two claimers took {per_claimer:?} of 200 due dead letters, none twice");
}

async fn dead_letters_keep_everything(store: &dyn Store) {
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let produce = dead_letter("p1", ErrorKind::Produce, br#"{"userId":42}"#.to_vec());
    let malformed = dead_letter("p2", ErrorKind::Malformed, big.clone());
    let id1 = store.insert_dead_letter(&produce).await.unwrap();
    let id2 = store.insert_dead_letter(&malformed).await.unwrap();
    assert!(id2 > id1);
    // What the admin role's pigeon_dead_letters_stored shows.
    let mut tally = store.dead_letter_tally().await.unwrap();
    tally.sort_by_key(|(status, kind, _)| (status.as_str(), kind.as_str()));
    assert_eq!(
        tally,
        [(Status::Parked, ErrorKind::Malformed, 1), (Status::Pending, ErrorKind::Produce, 1)],
        "waiting dead letters by status and kind"
    );

    let all = store.dead_letters(&DeadLetterFilter::default(), None, 100).await.unwrap();
    assert_eq!(all.iter().map(|d| d.id).collect::<Vec<_>>(), [id2, id1], "newest first");
    let first = &all[1];
    assert_eq!(
        first.letter,
        NewDeadLetter { first_retry: None, ..produce },
        "the letter comes back byte for byte"
    );
    assert_eq!(first.status, Status::Pending, "produce errors wait for a retry");
    let wait = first.next_attempt_at.unwrap() - first.created_at;
    assert_eq!(wait, 10_000, "the first retry waits the pigeon's first step");
    assert_eq!(first.attempts, 1);
    assert_eq!(all[0].letter.payload.as_deref(), Some(big.as_slice()), "2 MB payload intact");
    assert_eq!(all[0].status, Status::Parked, "malformed letters wait for an operator");
    assert_eq!(all[0].next_attempt_at, None);

    let by_pigeon = store
        .dead_letters(&DeadLetterFilter { pigeon_id: Some("p1".into()), ..Default::default() }, None, 100)
        .await
        .unwrap();
    assert_eq!(by_pigeon.iter().map(|d| d.id).collect::<Vec<_>>(), [id1]);
    let parked = store
        .dead_letters(&DeadLetterFilter { status: Some(Status::Parked), ..Default::default() }, None, 100)
        .await
        .unwrap();
    assert_eq!(parked.iter().map(|d| d.id).collect::<Vec<_>>(), [id2]);
    let limited = store.dead_letters(&DeadLetterFilter::default(), None, 1).await.unwrap();
    assert_eq!(ids(&limited), [id2]);
    let next = store.dead_letters(&DeadLetterFilter::default(), Some(id2), 1).await.unwrap();
    assert_eq!(ids(&next), [id1], "the cursor pages on");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = pigeon_bus::store::open_migrated(&url).await.unwrap();
    conformance(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_store_conforms() {
    let name = format!("pigeon_t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::MySqlConnection::connect(MARIADB)
        .await
        .unwrap_or_else(|e| panic!("MariaDB must run at {MARIADB} (scripts/test starts it): {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let url = format!("mysql://root@127.0.0.1:3306/{name}");
    let store = pigeon_bus::store::open_migrated(&url).await.unwrap();
    conformance(store).await;
    sqlx::query(&format!("DROP DATABASE {name}")).execute(&mut admin).await.unwrap();
}

/// Two transactions that lock rows in opposite orders deadlock on MariaDB, which rolls one
/// back; the store recognises that error as a lost race, so racing claims run again.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_deadlock_on_mariadb_is_a_lost_race() {
    let table = format!("test.pigeon_deadlock_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::MySqlPool::connect(MARIADB).await.expect("MariaDB (scripts/test starts it)");
    sqlx::query(&format!("CREATE TABLE {table} (id INT PRIMARY KEY, v INT) ENGINE=InnoDB"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("INSERT INTO {table} VALUES (1, 0), (2, 0)")).execute(&pool).await.unwrap();
    let (mut a, mut b) = (pool.begin().await.unwrap(), pool.begin().await.unwrap());
    let update = |id: i32| format!("UPDATE {table} SET v = v + 1 WHERE id = {id}");
    sqlx::query(&update(1)).execute(&mut *a).await.unwrap();
    sqlx::query(&update(2)).execute(&mut *b).await.unwrap();
    // Each now waits for the other's row: InnoDB picks a victim at once.
    let (a_then_2, b_then_1) = (update(2), update(1));
    let (first, second) =
        tokio::join!(sqlx::query(&a_then_2).execute(&mut *a), sqlx::query(&b_then_1).execute(&mut *b));
    let victim = first.err().or(second.err()).expect("one transaction is rolled back");
    let error = StoreError::from(victim);
    assert!(error.lost_a_race(), "{error}");
    assert!(error.is_transient(), "a deadlock victim may run again");
    assert!(!StoreError::Conflict("x".into()).lost_a_race());
    drop((a, b));
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.unwrap();
}

/// Store errors say whether trying again can help: an unreachable database can, a statement the
/// database refuses cannot (callers skip it rather than retry it for ever).
#[tokio::test(flavor = "multi_thread")]
async fn store_errors_say_whether_trying_again_can_help() {
    let unreachable = sqlx::MySqlConnection::connect("mysql://root@127.0.0.1:1/test").await.unwrap_err();
    assert!(StoreError::from(unreachable).is_transient());
    let table = format!("test.pigeon_refused_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::MySqlPool::connect(MARIADB).await.expect("MariaDB (scripts/test starts it)");
    sqlx::query(&format!("CREATE TABLE {table} (id INT PRIMARY KEY)")).execute(&pool).await.unwrap();
    sqlx::query(&format!("INSERT INTO {table} VALUES (1)")).execute(&pool).await.unwrap();
    let duplicate = sqlx::query(&format!("INSERT INTO {table} VALUES (1)")).execute(&pool).await.unwrap_err();
    let error = StoreError::from(duplicate);
    assert!(!error.is_transient(), "a duplicate key fails the same way every time: {error}");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.unwrap();
}

/// A dead letter the store refuses for good (its statement, not the database being away) is
/// never tried for ever, and costs no other letter its place: the batch goes one by one, the
/// refused one is stored without its payload, saying why and how big it was.
async fn a_refused_dead_letter_is_stored_bare_and_the_others_whole(store: &dyn Store) {
    let good = [
        dead_letter("p-good", ErrorKind::Produce, b"{\"ok\":1}".to_vec()),
        dead_letter("p-good", ErrorKind::Produce, b"{\"ok\":2}".to_vec()),
    ];
    let poison = dead_letter("p-poison", ErrorKind::Malformed, b"{\"poison\":true}".to_vec());
    let cancel = tokio_util::sync::CancellationToken::new();
    let batch = [&good[0], &poison, &good[1]];
    let stored = tokio::time::timeout(
        Duration::from_secs(30),
        pigeon_bus::deadletter::store_durably(store, &batch, &cancel),
    )
    .await;
    assert_eq!(stored, Ok(Some(())), "stored once, not tried for ever");
    let rows = store.dead_letters(&DeadLetterFilter::default(), None, 500).await.unwrap();
    let row = |id: &str| rows.iter().find(|r| r.letter.letter_id == id).map(|r| &r.letter);
    for letter in &good {
        assert_eq!(row(&letter.letter_id).and_then(|r| r.payload.clone()), letter.payload, "kept whole");
    }
    let bare = row(&poison.letter_id).expect("the refused letter has a row");
    assert_eq!(bare.payload, None);
    assert_eq!(
        (bare.source_topic.as_str(), bare.source_offset),
        ("live.gift", 123_456_789_012),
        "its place in Kafka"
    );
    let error = &bare.error_message;
    assert!(error.contains("stored without its payload") && error.contains("poisoned payload"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_never_retries_a_refused_dead_letter_for_ever() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = pigeon_bus::store::open_migrated(&url).await.unwrap();
    crate::support::refuse_poison_on_sqlite(&url, "dead_letters").await;
    a_refused_dead_letter_is_stored_bare_and_the_others_whole(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_never_retries_a_refused_dead_letter_for_ever() {
    let name = format!("pigeon_t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::MySqlConnection::connect(MARIADB).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let url = format!("mysql://root@127.0.0.1:3306/{name}");
    let store = pigeon_bus::store::open_migrated(&url).await.unwrap();
    let mut raw = sqlx::MySqlConnection::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON dead_letters FOR EACH ROW BEGIN \
         IF NEW.payload LIKE '%poison%' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poisoned payload'; END IF; END",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    a_refused_dead_letter_is_stored_bare_and_the_others_whole(store.as_ref()).await;
    sqlx::query(&format!("DROP DATABASE {name}")).execute(&mut admin).await.unwrap();
}
