//! Pigeon deployed by role (three routers, an archiver, a retrier with the registry, an admin)
//! on the real broker while letters stream at a steady pace: a rolling restart (each router
//! stopped with SIGTERM and replaced, one at a time) loses and duplicates nothing; a router
//! killed with SIGKILL loses nothing and duplicates at most what it had forwarded and not
//! committed (printed); partitions added to the source mid-stream and a pigeon changed through
//! the admin API lose and duplicate nothing. Each key's letters arrive first in the order they
//! were sent, and the archive keeps every letter once. A loss is reported by source partition
//! and offsets.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pigeon_bus::token::Role;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Message, OwnedMessage};

use crate::stream::{fan, held, tally, Stream, PARTITIONS, RATE, TAG};
use crate::support::{collect_within, header, Bus};
use crate::unique;

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
    stream.finish("rolling restart", &sent, routers).await;
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
    stream.finish("SIGKILL", &sent, routers).await;
}

/// Partitions added to the source topic mid-stream (16 to 32): the routers find them (their
/// metadata refresh) and read them from the start; nothing is lost or duplicated, and each
/// (partition, key)'s letters arrive first in order.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_to_a_source_mid_stream_lose_and_duplicate_nothing() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let stream = Stream::deployed(16).await;
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
    stream.finish("partitions added", &sent, routers).await;
}

/// A pigeon changed through the admin API mid-stream (version 2 sends to a second topic too,
/// with another tag): each letter goes by exactly one version, all of its destinations, once;
/// per key, version 1's letters come before version 2's.
#[tokio::test(flavor = "multi_thread")]
async fn a_pigeon_changed_mid_stream_takes_each_letter_by_exactly_one_version() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    const V2: &str = "gift.v2";
    let stream = Stream::new().await;
    // Version 2's new destination exists before it is needed, as an operator would make it.
    let second_lane = unique("lane.two");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &stream.bootstrap).create().expect("admin");
    let created = admin
        .create_topics(
            &[NewTopic::new(&second_lane, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("CreateTopics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let token = pigeon::cli::tokens::create(stream.db.store().await.as_ref(), "ops", Role::Operator, "tests")
        .await
        .expect("token");
    let routers: Vec<Bus> = (0..3).map(|_| stream.router()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = stream.send(Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(4));
    let v2 = fan(&stream.source, &[&stream.destination, &second_lane], V2);
    let response = reqwest::Client::new()
        .put(format!("{}/api/v1/pigeons/fan", stream.admin().admin))
        .bearer_auth(&token)
        .json(&v2)
        .send()
        .await
        .expect("the admin API answers");
    assert_eq!(response.status().as_u16(), 200, "{}", response.text().await.unwrap_or_default());
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap();

    // Every letter on the first lane, once, by one version or the other.
    let got = stream.outputs(sent.len());
    let (lost, duplicates) = tally("pigeon changed", &sent, &got);
    assert_eq!((lost, duplicates), (0, 0), "nothing lost, nothing twice");
    let tags: HashMap<String, String> =
        got.iter().filter_map(|m| Some((header(m, "ce_id")?, header(m, "ce_type")?))).collect();
    let by_v2: HashSet<&String> = tags.iter().filter(|(_, tag)| *tag == V2).map(|(id, _)| id).collect();
    let by_v1 = tags.values().filter(|tag| *tag == TAG).count();
    assert_eq!(by_v1 + by_v2.len(), sent.len(), "each output has one of the two versions' tags");
    assert!(
        by_v1 > 0 && !by_v2.is_empty(),
        "the change came mid-stream: {by_v1} by v1, {} by v2",
        by_v2.len()
    );
    // Version 2 sent those, and only those, to the second lane too, once each.
    let ids = |got: &[OwnedMessage]| got.iter().filter_map(|m| header(m, "ce_id")).collect::<Vec<_>>();
    let (mut seen, mut counted) = (HashSet::new(), 0);
    let (second, _) = collect_within(
        &stream.bootstrap,
        &second_lane,
        |got| {
            seen.extend(ids(&got[counted..]));
            counted = got.len();
            seen.len() >= by_v2.len()
        },
        Duration::from_secs(3),
    );
    let second = ids(&second);
    let second_set: HashSet<&String> = second.iter().collect();
    assert_eq!(second.len(), second_set.len(), "nothing twice on the second lane");
    assert_eq!(second_set, by_v2, "the second lane has exactly the letters version 2 took");
    // Per key, in the order sent: version 1's letters, then version 2's, never back.
    let mut switched: HashSet<Vec<u8>> = HashSet::new();
    for s in &sent {
        let key = s.letter.key.clone().unwrap_or_default();
        let went_by_v2 = by_v2.contains(&s.letter.id.to_string());
        assert!(
            went_by_v2 || !switched.contains(&key),
            "a letter of {key:?} went by v1 after one went by v2"
        );
        if went_by_v2 {
            switched.insert(key);
        }
    }
    println!(
        "pigeon changed 4 s into the stream: {by_v1} letters by version 1, {} by version 2",
        by_v2.len()
    );
    stream.finish("pigeon changed", &sent, routers).await;
}
