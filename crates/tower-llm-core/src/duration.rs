//! Durations as people write them, one way across every crate, configuration file and CLI:
//! [humantime]'s format (`250ms`, `30s`, `1m 30s`, `2h`). A bare number has no unit and is
//! refused, so `timeout = "30"` can never mean milliseconds in one place and seconds in another.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::ConfigError;

/// Parses a duration written for people (`"250ms"`, `"30s"`, `"1m 30s"`), naming `knob` of
/// `component` in the error. Values too large to represent, and bare numbers, are refused.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_core::parse_duration;
///
/// assert_eq!(parse_duration("gateway", "timeout", "1m 30s"), Ok(Duration::from_secs(90)));
/// let err = parse_duration("gateway", "timeout", "30").unwrap_err();
/// assert_eq!(err.knob(), "timeout");
/// assert!(parse_duration("gateway", "timeout", "99999999999999999999h").is_err());
/// ```
pub fn parse_duration(
    component: &'static str,
    knob: impl Into<Cow<'static, str>>,
    text: &str,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::new(
            component,
            knob,
            format!("is not a duration ({e}): write it like 250ms, 30s, 1m 30s"),
        )
    })
}

/// Shows `duration` the way [`parse_duration`] reads it back (`1m 30s`, `250ms`).
///
/// ```
/// use std::time::Duration;
/// use tower_llm_core::format_duration;
///
/// assert_eq!(format_duration(Duration::from_millis(90_250)).to_string(), "1m 30s 250ms");
/// ```
pub fn format_duration(duration: Duration) -> impl fmt::Display {
    humantime::format_duration(duration)
}
