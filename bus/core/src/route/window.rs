//! Live windows: when a pigeon flies, judged by each letter's own timestamp.
//!
//! A window has an optional start and an optional end (or a TTL, counted from the start, or
//! from when the pigeon version was saved when it has no start). A letter flies when its
//! timestamp is inside `[start, end)`, so a late letter of the window still flies and the
//! outcome does not depend on when the router reads it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A live window as written: RFC 3339 times and a humantime TTL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// First instant a letter may carry to fly (RFC 3339, e.g. `2026-12-01T20:00:00+08:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// The instant from which letters no longer fly (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Instead of `end`: how long the pigeon lives (`"7d"`, `"36h"`) from `start`, or from
    /// when this version was saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// A compiled window in unix milliseconds: letters with `start <= time < end` fly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First millisecond inside (`i64::MIN`: open).
    pub start: i64,
    /// First millisecond after (`i64::MAX`: open).
    pub end: i64,
}

/// Where a pigeon stands in its window at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Its start is still ahead.
    Scheduled,
    /// Inside its window (or it has none).
    Live,
    /// Its end has passed.
    Ended,
}

impl Phase {
    /// The name operators read.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Scheduled => "scheduled",
            Phase::Live => "live",
            Phase::Ended => "ended",
        }
    }
}

impl Window {
    /// Compiles a window; `saved_at` (unix ms) anchors a TTL without a start. Every problem
    /// at once.
    pub fn compile(spec: &WindowSpec, saved_at: i64) -> Result<Window, Vec<String>> {
        let mut problems = Vec::new();
        let mut instant = |name: &str, value: &Option<String>| {
            value.as_deref().and_then(|text| match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(t) => Some(t.timestamp_millis()),
                Err(e) => {
                    problems.push(format!("window.{name}: {text:?} is not an RFC 3339 time ({e})"));
                    None
                }
            })
        };
        let start = instant("start", &spec.start);
        let mut end = instant("end", &spec.end);
        if let Some(ttl) = &spec.ttl {
            if spec.end.is_some() {
                problems.push("window: set end or ttl, not both".into());
            }
            match humantime::parse_duration(ttl) {
                Ok(d) if d.is_zero() => problems.push("window.ttl must be longer than zero".into()),
                Ok(d) => {
                    let from = start.unwrap_or(saved_at);
                    end = Some(from.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
                }
                Err(e) => problems.push(format!("window.ttl: {ttl:?} is not a duration ({e})")),
            }
        }
        let window = Window { start: start.unwrap_or(i64::MIN), end: end.unwrap_or(i64::MAX) };
        if window.start >= window.end {
            problems.push("window: end must be after start".into());
        }
        if problems.is_empty() {
            Ok(window)
        } else {
            Err(problems)
        }
    }

    /// Whether a letter with this timestamp flies.
    pub fn contains(&self, time_ms: i64) -> bool {
        self.start <= time_ms && time_ms < self.end
    }

    /// Where the window stands at `now_ms`.
    pub fn phase(&self, now_ms: i64) -> Phase {
        if now_ms < self.start {
            Phase::Scheduled
        } else if now_ms < self.end {
            Phase::Live
        } else {
            Phase::Ended
        }
    }

    /// Whether the router consumes for it at `now_ms`: from `lead_ms` before its start (so the
    /// subscription is up when the first letter comes) until `grace_ms` after its end (so
    /// late letters of the window still fly).
    pub fn consumed_at(&self, now_ms: i64, lead_ms: i64, grace_ms: i64) -> bool {
        self.start.saturating_sub(lead_ms) <= now_ms && now_ms < self.end.saturating_add(grace_ms)
    }

    /// The next instant after `now_ms` at which [`Window::consumed_at`] or the
    /// [`Window::phase`] changes, if any.
    pub fn next_change(&self, now_ms: i64, lead_ms: i64, grace_ms: i64) -> Option<i64> {
        [self.start.saturating_sub(lead_ms), self.start, self.end, self.end.saturating_add(grace_ms)]
            .into_iter()
            .filter(|&t| t > now_ms && t != i64::MAX && t != i64::MIN)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(start: Option<&str>, end: Option<&str>, ttl: Option<&str>) -> WindowSpec {
        WindowSpec { start: start.map(Into::into), end: end.map(Into::into), ttl: ttl.map(Into::into) }
    }

    const T0: i64 = 1_764_590_400_000; // 2025-12-01T12:00:00Z

    #[test]
    fn windows_compile_from_times_or_a_ttl() {
        let cases = [
            (spec(Some("2025-12-01T12:00:00Z"), Some("2025-12-01T13:00:00Z"), None), T0, T0 + 3_600_000),
            (spec(Some("2025-12-01T20:00:00+08:00"), None, Some("1h")), T0, T0 + 3_600_000),
            (spec(None, None, Some("2h")), i64::MIN, 42 + 7_200_000),
            (spec(None, Some("2025-12-01T12:00:00Z"), None), i64::MIN, T0),
            (spec(Some("2025-12-01T12:00:00Z"), None, None), T0, i64::MAX),
        ];
        for (spec, start, end) in cases {
            assert_eq!(Window::compile(&spec, 42), Ok(Window { start, end }), "{spec:?}");
        }
    }

    #[test]
    fn bad_windows_say_everything_wrong_with_them() {
        let problems = Window::compile(&spec(Some("tomorrow"), Some("noon"), Some("soon")), 0).unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "window.start: \"tomorrow\" is not an RFC 3339 time",
            "window.end: \"noon\" is not an RFC 3339 time",
            "window: set end or ttl, not both",
            "window.ttl: \"soon\" is not a duration",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let backwards = spec(Some("2025-12-01T13:00:00Z"), Some("2025-12-01T12:00:00Z"), None);
        assert_eq!(Window::compile(&backwards, 0).unwrap_err(), ["window: end must be after start"]);
        assert_eq!(Window::compile(&spec(None, None, Some("0s")), 0).unwrap_err().len(), 1);
    }

    #[test]
    fn letters_are_judged_by_their_own_time() {
        let w = Window { start: 100, end: 200 };
        assert!(!w.contains(99) && w.contains(100) && w.contains(199) && !w.contains(200));
        assert_eq!([w.phase(50), w.phase(150), w.phase(250)], [Phase::Scheduled, Phase::Live, Phase::Ended]);
    }

    #[test]
    fn consumption_starts_before_the_window_and_outlasts_it() {
        let w = Window { start: 1_000, end: 2_000 };
        let consumed: Vec<bool> =
            [0, 899, 900, 1_500, 2_049, 2_050].iter().map(|&t| w.consumed_at(t, 100, 50)).collect();
        assert_eq!(consumed, [false, false, true, true, true, false]);
        assert_eq!(w.next_change(0, 100, 50), Some(900));
        assert_eq!(w.next_change(900, 100, 50), Some(1_000), "it goes live");
        assert_eq!(w.next_change(1_000, 100, 50), Some(2_000), "it ends");
        assert_eq!(w.next_change(2_000, 100, 50), Some(2_050));
        assert_eq!(w.next_change(2_050, 100, 50), None);
        let open = Window { start: i64::MIN, end: i64::MAX };
        assert!(open.consumed_at(0, 100, 50));
        assert_eq!(open.next_change(0, 100, 50), None);
    }
}
