//! Anthropic's Messages API.
//!
//! [`Anthropic`] maps a [`ChatRequest`] to `POST /v1/messages`: system messages move to the
//! top-level `system` field, tool calls become `tool_use` content blocks and tool results
//! `tool_result` blocks in a user turn, and `max_tokens`, which Anthropic requires, falls back
//! to the builder's [`default_max_tokens`](AnthropicBuilder::default_max_tokens) (4096).
//! `seed` and `response_format` have no Anthropic equivalent and are not sent; `user` goes in
//! `metadata.user_id`. The key comes from [`AnthropicBuilder::api_key`] or
//! `ANTHROPIC_API_KEY`, sent as `x-api-key` with `anthropic-version: 2023-06-01`.
//!
//! Streams end at `message_stop`; an `event: error` (such as `overloaded_error` in the middle
//! of a 200 stream) becomes a classified error item.
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_providers::{Anthropic, ChatRequest, Message, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let http = service_fn(|request: http::Request<RequestBody>| async move {
//!     assert_eq!(request.uri(), "https://api.anthropic.com/v1/messages");
//!     assert_eq!(request.headers()["anthropic-version"], "2023-06-01");
//!     let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5",
//!         "content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn",
//!         "usage":{"input_tokens":10,"output_tokens":3}}"#;
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
//!         bytes::Bytes::from(body),
//!     )))
//! });
//! let claude = Anthropic::builder().api_key("sk-ant-test").build_with(http).unwrap();
//! let service = ServiceBuilder::new().service(claude);
//! let request = ChatRequest::new(
//!     "claude-sonnet-4-5",
//!     vec![Message::system("Be brief."), Message::user("Hi")],
//! );
//! let answer = service.oneshot(request).await.unwrap();
//! assert_eq!(answer.content, "Hello!");
//! assert_eq!(answer.usage.unwrap().input_tokens, 10);
//! # }
//! ```

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Uri};
use http_body::Body;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tower_llm_core::{BoxError, UpstreamError};
use tower_service::Service;

use crate::body::DEFAULT_MAX_BODY_BYTES;
use crate::builder;
use crate::chat::{
    BlockDelta, ChatChunk, ChatRequest, ChatResponse, ContentBlock, FinishReason, Role, Streaming,
    ToolCall, ToolCallDelta, ToolChoice, tool_calls_and_blocks,
};
use crate::client::{HttpClient, RequestBody, post_json, shared_client};
use crate::error::{ConfigError, Ctx, Dialect};
use crate::future::{ResponseFuture, StreamFuture};
use crate::key::ApiKey;
use crate::meta::ResponseMeta;
use crate::observe::{CallObs, Observe, Operation, RequestFacts};
use crate::sse::{DEFAULT_MAX_EVENT_BYTES, SseEvent};
use crate::stream::{Step, StreamTimeouts, usage};

const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Builds an [`Anthropic`] service.
#[derive(Clone, Debug)]
pub struct AnthropicBuilder {
    base_url: String,
    api_key: Option<ApiKey>,
    version: String,
    default_max_tokens: u32,
    name: Cow<'static, str>,
    timeouts: StreamTimeouts,
    max_body_bytes: usize,
    max_event_bytes: usize,
    record_sizes: bool,
    strict_fields: bool,
}

impl AnthropicBuilder {
    /// The API key (default: `ANTHROPIC_API_KEY`).
    pub fn api_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The base URL (default `https://api.anthropic.com/v1`).
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The `anthropic-version` header (default `2023-06-01`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The `max_tokens` sent when a request names none (default 4096).
    pub fn default_max_tokens(mut self, max_tokens: u32) -> Self {
        self.default_max_tokens = max_tokens;
        self
    }

    /// The provider name in errors (default `anthropic`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Timeouts of streamed answers; [`StreamTimeouts::default`] (10 min to the first chunk, 5 min
    /// of silence) unless set. [`StreamTimeouts::none`] turns them off.
    pub fn stream_timeouts(mut self, timeouts: StreamTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The largest non-streaming body read (default 16 MiB).
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// Records the prompt's and the answer's sizes, in characters (never their text), as
    /// the span fields `prompt_chars` and `answer_chars` (default off).
    pub fn record_sizes(mut self, record: bool) -> Self {
        self.record_sizes = record;
        self
    }

    /// Refuses a request whose `extra` fields are written for another dialect
    /// ([`ChatRequest::extra_dialect`](crate::ChatRequest::extra_dialect)) with a `BadRequest`
    /// that names them, instead of leaving them out (the default, counted in
    /// `tower_llm_providers_fields_dropped_total`).
    pub fn strict_fields(mut self, strict: bool) -> Self {
        self.strict_fields = strict;
        self
    }

    /// The largest single stream event (default 4 MiB).
    pub fn max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }

    /// Builds the service over the process-wide [`shared_client`].
    pub fn build(self) -> Result<Anthropic<HttpClient>, ConfigError> {
        let client = shared_client()?;
        self.build_with(client)
    }

    /// Builds the service over your own HTTP client.
    pub fn build_with<S>(self, client: S) -> Result<Anthropic<S>, ConfigError> {
        if self.default_max_tokens == 0 {
            return Err(ConfigError::new("default_max_tokens", "must be above zero"));
        }
        builder::check_limits(self.max_body_bytes, self.max_event_bytes)?;
        let messages_uri =
            builder::endpoint(format!("{}/messages", self.base_url.trim_end_matches('/')))?;
        let key = builder::key_or_env(self.api_key, &["ANTHROPIC_API_KEY"])?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            HeaderName::from_static("x-api-key"),
            builder::key_header(&key, "")?,
        );
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::try_from(self.version.as_str())
                .map_err(|_| ConfigError::new("version", "not a valid header value"))?,
        );
        let observe = Observe::new(
            self.name.clone(),
            "anthropic",
            &messages_uri,
            self.record_sizes,
        );
        Ok(Anthropic {
            inner: client,
            config: Arc::new(Config {
                messages_uri,
                headers,
                default_max_tokens: self.default_max_tokens,
                ctx: Ctx {
                    dialect: Dialect::Anthropic,
                    observe,
                    provider: self.name,
                    max_body: self.max_body_bytes,
                    key: Some(key),
                    strict_fields: self.strict_fields,
                },
                timeouts: self.timeouts,
                max_event_bytes: self.max_event_bytes,
            }),
        })
    }
}

struct Config {
    messages_uri: Uri,
    headers: HeaderMap,
    default_max_tokens: u32,
    ctx: Ctx,
    timeouts: StreamTimeouts,
    max_event_bytes: usize,
}

/// The Anthropic Messages service. See the [module docs](crate::anthropic).
pub struct Anthropic<S = HttpClient> {
    inner: S,
    config: Arc<Config>,
}

impl<S: Clone> Clone for Anthropic<S> {
    fn clone(&self) -> Self {
        Anthropic {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> fmt::Debug for Anthropic<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anthropic")
            .field("provider", &self.config.ctx.provider)
            .field("messages_uri", &self.config.messages_uri)
            .field("api_key", &"****")
            .finish_non_exhaustive()
    }
}

impl Anthropic<HttpClient> {
    /// A builder with Anthropic's defaults.
    pub fn builder() -> AnthropicBuilder {
        AnthropicBuilder {
            base_url: ANTHROPIC_BASE_URL.to_owned(),
            api_key: None,
            version: ANTHROPIC_VERSION.to_owned(),
            default_max_tokens: 4096,
            name: Cow::Borrowed("anthropic"),
            timeouts: StreamTimeouts::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            record_sizes: false,
            strict_fields: false,
        }
    }

    /// Anthropic with the key from `ANTHROPIC_API_KEY`, over the shared default client.
    pub fn from_env() -> Result<Self, ConfigError> {
        Anthropic::builder().build()
    }
}

impl<S> Anthropic<S> {
    /// The inner client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner client, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner client.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The JSON body this service sends for `request`.
    pub fn encode_chat(&self, request: &ChatRequest, stream: bool) -> Vec<u8> {
        encode_chat(request, stream, self.config.default_max_tokens)
    }
}

impl<S, B> Service<ChatRequest> for Anthropic<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = ChatResponse;
    type Error = UpstreamError;
    type Future = ResponseFuture<S::Future, B, ChatResponse>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| self.config.ctx.transport("client not ready", e.into()))
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let max_tokens = request.max_tokens.unwrap_or(self.config.default_max_tokens);
        let call = self.config.ctx.observe.start(
            Operation::Chat,
            RequestFacts::chat(&request, Some(max_tokens)),
        );
        if let Err(error) = self.config.ctx.check_extra(&request) {
            let ctx = self.config.ctx.clone();
            return ResponseFuture::failed(error, ctx, decode_chat, call, CallObs::chat);
        }
        let body = self.encode_chat(&request, false);
        let http = post_json(&self.config.messages_uri, &self.config.headers, body, false);
        let future = call.in_span(|| self.inner.call(http));
        ResponseFuture::new(
            future,
            self.config.ctx.clone(),
            decode_chat,
            call,
            CallObs::chat,
        )
    }
}

impl<S, B> Service<Streaming<ChatRequest>> for Anthropic<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = crate::ChatStream<B>;
    type Error = UpstreamError;
    type Future = StreamFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <Self as Service<ChatRequest>>::poll_ready(self, cx)
    }

    fn call(&mut self, request: Streaming<ChatRequest>) -> Self::Future {
        let max_tokens = request
            .0
            .max_tokens
            .unwrap_or(self.config.default_max_tokens);
        let call = self.config.ctx.observe.start(
            Operation::Stream,
            RequestFacts::chat(&request.0, Some(max_tokens)),
        );
        let future = match self.config.ctx.check_extra(&request.0) {
            Ok(()) => {
                let body = self.encode_chat(&request.0, true);
                let http = post_json(&self.config.messages_uri, &self.config.headers, body, true);
                Ok(call.in_span(|| self.inner.call(http)))
            }
            Err(error) => Err(error),
        };
        StreamFuture::new(
            future,
            self.config.ctx.clone(),
            self.config.timeouts,
            self.config.max_event_bytes,
            call,
        )
    }
}

/// Encodes `request` as [`Anthropic`] sends it (with `max_tokens` 4096 when unset).
pub fn encode_request(request: &ChatRequest, stream: bool) -> Vec<u8> {
    encode_chat(request, stream, 4096)
}

/// Decodes a Messages body, as [`Anthropic`] does.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, UpstreamError> {
    decode_chat(
        &standalone_ctx(),
        Bytes::copy_from_slice(body),
        ResponseMeta::default(),
    )
}

pub(crate) fn standalone_ctx() -> Ctx {
    Ctx {
        dialect: Dialect::Anthropic,
        provider: Cow::Borrowed("anthropic"),
        max_body: DEFAULT_MAX_BODY_BYTES,
        key: None,
        observe: crate::observe::Observe::standalone("anthropic"),
        strict_fields: false,
    }
}

// ---- wire format: requests -------------------------------------------------------------

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<WireMetadata<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct WireMetadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<WireBlock<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock<'a> {
    Text {
        text: &'a str,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        citations: &'a [Value],
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
    /// A block kept raw (server tools, their results, unknown types): sent as it came.
    #[serde(untagged)]
    Raw(&'a Value),
}

impl<'a> WireBlock<'a> {
    fn text(text: &'a str) -> Self {
        WireBlock::Text {
            text,
            citations: &[],
        }
    }

    fn tool_use(call: &'a ToolCall) -> Self {
        WireBlock::ToolUse {
            id: &call.id,
            name: &call.name,
            input: serde_json::from_str(&call.arguments)
                .unwrap_or_else(|_| Value::Object(Map::new())),
        }
    }

    /// An assistant message's block as it goes back; `None` for empty text, which
    /// Anthropic refuses.
    fn from_block(block: &'a ContentBlock) -> Option<Self> {
        Some(match block {
            ContentBlock::Text { text, .. } if text.is_empty() => return None,
            ContentBlock::Text { text, citations } => WireBlock::Text { text, citations },
            ContentBlock::ToolUse(call) => WireBlock::tool_use(call),
            ContentBlock::Thinking {
                thinking,
                signature,
            } => WireBlock::Thinking {
                thinking,
                signature,
            },
            ContentBlock::RedactedThinking { data } => WireBlock::RedactedThinking { data },
            ContentBlock::ServerToolUse(raw)
            | ContentBlock::ServerToolResult(raw)
            | ContentBlock::Other(raw) => WireBlock::Raw(raw),
        })
    }
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a Value,
}

fn encode_chat(request: &ChatRequest, stream: bool, default_max_tokens: u32) -> Vec<u8> {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let mut messages: Vec<WireMessage<'_>> = Vec::with_capacity(request.messages.len());
    for message in request.messages.iter().filter(|m| m.role != Role::System) {
        let (role, blocks) = match message.role {
            Role::User | Role::System => ("user", vec![WireBlock::text(&message.content)]),
            // The blocks as they came, thinking and server tools included, when it has them.
            Role::Assistant if !message.blocks.is_empty() => (
                "assistant",
                message
                    .blocks
                    .iter()
                    .filter_map(WireBlock::from_block)
                    .collect(),
            ),
            Role::Assistant => {
                let mut blocks = Vec::with_capacity(1 + message.tool_calls.len());
                if !message.content.is_empty() {
                    blocks.push(WireBlock::text(&message.content));
                }
                blocks.extend(message.tool_calls.iter().map(WireBlock::tool_use));
                ("assistant", blocks)
            }
            Role::Tool => (
                "user",
                vec![WireBlock::ToolResult {
                    tool_use_id: message.tool_call_id.as_deref().unwrap_or_default(),
                    content: &message.content,
                }],
            ),
        };
        // Results of parallel tool calls belong in one user turn.
        match messages.last_mut() {
            Some(last)
                if message.role == Role::Tool
                    && last.role == "user"
                    && last
                        .content
                        .iter()
                        .all(|b| matches!(b, WireBlock::ToolResult { .. })) =>
            {
                last.content.extend(blocks);
            }
            _ => messages.push(WireMessage {
                role,
                content: blocks,
            }),
        }
    }
    let tool_choice = request.tool_choice.as_ref().map(|choice| match choice {
        ToolChoice::Auto => serde_json::json!({"type": "auto"}),
        ToolChoice::None => serde_json::json!({"type": "none"}),
        ToolChoice::Required => serde_json::json!({"type": "any"}),
        ToolChoice::Function(name) => serde_json::json!({"type": "tool", "name": name}),
    });
    let wire = WireRequest {
        model: &request.model,
        max_tokens: request.max_tokens.unwrap_or(default_max_tokens),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        temperature: request.temperature,
        top_p: request.top_p,
        stop_sequences: &request.stop,
        tools: request
            .tools
            .iter()
            .map(|tool| WireTool {
                name: &tool.name,
                description: tool.description.as_deref(),
                input_schema: &tool.parameters,
            })
            .collect(),
        tool_choice,
        metadata: request
            .user
            .as_deref()
            .map(|user_id| WireMetadata { user_id }),
        stream,
    };
    crate::chat::encode_with_extra(
        &wire,
        request.extra_for(Dialect::Anthropic),
        crate::chat::body_size_hint(request),
    )
}

// ---- wire format: responses ------------------------------------------------------------

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: Option<Vec<WireContent>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireContent {
    Text {
        text: String,
        #[serde(default)]
        citations: Option<Vec<Value>>,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    /// Anything else (server tools, their results, types to come, a known type in a shape
    /// it should not have), kept raw.
    #[serde(untagged)]
    Raw(Value),
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    fn input(&self) -> Option<u64> {
        // Anthropic counts cache reads and writes outside `input_tokens`; core's `Usage`
        // counts every prompt token.
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        // Counts come from the server: saturate rather than overflow (a panic in debug).
        self.input_tokens
            .map(|input| input.saturating_add(read).saturating_add(written))
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::Refusal,
        other => FinishReason::Other(other.to_owned()),
    }
}

fn arguments_text(input: &Value) -> String {
    if input.is_null() {
        "{}".to_owned()
    } else {
        input.to_string()
    }
}

pub(crate) fn decode_chat(
    ctx: &Ctx,
    body: Bytes,
    meta: ResponseMeta,
) -> Result<ChatResponse, UpstreamError> {
    let wire: WireResponse = serde_json::from_slice(&body)
        .map_err(|e| ctx.malformed("message is not valid JSON", &body, e))?;
    if wire.kind.as_deref() == Some("error") || wire.extra.contains_key("error") {
        let value = serde_json::json!({ "error": wire.extra.get("error") });
        return Err(ctx.for_error_value(&value, &String::from_utf8_lossy(&body)));
    }
    let Some(content) = wire.content else {
        return Err(ctx.malformed("message", &body, "no `content` in the answer"));
    };
    let mut response = ChatResponse {
        meta,
        id: wire.id.unwrap_or_default(),
        model: wire.model.unwrap_or_default(),
        finish_reason: wire.stop_reason.as_deref().map(finish_reason),
        usage: wire.usage.map(|u| {
            usage(
                u.input().unwrap_or(0),
                u.output_tokens.unwrap_or(0),
                u.cache_read_input_tokens.unwrap_or(0),
            )
        }),
        extra: wire.extra,
        ..ChatResponse::default()
    };
    let mut blocks = Vec::with_capacity(content.len());
    for block in content {
        blocks.push(match block {
            WireContent::Text { text, citations } => {
                response.content.push_str(&text);
                ContentBlock::Text {
                    text,
                    citations: citations.unwrap_or_default(),
                }
            }
            WireContent::ToolUse { id, name, input } => ContentBlock::ToolUse(ToolCall {
                id,
                name,
                arguments: arguments_text(&input),
            }),
            WireContent::Thinking {
                thinking,
                signature,
            } => ContentBlock::Thinking {
                thinking,
                signature,
            },
            WireContent::RedactedThinking { data } => ContentBlock::RedactedThinking { data },
            WireContent::Raw(raw) => ContentBlock::raw(raw),
        });
    }
    (response.tool_calls, response.blocks) = tool_calls_and_blocks(blocks);
    Ok(response)
}

// ---- wire format: stream events --------------------------------------------------------

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireStartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: WireBlockStart,
    },
    ContentBlockDelta {
        index: u32,
        delta: WireBlockDelta,
    },
    MessageDelta {
        #[serde(default)]
        delta: WireMessageDelta,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    // Error events are caught before the decoder, whatever their shape (stream.rs).
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireStartMessage {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlockStart {
    Text {
        #[serde(default)]
        text: String,
        #[serde(default)]
        citations: Option<Vec<Value>>,
    },
    ToolUse {
        id: String,
        name: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    /// Server tools (their input follows as `input_json_delta`s), their results (whole),
    /// types to come: kept raw.
    #[serde(untagged)]
    Raw(Value),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    CitationsDelta {
        citation: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
struct WireMessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// Decodes Messages stream events; the stream ends at `message_stop`.
#[derive(Debug, Default)]
pub(crate) struct StreamDecoder {
    input_tokens: u64,
    cached_tokens: u64,
    /// Content block index of each tool call so far, in call order.
    tool_blocks: Vec<u32>,
    /// Content blocks kept raw: the server's own tools (`server_tool_use`, `mcp_tool_use`),
    /// their results, unknown types. A server tool's `input_json_delta`s are not the
    /// caller's tool arguments: they go out as [`BlockDelta::ServerToolInput`].
    other_blocks: Vec<u32>,
    /// Content blocks started so far, of every type.
    blocks: usize,
    pub(crate) model: Option<String>,
}

impl StreamDecoder {
    pub(crate) fn event(
        &mut self,
        ctx: &Ctx,
        event: &SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        let parsed: WireEvent = serde_json::from_str(&event.data).map_err(|e| {
            ctx.malformed(
                "stream event is not valid JSON",
                &Bytes::copy_from_slice(event.data.as_bytes()),
                e,
            )
        })?;
        match parsed {
            WireEvent::MessageStart { message } => {
                self.model = message.model.filter(|m| !m.is_empty());
                if let Some(u) = message.usage {
                    self.input_tokens = u.input().unwrap_or(0);
                    self.cached_tokens = u.cache_read_input_tokens.unwrap_or(0);
                }
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                self.check_blocks(ctx, event)?;
                self.blocks += 1;
                let start = |block| ChatChunk::Block(BlockDelta::Start { index, block });
                match content_block {
                    WireBlockStart::Text { text, citations } => {
                        out.push_back(start(ContentBlock::Text {
                            text: String::new(),
                            citations: citations.unwrap_or_default(),
                        }));
                        if !text.is_empty() {
                            out.push_back(ChatChunk::Content(text));
                        }
                    }
                    WireBlockStart::ToolUse { id, name } => {
                        let call = self.tool_blocks.len() as u32;
                        self.tool_blocks.push(index);
                        out.push_back(start(ContentBlock::ToolUse(ToolCall {
                            id: id.clone(),
                            name: name.clone(),
                            arguments: String::new(),
                        })));
                        out.push_back(ChatChunk::ToolCall(ToolCallDelta {
                            index: call,
                            id: Some(id),
                            name: Some(name),
                            arguments: String::new(),
                        }));
                    }
                    WireBlockStart::Thinking {
                        thinking,
                        signature,
                    } => out.push_back(start(ContentBlock::Thinking {
                        thinking,
                        signature,
                    })),
                    WireBlockStart::RedactedThinking { data } => {
                        out.push_back(start(ContentBlock::RedactedThinking { data }));
                    }
                    WireBlockStart::Raw(raw) => {
                        self.other_blocks.push(index);
                        out.push_back(start(ContentBlock::raw(raw)));
                    }
                }
            }
            WireEvent::ContentBlockDelta { index, delta } => match delta {
                WireBlockDelta::TextDelta { text } => out.push_back(ChatChunk::Content(text)),
                WireBlockDelta::ThinkingDelta { thinking } => {
                    out.push_back(ChatChunk::Block(BlockDelta::Thinking {
                        index,
                        text: thinking,
                    }));
                }
                WireBlockDelta::SignatureDelta { signature } => {
                    out.push_back(ChatChunk::Block(BlockDelta::Signature { index, signature }));
                }
                WireBlockDelta::CitationsDelta { citation } => {
                    out.push_back(ChatChunk::Block(BlockDelta::Citation { index, citation }));
                }
                WireBlockDelta::InputJsonDelta { partial_json } => {
                    let Some(call) = self.tool_blocks.iter().position(|&b| b == index) else {
                        if self.other_blocks.contains(&index) {
                            // A server tool's input: Anthropic runs it, the caller does not.
                            out.push_back(ChatChunk::Block(BlockDelta::ServerToolInput {
                                index,
                                partial_json,
                            }));
                            return Ok(Step::Continue);
                        }
                        return Err(ctx.malformed(
                            "stream",
                            &Bytes::copy_from_slice(event.data.as_bytes()),
                            format!("input_json_delta for block {index}, which is no tool_use"),
                        ));
                    };
                    out.push_back(ChatChunk::ToolCall(ToolCallDelta {
                        index: call as u32,
                        id: None,
                        name: None,
                        arguments: partial_json,
                    }));
                }
                WireBlockDelta::Other => {}
            },
            WireEvent::MessageDelta { delta, usage: u } => {
                if let Some(reason) = delta.stop_reason {
                    out.push_back(ChatChunk::Finish(finish_reason(&reason)));
                }
                if let Some(u) = u {
                    let input = u.input().unwrap_or(self.input_tokens);
                    let cached = u.cache_read_input_tokens.unwrap_or(self.cached_tokens);
                    out.push_back(ChatChunk::Usage(usage(
                        input,
                        u.output_tokens.unwrap_or(0),
                        cached,
                    )));
                }
            }
            WireEvent::MessageStop => return Ok(Step::Done),
            WireEvent::Other => {}
        }
        Ok(Step::Continue)
    }

    /// Refuses a stream with more content blocks than any answer has: the block lists (here
    /// and in a [`ChatAccumulator`](crate::ChatAccumulator)) grow with what the server sends,
    /// and must stay bounded.
    fn check_blocks(&self, ctx: &Ctx, event: &SseEvent) -> Result<(), UpstreamError> {
        if self.blocks >= MAX_BLOCKS {
            return Err(ctx.malformed(
                "stream",
                &Bytes::copy_from_slice(event.data.as_bytes()),
                format!("more than {MAX_BLOCKS} content blocks"),
            ));
        }
        Ok(())
    }
}

/// The most content blocks a streamed answer may have.
const MAX_BLOCKS: usize = 4096;
