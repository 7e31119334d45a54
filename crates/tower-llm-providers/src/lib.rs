//! Tower services for LLM provider APIs: OpenAI, Anthropic, Gemini, OpenAI-compatible servers,
//! Azure OpenAI and (feature `bedrock`) AWS Bedrock, streaming included.
//!
//! Every provider is one [`Provider`] over a [`Protocol`] (the wire format: requests,
//! answers, errors, stream framing and events); see the [`protocol`] module for how one is
//! added, from inside this crate or outside it.
//!
//! This crate is what the [tower-llm] layers wrap. Every provider is a
//! [`tower_service::Service`] for
//!
//! - [`ChatRequest`] → [`ChatResponse`], the whole answer;
//! - [`Streaming`]`<ChatRequest>` → [`ChatStream`], a stream of [`ChatChunk`]s (content
//!   delta, tool-call delta, usage, finish);
//! - [`EmbeddingRequest`] → [`EmbeddingResponse`] (OpenAI and compatible servers);
//!
//! with one set of types for every provider and an `extra` JSON map in both directions for
//! what they do not model. Each provider wraps an inner HTTP service, by default the shared
//! [`HttpClient`] (hyper-util, rustls with webpki roots, HTTP/2 when offered, a keep-alive
//! pool, a connect timeout); pass your own to `build_with` to put tower-http layers under it
//! or to bring another client. Providers never retry on their own.
//!
//! # Errors
//!
//! Every failure is a [`tower_llm_core::UpstreamError`] (re-exported as [`Error`]), already
//! classified: the status, the provider's error type or code, the retry hint from every
//! header form and from Gemini's `RetryInfo`, quota exhausted versus a transient 429, and up
//! to 8 KiB of the raw body. Malformed JSON, HTML error pages, cut and oversized bodies are
//! errors with a clear message, never a panic. Because core's classifier understands the
//! type, layers that box it (retry, breaker, fallback) still see what it was. See
//! `docs/providers.md` for the full mapping table.
//!
//! # Keys
//!
//! Keys are held in [`ApiKey`], which prints as `ApiKey(****)`; the header carrying it is
//! marked sensitive, and errors never hold request headers.
//!
//! # Fingerprints, cost, determinism
//!
//! [`ChatRequest`] and [`EmbeddingRequest`] implement core's
//! [`Fingerprint`](tower_llm_core::Fingerprint) (every field that changes the answer, plus
//! `user` and `tenant`), [`RequestCost`](tower_llm_core::RequestCost) (prompt text with core's
//! estimate, plus `max_tokens`) and [`Deterministic`](tower_llm_core::Deterministic) (a seed
//! or a temperature of zero). Responses implement
//! [`ResponseUsage`](tower_llm_core::ResponseUsage) and
//! [`ClassifyResponse`](tower_llm_core::ClassifyResponse) (always a success), and so does
//! [`ChatStream`]: failures inside a stream arrive as its error items.
//!
//! # Streams
//!
//! A [`ChatStream`] is returned at its response head and ends much later. It carries core's
//! [`EndSignal`](tower_llm_core::EndSignal), fired once: at its terminal event (with the usage
//! it reported), at its first error item (a cut, a stall, an error event), or when it is
//! dropped. The layers wait for it: the rate limiter keeps a streamed call's concurrency slot
//! and token reservation until then, the breaker judges the call by it (see
//! `docs/streams.md`). A caller that stops reading at the finish chunk, before the usage chunk
//! and the end, drops the stream: the limiter then keeps the whole reservation charged.
//!
//! Streams have [timeouts](StreamTimeouts) by default (10 minutes to the first chunk, 10
//! minutes of silence), so a stalled upstream cannot hold a caller forever; they run on
//! tokio's timer, which the runtime must have (`#[tokio::main]` enables it).
//!
//! # Observability
//!
//! Each call feeds one funnel that follows the OpenTelemetry GenAI semantic conventions
//! (client spans and metrics, development status as of v1.38–v1.41). Both halves are cargo
//! features on by default: `tracing` and `metrics`; without them the funnel compiles to
//! nothing. The builder's `name` (defaults `openai`, `openai-compatible`, `azure-openai`,
//! `anthropic`, `gemini`) is the `name` field and label. No prompt, answer or key is ever
//! recorded; `record_sizes(true)` on a builder adds the prompt's and answer's sizes in
//! characters.
//!
//! **Span** (level INFO, one per call, target `tower_llm_providers::observe`), named `chat`
//! or `embeddings` with `otel.name = "{gen_ai.operation.name} {gen_ai.request.model}"` and
//! `otel.kind = "client"` for `tracing-opentelemetry`. A stream's span lasts until the
//! stream ends (terminal event, error item or drop); the inner client's own events are
//! emitted inside it. Fields: `name`, `gen_ai.operation.name` (`chat`, `embeddings`),
//! `gen_ai.provider.name` (`openai` — also for compatible servers —, `azure.ai.openai`,
//! `anthropic`, `gcp.gemini`), `gen_ai.request.model`, `gen_ai.request.max_tokens` (as
//! sent: Anthropic's default when unset), `gen_ai.request.temperature` (when set),
//! `gen_ai.response.model`, `gen_ai.response.id` (the answer's id, else the upstream
//! request id), `gen_ai.response.finish_reasons` (`["stop"]`),
//! `gen_ai.response.time_to_first_chunk` (seconds, streams), `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `server.address`, `server.port`, `stream`, `error.type`
//! (core's [`FailureKind::as_str`](tower_llm_core::FailureKind::as_str), `cancelled` for a
//! call dropped before its answer) with `otel.status_code = "ERROR"`, and with
//! `record_sizes` `prompt_chars`, `answer_chars`.
//!
//! **Events** (inside the span, each with `name`): `provider call finished` (DEBUG;
//! `duration_s`, `input_tokens`, `output_tokens`), `provider call failed` (WARN;
//! `duration_s`, `error.type`, `http.response.status_code`), `provider call cancelled`
//! (DEBUG), `first chunk` (TRACE; `time_to_first_chunk_s`).
//!
//! **Metrics**, through the [`metrics`](https://docs.rs/metrics) facade, each described once
//! with its unit:
//!
//! | name | type | unit | labels |
//! |---|---|---|---|
//! | [`gen_ai_client_operation_duration_seconds`](METRIC_OPERATION_DURATION) | histogram | seconds | `name`, `gen_ai_operation_name`, `gen_ai_provider_name`, `gen_ai_request_model`, `gen_ai_response_model` (when known), `error_type` (on failure) |
//! | [`gen_ai_client_token_usage`](METRIC_TOKEN_USAGE) | histogram | count (tokens) | the same without `error_type`, plus `gen_ai_token_type` = `input` / `output` |
//! | [`gen_ai_client_operation_time_to_first_chunk_seconds`](METRIC_TIME_TO_FIRST_CHUNK) | histogram | seconds | as the duration, streams only |
//! | [`tower_llm_providers_requests_total`](METRIC_REQUESTS) | counter | count | `name`, `call` = `chat` / `stream` / `embeddings` |
//! | [`tower_llm_providers_failures_total`](METRIC_FAILURES) | counter | count | `name`, `call`, `kind` (core's `FailureKind::as_str`) |
//! | [`tower_llm_providers_fields_dropped_total`](METRIC_FIELDS_DROPPED) | counter | count | `name`, `from`, `to` (dialects) |
//!
//! **Cost.** A call no subscriber listens to builds no span; with the `metrics` feature
//! off it keeps nothing at all. The `metrics` facade cannot tell whether a recorder is
//! installed, so with that feature on a call reads the clock twice and records into cached
//! handles (no-ops without a recorder): build without it where no recorder will be installed.
//! Figures in `docs/metrics.md`.
//!
//! The facade carries no buckets: give [`DURATION_BUCKETS`] and [`TOKEN_BUCKETS`] (the
//! conventions' recommendations) to your exporter. Metric handles are made once per
//! provider and model; install your recorder before building providers. A provider gives
//! its own series to 64 request models per operation and 8 response models per request
//! model; later ones are labelled `other`, so that callers naming models cannot multiply
//! the series without bound.
//!
//! # The default client and runtimes
//!
//! [`shared_client`] builds one client per process; its pooled connections are driven by
//! tasks on the tokio runtime that opened them. A program with one runtime (the usual case)
//! shares it freely; a program that creates and drops runtimes (tests) should build a client
//! per runtime with [`HttpClientConfig::build`] and pass it to `build_with`.
//!
//! # TLS and proxies
//!
//! The default client's crypto provider and trusted roots are Cargo features:
//!
//! | feature | default | effect |
//! |---|---|---|
//! | `ring` | on | TLS through *ring* |
//! | `aws-lc-rs` | off | TLS through aws-lc-rs (needs a C compiler); wins over `ring` when both are on |
//! | `webpki-roots` | on | trusts Mozilla's roots, compiled in |
//! | `native-roots` | off | trusts the operating system's roots, read when a client is built |
//!
//! With neither provider feature, the client uses rustls' process-wide default provider:
//! install one with `rustls::crypto::CryptoProvider::install_default` before building a
//! client, or [`HttpClientConfig::build`] refuses (knob `tls`). Both root features together
//! trust both sets; with neither, only the
//! [`root_certificate`](HttpClientConfig::root_certificate)s given are trusted, and a client
//! without any is refused (knob `root_certificate`). A root certificate of your own (a
//! corporate CA, a test server's) is trusted on top of the features' roots.
//!
//! The client honours `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and their
//! lower-case forms), read when it is built; [`ProxyConfig`] turns that off or names a proxy
//! in code. See the [`proxy`] module for the rules.
//!
//! # Example
//!
//! A stack over OpenAI, with a stand-in for the network so that the example runs offline;
//! in a program, `OpenAi::from_env()?` builds the real thing.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_providers::{ChatRequest, Message, OpenAi, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let network = service_fn(|request: http::Request<RequestBody>| async move {
//!     assert_eq!(request.uri(), "https://api.openai.com/v1/chat/completions");
//!     let body = r#"{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[{"index":0,
//!         "message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}]}"#;
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
//!         bytes::Bytes::from(body),
//!     )))
//! });
//! let openai = OpenAi::builder().api_key("sk-test").build_with(network).unwrap();
//! let stack = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(30))
//!     .service(openai);
//! let request = ChatRequest::new("gpt-4o-mini", vec![Message::user("Capital of France?")]);
//! let answer = stack.oneshot(request).await.unwrap();
//! assert_eq!(answer.content, "Paris.");
//! # }
//! ```
//!
//! [tower-llm]: https://github.com/tower-llm/tower-llm

#![forbid(unsafe_code)]

pub mod anthropic;
#[cfg(feature = "bedrock")]
pub mod bedrock;
mod body;
mod builder;
mod chat;
mod client;
mod error;
pub mod framing;
mod future;
pub mod gemini;
mod key;
pub mod meta;
mod observe;
pub mod openai;
pub mod protocol;
mod provider;
pub mod proxy;
mod request_body;
pub mod sse;
mod stream;

pub use anthropic::{Anthropic, AnthropicBuilder, AnthropicProtocol};
pub use body::DEFAULT_MAX_BODY_BYTES;
pub use chat::{
    BlockDelta, ChatChunk, ChatField, ChatRequest, ChatResponse, ContentBlock, EmbeddingRequest,
    EmbeddingResponse, FinishReason, Message, ResponseFormat, Role, Streaming, Tool, ToolCall,
    ToolCallDelta, ToolChoice,
};
pub use client::{HttpChatStream, HttpClient, HttpClientConfig, RequestBody, shared_client};
pub use error::{CallContext, ConfigError};
pub use future::{ResponseFuture, StreamFuture};
pub use gemini::{Gemini, GeminiBuilder, GeminiProtocol};
pub use key::ApiKey;
pub use meta::{Dialect, ResponseMeta, TokenCounting};
pub use observe::{
    DURATION_BUCKETS, METRIC_FAILURES, METRIC_FIELDS_DROPPED, METRIC_OPERATION_DURATION,
    METRIC_REQUESTS, METRIC_TIME_TO_FIRST_CHUNK, METRIC_TOKEN_USAGE, TOKEN_BUCKETS,
};
pub use openai::{OpenAi, OpenAiBuilder, OpenAiProtocol};
pub use protocol::{EmbeddingProtocol, Protocol, Step, StreamDecoder};
pub use provider::{CommonSettings, ProtocolSettings, Provider, ProviderBuilder};
pub use proxy::{ProxyConfig, ProxyConnector};
pub use stream::{ChatAccumulator, ChatStream, ChunkDecoder, StreamTimeouts};
pub use tower_llm_core::{UpstreamError, Usage};

/// The error of every provider service: core's classified [`UpstreamError`].
pub type Error = UpstreamError;
