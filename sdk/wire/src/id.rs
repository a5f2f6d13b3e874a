//! Letter ids: UUIDv7, derived deterministically where the bus makes one.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// A letter id: a UUIDv7, so ids sort by creation time and never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LetterId(Uuid);

impl LetterId {
    /// A fresh id for a new letter.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id of a message that carries none, derived from where it sits in Kafka.
    ///
    /// The same message always gets the same id, so redeliveries can be deduplicated, and the
    /// id still sorts by the message's timestamp: the time bits are the message's, the random
    /// bits a hash of topic, partition and offset.
    pub fn derived(topic: &str, partition: i32, offset: i64, timestamp_ms: u64) -> Self {
        Self::derived_from(&format!("{topic}/{partition}/{offset}"), timestamp_ms)
    }

    /// The id of output `index` that pigeon version `version` makes from letter `input`: the
    /// same inputs always give the same id, so a redelivered letter's outputs can be dropped.
    pub fn derived_output(input: &str, version: i64, index: usize, timestamp_ms: u64) -> Self {
        Self::derived_from(&format!("{input}/{version}/{index}"), timestamp_ms)
    }

    /// The id letter `original` carries when replay job `job` sends it again: new, so modules
    /// that drop duplicates take it, and the same each time that job sends it.
    pub fn replayed(original: &str, job: i64, timestamp_ms: u64) -> Self {
        Self::derived_from(&format!("replay/{job}/{original}"), timestamp_ms)
    }

    /// A v7 id whose time bits are `timestamp_ms` and whose random bits hash `name`. A v7 id
    /// holds 48 bits of milliseconds: a later time (year 10889 on, which any Kafka client may
    /// stamp) is written as the latest it holds, never wrapped round to 1970.
    fn derived_from(name: &str, timestamp_ms: u64) -> Self {
        const LATEST: u64 = (1 << 48) - 1;
        let hashed = Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes());
        let mut random = [0u8; 10];
        random.copy_from_slice(&hashed.as_bytes()[6..16]);
        Self(uuid::Builder::from_unix_timestamp_millis(timestamp_ms.min(LATEST), &random).into_uuid())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for LetterId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for LetterId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}
