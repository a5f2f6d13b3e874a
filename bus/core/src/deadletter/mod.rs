//! Dead letters: letters that could not be delivered, kept so that nothing is ever lost.
//!
//! The records and their vocabulary: what failed, in what status, what an operator selects, and
//! what each attempt reported. The bus's writer (`pigeon_bus::deadletter`) stores them.

pub mod schedule;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What went wrong; decides whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Kafka refused or timed out the output after the client's own retries.
    Produce,
    /// The source message cannot be read as a letter (no tag, not JSON where JSON is needed).
    Malformed,
    /// The pigeon's script failed on the letter (or its circuit breaker is open).
    Script,
    /// A module's handler failed on the letter (reported on `pigeon.failed`).
    Handler,
    /// The letter does not fit the dictionary: a field of the wrong type, or one a destination
    /// requires is missing (a pigeon in `enforce` mode).
    Dictionary,
    /// Handling the letter hit a bug in the bus (a panic, caught): parked with the panic's
    /// message, so the letter waits for a fixed bus instead of stopping this one.
    Internal,
}

impl ErrorKind {
    /// Whether a later attempt may succeed; the others are parked for an operator at once.
    pub fn retriable(self) -> bool {
        matches!(self, ErrorKind::Produce | ErrorKind::Handler)
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Produce => "produce",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Script => "script",
            ErrorKind::Handler => "handler",
            ErrorKind::Dictionary => "dictionary",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "produce" => Ok(ErrorKind::Produce),
            "malformed" => Ok(ErrorKind::Malformed),
            "script" => Ok(ErrorKind::Script),
            "handler" => Ok(ErrorKind::Handler),
            "dictionary" => Ok(ErrorKind::Dictionary),
            "internal" => Ok(ErrorKind::Internal),
            other => Err(format!("unknown error kind {other:?}")),
        }
    }
}

/// Where a dead letter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for its next attempt.
    Pending,
    /// Claimed by a retrier, which is delivering it now.
    Retrying,
    /// Delivered by a retry; kept for the record.
    Delivered,
    /// Waiting for an operator: retries used up, or retrying cannot help.
    Parked,
    /// Dropped by an operator; kept for the record.
    Discarded,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] =
        [Status::Pending, Status::Retrying, Status::Delivered, Status::Parked, Status::Discarded];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Retrying => "retrying",
            Status::Delivered => "delivered",
            Status::Parked => "parked",
            Status::Discarded => "discarded",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| {
            format!("unknown dead-letter status {s:?} (pending, retrying, delivered, parked or discarded)")
        })
    }
}

/// One Kafka header, kept losslessly: text when it is UTF-8, bytes otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHeader {
    /// Header name (with U+FFFD for bytes that are not UTF-8; `name_bytes` then keeps them).
    pub name: String,
    /// The name's bytes, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_bytes: Option<Vec<u8>>,
    /// The value, when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The value, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Vec<u8>>,
}

impl StoredHeader {
    /// Keeps a header value whatever its bytes.
    pub fn new(name: &str, value: Option<&[u8]>) -> Self {
        let (text, bytes) = match value.map(std::str::from_utf8) {
            None => (None, None),
            Some(Ok(text)) => (Some(text.to_owned()), None),
            Some(Err(_)) => (None, value.map(<[u8]>::to_vec)),
        };
        Self { name: name.to_owned(), name_bytes: None, text, bytes }
    }

    /// The name's bytes as they came.
    pub fn name_bytes(&self) -> &[u8] {
        self.name_bytes.as_deref().unwrap_or(self.name.as_bytes())
    }

    /// The value's bytes.
    pub fn value(&self) -> Option<&[u8]> {
        self.text.as_deref().map(str::as_bytes).or(self.bytes.as_deref())
    }
}

/// A failed delivery, about to be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDeadLetter {
    /// The letter's id.
    pub letter_id: String,
    /// The pigeon that carried it, when one matched.
    pub pigeon_id: Option<String>,
    /// That pigeon's version.
    pub pigeon_version: Option<i64>,
    /// Where the letter came from.
    pub source_topic: String,
    /// Source partition.
    pub source_partition: i32,
    /// Source offset.
    pub source_offset: i64,
    /// Destination topic, when the failure is about one destination.
    pub dest_topic: Option<String>,
    /// Destination tag.
    pub dest_tag: Option<String>,
    /// Kafka key.
    pub key: Option<Vec<u8>>,
    /// Headers as they were (or would have been) sent.
    pub headers: Vec<StoredHeader>,
    /// Payload bytes, untouched.
    pub payload: Option<Vec<u8>>,
    /// What went wrong.
    pub error_kind: ErrorKind,
    /// Details.
    pub error_message: String,
    /// When the first retry is due after the failed delivery, for a retriable error; `None`
    /// parks the letter at once.
    pub first_retry: Option<Duration>,
}

impl NewDeadLetter {
    /// A header's value, when it is text.
    pub fn header_text(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name == name).and_then(|h| h.text.as_deref())
    }

    /// About how many bytes the stored row takes.
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len)
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|h| h.name_bytes().len() + h.value().map_or(0, <[u8]>::len))
                .sum::<usize>()
            + self.error_message.len()
            + 512
    }

    /// The status a fresh dead letter starts in.
    pub fn initial_status(&self) -> Status {
        if self.error_kind.retriable() && self.first_retry.is_some() {
            Status::Pending
        } else {
            Status::Parked
        }
    }
}

/// A stored dead letter.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Store id.
    pub id: i64,
    /// The letter as it failed.
    pub letter: NewDeadLetter,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// Where it stands.
    pub status: Status,
    /// When the retry sweep takes it next (unix ms), if pending.
    pub next_attempt_at: Option<i64>,
    /// When it was first stored (unix ms).
    pub created_at: i64,
    /// When it last changed (unix ms).
    pub updated_at: i64,
}

/// Filter for listing, retrying or discarding dead letters.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFilter {
    /// Only this pigeon's.
    #[serde(default, rename = "pigeon", skip_serializing_if = "Option::is_none")]
    pub pigeon_id: Option<String>,
    /// Only in this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Only of this error kind.
    #[serde(default, rename = "kind", skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// Only those stored at or after this time (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
}

/// Which dead letters an operator acts on: these ids, or every one a filter matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// These ids.
    Ids(Vec<i64>),
    /// Every dead letter the filter matches.
    Filter(DeadLetterFilter),
}

/// How one delivery attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Kafka acknowledged every output.
    Delivered,
    /// It failed; the letter waits for the next step.
    Failed,
    /// It failed and the letter is parked (schedule used up, or retrying cannot help).
    Parked,
    /// A retrier's lease ran out before it reported (it died?): another one took over, and the
    /// letter may have been sent twice.
    TakenOver,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Parked => "parked",
            Outcome::TakenOver => "taken_over",
        }
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Outcome::Delivered, Outcome::Failed, Outcome::Parked, Outcome::TakenOver]
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown attempt outcome {s:?}"))
    }
}

/// One entry of a dead letter's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    /// The attempt's number (the router's first delivery was 1).
    pub attempt: i32,
    /// When it ended (unix ms).
    pub at: i64,
    /// Who made it: a retrier instance, or the operator who acted.
    pub actor: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, or what was done.
    pub message: String,
}

/// What a retrier reports about a claimed dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// How the attempt ended.
    pub outcome: Outcome,
    /// The error, if it failed.
    pub message: String,
    /// When to try next (unix ms), for [`Outcome::Failed`].
    pub next_attempt_at: Option<i64>,
}
