//! `pigeon replay …` and `pigeon archive …`: replay jobs and archive search, through the admin
//! API. A replay runs on the server; the command follows it with a progress bar and can be
//! left at any time (the job goes on; `pigeon replay show ID` finds it again).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;

use super::client::Client;
use super::deadletters::parse_since;
use pigeon_admin::archive::{ArchivedView, DryRun, SearchRequest};
use pigeon_admin::Page;
use pigeon_bus::archive::{parse_key, ArchiveQuery, ReplayJob, ReplaySpec, ReplayStatus};
use pigeon_bus::store::now_ms;

/// Which archived letters, as the command line gives them.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// An age (`2h`) or a time (RFC 3339).
    pub since: String,
    /// An age or a time; default now.
    pub until: Option<String>,
    /// Source topic.
    pub topic: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// Archive pigeon.
    pub pigeon: Option<String>,
    /// `userId=42`, …
    pub keys: Vec<String>,
}

impl Selection {
    /// The API's query.
    pub fn query(&self) -> anyhow::Result<ArchiveQuery> {
        let mut keys = std::collections::BTreeMap::new();
        for key in &self.keys {
            let (field, value) = parse_key(key).map_err(anyhow::Error::msg)?;
            keys.insert(field, value);
        }
        Ok(ArchiveQuery {
            since: parse_since(&self.since).context("--since")?,
            until: match &self.until {
                Some(until) => parse_since(until).context("--until")?,
                None => now_ms(),
            },
            topic: self.topic.clone(),
            tag: self.tag.clone(),
            pigeon: self.pigeon.clone(),
            keys,
        })
    }
}

/// Reads `--rate`: `500` or `500/s`.
pub fn parse_rate(text: &str) -> anyhow::Result<u32> {
    let number = text.trim().trim_end_matches("/s");
    number.parse().with_context(|| format!("--rate {text:?}: expected letters per second, e.g. 500 or 500/s"))
}

/// `replay --dry-run`: the count and the first letters.
pub async fn dry_run(client: &Client, spec: &ReplaySpec) -> anyhow::Result<String> {
    let answer: DryRun = client.call(Method::POST, "/replays/dry-run", Some(spec)).await?;
    let mut out = format!("{} letter(s) would be replayed", answer.count);
    match (&spec.to_topic, answer.count) {
        (_, 0) => out.push_str(".\n"),
        (Some(topic), _) => writeln!(out, " to {topic}; the first:")?,
        (None, _) => out.push_str(" through today's pigeons; the first:\n"),
    }
    if !answer.sample.is_empty() {
        out.push_str(&letter_table(&answer.sample));
    }
    Ok(out)
}

/// `replay`: starts the job and, with `follow`, shows its progress until it ends.
pub async fn start(client: &Client, spec: &ReplaySpec, follow: bool) -> anyhow::Result<String> {
    let job: ReplayJob = client.call(Method::POST, "/replays", Some(spec)).await?;
    if !follow {
        return Ok(format!("replay job {} started: {} letter(s)\n", job.id, job.total));
    }
    let bar = ProgressBar::new(job.total.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "replay {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("a valid template"),
    );
    bar.set_message(job.id.to_string());
    let path = format!("/replays/{}", job.id);
    let job = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                bar.abandon();
                return Ok(format!(
                    "left replay job {} running on the server: `pigeon replay show {}` follows it, \
                     `pigeon replay cancel {}` stops it\n",
                    job.id, job.id, job.id
                ));
            }
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let now: ReplayJob = client.call(Method::GET, &path, None::<&()>).await?;
        bar.set_position(now.sent.max(0) as u64);
        if now.status.finished() {
            break now;
        }
    };
    match job.status {
        ReplayStatus::Done => bar.finish(),
        _ => bar.abandon(),
    }
    Ok(summary(&job))
}

fn summary(job: &ReplayJob) -> String {
    let mut out = format!(
        "replay job {}: {} — {} of {} letter(s) sent",
        job.id,
        job.status.as_str(),
        job.sent,
        job.total
    );
    if job.resent > 0 {
        let _ = write!(out, ", {} possibly twice (in flight at an interruption)", job.resent);
    }
    if let Some(message) = &job.message {
        let _ = write!(out, "\n  {message}");
    }
    out.push('\n');
    out
}

/// `replay list`: one line per job, newest first.
pub async fn list(client: &Client) -> anyhow::Result<String> {
    let jobs: Vec<ReplayJob> = client.call(Method::GET, "/replays", None::<&()>).await?;
    let mut out = format!(
        "{:>6}  {:<9} {:>9} {:>9} {:>7}  {:<24} {}\n",
        "ID", "STATUS", "SENT", "TOTAL", "RESENT", "TARGET", "BY"
    );
    for job in jobs {
        let target = job.spec.to_topic.clone().unwrap_or_else(|| "(through pigeons)".into());
        writeln!(
            out,
            "{:>6}  {:<9} {:>9} {:>9} {:>7}  {:<24} {}",
            job.id,
            job.status.as_str(),
            job.sent,
            job.total,
            job.resent,
            target,
            job.created_by
        )?;
    }
    Ok(out)
}

/// `replay show ID`.
pub async fn show(client: &Client, id: i64) -> anyhow::Result<String> {
    let job: ReplayJob = client.call(Method::GET, &format!("/replays/{id}"), None::<&()>).await?;
    let mut out = summary(&job);
    writeln!(out, "  query: {}", serde_json::to_string(&job.spec.query)?)?;
    if let Some(rate) = job.spec.rate {
        writeln!(out, "  rate: {rate}/s")?;
    }
    if let Some(checkpoint) = &job.checkpoint {
        writeln!(out, "  checkpoint: {checkpoint}")?;
    }
    Ok(out)
}

/// `replay cancel ID`.
pub async fn cancel(client: &Client, id: i64) -> anyhow::Result<String> {
    let job: ReplayJob = client.call(Method::POST, &format!("/replays/{id}/cancel"), None::<&()>).await?;
    Ok(format!("replay job {} cancelled after {} of {} letter(s)\n", job.id, job.sent, job.total))
}

/// `archive search`: the letters, oldest first.
pub async fn search(client: &Client, query: ArchiveQuery, limit: u32) -> anyhow::Result<String> {
    let request = SearchRequest { query, limit: Some(limit), cursor: None };
    let page: Page<ArchivedView> = client.call(Method::POST, "/archive/search", Some(&request)).await?;
    let mut out = letter_table(&page.items);
    if page.next_cursor.is_some() {
        out.push_str("(more: narrow the search or raise --limit)\n");
    }
    Ok(out)
}

/// `archive show ID`: one letter, whole.
pub async fn show_letter(client: &Client, letter_id: &str) -> anyhow::Result<String> {
    let letter: ArchivedView =
        client.call(Method::GET, &format!("/archive/{letter_id}"), None::<&()>).await?;
    Ok(format!("{}\n", serde_json::to_string_pretty(&letter)?))
}

fn letter_table(letters: &[ArchivedView]) -> String {
    let mut out =
        format!("{:<24} {:<36} {:<20} {:<16} {}\n", "TIME", "LETTER", "TOPIC/PART@OFFSET", "TAG", "KEYS");
    for l in letters {
        let time = pigeon_sdk::letter::format_time_ms(l.time);
        let at = format!("{}/{}@{}", l.topic, l.partition, l.offset);
        let keys: Vec<String> = l.keys.iter().map(|(k, v)| format!("{}={v}", k.name())).collect();
        let _ = writeln!(out, "{time:<24} {:<36} {at:<20} {:<16} {}", l.letter_id, l.tag, keys.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_bus::archive::KeyField;

    #[test]
    fn the_command_line_becomes_an_archive_query() {
        let selection = Selection {
            since: "2026-11-24T10:00:00Z".into(),
            until: Some("2026-11-24T11:00:00Z".into()),
            topic: Some("live.gift".into()),
            keys: vec!["userId=42".into(), "roomId = r-7".into()],
            ..Default::default()
        };
        let query = selection.query().unwrap();
        assert_eq!(query.until - query.since, 3_600_000);
        assert_eq!(query.keys.get(&KeyField::UserId).map(String::as_str), Some("42"));
        assert_eq!(query.keys.get(&KeyField::RoomId).map(String::as_str), Some("r-7"));
        let bad = Selection { since: "1h".into(), keys: vec!["uid=42".into()], ..Default::default() };
        let error = bad.query().unwrap_err().to_string();
        assert!(error.contains("userId, anchorId or roomId"), "{error}");
        assert_eq!(parse_rate("500/s").unwrap(), 500);
        assert!(parse_rate("fast").is_err());
    }
}
