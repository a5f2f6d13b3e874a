//! Archive rows per second into MariaDB: the archiver role (consume, choose, batch, write,
//! commit) against a bare loop of multi-row INSERTs of the same rows, in the same run.
//! Prints figures; asserts nothing. Needs MariaDB at 127.0.0.1:3306 (`scripts/test` starts
//! it). Run with `cargo bench -p pigeon-bus --bench archive`.
//!
//! Each round: a fresh mock cluster and database; 100,000 gift letters on 16 partitions are
//! produced first; `pigeon serve --roles archiver` (a child process, so its CPU time is its
//! own) then archives them, timed from the first row in the table to the last. The bare loop
//! reads those rows back and inserts them into an identical table, 1,000 rows per statement,
//! each statement its own transaction, on one connection: what the database takes with no
//! Kafka and no bus around it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pigeon_bus::route::{Action, MatchSpec, PigeonSpec};
use pigeon_sdk::Letter;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use sqlx::{Connection, MySqlConnection, QueryBuilder, Row};

const LETTERS: i64 = 100_000;
const PARTITIONS: i32 = 16;
const SOURCE: &str = "live.gift";
const MARIADB: &str = "mysql://root@127.0.0.1:3306";
const BARE_ROWS_PER_STATEMENT: usize = 1_000;

fn archive_pigeon() -> PigeonSpec {
    PigeonSpec {
        id: "gifts-archive".into(),
        name: String::new(),
        owner: String::new(),
        enabled: true,
        action: Action::Archive,
        script: None,
        matcher: MatchSpec::new(SOURCE, "gift.*"),
        destinations: Vec::new(),
        retry: None,
        window: None,
        dictionary: Default::default(),
    }
}

fn produce(bootstrap: &str) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for n in 0..LETTERS {
        let room = format!("room-{}", n % 100);
        let letter = Letter::new(
            "live-platform",
            "gift.sent",
            serde_json::json!({"userId": n, "anchorId": n % 100, "roomId": room, "giftId": 7, "giftCount": 1 + n % 5, "amount": 10}),
        )
        .with_key(room.clone());
        let payload = letter.payload_bytes();
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(SOURCE).key(room.as_bytes()).payload(payload.as_slice()).headers(letter.headers());
        while let Err((_, back)) = producer.send(record) {
            record = back;
            producer.poll(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

struct Round {
    archiver_rows_per_sec: f64,
    archiver_cpu: Duration,
    bare_rows_per_sec: f64,
}

async fn count(db: &mut MySqlConnection, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(db).await.expect("count")
}

async fn round() -> Round {
    let name = format!("pigeon_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin =
        MySqlConnection::connect(&format!("{MARIADB}/test")).await.expect("MariaDB at 127.0.0.1:3306");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
    let url = format!("{MARIADB}/{name}");
    let store = pigeon_bus::serve::open_store(&url).await.expect("store");
    store.save_pigeon(&archive_pigeon(), "bench").await.expect("pigeon");

    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic(SOURCE, PARTITIONS, 1).expect("topic");
    cluster.create_topic("pigeon.control", 1, 1).expect("topic");
    produce(&bootstrap);

    let mut child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args(["serve", "--roles", "archiver", "--brokers", &bootstrap, "--database", &url])
        .args(["--listen", "127.0.0.1:0"])
        .args(["-X", "consumer.session.timeout.ms=6000", "-X", "consumer.heartbeat.interval.ms=500"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("pigeon serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let admin_url = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("admin: ") => break line["admin: ".len()..].to_owned(),
            Some(_) => continue,
            None => panic!("pigeon serve exited"),
        }
    };
    // Progress from the archiver's own counter, so watching costs the database nothing.
    let metrics = format!("{admin_url}/metrics");
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut first, mut first_count) = (None, 0);
    let mut cpu_at_first = Duration::ZERO;
    loop {
        let n = common::counter(&metrics, "pigeon_archive_letters_total").unwrap_or(0);
        if n > 0 && first.is_none() {
            (first, first_count, cpu_at_first) = (Some(Instant::now()), n, common::cpu_time(child.id()));
        }
        if n >= LETTERS {
            break;
        }
        assert!(Instant::now() < deadline, "the archiver did not archive every letter ({n})");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let archiver_wall = first.expect("rows appeared").elapsed();
    let archiver_cpu = common::cpu_time(child.id()) - cpu_at_first;
    let _ = child.kill();
    let _ = child.wait();
    let mut db = MySqlConnection::connect(&url).await.expect("connect");
    assert_eq!(count(&mut db, "archived_letters").await, LETTERS, "every letter archived once");
    let archiver_rows_per_sec = (LETTERS - first_count) as f64 / archiver_wall.as_secs_f64();

    // The same rows, inserted bare.
    sqlx::query("CREATE TABLE bare_letters LIKE archived_letters")
        .execute(&mut db)
        .await
        .expect("bare table");
    // In the order the archiver wrote them, batch by batch.
    let rows =
        sqlx::query("SELECT * FROM archived_letters ORDER BY archived_at, kafka_partition, kafka_offset")
            .fetch_all(&mut db)
            .await
            .expect("rows");
    let started = Instant::now();
    for chunk in rows.chunks(BARE_ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO bare_letters (letter_id, pigeon_id, topic, kafka_partition, kafka_offset, letter_time, \
             tag, user_id, anchor_id, room_id, msg_key, headers, payload, archived_at) ",
        );
        insert.push_values(chunk, |mut b, row| {
            b.push_bind(row.get::<String, _>("letter_id"))
                .push_bind(row.get::<String, _>("pigeon_id"))
                .push_bind(row.get::<String, _>("topic"))
                .push_bind(row.get::<i32, _>("kafka_partition"))
                .push_bind(row.get::<i64, _>("kafka_offset"))
                .push_bind(row.get::<i64, _>("letter_time"))
                .push_bind(row.get::<String, _>("tag"))
                .push_bind(row.get::<Option<String>, _>("user_id"))
                .push_bind(row.get::<Option<String>, _>("anchor_id"))
                .push_bind(row.get::<Option<String>, _>("room_id"))
                .push_bind(row.get::<Option<Vec<u8>>, _>("msg_key"))
                .push_bind(row.get::<Vec<u8>, _>("headers"))
                .push_bind(row.get::<Option<Vec<u8>>, _>("payload"))
                .push_bind(row.get::<i64, _>("archived_at"));
        });
        insert.build().execute(&mut db).await.expect("bare insert");
    }
    let bare_rows_per_sec = rows.len() as f64 / started.elapsed().as_secs_f64();
    assert_eq!(count(&mut db, "bare_letters").await, LETTERS);

    drop(db);
    sqlx::query(&format!("DROP DATABASE {name}")).execute(&mut admin).await.expect("drop database");
    Round { archiver_rows_per_sec, archiver_cpu, bare_rows_per_sec }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!("archive into MariaDB: {LETTERS} gift letters on {PARTITIONS} partitions, one archive pigeon");
    let (mut archiver, mut bare) = (0.0, 0.0);
    const ROUNDS: usize = 3;
    for n in 0..ROUNDS {
        let r = runtime.block_on(round());
        println!(
            "round {n}: archiver {:>8.0} rows/s ({:.1} µs CPU/row)   bare INSERT loop {:>8.0} rows/s   ratio {:.0}%",
            r.archiver_rows_per_sec,
            r.archiver_cpu.as_secs_f64() * 1e6 / LETTERS as f64,
            r.bare_rows_per_sec,
            100.0 * r.archiver_rows_per_sec / r.bare_rows_per_sec
        );
        archiver += r.archiver_rows_per_sec / ROUNDS as f64;
        bare += r.bare_rows_per_sec / ROUNDS as f64;
    }
    println!(
        "mean: archiver {archiver:.0} rows/s, bare INSERT loop {bare:.0} rows/s: the archiver reaches {:.0}% (goal: 80%)",
        100.0 * archiver / bare
    );
}
