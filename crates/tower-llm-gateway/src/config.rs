//! The gateway's TOML configuration: server, client keys, providers and the stack per model.
//!
//! A file is read in two steps: serde reads it into the raw shapes below (unknown keys are
//! errors), then [`Config::from_toml`] checks every value and resolves the keys named by
//! environment variables, so that a mistake stops the start with the key at fault
//! (`models.gpt-4o-mini.timeout`) instead of surfacing at the first request. Durations are
//! humantime strings (`"250ms"`, `"30s"`, `"1m 30s"`, `"2h"`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tower_llm_breaker::{CircuitBreakerBuilder, Window};

use crate::keys::{ClientKeys, Secret};

/// The configuration used when the gateway starts without a file: two in-process mock
/// upstreams behind the full stack, and two demo client keys.
pub const MOCK_CONFIG: &str = include_str!("../config/mock.toml");

/// The longest duration any setting accepts. Longer values are typing mistakes, and some
/// would overflow the clock arithmetic of the layers.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A configuration the gateway refused: the key at fault and why.
///
/// ```
/// let err = tower_llm_gateway::Config::from_toml(
///     "[[keys]]\nkey = \"k\"\ntenant = \"t\"\n\
///      [providers.p]\nkind = \"mock\"\nmodels = [\"m\"]\n\
///      [models.m]\ntimeout = \"0s\"\n",
/// )
/// .unwrap_err();
/// assert_eq!(err.knob(), "models.m.timeout");
/// assert_eq!(err.reason(), "must be more than zero");
/// ```
pub use tower_llm_core::ConfigError;

/// The component name every gateway configuration error carries.
pub(crate) const GATEWAY: &str = "gateway";

/// A checked configuration, ready for [`Gateway::new`](crate::Gateway::new).
///
/// Its `Debug` output shows no key: client keys are kept only as keyed digests, provider
/// keys print as `****`.
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) server: ServerConfig,
    pub(crate) keys: ClientKeys,
    pub(crate) providers: BTreeMap<String, ProviderConfig>,
    pub(crate) models: BTreeMap<String, ModelConfig>,
    /// Read by `telemetry` (feature `otlp`); without it, only checked.
    #[cfg_attr(not(feature = "otlp"), allow(dead_code))]
    pub(crate) telemetry: Option<TelemetryConfig>,
}

/// Where and how the gateway listens.
#[derive(Clone, Debug)]
pub(crate) struct ServerConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) max_body_bytes: usize,
    pub(crate) shutdown_grace: Duration,
    /// Every call's deadline, and the cap on the one a client sends.
    pub(crate) request_timeout: Option<Duration>,
}

/// `[telemetry]`: OTLP export, checked. `Debug` prints the collector headers' values as
/// `****`.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
pub(crate) struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL; `/v1/traces` and `/v1/metrics` are appended.
    pub(crate) endpoint: String,
    pub(crate) service_name: String,
    pub(crate) traces: bool,
    pub(crate) metrics: bool,
    pub(crate) export_interval: Duration,
    pub(crate) export_timeout: Duration,
    /// Sent with every export (a collector's credentials): secrets.
    pub(crate) headers: Vec<(http::HeaderName, Secret)>,
}

/// Which API a provider speaks.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ProviderKind {
    Openai,
    Anthropic,
    Gemini,
    /// The testkit's mock OpenAI API, started in-process.
    Mock,
}

/// One upstream, checked.
#[derive(Clone, Debug)]
pub(crate) struct ProviderConfig {
    pub(crate) kind: ProviderKind,
    pub(crate) base_url: Option<String>,
    pub(crate) api_key: Option<Secret>,
    /// Where the key is set in the file (`api_key` or `api_key_env`, the latter when neither
    /// is): the key a refusal of it names.
    pub(crate) api_key_knob: &'static str,
    pub(crate) models: Vec<String>,
    pub(crate) model_map: HashMap<String, String>,
    pub(crate) mock_latency: Option<Duration>,
    /// A concurrency limit for this provider that adapts to its answers (429s, overload,
    /// timeouts), shared by every model and route using it.
    pub(crate) adaptive_concurrency: Option<AdaptiveConfig>,
}

/// `providers.<name>.adaptive_concurrency`: the bounds of the limit and how long a call
/// may wait for a slot.
#[derive(Clone, Debug)]
pub(crate) struct AdaptiveConfig {
    pub(crate) settings: tower_llm_ratelimit::AdaptiveConcurrency,
    pub(crate) max_wait: Option<Duration>,
}

/// How one request is spread over a model's providers.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StrategyKind {
    #[default]
    Fallback,
    Race,
    Hedge,
}

/// The stack of one model, checked.
#[derive(Clone, Debug, Default)]
pub(crate) struct ModelConfig {
    /// Providers in order; never empty once checked.
    pub(crate) providers: Vec<String>,
    pub(crate) strategy: StrategyKind,
    pub(crate) hedge_delay: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) dedup: Option<DedupConfig>,
    pub(crate) retry: Option<RetryConfig>,
    pub(crate) breaker: Option<BreakerConfig>,
    pub(crate) rate_limit: Option<RateLimitConfig>,
    /// One attempt budget for the model's retries, fallbacks past the first provider and
    /// hedged legs (`None`: each keeps its own).
    pub(crate) budget: Option<tower_llm_core::BudgetConfig>,
}

#[derive(Clone, Debug)]
pub(crate) struct DedupConfig {
    pub(crate) ttl: Duration,
    pub(crate) max_entries: usize,
    pub(crate) cache_all: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct RetryConfig {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_delay: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) max_retry_after: Option<Duration>,
}

#[derive(Clone, Debug)]
pub(crate) struct BreakerConfig {
    /// `None`: the breaker's default (50 % of the last 100 calls, once 40 are in).
    pub(crate) failure_rate: Option<f64>,
    pub(crate) window_calls: Option<usize>,
    pub(crate) minimum_calls: Option<usize>,
    /// Opt-in: also trip after this many failures in a row.
    pub(crate) consecutive_failures: Option<usize>,
    pub(crate) cooldown: Duration,
}

impl BreakerConfig {
    /// The breaker this configuration asks for; `name` labels its metrics.
    pub(crate) fn builder(&self, name: String) -> CircuitBreakerBuilder {
        let mut builder = CircuitBreakerBuilder::new()
            .name(name)
            .cooldown(self.cooldown);
        if let Some(rate) = self.failure_rate {
            builder = builder.failure_rate(rate);
        }
        if let Some(n) = self.window_calls {
            builder = builder.window(Window::count(n));
        }
        if let Some(n) = self.minimum_calls {
            builder = builder.minimum_calls(n);
        }
        if let Some(n) = self.consecutive_failures {
            builder = builder.consecutive_failures(n);
        }
        builder
    }

    /// A breaker refusal, under the key its knob has in the file (`at` is the `breaker` table).
    pub(crate) fn error(at: &str, e: &ConfigError) -> ConfigError {
        let key = match e.knob() {
            "window" => "window_calls",
            knob => knob,
        };
        ConfigError::new(GATEWAY, format!("{at}.{key}"), format!("is refused: {e}"))
    }
}

impl RetryConfig {
    /// The retry layer this configuration asks for; `name` labels its metrics.
    pub(crate) fn builder(&self, name: String) -> tower_llm_retry::RetryBuilder {
        let mut builder = tower_llm_retry::RetryLayer::builder()
            .name(name)
            .max_attempts(usize::try_from(self.max_attempts).unwrap_or(usize::MAX))
            .backoff(tower_llm_retry::Backoff::exponential(self.backoff));
        if let Some(max) = self.max_delay {
            builder = builder.max_delay(max);
        }
        if let Some(deadline) = self.deadline {
            builder = builder.deadline(deadline);
        }
        if let Some(max) = self.max_retry_after {
            builder = builder.max_retry_after(max);
        }
        builder
    }

    /// A retry refusal, under the key its knob has in the file (`at` is the `retry` table).
    pub(crate) fn error(&self, at: &str, e: &ConfigError) -> ConfigError {
        match e.knob() {
            // The layer's own default cap is shorter than the backoff asked for.
            "max_delay" if self.max_delay.is_none() => ConfigError::new(
                GATEWAY,
                format!("{at}.backoff"),
                "is longer than the default max_delay: give max_delay as well",
            ),
            knob => ConfigError::new(GATEWAY, format!("{at}.{knob}"), e.reason().to_owned()),
        }
    }
}

/// Runs a layer's own checks (by building it) without registering its metrics anywhere: a
/// configuration being checked is not a layer being used.
fn checked<T>(build: impl FnOnce() -> T) -> T {
    metrics::with_local_recorder(&metrics::NoopRecorder, build)
}

#[derive(Clone, Debug)]
pub(crate) struct RateLimitConfig {
    pub(crate) requests_per_minute: Option<u64>,
    pub(crate) tokens_per_minute: Option<u64>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) max_wait: Option<Duration>,
}

mod raw {
    //! The file as serde reads it, before any check.

    use std::collections::{BTreeMap, HashMap};

    use serde::Deserialize;

    use super::{ProviderKind, StrategyKind};
    use crate::keys::Secret;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct File {
        #[serde(default)]
        pub(super) server: Server,
        #[serde(default)]
        pub(super) keys: Vec<Key>,
        #[serde(default)]
        pub(super) providers: BTreeMap<String, Provider>,
        #[serde(default)]
        pub(super) models: BTreeMap<String, Model>,
        pub(super) telemetry: Option<Telemetry>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Telemetry {
        pub(super) endpoint: Option<String>,
        pub(super) protocol: Option<String>,
        pub(super) service_name: Option<String>,
        pub(super) traces: Option<bool>,
        pub(super) metrics: Option<bool>,
        pub(super) export_interval: Option<String>,
        pub(super) export_timeout: Option<String>,
        #[serde(default)]
        pub(super) headers: BTreeMap<String, Secret>,
        #[serde(default)]
        pub(super) headers_env: BTreeMap<String, String>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Server {
        pub(super) listen: Option<String>,
        pub(super) max_body_bytes: Option<u64>,
        pub(super) shutdown_grace: Option<String>,
        pub(super) request_timeout: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Key {
        pub(super) key_env: Option<String>,
        pub(super) key: Option<Secret>,
        pub(super) tenant: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Provider {
        pub(super) kind: ProviderKind,
        pub(super) base_url: Option<String>,
        pub(super) api_key_env: Option<String>,
        pub(super) api_key: Option<Secret>,
        #[serde(default)]
        pub(super) models: Vec<String>,
        #[serde(default)]
        pub(super) model_map: HashMap<String, String>,
        pub(super) mock_latency: Option<String>,
        pub(super) adaptive_concurrency: Option<Adaptive>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Adaptive {
        pub(super) min: Option<u64>,
        pub(super) max: Option<u64>,
        pub(super) initial: Option<u64>,
        pub(super) max_wait: Option<String>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Model {
        #[serde(default)]
        pub(super) providers: Vec<String>,
        #[serde(default)]
        pub(super) strategy: StrategyKind,
        pub(super) hedge_delay: Option<String>,
        pub(super) timeout: Option<String>,
        pub(super) dedup: Option<Dedup>,
        pub(super) retry: Option<Retry>,
        pub(super) breaker: Option<Breaker>,
        pub(super) rate_limit: Option<RateLimit>,
        pub(super) budget: Option<Budget>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Budget {
        pub(super) ratio: f64,
        pub(super) min_per_second: Option<u32>,
        pub(super) window: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Dedup {
        pub(super) ttl: String,
        pub(super) max_entries: Option<usize>,
        #[serde(default)]
        pub(super) cache_all: bool,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Retry {
        pub(super) max_attempts: u32,
        pub(super) backoff: Option<String>,
        pub(super) max_delay: Option<String>,
        pub(super) deadline: Option<String>,
        pub(super) max_retry_after: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Breaker {
        pub(super) failure_rate: Option<f64>,
        pub(super) window_calls: Option<usize>,
        pub(super) minimum_calls: Option<usize>,
        pub(super) consecutive_failures: Option<usize>,
        pub(super) cooldown: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct RateLimit {
        pub(super) requests_per_minute: Option<u64>,
        pub(super) tokens_per_minute: Option<u64>,
        pub(super) concurrency: Option<u64>,
        pub(super) max_wait: Option<String>,
    }
}

/// Whether zero makes sense for a duration setting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Refused,
}

/// Parses a humantime duration for `knob`, refusing what would overflow (and anything over a
/// year) and, where `zero` says so, zero.
fn duration(knob: &str, text: &str, zero: Zero) -> Result<Duration, ConfigError> {
    let value = tower_llm_core::parse_duration(GATEWAY, knob.to_owned(), text)?;
    if value > MAX_DURATION {
        return Err(ConfigError::new(
            GATEWAY,
            knob.to_owned(),
            "must be at most 366 days",
        ));
    }
    if zero == Zero::Refused && value.is_zero() {
        return Err(ConfigError::new(
            GATEWAY,
            knob.to_owned(),
            "must be more than zero",
        ));
    }
    Ok(value)
}

fn opt_duration(
    knob: &str,
    text: Option<&String>,
    zero: Zero,
) -> Result<Option<Duration>, ConfigError> {
    text.map(|t| duration(knob, t, zero)).transpose()
}

fn positive<T: Default + PartialEq>(knob: &str, value: T) -> Result<T, ConfigError> {
    if value == T::default() {
        Err(ConfigError::new(
            GATEWAY,
            knob.to_owned(),
            "must be at least 1",
        ))
    } else {
        Ok(value)
    }
}

/// Reads an environment variable named by the configuration; a variable that is unset, empty
/// or not UTF-8 is refused (its value is never part of the error).
fn env_secret(knob: &str, var: &str) -> Result<Secret, ConfigError> {
    if var.is_empty() {
        return Err(ConfigError::new(
            GATEWAY,
            knob.to_owned(),
            "must name an environment variable",
        ));
    }
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value.trim().to_owned())),
        Ok(_) => Err(ConfigError::new(
            GATEWAY,
            knob.to_owned(),
            format!("names the environment variable {var}, which is empty"),
        )),
        Err(std::env::VarError::NotPresent) => Err(ConfigError::new(
            GATEWAY,
            knob.to_owned(),
            format!("names the environment variable {var}, which is not set"),
        )),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(
            GATEWAY,
            knob.to_owned(),
            format!("names the environment variable {var}, which is not UTF-8"),
        )),
    }
}

/// The OTLP/HTTP port collectors listen on.
const DEFAULT_OTLP_ENDPOINT: &str = "http://localhost:4318";

fn check_telemetry(t: raw::Telemetry) -> Result<TelemetryConfig, ConfigError> {
    let endpoint = t
        .endpoint
        .unwrap_or_else(|| DEFAULT_OTLP_ENDPOINT.to_owned());
    check_base_url("telemetry.endpoint", &endpoint)?;
    if endpoint.contains('?') || endpoint.contains('#') {
        return Err(ConfigError::new(
            GATEWAY,
            "telemetry.endpoint",
            "must be the collector's base URL, without query or fragment",
        ));
    }
    if let Some(protocol) = t.protocol.as_deref()
        && protocol != "http/protobuf"
    {
        return Err(ConfigError::new(
            GATEWAY,
            "telemetry.protocol",
            format!("{protocol:?} is not supported: the gateway exports \"http/protobuf\""),
        ));
    }
    let service_name = t
        .service_name
        .unwrap_or_else(|| "tower-llm-gateway".to_owned());
    if service_name.trim().is_empty() {
        return Err(ConfigError::new(
            GATEWAY,
            "telemetry.service_name",
            "must not be empty",
        ));
    }
    let mut headers = Vec::new();
    let named = t
        .headers
        .into_iter()
        .map(|(name, value)| (format!("telemetry.headers.{name}"), name, Ok(value)))
        .chain(t.headers_env.into_iter().map(|(name, var)| {
            let knob = format!("telemetry.headers_env.{name}");
            let value = env_secret(&knob, &var);
            (knob, name, value)
        }));
    for (knob, name, value) in named {
        let header = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConfigError::new(GATEWAY, knob.clone(), "is not an HTTP header name"))?;
        let value = value?;
        // The value is a secret: the error never quotes it.
        if http::HeaderValue::from_str(value.expose()).is_err() {
            return Err(ConfigError::new(
                GATEWAY,
                knob,
                "is not a valid HTTP header value (visible ASCII only)",
            ));
        }
        if headers.iter().any(|(h, _)| *h == header) {
            return Err(ConfigError::new(
                GATEWAY,
                knob,
                "names a header that is already given",
            ));
        }
        headers.push((header, value));
    }
    let telemetry = TelemetryConfig {
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        service_name,
        traces: t.traces.unwrap_or(true),
        metrics: t.metrics.unwrap_or(true),
        export_interval: match &t.export_interval {
            None => Duration::from_secs(60),
            Some(text) => duration("telemetry.export_interval", text, Zero::Refused)?,
        },
        export_timeout: match &t.export_timeout {
            None => Duration::from_secs(10),
            Some(text) => duration("telemetry.export_timeout", text, Zero::Refused)?,
        },
        headers,
    };
    if (telemetry.traces || telemetry.metrics) && !cfg!(feature = "otlp") {
        return Err(ConfigError::new(
            GATEWAY,
            "telemetry",
            "asks for OTLP export, but this gateway was built without it: build it with \
             the `otlp` cargo feature (`cargo install tower-llm-gateway --features otlp`), \
             or set traces = false and metrics = false",
        ));
    }
    Ok(telemetry)
}

fn check_base_url(knob: &str, url: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ConfigError::new(GATEWAY, knob.to_owned(), format!("is not a URL ({e})")))?;
    match uri.scheme_str() {
        // Credentials in a URL would be printed wherever the URL is (`Debug`, logs): keys
        // belong in the settings kept secret.
        Some("http" | "https") if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
            Err(ConfigError::new(
                GATEWAY,
                knob.to_owned(),
                "must not carry credentials (user:password@): give keys in their own settings",
            ))
        }
        Some("http" | "https") if uri.authority().is_some() => Ok(()),
        _ => Err(ConfigError::new(
            GATEWAY,
            knob.to_owned(),
            "must be an absolute http:// or https:// URL",
        )),
    }
}

/// A file that is not valid TOML, or not the gateway's shape: where and why. toml's own
/// `Display` quotes the line at fault, which may be a key written inline (an unterminated
/// `api_key = "sk-...`): the error repeats only the place and the message.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let place = e
        .span()
        .and_then(|span| text.get(..span.start))
        .map(|before| {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    ConfigError::new(
        GATEWAY,
        "",
        format!("TOML parse error{place}: {}", e.message().trim_end()),
    )
}

impl Config {
    /// The built-in configuration ([`MOCK_CONFIG`]): in-process mock upstreams, no key and no
    /// network needed.
    pub fn mock() -> Result<Config, ConfigError> {
        Config::from_toml(MOCK_CONFIG)
    }

    /// Reads and checks a TOML file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(GATEWAY, "", format!("cannot read {}: {e}", path.display()))
        })?;
        Config::from_toml(&text)
    }

    /// Parses and checks a TOML document, reading the keys it names from the environment.
    ///
    /// Every refusal names the key at fault: unknown keys, durations that are malformed, over
    /// a year, or zero where zero makes no sense (`timeout`, `ttl`, `cooldown`, ...), counts
    /// of zero, providers or models that are named but missing, unset environment variables,
    /// duplicate client keys.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file: raw::File = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        Config::check(file)
    }

    fn check(file: raw::File) -> Result<Config, ConfigError> {
        let server = ServerConfig {
            listen: match &file.server.listen {
                None => SocketAddr::from(([127, 0, 0, 1], 8080)),
                Some(text) => text.parse().map_err(|_| {
                    ConfigError::new(
                        GATEWAY,
                        "server.listen",
                        format!(
                            "{text:?} is not an address like 127.0.0.1:8080 (port 0: any free port)"
                        ),
                    )
                })?,
            },
            max_body_bytes: match file.server.max_body_bytes {
                None => 1024 * 1024,
                Some(n) => {
                    usize::try_from(positive("server.max_body_bytes", n)?).map_err(|_| {
                        ConfigError::new(GATEWAY, "server.max_body_bytes", "is too large")
                    })?
                }
            },
            shutdown_grace: match &file.server.shutdown_grace {
                None => Duration::from_secs(30),
                Some(text) => duration("server.shutdown_grace", text, Zero::Allowed)?,
            },
            request_timeout: opt_duration(
                "server.request_timeout",
                file.server.request_timeout.as_ref(),
                Zero::Refused,
            )?,
        };
        let telemetry = file.telemetry.map(check_telemetry).transpose()?;

        if file.keys.is_empty() {
            return Err(ConfigError::new(
                GATEWAY,
                "keys",
                "needs at least one [[keys]] entry: every request presents a client key",
            ));
        }
        let mut keys = ClientKeys::new();
        for (i, entry) in file.keys.into_iter().enumerate() {
            let at = format!("keys[{i}]");
            if entry.tenant.trim().is_empty() {
                return Err(ConfigError::new(
                    GATEWAY,
                    format!("{at}.tenant"),
                    "must not be empty",
                ));
            }
            let key = match (entry.key, entry.key_env) {
                (Some(key), None) => key,
                (None, Some(var)) => env_secret(&format!("{at}.key_env"), &var)?,
                _ => {
                    return Err(ConfigError::new(
                        GATEWAY,
                        at,
                        "needs exactly one of key_env and key",
                    ));
                }
            };
            if key.expose().is_empty() {
                return Err(ConfigError::new(
                    GATEWAY,
                    format!("{at}.key"),
                    "must not be empty",
                ));
            }
            if let Some(first) = keys.insert(key.expose(), &entry.tenant) {
                return Err(ConfigError::new(
                    GATEWAY,
                    at,
                    format!("is the same key as keys[{first}]"),
                ));
            }
        }

        if file.providers.is_empty() {
            return Err(ConfigError::new(
                GATEWAY,
                "providers",
                "needs at least one [providers.NAME] section",
            ));
        }
        let mut providers = BTreeMap::new();
        for (name, p) in file.providers {
            let at = format!("providers.{name}");
            if p.models.is_empty() {
                return Err(ConfigError::new(
                    GATEWAY,
                    format!("{at}.models"),
                    "must list at least one model",
                ));
            }
            for (i, model) in p.models.iter().enumerate() {
                if model.trim().is_empty() {
                    return Err(ConfigError::new(
                        GATEWAY,
                        format!("{at}.models[{i}]"),
                        "must not be empty",
                    ));
                }
            }
            for (model, upstream) in &p.model_map {
                if !p.models.contains(model) {
                    return Err(ConfigError::new(
                        GATEWAY,
                        format!("{at}.model_map.{model}"),
                        format!("maps {model:?}, which is not in {at}.models"),
                    ));
                }
                if upstream.trim().is_empty() {
                    return Err(ConfigError::new(
                        GATEWAY,
                        format!("{at}.model_map.{model}"),
                        "must not be empty",
                    ));
                }
            }
            if let Some(url) = &p.base_url {
                check_base_url(&format!("{at}.base_url"), url)?;
            }
            if p.kind == ProviderKind::Mock && p.base_url.is_some() {
                return Err(ConfigError::new(
                    GATEWAY,
                    format!("{at}.base_url"),
                    "is not used by kind = \"mock\" (the mock is started in-process)",
                ));
            }
            if p.kind != ProviderKind::Mock && p.mock_latency.is_some() {
                return Err(ConfigError::new(
                    GATEWAY,
                    format!("{at}.mock_latency"),
                    "is only for kind = \"mock\"",
                ));
            }
            let api_key_knob = if p.api_key.is_some() {
                "api_key"
            } else {
                "api_key_env"
            };
            let api_key = match (p.api_key_env, p.api_key) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        GATEWAY,
                        at,
                        "needs at most one of api_key_env and api_key",
                    ));
                }
                (Some(var), None) => Some(env_secret(&format!("{at}.api_key_env"), &var)?),
                (None, key) => key,
            };
            let mock_latency = opt_duration(
                &format!("{at}.mock_latency"),
                p.mock_latency.as_ref(),
                Zero::Allowed,
            )?;
            let adaptive_concurrency = match p.adaptive_concurrency {
                None => None,
                Some(a) => {
                    let knob = |name: &str| format!("{at}.adaptive_concurrency.{name}");
                    let count = |name: &str, value: u64| {
                        usize::try_from(value).map_err(|_| {
                            ConfigError::new(GATEWAY, knob(name), "is too large for this machine")
                        })
                    };
                    let mut settings = tower_llm_ratelimit::AdaptiveConcurrency::new();
                    if let Some(min) = a.min {
                        settings = settings.min(count("min", min)?);
                    }
                    if let Some(max) = a.max {
                        settings = settings.max(count("max", max)?);
                    }
                    if let Some(initial) = a.initial {
                        settings = settings.initial(count("initial", initial)?);
                    }
                    let max_wait =
                        opt_duration(&knob("max_wait"), a.max_wait.as_ref(), Zero::Allowed)?;
                    // Checked here, so that `--check` names the knob at fault.
                    checked(|| {
                        tower_llm_ratelimit::RateLimitLayer::builder()
                            .adaptive_concurrency(settings.clone())
                            .build()
                    })
                    .map_err(|e| {
                        let name = e
                            .knob()
                            .strip_prefix("adaptive_concurrency.")
                            .unwrap_or(e.knob());
                        ConfigError::new(GATEWAY, knob(name), e.reason().to_owned())
                    })?;
                    Some(AdaptiveConfig { settings, max_wait })
                }
            };
            providers.insert(
                name,
                ProviderConfig {
                    kind: p.kind,
                    base_url: p.base_url,
                    api_key,
                    api_key_knob,
                    models: p.models,
                    model_map: p.model_map,
                    mock_latency,
                    adaptive_concurrency,
                },
            );
        }

        let mut models = BTreeMap::new();
        for (model, m) in file.models {
            let at = format!("models.{model}");
            let listing: Vec<&String> = providers
                .iter()
                .filter(|(_, p)| p.models.contains(&model))
                .map(|(name, _)| name)
                .collect();
            if listing.is_empty() {
                return Err(ConfigError::new(
                    GATEWAY,
                    at,
                    "is configured, but no provider lists this model in its models",
                ));
            }
            for (i, provider) in m.providers.iter().enumerate() {
                let knob = format!("{at}.providers[{i}]");
                let Some(p) = providers.get(provider) else {
                    return Err(ConfigError::new(
                        GATEWAY,
                        knob.to_owned(),
                        format!("names {provider:?}, which is not a provider"),
                    ));
                };
                if !p.models.contains(&model) {
                    return Err(ConfigError::new(
                        GATEWAY,
                        knob.to_owned(),
                        format!("names {provider:?}, which does not list {model:?} in its models"),
                    ));
                }
                if m.providers[..i].contains(provider) {
                    return Err(ConfigError::new(
                        GATEWAY,
                        knob.to_owned(),
                        format!("names {provider:?} twice"),
                    ));
                }
            }
            let hedge_delay = opt_duration(
                &format!("{at}.hedge_delay"),
                m.hedge_delay.as_ref(),
                Zero::Refused,
            )?;
            if m.strategy == StrategyKind::Hedge && hedge_delay.is_none() {
                return Err(ConfigError::new(
                    GATEWAY,
                    format!("{at}.hedge_delay"),
                    "is required with strategy = \"hedge\"",
                ));
            }
            if m.strategy != StrategyKind::Hedge && hedge_delay.is_some() {
                return Err(ConfigError::new(
                    GATEWAY,
                    format!("{at}.hedge_delay"),
                    "is only used with strategy = \"hedge\"",
                ));
            }
            let dedup = match m.dedup {
                None => None,
                Some(d) => Some(DedupConfig {
                    ttl: duration(&format!("{at}.dedup.ttl"), &d.ttl, Zero::Refused)?,
                    max_entries: positive(
                        &format!("{at}.dedup.max_entries"),
                        d.max_entries
                            .unwrap_or(tower_llm_dedup::DEFAULT_MAX_ENTRIES),
                    )?,
                    cache_all: d.cache_all,
                }),
            };
            let retry = match m.retry {
                None => None,
                Some(r) => {
                    let backoff = match &r.backoff {
                        None => Duration::from_millis(250),
                        Some(t) => duration(&format!("{at}.retry.backoff"), t, Zero::Allowed)?,
                    };
                    let retry = RetryConfig {
                        max_attempts: positive(
                            &format!("{at}.retry.max_attempts"),
                            r.max_attempts,
                        )?,
                        backoff,
                        max_delay: opt_duration(
                            &format!("{at}.retry.max_delay"),
                            r.max_delay.as_ref(),
                            Zero::Refused,
                        )?,
                        deadline: opt_duration(
                            &format!("{at}.retry.deadline"),
                            r.deadline.as_ref(),
                            Zero::Refused,
                        )?,
                        max_retry_after: opt_duration(
                            &format!("{at}.retry.max_retry_after"),
                            r.max_retry_after.as_ref(),
                            Zero::Allowed,
                        )?,
                    };
                    // Checked here with the rest of the layer's rules (a backoff longer than
                    // its cap, ...), so that `--check` names the knob at fault.
                    checked(|| retry.builder(String::new()).build())
                        .map_err(|e| retry.error(&format!("{at}.retry"), &e))?;
                    Some(retry)
                }
            };
            let breaker = match m.breaker {
                None => None,
                Some(b) => Some(BreakerConfig {
                    // Checked below, with the rest of the breaker's policy.
                    failure_rate: b.failure_rate,
                    window_calls: b.window_calls,
                    minimum_calls: b.minimum_calls,
                    consecutive_failures: b.consecutive_failures,
                    cooldown: match &b.cooldown {
                        None => Duration::from_secs(30),
                        Some(t) => duration(&format!("{at}.breaker.cooldown"), t, Zero::Refused)?,
                    },
                }),
            };
            if let Some(b) = &breaker {
                b.builder(String::new())
                    .check()
                    .map_err(|e| BreakerConfig::error(&format!("{at}.breaker"), &e))?;
            }
            let rate_limit = match m.rate_limit {
                None => None,
                Some(l) => {
                    let at = format!("{at}.rate_limit");
                    let rpm = l
                        .requests_per_minute
                        .map(|n| positive(&format!("{at}.requests_per_minute"), n))
                        .transpose()?;
                    let tpm = l
                        .tokens_per_minute
                        .map(|n| positive(&format!("{at}.tokens_per_minute"), n))
                        .transpose()?;
                    let concurrency = l
                        .concurrency
                        .map(|n| {
                            let n = positive(&format!("{at}.concurrency"), n)?;
                            usize::try_from(n).map_err(|_| {
                                ConfigError::new(
                                    GATEWAY,
                                    format!("{at}.concurrency"),
                                    "is too large",
                                )
                            })
                        })
                        .transpose()?;
                    if rpm.is_none() && tpm.is_none() && concurrency.is_none() {
                        return Err(ConfigError::new(
                            GATEWAY,
                            at,
                            "sets no limit: give requests_per_minute, tokens_per_minute or concurrency",
                        ));
                    }
                    Some(RateLimitConfig {
                        requests_per_minute: rpm,
                        tokens_per_minute: tpm,
                        concurrency,
                        max_wait: opt_duration(
                            &format!("{at}.max_wait"),
                            l.max_wait.as_ref(),
                            Zero::Allowed,
                        )?,
                    })
                }
            };
            let budget = match m.budget {
                None => None,
                Some(b) => {
                    let mut config = tower_llm_core::BudgetConfig::new(b.ratio);
                    if let Some(window) = opt_duration(
                        &format!("{at}.budget.window"),
                        b.window.as_ref(),
                        Zero::Refused,
                    )? {
                        config = config.window(window);
                    }
                    if let Some(floor) = b.min_per_second {
                        config = config.min_per_second(floor);
                    }
                    // Checked here, so that `--check` names the knob at fault.
                    checked(|| tower_llm_core::AttemptBudget::new(config)).map_err(|e| {
                        ConfigError::new(
                            GATEWAY,
                            format!("{at}.budget.{}", e.knob()),
                            e.reason().to_owned(),
                        )
                    })?;
                    Some(config)
                }
            };
            let providers_in_order = if m.providers.is_empty() {
                listing.into_iter().cloned().collect()
            } else {
                m.providers
            };
            models.insert(
                model,
                ModelConfig {
                    providers: providers_in_order,
                    strategy: m.strategy,
                    hedge_delay,
                    timeout: opt_duration(
                        &format!("{at}.timeout"),
                        m.timeout.as_ref(),
                        Zero::Refused,
                    )?,
                    dedup,
                    retry,
                    breaker,
                    rate_limit,
                    budget,
                },
            );
        }
        Ok(Config {
            server,
            keys,
            providers,
            models,
            telemetry,
        })
    }

    /// The address to listen on (`server.listen`; default `127.0.0.1:8080`, port 0 for any
    /// free port).
    pub fn listen(&self) -> SocketAddr {
        self.server.listen
    }

    /// Replaces the address to listen on (the binary's `--listen`).
    pub fn set_listen(&mut self, addr: SocketAddr) {
        self.server.listen = addr;
    }

    /// How long requests in flight may run on after a shutdown signal
    /// (`server.shutdown_grace`, default 30 s).
    pub fn shutdown_grace(&self) -> Duration {
        self.server.shutdown_grace
    }

    /// Replaces the shutdown grace period.
    pub fn set_shutdown_grace(&mut self, grace: Duration) {
        self.server.shutdown_grace = grace;
    }

    /// Every model clients can ask for, sorted.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .providers
            .values()
            .flat_map(|p| p.models.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The providers serving `model`, in the order its stack tries them.
    pub fn providers_of(&self, model: &str) -> Vec<String> {
        match self.models.get(model) {
            Some(stack) => stack.providers.clone(),
            None => self
                .providers
                .iter()
                .filter(|(_, p)| p.models.iter().any(|m| m == model))
                .map(|(name, _)| name.clone())
                .collect(),
        }
    }
}
