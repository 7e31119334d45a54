//! The gateway's TOML configuration: server, client keys, providers and the stack per model.
//!
//! Durations are human-readable strings (`"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"`); keys
//! are read from environment variables named in the file, never written in it (a client key
//! may be written inline for local testing with `key = "..."`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The configuration used when the gateway starts without a file: one in-process mock
/// upstream behind the full stack.
pub(crate) const MOCK_CONFIG: &str = include_str!("mock.toml");

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    pub(crate) server: ServerConfig,
    /// Keys clients present as `Authorization: Bearer <key>`, each naming its tenant.
    #[serde(default)]
    pub(crate) keys: Vec<ClientKey>,
    /// Upstreams by name.
    pub(crate) providers: BTreeMap<String, ProviderConfig>,
    /// The stack per model; a model that a provider lists but that has no entry here gets
    /// the default stack (fallback across its providers, no other layer).
    #[serde(default)]
    pub(crate) models: BTreeMap<String, ModelConfig>,
}

/// Where and how the gateway listens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServerConfig {
    pub(crate) listen: String,
    /// Larger request bodies are refused with 413.
    pub(crate) max_body_bytes: usize,
    /// How long in-flight requests (streams included) may run on after a shutdown signal.
    #[serde(deserialize_with = "duration")]
    pub(crate) shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// One client key.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientKey {
    /// The environment variable holding the key.
    pub(crate) key_env: Option<String>,
    /// The key itself (local testing only: prefer `key_env`).
    pub(crate) key: Option<String>,
    /// Whose key it is: the tenant for dedup and rate limits.
    pub(crate) tenant: String,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("key_env", &self.key_env)
            .field("key", &self.key.as_ref().map(|_| "****"))
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// Which API a provider speaks.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ProviderKind {
    /// OpenAI, or any server speaking its API (`base_url` then required).
    Openai,
    /// Anthropic messages.
    Anthropic,
    /// Google Gemini generateContent.
    Gemini,
    /// The testkit's mock OpenAI API, started in-process.
    Mock,
}

/// One upstream.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderConfig {
    pub(crate) kind: ProviderKind,
    /// The API's base URL (default: the provider's public one; for OpenAI it ends in `/v1`).
    pub(crate) base_url: Option<String>,
    /// The environment variable holding the provider's API key.
    pub(crate) api_key_env: Option<String>,
    /// The key itself (local testing and mock servers only: prefer `api_key_env`).
    pub(crate) api_key: Option<Secret>,
    /// Models this provider serves, by the name clients use.
    pub(crate) models: Vec<String>,
    /// Upstream model names when they differ from the client-facing name.
    #[serde(default)]
    pub(crate) model_map: HashMap<String, String>,
    /// For `kind = "mock"`: fixed latency of each answer.
    #[serde(default, deserialize_with = "opt_duration")]
    pub(crate) mock_latency: Option<Duration>,
}

/// A key written in the file; never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// How one request is spread over a model's providers.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StrategyKind {
    /// In order, moving on when a failure is worth trying elsewhere.
    #[default]
    Fallback,
    /// All at once, first success wins.
    Race,
    /// The next provider only after `hedge_delay`.
    Hedge,
}

/// The stack for one model, outermost first: dedup, tenant rate limit, retry, strategy over
/// per-provider breakers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelConfig {
    /// Providers in order (default: every provider listing the model, by name).
    #[serde(default)]
    pub(crate) providers: Vec<String>,
    #[serde(default)]
    pub(crate) strategy: StrategyKind,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(crate) hedge_delay: Option<Duration>,
    /// A limit on each provider attempt (until the response headers, for a stream).
    #[serde(default, deserialize_with = "opt_duration")]
    pub(crate) timeout: Option<Duration>,
    pub(crate) dedup: Option<DedupConfig>,
    pub(crate) retry: Option<RetryConfig>,
    pub(crate) breaker: Option<BreakerConfig>,
    pub(crate) rate_limit: Option<RateLimitConfig>,
}

/// Coalescing and caching of identical requests of one tenant.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DedupConfig {
    #[serde(deserialize_with = "duration")]
    pub(crate) ttl: Duration,
    #[serde(default = "default_max_entries")]
    pub(crate) max_entries: u64,
    /// Cache sampled (non-deterministic) answers too, not only `temperature: 0` or seeded.
    #[serde(default)]
    pub(crate) cache_all: bool,
}

fn default_max_entries() -> u64 {
    10_000
}

/// Retries of classified-retryable failures.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryConfig {
    pub(crate) max_attempts: u32,
    #[serde(default = "default_backoff", deserialize_with = "duration")]
    pub(crate) backoff: Duration,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(crate) max_delay: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(crate) deadline: Option<Duration>,
    /// The longest server retry hint worth waiting for; longer ones are passed to the client.
    #[serde(default, deserialize_with = "opt_duration")]
    pub(crate) max_retry_after: Option<Duration>,
}

fn default_backoff() -> Duration {
    Duration::from_millis(250)
}

/// A breaker per provider of the model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerConfig {
    #[serde(default = "default_failures")]
    pub(crate) consecutive_failures: u32,
    #[serde(default = "default_cooldown", deserialize_with = "duration")]
    pub(crate) cooldown: Duration,
}

fn default_failures() -> u32 {
    5
}

fn default_cooldown() -> Duration {
    Duration::from_secs(30)
}

/// Limits per tenant for this model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitConfig {
    pub(crate) requests_per_minute: Option<u64>,
    pub(crate) tokens_per_minute: Option<u64>,
    pub(crate) concurrency: Option<usize>,
    /// How long a call may queue for its turn before a 429.
    #[serde(default, deserialize_with = "opt_duration")]
    pub(crate) max_wait: Option<Duration>,
}

/// A configuration error, naming what is wrong.
#[derive(Debug)]
pub(crate) struct ConfigError(pub(crate) String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and checks a TOML document.
    pub(crate) fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError(format!("config: {e}")))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.providers.is_empty() {
            return Err(ConfigError("config: no [providers.NAME] section".into()));
        }
        for (name, provider) in &self.providers {
            if provider.models.is_empty() {
                return Err(ConfigError(format!("providers.{name}.models: empty")));
            }
        }
        for (model, stack) in &self.models {
            for provider in &stack.providers {
                let Some(p) = self.providers.get(provider) else {
                    return Err(ConfigError(format!(
                        "models.{model}.providers: no provider named {provider:?}"
                    )));
                };
                if !p.models.contains(model) {
                    return Err(ConfigError(format!(
                        "models.{model}.providers: {provider:?} does not list {model:?} in its models"
                    )));
                }
            }
            if self.providers_of(model).is_empty() {
                return Err(ConfigError(format!(
                    "models.{model}: no provider lists this model"
                )));
            }
            if stack.strategy == StrategyKind::Hedge && stack.hedge_delay.is_none() {
                return Err(ConfigError(format!(
                    "models.{model}.hedge_delay: required with strategy = \"hedge\""
                )));
            }
        }
        for (i, key) in self.keys.iter().enumerate() {
            if key.key.is_none() == key.key_env.is_none() {
                return Err(ConfigError(format!(
                    "keys[{i}]: give exactly one of key_env and key"
                )));
            }
        }
        Ok(())
    }

    /// Every model any provider serves.
    pub(crate) fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .providers
            .values()
            .flat_map(|p| p.models.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The providers of `model`, in the order its stack names them.
    pub(crate) fn providers_of(&self, model: &str) -> Vec<String> {
        match self.models.get(model) {
            Some(stack) if !stack.providers.is_empty() => stack.providers.clone(),
            _ => self
                .providers
                .iter()
                .filter(|(_, p)| p.models.iter().any(|m| m == model))
                .map(|(name, _)| name.clone())
                .collect(),
        }
    }

    /// The client keys, resolved from the environment: key to tenant.
    pub(crate) fn client_keys(&self) -> Result<HashMap<String, String>, ConfigError> {
        let mut keys = HashMap::new();
        for (i, entry) in self.keys.iter().enumerate() {
            let key = match (&entry.key, &entry.key_env) {
                (Some(key), _) => key.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    ConfigError(format!(
                        "keys[{i}].key_env: environment variable {var} is not set"
                    ))
                })?,
                (None, None) => {
                    return Err(ConfigError(format!(
                        "keys[{i}]: give exactly one of key_env and key"
                    )));
                }
            };
            if key.is_empty() {
                return Err(ConfigError(format!("keys[{i}]: empty key")));
            }
            keys.insert(key, entry.tenant.clone());
        }
        Ok(keys)
    }
}

/// Parses `"1h"`, `"5m"`, `"30s"`, `"250ms"`, `"1m30s"`, `"0s"`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("{text:?}: a number needs a unit (ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!("{text:?}: expected a number"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: bad number {:?}", &rest[..digits]))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => number / 1000.0,
            "s" | "sec" | "secs" => number,
            "m" | "min" | "mins" => number * 60.0,
            "h" | "hr" | "hrs" => number * 3600.0,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use ms, s, m or h)"
                ));
            }
        };
        total += Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}
