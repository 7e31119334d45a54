//! The one configuration error every tower-llm builder returns.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

/// A builder refused a setting: which component, which knob (the builder method or config key)
/// and why.
///
/// Every tower-llm builder's `build()` returns this type, so an application can report any
/// layer's mistake the same way:
///
/// ```
/// use tower_llm_core::ConfigError;
///
/// let err = ConfigError::new("rate limit", "concurrency", "must be at least 1");
/// assert_eq!(err.knob(), "concurrency");
/// assert_eq!(err.reason(), "must be at least 1");
/// assert_eq!(
///     err.to_string(),
///     "invalid rate limit configuration: `concurrency` must be at least 1"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    component: &'static str,
    knob: Cow<'static, str>,
    reason: Cow<'static, str>,
}

impl ConfigError {
    /// `knob` of `component` is refused because of `reason` (written to follow the knob's
    /// name: "must be at least 1").
    pub fn new(
        component: &'static str,
        knob: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        ConfigError {
            component,
            knob: knob.into(),
            reason: reason.into(),
        }
    }

    /// The component whose configuration is wrong (`"rate limit"`, `"breaker"`, ...).
    pub fn component(&self) -> &'static str {
        self.component
    }

    /// The builder method or configuration key at fault; empty when the error is about the
    /// configuration as a whole (a file that cannot be read or parsed).
    pub fn knob(&self) -> &str {
        &self.knob
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The same error under a longer knob path, e.g. `upstreams[2].timeout` for a setting
    /// read from a configuration file.
    pub fn under(mut self, prefix: &str) -> Self {
        self.knob = if self.knob.is_empty() {
            Cow::Owned(prefix.to_owned())
        } else {
            Cow::Owned(format!("{prefix}.{}", self.knob))
        };
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.knob.is_empty() {
            write!(
                f,
                "invalid {} configuration: {}",
                self.component, self.reason
            )
        } else {
            write!(
                f,
                "invalid {} configuration: `{}` {}",
                self.component, self.knob, self.reason
            )
        }
    }
}

impl StdError for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_lengthens_the_knob_path() {
        let err =
            ConfigError::new("gateway", "timeout", "must be more than zero").under("upstreams[2]");
        assert_eq!(err.knob(), "upstreams[2].timeout");
        assert!(
            err.to_string()
                .contains("`upstreams[2].timeout` must be more than zero")
        );
    }

    #[test]
    fn an_error_about_the_whole_configuration_names_no_knob() {
        let err = ConfigError::new("gateway", "", "cannot read gateway.toml: not found");
        assert_eq!(
            err.to_string(),
            "invalid gateway configuration: cannot read gateway.toml: not found"
        );
    }
}
