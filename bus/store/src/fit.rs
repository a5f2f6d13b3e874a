//! What the store keeps of input it does not control, cut to what its columns hold. A row
//! the database refuses for its size would be refused on every retry and hold the letters
//! behind it for ever (the router stops committing while a dead letter is not stored); so ids
//! longer than their column, errors longer than `TEXT` and rows past TiDB's 6 MiB entry limit
//! are stored bounded, saying what was cut. Nothing is cut from what fits.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use pigeon_core::deadletter::NewDeadLetter;

/// `letter_id` columns.
pub const ID: usize = 64;
/// `pigeon_id` and the archive's business-key columns.
pub const NAME: usize = 128;
/// Topic and tag columns.
pub const TOPIC: usize = 255;
/// `error_message` (`TEXT` holds 65,535 bytes; what is worth reading is far shorter).
pub const ERROR: usize = 16 * 1024;
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
    Cow::Owned(format!("{}~{hash}", prefix(text, max.saturating_sub(hash.len() + 1))))
}

/// `text` cut to at most `max` bytes, saying how long it was.
pub fn text(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let note = format!("… ({} bytes)", text.len());
    Cow::Owned(format!("{}{note}", prefix(text, max.saturating_sub(note.len()))))
}

/// The longest start of `text` of at most `max` bytes that ends on a character boundary.
pub fn prefix(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The dead letter as the store keeps it: itself when it fits (the usual case, no copy).
/// Ids keep a hash of what was cut (so they stay distinct); topics, the tag and the error are
/// cut (the headers keep the originals); a row past [`ROW`] loses its payload first, then its
/// key, then its headers, and the error says what went.
pub fn dead_letter(letter: &NewDeadLetter) -> Cow<'_, NewDeadLetter> {
    let over_row = letter.size() > ROW;
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
    fitted.source_topic = prefix(&letter.source_topic, TOPIC).to_owned();
    fitted.dest_topic = letter.dest_topic.as_deref().map(|t| prefix(t, TOPIC).to_owned());
    fitted.dest_tag = letter.dest_tag.as_deref().map(|t| prefix(t, TOPIC).to_owned());
    // Room for the note on what was cut, which must not be cut itself.
    let room = if over_row { ERROR - 1_000 } else { ERROR };
    fitted.error_message = prefix(&letter.error_message, room).to_owned();
    if over_row {
        let mut cuts = Vec::new();
        let payload = fitted.payload.as_ref().map_or(0, Vec::len);
        // `size` counts the error too, which the note below makes longer.
        let room = ROW.saturating_sub(fitted.size() - payload + 1_000);
        if let Some(p) = fitted.payload.as_mut() {
            if p.len() > room {
                cuts.push(format!("payload cut from {} to {room} bytes", p.len()));
                p.truncate(room);
            }
        }
        if fitted.size() > ROW {
            if let Some(key) = fitted.key.as_mut() {
                cuts.push(format!("key of {} bytes dropped", key.len()));
                key.clear();
            }
        }
        if fitted.size() > ROW {
            cuts.push(format!("{} headers dropped", fitted.headers.len()));
            fitted.headers.clear();
        }
        fitted.error_message =
            format!("{} [too large to store whole: {}]", fitted.error_message, cuts.join(", "));
    }
    tracing::warn!(letter = %fitted.letter_id, "dead letter cut to what the store's columns hold");
    Cow::Owned(fitted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_core::deadletter::{ErrorKind, StoredHeader};

    fn letter() -> NewDeadLetter {
        NewDeadLetter {
            letter_id: String::new(),
            pigeon_id: None,
            pigeon_version: None,
            source_topic: "live.gift".into(),
            source_partition: 0,
            source_offset: 1,
            dest_topic: None,
            dest_tag: None,
            key: None,
            headers: Vec::new(),
            payload: Some(b"{}".to_vec()),
            error_kind: ErrorKind::Malformed,
            error_message: "bad".into(),
            first_retry: None,
        }
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
        assert_eq!(prefix("ééé", 3), "é");
        assert_eq!(
            text(&"é".repeat(50), 30),
            format!("{}… (100 bytes)", "é".repeat(7)),
            "the note says how long it was"
        );
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
        assert!(fitted.size() <= ROW);
        assert_eq!(fitted.headers.len(), 1, "the payload gave way, the headers stay");
        let small = letter();
        let mut long_error = small.clone();
        long_error.payload = Some(vec![b'z'; 8 << 20]);
        let fitted = dead_letter(&long_error);
        assert!(fitted.error_message.contains("payload cut from 8388608 to"), "{}", fitted.error_message);
    }

    #[test]
    fn outside_fields_are_cut_to_their_columns_on_character_boundaries() {
        let dead = NewDeadLetter {
            letter_id: "x".repeat(100),
            pigeon_id: Some("p".repeat(200)),
            pigeon_version: None,
            source_topic: "pigeon.failed".into(),
            source_partition: 0,
            source_offset: 0,
            dest_topic: Some("t".into()),
            dest_tag: Some("é".repeat(200)), // 400 bytes, two per character
            key: None,
            headers: vec![StoredHeader::new("ce_id", Some("x".repeat(100).as_bytes()))],
            payload: Some(b"{}".to_vec()),
            error_kind: ErrorKind::Handler,
            error_message: "e".repeat(100_000),
            first_retry: None,
        };
        let dead = dead_letter(&dead);
        assert_eq!(dead.letter_id.len(), 64);
        assert_eq!(dead.pigeon_id.as_ref().unwrap().len(), 128);
        assert_eq!(dead.dest_topic.as_deref(), Some("t"));
        assert_eq!(dead.dest_tag.as_ref().unwrap().len(), 254, "no character is split");
        assert_eq!(dead.error_message.len(), ERROR);
        assert_eq!(dead.headers[0].value().unwrap().len(), 100, "the headers keep the original");
    }
}
