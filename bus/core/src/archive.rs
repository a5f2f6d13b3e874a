//! The archive path: archive pigeons keep chosen letters whole in the store, indexed by time,
//! topic, tag, pigeon and the business keys, and replay jobs send them again.
//!
//! The types here are what the store, the API, the CLI and the bus's archiver and replay runner
//! (`pigeon_bus::archive`) share.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::deadletter::StoredHeader;

/// A business key the archive indexes: a dictionary field found in letter payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub enum KeyField {
    /// The user who acted.
    #[serde(rename = "userId")]
    UserId,
    /// The anchor of the room.
    #[serde(rename = "anchorId")]
    AnchorId,
    /// The live room.
    #[serde(rename = "roomId")]
    RoomId,
}

impl KeyField {
    /// Every indexed key.
    pub const ALL: [KeyField; 3] = [KeyField::UserId, KeyField::AnchorId, KeyField::RoomId];

    /// The dictionary name.
    pub fn name(self) -> &'static str {
        match self {
            KeyField::UserId => "userId",
            KeyField::AnchorId => "anchorId",
            KeyField::RoomId => "roomId",
        }
    }

    /// The archive column.
    pub fn column(self) -> &'static str {
        match self {
            KeyField::UserId => "user_id",
            KeyField::AnchorId => "anchor_id",
            KeyField::RoomId => "room_id",
        }
    }
}

impl FromStr for KeyField {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyField::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("{s:?} is not an indexed key (userId, anchorId or roomId)"))
    }
}

/// The longest business key value the archive indexes; a longer one is kept in the payload
/// but not indexed.
pub const MAX_KEY_LEN: usize = 128;

/// Which archived letters a search or a replay takes. Every given criterion must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveQuery {
    /// Letters from this time on (unix ms, the letter's Kafka timestamp).
    pub since: i64,
    /// Letters before this time (unix ms).
    pub until: i64,
    /// Source topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Tag, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The archive pigeon that kept the letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pigeon: Option<String>,
    /// Business keys, e.g. `{"userId": "42"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<KeyField, String>,
}

impl ArchiveQuery {
    /// Whether an archived letter is one the query selects (as the store's search would).
    pub fn matches(&self, letter: &ArchivedLetter) -> bool {
        (self.since..self.until).contains(&letter.position.time)
            && self.topic.as_ref().is_none_or(|t| *t == letter.position.topic)
            && self.tag.as_ref().is_none_or(|t| *t == letter.tag)
            && self.pigeon.as_ref().is_none_or(|p| *p == letter.pigeon_id)
            && self.keys.iter().all(|(field, value)| letter.keys.get(field) == Some(value))
    }

    /// Every problem with the query, at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.since >= self.until {
            problems.push(format!("since ({}) must be before until ({})", self.since, self.until));
        }
        if let Some(topic) = &self.topic {
            if let Err(e) = crate::route::validate_topic(topic) {
                problems.push(e);
            }
        }
        for (field, value) in &self.keys {
            if value.is_empty() || value.len() > MAX_KEY_LEN {
                problems.push(format!("{}: the value must be 1 to {MAX_KEY_LEN} characters", field.name()));
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems),
        }
    }
}

/// Reads `userId=42` into a business key and its value.
pub fn parse_key(text: &str) -> Result<(KeyField, String), String> {
    let (field, value) = text.split_once('=').ok_or_else(|| format!("key {text:?}: expected FIELD=VALUE"))?;
    Ok((field.trim().parse()?, value.trim().to_owned()))
}

/// Where a letter sits in the archive's order: its time, then where it was in Kafka. Replays
/// send in this order, so letters of one key keep theirs.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct Position {
    /// Letter time (unix ms).
    pub time: i64,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}/{}/{}", self.time, self.topic, self.partition, self.offset)
    }
}

/// A letter as the archive keeps it: whole, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedLetter {
    /// The letter id (`ce_id`, or derived from the Kafka position); stored once.
    pub letter_id: String,
    /// The archive pigeon that kept it.
    pub pigeon_id: String,
    /// Where it was read, and its time.
    pub position: Position,
    /// Its tag.
    pub tag: String,
    /// Business keys found in the payload.
    pub keys: BTreeMap<KeyField, String>,
    /// Partition key.
    pub key: Option<Vec<u8>>,
    /// Every header, as read.
    pub headers: Vec<StoredHeader>,
    /// Payload bytes, untouched.
    pub payload: Option<Vec<u8>>,
    /// When it was archived (unix ms; set by the store).
    pub archived_at: i64,
}

impl ArchivedLetter {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name == name)?.text.as_deref()
    }
}

/// What a replay does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaySpec {
    /// The letters.
    pub query: ArchiveQuery,
    /// Send every letter, as it was, to this topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_topic: Option<String>,
    /// Send every letter through the pigeons (forward and script) live now for its source topic
    /// and tag, as if it had just arrived.
    #[serde(default)]
    pub through_pigeons: bool,
    /// Letters per second at most; none: as fast as the broker takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

/// The fastest replay rate accepted, letters per second.
pub const MAX_RATE: u32 = 1_000_000;

impl ReplaySpec {
    /// Every problem with the replay, at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = self.query.validate().err().unwrap_or_default();
        match (&self.to_topic, self.through_pigeons) {
            (Some(_), true) => problems.push("set to_topic or through_pigeons, not both".into()),
            (None, false) => problems.push("set to_topic, or through_pigeons".into()),
            (Some(topic), false) => {
                if let Err(e) = crate::route::validate_destination_topic(topic) {
                    problems.push(format!("to_topic: {e}"));
                }
            }
            (None, true) => {}
        }
        if let Some(rate) = self.rate {
            if rate == 0 || rate > MAX_RATE {
                problems.push(format!("rate must be 1 to {MAX_RATE} letters per second"));
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems),
        }
    }
}

/// Where a replay job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayStatus {
    /// Waiting for a runner.
    Pending,
    /// A runner sends its letters.
    Running,
    /// Every letter was sent.
    Done,
    /// An operator cancelled it.
    Cancelled,
    /// It stopped on an error it cannot get past (the message says which).
    Failed,
}

impl ReplayStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayStatus::Pending => "pending",
            ReplayStatus::Running => "running",
            ReplayStatus::Done => "done",
            ReplayStatus::Cancelled => "cancelled",
            ReplayStatus::Failed => "failed",
        }
    }

    /// Whether the job is over.
    pub fn finished(self) -> bool {
        matches!(self, ReplayStatus::Done | ReplayStatus::Cancelled | ReplayStatus::Failed)
    }
}

impl FromStr for ReplayStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ReplayStatus::Pending,
            ReplayStatus::Running,
            ReplayStatus::Done,
            ReplayStatus::Cancelled,
            ReplayStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| format!("unknown replay status {s:?}"))
    }
}

/// A replay job as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayJob {
    /// Job id.
    pub id: i64,
    /// What it replays.
    pub spec: ReplaySpec,
    /// Where it stands.
    pub status: ReplayStatus,
    /// Letters the query matched when the job was created.
    pub total: i64,
    /// Letters sent and acknowledged by Kafka.
    pub sent: i64,
    /// Letters that may have been sent twice: in flight when a runner was interrupted.
    pub resent: i64,
    /// Letters in flight now (sent, not yet acknowledged).
    pub in_flight: i64,
    /// The last letter acknowledged; the job resumes after it.
    pub checkpoint: Option<Position>,
    /// Why it failed, or how it ended.
    pub message: Option<String>,
    /// The runner that holds it.
    pub owner: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// When (unix ms).
    pub created_at: i64,
    /// Last change (unix ms).
    pub updated_at: i64,
}
