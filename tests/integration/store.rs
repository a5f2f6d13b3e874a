//! One conformance suite, run on SQLite and on MariaDB (standing in for MySQL and TiDB).
//! Each run gets its own database.

use std::sync::Arc;

use pigeon_bus::deadletter::{DeadLetterFilter, ErrorKind, NewDeadLetter, Status, StoredHeader};
use pigeon_bus::route::DestinationSpec;
use pigeon_bus::store::{NewToken, Saved, Store, StoreError};
use pigeon_bus::token::{self, Role};
use sqlx::Connection;

use crate::support::pigeon;

const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

async fn conformance(store: Arc<dyn Store>) {
    store.migrate().await.expect("migrations apply again without harm");
    pigeons_are_versioned(store.as_ref()).await;
    pigeons_apply_atomically(store.as_ref()).await;
    tokens_are_kept_hashed(store.as_ref()).await;
    dead_letters_keep_everything(store.as_ref()).await;
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
    }
}

async fn dead_letters_keep_everything(store: &dyn Store) {
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let produce = dead_letter("p1", ErrorKind::Produce, br#"{"userId":42}"#.to_vec());
    let malformed = dead_letter("p2", ErrorKind::Malformed, big.clone());
    let id1 = store.insert_dead_letter(&produce).await.unwrap();
    let id2 = store.insert_dead_letter(&malformed).await.unwrap();
    assert!(id2 > id1);

    let all = store.dead_letters(&DeadLetterFilter::default()).await.unwrap();
    assert_eq!(all.iter().map(|d| d.id).collect::<Vec<_>>(), [id2, id1], "newest first");
    let first = &all[1];
    assert_eq!(first.letter, produce, "the letter comes back byte for byte");
    assert_eq!(first.status, Status::Pending, "produce errors wait for a retry");
    assert!(first.next_attempt_at.is_some());
    assert_eq!(first.attempts, 1);
    assert_eq!(all[0].letter.payload.as_deref(), Some(big.as_slice()), "2 MB payload intact");
    assert_eq!(all[0].status, Status::Parked, "malformed letters wait for an operator");
    assert_eq!(all[0].next_attempt_at, None);

    let by_pigeon = store
        .dead_letters(&DeadLetterFilter { pigeon_id: Some("p1".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(by_pigeon.iter().map(|d| d.id).collect::<Vec<_>>(), [id1]);
    let parked = store
        .dead_letters(&DeadLetterFilter { status: Some(Status::Parked), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(parked.iter().map(|d| d.id).collect::<Vec<_>>(), [id2]);
    let limited = store.dead_letters(&DeadLetterFilter { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(limited.len(), 1);
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = pigeon_bus::serve::open_store(&url).await.unwrap();
    conformance(store).await;
}

#[tokio::test]
async fn mysql_store_conforms() {
    let name = format!("pigeon_t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::MySqlConnection::connect(MARIADB)
        .await
        .unwrap_or_else(|e| panic!("MariaDB must run at {MARIADB} (scripts/test starts it): {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let url = format!("mysql://root@127.0.0.1:3306/{name}");
    let store = pigeon_bus::serve::open_store(&url).await.unwrap();
    conformance(store).await;
    sqlx::query(&format!("DROP DATABASE {name}")).execute(&mut admin).await.unwrap();
}
