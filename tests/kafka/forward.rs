//! The forward path end to end on a real broker.

use std::collections::HashMap;
use std::time::Duration;

use pigeon_bus::route::DestinationSpec;
use pigeon_sdk::Letter;
use rdkafka::message::Message;

use crate::support::{collect_until, header, pigeon, produce, Db, Outgoing};
use crate::{broker, ensure_topics, serve, unique};

/// Letters keyed by room; `n` counts per room, so each room's letters have an order.
pub fn gifts(count: u64, rooms: u64, mark: &str) -> Vec<Letter> {
    (0..count)
        .map(|n| {
            let room = format!("room-{}", n % rooms);
            Letter::new(
                "live-platform",
                "gift.sent",
                serde_json::json!({"n": n / rooms, "room": room, "mark": mark}),
            )
            .with_key(room.as_str())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn letters_fly_once_each_in_key_order() {
    const LETTERS: u64 = 2_000;
    let bootstrap = broker();
    let (source, destination) = (unique("live.gift"), unique("lane.out"));
    let db = Db::with_pigeons(&[pigeon(
        "forward",
        &source,
        "gift.sent",
        vec![DestinationSpec::topic(&destination, "gift.out")],
    )])
    .await;
    ensure_topics(&bootstrap, &db, 4);
    let bus = serve(&bootstrap, &db, &[]);

    let letters = gifts(LETTERS, 16, "plain");
    produce(&bootstrap, &source, letters.iter().map(Outgoing::from), Some(200));
    let got =
        collect_until(&bootstrap, &destination, |got| got.len() >= LETTERS as usize, Duration::from_secs(1));
    assert_eq!(got.len(), LETTERS as usize, "every letter once");

    // Per key, the letters arrive in the order they were sent.
    let mut sent: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for l in &letters {
        sent.entry(l.key.clone().unwrap()).or_default().push(l.id.to_string());
    }
    let mut arrived: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for m in &got {
        assert_eq!(header(m, "ce_type").as_deref(), Some("gift.out"));
        assert_eq!(header(m, "ce_pigeon").as_deref(), Some("forward"));
        arrived.entry(m.key().unwrap().to_vec()).or_default().push(header(m, "ce_id").unwrap());
    }
    assert_eq!(arrived, sent, "each key's letters, in order");
    bus.stop();
}
