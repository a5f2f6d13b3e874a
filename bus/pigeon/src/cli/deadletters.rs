//! `pigeon dead-letters …`: inspect, retry, edit and discard dead letters through the API.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use reqwest::Method;

use super::client::{urlencode, Client};
use pigeon_admin::deadletters::{Changed, DeadLetterDetail, DeadLetterView};
use pigeon_admin::Page;
use pigeon_bus::deadletter::DeadLetterFilter;
use pigeon_bus::store::now_ms;

/// Reads `--since`: an age (`90m`, `2h`, `1d`) or an RFC 3339 time; unix ms.
pub fn parse_since(text: &str) -> anyhow::Result<i64> {
    if let Ok(age) = humantime::parse_duration(text) {
        return i64::try_from(age.as_millis())
            .ok()
            .and_then(|age| now_ms().checked_sub(age))
            .with_context(|| format!("since {text:?} reaches back too far"));
    }
    let at = humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("since {text:?}: expected an age (2h) or a time (2026-11-23T10:00:00Z)"))?;
    Ok(at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0))
}

/// Reads a filter written `pigeon=ID,status=parked,kind=produce,since=2h`.
pub fn parse_filter(text: &str) -> anyhow::Result<DeadLetterFilter> {
    let mut filter = DeadLetterFilter::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) =
            part.split_once('=').with_context(|| format!("filter {part:?}: expected KEY=VALUE"))?;
        match key.trim() {
            "pigeon" => filter.pigeon_id = Some(value.to_owned()),
            "status" => filter.status = Some(value.parse().map_err(anyhow::Error::msg)?),
            "kind" => filter.error_kind = Some(value.parse().map_err(anyhow::Error::msg)?),
            "since" => filter.since = Some(parse_since(value)?),
            other => bail!("filter key {other:?}: use pigeon, status, kind or since"),
        }
    }
    Ok(filter)
}

/// The list as a table, newest first.
pub async fn list(client: &Client, filter: &DeadLetterFilter, limit: u32) -> anyhow::Result<String> {
    let mut query = vec![format!("limit={limit}")];
    if let Some(p) = &filter.pigeon_id {
        query.push(format!("pigeon={}", urlencode(p)));
    }
    if let Some(s) = filter.status {
        query.push(format!("status={s}"));
    }
    if let Some(k) = filter.error_kind {
        query.push(format!("kind={k}"));
    }
    if let Some(since) = filter.since {
        query.push(format!("since={since}"));
    }
    let page: Page<DeadLetterView> =
        client.call(Method::GET, &format!("/dead-letters?{}", query.join("&")), None::<&()>).await?;
    let mut out = format!(
        "{:<8} {:<10} {:<10} {:<24} {:>8}  {:<20} {}\n",
        "ID", "STATUS", "KIND", "PIGEON", "ATTEMPTS", "NEXT ATTEMPT", "ERROR"
    );
    for d in &page.items {
        let next = d.next_attempt_at.map(pigeon_sdk::letter::format_time_ms).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<8} {:<10} {:<10} {:<24} {:>8}  {:<20} {}",
            d.id,
            d.status.as_str(),
            d.error_kind.as_str(),
            d.pigeon.as_deref().unwrap_or("-"),
            d.attempts,
            next.get(..19).unwrap_or(&next),
            one_line(&d.error_message, 80)
        );
    }
    if page.items.is_empty() {
        out.push_str("(no dead letters)\n");
    } else if page.next_cursor.is_some() {
        let _ = writeln!(out, "(showing the newest {limit}; raise --limit to see more)");
    }
    Ok(out)
}

/// One dead letter and its history.
pub async fn show(client: &Client, id: i64) -> anyhow::Result<String> {
    let detail: DeadLetterDetail =
        client.call(Method::GET, &format!("/dead-letters/{id}"), None::<&()>).await?;
    let mut out = serde_json::to_string_pretty(&detail.letter)?;
    out.push_str("\n\nattempts:\n");
    if detail.attempts.is_empty() {
        out.push_str("  (no retry yet)\n");
    }
    for a in &detail.attempts {
        let _ = writeln!(
            out,
            "  #{:<3} {}  {:<10} {}  {}",
            a.attempt,
            pigeon_sdk::letter::format_time_ms(a.at),
            a.outcome.as_str(),
            a.actor,
            a.message
        );
    }
    Ok(out)
}

/// Retries (or discards) dead letters by id or filter; returns how many changed.
pub async fn act(client: &Client, action: &str, ids: &[i64], filter: Option<&str>) -> anyhow::Result<u64> {
    let body = match (ids, filter) {
        ([], Some(filter)) => serde_json::json!({ "filter": parse_filter(filter)? }),
        ([], None) => bail!("name dead letters by id, or select them with --filter"),
        (ids, None) => serde_json::json!({ "ids": ids }),
        (_, Some(_)) => bail!("give ids or --filter, not both"),
    };
    let changed: Changed = client.call(Method::POST, &format!("/dead-letters/{action}"), Some(&body)).await?;
    Ok(changed.count)
}

/// Replaces a dead letter's payload with the JSON in `file`, or what the operator writes in
/// `$EDITOR`, then retries it unless `retry` is false.
pub async fn edit(client: &Client, id: i64, file: Option<&Path>, retry: bool) -> anyhow::Result<String> {
    let detail: DeadLetterDetail =
        client.call(Method::GET, &format!("/dead-letters/{id}"), None::<&()>).await?;
    let text = match file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => edit_in_editor(&detail.letter)?,
    };
    let payload: serde_json::Value =
        serde_json::from_str(&text).context("the new payload is not JSON; nothing was changed")?;
    if Some(&payload) == detail.letter.payload.as_ref() {
        bail!("the payload is unchanged; nothing was done");
    }
    let _: DeadLetterView =
        client.call(Method::PUT, &format!("/dead-letters/{id}/payload"), Some(&payload)).await?;
    if !retry {
        return Ok(format!("dead letter {id}: payload replaced (not retried)\n"));
    }
    let changed = act(client, "retry", &[id], None).await?;
    Ok(format!("dead letter {id}: payload replaced, {changed} retry queued\n"))
}

fn edit_in_editor(letter: &DeadLetterView) -> anyhow::Result<String> {
    let current = match (&letter.payload, &letter.payload_text) {
        (Some(json), _) => serde_json::to_string_pretty(json)?,
        (None, Some(text)) => text.clone(),
        (None, None) => "null".into(),
    };
    let file = tempfile::Builder::new().prefix("pigeon-dead-letter-").suffix(".json").tempfile()?;
    std::fs::write(file.path(), current)?;
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file.path())
        .status()
        .with_context(|| format!("running the editor {editor:?}"))?;
    if !status.success() {
        bail!("the editor exited with {status}; nothing was changed");
    }
    Ok(std::fs::read_to_string(file.path())?)
}

fn one_line(text: &str, max: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_bus::deadletter::{ErrorKind, Status};

    #[test]
    fn filters_read_every_key_and_name_bad_ones() {
        let f = parse_filter("pigeon=gift-progress, status=parked,kind=script,since=2h").unwrap();
        assert_eq!(f.pigeon_id.as_deref(), Some("gift-progress"));
        assert_eq!(f.status, Some(Status::Parked));
        assert_eq!(f.error_kind, Some(ErrorKind::Script));
        let two_hours_ago = now_ms() - 7_200_000;
        assert!((f.since.unwrap() - two_hours_ago).abs() < 5_000);
        assert!(parse_filter("colour=red").unwrap_err().to_string().contains("use pigeon, status"));
        assert!(parse_filter("status=lost").unwrap_err().to_string().contains("unknown dead-letter status"));
        assert!(parse_filter("since=yesterday").unwrap_err().to_string().contains("expected an age"));
        assert!(parse_since("300000000years").unwrap_err().to_string().contains("too far"));
        assert_eq!(parse_since("2026-11-23T10:00:00Z").unwrap(), 1_795_428_000_000);
    }
}
