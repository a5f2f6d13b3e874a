//! The topics the bus owns, and creating them.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::route::{module_topic, RouteTable};

pub use pigeon_wire::{FAILED, INGRESS, RECEIPTS, REGISTRY};
/// Configuration-change notices read by every instance.
pub const CONTROL: &str = "pigeon.control";

/// The topics of the bus itself.
pub const BUS_TOPICS: [&str; 5] = [INGRESS, REGISTRY, FAILED, RECEIPTS, CONTROL];

/// Every topic the bus needs: its own, the configured modules', and every source and
/// destination of the pigeons in `tables` (the router's and the archiver's).
pub fn required_topics(modules: &[String], tables: &[&RouteTable]) -> Vec<String> {
    let mut topics: BTreeSet<String> = BUS_TOPICS.iter().map(|t| t.to_string()).collect();
    topics.extend(modules.iter().map(|m| module_topic(m)));
    for table in tables {
        topics.extend(table.source_topics());
        topics.extend(table.destination_topics());
    }
    topics.into_iter().collect()
}

/// What happened to one topic.
#[derive(Debug, PartialEq, Eq)]
pub enum Ensured {
    /// It was created.
    Created,
    /// It was there already, with this many partitions (`None` when the brokers did not say).
    /// It is left as it is: adding partitions moves keys to other partitions, which is the
    /// operator's call.
    Existed(Option<usize>),
}

impl Ensured {
    /// How `topics ensure` reports it when `partitions` were asked.
    pub fn describe(&self, partitions: i32) -> String {
        match self {
            Ensured::Created => "created".to_owned(),
            Ensured::Existed(Some(has)) if i32::try_from(*has).is_ok_and(|has| has < partitions) => format!(
                "exists with {has} partitions, fewer than the {partitions} asked (left as it is: \
                 adding partitions moves keys, so per-key order breaks across the change)"
            ),
            Ensured::Existed(_) => "exists".to_owned(),
        }
    }
}

/// Creates topics through the Kafka admin API; topics that exist are left as they are.
pub async fn ensure(
    client: &ClientConfig,
    topics: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<Vec<(String, Ensured)>> {
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication))).collect();
    let timeout = Duration::from_secs(30);
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = tokio::time::timeout(timeout + Duration::from_secs(5), admin.create_topics(&new, &options))
        .await
        .map_err(|_| anyhow::anyhow!("the brokers did not answer CreateTopics within {timeout:?}"))??;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(topic) => out.push((topic, Ensured::Created)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let has = partitions_of(client, &topic).await;
                out.push((topic, Ensured::Existed(has)));
            }
            Err((topic, code)) => errors.push(format!("{topic}: {code}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        anyhow::bail!("could not create topics: {}", errors.join("; "))
    }
}

/// How many partitions `topic` has, as the brokers' metadata says (asked off the runtime:
/// librdkafka's metadata call blocks).
async fn partitions_of(client: &ClientConfig, topic: &str) -> Option<usize> {
    let (client, topic) = (client.clone(), topic.to_owned());
    let asked = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let metadata_client: BaseConsumer = client.create().ok()?;
        let metadata = metadata_client.fetch_metadata(Some(&topic), Duration::from_secs(10)).ok()?;
        let found = metadata.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().len());
        found
    });
    asked.await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{DestinationSpec, MatchSpec, PigeonSpec, VersionedPigeon};

    #[test]
    fn the_bus_modules_sources_and_destinations_are_required() {
        let spec = PigeonSpec {
            id: "p".into(),
            name: String::new(),
            owner: String::new(),
            enabled: true,
            action: Default::default(),
            script: None,
            matcher: MatchSpec::new("live.gift", "gift"),
            destinations: vec![
                DestinationSpec::capability("chest/drop"),
                DestinationSpec::topic("lane.x", "t"),
            ],
            retry: None,
            window: None,
            dictionary: Default::default(),
        };
        let mut archive = spec.clone();
        archive.id = "keep".into();
        archive.action = crate::route::Action::Archive;
        archive.matcher = MatchSpec::new("live.like", "**");
        archive.destinations.clear();
        let pigeons = [spec, archive].map(|spec| VersionedPigeon { spec, version: 1, saved_at: 0 });
        let table = RouteTable::compile(&pigeons, &Default::default()).unwrap();
        let archiving = RouteTable::build_for(
            crate::route::Paths::Archive,
            &pigeons,
            &Default::default(),
            None,
            Default::default(),
        )
        .table;
        let topics = required_topics(&["act-toy".into()], &[&table, &archiving]);
        assert_eq!(
            topics,
            [
                "lane.x",
                "live.gift",
                "live.like",
                "pigeon.control",
                "pigeon.failed",
                "pigeon.ingress",
                "pigeon.module.act-toy",
                "pigeon.module.chest",
                "pigeon.receipts",
                "pigeon.registry",
            ]
        );
    }
}
