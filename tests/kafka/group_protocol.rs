//! Kafka 4's consumer group protocol (KIP-848), `group.protocol=consumer`: the router does not
//! run under it. Its consumer sets `partition.assignment.strategy` (cooperative-sticky), which
//! librdkafka refuses with this protocol (the broker assigns; `group.remote.assignor` names
//! how), so creating the client fails and the supervisor restarts the router role again and
//! again, while `/healthz` says why. This test pins that down until the router supports it.

use pigeon_bus::route::DestinationSpec;

use crate::support::{eventually, http_get, pigeon, Bus, Db};
use crate::{broker, config_file, ensure_topics, unique};

const REFUSED: &str = "Client creation error: `partition.assignment.strategy` is not supported for \
                       `group.protocol=consumer`. Use `group.remote.assignor` instead";

#[tokio::test(flavor = "multi_thread")]
async fn the_router_cannot_join_with_the_consumer_group_protocol() {
    let bootstrap = broker();
    let (source, destination) = (unique("live.gift"), unique("lane.out"));
    let db = Db::with_pigeons(&[pigeon(
        "kip848",
        &source,
        "gift.sent",
        vec![DestinationSpec::topic(&destination, "gift.out")],
    )])
    .await;
    ensure_topics(&bootstrap, &db, 2);
    let config = config_file(&db);
    // No session or heartbeat settings: under this protocol the broker owns them.
    let bus = Bus::launch(&bootstrap, &db, &["-c", &config, "-X", "consumer.group.protocol=consumer"], &[])
        .unwrap_or_else(|log| panic!("pigeon serve exited before listening:\n{log}"));
    let mut health = None;
    eventually("the router's failure on /healthz", || {
        health = http_get(&bus.admin, "/healthz");
        health.as_ref().is_some_and(|(_, body)| body.contains("started again"))
    });
    let (status, body) = health.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("down: router (started again "), "{body}");
    assert!(body.contains(REFUSED), "{body}");
    let log = bus.log();
    assert!(
        log.contains(&format!(
            "role failed; the others keep running and it starts again role=\"router\" error={REFUSED}"
        )),
        "{log}"
    );
    // The process itself keeps running and stops cleanly.
    bus.stop();
}
