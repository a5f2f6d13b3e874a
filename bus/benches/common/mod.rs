//! What the benchmarks share: a process's CPU time, a plain HTTP GET on loopback, a counter
//! from `/metrics`, gift letters as the router reads them. Each benchmark uses a part.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use rdkafka::Timestamp;

/// `count` gift letters on `live.gift` as the router reads them: keyed by one of 100 rooms,
/// spread over 16 partitions, with the payload `payload(n, room)`.
pub fn gift_messages(count: usize, payload: impl Fn(usize, &str) -> serde_json::Value) -> Vec<OwnedMessage> {
    (0..count)
        .map(|n| {
            let room = format!("room-{}", n % 100);
            let letter = pigeon_sdk::Letter::new("live-platform", "gift.sent", payload(n, &room))
                .with_key(room.clone());
            OwnedMessage::new(
                Some(letter.payload_bytes()),
                letter.key.clone(),
                "live.gift".into(),
                Timestamp::CreateTime(1_700_000_000_000),
                (n % 16) as i32,
                n as i64,
                Some(letter.headers()),
            )
        })
        .collect()
}

/// User plus system CPU time of a process, from /proc (10 ms ticks).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// `GET url` (`http://ADDR/PATH`): the status code and the body.
pub fn get(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (addr, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// The value of a Prometheus counter at a metrics URL.
pub fn counter(url: &str, name: &str) -> Option<i64> {
    let (_, body) = get(url)?;
    let line = body.lines().find(|l| l.starts_with(name) && !l.starts_with('#'))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
