//! Go-style durations (`30s`, `10m`, `1h30m`, `500ms`, `0`) as written in `spec.dualWrite.soak`.
//!
//! The CRD checks the shape with `DURATION_PATTERN` (a CEL `matches`), so the API server rejects a bad
//! value with a readable message; [`parse_duration`] is what the planner uses to read it.

use std::time::Duration;

/// RE2 pattern accepted by the CRD: `0`, or one or more `<digits><unit>` with unit `h`, `m`, `s` or `ms`.
#[cfg(test)]
pub(crate) const DURATION_PATTERN: &str = "^(0|([0-9]+(h|ms|m|s))+)$";

/// A duration string that does not have the accepted shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected e.g. 30s, 10m, 1h30m or 500ms ({why})")]
pub struct DurationError {
    /// The text that did not parse.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Parse a Go-style duration restricted to whole numbers of `h`, `m`, `s`, `ms`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        input: input.to_string(),
        why,
    };
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    if input.is_empty() {
        return Err(err("empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = input;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err("a number must come before each unit"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(err("unit must be one of h, m, s, ms"));
        };
        rest = &rest[len..];
        let part = unit
            .checked_mul(u32::try_from(n).map_err(|_| err("number too large"))?)
            .ok_or_else(|| err("too long"))?;
        total = total.checked_add(part).ok_or_else(|| err("too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_rule_on_the_soak_holds_this_pattern() {
        let crd = <crate::crd::Dedup2DRollout as kube::CustomResourceExt>::crd();
        let text = serde_json::to_string(&crd).unwrap();
        assert!(
            text.contains(DURATION_PATTERN),
            "the CEL rule lost {DURATION_PATTERN}"
        );
    }

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m500ms"), Ok(Duration::from_millis(60_500)));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "10", "m", "1.5h", "10 m", "-1s", "1d", "1h-2m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
