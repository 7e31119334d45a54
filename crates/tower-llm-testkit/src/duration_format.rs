//! Durations in plan files, written the one way every tower-llm crate reads them
//! ([`tower_llm_core::parse_duration`]: `"250ms"`, `"2s"`, `"1m 30s"`), and the duration
//! formats the mock writes into provider headers.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

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
    serializer.collect_str(&tower_llm_core::format_duration(*duration))
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
        f.write_str(r#"a duration with its unit, such as "250ms", "2s" or "1m 30s""#)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        tower_llm_core::parse_duration("fault plan", "duration", text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Plan {
        #[serde(with = "super")]
        after: Duration,
    }

    #[test]
    fn plan_durations_are_written_with_their_unit() {
        let read = |text: &str| serde_json::from_str::<Plan>(text).map(|p| p.after);
        assert_eq!(
            read(r#"{"after": "250ms"}"#).ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            read(r#"{"after": "1m 30s"}"#).ok(),
            Some(Duration::from_secs(90))
        );
        for bare in [
            r#"{"after": "40"}"#,
            r#"{"after": 40}"#,
            r#"{"after": "soon"}"#,
        ] {
            let err = read(bare).expect_err(bare).to_string();
            assert!(err.contains("duration"), "{err}");
        }
        for d in [1, 250, 1000, 1500, 60_000, 90_250] {
            let plan = Plan {
                after: Duration::from_millis(d),
            };
            let text = serde_json::to_string(&plan).expect("serializes");
            assert_eq!(read(&text).ok(), Some(plan.after), "{text}");
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
