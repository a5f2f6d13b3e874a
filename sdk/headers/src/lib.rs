//! Kafka message headers as bytes, names included.
//!
//! A header's name is bytes on the wire: any client may write one that is not UTF-8. rdkafka's
//! `Headers::get` and `try_get` unwrap the name's `to_str()`, so one such message panics whoever
//! reads its headers, and a consumer that dies before committing reads it again after every
//! restart. Everything in Pigeon that reads or copies headers of a message it did not write goes
//! through [`RawHeaders`] instead, and copies names untouched with [`add`]. It also reads a
//! delivered message's produce latency ([`produce_latency`]), which rdkafka does not expose.
//!
//! This is the only crate of the workspace allowed `unsafe`, in the few calls into librdkafka
//! below.

use std::borrow::Cow;
use std::ffi::{c_void, CStr};
use std::fmt;
use std::ptr;

use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, Message, OwnedHeaders};

/// One header: its name and value as they came, borrowed from the headers that hold them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawHeader<'a> {
    /// The name's bytes (up to the first NUL, as librdkafka keeps names).
    pub name: &'a [u8],
    /// The value, or `None` for a null value.
    pub value: Option<&'a [u8]>,
}

impl<'a> RawHeader<'a> {
    /// The name, when it is UTF-8.
    pub fn name_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.name).ok()
    }

    /// The name as text, with U+FFFD for bytes that are not UTF-8: for a record or a log line.
    pub fn name_lossy(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.name)
    }

    /// Whether the header is called `name`.
    pub fn is(&self, name: &str) -> bool {
        self.name == name.as_bytes()
    }

    /// The value, when there is one and it is UTF-8.
    pub fn text(&self) -> Option<&'a str> {
        self.value.and_then(|v| std::str::from_utf8(v).ok())
    }
}

impl fmt::Debug for RawHeader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawHeader")
            .field("name", &self.name_lossy())
            .field("value", &self.value.map(String::from_utf8_lossy))
            .finish()
    }
}

/// Headers that can be read as [`RawHeader`]s: a consumed message's and owned ones.
pub trait RawHeaders {
    /// Every header in order.
    fn raw(&self) -> Iter<'_>;
}

impl RawHeaders for BorrowedHeaders {
    fn raw(&self) -> Iter<'_> {
        // A `&BorrowedHeaders` is librdkafka's `rd_kafka_headers_t` pointer, cast (rdkafka's
        // own `BorrowedHeaders::from_native_ptr` and `OwnedHeaders::as_borrowed` make it so).
        let native = ptr::from_ref(self).cast::<rd::rd_kafka_headers_t>();
        // SAFETY: `native` points to the headers `self` borrows, alive for `'_`.
        let count = unsafe { rd::rd_kafka_header_cnt(native) };
        Iter { native, next: 0, count, _headers: std::marker::PhantomData }
    }
}

impl RawHeaders for OwnedHeaders {
    fn raw(&self) -> Iter<'_> {
        self.as_borrowed().raw()
    }
}

/// The headers of `message` (none when it has none).
pub fn of<M>(message: &M) -> Iter<'_>
where
    M: Message,
    M::Headers: RawHeaders,
{
    message.headers().map_or_else(Iter::empty, RawHeaders::raw)
}

/// The value of the first header called `name`, when it is UTF-8.
pub fn text<'a, H: RawHeaders + ?Sized>(headers: &'a H, name: &str) -> Option<&'a str> {
    headers.raw().find(|h| h.is(name)).and_then(|h| h.text())
}

/// Iterates over headers in their order.
pub struct Iter<'a> {
    native: *const rd::rd_kafka_headers_t,
    next: usize,
    count: usize,
    _headers: std::marker::PhantomData<&'a BorrowedHeaders>,
}

impl Iter<'_> {
    fn empty() -> Self {
        Iter { native: ptr::null(), next: 0, count: 0, _headers: std::marker::PhantomData }
    }
}

impl fmt::Debug for Iter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").field("next", &self.next).field("count", &self.count).finish()
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = RawHeader<'a>;

    fn next(&mut self) -> Option<RawHeader<'a>> {
        while self.next < self.count {
            let idx = self.next;
            self.next += 1;
            let mut name: *const std::ffi::c_char = ptr::null();
            let mut value: *const c_void = ptr::null();
            let mut size = 0usize;
            // SAFETY: `native` is live for `'a` and not null while `count > 0`; the out
            // pointers are valid locals.
            let err =
                unsafe { rd::rd_kafka_header_get_all(self.native, idx, &mut name, &mut value, &mut size) };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                continue;
            }
            // SAFETY: librdkafka keeps each name NUL-terminated, owned by the headers (`'a`).
            let name = unsafe { CStr::from_ptr(name) }.to_bytes();
            let value = (!value.is_null()).then(|| {
                // SAFETY: `value` points to `size` bytes owned by the headers (`'a`).
                unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }
            });
            return Some(RawHeader { name, value });
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.count.saturating_sub(self.next)))
    }
}

/// `headers` with one more header, its name copied byte for byte (rdkafka's `insert` takes a
/// `&str`). librdkafka copies the name's bytes and ends them with a NUL, so a name holding a
/// NUL reads back cut there.
pub fn add(headers: OwnedHeaders, name: &[u8], value: Option<&[u8]>) -> OwnedHeaders {
    let native = ptr::from_ref(headers.as_borrowed()).cast::<rd::rd_kafka_headers_t>().cast_mut();
    let (value_ptr, value_len) = match value {
        Some(v) => (v.as_ptr().cast::<c_void>(), v.len()),
        None => (ptr::null(), 0),
    };
    // Lengths of slices in memory fit an `isize`.
    let (Ok(name_len), Ok(value_len)) = (isize::try_from(name.len()), isize::try_from(value_len)) else {
        return headers;
    };
    // SAFETY: `headers` is owned here, so nothing else reads it while librdkafka appends a copy
    // of `name_len` and `value_len` bytes (a NUL among them is copied like any byte) (an append to a list that is not read-only never
    // fails: the error is only for headers of a message being produced).
    unsafe { rd::rd_kafka_header_add(native, name.as_ptr().cast(), name_len, value_ptr, value_len) };
    headers
}

/// How long a delivered message took from the producer call to Kafka's acknowledgement, as
/// librdkafka timed it (`None` when it has no time for it). Read in a delivery report, it
/// costs no clock read of our own per output.
pub fn produce_latency(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<std::time::Duration> {
    // SAFETY: `ptr` is the message librdkafka handed to the delivery callback, valid while
    // `message` is borrowed; rd_kafka_message_latency only reads its enqueue time.
    let micros = unsafe { rd::rd_kafka_message_latency(message.ptr()) };
    u64::try_from(micros).ok().map(std::time::Duration::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, Headers, OwnedMessage};
    use rdkafka::Timestamp;

    #[test]
    fn names_that_are_not_utf8_are_read_and_copied_byte_for_byte() {
        let headers = add(OwnedHeaders::new(), b"ok", Some(b"1"));
        let headers = add(headers, b"\xff\xfename", Some(b"\xc3\x28"));
        let headers = add(headers, b"nil", None);
        let all: Vec<RawHeader<'_>> = headers.raw().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], RawHeader { name: b"ok", value: Some(b"1") });
        assert_eq!(all[1].name, b"\xff\xfename");
        assert_eq!(all[1].name_str(), None);
        assert_eq!(all[1].name_lossy(), "\u{fffd}\u{fffd}name");
        assert_eq!(all[1].text(), None, "the value is not UTF-8 either");
        assert_eq!(all[2].value, None);
        assert_eq!(text(&headers, "ok"), Some("1"));
        assert_eq!(text(&headers, "missing"), None);
        // What rdkafka itself does with such a name: its reader panics.
        let panicked = std::panic::catch_unwind(|| headers.iter().count()).is_err();
        assert!(panicked, "rdkafka 0.39 unwraps header names; if it no longer does, this crate can go");
    }

    #[test]
    fn a_message_without_headers_has_none_and_names_stop_at_a_nul() {
        let bare = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        assert_eq!(of(&bare).count(), 0);
        let headers =
            add(OwnedHeaders::new().insert(Header { key: "a", value: Some("x") }), b"b\0c", Some(b""));
        let message = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, Some(headers));
        let names: Vec<&[u8]> = of(&message).map(|h| h.name).collect();
        assert_eq!(names, [&b"a"[..], &b"b"[..]]);
        assert_eq!(of(&message).nth(1).and_then(|h| h.value), Some(&b""[..]));
    }
}
