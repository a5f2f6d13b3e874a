//! Reading a source message as a letter without copying it: its tag and id.
//!
//! Letters written with the SDK carry both in headers, so the payload is never touched. Source
//! topics of other systems may keep the tag in another header or in a JSON field; only then is
//! the payload parsed, and only as far as that one field.

use std::borrow::Cow;
use std::fmt;

use pigeon_headers::{RawHeader, RawHeaders};
use rdkafka::message::Message;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use smallvec::SmallVec;

use crate::route::{Source, TagSource};

/// What the router needs to know of a source message.
#[derive(Debug, PartialEq, Eq)]
pub struct Meta<'a> {
    /// The tag, if the message has one.
    pub tag: Option<Cow<'a, str>>,
    /// The letter id header, if present.
    pub id: Option<&'a str>,
}

/// A message's headers, read out of librdkafka once. The router looks at a letter's headers
/// several times (its tag and id, then again for every output it makes). Names are bytes, as
/// on the wire: a name that is not UTF-8 is kept and copied as it is (rdkafka's own reader
/// panics on one). Up to 16 are kept without allocating (an SDK letter has 7 to 10).
#[derive(Debug, Default)]
pub struct LetterHeaders<'a> {
    list: SmallVec<[RawHeader<'a>; 16]>,
}

impl<'a> LetterHeaders<'a> {
    /// The headers of `message`, in its order.
    pub fn of<M>(message: &'a M) -> Self
    where
        M: Message,
        M::Headers: RawHeaders,
    {
        Self { list: pigeon_headers::of(message).collect() }
    }

    /// Headers not in a message (yet): an output's, a stored letter's.
    pub fn of_headers<H: RawHeaders>(headers: &'a H) -> Self {
        Self { list: headers.raw().collect() }
    }

    /// Every header, name and value, in the message's order.
    pub fn iter(&self) -> impl Iterator<Item = RawHeader<'a>> + '_ {
        self.list.iter().copied()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The first header called `name` as text, if there is one and it is UTF-8.
    pub fn text(&self, name: &str) -> Option<&'a str> {
        self.list.iter().find(|h| h.is(name))?.text()
    }
}

/// Reads tag and id from `message` and its `headers` as the source's configuration says. An
/// error means the message cannot be routed and is dead-lettered with that reason.
pub fn read<'a, M: Message>(
    message: &'a M,
    headers: &LetterHeaders<'a>,
    source: &Source,
) -> Result<Meta<'a>, String> {
    let mut tag = None;
    let mut id = None;
    let tag_header = match &source.tag {
        TagSource::Header(name) => Some(name.as_str()),
        TagSource::Field(_) => None,
    };
    // The first of each counts, as everywhere a header is read ([`LetterHeaders::text`]).
    for header in headers.iter() {
        let is_tag = tag.is_none() && tag_header.is_some_and(|name| header.is(name));
        let is_id = id.is_none() && header.is(&source.id_header);
        if !(is_tag || is_id) {
            continue;
        }
        let Some(value) = header.value else { continue };
        let text =
            std::str::from_utf8(value).map_err(|_| format!("header {} is not UTF-8", header.name_lossy()))?;
        if is_tag {
            tag = Some(Cow::Borrowed(text));
        }
        if is_id {
            id = Some(text);
        }
    }
    if let TagSource::Field(field) = &source.tag {
        let payload = message.payload().unwrap_or_default();
        let mut de = serde_json::Deserializer::from_slice(payload);
        tag = FieldSeed { field }
            .deserialize(&mut de)
            .map_err(|e| format!("payload is not a JSON object: {e}"))?
            .map(Cow::Owned);
    }
    Ok(Meta { tag, id })
}

/// Finds one top-level field of a JSON object, skipping everything else unparsed.
struct FieldSeed<'f> {
    field: &'f str,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Option<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if found.is_none() && key == self.field {
                found = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    other => {
                        return Err(de::Error::custom(format!(
                            "field {:?} holds {other}, not a tag",
                            self.field
                        )))
                    }
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
    use rdkafka::Timestamp;

    fn message(headers: &[(&str, &[u8])], payload: &[u8]) -> OwnedMessage {
        let mut hs = OwnedHeaders::new();
        for (key, value) in headers {
            hs = hs.insert(Header { key, value: Some(*value) });
        }
        OwnedMessage::new(Some(payload.to_vec()), None, "t".into(), Timestamp::NotAvailable, 0, 0, Some(hs))
    }

    fn read_of<'a>(message: &'a OwnedMessage, source: &Source) -> Result<Meta<'a>, String> {
        read(message, &LetterHeaders::of(message), source)
    }

    #[test]
    fn headers_read_once_keep_their_order_and_give_the_first_of_a_name_as_text() {
        let m = message(&[("a", b"1"), ("b", b"\xff"), ("a", b"2")], b"{}");
        let headers = LetterHeaders::of(&m);
        let names: Vec<&[u8]> = headers.iter().map(|h| h.name).collect();
        assert_eq!(names, [b"a", b"b", b"a"]);
        assert_eq!(headers.text("a"), Some("1"));
        assert_eq!(headers.text("b"), None, "not UTF-8");
        assert_eq!(headers.text("c"), None);
        let none = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        assert!(LetterHeaders::of(&none).is_empty());
        // More than are kept without allocating.
        let names: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
        let many: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), n.as_bytes())).collect();
        let m = message(&many, b"{}");
        let headers = LetterHeaders::of(&m);
        assert_eq!(headers.len(), 20);
        assert_eq!(headers.text("h19"), Some("h19"));
    }

    #[test]
    fn a_header_name_that_is_not_utf8_is_kept_and_the_letter_still_reads() {
        let headers = pigeon_headers::add(OwnedHeaders::new(), b"x-\xff\xfe", Some(b"v"));
        let headers = headers
            .insert(Header { key: "ce_type", value: Some("gift.sent") })
            .insert(Header { key: "ce_id", value: Some("id-1") });
        let m = OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        );
        let read = LetterHeaders::of(&m);
        assert_eq!(read.len(), 3);
        assert_eq!(read.iter().next().map(|h| h.name), Some(&b"x-\xff\xfe"[..]));
        let meta = read_of(&m, &header_source("ce_type")).unwrap();
        assert_eq!(meta, Meta { tag: Some(Cow::Borrowed("gift.sent")), id: Some("id-1") });
    }

    fn header_source(tag: &str) -> Source {
        Source { tag: TagSource::Header(tag.into()), id_header: "ce_id".into() }
    }

    fn field_source(field: &str) -> Source {
        Source { tag: TagSource::Field(field.into()), id_header: "msg_id".into() }
    }

    #[test]
    fn cloudevents_headers_give_tag_and_id_without_the_payload() {
        let m = message(&[("ce_type", b"gift.sent"), ("ce_id", b"abc"), ("x-other", b"\xff")], b"not json");
        let meta = read_of(&m, &header_source("ce_type")).unwrap();
        assert_eq!(meta, Meta { tag: Some(Cow::Borrowed("gift.sent")), id: Some("abc") });
    }

    #[test]
    fn of_duplicated_headers_the_first_gives_tag_and_id_as_everywhere() {
        let m = message(
            &[("ce_type", b"gift.sent"), ("ce_id", b"first"), ("ce_type", b"\xff"), ("ce_id", b"second")],
            b"",
        );
        let meta = read_of(&m, &header_source("ce_type")).unwrap();
        assert_eq!(meta, Meta { tag: Some(Cow::Borrowed("gift.sent")), id: Some("first") });
        assert_eq!(LetterHeaders::of(&m).text("ce_id"), meta.id);
    }

    #[test]
    fn a_message_without_headers_has_no_tag_and_no_id() {
        let m =
            OwnedMessage::new(Some(b"{}".to_vec()), None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        assert_eq!(read_of(&m, &header_source("ce_type")).unwrap(), Meta { tag: None, id: None });
    }

    #[test]
    fn a_configured_header_holds_the_tag() {
        let m = message(&[("event", b"follow.new"), ("ce_type", b"ignored")], b"");
        assert_eq!(read_of(&m, &header_source("event")).unwrap().tag.as_deref(), Some("follow.new"));
    }

    #[test]
    fn a_json_field_holds_the_tag() {
        let m = message(&[("msg_id", b"m-1")], br#"{"a":{"type":"nested"},"type":"gift.sent","z":[1,2]}"#);
        let meta = read_of(&m, &field_source("type")).unwrap();
        assert_eq!(meta.tag.as_deref(), Some("gift.sent"));
        assert_eq!(meta.id, Some("m-1"));
        let numeric = message(&[], br#"{"type": 42}"#);
        assert_eq!(read_of(&numeric, &field_source("type")).unwrap().tag.as_deref(), Some("42"));
        let missing = message(&[], br#"{"kind": "x"}"#);
        assert_eq!(read_of(&missing, &field_source("type")).unwrap().tag, None);
    }

    #[test]
    fn unreadable_messages_are_explained() {
        let not_json = message(&[], b"\x00\x01binary");
        assert!(read_of(&not_json, &field_source("type")).unwrap_err().contains("not a JSON object"));
        let array = message(&[], b"[1,2]");
        assert!(read_of(&array, &field_source("type")).unwrap_err().contains("not a JSON object"));
        let object_tag = message(&[], br#"{"type": {"x": 1}}"#);
        assert!(read_of(&object_tag, &field_source("type")).unwrap_err().contains("not a tag"));
        let bad_header = message(&[("ce_type", b"\xff\xfe")], b"");
        assert!(read_of(&bad_header, &header_source("ce_type")).unwrap_err().contains("not UTF-8"));
    }
}
