//! The checks every provider builder makes before it builds, in one place so that the
//! builders refuse the same mistakes with the same knob names.

use http::{HeaderValue, Uri};

use crate::error::{ConfigError, config_error};
use crate::key::ApiKey;

/// Both body limits must leave room for something; each refusal names its own knob.
pub(crate) fn check_limits(
    max_body_bytes: usize,
    max_event_bytes: usize,
) -> Result<(), ConfigError> {
    if max_body_bytes == 0 {
        return Err(config_error("max_body_bytes", "must be above zero"));
    }
    if max_event_bytes == 0 {
        return Err(config_error("max_event_bytes", "must be above zero"));
    }
    Ok(())
}

/// An endpoint built from the `base_url` knob: an absolute URL with a scheme and a host.
pub(crate) fn endpoint(uri: String) -> Result<Uri, ConfigError> {
    let parsed: Uri = uri
        .parse()
        .map_err(|e| config_error("base_url", format!("{uri:?} is not a URL: {e}")))?;
    if parsed.scheme().is_none() || parsed.host().is_none() {
        return Err(config_error(
            "base_url",
            format!("{uri:?} needs a scheme and a host"),
        ));
    }
    Ok(parsed)
}

/// The key given, or the first of `vars` set in the environment.
pub(crate) fn key_or_env(given: Option<ApiKey>, vars: &[&str]) -> Result<ApiKey, ConfigError> {
    if let Some(key) = given {
        return Ok(key);
    }
    ApiKey::from_env_vars(vars).ok_or_else(|| {
        let which = match vars {
            [one] => format!("{one} is not set"),
            [first, second] => format!("neither {first} nor {second} is set"),
            many => format!("none of {} is set", many.join(", ")),
        };
        config_error("api_key", format!("not given and {which}"))
    })
}

/// The key as a sensitive header value, after `prefix` (`"Bearer "` or nothing).
pub(crate) fn key_header(key: &ApiKey, prefix: &str) -> Result<HeaderValue, ConfigError> {
    key.header_value(prefix)
        .ok_or_else(|| config_error("api_key", "contains characters not allowed in a header"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_names_its_own_knob() {
        assert_eq!(
            check_limits(0, 1).map_err(|e| e.knob().to_owned()),
            Err("max_body_bytes".to_owned())
        );
        assert_eq!(
            check_limits(1, 0).map_err(|e| e.knob().to_owned()),
            Err("max_event_bytes".to_owned())
        );
        assert!(check_limits(1, 1).is_ok());
    }

    #[test]
    fn every_builder_names_the_event_limit_when_it_is_zero() {
        let anthropic = crate::anthropic::Anthropic::builder()
            .api_key("k")
            .max_event_bytes(0)
            .build_with(());
        let gemini = crate::gemini::Gemini::builder()
            .api_key("k")
            .max_event_bytes(0)
            .build_with(());
        let openai = crate::openai::OpenAi::compatible("http://localhost/v1")
            .max_event_bytes(0)
            .build_with(());
        assert_eq!(
            anthropic.err().map(|e| e.knob().to_owned()),
            Some("max_event_bytes".to_owned())
        );
        assert_eq!(
            gemini.err().map(|e| e.knob().to_owned()),
            Some("max_event_bytes".to_owned())
        );
        assert_eq!(
            openai.err().map(|e| e.knob().to_owned()),
            Some("max_event_bytes".to_owned())
        );
    }

    #[test]
    fn endpoints_need_a_scheme_and_a_host() {
        assert!(endpoint("https://api.example/v1/x".into()).is_ok());
        for bad in ["/v1/x", "not a url", "api.example/v1"] {
            assert_eq!(
                endpoint(bad.into()).map_err(|e| e.knob().to_owned()).err(),
                Some("base_url".to_owned()),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_missing_key_names_the_variables() {
        let vars = ["TOWER_LLM_TEST_UNSET_A", "TOWER_LLM_TEST_UNSET_B"];
        let error = key_or_env(None, &vars)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("neither TOWER_LLM_TEST_UNSET_A nor TOWER_LLM_TEST_UNSET_B"),
            "{error}"
        );
        assert!(key_or_env(Some(ApiKey::from("k")), &vars).is_ok());
    }
}
