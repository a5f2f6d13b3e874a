//! `topics ensure` against a real broker's CreateTopics.

use pigeon_bus::route::DestinationSpec;
use pigeon_bus::topics::{self, Ensured};

use crate::support::{pigeon, Db};
use crate::{broker, client, ensure_topics, partitions, unique};

fn sorted(mut done: Vec<(String, Ensured)>) -> Vec<(String, Ensured)> {
    done.sort_by(|a, b| a.0.cmp(&b.0));
    done
}

/// What `ensure` promises: missing topics are created with the partitions asked, topics that
/// exist are left as they are (and reported as existing, whatever their partitions).
#[tokio::test(flavor = "multi_thread")]
async fn ensure_creates_what_is_missing_and_leaves_what_exists() {
    let bootstrap = broker();
    let client = client(&bootstrap);
    let (fresh, small) = (unique("t.a-fresh"), unique("t.b-small"));

    let done = topics::ensure(&client, std::slice::from_ref(&small), 2, 1).await.expect("ensure");
    assert_eq!(done, [(small.clone(), Ensured::Created)]);
    assert_eq!(partitions(&bootstrap, &small), 2);

    let both = [fresh.clone(), small.clone()];
    let done = topics::ensure(&client, &both, 4, 1).await.expect("ensure");
    assert_eq!(sorted(done), [(fresh.clone(), Ensured::Created), (small.clone(), Ensured::Existed(Some(2)))]);
    assert_eq!(partitions(&bootstrap, &fresh), 4, "created with the partitions asked");
    // A topic with fewer partitions than asked is left as it is, and the report says so.
    assert_eq!(partitions(&bootstrap, &small), 2, "an existing topic is left as it is");
    assert!(Ensured::Existed(Some(2)).describe(4).contains("fewer than the 4 asked"));
    assert_eq!(Ensured::Existed(Some(4)).describe(4), "exists");

    // A second run changes nothing.
    let done = topics::ensure(&client, &both, 4, 1).await.expect("ensure");
    assert_eq!(
        sorted(done),
        [(fresh.clone(), Ensured::Existed(Some(4))), (small.clone(), Ensured::Existed(Some(2)))]
    );
    assert_eq!((partitions(&bootstrap, &fresh), partitions(&bootstrap, &small)), (4, 2));
}

/// A replication factor the cluster cannot meet is the broker's error, named per topic.
#[tokio::test(flavor = "multi_thread")]
async fn ensure_reports_a_replication_factor_the_cluster_cannot_meet() {
    let bootstrap = broker();
    let topic = unique("t.replicated");
    let error = topics::ensure(&client(&bootstrap), std::slice::from_ref(&topic), 1, 3)
        .await
        .expect_err("one broker cannot hold three replicas");
    let message = error.to_string();
    assert!(message.starts_with("could not create topics: "), "{message}");
    assert!(message.contains(&format!("{topic}: ")), "{message}");
    assert!(message.contains("replication factor"), "{message}");
    assert_eq!(partitions(&bootstrap, &topic), 0, "nothing was created");
}

/// The CLI creates the bus's topics and the stored pigeons' sources and destinations; a second
/// run finds them all.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_the_pigeons_topics_once() {
    let bootstrap = broker();
    let (source, destination) = (unique("live.gift"), unique("lane.audit"));
    let db = Db::with_pigeons(&[pigeon(
        "audit",
        &source,
        "gift.sent",
        vec![DestinationSpec::topic(&destination, "audit.gift")],
    )])
    .await;

    let first = ensure_topics(&bootstrap, &db, 3);
    for topic in [&source, &destination] {
        assert!(first.lines().any(|l| l == format!("{topic}: created")), "{topic} created:\n{first}");
        assert_eq!(partitions(&bootstrap, topic), 3);
    }
    for topic in topics::BUS_TOPICS {
        assert!(
            first.lines().any(|l| l == format!("{topic}: created") || l == format!("{topic}: exists")),
            "{topic} is the bus's:\n{first}"
        );
        assert!(partitions(&bootstrap, topic) > 0, "{topic} exists");
    }

    let second = ensure_topics(&bootstrap, &db, 3);
    assert_eq!(second.lines().count(), first.lines().count(), "{second}");
    assert!(second.lines().all(|l| l.ends_with(": exists")), "a second run creates nothing:\n{second}");
}
