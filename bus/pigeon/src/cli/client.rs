//! A small client of the admin API for the CLI.

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where the API is and how to get in.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the bus at `url` (e.g. `http://127.0.0.1:7800`).
    pub fn new(url: &str, token: &str) -> anyhow::Result<Self> {
        if token.trim().is_empty() {
            bail!("no token: pass --token or set PIGEON_TOKEN");
        }
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build()?;
        Ok(Self { base: url.trim_end_matches('/').to_owned(), token: token.trim().to_owned(), http })
    }

    /// Sends a request to `/api/v1{path}`; an API error becomes a readable message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response =
            request.send().await.with_context(|| format!("cannot reach the bus at {}", self.base))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            bail!("{method} {path}: {}", describe_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: unexpected answer"))
    }
}

fn describe_error(status: StatusCode, body: &[u8]) -> String {
    let Ok(error) = serde_json::from_slice::<serde_json::Value>(body) else {
        return format!("{status}");
    };
    let mut text = format!("{} ({status})", error["message"].as_str().unwrap_or("error"));
    for detail in error["details"].as_array().into_iter().flatten() {
        text.push_str(&format!("\n  - {}", detail.as_str().unwrap_or_default()));
    }
    text
}

/// `text` as one URL path segment or query value: every byte but the unreserved ones
/// percent-encoded.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
