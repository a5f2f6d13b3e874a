//! Several routers in one group on the real broker, as separate processes, while letters
//! stream at a steady pace: a rolling restart (each router stopped with SIGTERM and replaced,
//! one at a time) loses and duplicates nothing; a router killed with SIGKILL loses nothing and
//! duplicates at most what it had forwarded and not committed (printed); partitions added to
//! the source mid-stream lose and duplicate nothing. Each key's letters arrive first in the
//! order they were sent. A loss is reported by source partition and offsets.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::Message;

use crate::stream::{held, tally, Stream, PARTITIONS, RATE};
use crate::support::Bus;

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_three_routers_loses_and_duplicates_nothing() {
    let stream = Stream::new().await;
    let mut routers: Vec<Bus> = (0..3).map(|_| stream.router()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = stream.send(Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(3));
    // One at a time: a new router joins, then an old one drains and leaves.
    for _ in 0..3 {
        routers.push(stream.router());
        let old = routers.remove(0);
        old.stop();
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap();
    let got = stream.outputs(sent.len());
    let (lost, duplicates) = tally("rolling restart", &sent, &got);
    assert_eq!((lost, duplicates), (0, 0), "nothing lost, nothing twice");
    for router in routers {
        router.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_router_killed_mid_stream_loses_nothing() {
    let stream = Stream::new().await;
    let mut routers: Vec<Bus> = (0..3).map(|_| stream.router()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = stream.send(Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(3));
    // The router holding the most partitions, killed mid-stream; another takes its place.
    let busiest = (0..routers.len()).max_by_key(|&i| held(&routers[i], &stream.source)).unwrap_or(0);
    let partitions = held(&routers[busiest], &stream.source);
    assert!(partitions > 0, "the killed router holds partitions");
    let killed_at = Instant::now();
    routers.remove(busiest).kill();
    routers.push(stream.router());
    let replaced = killed_at.elapsed();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap();
    let got = stream.outputs(sent.len());
    let (lost, duplicates) = tally("SIGKILL", &sent, &got);
    assert_eq!(lost, 0, "nothing lost");
    // Read again: what the killed router had read and not committed (offsets are committed
    // every second), at most the letters of a few seconds around the kill.
    let bound = (RATE as f64 * 3.0) as usize;
    println!(
        "SIGKILL of a router holding {partitions} of {PARTITIONS} partitions: {duplicates} duplicates \
         (read again: letters it had not committed; bound {bound}); its replacement was healthy {replaced:?} after"
    );
    assert!(duplicates <= bound, "{duplicates} duplicates");
    for router in routers {
        router.stop();
    }
}

/// Partitions added to the source topic mid-stream (16 to 32): the routers find them (their
/// metadata refresh) and read them from the start; nothing is lost or duplicated, and each
/// (partition, key)'s letters arrive first in order.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_to_a_source_mid_stream_lose_and_duplicate_nothing() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let stream = Stream::new_with(16).await;
    let routers: Vec<Bus> = (0..2).map(|_| stream.router()).collect();
    let (stop, partitions) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI32::new(16)));
    let sending = stream.send_to(Arc::clone(&stop), Arc::clone(&partitions));
    std::thread::sleep(Duration::from_secs(3));
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &stream.bootstrap).create().expect("admin");
    let grown = admin
        .create_partitions(&[NewPartitions::new(&stream.source, 32)], &AdminOptions::new())
        .await
        .expect("CreatePartitions");
    assert!(grown.iter().all(Result::is_ok), "{grown:?}");
    partitions.store(32, Ordering::Relaxed);
    // The routers refresh metadata every 10 s: stream on past that.
    std::thread::sleep(Duration::from_secs(14));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap();
    let got = stream.outputs(sent.len());
    let late = got
        .iter()
        .filter(|m| {
            let payload: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            payload["partition"].as_i64().is_some_and(|p| p >= 16)
        })
        .count();
    assert!(late > 0, "letters went to the added partitions");
    let (lost, duplicates) = tally("partitions added", &sent, &got);
    assert_eq!((lost, duplicates), (0, 0), "nothing lost, nothing twice");
    for router in routers {
        router.stop();
    }
}
