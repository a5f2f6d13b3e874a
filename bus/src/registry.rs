//! The registry role: reads module registrations and heartbeats from `pigeon.registry` into the
//! store, so operators see providers, their instances and capabilities, and can wire pigeons
//! to a capability the moment a module declares it.
//!
//! A registration is committed only once it is stored; while the store is down the role waits
//! and tries the same registration again. One that cannot be read is logged and skipped: it
//! would never read better, and the module sends a fresh one on its next heartbeat.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::ClientConfig;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use pigeon_sdk::ledger::{Ledger, LedgerContext};
use pigeon_sdk::registry::{self, Registration};

use crate::store::{now_ms, CapabilityRecord, InstanceState, ModuleInstance, Store};

/// The consumer group that reads `pigeon.registry`.
pub const GROUP: &str = "pigeon-registry";

/// Reads a registration and checks it; the error says why it is skipped.
pub fn parse(payload: Option<&[u8]>) -> Result<Registration, String> {
    let payload = payload.ok_or("the registration has no payload")?;
    let registration: Registration =
        serde_json::from_slice(payload).map_err(|e| format!("not a registration: {e}"))?;
    registry::validate_module_name(&registration.module)?;
    if registration.instance.is_empty() || registration.instance.len() > 128 {
        return Err(format!("instance id of {} must be 1 to 128 characters", registration.module));
    }
    let topic = registry::module_topic(&registration.module);
    if registration.topic != topic {
        return Err(format!(
            "module {} must consume {topic}, not {}",
            registration.module, registration.topic
        ));
    }
    for capability in &registration.capabilities {
        registry::validate_capability_name(&capability.name)?;
    }
    let mut flown = std::collections::HashSet::new();
    for declared in &registration.flies {
        crate::route::pattern::validate_tag(&declared.tag)
            .map_err(|e| format!("module {} flies {:?}: {e}", registration.module, declared.tag))?;
        if declared.tag.len() > 191 {
            return Err(format!("module {} flies a tag longer than 191 characters", registration.module));
        }
        if !flown.insert(declared.tag.to_ascii_lowercase()) {
            return Err(format!("module {} declares {:?} twice", registration.module, declared.tag));
        }
    }
    if registration.heartbeat_ms == 0 {
        return Err(format!("module {} sent a zero heartbeat interval", registration.module));
    }
    Ok(registration)
}

/// Consumes `pigeon.registry` until `cancel` fires.
pub async fn run(
    consumer: ClientConfig,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut consumer = consumer;
    consumer.set("enable.auto.offset.store", "false");
    // Registrations settle one by one on this task, before the next is read: a revoke finds
    // nothing to wait for.
    let ledger = Arc::new(Ledger::new("registry"));
    let consumer: StreamConsumer<LedgerContext> =
        consumer.create_with_context(LedgerContext::new(Arc::clone(&ledger), Duration::ZERO))?;
    consumer.subscribe(&[registry::TOPIC])?;
    tracing::info!(topic = registry::TOPIC, "reading module registrations");
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => break,
            received = consumer.recv() => match received {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "reading pigeon.registry");
                    continue;
                }
            },
        };
        let partition = ledger.partition(message.topic(), message.partition());
        partition.begin(message.offset(), 1);
        if !record(&message, store.as_ref(), &cancel).await {
            break; // cancelled while the store was down: read again after the restart
        }
        partition.settle(message.offset());
        ledger.store_offsets(&consumer);
    }
    if let Err(e) = ledger.commit(&consumer) {
        tracing::debug!(error = %e, "final commit of pigeon.registry");
    }
    Ok(())
}

/// Stores one registration, waiting out store failures; false if cancelled first.
async fn record(message: &BorrowedMessage<'_>, store: &dyn Store, cancel: &CancellationToken) -> bool {
    let registration = match parse(message.payload()) {
        Ok(r) => r,
        Err(reason) => {
            tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                reason,
                "skipping a registration"
            );
            return true;
        }
    };
    let mut wait = Duration::from_millis(200);
    loop {
        match store.record_registration(&registration, now_ms()).await {
            Ok(changes) => {
                if changes.new_instance {
                    tracing::info!(module = %registration.module, instance = %registration.instance, "instance registered");
                }
                if registration.leaving {
                    tracing::info!(module = %registration.module, instance = %registration.instance, "instance left");
                }
                for (what, names) in
                    [("added", &changes.added), ("updated", &changes.updated), ("retired", &changes.retired)]
                {
                    if !names.is_empty() {
                        tracing::info!(module = %registration.module, capabilities = ?names, "capabilities {what}");
                    }
                }
                return true;
            }
            Err(e) if !e.is_transient() => {
                // The same registration would fail for ever and hold every later one back:
                // the module's next heartbeat registers it again.
                tracing::error!(module = %registration.module, instance = %registration.instance, error = %e, "the store refuses this registration; skipping it");
                return true;
            }
            Err(e) => {
                tracing::warn!(module = %registration.module, error = %e, "cannot store a registration; trying again");
                tokio::select! {
                    _ = cancel.cancelled() => return false,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A provider (module) as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ProviderView {
    /// Module name.
    pub module: String,
    /// The topic its capabilities are delivered on.
    pub topic: String,
    /// Whether any instance is live.
    pub live: bool,
    /// Its instances, newest registration first.
    pub instances: Vec<InstanceView>,
    /// Its capabilities, retired ones included.
    pub capabilities: Vec<CapabilityView>,
}

/// An instance as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct InstanceView {
    /// Instance id.
    pub instance: String,
    /// `live`, `stale` (missed heartbeats) or `left` (shut down).
    pub state: InstanceState,
    /// Host.
    pub host: String,
    /// Module version.
    pub version: String,
    /// Lane topics it consumes.
    pub lanes: Vec<String>,
    /// Capability names it declares.
    pub capabilities: Vec<String>,
    /// Heartbeat interval (ms).
    pub heartbeat_ms: i64,
    /// First registration (unix ms).
    pub started_at: i64,
    /// Last heartbeat (unix ms).
    pub last_seen: i64,
}

/// A capability as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CapabilityView {
    /// Name: the tag on the module topic.
    pub name: String,
    /// `module/name`: how a pigeon names it as a destination.
    pub destination: String,
    /// What it does.
    pub description: String,
    /// Dictionary fields its letters must carry.
    pub requires: Vec<String>,
    /// Whether a live instance offers it now (a pigeon may still send to it: the letters wait
    /// on the module topic).
    pub online: bool,
    /// When it was retired (no live instance declares it any more), if it was.
    pub retired_at: Option<i64>,
    /// First declared (unix ms).
    pub first_seen: i64,
}

fn provider_of<'a>(map: &'a mut BTreeMap<String, ProviderView>, module: &str) -> &'a mut ProviderView {
    map.entry(module.to_owned()).or_insert_with(|| ProviderView {
        module: module.to_owned(),
        topic: registry::module_topic(module),
        live: false,
        instances: Vec::new(),
        capabilities: Vec::new(),
    })
}

/// Groups instances and capabilities by module, judging liveness at `now`.
pub fn providers(
    instances: Vec<ModuleInstance>,
    capabilities: Vec<CapabilityRecord>,
    now: i64,
) -> Vec<ProviderView> {
    let mut by_module: BTreeMap<String, ProviderView> = BTreeMap::new();
    for instance in instances {
        let provider = provider_of(&mut by_module, &instance.module);
        let state = instance.state(now);
        provider.live |= state == InstanceState::Live;
        provider.instances.push(InstanceView {
            state,
            instance: instance.instance,
            host: instance.host,
            version: instance.version,
            lanes: instance.lanes,
            capabilities: instance.capabilities,
            heartbeat_ms: instance.heartbeat_ms,
            started_at: instance.started_at,
            last_seen: instance.last_seen,
        });
    }
    for capability in capabilities {
        let provider = provider_of(&mut by_module, &capability.module);
        let online = capability.retired_at.is_none()
            && provider
                .instances
                .iter()
                .any(|i| i.state == InstanceState::Live && i.capabilities.contains(&capability.name));
        provider.capabilities.push(CapabilityView {
            destination: format!("{}/{}", capability.module, capability.name),
            name: capability.name,
            description: capability.description,
            requires: capability.requires,
            online,
            retired_at: capability.retired_at,
            first_seen: capability.first_seen,
        });
    }
    let mut providers: Vec<ProviderView> = by_module.into_values().collect();
    for provider in &mut providers {
        provider.instances.sort_by_key(|i| std::cmp::Reverse(i.last_seen));
    }
    providers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration() -> serde_json::Value {
        serde_json::json!({
            "module": "act-toy", "instance": "host-1", "topic": "pigeon.module.act-toy",
            "capabilities": [{"name": "chest.drop", "description": "Drops a chest", "requires": ["roomId"]}],
            "heartbeat_ms": 1000, "sent_at_ms": 1
        })
    }

    #[test]
    fn registrations_are_checked_before_they_are_stored() {
        let ok = registration();
        assert!(parse(Some(ok.to_string().as_bytes())).is_ok());
        let cases = [
            (serde_json::json!({"module": "Act Toy"}), "module"),
            (serde_json::json!({"topic": "live.gift"}), "must consume pigeon.module.act-toy"),
            (serde_json::json!({"capabilities": [{"name": "a/b"}]}), "capability name"),
            (serde_json::json!({"heartbeat_ms": 0}), "zero heartbeat"),
            (serde_json::json!({"instance": ""}), "instance id"),
            (
                serde_json::json!({"flies": [{"tag": "progress.full"}, {"tag": "Progress.Full"}]}),
                "declares \"Progress.Full\" twice",
            ),
            (serde_json::json!({"flies": [{"tag": "bad tag"}]}), "flies \"bad tag\""),
        ];
        for (patch, expected) in cases {
            let mut bad = registration();
            for (k, v) in patch.as_object().unwrap() {
                bad[k] = v.clone();
            }
            let err = parse(Some(bad.to_string().as_bytes())).unwrap_err();
            assert!(err.contains(expected), "{patch}: {err}");
        }
        assert!(parse(Some(b"{not json")).unwrap_err().contains("not a registration"));
        assert!(parse(None).unwrap_err().contains("no payload"));
    }

    fn instance(name: &str, caps: &[&str], last_seen: i64, left: bool) -> ModuleInstance {
        ModuleInstance {
            module: "act-toy".into(),
            instance: name.into(),
            host: "h".into(),
            version: "1".into(),
            topic: "pigeon.module.act-toy".into(),
            lanes: vec![],
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            heartbeat_ms: 1000,
            started_at: 0,
            last_seen,
            left_at: left.then_some(last_seen),
        }
    }

    fn capability(name: &str, retired: bool) -> CapabilityRecord {
        CapabilityRecord {
            module: "act-toy".into(),
            name: name.into(),
            description: String::new(),
            requires: vec![],
            first_seen: 0,
            updated_at: 0,
            retired_at: retired.then_some(5),
        }
    }

    #[test]
    fn liveness_follows_heartbeats_and_capabilities_follow_live_instances() {
        let now = 100_000;
        let views = providers(
            vec![
                instance("a", &["chest.drop"], now - 2_000, false), // within 3 heartbeats
                instance("b", &["progress.add"], now - 3_500, false), // missed 3
                instance("c", &["chest.drop"], now - 100, true),    // left
            ],
            vec![capability("chest.drop", false), capability("progress.add", false), capability("old", true)],
            now,
        );
        assert_eq!(views.len(), 1);
        let toy = &views[0];
        assert!(toy.live);
        let states: Vec<(&str, InstanceState)> =
            toy.instances.iter().map(|i| (i.instance.as_str(), i.state)).collect();
        assert_eq!(
            states,
            [("c", InstanceState::Left), ("a", InstanceState::Live), ("b", InstanceState::Stale)]
        );
        let online: Vec<(&str, bool)> =
            toy.capabilities.iter().map(|c| (c.name.as_str(), c.online)).collect();
        assert_eq!(online, [("chest.drop", true), ("progress.add", false), ("old", false)]);
        assert_eq!(toy.capabilities[0].destination, "act-toy/chest.drop");
    }
}
