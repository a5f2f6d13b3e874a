//! The archive and replay jobs in the store, on SQLite and MariaDB; and the MySQL migrations
//! checked for SQL that TiDB does not take.

use std::collections::BTreeMap;

use pigeon_bus::archive::{ArchiveQuery, ArchivedLetter, KeyField, Position, ReplaySpec, ReplayStatus};
use pigeon_bus::deadletter::StoredHeader;
use pigeon_bus::store::archive::ReplayProgress;
use pigeon_bus::store::Store;

/// A letter of `topic` at `time`, position `offset`, for user `user`.
fn letter(topic: &str, partition: i32, offset: i64, time: i64, user: Option<&str>) -> ArchivedLetter {
    let keys: BTreeMap<KeyField, String> = user
        .map(|u| (KeyField::UserId, u.to_owned()))
        .into_iter()
        .chain([(KeyField::RoomId, "r-1".to_owned())])
        .collect();
    ArchivedLetter {
        letter_id: format!("{topic}-{partition}-{offset}"),
        pigeon_id: if topic == "live.gift" { "gifts".into() } else { "views".into() },
        position: Position { time, topic: topic.into(), partition, offset },
        tag: if topic == "live.gift" { "gift.sent".into() } else { "view.enter".into() },
        keys,
        key: Some(format!("room-{partition}").into_bytes()),
        headers: vec![
            StoredHeader::new("ce_id", Some(format!("{topic}-{partition}-{offset}").as_bytes())),
            StoredHeader::new("binary", Some(&[0xff, 0x00, 0xfe])),
            StoredHeader::new("empty", None),
        ],
        payload: Some(format!(r#"{{"userId":{},"n":{offset}}}"#, user.unwrap_or("0")).into_bytes()),
        archived_at: 0,
    }
}

fn everything() -> ArchiveQuery {
    ArchiveQuery { since: 0, until: i64::MAX, ..Default::default() }
}

async fn archive_conforms(store: &dyn Store) {
    let archive = store.archive();
    // Three letters in the same millisecond: ordered by topic, partition, offset.
    let batch = vec![
        letter("live.view", 0, 5, 1_000, None),
        letter("live.gift", 1, 9, 1_000, Some("42")),
        letter("live.gift", 0, 10, 1_000, Some("42")),
        letter("live.gift", 0, 11, 2_000, Some("7")),
        letter("live.gift", 2, 1, 500, Some("42")),
    ];
    assert_eq!(archive.archive_letters(&batch).await.unwrap(), 5);
    // Redelivered (and a changed copy): stored once, as first written.
    let mut again = batch.clone();
    again[0].payload = Some(b"changed".to_vec());
    assert_eq!(archive.archive_letters(&again).await.unwrap(), 0, "nothing new on redelivery");
    let all = archive.archived(&everything(), None, 100).await.unwrap();
    let order: Vec<&str> = all.iter().map(|l| l.letter_id.as_str()).collect();
    assert_eq!(
        order,
        ["live.gift-2-1", "live.gift-0-10", "live.gift-1-9", "live.view-0-5", "live.gift-0-11"],
        "archive order: time, topic, partition, offset"
    );
    let view = all.iter().find(|l| l.letter_id == "live.view-0-5").unwrap();
    assert_eq!(view.payload, batch[0].payload, "the first write stands");
    let whole = archive.archived_letter("live.gift-1-9").await.unwrap().unwrap();
    assert!(whole.archived_at > 0);
    assert_eq!(
        ArchivedLetter { archived_at: 0, ..whole },
        batch[1],
        "kept whole: headers, key, payload, keys"
    );
    assert!(archive.archived_letter("nope").await.unwrap().is_none());

    // Each criterion narrows; pages follow the order.
    let count = |query: ArchiveQuery| async move { archive.count_archived(&query).await.unwrap() };
    assert_eq!(count(everything()).await, 5);
    assert_eq!(count(ArchiveQuery { topic: Some("live.view".into()), ..everything() }).await, 1);
    assert_eq!(count(ArchiveQuery { tag: Some("gift.sent".into()), ..everything() }).await, 4);
    assert_eq!(count(ArchiveQuery { pigeon: Some("views".into()), ..everything() }).await, 1);
    let user42 = ArchiveQuery { keys: [(KeyField::UserId, "42".to_owned())].into(), ..everything() };
    assert_eq!(count(user42.clone()).await, 3);
    let window = ArchiveQuery { since: 1_000, until: 2_000, ..everything() };
    assert_eq!(count(window).await, 3, "since inclusive, until exclusive");
    let mut paged = Vec::new();
    let mut after: Option<Position> = None;
    loop {
        let page = archive.archived(&everything(), after.as_ref(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|l| l.position.clone());
        paged.extend(page.into_iter().map(|l| l.letter_id));
    }
    assert_eq!(paged, order, "pages of two, through ties in one millisecond, give the same order");

    // Multi-row inserts in chunks, in one call.
    let many: Vec<ArchivedLetter> =
        (0..2_500).map(|i| letter("live.bulk", i % 16, i as i64, 10_000 + i as i64, None)).collect();
    assert_eq!(archive.archive_letters(&many).await.unwrap(), 2_500);
    let bulk = ArchiveQuery { topic: Some("live.bulk".into()), ..everything() };
    assert_eq!(count(bulk.clone()).await, 2_500);

    // Retention deletes in chunks, oldest first among the old.
    let mut deleted = Vec::new();
    loop {
        let n = archive.delete_archived_before(11_000, 300).await.unwrap();
        deleted.push(n);
        if n < 300 {
            break;
        }
    }
    assert_eq!(deleted.iter().sum::<u64>(), 5 + 1_000, "every letter before 11000");
    assert!(deleted.iter().all(|n| *n <= 300), "never more than a chunk at once: {deleted:?}");
    assert_eq!(count(everything()).await, 1_500);

    // Ids, tags and business keys longer than their columns are kept bounded (a refused batch
    // would be refused for ever); two long ids that differ only at the end stay two letters.
    let mut long = letter("live.long", 0, 1, 50_000, Some(&"u".repeat(1_000)));
    long.letter_id = "l".repeat(5_000);
    long.tag = "t".repeat(1_000);
    let mut other = long.clone();
    other.letter_id.push('2');
    other.position.offset = 2;
    assert_eq!(archive.archive_letters(&[long, other]).await.expect("stored, bounded"), 2);
    let query = ArchiveQuery { topic: Some("live.long".into()), ..everything() };
    let kept = archive.archived(&query, None, 10).await.unwrap();
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|l| l.letter_id.len() <= 64 && l.tag.len() <= 255), "{kept:?}");
    assert!(kept.iter().all(|l| l.keys[&KeyField::UserId].len() <= 128));
    assert_ne!(kept[0].letter_id, kept[1].letter_id);

    replay_jobs_conform(store).await;
}

async fn replay_jobs_conform(store: &dyn Store) {
    let archive = store.archive();
    let spec = ReplaySpec {
        query: everything(),
        to_topic: Some("replayed".into()),
        through_pigeons: false,
        rate: Some(100),
    };
    let first = archive.create_replay(&spec, 1_500, "ops").await.unwrap();
    let second = archive.create_replay(&spec, 10, "ops").await.unwrap();
    assert!(second > first);
    let audit = store.audit(None, 1).await.unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].target.clone()),
        ("replay.create", format!("replay/{second}"))
    );

    let job = archive.claim_replay("a", 1_000, 11_000).await.unwrap().expect("a pending job");
    assert_eq!((job.id, job.status, job.spec.clone()), (first, ReplayStatus::Running, spec.clone()));
    let other = archive.claim_replay("b", 1_000, 30_000).await.unwrap().expect("the second job");
    assert_eq!(other.id, second);
    assert!(archive.claim_replay("c", 1_000, 11_000).await.unwrap().is_none(), "live claims never overlap");

    let at = Position { time: 5, topic: "live.gift".into(), partition: 2, offset: 1 };
    let progress =
        ReplayProgress { checkpoint: Some(at.clone()), sent: 500, in_flight: 300, lease_until: 12_000 };
    assert!(archive.replay_progress(first, "a", &progress).await.unwrap());
    assert!(
        !archive.replay_progress(first, "b", &progress).await.unwrap(),
        "only the owner records progress"
    );
    // Runner a dies; after its lease, c takes over: what a had in flight counts as resent.
    assert!(archive.claim_replay("c", 11_999, 20_000).await.unwrap().is_none(), "the lease still holds");
    let taken = archive.claim_replay("c", 12_001, 20_000).await.unwrap().expect("taken over");
    assert_eq!((taken.id, taken.sent, taken.resent, taken.in_flight), (first, 500, 300, 0));
    assert_eq!(taken.checkpoint, Some(at), "resumes after the checkpoint");
    assert_eq!(taken.owner.as_deref(), Some("c"));
    assert!(!archive.replay_progress(first, "a", &progress).await.unwrap(), "the old runner is out");
    assert!(archive.finish_replay(first, "c", ReplayStatus::Done, "every letter sent").await.unwrap());
    assert!(!archive.cancel_replay(first, "ops").await.unwrap(), "a finished job is not cancelled");

    assert!(archive.cancel_replay(second, "ops").await.unwrap());
    assert!(
        !archive.replay_progress(second, "b", &progress).await.unwrap(),
        "a cancelled job stops its runner"
    );
    let jobs = archive.replay_jobs(10).await.unwrap();
    let states: Vec<(i64, ReplayStatus)> = jobs.iter().map(|j| (j.id, j.status)).collect();
    assert_eq!(states, [(second, ReplayStatus::Cancelled), (first, ReplayStatus::Done)], "newest first");
    assert_eq!(jobs[1].message.as_deref(), Some("every letter sent"));
    let audit = store.audit(None, 1).await.unwrap();
    assert_eq!((audit[0].action.as_str(), audit[0].actor.as_str()), ("replay.cancel", "ops"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_archive_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = pigeon_bus::store::open_migrated(&url).await.unwrap();
    archive_conforms(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_archive_conforms() {
    let db = crate::support::Db::mariadb_with_pigeons(&[], "127.0.0.1:3306").await;
    let store = pigeon_bus::store::open_migrated(&db.url).await.unwrap();
    archive_conforms(store.as_ref()).await;
    db.drop_mariadb().await;
}

/// What TiDB does not take, with the reason; TiDB-only clauses must sit in `/*T! … */`.
const NOT_FOR_TIDB: [(&str, &str); 12] = [
    ("SKIP LOCKED", "claim with a lease instead"),
    ("FULLTEXT", "TiDB has no full-text indexes"),
    ("SPATIAL", "TiDB has no spatial indexes"),
    ("GEOMETRY", "TiDB has no spatial types"),
    ("CREATE TRIGGER", "TiDB has no triggers"),
    ("CREATE PROCEDURE", "TiDB has no stored procedures"),
    ("CREATE FUNCTION", "TiDB has no stored functions"),
    ("CREATE EVENT", "TiDB has no events"),
    ("SAVEPOINT", "older TiDB releases have no savepoints"),
    ("LOCK TABLES", "TiDB ignores table locks by default"),
    ("SHARD_ROW_ID_BITS", "TiDB-only: put it in a /*T! … */ comment so MySQL and MariaDB skip it"),
    ("NONCLUSTERED", "TiDB-only: put it in a /*T![clustered_index] … */ comment"),
];

/// Problems of one migration's SQL for TiDB.
fn tidb_problems(sql: &str) -> Vec<String> {
    // Comments out: `--` lines and `/* … */` blocks (a `/*T! … */` block is TiDB's own).
    let mut plain = String::new();
    let mut rest = sql;
    while let Some(start) = rest.find("/*") {
        plain.push_str(&rest[..start]);
        let end = rest[start..].find("*/").map_or(rest.len(), |e| start + e + 2);
        rest = &rest[end..];
    }
    plain.push_str(rest);
    let plain: String =
        plain.lines().map(|l| l.split("--").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let upper = plain.to_uppercase();
    let mut problems: Vec<String> = NOT_FOR_TIDB
        .iter()
        .filter(|(what, _)| upper.contains(what))
        .map(|(what, why)| format!("{what}: {why}"))
        .collect();
    for statement in upper.split(';') {
        let statement = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        if statement.starts_with("ALTER TABLE")
            && statement.matches(" ADD ").count()
                + statement.matches(" DROP ").count()
                + statement.matches(" MODIFY ").count()
                > 1
        {
            problems.push(format!("one change per ALTER TABLE (older TiDB releases take one): {statement}"));
        }
        if statement.starts_with("CREATE TABLE") && statement.contains("FOREIGN KEY") {
            problems.push(
                "FOREIGN KEY: TiDB before 6.6 does not enforce them; keep integrity in the store".into(),
            );
        }
    }
    problems
}

#[test]
fn mysql_migrations_use_only_sql_tidb_supports() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/mysql");
    let mut checked = 0;
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let sql = std::fs::read_to_string(&path).unwrap();
        checked += 1;
        problems.extend(tidb_problems(&sql).into_iter().map(|p| format!("{}: {p}", path.display())));
    }
    assert!(checked >= 6, "every migration is read ({checked})");
    assert!(problems.is_empty(), "SQL TiDB does not take:\n{}", problems.join("\n"));

    // The lint itself catches what it is meant to.
    assert!(tidb_problems("SELECT id FROM t FOR UPDATE SKIP LOCKED")
        .iter()
        .any(|p| p.starts_with("SKIP LOCKED")));
    assert!(tidb_problems("CREATE TABLE t (a INT) SHARD_ROW_ID_BITS = 4")
        .iter()
        .any(|p| p.starts_with("SHARD_ROW_ID_BITS")));
    assert!(
        tidb_problems("CREATE TABLE t (a INT) /*T! SHARD_ROW_ID_BITS = 4 */").is_empty(),
        "allowed in a TiDB comment"
    );
    assert!(tidb_problems("ALTER TABLE t ADD COLUMN a INT, ADD COLUMN b INT").len() == 1);
    assert!(tidb_problems("ALTER TABLE t ADD COLUMN a INT").is_empty());
}
