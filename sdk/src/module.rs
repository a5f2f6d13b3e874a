//! A module on the bus: its builder, the running [`Module`], and flying letters to pigeons.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::capability::{Capability, Handler, Retry};
use crate::consumer::{self, ConsumerParts};
use crate::fields::LetterBuilder;
use crate::fly::{Bus, Context, FlyError, Flyer, Receipt};
use crate::letter::{Letter, LetterId};
use crate::registry::{self, CapabilityInfo, Registration};

pub use pigeon_wire::{FAILED, INGRESS};

/// Why a module could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The builder's settings are not usable.
    #[error("invalid module settings: {0}")]
    Invalid(String),
    /// A Kafka client could not be created, or the first registration was not acknowledged.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Configures a module; [`ModuleBuilder::start`] runs it.
#[must_use = "call start() to run the module"]
pub struct ModuleBuilder {
    name: String,
    brokers: Option<String>,
    properties: BTreeMap<String, String>,
    version: String,
    capabilities: Vec<Capability>,
    flies: Vec<registry::FlownTag>,
    lanes: Vec<String>,
    concurrency: usize,
    retry: Retry,
    heartbeat: Duration,
    drain_timeout: Duration,
    fly_timeout: Duration,
    bus: Option<(String, String)>,
    receipts: bool,
}

impl std::fmt::Debug for ModuleBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Properties may hold credentials and the bus a token: neither is printed.
        f.debug_struct("ModuleBuilder")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("capabilities", &self.capabilities)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl ModuleBuilder {
    /// The Kafka bootstrap servers (`host:port,…`). Required.
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.brokers = Some(brokers.into());
        self
    }

    /// A librdkafka property for every client of the module (`security.protocol`,
    /// `sasl.username`, `session.timeout.ms`, …).
    pub fn kafka_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// The module's own version, shown to operators (default: empty).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Adds a capability.
    pub fn capability(mut self, capability: Capability) -> Self {
        self.capabilities.push(capability);
        self
    }

    /// Declares a tag the module flies and the dictionary fields its letters carry (use
    /// [`crate::fields`]): the bus checks that pigeons taking these letters can feed their
    /// destinations. Repeat for each tag.
    pub fn flies<F: Into<String>>(
        mut self,
        tag: impl Into<String>,
        fields: impl IntoIterator<Item = F>,
    ) -> Self {
        self.flies.push(registry::FlownTag {
            tag: tag.into(),
            fields: fields.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// Also consumes a lane topic (a route may send a noisy capability there).
    pub fn lane(mut self, topic: impl Into<String>) -> Self {
        self.lanes.push(topic.into());
        self
    }

    /// How many letters are handled at once (default 8). Letters of one key are always handled
    /// one after another, in order.
    pub fn concurrency(mut self, workers: usize) -> Self {
        self.concurrency = workers.max(1);
        self
    }

    /// How a failing handler is tried again before the failure goes to the bus.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// How often the module registers again as a heartbeat (default 30 s).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// How long shutdown and partition revokes wait for letters being handled (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long `fly` and `fly_sync` wait for Kafka or the bus (default 30 s).
    pub fn fly_timeout(mut self, timeout: Duration) -> Self {
        self.fly_timeout = timeout;
        self
    }

    /// Whether each handled letter's receipt (module, instance, capability, outcome, duration)
    /// goes to `pigeon.receipts`, where the bus keeps a sample and per-minute totals for
    /// operators (default: on). A receipt never delays a letter: one the producer's queue
    /// cannot take at once is left out.
    pub fn receipts(mut self, on: bool) -> Self {
        self.receipts = on;
        self
    }

    /// The bus's admin URL and a `module` token, for [`Module::fly_sync`].
    pub fn bus(mut self, url: impl Into<String>, token: impl Into<String>) -> Self {
        self.bus = Some((url.into(), token.into()));
        self
    }

    fn check(&self) -> Result<String, StartError> {
        let invalid = |e: String| StartError::Invalid(e);
        registry::validate_module_name(&self.name).map_err(invalid)?;
        let brokers = self.brokers.clone().ok_or_else(|| invalid("brokers are required".into()))?;
        let mut seen = std::collections::HashSet::new();
        for capability in &self.capabilities {
            registry::validate_capability_name(capability.name()).map_err(invalid)?;
            if !seen.insert(capability.name()) {
                return Err(invalid(format!("capability {:?} is declared twice", capability.name())));
            }
        }
        if self.heartbeat < Duration::from_millis(100) {
            return Err(invalid("the heartbeat must be at least 100 ms".into()));
        }
        Ok(brokers)
    }

    fn client_config(&self, brokers: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers).set("client.id", format!("pigeon-sdk-{}", self.name));
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
    }

    /// Registers the module with the bus, starts heartbeats and, when it has capabilities or
    /// lanes, the consumer. Returns once Kafka acknowledged the first registration.
    ///
    /// Must be called within a Tokio runtime.
    pub async fn start(self) -> Result<Module, StartError> {
        let brokers = self.check()?;
        let mut producer_config = self.client_config(&brokers);
        producer_config.set("enable.idempotence", "true").set("linger.ms", "5");
        let producer: FutureProducer = producer_config.create()?;
        let bus = match &self.bus {
            Some((url, token)) => Some(Bus {
                http: reqwest::Client::builder()
                    .build()
                    .map_err(|e| StartError::Invalid(format!("HTTP client: {e}")))?,
                url: url.clone(),
                token: token.clone(),
            }),
            None => None,
        };
        let flyer = Arc::new(Flyer {
            module: self.name.clone(),
            producer: producer.clone(),
            timeout: self.fly_timeout,
            bus,
        });
        let context = Context { flyer };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let instance = format!("{}-{}", host, LetterId::new().as_uuid().simple());
        let registration = Registration {
            module: self.name.clone(),
            instance: instance.clone(),
            host,
            version: self.version.clone(),
            topic: registry::module_topic(&self.name),
            lanes: self.lanes.clone(),
            capabilities: self.capabilities.iter().map(|c| c.info.clone()).collect::<Vec<CapabilityInfo>>(),
            flies: self.flies.clone(),
            heartbeat_ms: self.heartbeat.as_millis() as u64,
            leaving: false,
            sent_at_ms: 0,
        };
        register(&producer, &registration, self.fly_timeout).await?;
        tracing::info!(module = %self.name, instance = %instance, capabilities = self.capabilities.len(), "registered with the bus");

        let cancel = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeats(
            producer.clone(),
            registration.clone(),
            self.heartbeat,
            self.fly_timeout,
            cancel.clone(),
        ));
        let consumer = if self.capabilities.is_empty() && self.lanes.is_empty() {
            None
        } else {
            let mut config = self.client_config(&brokers);
            config
                .set("group.id", registry::module_topic(&self.name))
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", "1000")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                // Partitions added to the module's topic are read within 10 s (librdkafka's
                // default refresh is 5 minutes).
                .set("topic.metadata.refresh.interval.ms", "10000");
            for (name, value) in &self.properties {
                config.set(name, value);
            }
            let handlers: HashMap<String, Arc<dyn Handler>> =
                self.capabilities.iter().map(|c| (c.info.name.clone(), Arc::clone(&c.handler))).collect();
            let mut topics = vec![registry::module_topic(&self.name)];
            topics.extend(self.lanes.iter().cloned());
            Some(consumer::start(ConsumerParts {
                config,
                topics,
                module: self.name.clone(),
                instance: instance.clone(),
                receipts: self.receipts,
                handlers,
                context: context.clone(),
                concurrency: self.concurrency,
                retry: self.retry.clone(),
                drain_timeout: self.drain_timeout,
                reports: producer.clone(),
                cancel: cancel.clone(),
            })?)
        };
        Ok(Module { name: self.name, instance, context, cancel, heartbeat, consumer, producer, registration })
    }
}

/// A running module: registered, heartbeating, handling its letters. Stop it with
/// [`Module::shutdown`] to finish the letters in hand and commit; dropping it stops it
/// without waiting.
pub struct Module {
    name: String,
    instance: String,
    context: Context,
    cancel: CancellationToken,
    heartbeat: tokio::task::JoinHandle<()>,
    consumer: Option<consumer::Running>,
    producer: FutureProducer,
    registration: Registration,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("name", &self.name).field("instance", &self.instance).finish()
    }
}

impl Module {
    /// Starts configuring module `name` (1 to 64 of `[a-z0-9._-]`); its letters arrive on
    /// `pigeon.module.<name>`.
    pub fn builder(name: impl Into<String>) -> ModuleBuilder {
        ModuleBuilder {
            name: name.into(),
            brokers: None,
            properties: BTreeMap::new(),
            version: String::new(),
            capabilities: Vec::new(),
            flies: Vec::new(),
            lanes: Vec::new(),
            concurrency: 8,
            retry: Retry::default(),
            heartbeat: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            fly_timeout: Duration::from_secs(30),
            bus: None,
            receipts: true,
        }
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This instance's id, as the bus lists it.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// What handlers get: flying as this module.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Starts a letter whose source is this module.
    pub fn letter(&self, tag: impl Into<String>) -> LetterBuilder {
        self.context.letter(tag)
    }

    /// See [`Context::fly`].
    pub async fn fly(&self, pigeon: &str, letter: Letter) -> Result<LetterId, FlyError> {
        self.context.fly(pigeon, letter).await
    }

    /// See [`Context::fly_sync`].
    pub async fn fly_sync(&self, pigeon: &str, letter: Letter) -> Result<Receipt, FlyError> {
        self.context.fly_sync(pigeon, letter).await
    }

    /// Stops taking letters, lets the ones in hand finish (up to the drain timeout), commits,
    /// and tells the bus the instance left.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(consumer) = self.consumer.take() {
            consumer.join().await;
        }
        let _ = (&mut self.heartbeat).await;
        let leaving = Registration { leaving: true, ..self.registration.clone() };
        if let Err(e) = register(&self.producer, &leaving, Duration::from_secs(5)).await {
            tracing::warn!(module = %self.name, error = %e, "could not tell the bus the instance left");
        }
        tracing::info!(module = %self.name, instance = %self.instance, "module stopped");
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Publishes a registration keyed by module and waits for Kafka's acknowledgement.
async fn register(
    producer: &FutureProducer,
    registration: &Registration,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let registration = Registration { sent_at_ms: pigeon_wire::now_ms(), ..registration.clone() };
    let letter = Letter::new(&registration.module, registry::TAG, serde_json::json!(registration))
        .with_key(registration.module.clone());
    let payload = letter.payload_bytes();
    let record = FutureRecord::to(registry::TOPIC)
        .key(&registration.module)
        .payload(&payload)
        .headers(letter.headers());
    producer.send(record, timeout).await.map(|_| ()).map_err(|(e, _)| e)
}

async fn heartbeats(
    producer: FutureProducer,
    registration: Registration,
    every: Duration,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first registration was sent by start()
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = register(&producer, &registration, timeout.min(every)).await {
            tracing::warn!(module = %registration.module, error = %e, "heartbeat not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fly::FlyLetter;

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let retry = Retry::new(6, Duration::from_millis(500));
        let delays: Vec<u128> = (1..6).map(|a| retry.delay_after(a).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000]);
        assert_eq!(Retry::new(0, Duration::ZERO).attempts, 1, "at least one try");
    }

    #[tokio::test]
    async fn bad_settings_are_refused_before_anything_starts() {
        let noop = |_: Letter, _: Context| async { Ok(()) };
        let err = Module::builder("Act Toy").brokers("x:1").start().await.unwrap_err();
        assert!(err.to_string().contains("lower-case"), "{err}");
        let err = Module::builder("act-toy").start().await.unwrap_err();
        assert!(err.to_string().contains("brokers are required"), "{err}");
        let err = Module::builder("act-toy")
            .brokers("x:1")
            .capability(Capability::new("chest.drop", noop))
            .capability(Capability::new("chest.drop", noop))
            .start()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("declared twice"), "{err}");
        let err = Module::builder("act-toy")
            .brokers("x:1")
            .capability(Capability::new("chest/drop", noop))
            .start()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("chest/drop"), "{err}");
    }

    #[test]
    fn a_flown_letter_keeps_its_fields_in_the_request() {
        let letter = Letter::build("progress.full").source("act-toy").user_id(5).key("room-1").finish();
        let request = FlyLetter::of(&letter);
        assert_eq!(request.id, Some(letter.id.to_string()));
        assert_eq!(request.key.as_deref(), Some("room-1"));
        assert_eq!(request.payload, serde_json::json!({"userId": 5}));
    }
}
