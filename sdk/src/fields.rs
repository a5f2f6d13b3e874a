//! The dictionary's field names, and typed setters and getters for them.
//!
//! Every module agrees on these names (`userId`, not `uid`), so a letter written by one module
//! reads the same in every other. Build letters with [`Letter::build`] and the setters here;
//! read fields with the getters on [`Letter`].
//!
//! ```
//! use pigeon_sdk::Letter;
//!
//! let letter = Letter::build("gift.sent")
//!     .source("act-toy")
//!     .user_id(1001)
//!     .anchor_id(42)
//!     .room_id("room-7")
//!     .gift_count(3)
//!     .field("combo", true)
//!     .key("room-7")
//!     .finish();
//! assert_eq!(letter.user_id(), Some(1001));
//! assert_eq!(letter.room_id(), Some("room-7"));
//! assert_eq!(letter.payload["combo"], true);
//! ```

use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::letter::{Letter, LetterId};

/// Declares the dictionary: a name constant, a builder setter and a letter getter per field.
macro_rules! dictionary {
    ($( $(#[$doc:meta])* $constant:ident = $name:literal : $setter:ident / $getter:ident : $kind:tt; )*) => {
        $(
            $(#[$doc])*
            pub const $constant: &str = $name;
        )*

        /// Every dictionary field name the SDK knows.
        pub const ALL: &[&str] = &[$($name),*];

        impl LetterBuilder {
            $(
                dictionary!(@setter $(#[$doc])* $constant $setter $kind);
            )*
        }

        impl Letter {
            $(
                dictionary!(@getter $(#[$doc])* $constant $getter $kind);
            )*
        }
    };
    (@setter $(#[$doc:meta])* $constant:ident $setter:ident int) => {
        $(#[$doc])*
        pub fn $setter(self, value: i64) -> Self {
            self.field($constant, value)
        }
    };
    (@setter $(#[$doc:meta])* $constant:ident $setter:ident number) => {
        $(#[$doc])*
        pub fn $setter(self, value: f64) -> Self {
            self.field($constant, value)
        }
    };
    (@setter $(#[$doc:meta])* $constant:ident $setter:ident text) => {
        $(#[$doc])*
        pub fn $setter(self, value: impl Into<String>) -> Self {
            self.field($constant, value.into())
        }
    };
    (@getter $(#[$doc:meta])* $constant:ident $getter:ident int) => {
        $(#[$doc])*
        pub fn $getter(&self) -> Option<i64> {
            self.payload.get($constant).and_then(Value::as_i64)
        }
    };
    (@getter $(#[$doc:meta])* $constant:ident $getter:ident number) => {
        $(#[$doc])*
        pub fn $getter(&self) -> Option<f64> {
            self.payload.get($constant).and_then(Value::as_f64)
        }
    };
    (@getter $(#[$doc:meta])* $constant:ident $getter:ident text) => {
        $(#[$doc])*
        pub fn $getter(&self) -> Option<&str> {
            self.payload.get($constant).and_then(Value::as_str)
        }
    };
}

dictionary! {
    /// The user (viewer) who acted: `userId`, an integer.
    USER_ID = "userId": user_id / user_id: int;
    /// The anchor (streamer): `anchorId`, an integer.
    ANCHOR_ID = "anchorId": anchor_id / anchor_id: int;
    /// The live room: `roomId`, text.
    ROOM_ID = "roomId": room_id / room_id: text;
    /// One broadcast of a room: `liveId`, text.
    LIVE_ID = "liveId": live_id / live_id: text;
    /// The gift: `giftId`, an integer.
    GIFT_ID = "giftId": gift_id / gift_id: int;
    /// How many gifts: `giftCount`, an integer.
    GIFT_COUNT = "giftCount": gift_count / gift_count: int;
    /// A money or coin amount: `amount`, a number.
    AMOUNT = "amount": amount / amount: number;
    /// Points on a leaderboard or progress bar: `score`, an integer.
    SCORE = "score": score / score: int;
    /// The activity: `activityId`, text.
    ACTIVITY_ID = "activityId": activity_id / activity_id: text;
    /// A task of an activity: `taskId`, text.
    TASK_ID = "taskId": task_id / task_id: text;
    /// A level reached: `level`, an integer.
    LEVEL = "level": level / level: int;
    /// When the business event happened (unix ms): `timestamp`, an integer.
    TIMESTAMP = "timestamp": timestamp / timestamp: int;
}

/// Builds a [`Letter`] field by field; see the [module docs](self).
#[derive(Clone, Debug)]
#[must_use = "call finish() to get the letter"]
pub struct LetterBuilder {
    letter: Letter,
    fields: Map<String, Value>,
}

impl LetterBuilder {
    pub(crate) fn new(tag: String) -> Self {
        Self { letter: Letter::new("", tag, Value::Null), fields: Map::new() }
    }

    /// Who produced the letter (`ce_source`); [`Module::letter`](crate::Module::letter) sets
    /// the module's name.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.letter.source = source.into();
        self
    }

    /// The partition key: letters of one key keep their order (usually the room or anchor).
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.letter.key = Some(key.into());
        self
    }

    /// The event's time; now when not set.
    pub fn time(mut self, time: SystemTime) -> Self {
        self.letter.time = time;
        self
    }

    /// A chosen letter id instead of a fresh one (to make a retried fly idempotent).
    pub fn id(mut self, id: LetterId) -> Self {
        self.letter.id = id;
        self
    }

    /// Any payload field; prefer the typed setters for dictionary fields.
    pub fn field(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.fields.insert(name.into(), value.into());
        self
    }

    /// The letter.
    pub fn finish(mut self) -> Letter {
        self.letter.payload = Value::Object(self.fields);
        self.letter
    }
}

impl Letter {
    /// Starts a letter with tag `tag` whose payload is built field by field.
    pub fn build(tag: impl Into<String>) -> LetterBuilder {
        LetterBuilder::new(tag.into())
    }

    /// A payload field read as `T`: `Ok(None)` when absent, an error when of another type.
    pub fn get<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, serde_json::Error> {
        self.payload.get(name).map(|v| T::deserialize(v)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_use_dictionary_names_and_read_back() {
        let letter = Letter::build("progress.add")
            .user_id(7)
            .anchor_id(9)
            .amount(1.5)
            .activity_id("summer")
            .score(30)
            .finish();
        assert_eq!(
            letter.payload,
            serde_json::json!({"userId": 7, "anchorId": 9, "amount": 1.5, "activityId": "summer", "score": 30})
        );
        assert_eq!(letter.score(), Some(30));
        assert_eq!(letter.amount(), Some(1.5));
        assert_eq!(letter.activity_id(), Some("summer"));
        assert_eq!(letter.level(), None);
        assert_eq!(letter.get::<u32>(SCORE).unwrap(), Some(30));
        assert!(letter.get::<String>(SCORE).is_err(), "a number is not text");
        assert!(ALL.contains(&"giftCount"));
    }
}
