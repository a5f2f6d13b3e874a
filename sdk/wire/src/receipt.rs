//! What a module says on `pigeon.receipts` each time one of its handlers finishes a letter:
//! which letter, who handled it, how it went and how long it took. Receipts are keyed by letter
//! id, so one letter's receipts share a partition. The bus keeps a sample of them and per-minute
//! totals per capability; a receipt is never needed for a letter to be delivered.

use serde::{Deserialize, Serialize};

/// The topic receipts go to.
pub const TOPIC: &str = crate::RECEIPTS;

/// The longest text a receipt's fields may hold (ids, names, an error); longer ones are cut.
pub const MAX_FIELD: usize = 200;
/// The longest error a receipt carries.
pub const MAX_ERROR: usize = 1_000;

/// How a handler finished a letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The handler returned success (possibly after retries).
    Handled,
    /// The handler failed every try; the letter was reported to `pigeon.failed`.
    Failed,
}

impl Outcome {
    /// Its name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Failed => "failed",
        }
    }

    /// The outcome a stored name stands for.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "handled" => Some(Outcome::Handled),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// One handler's finish of one letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The letter's id (`ce_id`).
    pub letter_id: String,
    /// The module that handled it.
    pub module: String,
    /// The module instance that handled it.
    pub instance: String,
    /// The capability (the letter's tag) whose handler ran.
    pub capability: String,
    pub outcome: Outcome,
    /// From the letter reaching the handler to its last try's end, retries included.
    pub duration_us: u64,
    /// Tries the handler took.
    pub attempts: u32,
    /// When the handler finished (unix ms).
    pub at_ms: i64,
    /// The pigeon that carried the letter (`ce_pigeon`), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pigeon: Option<String>,
    /// The last error, for a failed letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Receipt {
    /// The receipt with every text field cut to what the bus keeps ([`MAX_FIELD`],
    /// [`MAX_ERROR`] for the error), at character boundaries.
    pub fn bounded(mut self) -> Self {
        for field in [&mut self.letter_id, &mut self.module, &mut self.instance, &mut self.capability] {
            cut(field, MAX_FIELD);
        }
        if let Some(pigeon) = &mut self.pigeon {
            cut(pigeon, MAX_FIELD);
        }
        if let Some(error) = &mut self.error {
            cut(error, MAX_ERROR);
        }
        self
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let end = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt() -> Receipt {
        Receipt {
            letter_id: "0190a8f0-0000-7000-8000-000000000001".into(),
            module: "act-toy".into(),
            instance: "host-1".into(),
            capability: "progress.add".into(),
            outcome: Outcome::Handled,
            duration_us: 1_250,
            attempts: 1,
            at_ms: 1_700_000_000_000,
            pigeon: Some("gifts".into()),
            error: None,
        }
    }

    #[test]
    fn a_receipt_reads_back_from_its_json() {
        let text = serde_json::to_string(&receipt()).unwrap();
        assert!(text.contains(r#""outcome":"handled""#), "{text}");
        assert!(!text.contains("error"), "no error field on a handled letter: {text}");
        assert_eq!(serde_json::from_str::<Receipt>(&text).unwrap(), receipt());
        for outcome in [Outcome::Handled, Outcome::Failed] {
            assert_eq!(Outcome::parse(outcome.as_str()), Some(outcome));
        }
        assert_eq!(Outcome::parse("lost"), None);
    }

    #[test]
    fn long_fields_are_cut_at_character_boundaries() {
        let mut long = receipt();
        long.module = "é".repeat(MAX_FIELD);
        long.error = Some("x".repeat(MAX_ERROR * 2));
        let bounded = long.bounded();
        assert!(bounded.module.len() <= MAX_FIELD && bounded.module.chars().all(|c| c == 'é'));
        assert_eq!(bounded.module.len(), MAX_FIELD);
        assert_eq!(bounded.error.map(|e| e.len()), Some(MAX_ERROR));
    }
}
