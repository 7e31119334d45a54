//! Reading the server's "wait this long" hint from response headers.
//!
//! Providers say it in several ways, and a well-behaved client honours all of them:
//!
//! | header                | form                          | who sends it               |
//! |-----------------------|-------------------------------|----------------------------|
//! | `retry-after-ms`      | milliseconds, may be fractional | OpenAI                   |
//! | `x-ms-retry-after-ms` | milliseconds                  | Azure OpenAI               |
//! | `retry-after`         | seconds, or an HTTP-date      | everyone (RFC 9110)        |
//!
//! The millisecond forms are more precise and are read first. A value that does not parse
//! (negative, not a number, a malformed date) is ignored and the next form is tried; a number
//! too large for a `Duration` saturates to [`Duration::MAX`]; nothing here panics. A date in
//! the past means "now": [`Duration::ZERO`].

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The headers read, in the order they are tried.
pub const RETRY_AFTER_HEADERS: [&str; 3] = ["retry-after-ms", "x-ms-retry-after-ms", "retry-after"];

/// The server's retry hint in `headers`, measured from the current time.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_core::retry_after;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("retry-after", "7".parse().unwrap());
/// assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
///
/// headers.insert("retry-after-ms", "1500".parse().unwrap());
/// assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
///
/// let mut garbage = http::HeaderMap::new();
/// garbage.insert("retry-after", "soon".parse().unwrap());
/// assert_eq!(retry_after(&garbage), None);
/// ```
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

/// The server's retry hint in `headers`, with an HTTP-date measured from `now`.
pub fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let millis = ["retry-after-ms", "x-ms-retry-after-ms"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .find_map(parse_millis);
    millis.or_else(|| {
        let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
        parse_retry_after(value, now)
    })
}

/// Parses one `Retry-After` value: delay-seconds (a fractional value is accepted) or an
/// HTTP-date, measured from `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Some(seconds) = parse_seconds(value, 1.0) {
        return Some(seconds);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_millis(value: &str) -> Option<Duration> {
    parse_seconds(value.trim(), 1e-3)
}

fn parse_seconds(value: &str, unit: f64) -> Option<Duration> {
    // Plain decimal only: `f64::from_str` would also take "inf", "NaN" and exponents.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let number: f64 = value.parse().ok()?;
    // A well-formed number too large for a Duration still means "not for a very long time":
    // saturate rather than drop the hint, so a layer with a cap on hints gives up at once.
    Some(Duration::try_from_secs_f64(number * unit).unwrap_or(Duration::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                http::HeaderValue::from_str(value).expect("valid value"),
            );
        }
        map
    }

    fn now() -> SystemTime {
        // Sun, 06 Nov 1994 08:49:37 GMT, the RFC's own example.
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn seconds() {
        let h = headers(&[("retry-after", "120")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::from_secs(120)));
        let h = headers(&[("retry-after", " 0.5 ")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::from_millis(500)));
        let h = headers(&[("retry-after", "0")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::ZERO));
    }

    #[test]
    fn http_date() {
        let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::from_secs(30)));
        // Obsolete RFC 850 and asctime forms are still HTTP-dates.
        let h = headers(&[("retry-after", "Sunday, 06-Nov-94 08:49:47 GMT")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::from_secs(10)));
        let h = headers(&[("retry-after", "Sun Nov  6 08:49:57 1994")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::from_secs(20)));
    }

    #[test]
    fn date_in_the_past_is_now() {
        let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::ZERO));
    }

    #[test]
    fn millisecond_forms_win() {
        let h = headers(&[("retry-after", "2"), ("retry-after-ms", "1500")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::from_millis(1500)));
        let h = headers(&[("retry-after", "2"), ("x-ms-retry-after-ms", "250")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::from_millis(250)));
        let h = headers(&[("retry-after-ms", "12.5")]);
        assert_eq!(
            retry_after_at(&h, now()),
            Some(Duration::from_micros(12_500))
        );
    }

    #[test]
    fn garbage_is_ignored_and_the_next_form_tried() {
        let h = headers(&[("retry-after-ms", "soon"), ("retry-after", "3")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::from_secs(3)));
        for bad in [
            "",
            "-1",
            "abc",
            "inf",
            "NaN",
            "1e3",
            "1.2.3",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "tomorrow",
        ] {
            let h = headers(&[("retry-after", bad), ("retry-after-ms", bad)]);
            assert_eq!(retry_after_at(&h, now()), None, "value {bad:?}");
        }
    }

    #[test]
    fn huge_numbers_saturate() {
        let h = headers(&[("retry-after", "99999999999999999999999999999999")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::MAX));
        let h = headers(&[("retry-after-ms", "1e400"), ("retry-after", "5")]);
        assert_eq!(retry_after_at(&h, now()), Some(Duration::from_secs(5)));
    }

    #[test]
    fn non_ascii_header_bytes_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_bytes(b"\xff\xfe").expect("opaque bytes are allowed"),
        );
        assert_eq!(retry_after_at(&h, now()), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(value in "\\PC{0,40}", secs in 0u64..u64::MAX) {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                let mut h = HeaderMap::new();
                h.insert(http::header::RETRY_AFTER, v.clone());
                h.insert("retry-after-ms", v);
                let _ = retry_after_at(&h, SystemTime::UNIX_EPOCH + Duration::from_secs(secs % (1 << 40)));
            }
        }
    }
}
