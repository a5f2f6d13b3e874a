//! Tag patterns.
//!
//! A tag is a dot-separated name (`gift.sent`, `task.completed`). A pattern is a tag whose
//! segments may be wildcards:
//!
//! | pattern      | matches                                   | does not match          |
//! |--------------|-------------------------------------------|-------------------------|
//! | `gift.sent`  | `gift.sent`                               | `gift.sent.combo`       |
//! | `gift.*`     | `gift.sent`, `gift.combo`                 | `gift`, `gift.a.b`      |
//! | `*.sent`     | `gift.sent`, `like.sent`                  | `gift.sent.x`           |
//! | `gift.**`    | `gift.sent`, `gift.combo.end`             | `gift`                  |
//! | `**`         | every tag                                 |                         |
//!
//! `*` stands for exactly one segment; `**` for one or more, and only as the last segment.
//! A pattern without wildcards is an exact tag, looked up by hash.

use std::fmt;

/// A compiled tag pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagPattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

impl TagPattern {
    /// Parses a pattern, explaining what is wrong with an invalid one.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("tag pattern is empty".into());
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "" => return Err(format!("tag pattern {text:?} has an empty segment")),
                "*" => Segment::One,
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err(format!("tag pattern {text:?}: `**` may only be the last segment")),
                p if p.contains('*') => {
                    return Err(format!("tag pattern {text:?}: `*` must be a whole segment"))
                }
                p if !p.chars().all(is_tag_char) => {
                    return Err(format!("tag pattern {text:?}: segments use letters, digits, `_` and `-`"))
                }
                p => Segment::Literal(p.to_owned()),
            };
            segments.push(segment);
        }
        Ok(Self { text: text.to_owned(), segments })
    }

    /// The exact tag, when the pattern has no wildcard.
    pub fn as_exact(&self) -> Option<&str> {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_))).then_some(self.text.as_str())
    }

    /// The first segment, when it is literal (`gift` of `gift.*`; none for `*.sent`).
    pub fn first_literal(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Literal(first)) => Some(first),
            _ => None,
        }
    }

    /// Whether `tag` matches.
    pub fn matches(&self, tag: &str) -> bool {
        let mut parts = tag.split('.');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return parts.next().is_some_and(|p| !p.is_empty()),
                Segment::One => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if p == lit => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Characters allowed in a tag segment.
pub fn is_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Checks a concrete tag (a destination tag, say).
pub fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("tag is empty".into());
    }
    if tag.split('.').any(|s| s.is_empty() || !s.chars().all(is_tag_char)) {
        return Err(format!("tag {tag:?} must be dot-separated segments of letters, digits, `_` and `-`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_the_documented_table() {
        let cases = [
            ("gift.sent", "gift.sent", true),
            ("gift.sent", "gift.sent.combo", false),
            ("gift.sent", "gift", false),
            ("gift.*", "gift.sent", true),
            ("gift.*", "gift.combo", true),
            ("gift.*", "gift", false),
            ("gift.*", "gift.a.b", false),
            ("gift.*", "gifts.sent", false),
            ("*.sent", "gift.sent", true),
            ("*.sent", "gift.sent.x", false),
            ("gift.**", "gift.sent", true),
            ("gift.**", "gift.combo.end", true),
            ("gift.**", "gift", false),
            ("**", "anything.at.all", true),
            ("**", "x", true),
            ("*", "x", true),
            ("*", "x.y", false),
        ];
        for (pattern, tag, expected) in cases {
            let p = TagPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(tag), expected, "{pattern} vs {tag}");
        }
    }

    #[test]
    fn exact_patterns_are_recognised() {
        assert_eq!(TagPattern::parse("gift.sent").unwrap().as_exact(), Some("gift.sent"));
        assert_eq!(TagPattern::parse("gift.*").unwrap().as_exact(), None);
    }

    #[test]
    fn invalid_patterns_are_explained() {
        for (pattern, reason) in [
            ("", "empty"),
            ("gift..sent", "empty segment"),
            ("gift.s*", "whole segment"),
            ("**.sent", "last segment"),
            ("gift sent", "letters, digits"),
        ] {
            let err = TagPattern::parse(pattern).unwrap_err();
            assert!(err.contains(reason), "{pattern:?}: {err}");
        }
    }
}
