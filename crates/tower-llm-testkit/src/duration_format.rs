//! Durations in plan files: `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`, or a number of
//! milliseconds.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Parses `"250ms"`, `"2s"`, `"1.5s"`, `"3m"`, `"1h"`, `"500us"` or a bare number of
/// milliseconds.
pub(crate) fn parse(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Formats a duration the way [`parse`] reads it back, in the largest exact unit.
pub(crate) fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if !nanos.is_multiple_of(1_000_000) {
        return format!("{}us", duration.as_micros());
    }
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1000) {
        format!("{millis}ms")
    } else {
        format!("{}s", millis / 1000)
    }
}

/// `duration` in whole seconds, rounded up.
pub(crate) fn whole_seconds(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// OpenAI's rate-limit reset format: `"120ms"`, `"1s"`, `"1.5s"`, `"6m0s"`, `"1h2m3s"`.
pub(crate) fn openai(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let hours = millis / 3_600_000;
    let minutes = (millis / 60_000) % 60;
    let rest_ms = millis % 60_000;
    let seconds = if rest_ms.is_multiple_of(1000) {
        format!("{}s", rest_ms / 1000)
    } else {
        let text = format!("{:.3}", rest_ms as f64 / 1000.0);
        format!("{}s", text.trim_end_matches('0'))
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// `at` as an RFC 3339 UTC timestamp with whole seconds, as Anthropic's rate-limit headers
/// write it: `"2026-11-23T20:31:07Z"`.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        (of_day / 60) % 60,
        of_day % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub(crate) fn serialize<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*duration))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a duration such as "250ms", "2s", "1m" or a number of milliseconds"#)
    }

    fn visit_u64<E: de::Error>(self, millis: u64) -> Result<Duration, E> {
        Ok(Duration::from_millis(millis))
    }

    fn visit_i64<E: de::Error>(self, millis: i64) -> Result<Duration, E> {
        u64::try_from(millis)
            .map(Duration::from_millis)
            .map_err(|_| E::custom("a duration cannot be negative"))
    }

    fn visit_f64<E: de::Error>(self, millis: f64) -> Result<Duration, E> {
        Duration::try_from_secs_f64(millis / 1e3).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).ok_or_else(|| E::custom(format!("not a duration: {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse("40"), Some(Duration::from_millis(40)));
        assert_eq!(parse("soon"), None);
        assert_eq!(parse("-1s"), None);
        assert_eq!(parse("2 weeks"), None);
        for d in [1, 250, 1000, 1500, 60_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse(&format(d)), Some(d));
        }
    }

    #[test]
    fn openai_reset_format() {
        assert_eq!(openai(Duration::from_millis(120)), "120ms");
        assert_eq!(openai(Duration::from_secs(1)), "1s");
        assert_eq!(openai(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai(Duration::from_secs(3723)), "1h2m3s");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(at), "2023-11-14T22:13:20Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
