//! What the store keeps of input it does not control, cut to what its columns hold. A row
//! the database refuses for its size would be refused on every retry and hold the letters
//! behind it for ever (the router stops committing while a dead letter is not stored); so ids
//! longer than their column, errors longer than `TEXT` and rows past TiDB's 6 MiB entry limit
//! are stored bounded, saying what was cut. Nothing is cut from what fits.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::deadletter::NewDeadLetter;

/// `letter_id` columns.
pub const ID: usize = 64;
/// `pigeon_id` and the archive's business-key columns.
pub const NAME: usize = 128;
/// Topic and tag columns.
pub const TOPIC: usize = 255;
/// `error_message` (`TEXT` holds 65,535 bytes).
pub const ERROR: usize = 60_000;
/// Key, headers and payload of one row together: under TiDB's 6 MiB entry limit, with room
/// for the rest of the row.
pub const ROW: usize = 5 << 20;

/// `text` as a column of `max` bytes holds it: as it is when it fits, else its start, `~`
/// and 16 hex digits of its SHA-256, so different long ids stay different.
pub fn id(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let digest = Sha256::digest(text.as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let keep = floor_char_boundary(text, max.saturating_sub(hash.len() + 1));
    Cow::Owned(format!("{}~{hash}", &text[..keep]))
}

/// `text` cut to at most `max` bytes, saying how long it was.
pub fn text(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let note = format!("… (cut from {} bytes)", text.len());
    let keep = floor_char_boundary(text, max.saturating_sub(note.len()));
    Cow::Owned(format!("{}{note}", &text[..keep]))
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The dead letter as the store keeps it: itself when it fits (the usual case, no copy).
pub fn dead_letter(letter: &NewDeadLetter) -> Cow<'_, NewDeadLetter> {
    let over_row = row_size(letter) > ROW;
    let fits = letter.letter_id.len() <= ID
        && letter.pigeon_id.as_ref().is_none_or(|p| p.len() <= NAME)
        && letter.source_topic.len() <= TOPIC
        && letter.dest_topic.as_ref().is_none_or(|t| t.len() <= TOPIC)
        && letter.dest_tag.as_ref().is_none_or(|t| t.len() <= TOPIC)
        && letter.error_message.len() <= ERROR
        && !over_row;
    if fits {
        return Cow::Borrowed(letter);
    }
    let mut fitted = letter.clone();
    fitted.letter_id = id(&letter.letter_id, ID).into_owned();
    fitted.pigeon_id = letter.pigeon_id.as_deref().map(|p| id(p, NAME).into_owned());
    fitted.source_topic = text(&letter.source_topic, TOPIC).into_owned();
    fitted.dest_topic = letter.dest_topic.as_deref().map(|t| text(t, TOPIC).into_owned());
    fitted.dest_tag = letter.dest_tag.as_deref().map(|t| text(t, TOPIC).into_owned());
    // Room for the note on what was cut, which must not be cut itself.
    fitted.error_message = text(&letter.error_message, ERROR - 1_000).into_owned();
    if over_row {
        // The payload gives way first, then the key, then header values: the error says what.
        let mut cuts = Vec::new();
        let payload = fitted.payload.as_ref().map_or(0, Vec::len);
        let rest = row_size(&fitted) - payload;
        let room = ROW.saturating_sub(rest);
        if let Some(p) = fitted.payload.as_mut() {
            if p.len() > room {
                cuts.push(format!("payload cut from {} to {room} bytes", p.len()));
                p.truncate(room);
            }
        }
        if row_size(&fitted) > ROW {
            if let Some(key) = fitted.key.as_mut() {
                cuts.push(format!("key of {} bytes dropped", key.len()));
                key.clear();
            }
        }
        if row_size(&fitted) > ROW {
            cuts.push(format!("{} headers dropped", fitted.headers.len()));
            fitted.headers.clear();
        }
        fitted.error_message =
            format!("{} [too large to store whole: {}]", fitted.error_message, cuts.join(", "));
    }
    fitted.error_message = text(&fitted.error_message, ERROR).into_owned();
    Cow::Owned(fitted)
}

/// Key, headers and payload of a dead letter, in bytes (headers as stored: JSON, roughly).
fn row_size(letter: &NewDeadLetter) -> usize {
    letter.key.as_ref().map_or(0, Vec::len)
        + letter.payload.as_ref().map_or(0, Vec::len)
        + letter
            .headers
            .iter()
            .map(|h| 2 * (h.name_bytes().len() + h.value().map_or(0, <[u8]>::len)) + 32)
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadletter::{ErrorKind, StoredHeader};
    use rdkafka::message::OwnedMessage;

    fn letter() -> NewDeadLetter {
        let message = OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "live.gift".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            1,
            None,
        );
        NewDeadLetter::from_message(&message, ErrorKind::Malformed, "bad".into())
    }

    #[test]
    fn what_fits_is_not_copied_and_long_ids_stay_distinct() {
        let fine = letter();
        assert!(matches!(dead_letter(&fine), Cow::Borrowed(_)));
        let a = "a".repeat(1_000);
        let b = format!("{}b", "a".repeat(999));
        let (ia, ib) = (id(&a, ID), id(&b, ID));
        assert!(ia.len() <= ID && ib.len() <= ID);
        assert_ne!(ia, ib, "ids that differ only past the column stay different");
        assert_eq!(id("short", ID), "short");
        assert!(id(&"é".repeat(100), ID).len() <= ID, "cut on a character boundary");
    }

    #[test]
    fn a_dead_letter_the_store_would_refuse_is_stored_bounded_saying_what_was_cut() {
        let mut huge = letter();
        huge.letter_id = "x".repeat(10_000);
        huge.pigeon_id = Some("p".repeat(1_000));
        huge.error_message = "e".repeat(100_000);
        huge.payload = Some(vec![b'z'; 8 << 20]);
        huge.headers = vec![StoredHeader::new("ce_type", Some(b"gift.sent"))];
        let fitted = dead_letter(&huge);
        assert!(fitted.letter_id.len() <= ID);
        assert!(fitted.pigeon_id.as_ref().unwrap().len() <= NAME);
        assert!(fitted.error_message.len() <= ERROR);
        assert!(row_size(&fitted) <= ROW);
        assert_eq!(fitted.headers.len(), 1, "the payload gave way, the headers stay");
        let small = letter();
        let mut long_error = small.clone();
        long_error.payload = Some(vec![b'z'; 8 << 20]);
        let fitted = dead_letter(&long_error);
        assert!(fitted.error_message.contains("payload cut from 8388608 to"), "{}", fitted.error_message);
    }
}
