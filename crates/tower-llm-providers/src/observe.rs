//! The crate's one funnel to `tracing` and `metrics`.
//!
//! A provider call opens a [`CallObs`] through [`Observe::start`] and tells it what happens:
//! the answer, the stream's head, each chunk, the end, the failure, or nothing (a drop). The
//! funnel turns that into one OpenTelemetry GenAI client span and the GenAI client metrics.
//! With the `tracing` and `metrics` features off, every method is empty and [`CallObs`] is a
//! zero-sized value.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

#[cfg(feature = "metrics")]
use std::collections::HashMap;
#[cfg(feature = "metrics")]
use std::sync::{OnceLock, RwLock};

use http::Uri;
#[cfg(any(feature = "tracing", feature = "metrics"))]
use tower_llm_core::FailureKind;
use tower_llm_core::{UpstreamError, Usage};

#[cfg(any(feature = "tracing", feature = "metrics"))]
use crate::chat::FinishReason;
use crate::chat::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Message,
};
use crate::meta::{Dialect, ResponseMeta};

/// `gen_ai.client.operation.duration` under a Prometheus-compatible name: a histogram, in
/// seconds, of whole calls (a stream's, to its end).
pub const METRIC_OPERATION_DURATION: &str = "gen_ai_client_operation_duration_seconds";
/// `gen_ai.client.token.usage`: a histogram of the tokens a call reported, by
/// `gen_ai_token_type` (`input` or `output`).
pub const METRIC_TOKEN_USAGE: &str = "gen_ai_client_token_usage";
/// `gen_ai.client.operation.time_to_first_chunk`: a histogram, in seconds, from the request
/// being sent to a stream's first chunk (streams only).
pub const METRIC_TIME_TO_FIRST_CHUNK: &str = "gen_ai_client_operation_time_to_first_chunk_seconds";
/// Calls sent upstream, by `name` and `call` (`chat`, `stream`, `embeddings`).
pub const METRIC_REQUESTS: &str = "tower_llm_providers_requests_total";
/// Errors handed to the caller (before or inside a stream), by `name`, `call` and `kind`.
pub const METRIC_FAILURES: &str = "tower_llm_providers_failures_total";
/// Request fields left out because the provider's API has no equivalent: unmodelled fields
/// written for another dialect ([`ChatRequest::extra_dialect`]), `from` that dialect's name,
/// and the request's own fields the API lacks ([`ChatField`](crate::ChatField), such as a
/// `seed` sent to Anthropic), `from = "common"`; by `name`, `from` and `to` (the provider's
/// dialect).
pub const METRIC_FIELDS_DROPPED: &str = "tower_llm_providers_fields_dropped_total";

/// The `from` label of [`METRIC_FIELDS_DROPPED`] for the request's own modelled fields.
#[cfg(any(feature = "tracing", feature = "metrics"))]
const COMMON_FIELDS: &str = "common";

/// The bucket boundaries, in seconds, the GenAI semantic conventions recommend for
/// [`METRIC_OPERATION_DURATION`] and [`METRIC_TIME_TO_FIRST_CHUNK`]. The `metrics` facade
/// carries no buckets: give these to your exporter (e.g. `metrics-exporter-prometheus`'s
/// `set_buckets_for_metric`).
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// The bucket boundaries, in tokens, the GenAI semantic conventions recommend for
/// [`METRIC_TOKEN_USAGE`].
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// Distinct request models given their own metric series per provider and operation; later
/// ones share the label value `other`, so that models named by callers cannot multiply the
/// series without bound.
#[cfg(feature = "metrics")]
const MAX_REQUEST_MODELS: usize = 64;
/// Distinct response models per request model, past which the label value is `other`.
#[cfg(feature = "metrics")]
const MAX_RESPONSE_MODELS: usize = 8;
/// The label value of models past the bounds.
#[cfg(feature = "metrics")]
const OTHER_MODEL: &str = "other";

/// Which call a provider makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Chat,
    Stream,
    Embeddings,
}

impl Operation {
    /// `gen_ai.operation.name`.
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    const fn gen_ai(self) -> &'static str {
        match self {
            Operation::Chat | Operation::Stream => "chat",
            Operation::Embeddings => "embeddings",
        }
    }

    /// The `call` label of the crate's own counters.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    const fn call(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Stream => "stream",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// What a call asks for, as far as the span and the metrics need it (no prompt text).
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct RequestFacts<'a> {
    model: &'a str,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    prompt: Prompt<'a>,
}

/// Where the prompt's size comes from, measured only when sizes are recorded.
enum Prompt<'a> {
    Chat(&'a [Message]),
    Embeddings(&'a [String]),
}

impl<'a> RequestFacts<'a> {
    /// A chat request that sends `max_tokens` (the request's, or the provider's default).
    pub(crate) fn chat(request: &'a ChatRequest, max_tokens: Option<u32>) -> Self {
        RequestFacts {
            model: &request.model,
            max_tokens,
            temperature: request.temperature,
            prompt: Prompt::Chat(&request.messages),
        }
    }

    /// An embeddings request.
    pub(crate) fn embeddings(request: &'a EmbeddingRequest) -> Self {
        RequestFacts {
            model: &request.model,
            max_tokens: None,
            temperature: None,
            prompt: Prompt::Embeddings(&request.input),
        }
    }

    /// The prompt's size in characters.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    fn prompt_chars(&self) -> usize {
        match self.prompt {
            Prompt::Chat(messages) => messages.iter().map(|m| m.content.chars().count()).sum(),
            Prompt::Embeddings(input) => input.iter().map(|s| s.chars().count()).sum(),
        }
    }
}

/// One provider's observability: its `name`, its `gen_ai.provider.name`, its server, and
/// its metric handles. Built with the provider; shared by its calls.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct Observe {
    name: Cow<'static, str>,
    provider: &'static str,
    server_address: Box<str>,
    server_port: u16,
    record_sizes: bool,
    #[cfg(feature = "metrics")]
    metrics: Metrics,
}

impl fmt::Debug for Observe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl Observe {
    /// The funnel of a provider named `name` (the `name` label and field), reporting as
    /// `provider` (a `gen_ai.provider.name` well-known value) and calling `endpoint`.
    pub(crate) fn new(
        name: Cow<'static, str>,
        provider: &'static str,
        endpoint: &Uri,
        record_sizes: bool,
    ) -> Arc<Observe> {
        #[cfg(feature = "metrics")]
        describe();
        let https = endpoint.scheme() == Some(&http::uri::Scheme::HTTPS);
        let server_port = endpoint.port_u16().unwrap_or(if https { 443 } else { 80 });
        Arc::new(Observe {
            #[cfg(feature = "metrics")]
            metrics: Metrics::new(name.clone().into(), provider),
            name,
            provider,
            server_address: endpoint.host().unwrap_or_default().into(),
            server_port,
            record_sizes,
        })
    }

    /// The funnel of a decoder used without a service: it never starts a call.
    pub(crate) fn standalone(provider: &'static str) -> Arc<Observe> {
        Arc::new(Observe {
            #[cfg(feature = "metrics")]
            metrics: Metrics::noop(),
            name: Cow::Borrowed(provider),
            provider,
            server_address: Box::from(""),
            server_port: 0,
            record_sizes: false,
        })
    }

    /// A request's `count` unmodelled fields, written for dialect `from`, are left out of
    /// a call to this provider (of dialect `to`).
    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    pub(crate) fn fields_dropped(&self, from: Option<Dialect>, to: Dialect, count: usize) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            name = %self.name,
            from = from.map_or(COMMON_FIELDS, Dialect::as_str),
            to = to.as_str(),
            count,
            "fields the provider's API has no equivalent for left out"
        );
        #[cfg(feature = "metrics")]
        self.metrics
            .fields_dropped(from, to)
            .increment(count as u64);
    }

    /// A call starts: counts it and opens its span.
    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    #[inline]
    pub(crate) fn start(self: &Arc<Self>, op: Operation, request: RequestFacts<'_>) -> CallObs {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        {
            #[cfg(feature = "metrics")]
            self.metrics.requests[op as usize].increment(1);
            // One load of the level every subscriber allows: none at all is the common case.
            #[cfg(feature = "tracing")]
            let span = if tracing::level_enabled!(tracing::Level::WARN) {
                self.span(op, &request)
            } else {
                tracing::Span::none()
            };
            // Without metrics, a call that no subscriber listens to keeps nothing: no clock
            // read, no reference to the funnel, nothing to end. (Metrics cannot tell whether a
            // recorder is installed; their handles are cached, see `Metrics`.)
            #[cfg(not(feature = "metrics"))]
            if !traced(&span) {
                return CallObs { live: None };
            }
            CallObs {
                live: Some(Live {
                    #[cfg(feature = "tracing")]
                    span,
                    #[cfg(feature = "metrics")]
                    series: self.metrics.model(op, request.model),
                    observe: Arc::clone(self),
                    op,
                    started: tokio::time::Instant::now(),
                    first_chunk: false,
                    finish_seen: false,
                    answer_chars: 0,
                }),
            }
        }
        #[cfg(not(any(feature = "tracing", feature = "metrics")))]
        CallObs {}
    }

    #[cfg(feature = "tracing")]
    fn span(&self, op: Operation, request: &RequestFacts<'_>) -> tracing::Span {
        use tracing::field::Empty;
        macro_rules! client_span {
            ($name:literal) => {
                tracing::info_span!(
                    $name,
                    name = %self.name,
                    otel.name = %SpanName(op.gen_ai(), request.model),
                    otel.kind = "client",
                    otel.status_code = Empty,
                    gen_ai.operation.name = op.gen_ai(),
                    gen_ai.provider.name = self.provider,
                    gen_ai.request.model = request.model,
                    gen_ai.request.max_tokens = request.max_tokens,
                    gen_ai.request.temperature = request.temperature,
                    gen_ai.response.model = Empty,
                    gen_ai.response.id = Empty,
                    gen_ai.response.finish_reasons = Empty,
                    gen_ai.response.time_to_first_chunk = Empty,
                    gen_ai.usage.input_tokens = Empty,
                    gen_ai.usage.output_tokens = Empty,
                    server.address = &*self.server_address,
                    server.port = self.server_port,
                    error.type = Empty,
                    stream = op == Operation::Stream,
                    prompt_chars = Empty,
                    answer_chars = Empty,
                )
            };
        }
        let span = match op {
            Operation::Chat | Operation::Stream => client_span!("chat"),
            Operation::Embeddings => client_span!("embeddings"),
        };
        if self.record_sizes && !span.is_disabled() {
            span.record("prompt_chars", request.prompt_chars());
        }
        span
    }
}

/// Whether a subscriber listens to a call: its span is enabled, or the failure warning (the
/// most severe of the call's events) would be recorded. Levels are filtered in order, so a
/// subscriber that wants the call's debug or trace events enables the span too.
#[cfg(feature = "tracing")]
#[inline]
fn traced(span: &tracing::Span) -> bool {
    !span.is_disabled() || tracing::enabled!(tracing::Level::WARN)
}

/// The span name the GenAI conventions ask for, `{operation} {model}`, written without an
/// allocation (tracing's own span names are static; exporters read `otel.name`).
#[cfg(feature = "tracing")]
struct SpanName<'a>(&'static str, &'a str);

#[cfg(feature = "tracing")]
impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// The call's span, entered while this lives.
#[cfg(feature = "tracing")]
pub(crate) type Entered = Option<tracing::span::EnteredSpan>;

/// Nothing to enter without `tracing`.
#[cfg(not(feature = "tracing"))]
#[derive(Debug)]
pub(crate) struct Entered {}

/// One call's observation. Dropped before its end, the call counts as cancelled.
#[derive(Debug)]
pub(crate) struct CallObs {
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    live: Option<Live>,
}

#[cfg(any(feature = "tracing", feature = "metrics"))]
struct Live {
    observe: Arc<Observe>,
    op: Operation,
    started: tokio::time::Instant,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    #[cfg(feature = "metrics")]
    series: Arc<ModelSeries>,
    first_chunk: bool,
    finish_seen: bool,
    answer_chars: usize,
}

#[cfg(any(feature = "tracing", feature = "metrics"))]
impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("op", &self.op)
            .finish_non_exhaustive()
    }
}

/// How a call ended, for the span, the event and the metrics.
#[cfg(any(feature = "tracing", feature = "metrics"))]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
struct End<'a> {
    response_model: Option<&'a str>,
    response_id: Option<&'a str>,
    usage: Option<Usage>,
    finish: Option<&'a FinishReason>,
    error: Option<(FailureKind, Option<u16>)>,
}

impl CallObs {
    /// Runs `f` inside the call's span (so that what the inner client logs is the call's).
    #[inline]
    pub(crate) fn in_span<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "tracing")]
        if let Some(live) = &self.live {
            return live.span.in_scope(f);
        }
        f()
    }

    /// An observation of nothing.
    pub(crate) fn none() -> CallObs {
        CallObs {
            #[cfg(any(feature = "tracing", feature = "metrics"))]
            live: None,
        }
    }

    /// Enters the call's span until the value returned is dropped (while the call's future
    /// is polled).
    #[inline]
    pub(crate) fn enter(&self) -> Entered {
        #[cfg(feature = "tracing")]
        return self
            .live
            .as_ref()
            .filter(|live| !live.span.is_disabled())
            .map(|live| live.span.clone().entered());
        #[cfg(not(feature = "tracing"))]
        Entered {}
    }

    /// A whole chat answer arrived.
    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    #[inline]
    pub(crate) fn chat(&mut self, answer: &ChatResponse) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if let Some(mut live) = self.live.take() {
            if live.observe.record_sizes {
                live.answer_chars = answer.content.chars().count();
            }
            let id = Some(answer.id.as_str())
                .filter(|id| !id.is_empty())
                .or(answer.meta.request_id.as_deref());
            live.end(End {
                response_model: Some(answer.model.as_str()).filter(|m| !m.is_empty()),
                response_id: id,
                usage: answer.usage,
                finish: answer.finish_reason.as_ref(),
                error: None,
            });
        }
    }

    /// Embeddings arrived.
    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    #[inline]
    pub(crate) fn embeddings(&mut self, answer: &EmbeddingResponse) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if let Some(live) = self.live.take() {
            live.end(End {
                response_model: Some(answer.model.as_str()).filter(|m| !m.is_empty()),
                response_id: answer.meta.request_id.as_deref(),
                // Embeddings produce no output tokens.
                usage: answer.usage.map(|u| {
                    Usage::new(u.input_tokens, 0).with_cached_input_tokens(u.cached_input_tokens)
                }),
                finish: None,
                error: None,
            });
        }
    }

    /// The call failed (before a stream's head, or inside it).
    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    #[inline]
    pub(crate) fn failed(
        &mut self,
        error: &UpstreamError,
        response_model: Option<&str>,
        usage: Option<Usage>,
    ) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if let Some(live) = self.live.take() {
            live.end(End {
                response_model,
                response_id: error.request_id(),
                usage,
                finish: None,
                error: Some((error.kind(), error.status().map(|s| s.as_u16()))),
            });
        }
    }

    /// A stream's head arrived: its request id is the response id until the end.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    #[inline]
    pub(crate) fn stream_head(&mut self, meta: &ResponseMeta) {
        #[cfg(feature = "tracing")]
        if let (Some(live), Some(id)) = (&self.live, meta.request_id.as_deref()) {
            live.span.record("gen_ai.response.id", id);
        }
    }

    /// A chunk is handed to the caller.
    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    #[inline]
    pub(crate) fn chunk(&mut self, chunk: &ChatChunk, response_model: Option<&str>) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if let Some(live) = &mut self.live {
            if !live.first_chunk {
                live.first_chunk = true;
                live.first_chunk_arrived(response_model);
            }
            match chunk {
                ChatChunk::Content(text) | ChatChunk::Refusal(text)
                    if live.observe.record_sizes =>
                {
                    live.answer_chars += text.chars().count();
                }
                #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
                ChatChunk::Finish(reason) => {
                    live.finish_seen = true;
                    #[cfg(feature = "tracing")]
                    live.span
                        .record("gen_ai.response.finish_reasons", finish_reasons(reason));
                }
                _ => {}
            }
        }
    }

    /// A stream ended with its terminal event.
    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    #[inline]
    pub(crate) fn stream_completed(&mut self, response_model: Option<&str>, usage: Option<Usage>) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if let Some(live) = self.live.take() {
            live.end(End {
                response_model,
                response_id: None,
                usage,
                finish: None,
                error: None,
            });
        }
    }
}

impl Drop for CallObs {
    #[inline]
    fn drop(&mut self) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if let Some(live) = self.live.take() {
            // A caller that stops reading after the finish chunk had its whole answer.
            let error = (!live.finish_seen).then_some((FailureKind::Cancelled, None));
            live.end(End {
                response_model: None,
                response_id: None,
                usage: None,
                finish: None,
                error,
            });
        }
    }
}

#[cfg(any(feature = "tracing", feature = "metrics"))]
impl Live {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn first_chunk_arrived(&self, response_model: Option<&str>) {
        let elapsed = self.started.elapsed().as_secs_f64();
        #[cfg(feature = "tracing")]
        {
            self.span
                .record("gen_ai.response.time_to_first_chunk", elapsed);
            tracing::trace!(
                parent: &self.span,
                name = %self.observe.name,
                time_to_first_chunk_s = elapsed,
                "first chunk"
            );
        }
        #[cfg(feature = "metrics")]
        {
            let s = self.series.series(response_model);
            s.histogram(&s.ttfc, METRIC_TIME_TO_FIRST_CHUNK, None)
                .record(elapsed);
        }
    }

    fn end(self, end: End<'_>) {
        let elapsed = self.started.elapsed().as_secs_f64();
        #[cfg(feature = "tracing")]
        self.trace_end(&end, elapsed);
        #[cfg(feature = "metrics")]
        self.metrics_end(&end, elapsed);
    }

    #[cfg(feature = "tracing")]
    fn trace_end(&self, end: &End<'_>, elapsed: f64) {
        let span = &self.span;
        if !traced(span) {
            return;
        }
        if let Some(model) = end.response_model {
            span.record("gen_ai.response.model", model);
        }
        if let Some(id) = end.response_id {
            span.record("gen_ai.response.id", id);
        }
        if let Some(usage) = end.usage {
            span.record("gen_ai.usage.input_tokens", usage.input_tokens);
            if self.op != Operation::Embeddings {
                span.record("gen_ai.usage.output_tokens", usage.output_tokens);
            }
        }
        if let Some(reason) = end.finish {
            span.record("gen_ai.response.finish_reasons", finish_reasons(reason));
        }
        if self.observe.record_sizes && self.op != Operation::Embeddings {
            span.record("answer_chars", self.answer_chars);
        }
        let name = &self.observe.name;
        match end.error {
            None => {
                tracing::debug!(
                    parent: span,
                    name = %name,
                    duration_s = elapsed,
                    input_tokens = end.usage.map(|u| u.input_tokens),
                    output_tokens = end.usage.map(|u| u.output_tokens),
                    "provider call finished"
                );
            }
            Some((FailureKind::Cancelled, _)) => {
                span.record("error.type", FailureKind::Cancelled.as_str());
                span.record("otel.status_code", "ERROR");
                tracing::debug!(
                    parent: span,
                    name = %name,
                    duration_s = elapsed,
                    error.type = FailureKind::Cancelled.as_str(),
                    "provider call cancelled"
                );
            }
            Some((kind, status)) => {
                span.record("error.type", kind.as_str());
                span.record("otel.status_code", "ERROR");
                tracing::warn!(
                    parent: span,
                    name = %name,
                    duration_s = elapsed,
                    error.type = kind.as_str(),
                    http.response.status_code = status,
                    "provider call failed"
                );
            }
        }
    }

    #[cfg(feature = "metrics")]
    fn metrics_end(&self, end: &End<'_>, elapsed: f64) {
        let series = &self.series;
        match end.error {
            None => {
                let s = series.series(end.response_model);
                s.histogram(&s.duration, METRIC_OPERATION_DURATION, None)
                    .record(elapsed);
                if let Some(usage) = end.usage {
                    s.histogram(
                        &s.input,
                        METRIC_TOKEN_USAGE,
                        Some(("gen_ai_token_type", "input")),
                    )
                    .record(usage.input_tokens as f64);
                    if self.op != Operation::Embeddings {
                        s.histogram(
                            &s.output,
                            METRIC_TOKEN_USAGE,
                            Some(("gen_ai_token_type", "output")),
                        )
                        .record(usage.output_tokens as f64);
                    }
                }
            }
            Some((kind, _)) => {
                // The failure path registers its series per call: it is not the hot path,
                // and its label set (kind by model) would be large to keep.
                let mut labels = series.labels(end.response_model);
                labels.push(metrics::Label::new("error_type", kind.as_str()));
                metrics::histogram!(METRIC_OPERATION_DURATION, labels).record(elapsed);
                if kind != FailureKind::Cancelled {
                    metrics::counter!(
                        METRIC_FAILURES,
                        "name" => self.observe.name.clone(),
                        "call" => self.op.call(),
                        "kind" => kind.as_str()
                    )
                    .increment(1);
                }
            }
        }
    }
}

/// `gen_ai.response.finish_reasons`, a string array in the conventions: written as
/// `["stop"]`.
#[cfg(feature = "tracing")]
fn finish_reasons(reason: &FinishReason) -> impl tracing::Value + '_ {
    tracing::field::debug([reason.as_str()])
}

/// Describes every metric once per process, with its unit.
#[cfg(feature = "metrics")]
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        metrics::describe_histogram!(
            METRIC_OPERATION_DURATION,
            metrics::Unit::Seconds,
            "GenAI operation duration: a provider call, a stream's to its end"
        );
        metrics::describe_histogram!(
            METRIC_TOKEN_USAGE,
            metrics::Unit::Count,
            "Number of input and output tokens used, as the provider reported them"
        );
        metrics::describe_histogram!(
            METRIC_TIME_TO_FIRST_CHUNK,
            metrics::Unit::Seconds,
            "Time from the request being sent to the first chunk of a streamed answer"
        );
        metrics::describe_counter!(
            METRIC_REQUESTS,
            metrics::Unit::Count,
            "Calls sent upstream by a provider"
        );
        metrics::describe_counter!(
            METRIC_FIELDS_DROPPED,
            metrics::Unit::Count,
            "Request fields left out because the provider's API has no equivalent"
        );
        metrics::describe_counter!(
            METRIC_FAILURES,
            metrics::Unit::Count,
            "Errors a provider handed to its caller, before or inside a stream"
        );
    });
}

/// A provider's metric handles: its request counters, built once, and the GenAI series of
/// each model it was asked for, built on first use.
#[cfg(feature = "metrics")]
struct Metrics {
    /// By [`Operation`]: chat, stream, embeddings.
    requests: [metrics::Counter; 3],
    /// The labels every GenAI series has: `name`, `gen_ai_provider_name`.
    name: metrics::SharedString,
    provider: &'static str,
    /// By request model: chat (and stream), then embeddings.
    models: [RwLock<HashMap<Box<str>, Arc<ModelSeries>>>; 2],
    /// The series of request models past [`MAX_REQUEST_MODELS`].
    other: [OnceLock<Arc<ModelSeries>>; 2],
    /// The first model seen, checked without a lock (most providers serve one model).
    first: [OnceLock<Arc<ModelSeries>>; 2],
    /// [`METRIC_FIELDS_DROPPED`] by the dialect the fields were written for (the provider's
    /// own is the `to` label), registered on first use.
    fields_dropped: [OnceLock<metrics::Counter>; 6],
}

#[cfg(feature = "metrics")]
impl Metrics {
    fn new(name: metrics::SharedString, provider: &'static str) -> Metrics {
        let counter = |op: Operation| metrics::counter!(METRIC_REQUESTS, "name" => name.clone(), "call" => op.call());
        Metrics {
            requests: [
                counter(Operation::Chat),
                counter(Operation::Stream),
                counter(Operation::Embeddings),
            ],
            name,
            provider,
            models: Default::default(),
            other: Default::default(),
            first: Default::default(),
            fields_dropped: Default::default(),
        }
    }

    fn noop() -> Metrics {
        Metrics {
            requests: [
                metrics::Counter::noop(),
                metrics::Counter::noop(),
                metrics::Counter::noop(),
            ],
            name: metrics::SharedString::const_str(""),
            provider: "",
            models: Default::default(),
            other: Default::default(),
            first: Default::default(),
            fields_dropped: std::array::from_fn(|_| OnceLock::from(metrics::Counter::noop())),
        }
    }

    /// The counter of fields written for `from` (`None`: the request's own modelled fields)
    /// that a provider of dialect `to` left out.
    fn fields_dropped(&self, from: Option<Dialect>, to: Dialect) -> &metrics::Counter {
        // Dialects defined outside this crate share one series, labelled `other`.
        let (index, label) = match from {
            Some(from @ Dialect::OpenAi) => (0, from.as_str()),
            Some(from @ Dialect::Anthropic) => (1, from.as_str()),
            Some(from @ Dialect::Gemini) => (2, from.as_str()),
            Some(from @ Dialect::Bedrock) => (3, from.as_str()),
            Some(Dialect::Other(_)) => (4, "other"),
            None => (5, COMMON_FIELDS),
        };
        self.fields_dropped[index].get_or_init(|| {
            metrics::counter!(METRIC_FIELDS_DROPPED,
                "name" => self.name.clone(), "from" => label, "to" => to.as_str())
        })
    }

    /// The series of `model` for `op`: looked up under a read lock, made once.
    fn model(&self, op: Operation, model: &str) -> Arc<ModelSeries> {
        let index = usize::from(op == Operation::Embeddings);
        if let Some(first) = self.first[index].get()
            && &*first.model == model
        {
            return Arc::clone(first);
        }
        let models = &self.models[index];
        if let Some(found) = models.read().ok().and_then(|m| m.get(model).cloned()) {
            return found;
        }
        let Ok(mut map) = models.write() else {
            return self.other(op, index);
        };
        if let Some(found) = map.get(model) {
            return Arc::clone(found);
        }
        if map.len() >= MAX_REQUEST_MODELS {
            drop(map);
            return self.other(op, index);
        }
        let series = Arc::new(ModelSeries::new(&self.name, self.provider, op, model));
        map.insert(model.into(), Arc::clone(&series));
        let _ = self.first[index].set(Arc::clone(&series));
        series
    }

    fn other(&self, op: Operation, index: usize) -> Arc<ModelSeries> {
        Arc::clone(
            self.other[index].get_or_init(|| {
                Arc::new(ModelSeries::new(&self.name, self.provider, op, OTHER_MODEL))
            }),
        )
    }
}

/// The GenAI series of one request model (and `name`, provider, operation).
#[cfg(feature = "metrics")]
struct ModelSeries {
    /// The request model.
    model: Box<str>,
    /// The first response model seen, checked without a lock.
    first: OnceLock<(Box<str>, Arc<Series>)>,
    /// `name`, `gen_ai_operation_name`, `gen_ai_provider_name`, `gen_ai_request_model`.
    labels: Vec<metrics::Label>,
    /// The series without a response model, then by response model.
    unknown: OnceLock<Arc<Series>>,
    by_response: RwLock<Vec<(Box<str>, Arc<Series>)>>,
}

#[cfg(feature = "metrics")]
impl ModelSeries {
    fn new(
        name: &metrics::SharedString,
        provider: &'static str,
        op: Operation,
        model: &str,
    ) -> ModelSeries {
        ModelSeries {
            model: model.into(),
            first: OnceLock::new(),
            labels: vec![
                metrics::Label::new("name", name.clone()),
                metrics::Label::new("gen_ai_operation_name", op.gen_ai()),
                metrics::Label::from_static_parts("gen_ai_provider_name", provider),
                metrics::Label::new("gen_ai_request_model", model.to_owned()),
            ],
            unknown: OnceLock::new(),
            by_response: RwLock::new(Vec::new()),
        }
    }

    fn labels(&self, response_model: Option<&str>) -> Vec<metrics::Label> {
        let mut labels = self.labels.clone();
        if let Some(model) = response_model {
            labels.push(metrics::Label::new(
                "gen_ai_response_model",
                model.to_owned(),
            ));
        }
        labels
    }

    /// The series of `response_model` (`None`: not known), made once.
    fn series(&self, response_model: Option<&str>) -> Arc<Series> {
        let Some(model) = response_model else {
            return Arc::clone(
                self.unknown
                    .get_or_init(|| Arc::new(Series::new(self.labels.clone()))),
            );
        };
        if let Some((first, series)) = self.first.get()
            && &**first == model
        {
            return Arc::clone(series);
        }
        if let Ok(list) = self.by_response.read()
            && let Some((_, found)) = list.iter().find(|(m, _)| &**m == model)
        {
            return Arc::clone(found);
        }
        let Ok(mut list) = self.by_response.write() else {
            return Arc::new(Series::new(self.labels(Some(OTHER_MODEL))));
        };
        if let Some((_, found)) = list.iter().find(|(m, _)| &**m == model) {
            return Arc::clone(found);
        }
        let key = if list.len() >= MAX_RESPONSE_MODELS {
            OTHER_MODEL
        } else {
            model
        };
        if let Some((_, found)) = list.iter().find(|(m, _)| &**m == key) {
            return Arc::clone(found);
        }
        let series = Arc::new(Series::new(self.labels(Some(key))));
        list.push((key.into(), Arc::clone(&series)));
        let _ = self.first.set((key.into(), Arc::clone(&series)));
        series
    }
}

/// The histograms of one label set, each registered on its first sample (an embeddings
/// series never shows an empty output-token or first-chunk histogram).
#[cfg(feature = "metrics")]
struct Series {
    labels: Vec<metrics::Label>,
    duration: OnceLock<metrics::Histogram>,
    input: OnceLock<metrics::Histogram>,
    output: OnceLock<metrics::Histogram>,
    ttfc: OnceLock<metrics::Histogram>,
}

#[cfg(feature = "metrics")]
impl Series {
    fn new(labels: Vec<metrics::Label>) -> Series {
        Series {
            labels,
            duration: OnceLock::new(),
            input: OnceLock::new(),
            output: OnceLock::new(),
            ttfc: OnceLock::new(),
        }
    }

    fn histogram<'a>(
        &self,
        cell: &'a OnceLock<metrics::Histogram>,
        name: &'static str,
        extra: Option<(&'static str, &'static str)>,
    ) -> &'a metrics::Histogram {
        cell.get_or_init(|| {
            let mut labels = self.labels.clone();
            if let Some((key, value)) = extra {
                labels.push(metrics::Label::from_static_parts(key, value));
            }
            metrics::histogram!(name, labels)
        })
    }
}
