//! What the overview shows: each pigeon's letters in, out and failed over a recent window
//! (summed over every instance, from the store's counter buckets), the dead-letter backlog,
//! and who the caller is.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{AsModule, AsViewer};
use super::error::{ApiError, ErrorBody};
use super::{ApiQuery, AppState};
use pigeon_bus::counters::{BucketCount, Tally, BUCKET_MS};
use pigeon_bus::deadletter::Status;
use pigeon_bus::store::now_ms;

/// The window of `/stats/pigeons`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct StatsQuery {
    /// How many minutes back, 1 to 1440 (default 60).
    pub minutes: Option<u32>,
}

/// The counts of one step of a series.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct StatsPoint {
    /// Start of the step (unix ms).
    pub at: i64,
    /// What was counted in it.
    #[serde(flatten)]
    pub tally: Tally,
}

/// One pigeon's counts over the window.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PigeonStats {
    /// The pigeon.
    pub pigeon_id: String,
    /// Its totals over the window.
    #[serde(flatten)]
    pub totals: Tally,
    /// Its counts per step, oldest first, every step present.
    pub series: Vec<StatsPoint>,
}

/// Every pigeon's counts over a window, summed over every instance.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsView {
    /// Start of the window (unix ms).
    pub from: i64,
    /// End of the window (unix ms, now).
    pub to: i64,
    /// The length of one step of the series.
    pub step_ms: i64,
    /// All pigeons together.
    pub totals: Tally,
    /// All pigeons together per step, oldest first.
    pub series: Vec<StatsPoint>,
    /// Each pigeon that counted anything, most letters in first.
    pub pigeons: Vec<PigeonStats>,
}

/// How many steps a series has.
const STEPS: i64 = 60;

/// Letters in (taken by the pigeon), out (delivered, by the router or a retry) and failures
/// (dead letters) per pigeon over the last `minutes`, cluster-wide, in 60 steps. Instances add
/// their counts to the store every 5 seconds.
#[utoipa::path(get, path = "/stats/pigeons", tag = "stats", params(StatsQuery),
    responses((status = 200, body = StatsView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn pigeons(
    _: AsViewer,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let minutes = match query.minutes.unwrap_or(60) {
        m @ 1..=1440 => i64::from(m),
        m => return Err(ApiError::bad_request(format!("minutes must be 1 to 1440, got {m}"))),
    };
    let to = now_ms();
    let window = Window::ending(to, minutes * 60_000);
    let buckets = state.store.counts_since(window.from).await?;
    Ok(Json(summarize(buckets, to, window)))
}

/// The steps of a series: whole buckets each, the last one holding now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    from: i64,
    end: i64,
    step_ms: i64,
    steps: i64,
}

impl Window {
    /// At most [`STEPS`] steps of whole buckets covering `span_ms` up to the bucket holding `to`.
    fn ending(to: i64, span_ms: i64) -> Self {
        let per_step = (span_ms / STEPS).max(1);
        let step_ms = ceil_div(per_step, BUCKET_MS) * BUCKET_MS;
        let steps = ceil_div(span_ms, step_ms).max(1);
        let end = pigeon_bus::counters::bucket_of(to) + BUCKET_MS;
        Self { from: end - steps * step_ms, end, step_ms, steps }
    }
}

/// `a / b` rounded up, for positive numbers.
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// Sums buckets into the window's steps.
fn summarize(buckets: Vec<BucketCount>, to: i64, window: Window) -> StatsView {
    let Window { from, end, step_ms, steps } = window;
    let empty =
        || (0..steps).map(|i| StatsPoint { at: from + i * step_ms, tally: Tally::default() }).collect();
    let mut series: Vec<StatsPoint> = empty();
    let mut per_pigeon: BTreeMap<String, Vec<StatsPoint>> = BTreeMap::new();
    for bucket in buckets.into_iter().filter(|b| b.bucket >= from && b.bucket < end) {
        let step = ((bucket.bucket - from) / step_ms) as usize;
        series[step].tally += bucket.tally;
        per_pigeon.entry(bucket.pigeon_id).or_insert_with(empty)[step].tally += bucket.tally;
    }
    let total = |points: &[StatsPoint]| {
        points.iter().fold(Tally::default(), |mut sum, p| {
            sum += p.tally;
            sum
        })
    };
    let mut pigeons: Vec<PigeonStats> = per_pigeon
        .into_iter()
        .map(|(pigeon_id, series)| PigeonStats { pigeon_id, totals: total(&series), series })
        .collect();
    pigeons.sort_by(|a, b| b.totals.letters_in.cmp(&a.totals.letters_in).then(a.pigeon_id.cmp(&b.pigeon_id)));
    StatsView { from, to, step_ms, totals: total(&series), series, pigeons }
}

/// The dead letters still waiting, by status.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Backlog {
    /// Waiting for their next retry.
    pub pending: u64,
    /// Being retried now.
    pub retrying: u64,
    /// Waiting for an operator.
    pub parked: u64,
}

/// How many dead letters wait: pending, retrying and parked (delivered and discarded ones,
/// kept for the record, are not counted).
#[utoipa::path(get, path = "/dead-letters/backlog", tag = "dead-letters",
    responses((status = 200, body = Backlog), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn backlog(_: AsViewer, State(state): State<AppState>) -> Result<Json<Backlog>, ApiError> {
    let mut backlog = Backlog::default();
    for (status, count) in state.store.dead_letter_backlog().await? {
        match status {
            Status::Pending => backlog.pending = count,
            Status::Retrying => backlog.retrying = count,
            Status::Parked => backlog.parked = count,
            Status::Delivered | Status::Discarded => {}
        }
    }
    Ok(Json(backlog))
}

/// The caller.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// The token's name: the actor in the audit log.
    pub name: String,
    /// The token's role: `module`, `viewer`, `operator` or `admin`.
    pub role: String,
}

/// Who the token belongs to and what it may do (the admin UI signs in with it).
#[utoipa::path(get, path = "/me", tag = "tokens",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn me(AsModule(caller): AsModule) -> Json<Me> {
    Json(Me { name: caller.name, role: caller.role.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(bucket: i64, pigeon: &str, letters_in: u64, failures: u64) -> BucketCount {
        BucketCount {
            bucket,
            pigeon_id: pigeon.into(),
            tally: Tally { letters_in, letters_out: letters_in * 2, failures },
        }
    }

    #[test]
    fn an_hour_is_sixty_minute_steps_ending_with_the_current_bucket() {
        let now_bucket = 1_000 * BUCKET_MS;
        let to = now_bucket + 5_000; // 5 s into the current bucket
        let window = Window::ending(to, 3_600_000);
        assert_eq!(
            window,
            Window { from: now_bucket - 59 * 60_000, end: now_bucket + 60_000, step_ms: 60_000, steps: 60 }
        );
        let view = summarize(
            vec![
                bucket(window.from - BUCKET_MS, "old", 9, 0), // before the window
                bucket(window.from, "a", 1, 0),               // the first step
                bucket(now_bucket, "a", 3, 1),                // the current bucket: the last step
                bucket(now_bucket, "b", 10, 0),
                bucket(now_bucket - 60_000, "b", 5, 2),
            ],
            to,
            window,
        );
        assert_eq!((view.from, view.step_ms, view.series.len()), (window.from, 60_000, 60));
        assert_eq!(
            view.totals,
            Tally { letters_in: 19, letters_out: 38, failures: 3 },
            "the old bucket is left out"
        );
        let ids: Vec<&str> = view.pigeons.iter().map(|p| p.pigeon_id.as_str()).collect();
        assert_eq!(ids, ["b", "a"], "most letters in first");
        let a = &view.pigeons[1];
        assert_eq!(a.series[0].tally.letters_in, 1);
        assert_eq!(a.series[59].tally, Tally { letters_in: 3, letters_out: 6, failures: 1 });
        assert_eq!(view.pigeons[0].series[58].tally.failures, 2);
        assert_eq!(view.series[59].tally.letters_in, 13, "both pigeons in the last step");
        assert!(view.series.windows(2).all(|w| w[1].at - w[0].at == 60_000));
    }

    #[test]
    fn every_window_is_whole_buckets_per_step() {
        for minutes in [1, 5, 10, 15, 59, 60, 61, 90, 600, 1439, 1440] {
            let span = minutes * 60_000;
            let w = Window::ending(7 * BUCKET_MS + 1, span);
            assert_eq!(w.step_ms % BUCKET_MS, 0, "{minutes} min: whole buckets per step");
            assert!(w.steps <= STEPS, "{minutes} min: at most {STEPS} steps");
            assert!(w.end - w.from >= span, "{minutes} min: the window covers the span");
            assert!(w.end - w.from < span + w.step_ms, "{minutes} min: by less than one step more");
        }
        assert_eq!(Window::ending(0, 15 * 60_000).steps, 15, "15 minutes: one-minute steps");
        assert_eq!(Window::ending(0, 1440 * 60_000).step_ms, 24 * 60_000, "a day: 24-minute steps");
    }
}
