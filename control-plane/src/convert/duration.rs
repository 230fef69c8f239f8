//! Gateway API durations (GEP-2257): `^([0-9]{1,5}(h|m|s|ms)){1,4}$` — one to four groups of
//! one to five digits and a unit, summed: `1h30m`, `250ms`, `0s`. No signs, fractions,
//! spaces or other units.

use std::time::Duration;

const FORMAT: &str =
    "expected 1 to 4 groups of up to 5 digits and a unit (h, m, s or ms), like \"1h30m\" or \"250ms\"";

/// Gateway API duration: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`, e.g. "1h30m", "250ms", "0s".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = |why: &str| Err(format!("invalid duration {text:?}: {why}"));
    if text.is_empty() {
        return invalid(FORMAT);
    }
    let bytes = text.as_bytes();
    let mut at = 0;
    let mut groups = 0;
    let mut total = Duration::ZERO;
    while at < bytes.len() {
        groups += 1;
        if groups > 4 {
            return invalid("more than 4 groups");
        }
        let digits = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            return invalid(FORMAT);
        }
        if digits > 5 {
            return invalid("more than 5 digits in a group");
        }
        // At most 5 ASCII digits: always fits.
        let value: u64 = text[at..at + digits].parse().expect("digits");
        at += digits;
        let rest = &bytes[at..];
        let (unit_ms, unit_len) = if rest.starts_with(b"ms") {
            (1, 2)
        } else if rest.starts_with(b"h") {
            (3_600_000, 1)
        } else if rest.starts_with(b"m") {
            (60_000, 1)
        } else if rest.starts_with(b"s") {
            (1_000, 1)
        } else {
            return invalid(FORMAT);
        };
        at += unit_len;
        total += Duration::from_millis(value * unit_ms);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_durations() {
        let ms = |text| parse_duration(text).unwrap().as_millis();
        assert_eq!(ms("0s"), 0);
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("2s"), 2_000);
        assert_eq!(ms("1m"), 60_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("1h1m1s1ms"), 3_661_001);
        assert_eq!(ms("00001s"), 1_000);
        assert_eq!(ms("99999h"), 99_999 * 3_600_000);
        // The grammar allows repeating a unit; the groups add up.
        assert_eq!(ms("1s500ms"), 1_500);
        assert_eq!(ms("1m1m"), 120_000);
    }

    #[test]
    fn invalid_durations() {
        for (text, why) in [
            ("", FORMAT),
            ("1", FORMAT),
            ("s", FORMAT),
            ("1.5s", FORMAT),
            ("-1s", FORMAT),
            ("+1s", FORMAT),
            ("1 s", FORMAT),
            (" 1s", FORMAT),
            ("1s ", FORMAT),
            ("1d", FORMAT),
            ("1us", FORMAT),
            ("1S", FORMAT),
            ("1H", FORMAT),
            ("1hh", FORMAT),
            ("1ms2", FORMAT),
            ("100000s", "more than 5 digits in a group"),
            ("1h1m1s1ms1ms", "more than 4 groups"),
        ] {
            assert_eq!(
                parse_duration(text),
                Err(format!("invalid duration {text:?}: {why}")),
                "{text:?}"
            );
        }
    }
}
