//! A real HTTP mock of the OpenAI, Anthropic, Gemini and AWS Bedrock APIs with scripted
//! faults, for testing tower-llm stacks over real sockets.
//!
//! [`MockServer::start`] serves, on `127.0.0.1` and a free port, in the test's own tokio
//! runtime:
//!
//! | route | path |
//! |-------|------|
//! | [`Route::OpenAiChat`] | `POST /v1/chat/completions` (`"stream": true` for SSE, `data: ... [DONE]`) |
//! | [`Route::OpenAiEmbeddings`] | `POST /v1/embeddings` (vectors from [`embedding_for`]) |
//! | [`Route::AnthropicMessages`] | `POST /v1/messages` (`"stream": true` for Anthropic's SSE events) |
//! | [`Route::GeminiGenerate`] | `POST /v1beta/models/{model}:generateContent` |
//! | [`Route::GeminiStream`] | `POST /v1beta/models/{model}:streamGenerateContent` (`?alt=sse` for SSE, else a JSON array) |
//! | [`Route::BedrockConverse`] | `POST /model/{modelId}/converse` |
//! | [`Route::BedrockConverseStream`] | `POST /model/{modelId}/converse-stream` (the binary `application/vnd.amazon.eventstream` framing, correct CRCs: [`event_stream_message`]) |
//!
//! Azure OpenAI's paths, `POST /openai/deployments/{deployment}/chat/completions` and
//! `.../embeddings`, answer as the OpenAI routes (counted under them), with the deployment as
//! the model; like Azure, they refuse a request without an `api-version` query parameter. The
//! `api-key` header counts as the request's key.
//!
//! Bedrock's answers follow the Converse API (`output.message.content`, `stopReason`,
//! `usage`; stream events `messageStart`, `contentBlockDelta`, `contentBlockStop`,
//! `messageStop`, `metadata`), its errors carry `x-amzn-errortype` and a `{"message"}` body,
//! its request id is `x-amzn-requestid`, and its in-stream error is a
//! `serviceUnavailableException` message. The key of a Bedrock request is the access key id
//! in its SigV4 `Authorization` (`Credential=AKID/...`); signatures are not checked, and a
//! key refused by [`api_keys`](FaultPlan::api_keys) gets AWS's 403
//! `UnrecognizedClientException`.
//!
//! Answers are realistic: each provider's JSON with usage fields (tokens counted with
//! [`tower_llm_core::estimate_text_tokens`]); the reply text is `"{name}: {last user
//! message}"` (or a fixed [`reply`](FaultPlan::reply)), cut to the request's `max_tokens`
//! with the provider's "length" finish reason. Streams send one event per word. A
//! [`FaultPlan`] adds latency (fixed, uniform, long-tailed), error statuses with each
//! provider's error bodies and rate-limit headers, retry-after in every header form,
//! requests- and tokens-per-minute [`Quota`]s, dropped connections, stalled and cut streams,
//! in-stream errors, malformed JSON, HTML error pages, context-length errors and API-key
//! checks, per route or globally, deterministic for a seed, scripted request by request if
//! needed (see [`FaultPlan`] for the order in which they apply). [`Counters`] tell what the
//! server received: requests per route, per API key and per status, the most in flight at
//! once, and which requests the client abandoned; [`MockServer::received`] keeps the
//! requests themselves.
//!
//! [`TestClient`] is a `tower::Service<http::Request<Bytes>>` over real HTTP to put at the
//! bottom of a stack under test; [`openai_chat`] and friends build requests.
//! [`RedisServer`] starts a throwaway `redis-server` for tests of the Redis backends, or
//! skips when there is none.
//!
//! All latencies, stalls and quota windows run on tokio's clock: under
//! `#[tokio::test(start_paused = true)]` a 30 s latency takes no real time.
//!
//! **A test on the real clock can hang.** Without `start_paused`, a
//! [`StallStream`](Fault::StallStream) stalls for a real year, and a long
//! [`Latency`] or [`stream_chunk_delay`](FaultPlan::stream_chunk_delay) takes its real
//! time: give such tests a client-side limit ([`TestClient::timeout`], or
//! `tokio::time::timeout` around a stream, which that timeout does not cover). On a paused
//! clock nothing hangs, but the result may surprise: with every task idle, tokio jumps the
//! clock to the next timer, so a stall with no timeout in the test ends a virtual year later
//! in a cut connection (a transport error), not a timeout. [`MockServer::wait_until`] waits
//! for as long as its condition is false: bound it too when the condition might never hold.
//!
//! With the `observe` feature, [`observe::Capture`] captures what a crate's observability
//! funnel emits (`tracing` events and spans as JSON, `metrics` series with their labels) for
//! the crates' observe tests, with a check that no secret reached either.
//!
//! The same server runs standalone: `tower-llm-mock --port 8080 --plan plans/flaky.json`
//! (a plan is JSON, see [`FaultPlan`]).
//!
//! # Example
//!
//! ```
//! use tower::{Service, ServiceExt};
//! use tower_llm_core::{Classify, DefaultClassifier, FailureKind};
//! use tower_llm_testkit::{Fault, FaultPlan, MockServer, Route, TestClient, openai_chat};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_llm_core::BoxError> {
//! // The first request is rate limited, the next ones succeed.
//! let plan = FaultPlan::healthy().name("fast").script([Some(Fault::Status(429))]);
//! let server = MockServer::start(plan).await?;
//! let mut client = TestClient::new();
//!
//! let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
//! let limited = client.ready().await?.call(request).await?;
//! let outcome = DefaultClassifier.classify(Ok::<_, &tower_llm_core::BoxError>(&limited));
//! assert_eq!(outcome.kind(), Some(FailureKind::RateLimited));
//!
//! let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
//! let answer = client.ready().await?.call(request).await?;
//! let body: serde_json::Value = serde_json::from_slice(answer.body())?;
//! assert_eq!(body["choices"][0]["message"]["content"], "fast: Hello");
//! assert_eq!(server.counters().route(Route::OpenAiChat), 2);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod client;
mod counters;
mod duration_format;
mod embedding;
mod event_stream;
#[cfg(feature = "observe")]
pub mod observe;
mod plan;
mod quota;
mod redis;
mod responses;
mod server;

pub use client::{
    ResponseFuture, TestClient, anthropic_messages, anthropic_messages_stream, bedrock_converse,
    bedrock_converse_stream, gemini_generate, gemini_stream, openai_chat, openai_chat_stream,
    openai_chat_with_key, openai_embeddings, post_json, with_api_key,
};
pub use counters::{Counters, ReceivedRequest};
pub use embedding::{DEFAULT_DIMENSIONS, MAX_DIMENSIONS, embedding_for};
pub use event_stream::event_stream_message;
pub use plan::{
    BareError, Fault, FaultPlan, KeyEcho, Latency, Quota, RetryAfterForm, Route, StreamError,
    WeightedFault,
};
pub use redis::{REDIS_MISSING, RedisServer};
pub use server::{MockServer, RECEIVED_CAPACITY};
