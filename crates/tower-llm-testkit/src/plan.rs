//! What the mock server does to each request: latency, faults, quotas, scripted steps.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::duration_format;

/// The API a request was sent to.
///
/// In plan files a route is written in snake case: `"openai_chat"`, `"openai_embeddings"`,
/// `"anthropic_messages"`, `"gemini_generate"`, `"gemini_stream"`, `"bedrock_converse"`,
/// `"bedrock_converse_stream"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Route {
    /// OpenAI `POST /v1/chat/completions` (streaming with `"stream": true`).
    #[serde(rename = "openai_chat")]
    OpenAiChat,
    /// OpenAI `POST /v1/embeddings`.
    #[serde(rename = "openai_embeddings")]
    OpenAiEmbeddings,
    /// Anthropic `POST /v1/messages` (streaming with `"stream": true`).
    #[serde(rename = "anthropic_messages")]
    AnthropicMessages,
    /// Gemini `POST /v1beta/models/{model}:generateContent`.
    #[serde(rename = "gemini_generate")]
    GeminiGenerate,
    /// Gemini `POST /v1beta/models/{model}:streamGenerateContent` (SSE with `?alt=sse`).
    #[serde(rename = "gemini_stream")]
    GeminiStream,
    /// AWS Bedrock `POST /model/{modelId}/converse`.
    #[serde(rename = "bedrock_converse")]
    BedrockConverse,
    /// AWS Bedrock `POST /model/{modelId}/converse-stream` (the binary event-stream framing).
    #[serde(rename = "bedrock_converse_stream")]
    BedrockConverseStream,
}

impl Route {
    /// Every route, in declaration order.
    pub const ALL: [Route; 7] = [
        Route::OpenAiChat,
        Route::OpenAiEmbeddings,
        Route::AnthropicMessages,
        Route::GeminiGenerate,
        Route::GeminiStream,
        Route::BedrockConverse,
        Route::BedrockConverseStream,
    ];

    /// The name used in plan files and in [`Display`](fmt::Display).
    pub const fn as_str(self) -> &'static str {
        match self {
            Route::OpenAiChat => "openai_chat",
            Route::OpenAiEmbeddings => "openai_embeddings",
            Route::AnthropicMessages => "anthropic_messages",
            Route::GeminiGenerate => "gemini_generate",
            Route::GeminiStream => "gemini_stream",
            Route::BedrockConverse => "bedrock_converse",
            Route::BedrockConverseStream => "bedrock_converse_stream",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a 401 answer repeats the key it refused, as upstreams do: OpenAI masks it
/// (`Incorrect API key provided: sk-proj-****...abcd`), a proxy or a self-hosted server may
/// not. For testing that clients keep keys out of their errors and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyEcho {
    /// The error message does not mention the key (the default).
    #[default]
    Silent,
    /// The message ends with the key's first eight and last four characters around
    /// asterisks, as OpenAI writes it.
    Masked,
    /// The message ends with the whole key.
    Whole,
}

impl KeyEcho {
    /// How this echo writes `key`, if it writes it at all.
    pub(crate) fn text(self, key: &str) -> Option<String> {
        match self {
            KeyEcho::Silent => None,
            KeyEcho::Whole => Some(key.to_owned()),
            KeyEcho::Masked => {
                let chars: Vec<char> = key.chars().collect();
                Some(if chars.len() >= 16 {
                    let head: String = chars[..8].iter().collect();
                    let tail: String = chars[chars.len() - 4..].iter().collect();
                    format!("{head}{}{tail}", "*".repeat(chars.len() - 12))
                } else {
                    "*".repeat(chars.len())
                })
            }
        }
    }
}

/// Which header carries the retry hint of a [`Fault::RateLimited`] answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfterForm {
    /// `retry-after: 7` (whole seconds, rounded up).
    #[default]
    Seconds,
    /// `retry-after: Wed, 21 Oct 2026 07:28:07 GMT` (an HTTP-date, rounded up to the second).
    HttpDate,
    /// `retry-after-ms: 1500` (OpenAI).
    Millis,
    /// `x-ms-retry-after-ms: 1500` (Azure OpenAI).
    MsMillis,
}

/// One way a request can go wrong. Every answer is shaped like the provider of the route it
/// was sent to (OpenAI, Anthropic, Gemini or Bedrock error JSON; Bedrock's with its
/// `x-amzn-errortype` header).
///
/// In plan files a fault is written in snake case: `{"status": 500}`,
/// `{"rate_limited": {"retry_after": "2s", "form": "http_date"}}`, `"quota_exhausted"`,
/// `"drop_connection"`, `{"stall_stream": {"after_chunks": 2}}`, ...
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// An error answer with this status and the provider's error body for it: 400
    /// invalid request, 401, 403, 404, 429 rate limit (without a retry hint), 500 server
    /// error, 503 unavailable, 529 overloaded, ... A status that is not a valid HTTP error
    /// status answers 500.
    Status(u16),
    /// 429 with a retry hint of `retry_after` in the header `form` names, the provider's
    /// rate-limit headers (remaining 0) and, on Gemini routes, a `google.rpc.RetryInfo`.
    RateLimited {
        /// How long the client is asked to wait.
        #[serde(with = "duration_format")]
        retry_after: Duration,
        /// Which header says so.
        #[serde(default)]
        form: RetryAfterForm,
    },
    /// The account's quota is spent: OpenAI 429 `insufficient_quota`, Gemini 429
    /// `RESOURCE_EXHAUSTED` with a per-day `QuotaFailure`, Anthropic 400 "credit balance is
    /// too low" (what Anthropic really answers), Bedrock 400
    /// `ServiceQuotaExceededException`. No retry hint.
    QuotaExhausted,
    /// The prompt is too long for the model: 400 with OpenAI's `context_length_exceeded`
    /// code, Anthropic's "prompt is too long", Bedrock's `ValidationException` "Input is too
    /// long for requested model." or Gemini's `INVALID_ARGUMENT` token-count
    /// message. See also [`FaultPlan::context_window`], which answers this only to prompts
    /// that really are too long.
    ContextLengthExceeded,
    /// The provider is overloaded: Anthropic 529 `overloaded_error`, OpenAI and Gemini 503,
    /// Bedrock 503 `ServiceUnavailableException`.
    Overloaded,
    /// The connection is closed without any answer (the client sees a transport error).
    DropConnection,
    /// 200 with a JSON body cut in the middle (in a stream: the first content event's JSON
    /// is cut).
    MalformedJson,
    /// 502 with an nginx-style `text/html` error page.
    HtmlError,
    /// The answer starts (200 and headers; in a stream the opening events and
    /// `after_chunks` content chunks; otherwise the first half of the JSON body) and then
    /// nothing more comes for a year of tokio time, after which the connection is cut.
    ///
    /// On the real clock that year is real: a test without a client-side timeout hangs
    /// (see the [crate docs](crate)).
    StallStream {
        /// Content chunks sent before the stall.
        after_chunks: usize,
    },
    /// Like [`StallStream`](Self::StallStream), but the connection is cut at once instead
    /// of stalling: no terminal event, the body ends in an error.
    CutStream {
        /// Content chunks sent before the cut.
        after_chunks: usize,
    },
    /// A stream that sends `after_chunks` content chunks and then the provider's in-stream
    /// error named by `error` (OpenAI `data: {"error":..}`, Anthropic `event: error`, Gemini
    /// `data: {"error":..}`, Bedrock an exception message; see [`StreamError`] for each provider's words). On a request
    /// that is not streamed it answers like [`Overloaded`](Self::Overloaded).
    ///
    /// In plan files: `{"stream_error_event": {"after_chunks": 1, "error": "rate_limited"}}`
    /// (`error` defaults to `"overloaded"`).
    StreamErrorEvent {
        /// Content chunks sent before the error event.
        after_chunks: usize,
        /// Which error the event names.
        #[serde(default)]
        error: StreamError,
    },
    /// A stream that sends `after_chunks` content chunks, then an error payload without the
    /// provider's own error object, as proxies and OpenAI-compatible servers send them (see
    /// [`BareError`]), and then the provider's clean terminal event as if nothing had
    /// happened: a client that only looks for an `error` key ends with a short answer it
    /// takes for a whole one. For the SSE providers (OpenAI, Anthropic, Gemini with
    /// `alt=sse`); Bedrock and Gemini's JSON array stream answer like
    /// [`StreamErrorEvent`](Self::StreamErrorEvent). On a request that is not streamed it
    /// answers like [`Overloaded`](Self::Overloaded).
    ///
    /// In plan files: `{"stream_bare_error": {"after_chunks": 1, "shape": "object_error"}}`
    /// (`shape` defaults to `"message"`).
    StreamBareError {
        /// Content chunks sent before the error.
        after_chunks: usize,
        /// How the error is written.
        #[serde(default)]
        shape: BareError,
    },
    /// A complete stream, terminal event included, that reports no token usage: no usage
    /// chunk from OpenAI even when `stream_options.include_usage` asks for one (as some
    /// compatible servers do), no `usage` in Anthropic's `message_start` and
    /// `message_delta`, no `usageMetadata` from Gemini. On a request that is not streamed it
    /// answers normally.
    StreamWithoutUsage,
}

/// The error a [`Fault::StreamErrorEvent`] sends inside a stream, in each provider's words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamError {
    /// The provider is overloaded: Anthropic `overloaded_error`, Gemini 503 `UNAVAILABLE`;
    /// OpenAI names no overload inside a stream and sends its `server_error` ("The server had
    /// an error while processing your request").
    #[default]
    Overloaded,
    /// A rate limit, with no retry hint (an event has no headers): Anthropic
    /// `rate_limit_error`, OpenAI code `rate_limit_exceeded`, Gemini 429 `RESOURCE_EXHAUSTED`
    /// with a per-minute `QuotaFailure`.
    RateLimited,
    /// An internal error: Anthropic `api_error`, OpenAI `server_error`, Gemini 500 `INTERNAL`.
    ServerError,
    /// The request's own fault, not the upstream's: Anthropic and OpenAI
    /// `invalid_request_error`, Gemini 400 `INVALID_ARGUMENT`.
    InvalidRequest,
}

/// How a [`Fault::StreamBareError`] writes its error, each with the message `upstream
/// failed mid-stream`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BareError {
    /// `event: error` with `data: {"message": ..}`.
    #[default]
    Message,
    /// `data: {"type": "error", "message": ..}`, no event name.
    TypedMessage,
    /// `data: {"object": "error", "message": .., "type": "BadRequestError", "param": null,
    /// "code": 400}`, as vLLM sends it.
    ObjectError,
    /// `event: error` with a line of text that is not JSON.
    Text,
}

/// How long the server waits before it starts answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Latency {
    /// Always this long. Plan files: `{"fixed": "250ms"}`.
    Fixed(#[serde(with = "duration_format")] Duration),
    /// Uniformly between `min` and `max`. Plan files: `{"uniform": {"min": "10ms", "max":
    /// "50ms"}}`.
    Uniform {
        /// The shortest wait.
        #[serde(with = "duration_format")]
        min: Duration,
        /// The longest wait.
        #[serde(with = "duration_format")]
        max: Duration,
    },
    /// Log-normal with this median and 99th percentile: most answers are quick, a few are
    /// very slow (what LLM APIs look like). Draws are capped at ten times `p99`. Plan files:
    /// `{"long_tail": {"median": "200ms", "p99": "3s"}}`.
    LongTail {
        /// Half the answers are faster than this.
        #[serde(with = "duration_format")]
        median: Duration,
        /// 99 % of the answers are faster than this.
        #[serde(with = "duration_format")]
        p99: Duration,
    },
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Fixed(Duration::ZERO)
    }
}

/// The 99th percentile of the standard normal distribution.
const Z_99: f64 = 2.326_347_874;

impl Latency {
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => {
                if max <= min {
                    return min;
                }
                let span = (max - min).as_secs_f64();
                let offset = Duration::try_from_secs_f64(span * rng.random::<f64>());
                min.saturating_add(offset.unwrap_or(max - min))
            }
            Latency::LongTail { median, p99 } => {
                if p99 <= median || median.is_zero() {
                    return median;
                }
                let mu = median.as_secs_f64().ln();
                let sigma = (p99.as_secs_f64().ln() - mu) / Z_99;
                // Box-Muller: two uniforms give one standard normal draw.
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let secs = (mu + sigma * z).exp();
                let cap = p99.as_secs_f64() * 10.0;
                Duration::try_from_secs_f64(secs.min(cap)).unwrap_or(median)
            }
        }
    }
}

/// A requests-per-minute and tokens-per-minute quota, enforced over a sliding 60 s window
/// of tokio time.
///
/// A request is admitted when fewer than `requests_per_minute` requests were admitted in the
/// last 60 s and their summed cost plus its own is at most `tokens_per_minute`. Its cost is
/// [`tower_llm_core::estimate_body_tokens`] of its body, so a client-side limiter using core's
/// estimate computes the same number; an answered request whose usage (prompt and reply)
/// exceeds that cost has the difference counted too, when it is answered, as a provider
/// counts the tokens used. Refused requests do not count. A refusal is a 429 with
/// `retry-after` (seconds, rounded up) until enough capacity frees, and the provider's
/// rate-limit headers (also sent on admitted answers). A plan's quota is one window shared
/// by every route the plan serves (a provider account); a [route
/// override](FaultPlan::route) with its own quota has its own window.
///
/// `u64::MAX` means no limit; that is the default for both fields:
///
/// ```
/// use tower_llm_testkit::Quota;
/// let quota = Quota { requests_per_minute: 3, ..Quota::default() };
/// assert_eq!(quota.tokens_per_minute, u64::MAX);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    /// Requests admitted per 60 s.
    pub requests_per_minute: u64,
    /// Estimated tokens admitted per 60 s.
    pub tokens_per_minute: u64,
}

impl Quota {
    /// A quota of `requests_per_minute` requests and `tokens_per_minute` tokens.
    pub const fn new(requests_per_minute: u64, tokens_per_minute: u64) -> Self {
        Quota {
            requests_per_minute,
            tokens_per_minute,
        }
    }
}

impl Default for Quota {
    fn default() -> Self {
        Quota::new(u64::MAX, u64::MAX)
    }
}

/// A fault and how often it happens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedFault {
    /// The fault.
    pub fault: Fault,
    /// Its probability per request, from 0 to 1.
    pub probability: f64,
}

/// The behaviour of a [`MockServer`](crate::MockServer): latency, faults, quotas and replies,
/// global or per route, deterministic for a given seed.
///
/// For each request, in order:
/// 1. when [`api_keys`](Self::api_keys) are set, a request with another key (or none) is
///    answered 401;
/// 2. if a [`script`](Self::script) step is left, it is consumed: a `Some(fault)` step
///    answers that fault (the quota is not consulted); a `None` step answers normally,
///    subject to the quota only;
/// 3. past the [`capacity`](Self::capacity), if any, the request is answered 429 at once;
/// 4. the [`quota`](Self::quota), if any, admits the request or answers 429;
/// 5. one uniform draw picks among the [`fault`](Self::fault)s (their probabilities add up:
///    `(A, 0.1), (B, 0.2)` gives A on 10 % and B on 20 % of the requests);
/// 6. otherwise the answer is normal ([`context_window`](Self::context_window) permitting).
///
/// Then the server waits the [`latency`](Self::latency) and answers.
///
/// All randomness comes from one RNG seeded with [`seed`](Self::seed) (default 0), drawn in
/// the order requests arrive: the same seed and the same request order give the same faults
/// and latencies. A [`route`](Self::route) override replaces the whole plan (its own RNG,
/// script and quota window) for that route.
///
/// A plan is also JSON (for `tower-llm-mock --plan FILE`); durations are strings such as
/// `"250ms"`, `"2s"`, `"1m"` or numbers of milliseconds:
///
/// ```
/// use std::time::Duration;
/// use tower_llm_testkit::{Fault, FaultPlan, Latency, Route};
///
/// let plan = FaultPlan::from_json(r#"{
///     "seed": 7,
///     "latency": {"uniform": {"min": "20ms", "max": "200ms"}},
///     "faults": [
///         {"fault": {"status": 500}, "probability": 0.05},
///         {"fault": {"rate_limited": {"retry_after": "2s"}}, "probability": 0.05}
///     ],
///     "quota": {"requests_per_minute": 60},
///     "routes": {"anthropic_messages": {"faults": [{"fault": "overloaded", "probability": 0.5}]}}
/// }"#).unwrap();
/// let same = FaultPlan::healthy()
///     .seed(7)
///     .latency(Latency::Uniform { min: Duration::from_millis(20), max: Duration::from_millis(200) })
///     .fault(Fault::Status(500), 0.05)
///     .fault(Fault::RateLimited { retry_after: Duration::from_secs(2), form: Default::default() }, 0.05)
///     .quota(tower_llm_testkit::Quota { requests_per_minute: 60, ..Default::default() })
///     .route(Route::AnthropicMessages, FaultPlan::healthy().fault(Fault::Overloaded, 0.5));
/// assert_eq!(plan, same);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    seed: u64,
    latency: Latency,
    faults: Vec<WeightedFault>,
    script: Vec<Option<Fault>>,
    quota: Option<Quota>,
    name: String,
    reply: Option<String>,
    #[serde(with = "duration_format")]
    stream_chunk_delay: Duration,
    context_window: Option<u64>,
    capacity: Option<usize>,
    api_keys: Vec<String>,
    echo_api_key: KeyEcho,
    routes: BTreeMap<Route, FaultPlan>,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan::healthy()
    }
}

impl FaultPlan {
    /// A server that answers everything at once, normally, named `"mock"`.
    pub fn healthy() -> Self {
        FaultPlan {
            seed: 0,
            latency: Latency::default(),
            faults: Vec::new(),
            script: Vec::new(),
            quota: None,
            name: "mock".to_owned(),
            reply: None,
            stream_chunk_delay: Duration::ZERO,
            context_window: None,
            capacity: None,
            api_keys: Vec::new(),
            echo_api_key: KeyEcho::Silent,
            routes: BTreeMap::new(),
        }
    }

    /// Seeds the RNG behind latencies and random faults.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Waits this long (drawn per request) before answering.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }

    /// Answers `fault` with `probability` (0 to 1; values outside are clamped, NaN counts
    /// as 0) per request. Faults added earlier are tried first; the probabilities add up,
    /// and past 1 the later faults never happen.
    pub fn fault(mut self, fault: Fault, probability: f64) -> Self {
        self.faults.push(WeightedFault { fault, probability });
        self
    }

    /// Scripts the next requests: step `i` decides request `i` (a `None` step answers
    /// normally), before any quota or random fault. Replaces any earlier script.
    pub fn script(mut self, steps: impl IntoIterator<Item = Option<Fault>>) -> Self {
        self.script = steps.into_iter().collect();
        self
    }

    /// Enforces a requests- and tokens-per-minute quota (see [`Quota`]).
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// Names the server: normal replies are `"{name}: {last user message}"`, and each answer
    /// carries an `x-mock-server: {name}` header.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Replies with this text instead of `"{name}: {last user message}"`.
    pub fn reply(mut self, reply: impl Into<String>) -> Self {
        self.reply = Some(reply.into());
        self
    }

    /// Waits this long between the events of a streamed answer.
    pub fn stream_chunk_delay(mut self, delay: Duration) -> Self {
        self.stream_chunk_delay = delay;
        self
    }

    /// Answers [`Fault::ContextLengthExceeded`] to chat requests whose messages (system
    /// prompt included) come to more than `tokens` by
    /// [`estimate_text_tokens`](tower_llm_core::estimate_text_tokens): a small-context
    /// model, for tests that fall back to a larger one.
    pub fn context_window(mut self, tokens: u64) -> Self {
        self.context_window = Some(tokens);
        self
    }

    /// A hidden capacity, as a provider under load has: a request that arrives while
    /// `concurrent` requests are already being answered by this server (all routes together)
    /// is refused at once with the provider's 429, without a retry hint. Checked after the
    /// key and the script, before the quota and the faults. For testing adaptive concurrency
    /// limits against an upstream whose limit they must find.
    pub fn capacity(mut self, concurrent: usize) -> Self {
        self.capacity = Some(concurrent);
        self
    }

    /// Accepts only these API keys: any other key, or none, is answered 401 with the
    /// provider's authentication error, before the script, quota or faults are consulted.
    /// With no keys (the default) every request is accepted.
    pub fn api_keys<K: Into<String>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.api_keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the 401 answers of [`api_keys`](Self::api_keys) repeat the refused key in
    /// their error message, and how.
    pub fn echo_api_key(mut self, echo: KeyEcho) -> Self {
        self.echo_api_key = echo;
        self
    }

    /// Uses `plan` instead of this one for requests to `route`. Overrides inside `plan` are
    /// ignored.
    pub fn route(mut self, route: Route, plan: FaultPlan) -> Self {
        self.routes.insert(route, plan);
        self
    }

    /// Reads a plan from JSON (see the type's docs for the format).
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Reads a plan from a JSON file.
    pub fn from_file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Self::from_json(&text).map_err(std::io::Error::other)
    }

    /// This plan as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The name replies carry.
    pub fn name_str(&self) -> &str {
        &self.name
    }

    pub(crate) fn parts(&self) -> PlanParts<'_> {
        PlanParts {
            seed: self.seed,
            latency: &self.latency,
            faults: &self.faults,
            script: &self.script,
            quota: self.quota,
            name: &self.name,
            reply: self.reply.as_deref(),
            stream_chunk_delay: self.stream_chunk_delay,
            context_window: self.context_window,
            capacity: self.capacity,
            api_keys: &self.api_keys,
            echo_api_key: self.echo_api_key,
            routes: &self.routes,
        }
    }
}

/// A borrowed view of a plan's fields, for the server.
#[derive(Debug)]
pub(crate) struct PlanParts<'a> {
    pub(crate) seed: u64,
    pub(crate) latency: &'a Latency,
    pub(crate) faults: &'a [WeightedFault],
    pub(crate) script: &'a [Option<Fault>],
    pub(crate) quota: Option<Quota>,
    pub(crate) name: &'a str,
    pub(crate) reply: Option<&'a str>,
    pub(crate) stream_chunk_delay: Duration,
    pub(crate) context_window: Option<u64>,
    pub(crate) capacity: Option<usize>,
    pub(crate) api_keys: &'a [String],
    pub(crate) echo_api_key: KeyEcho,
    pub(crate) routes: &'a BTreeMap<Route, FaultPlan>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn plan_round_trips_through_json() {
        let plan = FaultPlan::healthy()
            .seed(3)
            .latency(Latency::LongTail {
                median: Duration::from_millis(100),
                p99: Duration::from_secs(2),
            })
            .fault(Fault::DropConnection, 0.1)
            .fault(
                Fault::RateLimited {
                    retry_after: Duration::from_millis(1500),
                    form: RetryAfterForm::MsMillis,
                },
                0.2,
            )
            .script([Some(Fault::Status(503)), None, Some(Fault::HtmlError)])
            .quota(Quota::new(10, 5000))
            .name("fast")
            .stream_chunk_delay(Duration::from_millis(5))
            .context_window(4096)
            .api_keys(["sk-a", "sk-b"])
            .script([Some(Fault::ContextLengthExceeded)])
            .route(
                Route::GeminiStream,
                FaultPlan::healthy().fault(Fault::CutStream { after_chunks: 2 }, 1.0),
            );
        let json = plan.to_json();
        assert_eq!(
            FaultPlan::from_json(&json).expect("own output parses"),
            plan
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(FaultPlan::from_json(r#"{"sede": 1}"#).is_err());
        assert!(FaultPlan::from_json(r#"{"latency": {"fixed": "soon"}}"#).is_err());
    }

    #[test]
    fn long_tail_has_its_median_and_p99() {
        let latency = Latency::LongTail {
            median: Duration::from_millis(100),
            p99: Duration::from_secs(1),
        };
        let mut rng = StdRng::seed_from_u64(1);
        let mut draws: Vec<Duration> = (0..20_000).map(|_| latency.sample(&mut rng)).collect();
        draws.sort();
        let median = draws[draws.len() / 2].as_secs_f64();
        let p99 = draws[draws.len() * 99 / 100].as_secs_f64();
        assert!((0.09..0.11).contains(&median), "median {median}");
        assert!((0.85..1.15).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn uniform_stays_in_bounds() {
        let latency = Latency::Uniform {
            min: Duration::from_millis(10),
            max: Duration::from_millis(20),
        };
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let d = latency.sample(&mut rng);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
        }
    }
}
