//! The source letters: realistic gift letters from 100 rooms, each carrying its sequence
//! number in a header (`bench_seq`) that every contender passes on untouched, so the verifier
//! can tell which source letter an output came from, whatever the contender did to it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

/// The header holding the source letter's sequence number, in decimal.
pub const SEQ_HEADER: &str = "bench_seq";
/// Distinct keys (rooms); a key's letters must come out in the order they went in.
pub const KEYS: u64 = 100;
pub const TAG: &str = "gift.sent";

const GIFTS: [(u32, &str, u32); 6] = [
    (7, "rose", 1),
    (12, "heart", 10),
    (31, "rocket", 52),
    (44, "crown", 99),
    (52, "castle", 520),
    (63, "galaxy", 1314),
];
const PLATFORMS: [&str; 3] = ["ios", "android", "web"];

/// The room (key) of letter `seq`.
pub fn room(seq: u64) -> u64 {
    seq % KEYS
}

/// Source letter `seq`: key, payload, headers (CloudEvents headers, as the SDK writes them,
/// plus `bench_seq`).
pub fn gift(seq: u64, sent_at_ms: i64) -> (String, Vec<u8>, OwnedHeaders) {
    let room = room(seq);
    let (gift_id, gift_name, price) = GIFTS[(seq % GIFTS.len() as u64) as usize];
    let key = format!("room-{room}");
    let letter = pigeon_sdk::Letter::new(
        "live-platform",
        TAG,
        serde_json::json!({
            "uid": 100_000 + (seq * 7_919) % 50_000,
            "aid": 1_000 + room,
            "roomId": key,
            "giftId": gift_id,
            "giftName": gift_name,
            "giftCount": 1 + seq % 5,
            "price": price,
            "combo": seq % 7 == 0,
            "platform": PLATFORMS[(seq % 3) as usize],
            "sentAt": sent_at_ms,
        }),
    )
    .with_key(key.clone());
    let seq_text = seq.to_string();
    let headers = letter.headers().insert(Header { key: SEQ_HEADER, value: Some(seq_text.as_bytes()) });
    (key, letter.payload_bytes(), headers)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// The sequence number an output carries, if any.
pub fn seq_of<H: Headers>(headers: Option<&H>) -> Option<u64> {
    let headers = headers?;
    headers
        .iter()
        .find(|h| h.key == SEQ_HEADER)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
}

/// Produces source letters to one topic, numbering them on from where the last call ended.
pub struct Source {
    topic: String,
    producer: ThreadedProducer<DefaultProducerContext>,
    next: u64,
}

impl Source {
    /// A producer as a live platform's gateway would have it (lz4, batches of up to
    /// `linger_ms`), numbering letters from `next`.
    pub fn new(client: &ClientConfig, topic: &str, linger_ms: u32, next: u64) -> anyhow::Result<Self> {
        let producer = client
            .clone()
            .set("linger.ms", linger_ms.to_string())
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .context("source producer")?;
        Ok(Self { topic: topic.to_owned(), producer, next })
    }

    /// Produces `count` letters as fast as the broker takes them, showing progress.
    pub fn backlog(&mut self, count: u64) -> anyhow::Result<()> {
        let bar = ProgressBar::new(count).with_style(
            ProgressStyle::with_template("  source letters {bar:30} {human_pos}/{human_len} {per_sec} {eta}")
                .expect("template"),
        );
        for done in 1..=count {
            self.send_one(now_ms())?;
            if done % 1_000 == 0 {
                bar.set_position(done);
            }
        }
        self.producer.flush(Duration::from_secs(120)).context("flushing the source letters")?;
        bar.finish_and_clear();
        Ok(())
    }

    /// Produces `count` letters at `rate` letters/s, each stamped (CreateTime) as it is sent.
    /// Returns each letter's sequence number and CreateTime.
    pub fn paced(&mut self, count: u64, rate: f64) -> anyhow::Result<Vec<(u64, i64)>> {
        let started = Instant::now();
        let mut sent = Vec::with_capacity(count as usize);
        while (sent.len() as u64) < count {
            let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(count);
            while (sent.len() as u64) < due {
                let at = now_ms();
                sent.push((self.next, at));
                self.send_one(at)?;
            }
            self.producer.poll(Duration::ZERO);
            std::thread::sleep(Duration::from_micros(500));
        }
        self.producer.flush(Duration::from_secs(60)).context("flushing the paced letters")?;
        Ok(sent)
    }

    fn send_one(&mut self, at_ms: i64) -> anyhow::Result<()> {
        let (key, payload, headers) = gift(self.next, at_ms);
        let mut record = BaseRecord::<str, [u8]>::to(&self.topic)
            .key(key.as_str())
            .payload(payload.as_slice())
            .headers(headers)
            .timestamp(at_ms);
        while let Err((e, back)) = self.producer.send(record) {
            if !matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) {
                return Err(e).context("producing a source letter");
            }
            record = back;
            std::thread::sleep(Duration::from_millis(1));
        }
        self.next += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Message, OwnedMessage};

    #[test]
    fn a_gift_letter_is_a_valid_letter_that_names_its_sequence_number() {
        let (key, payload, headers) = gift(1_234, 1_700_000_000_000);
        assert_eq!(key, "room-34");
        let message = OwnedMessage::new(
            Some(payload),
            Some(key.into_bytes()),
            "bench.gift".into(),
            rdkafka::Timestamp::CreateTime(1_700_000_000_000),
            0,
            0,
            Some(headers),
        );
        let letter = pigeon_sdk::Letter::from_message(&message).expect("a letter the SDK reads");
        assert_eq!(letter.tag, TAG);
        assert_eq!(letter.payload["roomId"], "room-34");
        assert_eq!(letter.payload["aid"], 1_034);
        assert_eq!(seq_of(message.headers()), Some(1_234));
    }
}
