//! The stepped retry schedule: how long a dead letter waits before each next attempt.

use std::time::Duration;

/// Delays after the 1st, 2nd, … failed attempt; parked after the last.
pub const DEFAULT_STEPS: [Duration; 8] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(2 * 60 * 60),
];

/// The shortest step a pigeon may set.
pub const MIN_STEP: Duration = Duration::from_millis(100);
/// The longest step a pigeon may set.
pub const MAX_STEP: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The most steps a pigeon may set.
pub const MAX_STEPS: usize = 32;

/// A pigeon's retry schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    steps: Vec<Duration>,
}

impl Default for Schedule {
    fn default() -> Self {
        Self { steps: DEFAULT_STEPS.to_vec() }
    }
}

impl Schedule {
    /// Reads steps written as `"10s"`, `"5m"`, `"1h 30m"`; `None` is the default schedule and
    /// an empty list parks a failed letter at once.
    pub fn parse(steps: Option<&[String]>) -> Result<Self, String> {
        let Some(steps) = steps else { return Ok(Self::default()) };
        if steps.len() > MAX_STEPS {
            return Err(format!("{} steps, more than the limit of {MAX_STEPS}", steps.len()));
        }
        let steps = steps
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let step =
                    humantime::parse_duration(text).map_err(|e| format!("retry[{i}] {text:?}: {e}"))?;
                if !(MIN_STEP..=MAX_STEP).contains(&step) {
                    return Err(format!("retry[{i}] {text:?}: a step is 100ms to 7 days"));
                }
                Ok(step)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { steps })
    }

    /// How long to wait after `attempts` failed attempts, or `None` when the letter is to be
    /// parked (the schedule is used up).
    pub fn after(&self, attempts: i32) -> Option<Duration> {
        let index = usize::try_from(attempts.max(1) - 1).ok()?;
        self.steps.get(index).copied()
    }

    /// The steps.
    pub fn steps(&self) -> &[Duration] {
        &self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_steps_from_ten_seconds_to_two_hours_then_park() {
        let schedule = Schedule::default();
        let delays: Vec<u64> = (1..=8).map(|n| schedule.after(n).unwrap().as_secs()).collect();
        assert_eq!(delays, [10, 30, 60, 300, 600, 1800, 3600, 7200]);
        assert_eq!(schedule.after(9), None, "parked after the last step");
    }

    #[test]
    fn a_pigeon_sets_its_own_steps() {
        let steps = ["500ms".to_owned(), "2s".to_owned(), "1h 30m".to_owned()];
        let schedule = Schedule::parse(Some(&steps)).unwrap();
        assert_eq!(schedule.after(1), Some(Duration::from_millis(500)));
        assert_eq!(schedule.after(3), Some(Duration::from_secs(5400)));
        assert_eq!(schedule.after(4), None);
        assert_eq!(Schedule::parse(Some(&[])).unwrap().after(1), None, "no steps: parked at once");
    }

    #[test]
    fn bad_steps_are_named() {
        let err = Schedule::parse(Some(&["10s".into(), "soon".into()])).unwrap_err();
        assert!(err.contains("retry[1] \"soon\""), "{err}");
        let err = Schedule::parse(Some(&["1ms".into()])).unwrap_err();
        assert!(err.contains("100ms to 7 days"), "{err}");
        let many = vec!["1s".to_owned(); MAX_STEPS + 1];
        assert!(Schedule::parse(Some(&many)).unwrap_err().contains("limit of 32"));
    }
}
