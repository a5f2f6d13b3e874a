//! Letters on the wire: the CloudEvents Kafka binary binding used everywhere in Pigeon.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pigeon_headers::RawHeaders;
use rdkafka::message::{Header, Message, OwnedHeaders};

pub use pigeon_wire::{header, LetterId, JSON, SPEC_VERSION};

/// Why a Kafka message could not be read as a letter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LetterError {
    /// A required `ce_*` header is absent.
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    /// A header is present but not valid for its kind.
    #[error("header {name} is invalid: {reason}")]
    InvalidHeader {
        /// The header's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The payload is not JSON.
    #[error("payload is not JSON: {0}")]
    Payload(String),
}

/// One event travelling through the bus, in owned form.
///
/// The router never builds these on its hot path (it forwards headers without parsing the
/// payload); modules, tools and tests do.
#[derive(Clone, Debug, PartialEq)]
pub struct Letter {
    /// Unique, time-ordered id (`ce_id`).
    pub id: LetterId,
    /// Producer of the letter (`ce_source`).
    pub source: String,
    /// The tag (`ce_type`).
    pub tag: String,
    /// When the event happened (`ce_time`), millisecond precision on the wire.
    pub time: SystemTime,
    /// Partition key, usually `roomId` or `anchorId`.
    pub key: Option<Vec<u8>>,
    /// The JSON payload.
    pub payload: serde_json::Value,
    /// The pigeon that carried it, if any (`ce_pigeon`).
    pub pigeon: Option<String>,
    /// Delivery attempt, 1 on first delivery (`ce_attempt`).
    pub attempt: u32,
    /// For replays, the id of the original (`ce_replayof`).
    pub replay_of: Option<String>,
    /// W3C trace context (`ce_traceparent`).
    pub traceparent: Option<String>,
}

impl Letter {
    /// A new letter with a fresh id, stamped now.
    pub fn new(source: impl Into<String>, tag: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            id: LetterId::new(),
            source: source.into(),
            tag: tag.into(),
            time: SystemTime::now(),
            key: None,
            payload,
            pigeon: None,
            attempt: 1,
            replay_of: None,
            traceparent: None,
        }
    }

    /// Sets the partition key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The binary-binding headers of this letter.
    pub fn headers(&self) -> OwnedHeaders {
        let id = self.id.to_string();
        let time = format_time(self.time);
        let attempt = self.attempt.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(10)
            .insert(h(header::SPECVERSION, SPEC_VERSION))
            .insert(h(header::ID, &id))
            .insert(h(header::SOURCE, &self.source))
            .insert(h(header::TYPE, &self.tag))
            .insert(h(header::TIME, &time))
            .insert(h(header::CONTENT_TYPE, JSON))
            .insert(h(header::ATTEMPT, &attempt));
        for (name, value) in [
            (header::PIGEON, &self.pigeon),
            (header::REPLAYOF, &self.replay_of),
            (header::TRACEPARENT, &self.traceparent),
        ] {
            if let Some(value) = value {
                headers = headers.insert(h(name, value));
            }
        }
        headers
    }

    /// The payload bytes as they go on the wire.
    pub fn payload_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.payload).expect("a JSON value always serializes")
    }

    /// Reads a letter from a Kafka message written with the binary binding.
    pub fn from_message<M>(message: &M) -> Result<Self, LetterError>
    where
        M: Message,
        M::Headers: RawHeaders,
    {
        let mut id = None;
        let mut source = None;
        let mut tag = None;
        let mut time = None;
        let mut letter = Letter::new("", "", serde_json::Value::Null);
        for header in pigeon_headers::of(message) {
            // Names that are not UTF-8 are none of the letter's.
            let (Some(name), Some(value)) = (header.name_str(), header.value) else { continue };
            let text = || {
                std::str::from_utf8(value).map_err(|_| LetterError::InvalidHeader {
                    name: static_name(name),
                    reason: "not UTF-8".into(),
                })
            };
            match name {
                header::ID => id = Some(text()?),
                header::SOURCE => source = Some(text()?),
                header::TYPE => tag = Some(text()?),
                header::TIME => time = Some(text()?),
                header::PIGEON => letter.pigeon = Some(text()?.to_owned()),
                header::REPLAYOF => letter.replay_of = Some(text()?.to_owned()),
                header::TRACEPARENT => letter.traceparent = Some(text()?.to_owned()),
                header::ATTEMPT => {
                    letter.attempt = text()?.parse().map_err(|_| LetterError::InvalidHeader {
                        name: header::ATTEMPT,
                        reason: "not a positive integer".into(),
                    })?
                }
                _ => {}
            }
        }
        let id = id.ok_or(LetterError::MissingHeader(header::ID))?;
        letter.id = id.parse().map_err(|e: uuid::Error| LetterError::InvalidHeader {
            name: header::ID,
            reason: e.to_string(),
        })?;
        letter.source = source.ok_or(LetterError::MissingHeader(header::SOURCE))?.to_owned();
        letter.tag = tag.ok_or(LetterError::MissingHeader(header::TYPE))?.to_owned();
        if let Some(time) = time {
            letter.time = parse_time(time).ok_or_else(|| LetterError::InvalidHeader {
                name: header::TIME,
                reason: format!("{time:?} is not an RFC 3339 time"),
            })?;
        }
        letter.key = message.key().map(<[u8]>::to_vec);
        letter.payload = match message.payload() {
            None => serde_json::Value::Null,
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| LetterError::Payload(e.to_string()))?,
        };
        Ok(letter)
    }
}

fn h<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header { key, value: Some(value) }
}

fn static_name(key: &str) -> &'static str {
    match key {
        header::ID => header::ID,
        header::SOURCE => header::SOURCE,
        header::TYPE => header::TYPE,
        header::TIME => header::TIME,
        header::PIGEON => header::PIGEON,
        header::REPLAYOF => header::REPLAYOF,
        header::TRACEPARENT => header::TRACEPARENT,
        _ => header::ATTEMPT,
    }
}

/// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z.
const LATEST_MS: u64 = 253_402_300_799_999;

/// Formats a time as `ce_time` does: RFC 3339, UTC, milliseconds. RFC 3339 writes the years 0
/// to 9999 only, and `ce_time` starts at the Unix epoch: a time outside is written as the
/// nearest it can be (any Kafka client may set a timestamp of year 300,000 or before 1970).
pub fn format_time(time: SystemTime) -> String {
    let ms = time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format_ms(ms)
}

/// Formats Kafka's millisecond timestamp as `ce_time` does, clamped as [`format_time`] says.
pub fn format_time_ms(ms: i64) -> String {
    format_ms(u64::try_from(ms).unwrap_or(0))
}

/// Kafka's millisecond timestamp clamped as `ce_time` writes it: from the Unix epoch to the
/// last millisecond of year 9999 (where archives file a letter, so a search can reach it).
pub fn clamp_time_ms(ms: i64) -> i64 {
    ms.clamp(0, LATEST_MS as i64)
}

fn format_ms(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.min(LATEST_MS));
    // In range, humantime's Display cannot fail.
    let mut text = String::with_capacity(24);
    let _ = write!(text, "{}", humantime::format_rfc3339_millis(time));
    text
}

/// Parses an RFC 3339 `ce_time`.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::OwnedMessage;
    use rdkafka::Timestamp;

    fn message(headers: OwnedHeaders, key: Option<&[u8]>, payload: &[u8]) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.to_vec()),
            key.map(<[u8]>::to_vec),
            "live.gift".into(),
            Timestamp::CreateTime(1_700_000_000_000),
            0,
            7,
            Some(headers),
        )
    }

    #[test]
    fn a_letter_survives_the_wire() {
        let mut letter = Letter::new(
            "act-toy",
            "chest.drop",
            serde_json::json!({"userId": 42, "roomId": "r-1", "amount": 9.5}),
        )
        .with_key("r-1");
        letter.pigeon = Some("gift-to-chest".into());
        letter.attempt = 3;
        letter.replay_of = Some(LetterId::new().to_string());
        letter.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let wire = message(letter.headers(), letter.key.as_deref(), &letter.payload_bytes());

        let back = Letter::from_message(&wire).expect("decodes");
        // The wire keeps milliseconds; everything else is exact.
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms(back.time), ms(letter.time));
        assert_eq!(Letter { time: letter.time, ..back }, letter);
    }

    #[test]
    fn headers_follow_the_binary_binding() {
        let letter = Letter::new("act-toy", "chest.drop", serde_json::json!({}));
        let headers = letter.headers();
        let get = |name: &str| pigeon_headers::text(&headers, name).map(str::to_owned);
        assert_eq!(get("ce_specversion").as_deref(), Some("1.0"));
        assert_eq!(get("ce_type").as_deref(), Some("chest.drop"));
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(get("ce_id"), Some(letter.id.to_string()));
        assert!(parse_time(&get("ce_time").unwrap()).is_some());
    }

    #[test]
    fn a_header_name_that_is_not_utf8_is_not_the_letters_and_does_not_stop_the_read() {
        let letter = Letter::new("act-toy", "chest.drop", serde_json::json!({"n": 1}));
        let headers = pigeon_headers::add(letter.headers(), b"ce_\xff", Some(b"\xfe"));
        let back = Letter::from_message(&message(headers, None, &letter.payload_bytes())).expect("a letter");
        assert_eq!((back.id, back.tag.as_str()), (letter.id, "chest.drop"));
    }

    #[test]
    fn any_kafka_timestamp_formats_as_a_time_without_panicking() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time_ms(-1), "1970-01-01T00:00:00.000Z", "before the epoch: the epoch");
        assert_eq!(format_time_ms(i64::MIN), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        // Year 10000 and later: the last time RFC 3339 can write (humantime refuses them, and
        // `to_string` panicked on its refusal).
        assert_eq!(format_time_ms(253_402_300_800_000), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(clamp_time_ms(i64::MAX), 253_402_300_799_999);
        assert_eq!(clamp_time_ms(i64::MIN), 0);
        assert_eq!(clamp_time_ms(1_700_000_000_000), 1_700_000_000_000);
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(format_time(far), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn missing_and_malformed_headers_are_explained() {
        let no_type = OwnedHeaders::new()
            .insert(h(header::ID, &LetterId::new().to_string()))
            .insert(h(header::SOURCE, "x"));
        let err = Letter::from_message(&message(no_type, None, b"{}")).unwrap_err();
        assert_eq!(err, LetterError::MissingHeader("ce_type"));

        let bad_id = OwnedHeaders::new()
            .insert(h(header::ID, "not-a-uuid"))
            .insert(h(header::SOURCE, "x"))
            .insert(h(header::TYPE, "t"));
        let err = Letter::from_message(&message(bad_id, None, b"{}")).unwrap_err();
        assert!(matches!(err, LetterError::InvalidHeader { name: "ce_id", .. }), "{err}");

        let ok_headers = Letter::new("x", "t", serde_json::json!(1)).headers();
        let err = Letter::from_message(&message(ok_headers, None, b"not json")).unwrap_err();
        assert!(matches!(err, LetterError::Payload(_)), "{err}");
    }

    #[test]
    fn fresh_ids_are_unique_and_time_ordered() {
        let ids: Vec<LetterId> = (0..10_000).map(|_| LetterId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "ids collide");
        // Generated in sequence, so already in order.
        assert_eq!(sorted, ids);
    }

    #[test]
    fn derived_ids_are_stable_and_sort_by_message_time() {
        let a = LetterId::derived("live.gift", 3, 1000, 1_700_000_000_000);
        assert_eq!(a, LetterId::derived("live.gift", 3, 1000, 1_700_000_000_000));
        assert_ne!(a, LetterId::derived("live.gift", 3, 1001, 1_700_000_000_000));
        assert_ne!(a, LetterId::derived("live.gift", 4, 1000, 1_700_000_000_000));
        assert_ne!(a, LetterId::derived("live.view", 3, 1000, 1_700_000_000_000));
        let later = LetterId::derived("live.gift", 0, 0, 1_700_000_000_001);
        assert!(later > a, "a later message sorts after an earlier one");
        assert_eq!(a.as_uuid().get_version_num(), 7);
        let out = LetterId::derived_output(&a.to_string(), 3, 0, 1_700_000_000_000);
        assert_eq!(out, LetterId::derived_output(&a.to_string(), 3, 0, 1_700_000_000_000));
        assert_ne!(out, LetterId::derived_output(&a.to_string(), 3, 1, 1_700_000_000_000));
        assert_ne!(out, LetterId::derived_output(&a.to_string(), 4, 0, 1_700_000_000_000));
        // A time past what a v7 id holds (year 10889 on) sorts last, never wrapped to 1970.
        let far = LetterId::derived("live.gift", 3, 1000, u64::MAX);
        assert!(far > later, "{far}");
        assert_eq!(far, LetterId::derived("live.gift", 3, 1000, 1 << 48));
    }
}
