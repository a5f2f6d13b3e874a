//! `pigeon trace`: a letter's path through the bus, by id or for the archived letters a time
//! window and business keys select, through the admin API.

use std::fmt::Write as _;

use reqwest::Method;

use super::client::{urlencode, Client};
use pigeon_admin::letters::TraceRequest;
use pigeon_bus::archive::ArchiveQuery;
use pigeon_bus::trace::LetterTrace;
use pigeon_sdk::letter::format_time_ms;

/// One letter's path; JSON when `json`.
pub async fn one(client: &Client, letter_id: &str, json: bool) -> anyhow::Result<String> {
    let path = format!("/letters/{}/trace", urlencode(letter_id));
    let trace: LetterTrace = client.call(Method::GET, &path, None::<&()>).await?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&trace)?));
    }
    Ok(render(&trace))
}

/// The paths of the archived letters `query` selects, at most `limit`.
pub async fn many(client: &Client, query: ArchiveQuery, limit: u32, json: bool) -> anyhow::Result<String> {
    let request = TraceRequest { query, limit: Some(limit) };
    let traces: Vec<LetterTrace> = client.call(Method::POST, "/letters/trace", Some(&request)).await?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&traces)?));
    }
    if traces.is_empty() {
        return Ok("no archived letter matches\n".into());
    }
    Ok(traces.iter().map(render).collect::<Vec<_>>().join("\n"))
}

/// The trace as an operator reads it, hop after hop.
pub fn render(t: &LetterTrace) -> String {
    let mut out = format!("letter   {}", t.letter_id);
    if let Some(ms) = t.id_time_ms {
        let _ = write!(out, "  made {}", format_time_ms(ms));
    }
    out.push('\n');
    match &t.source {
        Some(s) => {
            let _ = writeln!(
                out,
                "read     {}/{}@{} at {} (tag {}; found {})",
                s.topic,
                s.partition,
                s.offset,
                format_time_ms(s.time_ms),
                s.tag.as_deref().unwrap_or("?"),
                match s.found_by.as_str() {
                    "archive" => "in the archive",
                    "kafka" => "on Kafka by its id's time",
                    _ => "by its dead letter",
                }
            );
        }
        None => out.push_str("read     (not found)\n"),
    }
    let _ = writeln!(
        out,
        "router   {}",
        match t.acknowledged {
            Some(true) => "acknowledged: its group committed past it",
            Some(false) => "not yet acknowledged: its group has not committed past it",
            None => "acknowledgement unknown",
        }
    );
    for p in &t.pigeons {
        let _ = writeln!(out, "pigeon   {} v{} ({})", p.id, p.version, p.action);
        for o in &p.outputs {
            let dead = o.dead_letter.map(|id| format!(" (dead letter #{id})")).unwrap_or_default();
            let _ =
                writeln!(out, "  → {} tag {} {}{dead}", o.topic, o.tag.as_deref().unwrap_or("?"), o.status);
        }
    }
    for d in &t.dead_letters {
        let _ = writeln!(
            out,
            "dead     #{} {} {} to {} after {} attempts: {}",
            d.id,
            d.kind,
            d.status,
            d.dest_topic.as_deref().unwrap_or("(no destination)"),
            d.attempts,
            d.error
        );
    }
    if let Some(a) = &t.archive {
        let keys: Vec<String> = a.keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "archive  kept by {} at {} {}",
            a.pigeon_id,
            format_time_ms(a.archived_at),
            keys.join(" ")
        );
    }
    for r in &t.replays {
        let _ = writeln!(
            out,
            "replay   job {} ({}) as {}: {} receipt(s)",
            r.job,
            r.status,
            r.replay_id,
            r.receipts.len()
        );
    }
    for r in &t.receipts {
        let _ = writeln!(
            out,
            "receipt  {}/{} {} {} in {:.2} ms ({} tr{}) at {}{}",
            r.module,
            r.instance,
            r.capability,
            r.outcome.as_str(),
            r.duration_us as f64 / 1_000.0,
            r.attempts,
            if r.attempts == 1 { "y" } else { "ies" },
            format_time_ms(r.at_ms),
            r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    for note in &t.notes {
        let _ = writeln!(out, "note     {note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_bus::trace::{SourcePosition, TracedOutput, TracedPigeon};
    use pigeon_sdk::receipt::{Outcome, Receipt};

    #[test]
    fn a_trace_reads_hop_after_hop() {
        let trace = LetterTrace {
            letter_id: "0190a8f0-0000-7000-8000-000000000001".into(),
            id_time_ms: Some(1_700_000_000_000),
            source: Some(SourcePosition {
                topic: "pigeon.ingress".into(),
                partition: 2,
                offset: 41,
                time_ms: 1_700_000_000_001,
                tag: Some("gift.sent".into()),
                found_by: "kafka".into(),
            }),
            acknowledged: Some(true),
            pigeons: vec![TracedPigeon {
                id: "gifts".into(),
                version: 3,
                action: "forward".into(),
                outputs: vec![TracedOutput {
                    topic: "pigeon.module.act-toy".into(),
                    tag: Some("progress.add".into()),
                    status: "acknowledged".into(),
                    dead_letter: None,
                }],
            }],
            dead_letters: vec![],
            archive: None,
            replays: vec![],
            receipts: vec![Receipt {
                letter_id: "0190a8f0-0000-7000-8000-000000000001".into(),
                module: "act-toy".into(),
                instance: "host-1".into(),
                capability: "progress.add".into(),
                outcome: Outcome::Handled,
                duration_us: 1_250,
                attempts: 1,
                at_ms: 1_700_000_000_010,
                pigeon: Some("gifts".into()),
                error: None,
            }],
            notes: vec![],
        };
        let text = render(&trace);
        assert!(text.contains("read     pigeon.ingress/2@41"), "{text}");
        assert!(text.contains("found on Kafka by its id's time"), "{text}");
        assert!(
            text.contains(
                "pigeon   gifts v3 (forward)\n  → pigeon.module.act-toy tag progress.add acknowledged"
            ),
            "{text}"
        );
        assert!(text.contains("receipt  act-toy/host-1 progress.add handled in 1.25 ms (1 try)"), "{text}");
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
