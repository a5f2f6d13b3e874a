//! A letter's JSON as a script's values and back, keeping every number JSON holds exactly.
//!
//! Rhai's integers are `i64`. Its own conversion gives a script an integer past `i64::MAX` as
//! a float, so a payload carrying `18106511857580896776` came back from a script that only
//! passed it on as `1.8106511857580896e19`. Here such an integer (up to `u64::MAX`) becomes a
//! `u64` value: a script passes it on unchanged, compares it and does arithmetic with other
//! `u64`s (Rhai's standard packages carry those), and it is written back as the same integer.

use std::fmt;

use rhai::{Array, Dynamic, Map};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// The script's value of a letter's payload. serde_json's reader bounds nesting (128 levels).
pub(super) fn read(payload: &[u8]) -> Result<Dynamic, serde_json::Error> {
    serde_json::from_slice::<Value>(payload).map(|v| v.0)
}

/// A script's value written as JSON: as Rhai writes it, but a `u64` as the integer it is.
pub(super) struct Exact<'a>(pub &'a Dynamic);

impl Serialize for Exact<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let value = self.0;
        if let Ok(array) = value.as_array_ref() {
            let mut seq = serializer.serialize_seq(Some(array.len()))?;
            for item in array.iter() {
                seq.serialize_element(&Exact(item))?;
            }
            return seq.end();
        }
        if let Ok(map) = value.as_map_ref() {
            let mut out = serializer.serialize_map(Some(map.len()))?;
            for (key, item) in map.iter() {
                out.serialize_entry(key.as_str(), &Exact(item))?;
            }
            return out.end();
        }
        if let Some(n) = value.read_lock::<u64>() {
            return serializer.serialize_u64(*n);
        }
        value.serialize(serializer)
    }
}

struct Value(Dynamic);

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor).map(Value)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Dynamic;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Dynamic, E> {
        Ok(Dynamic::from_bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dynamic, E> {
        Ok(i64::try_from(v).map_or_else(|_| Dynamic::from(v), Dynamic::from_int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dynamic, E> {
        Ok(Dynamic::from(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Dynamic, E> {
        Ok(Dynamic::from(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::UNIT)
    }

    fn visit_none<E: de::Error>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::UNIT)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Dynamic, D::Error> {
        Value::deserialize(deserializer).map(|v| v.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dynamic, A::Error> {
        let mut array = Array::new();
        while let Some(Value(item)) = seq.next_element()? {
            array.push(item);
        }
        Ok(Dynamic::from_array(array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Dynamic, A::Error> {
        let mut map = Map::new();
        // A key given twice keeps its last value, as serde_json's own reading does.
        while let Some((key, Value(item))) = access.next_entry::<String, Value>()? {
            map.insert(key.into(), item);
        }
        Ok(Dynamic::from_map(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(json: &str) -> String {
        let value = read(json.as_bytes()).expect("JSON");
        serde_json::to_string(&Exact(&value)).expect("written")
    }

    #[test]
    fn every_number_json_holds_comes_back_as_it_was() {
        for json in [
            r#"{"a":18106511857580896776}"#,
            r#"{"a":18446744073709551615}"#,
            r#"{"a":9223372036854775807,"b":9223372036854775808}"#,
            r#"{"a":-9223372036854775808}"#,
            r#"{"a":[1,2.5,-0.0,1e300,5.5e24]}"#,
            r#"{"a":{"b":[true,false,null,"x"]}}"#,
        ] {
            let written: serde_json::Value = serde_json::from_str(&round_trip(json)).unwrap();
            let given: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(written, given, "{json}");
        }
    }

    #[test]
    fn an_integer_past_i64_is_a_u64_to_the_script() {
        let value = read(br#"{"a":18106511857580896776,"b":7}"#).expect("JSON");
        let map = value.as_map_ref().expect("a map");
        assert_eq!(map["a"].type_name(), "u64");
        assert_eq!(map["b"].as_int(), Ok(7));
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value() {
        assert_eq!(round_trip(r#"{"a":1,"a":2}"#), r#"{"a":2}"#);
    }
}
