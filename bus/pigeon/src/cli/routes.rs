//! `pigeon routes`: pigeons as files, for review in git.
//!
//! A route file holds a list `pigeons`, in YAML (`.yaml`, `.yml`) or TOML (`.toml`); each item
//! is a pigeon exactly as the API takes it. `export` writes every pigeon; `apply` shows the diff
//! and applies it in one transaction; `apply` of an export changes nothing.

use std::path::Path;

use anyhow::{bail, Context};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::client::Client;
use pigeon_admin::pigeons::{ApplyResponse, Change, PigeonView};
use pigeon_admin::Page;
use pigeon_bus::route::PigeonSpec;

/// File formats for routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// YAML.
    Yaml,
    /// TOML.
    Toml,
}

impl Format {
    /// The format a file name implies.
    pub fn of(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Ok(Format::Yaml),
            Some("toml") => Ok(Format::Toml),
            _ => bail!("{}: use a .yaml, .yml or .toml file, or pass --format", path.display()),
        }
    }
}

#[derive(Serialize)]
struct RouteFileOut<'a> {
    pigeons: &'a [PigeonSpec],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFileIn {
    #[serde(default)]
    pigeons: Vec<serde_json::Value>,
}

/// Every pigeon, following the pages.
pub async fn fetch_all(client: &Client) -> anyhow::Result<Vec<PigeonView>> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/pigeons?limit=500&cursor={c}"),
            None => "/pigeons?limit=500".into(),
        };
        let page: Page<PigeonView> = client.call(Method::GET, &path, None::<&()>).await?;
        all.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

/// `routes list`: one line per pigeon.
pub async fn list(client: &Client) -> anyhow::Result<String> {
    let mut out = format!(
        "{:<28} {:<11} {:>7}  {:<20} {:<16} {}\n",
        "ID", "STATE", "VERSION", "TOPIC", "TAG", "DESTINATIONS"
    );
    for p in fetch_all(client).await? {
        let destinations: Vec<String> = p
            .spec
            .destinations
            .iter()
            .map(|d| match (&d.capability, &d.topic, &d.tag) {
                (Some(c), _, _) => c.clone(),
                (None, Some(t), Some(tag)) => format!("{t}#{tag}"),
                _ => "?".into(),
            })
            .collect();
        out.push_str(&format!(
            "{:<28} {:<11} {:>7}  {:<20} {:<16} {}\n",
            p.spec.id,
            p.state.as_str(),
            p.version,
            p.spec.matcher.topic,
            p.spec.matcher.tag,
            match p.spec.action {
                pigeon_bus::route::Action::Archive => "(archive)".to_owned(),
                _ => destinations.join(", "),
            }
        ));
    }
    Ok(out)
}

/// Renders pigeons as a route file.
pub fn render(pigeons: &[PigeonSpec], format: Format) -> anyhow::Result<String> {
    let file = RouteFileOut { pigeons };
    Ok(match format {
        Format::Yaml => serde_yaml::to_string(&file)?,
        Format::Toml => toml::to_string_pretty(&file)?,
    })
}

/// Reads a route file into raw pigeons (the API validates them).
pub fn parse(text: &str, format: Format) -> anyhow::Result<Vec<serde_json::Value>> {
    let file: RouteFileIn = match format {
        Format::Yaml => serde_yaml::from_str(text)?,
        Format::Toml => toml::from_str(text)?,
    };
    Ok(file.pigeons)
}

/// `routes export`.
pub async fn export(client: &Client, format: Format) -> anyhow::Result<String> {
    let specs: Vec<PigeonSpec> = fetch_all(client).await?.into_iter().map(|p| p.spec).collect();
    render(&specs, format)
}

/// `routes apply`: prints the diff, then applies it (unless `dry_run`). Returns the report.
pub async fn apply(
    client: &Client,
    path: &Path,
    format: Option<Format>,
    dry_run: bool,
    prune: bool,
    force: bool,
) -> anyhow::Result<String> {
    let format = match format {
        Some(f) => f,
        None => Format::of(path)?,
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pigeons = parse(&text, format).with_context(|| format!("{} is not a route file", path.display()))?;
    let request = serde_json::json!({ "pigeons": pigeons, "prune": prune, "dry_run": true });
    let diff: ApplyResponse = client.call(Method::POST, "/pigeons/apply", Some(&request)).await?;
    let mut out = describe(&diff);
    for warning in &diff.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    let changes = diff.changes.iter().filter(|c| c.change != Change::Unchanged).count();
    if changes == 0 {
        out.push_str("nothing to change\n");
        return Ok(out);
    }
    if dry_run {
        out.push_str(&format!("dry run: {changes} change(s) not applied\n"));
        return Ok(out);
    }
    let request = serde_json::json!({ "pigeons": pigeons, "prune": prune, "dry_run": false, "force": force });
    let done: ApplyResponse = client.call(Method::POST, "/pigeons/apply", Some(&request)).await?;
    if force {
        for warning in done.warnings.iter().filter(|w| w.starts_with("forced: ")) {
            out.push_str(&format!("{warning}\n"));
        }
    }
    let applied = done.changes.iter().filter(|c| c.change != Change::Unchanged).count();
    out.push_str(&format!("applied {applied} change(s)\n"));
    Ok(out)
}

fn describe(diff: &ApplyResponse) -> String {
    let mut out = String::new();
    for c in &diff.changes {
        let (mark, what) = match c.change {
            Change::Create => ("+", "create".to_owned()),
            Change::Update => ("~", format!("update (from version {})", c.from_version.unwrap_or_default())),
            Change::Delete => ("-", "delete".to_owned()),
            Change::Unchanged => ("=", "unchanged".to_owned()),
        };
        out.push_str(&format!("{mark} {:<28} {what}\n", c.id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_bus::route::{DestinationSpec, MatchSpec};

    #[test]
    fn route_files_round_trip_in_both_formats() {
        let pigeons = vec![
            PigeonSpec {
                id: "gift".into(),
                name: "Gifts".into(),
                owner: "spring".into(),
                enabled: false,
                action: Default::default(),
                script: None,
                matcher: MatchSpec::new("live.gift", "gift.*"),
                destinations: vec![
                    DestinationSpec::capability("act-toy/progress.add"),
                    DestinationSpec::topic("lane", "x"),
                ],
                retry: None,
                window: None,
                dictionary: Default::default(),
            },
            PigeonSpec {
                id: "view".into(),
                name: String::new(),
                owner: String::new(),
                enabled: true,
                action: Default::default(),
                script: None,
                matcher: MatchSpec::new("live.view", "**"),
                destinations: vec![DestinationSpec::capability("m/c")],
                retry: None,
                window: None,
                dictionary: Default::default(),
            },
        ];
        for format in [Format::Yaml, Format::Toml] {
            let text = render(&pigeons, format).unwrap();
            let back: Vec<PigeonSpec> = parse(&text, format)
                .unwrap()
                .into_iter()
                .map(|v| serde_json::from_value(v).unwrap())
                .collect();
            assert_eq!(back, pigeons, "{format:?}:\n{text}");
        }
        assert!(parse("pigeon = []", Format::Toml).is_err(), "a misspelt list is refused");
        assert_eq!(Format::of(Path::new("r.yml")).unwrap(), Format::Yaml);
        assert!(Format::of(Path::new("r.json")).is_err());
    }
}
