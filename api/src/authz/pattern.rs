//! The string patterns of policy fields: `*` (anything), `x` (exactly `x`), `x*` (starts
//! with `x`) and `*x` (ends with `x`).

use std::fmt;
use std::str::FromStr;

/// A parsed policy pattern. Matching is byte-wise and case-sensitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: any value, including an empty one. (An absent value — no caller identity, no
    /// such header — matches no pattern; that is decided by the caller of `matches`.)
    Any,
    /// `x`: exactly `x`.
    Exact(String),
    /// `x*`: starts with `x` (and `x` itself matches).
    Prefix(String),
    /// `*x`: ends with `x` (and `x` itself matches).
    Suffix(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a pattern must not be empty")]
    Empty,
    #[error(
        "`*` may only be the whole pattern, its first character or its last character \
         (patterns are exact, \"prefix*\", \"*suffix\" or \"*\")"
    )]
    Wildcard,
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text == "*" {
            return Ok(Pattern::Any);
        }
        let (pattern, rest) = if let Some(prefix) = text.strip_suffix('*') {
            (Pattern::Prefix(prefix.to_owned()), prefix)
        } else if let Some(suffix) = text.strip_prefix('*') {
            (Pattern::Suffix(suffix.to_owned()), suffix)
        } else {
            (Pattern::Exact(text.to_owned()), text)
        };
        // Catches "**", "*a*", "a*b".
        if rest.contains('*') {
            return Err(PatternError::Wildcard);
        }
        Ok(pattern)
    }
}

impl Pattern {
    pub fn matches(&self, value: &str) -> bool {
        self.matches_bytes(value.as_bytes())
    }

    /// Header values need not be UTF-8 (obs-text); they are matched as bytes so that a DENY
    /// on `"evil*"` still matches `evil\xff`.
    pub(crate) fn matches_bytes(&self, value: &[u8]) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(x) => value == x.as_bytes(),
            Pattern::Prefix(x) => value.starts_with(x.as_bytes()),
            Pattern::Suffix(x) => value.ends_with(x.as_bytes()),
        }
    }
}

impl fmt::Display for Pattern {
    /// The pattern as written: parsing the output gives the same pattern.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Exact(x) => f.write_str(x),
            Pattern::Prefix(x) => write!(f, "{x}*"),
            Pattern::Suffix(x) => write!(f, "*{x}"),
        }
    }
}

/// A positive list (`principals`, `paths`, `values`, ...): empty, or the value is present and
/// some pattern matches it.
pub(crate) fn any_matches(list: &[Pattern], value: Option<&[u8]>) -> bool {
    list.is_empty() || value.is_some_and(|v| list.iter().any(|p| p.matches_bytes(v)))
}

/// A `not_` list: empty, or the value is absent, or no pattern matches it.
pub(crate) fn none_matches(list: &[Pattern], value: Option<&[u8]>) -> bool {
    match value {
        _ if list.is_empty() => true,
        None => true,
        Some(v) => !list.iter().any(|p| p.matches_bytes(v)),
    }
}
