//! Transactional sources: the router reads with librdkafka's default `isolation.level`,
//! `read_committed` (Pigeon does not set it), so letters of an aborted transaction never fly.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pigeon_bus::route::DestinationSpec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::forward::gifts;
use crate::support::{collect_until, header, pigeon, Db, DEADLINE};
use crate::{broker, client, ensure_topics, serve, unique};

/// Sends `letters` in one transaction, committed or aborted.
fn transaction(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    letters: &[pigeon_sdk::Letter],
    commit: bool,
) {
    producer.begin_transaction().expect("begin");
    for letter in letters {
        let (headers, payload) = (letter.headers(), letter.payload_bytes());
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).headers(headers).payload(payload.as_slice());
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(DEADLINE).expect("flush");
    if commit {
        producer.commit_transaction(DEADLINE).expect("commit");
    } else {
        producer.abort_transaction(DEADLINE).expect("abort");
    }
}

/// Every message of a topic, aborted ones included (`read_uncommitted`): `count` of them.
fn read_uncommitted(bootstrap: &str, topic: &str, partitions: i32, count: usize) -> Vec<String> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", unique("uncommitted"))
        .set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + DEADLINE;
    let mut ids = Vec::new();
    while ids.len() < count {
        assert!(Instant::now() < deadline, "{topic}: only {} of {count} messages", ids.len());
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            ids.push(header(&m.detach(), "ce_id").unwrap());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn only_committed_letters_fly() {
    let bootstrap = broker();
    let (source, destination) = (unique("live.gift"), unique("lane.out"));
    let db = Db::with_pigeons(&[pigeon(
        "committed",
        &source,
        "gift.sent",
        vec![DestinationSpec::topic(&destination, "gift.out")],
    )])
    .await;
    ensure_topics(&bootstrap, &db, 2);
    let bus = serve(&bootstrap, &db, &[]);

    let producer: ThreadedProducer<DefaultProducerContext> =
        client(&bootstrap).set("transactional.id", unique("tx")).create().expect("producer");
    producer.init_transactions(DEADLINE).expect("init transactions");
    let (aborted, committed) = (gifts(100, 4, "aborted"), gifts(100, 4, "committed"));
    transaction(&producer, &source, &aborted, false);
    transaction(&producer, &source, &committed, true);

    // The aborted letters are on the source topic all the same.
    let on_source: HashSet<String> = read_uncommitted(&bootstrap, &source, 2, 200).into_iter().collect();
    assert!(
        aborted.iter().all(|l| on_source.contains(&l.id.to_string())),
        "the aborted letters were written"
    );

    let got =
        collect_until(&bootstrap, &destination, |got| got.len() >= committed.len(), Duration::from_secs(3));
    let flown: HashSet<String> = got.iter().map(|m| header(m, "ce_id").unwrap()).collect();
    let expected: HashSet<String> = committed.iter().map(|l| l.id.to_string()).collect();
    assert_eq!(got.len(), committed.len(), "each committed letter once, no aborted one");
    assert_eq!(flown, expected, "only the committed transaction's letters flew");
    let log = bus.stop();
    assert!(
        !log.contains("isolation.level=read_uncommitted"),
        "the router reads committed letters only:\n{log}"
    );
}
