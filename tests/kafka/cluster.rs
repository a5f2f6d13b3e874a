//! A broker lost under a running router, on the three-node cluster of `scripts/kafka cluster`
//! (`PIGEON_TEST_KAFKA_CLUSTER`): topics of three replicas, one router, letters streaming at a
//! steady pace; the node that leads the most source partitions and coordinates the router's
//! group is killed with SIGKILL and started again on its data. Leadership and the group's
//! coordinator move to the other nodes while it is down, the router goes on without a restart,
//! nothing is lost, each key's letters arrive first in order; duplicates are printed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::stream::{held, tally, Stream};
use crate::support::{eventually, http_get, DEADLINE};
use crate::{client, cluster, unique};

const PARTITIONS: i32 = 16;
/// Letters a second: about 20,000 over the test's stream (some 40 s: a restarted node answers
/// 10 to 30 s after it starts on two busy cores).
const RATE: u64 = 500;

/// Runs `scripts/kafka` (the cluster's nodes are its); what it printed, failing when it fails.
fn kafka_script(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka");
    let out = Command::new(script).args(args).output().expect("run scripts/kafka");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/kafka {} failed:\n{stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until `f` gives a value, failing with `what` at the deadline.
fn within<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each partition of `topic` and the node leading it, by the cluster's metadata (`None` when it
/// does not answer, or a partition has no leader).
fn leaders(metadata: &BaseConsumer, topic: &str) -> Option<BTreeMap<i32, i32>> {
    let answer = metadata.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    let topic = answer.topics().first().filter(|t| t.error().is_none())?;
    let leaders: BTreeMap<i32, i32> = topic.partitions().iter().map(|p| (p.id(), p.leader())).collect();
    leaders.values().all(|&node| node >= 0).then_some(leaders)
}

/// How many of `leaders`' partitions `node` leads.
fn led(leaders: &BTreeMap<i32, i32>, node: i32) -> usize {
    leaders.values().filter(|&&l| l == node).count()
}

/// The node coordinating `group` now, by the first node of `bootstrap` that answers a
/// FindCoordinator request (`None` while none knows one).
fn coordinator(bootstrap: &str, group: &str) -> Option<i32> {
    bootstrap.split(',').find_map(|address| find_coordinator(address, group).ok().flatten())
}

/// FindCoordinator (API key 10, version 1) for a group, asked of one node; the coordinator's
/// node id, `None` on an error code. librdkafka finds coordinators but does not say which.
fn find_coordinator(address: &str, group: &str) -> std::io::Result<Option<i32>> {
    let address = address.parse().map_err(std::io::Error::other)?;
    let mut socket = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let string = |s: &str| [&(s.len() as i16).to_be_bytes()[..], s.as_bytes()].concat();
    // Header: API key, version, correlation id, client id; then the key and its type (a group).
    let request = [
        &10i16.to_be_bytes()[..],
        &1i16.to_be_bytes(),
        &1i32.to_be_bytes(),
        &string("pigeon-tests"),
        &string(group),
        &[0u8],
    ]
    .concat();
    socket.write_all(&[&(request.len() as i32).to_be_bytes()[..], &request].concat())?;
    let mut size = [0u8; 4];
    socket.read_exact(&mut size)?;
    let mut response = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    socket.read_exact(&mut response)?;
    // Correlation id, throttle time, error code, error message (nullable string), node id.
    let field = |at: usize, n: usize| {
        response.get(at..at + n).ok_or_else(|| std::io::Error::other("a short FindCoordinator response"))
    };
    let error = i16::from_be_bytes(field(8, 2)?.try_into().unwrap());
    let message = i16::from_be_bytes(field(10, 2)?.try_into().unwrap()).max(0) as usize;
    let node = i32::from_be_bytes(field(12 + message, 4)?.try_into().unwrap());
    Ok((error == 0).then_some(node))
}

/// A new consumer group name that `node` coordinates (the group's partition of
/// `__consumer_offsets` is one it leads), asking the cluster for each name tried.
fn group_coordinated_by(bootstrap: &str, metadata: &BaseConsumer, node: i32) -> String {
    // The first ask creates `__consumer_offsets` when no group made it yet. A node a run before
    // killed leads none of it until the cluster hands its preferred leaderships back
    // (`scripts/kafka cluster` checks every 10 s): wait for that, so that no leadership moves
    // between the choice and the kill.
    within("a coordinator", || coordinator(bootstrap, &unique("probe")));
    within("the preferred leaders of __consumer_offsets", || {
        let answer = metadata.fetch_metadata(Some("__consumer_offsets"), Duration::from_secs(5)).ok()?;
        let partitions = answer.topics().first().filter(|t| t.error().is_none())?.partitions();
        let preferred = partitions.iter().all(|p| p.replicas().first() == Some(&p.leader()));
        (preferred && !partitions.is_empty()).then_some(())
    });
    within(&format!("node {node} to coordinate a group"), || {
        (0..100).map(|_| unique("pigeon-router")).find(|group| coordinator(bootstrap, group) == Some(node))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_killed_mid_stream_moves_leaders_and_the_coordinator_and_loses_nothing() {
    let began = Instant::now();
    let bootstrap = cluster();
    let status = kafka_script(&["status"]);
    assert!(
        status.lines().any(|l| l.strip_prefix("kafka cluster: ").is_some_and(|l| l.starts_with(&bootstrap))),
        "PIGEON_TEST_KAFKA_CLUSTER={bootstrap} is not the cluster of this worktree's scripts/kafka, whose \
         nodes the test stops and starts:\n{status}"
    );
    let mut stream = Stream::on(&bootstrap, PARTITIONS, 3).await;
    stream.rate = RATE;
    let metadata: BaseConsumer = client(&bootstrap).create().expect("metadata client");

    // The node that leads the most source partitions, made the group's coordinator as well.
    let first = within("the source's leaders", || leaders(&metadata, &stream.source));
    let victim = (1..=3).max_by_key(|&node| (led(&first, node), -node)).unwrap();
    let group = group_coordinated_by(&bootstrap, &metadata, victim);
    stream.group(&group);
    // librdkafka's session timeout (45 s), as in production: the tests' 6 s would lapse while
    // the group has no coordinator (until the controller fences the killed node, 9 s).
    let router = stream.router_with(&[]);
    eventually("the router to hold every source partition", || {
        held(&router, &stream.source) == PARTITIONS as i64
    });
    assert_eq!(coordinator(&bootstrap, &group), Some(victim), "node {victim} coordinates the group");

    let stop = Arc::new(AtomicBool::new(false));
    let sending = stream.send(Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(5));

    let before = within("the source's leaders", || leaders(&metadata, &stream.source));
    let most = (1..=3).map(|node| led(&before, node)).max().unwrap();
    assert_eq!(
        led(&before, victim),
        most,
        "node {victim} still leads the most source partitions: {before:?}"
    );
    let victims: Vec<i32> = before.iter().filter(|&(_, &l)| l == victim).map(|(&p, _)| p).collect();
    let out = |router: &crate::support::Bus| router.metrics()["pigeon_letters_out_total"];
    let out_at_kill = out(&router);
    let killed_at = Instant::now();
    kafka_script(&["kill-node", &victim.to_string()]);

    // While it is down, its partitions get leaders among the others, and so does the group.
    let after = within("the killed node's partitions to get other leaders", || {
        leaders(&metadata, &stream.source).filter(|l| victims.iter().all(|p| l[p] != victim))
    });
    let leaders_moved = killed_at.elapsed();
    let out_at_move = out(&router);
    let successor =
        within("another coordinator", || coordinator(&bootstrap, &group).filter(|&c| c != victim));
    let coordinator_moved = killed_at.elapsed();
    let new_leaders: BTreeMap<i32, usize> = (1..=3)
        .filter(|&n| n != victim)
        .map(|n| (n, victims.iter().filter(|p| after[p] == n).count()))
        .collect();

    std::thread::sleep(Duration::from_secs(2));
    let restarted_after = killed_at.elapsed();
    kafka_script(&["start-node", &victim.to_string()]);
    let down = killed_at.elapsed();
    let out_while_down = out(&router) - out_at_kill;
    // Stream on with the node back.
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap();
    let got = stream.outputs(sent.len());
    let (lost, duplicates) = tally("broker killed", &sent, &got);

    // The same router process went on through it all: no role restarted.
    let log = router.log();
    let rebalances = log.lines().filter(|l| l.contains("partitions revoked")).count();
    let dead_letters = router.metrics()["pigeon_dead_letters_total"];
    let (status, body) = http_get(&router.admin, "/healthz").expect("healthz");
    assert_eq!((status, body.trim()), (200, "ok"), "the router is healthy:\n{log}");
    assert!(!log.contains("role failed"), "no role of the router restarted:\n{log}");
    router.stop();

    println!(
        "broker killed: node {victim} (SIGKILL) led {} of {PARTITIONS} source partitions and coordinated \
         the router's group; its partitions had other leaders {leaders_moved:.1?} after ({new_leaders:?} by \
         node), the group coordinator was node {successor} {coordinator_moved:.1?} after; restarted \
         {restarted_after:.1?} after the kill, answering again {down:.1?} after; the router handed \
         {out_while_down} outputs to its producer meanwhile ({} before the leaders moved)",
        victims.len(),
        out_at_move - out_at_kill
    );
    println!(
        "broker killed: {} letters at {RATE}/s, lost {lost}, duplicates {duplicates}, dead letters \
         {dead_letters}; the router (not restarted) saw {rebalances} revocations; the test took {:.1?}",
        sent.len(),
        began.elapsed()
    );
    assert_eq!(lost, 0, "nothing lost");
}
