//! A slow destination must not grow the router's memory without bound: with a backlog
//! waiting and its destination's broker answering only after seconds, the router fills its
//! in-flight cap, pauses its partitions and holds there. Its peak RSS must stay under the
//! budget; once the destination is quick again every letter must arrive.
//!
//! Runs on a mock cluster of two brokers owned by this process: the source on broker 1, the
//! destination's partitions led by broker 2, whose round trip is set to seconds.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::mocking::{MockCluster, MockCoordinator};

use crate::contenders::{pigeon_config, Run, Work};
use crate::letters::Source;
use crate::process::Contender;
use crate::verify;

const PARTITIONS: i32 = 16;
const LETTERS: u64 = 300_000;
const SLOW_BROKER: i32 = 2;
/// The destination broker's round trip while throttled.
const SLOW_RTT: Duration = Duration::from_secs(5);
/// How long the destination stays slow.
const SLOW_FOR: Duration = Duration::from_secs(40);

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RssFigures {
    pub budget_mib: u64,
    pub peak_rss_mib: f64,
    pub letters: u64,
    pub slow_seconds: f64,
    pub slow_rtt_ms: u64,
    /// Letters the router had read when the slow phase ended (the rest waited in Kafka).
    pub letters_in_while_slow: u64,
    /// Outputs on the destination when the slow phase ended.
    pub delivered_while_slow: u64,
    pub max_in_flight_per_partition: u64,
    pub in_flight_peak: u64,
    pub delivered_after: u64,
    pub missing_after: u64,
}

pub fn run(
    pigeon: &Path,
    budget_mib: u64,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<RssFigures> {
    std::fs::create_dir_all(dir)?;
    let cluster = MockCluster::new(2).context("mock cluster")?;
    let bootstrap = cluster.bootstrap_servers();
    let bench = Run { name: "rss".into(), label: "slow destination".into(), work: Work::Forward };
    let [a, b] = bench.destinations();
    let source = "bench.rss.gift";
    let group = format!("bench-rss-{}", uuid::Uuid::now_v7().simple());
    cluster.create_topic(source, PARTITIONS, 1)?;
    for topic in [&a, &b] {
        cluster.create_topic(topic, PARTITIONS, 1)?;
        for p in 0..PARTITIONS {
            cluster.partition_leader(topic, p, Some(SLOW_BROKER))?;
        }
    }
    for topic in pigeon_bus::topics::BUS_TOPICS {
        cluster.create_topic(topic, 1, 1)?;
    }
    cluster.coordinator(MockCoordinator::Group(group.clone()), 1)?;
    let mut client = rdkafka::config::ClientConfig::new();
    client.set("bootstrap.servers", &bootstrap);
    Source::new(&client, source, 5, 0)?.backlog(LETTERS)?;

    let url = format!("sqlite://{}", dir.join("pigeon.db").display());
    rt.block_on(async {
        let store = pigeon_bus::store::open_migrated(&url).await?;
        store.save_pigeon(&crate::contenders::pigeon(&bench, source), "bench").await?;
        anyhow::Ok(())
    })?;
    let config = dir.join("pigeon.toml");
    let mut text = pigeon_config(&bootstrap, &group, &url, "router");
    text.push_str(
        "\n[kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n",
    );
    std::fs::write(&config, text)?;
    let defaults = pigeon_bus::config::RouterConfig::default();

    cluster.broker_round_trip_time(SLOW_BROKER, SLOW_RTT)?;
    let log = dir.join("contender.log");
    let mut command = Command::new(pigeon);
    command.arg("--config").arg(&config).arg("serve").env("RUST_LOG", "warn");
    let mut router = Contender::spawn("router", command, &log)?;
    let metrics =
        format!("{}/metrics", crate::broker::wait_for_line(&log, "admin: ", Duration::from_secs(60))?);
    let live = verify::Live::start(&client, &[a.clone(), b.clone()], PARTITIONS, LETTERS)?;

    let started = Instant::now();
    let mut peak_rss = 0u64;
    while started.elapsed() < SLOW_FOR {
        router.check_alive()?;
        peak_rss = peak_rss.max(router.rss());
        std::thread::sleep(Duration::from_millis(100));
    }
    let letters_in = crate::archive::counter(&metrics, "pigeon_router_letters_read_total").unwrap_or(0);
    let in_flight_peak = crate::archive::counter(&metrics, "pigeon_in_flight_peak").unwrap_or(0);
    let delivered_while_slow = live.backlog_outputs();
    let peak_rss_mib = router.peak_rss().max(peak_rss) as f64 / (1024.0 * 1024.0);

    // The destination quick again: everything must arrive.
    cluster.broker_round_trip_time(SLOW_BROKER, Duration::ZERO)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while live.backlog_done() < LETTERS {
        router.check_alive()?;
        if Instant::now() > deadline {
            bail!("after the slow phase only {} of {} outputs arrived", live.backlog_outputs(), 2 * LETTERS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(router);
    let verdict = live.finish(LETTERS)?;
    let missing = verdict.completeness.iter().map(|c| c.missing).sum();
    let delivered = verdict.completeness.iter().map(|c| c.distinct).sum();
    drop(cluster);
    Ok(RssFigures {
        budget_mib,
        peak_rss_mib,
        letters: LETTERS,
        slow_seconds: SLOW_FOR.as_secs_f64(),
        slow_rtt_ms: SLOW_RTT.as_millis() as u64,
        letters_in_while_slow: letters_in,
        delivered_while_slow,
        max_in_flight_per_partition: defaults.max_in_flight_per_partition as u64,
        in_flight_peak,
        delivered_after: delivered,
        missing_after: missing,
    })
}
