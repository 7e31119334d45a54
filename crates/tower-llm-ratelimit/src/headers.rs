//! The providers' own rate-limit headers: what the server says is left and when it resets.
//!
//! | provider  | remaining                                   | reset                                       |
//! |-----------|---------------------------------------------|---------------------------------------------|
//! | OpenAI    | `x-ratelimit-remaining-requests` / `-tokens` | `x-ratelimit-reset-requests` / `-tokens`, a duration (`1s`, `6m0s`, `120ms`) |
//! | Anthropic | `anthropic-ratelimit-requests-remaining` / `-tokens-remaining` | `anthropic-ratelimit-requests-reset` / `-tokens-reset`, an RFC 3339 time |
//!
//! Parsing is defensive: a value that does not parse is ignored, never a panic.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

pub use tower_llm_core::RateLimitHeaders;

/// What the server said about one dimension (requests or tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerLimit {
    /// Units left before the reset.
    pub remaining: u64,
    /// How long until the server's budget resets.
    pub reset_in: Duration,
}

/// The server's rate-limit state, as read from one response's headers
/// ([`from_headers`](Self::from_headers)). More dimensions may be added (Anthropic counts
/// input and output tokens apart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerLimits {
    /// Requests left and when they reset.
    pub requests: Option<ServerLimit>,
    /// Tokens left and when they reset.
    pub tokens: Option<ServerLimit>,
}

impl ServerLimits {
    /// Reads OpenAI's and Anthropic's headers, with RFC 3339 times measured from `now`.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_llm_ratelimit::ServerLimits;
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
    /// headers.insert("x-ratelimit-reset-requests", "6m0s".parse().unwrap());
    /// headers.insert("x-ratelimit-remaining-tokens", "garbage".parse().unwrap());
    /// let limits = ServerLimits::from_headers(&headers, SystemTime::now());
    /// let requests = limits.requests.unwrap();
    /// assert_eq!(requests.remaining, 0);
    /// assert_eq!(requests.reset_in, Duration::from_secs(360));
    /// assert_eq!(limits.tokens, None);
    /// ```
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Self {
        // Static names: this runs on every response when adapting, so no formatting.
        let openai = |remaining: &str, reset: &str| {
            let remaining = header_u64(headers, remaining)?;
            let reset = header_str(headers, reset).and_then(parse_go_duration)?;
            Some(ServerLimit {
                remaining,
                reset_in: reset,
            })
        };
        let anthropic = |remaining: &str, reset: &str| {
            let remaining = header_u64(headers, remaining)?;
            let reset = header_str(headers, reset).and_then(parse_rfc3339)?;
            Some(ServerLimit {
                remaining,
                reset_in: reset.duration_since(now).unwrap_or(Duration::ZERO),
            })
        };
        ServerLimits {
            requests: openai(
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            )
            .or_else(|| {
                anthropic(
                    "anthropic-ratelimit-requests-remaining",
                    "anthropic-ratelimit-requests-reset",
                )
            }),
            tokens: openai("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens").or_else(
                || {
                    anthropic(
                        "anthropic-ratelimit-tokens-remaining",
                        "anthropic-ratelimit-tokens-reset",
                    )
                },
            ),
        }
    }

    /// Whether neither dimension was found.
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    let value = header_str(headers, name)?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Parses a Go-style duration as OpenAI sends it: `1s`, `6m0s`, `120ms`, `1h2m3.5s`, `20us`.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_ratelimit::parse_go_duration;
///
/// assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_go_duration("120ms"), Some(Duration::from_millis(120)));
/// assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_go_duration("soon"), None);
/// ```
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if number_len == 0 {
            return None;
        }
        let (number, tail) = rest.split_at(number_len);
        if number.bytes().filter(|b| *b == b'.').count() > 1 || number == "." {
            return None;
        }
        let number: f64 = number.parse().ok()?;
        let unit_len = tail
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(tail.len(), |(i, _)| i);
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Parses an RFC 3339 time such as `2025-01-01T00:00:30Z` or `2025-01-01T01:00:30.5+01:00`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_llm_ratelimit::parse_rfc3339;
///
/// let t = parse_rfc3339("1970-01-02T00:00:01.5Z").unwrap();
/// assert_eq!(t, SystemTime::UNIX_EPOCH + Duration::from_millis(86_401_500));
/// assert_eq!(parse_rfc3339("yesterday"), None);
/// ```
pub fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let v = value.trim().as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = v.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if v.len() < 20 || v[4] != b'-' || v[7] != b'-' || !matches!(v[10], b'T' | b't' | b' ') {
        return None;
    }
    if v[13] != b':' || v[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u64;
    if v.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while v.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = v.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        for (n, d) in frac.iter().take(9).enumerate() {
            nanos += u64::from(d - b'0') * 10u64.pow(8 - n as u32);
        }
    }
    let offset = match v.get(i)? {
        b'Z' | b'z' if v.len() == i + 1 => 0,
        sign @ (b'+' | b'-') if v.len() == i + 6 && v[i + 3] == b':' => {
            let (h, m) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60;
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos as u32))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                http::HeaderValue::from_str(value).expect("valid value"),
            );
        }
        map
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("1s", Some(Duration::from_secs(1))),
            ("0s", Some(Duration::ZERO)),
            ("0", Some(Duration::ZERO)),
            ("6m0s", Some(Duration::from_secs(360))),
            ("1h2m3s", Some(Duration::from_secs(3723))),
            ("120ms", Some(Duration::from_millis(120))),
            ("20.5ms", Some(Duration::from_micros(20_500))),
            ("7us", Some(Duration::from_micros(7))),
            ("", None),
            ("s", None),
            ("1", None),
            ("1x", None),
            ("-1s", None),
            ("1..2s", None),
            ("1e3s", None),
            ("999999999999999999999h", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_go_duration(text), want, "{text:?}");
        }
    }

    #[test]
    fn rfc3339_times() {
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00Z"),
            Some(epoch + Duration::from_secs(1_709_208_000))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T13:30:00+01:30"),
            Some(epoch + Duration::from_secs(1_709_208_000))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T10:00:00.250-02:00"),
            Some(epoch + Duration::from_millis(1_709_208_000_250))
        );
        for bad in [
            "",
            "2024-02-29",
            "2024-13-01T00:00:00Z",
            "2024-02-29T25:00:00Z",
            "2024-02-29T12:00:00",
            "2024-02-29T12:00:00+0100",
            "2024-02-29T12:00:00.Z",
            "1969-12-31T00:00:00Z",
            "2024-02-29T12:00:00Zjunk",
            "２０２４-02-29T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_openai_and_anthropic() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let openai = headers(&[
            ("x-ratelimit-remaining-requests", "12"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-remaining-tokens", "900"),
            ("x-ratelimit-reset-tokens", "120ms"),
        ]);
        let limits = ServerLimits::from_headers(&openai, now);
        assert_eq!(
            limits.requests,
            Some(ServerLimit {
                remaining: 12,
                reset_in: Duration::from_secs(1)
            })
        );
        assert_eq!(
            limits.tokens.map(|t| t.reset_in),
            Some(Duration::from_millis(120))
        );
        let anthropic = headers(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:40Z"),
            ("anthropic-ratelimit-tokens-remaining", "5"),
            ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:00Z"),
        ]);
        let limits = ServerLimits::from_headers(&anthropic, now);
        assert_eq!(
            limits.requests,
            Some(ServerLimit {
                remaining: 0,
                reset_in: Duration::from_secs(20)
            })
        );
        // A reset in the past means now.
        assert_eq!(limits.tokens.map(|t| t.reset_in), Some(Duration::ZERO));
        let garbage = headers(&[
            ("x-ratelimit-remaining-requests", "-3"),
            ("x-ratelimit-reset-requests", "1s"),
            ("anthropic-ratelimit-tokens-remaining", "7"),
            ("anthropic-ratelimit-tokens-reset", "tomorrow"),
        ]);
        assert!(ServerLimits::from_headers(&garbage, now).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(value in "\\PC{0,40}") {
            let _ = parse_go_duration(&value);
            let _ = parse_rfc3339(&value);
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                let mut h = HeaderMap::new();
                for name in [
                    "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                    "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset",
                ] {
                    h.insert(name, v.clone());
                }
                let _ = ServerLimits::from_headers(&h, SystemTime::UNIX_EPOCH);
            }
        }

        #[test]
        fn rfc3339_near_valid_never_panics(y in 0u32..10000, mo in 0u32..14, d in 0u32..33,
            h in 0u32..26, mi in 0u32..61, s in 0u32..62, tail in "(Z|[+-][0-9]{2}:[0-9]{2}|\\.[0-9]{0,12}Z|)") {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{tail}");
            let _ = parse_rfc3339(&text);
        }
    }
}
