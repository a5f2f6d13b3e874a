//! Pigeon's archiver into MariaDB against a bare loop of multi-row INSERTs of the same rows.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pigeon_bus::route::{Action, MatchSpec, PigeonSpec};
use sqlx::{Connection, MySqlConnection, QueryBuilder, Row};

use crate::broker::{wait_for_line, Broker};
use crate::contenders::pigeon_config;
use crate::process::Contender;

/// Rows per statement of the bare loop (each statement its own transaction).
const BARE_ROWS_PER_STATEMENT: usize = 1_000;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ArchiveFigures {
    pub broker: String,
    pub rows: u64,
    pub distinct_letters: u64,
    pub archiver_rows_per_sec: f64,
    pub archiver_cpu_s_per_million_rows: f64,
    pub bare_rows_per_sec: f64,
    pub ratio: f64,
}

fn archive_pigeon(source: &str) -> PigeonSpec {
    PigeonSpec {
        id: "bench-archive".into(),
        name: "archive every gift".into(),
        owner: "bench".into(),
        enabled: true,
        action: Action::Archive,
        script: None,
        matcher: MatchSpec::new(source, "gift.*"),
        destinations: Vec::new(),
        retry: None,
        window: None,
        dictionary: Default::default(),
    }
}

async fn scalar(db: &mut MySqlConnection, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(db).await?)
}

/// Archives letters `0..backlog` of `source` into a fresh database and inserts the same rows
/// bare into a twin table; the database is dropped afterwards.
pub fn run(
    broker: &Broker,
    pigeon: &Path,
    mariadb: &str,
    source: &str,
    backlog: u64,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ArchiveFigures> {
    std::fs::create_dir_all(dir)?;
    let name = format!("pigeon_bench_{}", uuid::Uuid::now_v7().simple());
    let url = format!("{mariadb}/{name}");
    let mut admin = rt
        .block_on(MySqlConnection::connect(&format!("{mariadb}/test")))
        .with_context(|| format!("MariaDB at {mariadb}"))?;
    rt.block_on(sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin))?;
    let figures = archive_into(broker, pigeon, &url, source, backlog, dir, rt);
    rt.block_on(sqlx::query(&format!("DROP DATABASE {name}")).execute(&mut admin))?;
    figures
}

fn archive_into(
    broker: &Broker,
    pigeon: &Path,
    url: &str,
    source: &str,
    backlog: u64,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ArchiveFigures> {
    rt.block_on(async {
        let store = pigeon_bus::store::open_migrated(url).await?;
        store.save_pigeon(&archive_pigeon(source), "bench").await?;
        anyhow::Ok(())
    })?;
    let config = dir.join("pigeon.toml");
    let group = format!("bench-archive-{}", uuid::Uuid::now_v7().simple());
    std::fs::write(&config, pigeon_config(&broker.bootstrap, &group, url, "archiver"))?;
    let log = dir.join("contender.log");
    let mut command = Command::new(pigeon);
    command.arg("--config").arg(&config).arg("serve").env("RUST_LOG", "warn");
    let mut archiver = Contender::spawn("pigeon archiver", command, &log)?;
    let metrics = format!("{}/metrics", wait_for_line(&log, "admin: ", Duration::from_secs(60))?);

    // Progress from the archiver's own counter, so watching costs the database nothing.
    let bar = indicatif::ProgressBar::new(backlog).with_style(
        indicatif::ProgressStyle::with_template("  {prefix:<34} {bar:30} {human_pos}/{human_len} rows {eta}")
            .expect("template"),
    );
    bar.set_prefix("Pigeon archive");
    let started = Instant::now();
    let mut first = None;
    let mut last_progress = (Instant::now(), 0);
    loop {
        archiver.check_alive()?;
        let n = counter(&metrics, "pigeon_archive_letters_total").unwrap_or(0);
        bar.set_position(n);
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n, archiver.cpu()));
        }
        if n >= backlog {
            break;
        }
        if n > last_progress.1 {
            last_progress = (Instant::now(), n);
        } else if last_progress.0.elapsed() > Duration::from_secs(60)
            || started.elapsed() > Duration::from_secs(1800)
        {
            bail!("the archiver stuck at {n} of {backlog} rows (see {})", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (t0, n0, cpu0) = first.expect("rows appeared");
    let (seconds, cpu) = (t0.elapsed().as_secs_f64(), (archiver.cpu() - cpu0).as_secs_f64());
    bar.finish_and_clear();
    drop(archiver);
    let archiver_rows_per_sec = (backlog - n0) as f64 / seconds;

    rt.block_on(async {
        let mut db = MySqlConnection::connect(url).await?;
        let rows = scalar(&mut db, "SELECT COUNT(*) FROM archived_letters").await? as u64;
        let distinct =
            scalar(&mut db, "SELECT COUNT(DISTINCT letter_id) FROM archived_letters").await? as u64;
        let bare_rows_per_sec = bare_insert(&mut db).await?;
        Ok(ArchiveFigures {
            broker: broker.kind.name().into(),
            rows,
            distinct_letters: distinct,
            archiver_rows_per_sec,
            archiver_cpu_s_per_million_rows: cpu * 1e6 / (backlog - n0).max(1) as f64,
            bare_rows_per_sec,
            ratio: archiver_rows_per_sec / bare_rows_per_sec,
        })
    })
}

/// Inserts the archived rows again, into an identical table, 1,000 rows per statement on one
/// connection, in the order the archiver read them: what the database takes of the same
/// work with no Kafka and no bus around it. Reading and ordering the rows is not timed.
async fn bare_insert(db: &mut MySqlConnection) -> anyhow::Result<f64> {
    sqlx::query("CREATE TABLE bare_letters LIKE archived_letters").execute(&mut *db).await?;
    let mut rows = sqlx::query("SELECT * FROM archived_letters").fetch_all(&mut *db).await?;
    // The archiver's batches in turn, and in a batch each partition's run of letters in turn,
    // as fetches bring them. (Not the table's key order: the ids of many partitions
    // interleave, and inserting them sorted would be easier than anything a stream delivers.
    // Ordered here, not by the server, which would sort a million rows with their payloads.)
    rows.sort_by_cached_key(|row| {
        (
            row.get::<i64, _>("archived_at"),
            row.get::<i32, _>("kafka_partition"),
            row.get::<i64, _>("kafka_offset"),
        )
    });
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
        insert.build().execute(&mut *db).await?;
    }
    let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    let copied = scalar(db, "SELECT COUNT(*) FROM bare_letters").await?;
    if copied != rows.len() as i64 {
        bail!("the bare loop inserted {copied} of {} rows", rows.len());
    }
    Ok(rate)
}

/// The value of a Prometheus counter at a metrics URL (`http://ADDR/PATH`).
pub fn counter(url: &str, name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (addr, path) = rest.split_once('/')?;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(stream, "GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let line = response.lines().find(|l| l.starts_with(name) && !l.starts_with('#'))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|v| v as u64)
}
