//! Google's Gemini API (`generateContent`, and `streamGenerateContent` with `alt=sse`).
//!
//! [`Gemini`] maps a [`ChatRequest`] to Gemini's `contents`: system messages become
//! `systemInstruction`, the assistant role is `model`, tool calls are `functionCall` parts and
//! tool results `functionResponse` parts (matched by function name: the tool message's
//! [`name`](crate::Message::name), else the name of the call its `tool_call_id` answers);
//! sampling settings, `seed` and the response format go in `generationConfig`. `user` and
//! `metadata` have no Gemini field and are not sent. The key comes from
//! [`GeminiBuilder::api_key`], `GEMINI_API_KEY` or `GOOGLE_API_KEY`, sent as
//! `x-goog-api-key`.
//!
//! A Gemini stream has no terminal event: it is complete when a candidate carried a
//! `finishReason` before the body ended. Gemini reports cumulative usage on every chunk; the
//! stream yields it once, with the finish. A rate-limit error's `RetryInfo.retryDelay` is the
//! retry hint, and a per-day `QuotaFailure` is classified as an exhausted quota.
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_providers::{ChatRequest, Gemini, Message, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let http = service_fn(|request: http::Request<RequestBody>| async move {
//!     assert_eq!(
//!         request.uri(),
//!         "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
//!     );
//!     let body = r#"{"candidates":[{"content":{"parts":[{"text":"Hi there"}],"role":"model"},
//!         "finishReason":"STOP","index":0}],
//!         "usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,"totalTokenCount":6},
//!         "modelVersion":"gemini-2.5-flash"}"#;
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
//!         bytes::Bytes::from(body),
//!     )))
//! });
//! let gemini = Gemini::builder().api_key("AIza-test").build_with(http).unwrap();
//! let service = ServiceBuilder::new().service(gemini);
//! let request = ChatRequest::new("gemini-2.5-flash", vec![Message::user("Hi")]);
//! let answer = service.oneshot(request).await.unwrap();
//! assert_eq!(answer.content, "Hi there");
//! assert_eq!(answer.usage.unwrap().total(), 6);
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
use tower_llm_core::{BoxError, FailureKind, UpstreamError};
use tower_service::Service;

use crate::body::DEFAULT_MAX_BODY_BYTES;
use crate::builder;
use crate::chat::{
    ChatChunk, ChatRequest, ChatResponse, FinishReason, ResponseFormat, Role, Streaming, ToolCall,
    ToolCallDelta, ToolChoice,
};
use crate::client::{HttpClient, RequestBody, post_json, shared_client};
use crate::error::{ConfigError, Ctx, Dialect};
use crate::future::{ResponseFuture, StreamFuture};
use crate::key::ApiKey;
use crate::meta::ResponseMeta;
use crate::observe::{CallObs, Observe, Operation, RequestFacts};
use crate::sse::{DEFAULT_MAX_EVENT_BYTES, SseEvent};
use crate::stream::{Step, StreamTimeouts, usage};

const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// Builds a [`Gemini`] service.
#[derive(Clone, Debug)]
pub struct GeminiBuilder {
    base_url: String,
    api_key: Option<ApiKey>,
    name: Cow<'static, str>,
    timeouts: StreamTimeouts,
    max_body_bytes: usize,
    max_event_bytes: usize,
    record_sizes: bool,
    strict_fields: bool,
}

impl GeminiBuilder {
    /// The API key (default: `GEMINI_API_KEY`, then `GOOGLE_API_KEY`).
    pub fn api_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The base URL (default `https://generativelanguage.googleapis.com/v1beta`).
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The provider name in errors (default `gemini`).
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
    pub fn build(self) -> Result<Gemini<HttpClient>, ConfigError> {
        let client = shared_client()?;
        self.build_with(client)
    }

    /// Builds the service over your own HTTP client.
    pub fn build_with<S>(self, client: S) -> Result<Gemini<S>, ConfigError> {
        builder::check_limits(self.max_body_bytes, self.max_event_bytes)?;
        let base = self.base_url.trim_end_matches('/').to_owned();
        // Model names go into the path at call time; check the base with a stand-in one.
        let probe = builder::endpoint(format!("{base}/models/m:generateContent"))?;
        let key = builder::key_or_env(self.api_key, &["GEMINI_API_KEY", "GOOGLE_API_KEY"])?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            HeaderName::from_static("x-goog-api-key"),
            builder::key_header(&key, "")?,
        );
        Ok(Gemini {
            inner: client,
            config: Arc::new(Config {
                base,
                headers,
                ctx: Ctx {
                    dialect: Dialect::Gemini,
                    observe: Observe::new(
                        self.name.clone(),
                        "gcp.gemini",
                        &probe,
                        self.record_sizes,
                    ),
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
    base: String,
    headers: HeaderMap,
    ctx: Ctx,
    timeouts: StreamTimeouts,
    max_event_bytes: usize,
}

/// The Gemini service. See the [module docs](crate::gemini).
pub struct Gemini<S = HttpClient> {
    inner: S,
    config: Arc<Config>,
}

impl<S: Clone> Clone for Gemini<S> {
    fn clone(&self) -> Self {
        Gemini {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> fmt::Debug for Gemini<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gemini")
            .field("provider", &self.config.ctx.provider)
            .field("base_url", &self.config.base)
            .field("api_key", &"****")
            .finish_non_exhaustive()
    }
}

impl Gemini<HttpClient> {
    /// A builder with Gemini's defaults.
    pub fn builder() -> GeminiBuilder {
        GeminiBuilder {
            base_url: GEMINI_BASE_URL.to_owned(),
            api_key: None,
            name: Cow::Borrowed("gemini"),
            timeouts: StreamTimeouts::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            record_sizes: false,
            strict_fields: false,
        }
    }

    /// Gemini with the key from `GEMINI_API_KEY` or `GOOGLE_API_KEY`, over the shared
    /// default client.
    pub fn from_env() -> Result<Self, ConfigError> {
        Gemini::builder().build()
    }
}

impl<S> Gemini<S> {
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
    pub fn encode_chat(&self, request: &ChatRequest) -> Vec<u8> {
        encode_chat(request)
    }

    fn uri(&self, model: &str, stream: bool) -> Result<Uri, UpstreamError> {
        let model = model.strip_prefix("models/").unwrap_or(model);
        let bad = || {
            self.config.ctx.error(
                FailureKind::BadRequest,
                format!("model name {model:?} cannot be put in a URL"),
            )
        };
        if model.is_empty() || model.contains(['/', '?', '#', ' ']) {
            return Err(bad());
        }
        let uri = if stream {
            format!(
                "{}/models/{model}:streamGenerateContent?alt=sse",
                self.config.base
            )
        } else {
            format!("{}/models/{model}:generateContent", self.config.base)
        };
        uri.parse().map_err(|_| bad())
    }
}

impl<S, B> Service<ChatRequest> for Gemini<S>
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
        let call = self.config.ctx.observe.start(
            Operation::Chat,
            RequestFacts::chat(&request, request.max_tokens),
        );
        let ctx = self.config.ctx.clone();
        match ctx
            .check_extra(&request)
            .and_then(|()| self.uri(&request.model, false))
        {
            Ok(uri) => {
                let http = post_json(&uri, &self.config.headers, encode_chat(&request), false);
                let future = call.in_span(|| self.inner.call(http));
                ResponseFuture::new(future, ctx, decode_chat, call, CallObs::chat)
            }
            Err(error) => ResponseFuture::failed(error, ctx, decode_chat, call, CallObs::chat),
        }
    }
}

impl<S, B> Service<Streaming<ChatRequest>> for Gemini<S>
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
        let call = self.config.ctx.observe.start(
            Operation::Stream,
            RequestFacts::chat(&request.0, request.0.max_tokens),
        );
        let future = self
            .config
            .ctx
            .check_extra(&request.0)
            .and_then(|()| self.uri(&request.0.model, true))
            .map(|uri| {
                let http = post_json(&uri, &self.config.headers, encode_chat(&request.0), true);
                call.in_span(|| self.inner.call(http))
            });
        StreamFuture::new(
            future,
            self.config.ctx.clone(),
            self.config.timeouts,
            self.config.max_event_bytes,
            call,
        )
    }
}

/// Encodes `request` as [`Gemini`] sends it.
pub fn encode_request(request: &ChatRequest) -> Vec<u8> {
    encode_chat(request)
}

/// Decodes a `generateContent` body, as [`Gemini`] does.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, UpstreamError> {
    decode_chat(
        &standalone_ctx(),
        Bytes::copy_from_slice(body),
        ResponseMeta::default(),
    )
}

pub(crate) fn standalone_ctx() -> Ctx {
    Ctx {
        dialect: Dialect::Gemini,
        provider: Cow::Borrowed("gemini"),
        max_body: DEFAULT_MAX_BODY_BYTES,
        key: None,
        observe: crate::observe::Observe::standalone("gcp.gemini"),
        strict_fields: false,
    }
}

// ---- wire format: requests -------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    contents: Vec<WireContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<WireContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<WireGenerationConfig<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTools<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<Value>,
}

#[derive(Serialize)]
struct WireContent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: Vec<WirePart<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum WirePart<'a> {
    Text(&'a str),
    FunctionCall { name: &'a str, args: Value },
    FunctionResponse { name: &'a str, response: Value },
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireGenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireTools<'a> {
    function_declarations: Vec<WireFunction<'a>>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a Value,
}

fn encode_chat(request: &ChatRequest) -> Vec<u8> {
    let system: Vec<WirePart<'_>> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| WirePart::Text(&m.content))
        .collect();
    let mut contents: Vec<WireContent<'_>> = Vec::with_capacity(request.messages.len());
    for (position, message) in request.messages.iter().enumerate() {
        let (role, parts) = match message.role {
            Role::System => continue,
            Role::User => ("user", vec![WirePart::Text(&message.content)]),
            Role::Assistant => {
                let mut parts = Vec::with_capacity(1 + message.tool_calls.len());
                if !message.content.is_empty() {
                    parts.push(WirePart::Text(&message.content));
                }
                for call in &message.tool_calls {
                    parts.push(WirePart::FunctionCall {
                        name: &call.name,
                        args: serde_json::from_str(&call.arguments)
                            .unwrap_or_else(|_| Value::Object(Map::new())),
                    });
                }
                ("model", parts)
            }
            Role::Tool => {
                let name = message.name.as_deref().or_else(|| {
                    let id = message.tool_call_id.as_deref()?;
                    request.messages[..position]
                        .iter()
                        .rev()
                        .flat_map(|m| &m.tool_calls)
                        .find(|c| c.id == id)
                        .map(|c| c.name.as_str())
                });
                let response = match serde_json::from_str::<Value>(&message.content) {
                    Ok(Value::Object(object)) => Value::Object(object),
                    _ => serde_json::json!({ "content": message.content }),
                };
                (
                    "user",
                    vec![WirePart::FunctionResponse {
                        name: name.unwrap_or_default(),
                        response,
                    }],
                )
            }
        };
        match contents.last_mut() {
            // Gemini wants parallel function responses in one turn.
            Some(last)
                if message.role == Role::Tool
                    && last.role == Some("user")
                    && last
                        .parts
                        .iter()
                        .all(|p| matches!(p, WirePart::FunctionResponse { .. })) =>
            {
                last.parts.extend(parts);
            }
            _ => contents.push(WireContent {
                role: Some(role),
                parts,
            }),
        }
    }
    let (response_mime_type, response_json_schema) = match &request.response_format {
        None | Some(ResponseFormat::Text) => (None, None),
        Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
        Some(ResponseFormat::JsonSchema { schema, .. }) => (Some("application/json"), Some(schema)),
    };
    let config = WireGenerationConfig {
        temperature: request.temperature,
        top_p: request.top_p,
        max_output_tokens: request.max_tokens,
        stop_sequences: &request.stop,
        seed: request.seed,
        response_mime_type,
        response_json_schema,
    };
    let has_config = config.temperature.is_some()
        || config.top_p.is_some()
        || config.max_output_tokens.is_some()
        || !config.stop_sequences.is_empty()
        || config.seed.is_some()
        || config.response_mime_type.is_some();
    let tool_config = request.tool_choice.as_ref().map(|choice| {
        let config = match choice {
            ToolChoice::Auto => serde_json::json!({"mode": "AUTO"}),
            ToolChoice::None => serde_json::json!({"mode": "NONE"}),
            ToolChoice::Required => serde_json::json!({"mode": "ANY"}),
            ToolChoice::Function(name) => {
                serde_json::json!({"mode": "ANY", "allowedFunctionNames": [name]})
            }
        };
        serde_json::json!({ "functionCallingConfig": config })
    });
    let wire = WireRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(WireContent {
            role: None,
            parts: system,
        }),
        generation_config: has_config.then_some(config),
        tools: if request.tools.is_empty() {
            Vec::new()
        } else {
            vec![WireTools {
                function_declarations: request
                    .tools
                    .iter()
                    .map(|tool| WireFunction {
                        name: &tool.name,
                        description: tool.description.as_deref(),
                        parameters: &tool.parameters,
                    })
                    .collect(),
            }]
        },
        tool_config,
    };
    crate::chat::encode_with_extra(
        &wire,
        request.extra_for(Dialect::Gemini),
        crate::chat::body_size_hint(request),
    )
}

// ---- wire format: responses ------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Option<Vec<WireCandidate>>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    prompt_feedback: Option<WirePromptFeedback>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireContentOut>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize)]
struct WireContentOut {
    #[serde(default)]
    parts: Option<Vec<WirePartOut>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePartOut {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
}

impl WireUsage {
    fn usage(self) -> tower_llm_core::Usage {
        usage(
            self.prompt_token_count.unwrap_or(0),
            // Counts come from the server: saturate rather than overflow (a panic in debug).
            self.candidates_token_count
                .unwrap_or(0)
                .saturating_add(self.thoughts_token_count.unwrap_or(0)),
            self.cached_content_token_count.unwrap_or(0),
        )
    }
}

fn finish_reason(reason: &str, called_tools: bool) -> FinishReason {
    match reason {
        "STOP" if called_tools => FinishReason::ToolCalls,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        other => FinishReason::Other(other.to_owned()),
    }
}

fn call_of(call: WireFunctionCall) -> ToolCall {
    ToolCall {
        id: call.id.unwrap_or_else(|| call.name.clone()),
        arguments: call.args.map_or_else(|| "{}".to_owned(), |a| a.to_string()),
        name: call.name,
    }
}

fn blocked(ctx: &Ctx, feedback: Option<&WirePromptFeedback>) -> Option<UpstreamError> {
    let reason = feedback?.block_reason.as_deref()?;
    Some(
        ctx.error(
            FailureKind::ContentFiltered,
            format!("prompt blocked: {reason}"),
        )
        .with_code(ctx.scrub(reason.to_owned())),
    )
}

fn error_in_body(ctx: &Ctx, extra: &Map<String, Value>, raw: &[u8]) -> Option<UpstreamError> {
    let error = extra.get("error").filter(|e| !e.is_null())?;
    let value = serde_json::json!({ "error": error });
    Some(ctx.for_error_value(&value, &String::from_utf8_lossy(raw)))
}

pub(crate) fn decode_chat(
    ctx: &Ctx,
    body: Bytes,
    meta: ResponseMeta,
) -> Result<ChatResponse, UpstreamError> {
    let wire: WireResponse = serde_json::from_slice(&body)
        .map_err(|e| ctx.malformed("generateContent answer is not valid JSON", &body, e))?;
    if let Some(error) = error_in_body(ctx, &wire.extra, &body) {
        return Err(error);
    }
    let candidate = wire
        .candidates
        .into_iter()
        .flatten()
        .find(|c| c.index.unwrap_or(0) == 0);
    let Some(candidate) = candidate else {
        return Err(blocked(ctx, wire.prompt_feedback.as_ref())
            .unwrap_or_else(|| ctx.malformed("generateContent answer", &body, "no candidate")));
    };
    let mut response = ChatResponse {
        meta,
        id: wire.response_id.unwrap_or_default(),
        model: wire.model_version.unwrap_or_default(),
        usage: wire.usage_metadata.map(WireUsage::usage),
        extra: wire.extra,
        ..ChatResponse::default()
    };
    for part in candidate
        .content
        .and_then(|c| c.parts)
        .into_iter()
        .flatten()
    {
        if let Some(call) = part.function_call {
            response.tool_calls.push(call_of(call));
        } else if let Some(text) = part.text
            && part.thought != Some(true)
        {
            response.content.push_str(&text);
        }
    }
    response.finish_reason = candidate
        .finish_reason
        .as_deref()
        .map(|r| finish_reason(r, !response.tool_calls.is_empty()));
    Ok(response)
}

/// Decodes `streamGenerateContent?alt=sse` events: each is a whole `GenerateContentResponse`.
#[derive(Debug, Default)]
pub(crate) struct StreamDecoder {
    finished: bool,
    tool_calls: u32,
    pub(crate) model: Option<String>,
}

impl StreamDecoder {
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    pub(crate) fn event(
        &mut self,
        ctx: &Ctx,
        event: &SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        let raw = event.data.as_bytes();
        let wire: WireResponse = serde_json::from_str(&event.data).map_err(|e| {
            ctx.malformed(
                "stream event is not valid JSON",
                &Bytes::copy_from_slice(raw),
                e,
            )
        })?;
        if let Some(error) = error_in_body(ctx, &wire.extra, raw) {
            return Err(error);
        }
        if self.model.is_none() {
            self.model = wire.model_version.filter(|m| !m.is_empty());
        }
        let candidate = wire
            .candidates
            .into_iter()
            .flatten()
            .find(|c| c.index.unwrap_or(0) == 0);
        let Some(candidate) = candidate else {
            if let Some(error) = blocked(ctx, wire.prompt_feedback.as_ref()) {
                return Err(error);
            }
            return Ok(Step::Continue);
        };
        for part in candidate
            .content
            .and_then(|c| c.parts)
            .into_iter()
            .flatten()
        {
            if let Some(call) = part.function_call {
                let call = call_of(call);
                out.push_back(ChatChunk::ToolCall(ToolCallDelta {
                    index: self.tool_calls,
                    id: Some(call.id),
                    name: Some(call.name),
                    arguments: call.arguments,
                }));
                self.tool_calls += 1;
            } else if let Some(text) = part.text
                && part.thought != Some(true)
                && !text.is_empty()
            {
                out.push_back(ChatChunk::Content(text));
            }
        }
        if let Some(reason) = candidate.finish_reason {
            self.finished = true;
            out.push_back(ChatChunk::Finish(finish_reason(
                &reason,
                self.tool_calls > 0,
            )));
            if let Some(usage) = wire.usage_metadata {
                out.push_back(ChatChunk::Usage(usage.usage()));
            }
        }
        Ok(Step::Continue)
    }
}
