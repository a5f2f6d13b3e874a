//! Forward latency while the API works hard: letters are sent at a steady rate through a
//! forward pigeon, first alone, then while callers keep dry-run applies of ~1 MiB pigeons
//! (scripts to compile) going at once. Prints each phase's latency percentiles. The API's
//! scripts run on threads of their own (`ScriptGate`), so the router's should barely move.
//!
//! `pigeon-api-load [--pigeon target/release/pigeon] [--rate 1000] [--seconds 20] [--callers 4]`

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use pigeon_bus::route::{DestinationSpec, MatchSpec, PigeonSpec};
use pigeon_bus::store::NewToken;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[derive(Parser)]
#[command(name = "pigeon-api-load", about = "Forward latency while the API compiles large pigeons")]
struct Args {
    /// The pigeon binary.
    #[arg(long, default_value = "target/release/pigeon")]
    pigeon: PathBuf,
    /// Letters a second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds each phase lasts.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Callers sending dry-run applies at once in the loaded phase.
    #[arg(long, default_value_t = 4)]
    callers: usize,
}

const SOURCE: &str = "load.in";
const DESTINATION: &str = "load.out";

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Starts `command`, returning it and the first stdout line that starts with `prefix`.
fn spawn_until(mut command: Command, prefix: &str) -> anyhow::Result<(std::process::Child, String)> {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    break rest.to_owned();
                }
            }
            _ => bail!("{command:?} ended before printing {prefix:?}"),
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, found))
}

/// About 1 MiB of script pigeons (within the API's body limit): each script (60 KB, near the
/// most a script may have) is many small statements, to compile.
fn big_apply(caller: usize) -> serde_json::Value {
    let mut script = String::with_capacity(64 << 10);
    let mut i = 0;
    while script.len() < 60_000 {
        script.push_str(&format!("let v{i} = payload.n + {i};\n"));
        i += 1;
    }
    script.push_str("payload");
    let pigeons: Vec<serde_json::Value> = (0..16)
        .map(|n| {
            serde_json::json!({
                "id": format!("big-{caller}-{n}"), "name": "big", "owner": "bench", "action": "script",
                "match": { "topic": "load.elsewhere", "tag": "x" },
                "destinations": [{ "topic": "load.nowhere", "tag": "x" }],
                "script": script,
            })
        })
        .collect();
    serde_json::json!({ "pigeons": pigeons, "dry_run": true })
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// Sends letters at `rate` for `seconds` and returns each one's forward latency (µs).
fn phase(
    producer: &ThreadedProducer<DefaultProducerContext>,
    consumer: &BaseConsumer,
    rate: u64,
    seconds: u64,
) -> (Vec<u64>, u64) {
    let total = rate * seconds;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut latencies = Vec::with_capacity(total as usize);
    while sent < total || start.elapsed() < Duration::from_secs(seconds + 5) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < total.min(due) {
            let payload = serde_json::json!({ "n": sent, "sent_us": now_us() }).to_string();
            let key = format!("k{}", sent % 64);
            let headers = rdkafka::message::OwnedHeaders::new()
                .insert(rdkafka::message::Header { key: "ce_type", value: Some("load.letter") });
            let record = BaseRecord::to(SOURCE).key(&key).payload(&payload).headers(headers);
            if producer.send(record).is_err() {
                break;
            }
            sent += 1;
        }
        while let Some(Ok(message)) = consumer.poll(Duration::from_millis(0)) {
            let sent_us = message
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .and_then(|v| v["sent_us"].as_u64());
            if let Some(sent_us) = sent_us {
                latencies.push(now_us().saturating_sub(sent_us));
            }
        }
        if sent >= total && latencies.len() as u64 >= total {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    (latencies, total)
}

fn report(name: &str, mut latencies: Vec<u64>, sent: u64) {
    latencies.sort_unstable();
    println!(
        "{name:<34} letters {:>6}/{sent:<6} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let mut broker = Command::new(&args.pigeon);
    broker.args(["dev-broker", "--topic", &format!("{SOURCE}:8"), "--topic", &format!("{DESTINATION}:8")]);
    let (mut broker, bootstrap) = spawn_until(broker, "kafka: ")?;

    let url = format!("sqlite://{}", work.path().join("bus.db").display());
    let token = pigeon_bus::token::generate();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = pigeon_bus::store::open_migrated(&url).await?;
        let spec = PigeonSpec {
            id: "load".into(),
            name: "load".into(),
            owner: "bench".into(),
            enabled: true,
            action: Default::default(),
            script: None,
            matcher: MatchSpec::new(SOURCE, "load.*"),
            destinations: vec![DestinationSpec::topic(DESTINATION, "load.out")],
            retry: None,
            window: None,
            dictionary: Default::default(),
        };
        store.save_pigeon(&spec, "bench").await?;
        let new = NewToken {
            name: "bench".into(),
            role: pigeon_bus::token::Role::Admin,
            hash: pigeon_bus::token::hash(&token),
        };
        store.create_token(&new, "bench").await?;
        anyhow::Ok(())
    })?;
    let mut bus = Command::new(&args.pigeon);
    bus.args(["serve", "--brokers", &bootstrap, "--database", &url, "--listen", "127.0.0.1:0"]);
    // The mock cluster answers a fetch only when its wait is over, data or not: the default
    // 500 ms would be most of every letter's latency.
    bus.args(["-X", "consumer.fetch.wait.max.ms=10"]);
    bus.env("RUST_LOG", "warn");
    let (mut bus, admin) = spawn_until(bus, "admin: ")?;

    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &bootstrap);
    let producer: ThreadedProducer<DefaultProducerContext> = client.clone().set("linger.ms", "0").create()?;
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", "load-reader")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "5")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()?;
    consumer.subscribe(&[DESTINATION])?;
    // Warm up: until letters come through.
    let warm = phase(&producer, &consumer, args.rate, 3);
    println!("warm-up: {} of {} letters through", warm.0.len(), warm.1);

    let (quiet, sent) = phase(&producer, &consumer, args.rate, args.seconds);
    report("letters alone", quiet, sent);

    let stop = Arc::new(AtomicBool::new(false));
    let applies = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..args.callers)
        .map(|n| {
            let (stop, applies, refused) = (Arc::clone(&stop), Arc::clone(&applies), Arc::clone(&refused));
            let url = format!("{admin}/api/v1/pigeons/apply");
            let token = token.clone();
            let body = big_apply(n).to_string();
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send();
                    match sent.map(|r| r.status()) {
                        Ok(status) if status.is_success() => applies.fetch_add(1, Ordering::Relaxed),
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let started = Instant::now();
    let (loaded, sent) = phase(&producer, &consumer, args.rate, args.seconds);
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let _ = caller.join();
    }
    let secs = started.elapsed().as_secs_f64();
    report(&format!("letters + {} callers' applies", args.callers), loaded, sent);
    println!("apply body: {} bytes", big_apply(0).to_string().len());
    println!(
        "dry-run applies of ~1 MiB: {} answered 200 ({:.1}/s), {} not",
        applies.load(Ordering::Relaxed),
        applies.load(Ordering::Relaxed) as f64 / secs,
        refused.load(Ordering::Relaxed)
    );
    producer.flush(Duration::from_secs(5))?;
    let _ = bus.kill();
    let _ = broker.kill();
    Ok(())
}
