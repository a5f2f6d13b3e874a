//! Kafka 4's consumer group protocol (KIP-848), `group.protocol=consumer`: the broker assigns
//! partitions, and librdkafka refuses an assignment strategy with it. The router sets none
//! then, and letters fly as under the classic protocol.

use std::time::Duration;

use pigeon_bus::route::DestinationSpec;

use crate::forward::gifts;
use crate::support::{collect_until, http_get, pigeon, produce, Bus, Db, Outgoing};
use crate::{broker, config_file, ensure_topics, unique};

#[tokio::test(flavor = "multi_thread")]
async fn the_router_joins_with_the_consumer_group_protocol_and_letters_fly() {
    const LETTERS: u64 = 500;
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
    bus.wait_healthy();
    let letters = gifts(LETTERS, 8, "kip848");
    produce(&bootstrap, &source, letters.iter().map(Outgoing::from), Some(100));
    let got =
        collect_until(&bootstrap, &destination, |got| got.len() >= LETTERS as usize, Duration::from_secs(1));
    assert_eq!(got.len(), LETTERS as usize, "every letter once");
    let (status, body) = http_get(&bus.admin, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"), "no role went down");
    let log = bus.stop();
    assert!(!log.contains("role failed"), "{log}");
}
