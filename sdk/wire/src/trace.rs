//! W3C trace context as a letter carries it in `ce_traceparent`
//! (`00-<trace id>-<parent span id>-<flags>`, lowercase hex). Parsing never panics and
//! never allocates: a header that does not follow the format is no trace context at all, and
//! the letter goes on without one.

use std::fmt;

/// The length of a version 00 `traceparent`.
pub const LEN: usize = 55;

/// A parsed `traceparent`: which trace a letter belongs to and the span that sent it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace id; never all zeros.
    pub trace_id: [u8; 16],
    /// The span that sent the letter; never all zeros.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// The sampled flag.
    pub const SAMPLED: u8 = 1;

    /// Reads a header value as W3C Trace Context level 1 says: version `00` exactly 55 bytes;
    /// a later version at least that, the rest after a `-` ignored; version `ff`, upper-case
    /// hex and all-zero ids are invalid. `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < LEN {
            return None;
        }
        let version = hex_byte(value[0], value[1])?;
        match version {
            0 if value.len() != LEN => return None,
            0xff => return None,
            _ if value.len() > LEN && value[LEN] != b'-' => return None,
            _ => {}
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        hex_into(&value[3..35], &mut trace_id)?;
        let mut parent_id = [0u8; 8];
        hex_into(&value[36..52], &mut parent_id)?;
        let flags = hex_byte(value[53], value[54])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, parent_id, flags })
    }

    /// Whether the sender sampled the trace (its flag says record it).
    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The context a span of the same trace hands on: `span_id` is the new parent, sampled.
    pub fn child(&self, span_id: [u8; 8]) -> Self {
        Self { trace_id: self.trace_id, parent_id: span_id, flags: self.flags | Self::SAMPLED }
    }

    /// The header value (version 00), on the stack.
    pub fn encode(&self) -> Encoded {
        let mut out = [0u8; LEN];
        out[0] = b'0';
        out[1] = b'0';
        out[2] = b'-';
        hex_out(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_out(&self.parent_id, &mut out[36..52]);
        out[52] = b'-';
        hex_out(&[self.flags], &mut out[53..55]);
        Encoded(out)
    }
}

/// Whether a `traceparent` value says "sampled", judged from its flags alone (the cheap test
/// before [`TraceParent::parse`]): false for a value too short to hold them.
pub fn says_sampled(value: &[u8]) -> bool {
    value.len() >= LEN && value[52] == b'-' && nibble(value[54]).is_some_and(|n| n & 1 == 1)
}

/// A formatted `traceparent`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Encoded([u8; LEN]);

impl Encoded {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// As text (it is ASCII).
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and dashes are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode().as_str())
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(nibble(hi)? << 4 | nibble(lo)?)
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair[0], pair[1])?;
    }
    Some(())
}

fn hex_out(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_good_header_reads_and_writes_back_the_same() {
        let tp = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(tp.trace_id[0], 0x0a);
        assert_eq!(tp.parent_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
        assert!(tp.sampled());
        assert!(says_sampled(GOOD.as_bytes()));
        assert_eq!(tp.encode().as_str(), GOOD);
        assert_eq!(tp.to_string(), GOOD);
        let unsampled = GOOD.replace("-01", "-00");
        let tp0 = TraceParent::parse(unsampled.as_bytes()).unwrap();
        assert!(!tp0.sampled());
        assert!(!says_sampled(unsampled.as_bytes()));
    }

    #[test]
    fn a_child_keeps_the_trace_and_names_the_new_parent_sampled() {
        let tp = TraceParent::parse(GOOD.replace("-01", "-00").as_bytes()).unwrap();
        let child = tp.child([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(child.trace_id, tp.trace_id);
        assert!(child.sampled());
        assert_eq!(child.to_string(), "00-0af7651916cd43dd8448eb211c80319c-0102030405060708-01");
    }

    #[test]
    fn a_later_version_reads_its_first_fields_and_ignores_the_rest() {
        let later = format!("cc{}-what-comes-later", &GOOD[2..]);
        assert!(TraceParent::parse(later.as_bytes()).is_some());
        let later_glued = format!("cc{}x", &GOOD[2..]);
        assert_eq!(TraceParent::parse(later_glued.as_bytes()), None);
    }

    #[test]
    fn bad_headers_are_no_trace_context_and_never_panic() {
        let bad: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"00".to_vec(),
            b"garbage".to_vec(),
            GOOD.as_bytes()[..54].to_vec(),
            format!("{GOOD}-").into_bytes(), // version 00 is exactly 55 bytes
            GOOD.replace("00-0a", "ff-0a").into_bytes(), // version ff is invalid
            GOOD.to_uppercase().into_bytes(),
            GOOD.replace('-', "_").into_bytes(),
            "00-00000000000000000000000000000000-b7ad6b7169203331-01".into(),
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01".into(),
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0z".into(),
            "\u{e9}\u{e9}-0af7651916cd43dd8448eb211c80319c-b7ad6b716920331-01".into(),
            vec![0xff; 55],
            vec![b'-'; 200],
        ];
        for value in &bad {
            assert_eq!(TraceParent::parse(value), None, "{:?}", String::from_utf8_lossy(value));
            let _ = says_sampled(value);
        }
        // Every cut and every single-byte change of a good header: parsed or refused, no panic.
        for end in 0..=GOOD.len() {
            let _ = TraceParent::parse(&GOOD.as_bytes()[..end]);
        }
        for i in 0..GOOD.len() {
            for b in [0u8, b'-', b'f', b'F', 0xff] {
                let mut v = GOOD.as_bytes().to_vec();
                v[i] = b;
                if let Some(tp) = TraceParent::parse(&v) {
                    assert_eq!(TraceParent::parse(tp.encode().as_bytes()), Some(tp));
                }
            }
        }
    }
}
