//! Flying letters: to a pigeon through `pigeon.ingress`, or through the bus's `POST /fly` with
//! a receipt; the [`Context`] every handler gets, and the wire types of `POST /fly`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::fields::LetterBuilder;
use crate::letter::{format_time, Letter, LetterId};
use pigeon_wire::INGRESS;

/// Why a letter did not fly.
#[derive(Debug, thiserror::Error)]
pub enum FlyError {
    /// Kafka did not acknowledge the letter.
    #[error("kafka did not take the letter: {0}")]
    Kafka(#[from] KafkaError),
    /// `fly_sync` needs the bus's address and a module token.
    #[error("fly_sync needs the bus: call .bus(url, token) on the module builder")]
    NoBus,
    /// The bus could not be reached.
    #[error("the bus could not be reached: {0}")]
    Http(#[from] reqwest::Error),
    /// The bus refused the letter.
    #[error("the bus refused the letter ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The bus's explanation.
        message: String,
    },
    /// The call was invalid before anything was sent.
    #[error("{0}")]
    Invalid(String),
}

/// What `fly_sync` reports: where the letter went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema), schema(as = ReceiptView))]
pub struct Receipt {
    /// The flown letter's id.
    pub letter_id: String,
    /// The pigeon that carried it.
    pub pigeon: String,
    /// The pigeon's version that ran.
    pub version: i64,
    /// Outputs Kafka acknowledged.
    pub delivered: Vec<Delivered>,
    /// Outputs (or the whole letter) that failed and were stored as dead letters; the bus
    /// retries them on the pigeon's schedule.
    pub dead_lettered: Vec<DeadLettered>,
}

impl Receipt {
    /// Whether every output was delivered.
    pub fn is_complete(&self) -> bool {
        self.dead_lettered.is_empty()
    }
}

/// One delivered output of a flown letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema), schema(as = DeliveredView))]
pub struct Delivered {
    /// Destination topic.
    pub topic: String,
    /// The tag it carries there.
    pub tag: String,
    /// The output letter's id.
    pub id: String,
    /// Where Kafka put it.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// One output of a flown letter that failed and is now a dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema), schema(as = DeadLetteredView))]
pub struct DeadLettered {
    /// Destination topic, when one output failed (absent when the pigeon's script failed).
    pub topic: Option<String>,
    /// What went wrong.
    pub error: String,
}

/// The body of `POST /api/v1/fly`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema), schema(as = FlyBody))]
#[serde(deny_unknown_fields)]
pub struct FlyRequest {
    /// The pigeon to fly to.
    pub pigeon: String,
    /// The letter.
    pub letter: FlyLetter,
}

/// A letter in a [`FlyRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema), schema(as = FlyLetterBody))]
#[serde(deny_unknown_fields)]
pub struct FlyLetter {
    /// Letter id (UUIDv7); the bus makes one when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Producer, usually the module.
    pub source: String,
    /// Tag.
    pub tag: String,
    /// RFC 3339 time; now when absent.
    #[serde(default)]
    pub time: Option<String>,
    /// Partition key, as text.
    #[serde(default)]
    pub key: Option<String>,
    /// The JSON payload.
    pub payload: serde_json::Value,
    /// W3C trace context.
    #[serde(default)]
    pub traceparent: Option<String>,
}

impl FlyLetter {
    /// The request form of a letter (a key that is not UTF-8 is sent lossily).
    pub fn of(letter: &Letter) -> Self {
        Self {
            id: Some(letter.id.to_string()),
            source: letter.source.clone(),
            tag: letter.tag.clone(),
            time: Some(format_time(letter.time)),
            key: letter.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: letter.payload.clone(),
            traceparent: letter.traceparent.clone(),
        }
    }
}

/// Sends letters to pigeons; shared by the [`Module`] and every handler's [`Context`].
pub(crate) struct Flyer {
    pub(crate) module: String,
    pub(crate) producer: FutureProducer,
    pub(crate) timeout: Duration,
    pub(crate) bus: Option<Bus>,
}

pub(crate) struct Bus {
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) token: String,
}

impl Flyer {
    async fn fly(&self, pigeon: &str, mut letter: Letter) -> Result<LetterId, FlyError> {
        self.prepare(pigeon, &mut letter)?;
        let span = crate::trace::fly_span(pigeon, &mut letter);
        self.send(letter).instrument(span).await
    }

    async fn send(&self, letter: Letter) -> Result<LetterId, FlyError> {
        let payload = letter.payload_bytes();
        let mut record = FutureRecord::to(INGRESS).payload(&payload).headers(letter.headers());
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        self.producer.send(record, self.timeout).await.map_err(|(e, _)| FlyError::Kafka(e))?;
        Ok(letter.id)
    }

    async fn fly_sync(&self, pigeon: &str, mut letter: Letter) -> Result<Receipt, FlyError> {
        let bus = self.bus.as_ref().ok_or(FlyError::NoBus)?;
        self.prepare(pigeon, &mut letter)?;
        let span = crate::trace::fly_span(pigeon, &mut letter);
        self.send_sync(bus, pigeon, letter).instrument(span).await
    }

    async fn send_sync(&self, bus: &Bus, pigeon: &str, letter: Letter) -> Result<Receipt, FlyError> {
        let body = FlyRequest { pigeon: pigeon.to_owned(), letter: FlyLetter::of(&letter) };
        let response = bus
            .http
            .post(format!("{}/api/v1/fly", bus.url.trim_end_matches('/')))
            .bearer_auth(&bus.token)
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or(text);
        Err(FlyError::Refused { status: status.as_u16(), message })
    }

    fn prepare(&self, pigeon: &str, letter: &mut Letter) -> Result<(), FlyError> {
        if pigeon.is_empty() {
            return Err(FlyError::Invalid("name the pigeon to fly to".into()));
        }
        if letter.tag.is_empty() {
            return Err(FlyError::Invalid("the letter has no tag".into()));
        }
        if letter.source.is_empty() {
            letter.source = self.module.clone();
        }
        letter.pigeon = Some(pigeon.to_owned());
        Ok(())
    }
}

/// What a handler can use besides its letter: fly letters on, as the module.
#[derive(Clone)]
pub struct Context {
    pub(crate) flyer: Arc<Flyer>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("module", &self.flyer.module).finish()
    }
}

impl Context {
    /// The module's name.
    pub fn module(&self) -> &str {
        &self.flyer.module
    }

    /// Starts a letter whose source is this module.
    pub fn letter(&self, tag: impl Into<String>) -> LetterBuilder {
        Letter::build(tag).source(self.flyer.module.clone())
    }

    /// Flies a letter to a pigeon through `pigeon.ingress`; returns once Kafka has it. The
    /// router then delivers it to the pigeon's destinations (or stores a dead letter).
    pub async fn fly(&self, pigeon: &str, letter: Letter) -> Result<LetterId, FlyError> {
        self.flyer.fly(pigeon, letter).await
    }

    /// Flies a letter through the bus's API and waits until every destination acknowledged
    /// it (or it was dead-lettered); the receipt says which.
    pub async fn fly_sync(&self, pigeon: &str, letter: Letter) -> Result<Receipt, FlyError> {
        self.flyer.fly_sync(pigeon, letter).await
    }
}
