//! OpenAI chat completions and embeddings, OpenAI-compatible servers, and Azure OpenAI.
//!
//! One service type, [`OpenAi`], speaks the chat completions wire format to three kinds of
//! upstream, chosen by its builder:
//!
//! - [`OpenAi::builder`] / [`OpenAi::from_env`]: `api.openai.com`, bearer key from
//!   `OPENAI_API_KEY` unless given, optional organization and project headers;
//! - [`OpenAi::compatible`]: any server speaking the same API under a base URL (vLLM, Ollama,
//!   llama.cpp, Groq, OpenRouter, LM Studio, ...), key optional;
//! - [`OpenAi::azure`]: an Azure OpenAI deployment, `api-key` header from
//!   `AZURE_OPENAI_API_KEY` unless given, `api-version` query parameter.
//!
//! It is a `Service<ChatRequest>` (a whole [`ChatResponse`]),
//! a `Service<Streaming<ChatRequest>>` (a [`ChatStream`](crate::ChatStream)) and a
//! `Service<EmbeddingRequest>`. Streams ask for usage in their last chunk
//! (`stream_options.include_usage`) unless told otherwise and end at `data: [DONE]`; an
//! `{"error": ...}` event inside the stream becomes a classified error item.
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_providers::{ChatRequest, Message, OpenAi, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Any inner HTTP service will do; here, a stand-in for the network.
//! let http = service_fn(|request: http::Request<RequestBody>| async move {
//!     assert_eq!(request.uri(), "http://localhost:11434/v1/chat/completions");
//!     let body = r#"{"id":"c1","model":"llama3","choices":[{"index":0,
//!         "message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}],
//!         "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
//!         bytes::Bytes::from(body),
//!     )))
//! });
//! let ollama = OpenAi::compatible("http://localhost:11434/v1").build_with(http).unwrap();
//! let service = ServiceBuilder::new().service(ollama);
//! let request = ChatRequest::new("llama3", vec![Message::user("Say hi")]);
//! let answer = service.oneshot(request).await.unwrap();
//! assert_eq!(answer.content, "Hi!");
//! assert_eq!(answer.usage.unwrap().total(), 5);
//! # }
//! ```

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Uri};
use http_body::Body;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tower_llm_core::{BoxError, UpstreamError};
use tower_service::Service;

use crate::body::DEFAULT_MAX_BODY_BYTES;
use crate::builder;
use crate::chat::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, FinishReason,
    Message, ResponseFormat, Role, Streaming, ToolCall, ToolCallDelta, ToolChoice,
};
use crate::client::{HttpClient, RequestBody, post_json, shared_client};
use crate::error::{ConfigError, Ctx, Dialect};
use crate::future::{ResponseFuture, StreamFuture};
use crate::key::ApiKey;
use crate::meta::ResponseMeta;
use crate::observe::{CallObs, Observe, Operation, RequestFacts};
use crate::sse::{DEFAULT_MAX_EVENT_BYTES, SseEvent};
use crate::stream::{Step, StreamTimeouts, finish_reason_openai, usage};

const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    Compatible,
    Azure {
        deployment: String,
        api_version: String,
    },
}

/// Builds an [`OpenAi`] service. Every setting is checked by [`build`](Self::build).
#[derive(Clone, Debug)]
pub struct OpenAiBuilder {
    flavor: Flavor,
    base_url: String,
    api_key: Option<ApiKey>,
    organization: Option<String>,
    project: Option<String>,
    name: Cow<'static, str>,
    timeouts: StreamTimeouts,
    include_usage: bool,
    legacy_max_tokens: bool,
    max_body_bytes: usize,
    max_event_bytes: usize,
    record_sizes: bool,
    strict_fields: bool,
}

impl OpenAiBuilder {
    fn new(flavor: Flavor, base_url: String, name: &'static str) -> Self {
        let legacy_max_tokens = !matches!(flavor, Flavor::OpenAi);
        OpenAiBuilder {
            flavor,
            base_url,
            api_key: None,
            organization: None,
            project: None,
            name: Cow::Borrowed(name),
            timeouts: StreamTimeouts::default(),
            include_usage: true,
            legacy_max_tokens,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            record_sizes: false,
            strict_fields: false,
        }
    }

    /// The API key. Without one, OpenAI reads `OPENAI_API_KEY` and Azure
    /// `AZURE_OPENAI_API_KEY`; a compatible server is called without a key.
    pub fn api_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The base URL (for OpenAI, default `https://api.openai.com/v1`; for Azure, the
    /// resource endpoint `https://NAME.openai.azure.com`).
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The `OpenAI-Organization` header.
    pub fn organization(mut self, organization: impl Into<String>) -> Self {
        self.organization = Some(organization.into());
        self
    }

    /// The `OpenAI-Project` header.
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }

    /// The provider name in errors and metrics (defaults: `openai`, `openai-compatible`,
    /// `azure-openai`).
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

    /// Whether streams ask for a final usage chunk (`stream_options.include_usage`, default
    /// on). Turn it off for a compatible server that refuses the field.
    pub fn include_usage(mut self, include: bool) -> Self {
        self.include_usage = include;
        self
    }

    /// Sends the output budget as `max_tokens` (default for compatible servers and Azure)
    /// rather than `max_completion_tokens` (default for OpenAI, required by its reasoning
    /// models).
    pub fn legacy_max_tokens(mut self, legacy: bool) -> Self {
        self.legacy_max_tokens = legacy;
        self
    }

    /// The largest non-streaming body read (default 16 MiB); past it, the call fails.
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
    pub fn build(self) -> Result<OpenAi<HttpClient>, ConfigError> {
        let client = shared_client()?;
        self.build_with(client)
    }

    /// Builds the service over your own HTTP client (or the default one wrapped in
    /// tower-http layers).
    pub fn build_with<S>(self, client: S) -> Result<OpenAi<S>, ConfigError> {
        builder::check_limits(self.max_body_bytes, self.max_event_bytes)?;
        let base = self.base_url.trim_end_matches('/');
        let (chat, embeddings) = match &self.flavor {
            Flavor::Azure {
                deployment,
                api_version,
            } => {
                if deployment.is_empty() || deployment.contains(['/', '?', '#']) {
                    return Err(ConfigError::new(
                        "deployment",
                        "must be a plain, non-empty name",
                    ));
                }
                (
                    format!(
                        "{base}/openai/deployments/{deployment}/chat/completions?api-version={api_version}"
                    ),
                    format!(
                        "{base}/openai/deployments/{deployment}/embeddings?api-version={api_version}"
                    ),
                )
            }
            _ => (
                format!("{base}/chat/completions"),
                format!("{base}/embeddings"),
            ),
        };
        let chat_uri = builder::endpoint(chat)?;
        let embeddings_uri = builder::endpoint(embeddings)?;

        let api_key = match (&self.flavor, self.api_key) {
            (_, Some(key)) => Some(key),
            (Flavor::OpenAi, None) => Some(builder::key_or_env(None, &["OPENAI_API_KEY"])?),
            (Flavor::Azure { .. }, None) => {
                Some(builder::key_or_env(None, &["AZURE_OPENAI_API_KEY"])?)
            }
            (Flavor::Compatible, None) => None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = &api_key {
            let (name, prefix) = match self.flavor {
                Flavor::Azure { .. } => (HeaderName::from_static("api-key"), ""),
                _ => (AUTHORIZATION, "Bearer "),
            };
            headers.insert(name, builder::key_header(key, prefix)?);
        }
        for (knob, header, value) in [
            ("organization", "openai-organization", &self.organization),
            ("project", "openai-project", &self.project),
        ] {
            if let Some(value) = value {
                let value = HeaderValue::try_from(value.as_str())
                    .map_err(|_| ConfigError::new(knob, "not a valid header value"))?;
                headers.insert(HeaderName::from_static(header), value);
            }
        }
        let observe = Observe::new(
            self.name.clone(),
            match self.flavor {
                Flavor::Azure { .. } => "azure.ai.openai",
                // A compatible server speaks OpenAI's format: the conventions' discriminator
                // of that telemetry flavour.
                Flavor::OpenAi | Flavor::Compatible => "openai",
            },
            &chat_uri,
            self.record_sizes,
        );
        Ok(OpenAi {
            inner: client,
            config: Arc::new(Config {
                chat_uri,
                embeddings_uri,
                headers,
                ctx: Ctx {
                    dialect: Dialect::OpenAi,
                    observe,
                    provider: self.name,
                    max_body: self.max_body_bytes,
                    key: api_key,
                    strict_fields: self.strict_fields,
                },
                timeouts: self.timeouts,
                include_usage: self.include_usage,
                legacy_max_tokens: self.legacy_max_tokens,
                max_event_bytes: self.max_event_bytes,
            }),
        })
    }
}

struct Config {
    chat_uri: Uri,
    embeddings_uri: Uri,
    headers: HeaderMap,
    ctx: Ctx,
    timeouts: StreamTimeouts,
    include_usage: bool,
    legacy_max_tokens: bool,
    max_event_bytes: usize,
}

/// A chat completions (and embeddings) service for OpenAI, OpenAI-compatible servers and
/// Azure OpenAI. See the [module docs](crate::openai).
///
/// Clones share their configuration and the inner client (and so its connection pool). It
/// never retries: put a retry layer in front.
pub struct OpenAi<S = HttpClient> {
    inner: S,
    config: Arc<Config>,
}

impl<S: Clone> Clone for OpenAi<S> {
    fn clone(&self) -> Self {
        OpenAi {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> fmt::Debug for OpenAi<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAi")
            .field("provider", &self.config.ctx.provider)
            .field("chat_uri", &self.config.chat_uri)
            .field("api_key", &"****")
            .finish_non_exhaustive()
    }
}

impl OpenAi<HttpClient> {
    /// A builder for `api.openai.com`.
    pub fn builder() -> OpenAiBuilder {
        OpenAiBuilder::new(Flavor::OpenAi, OPENAI_BASE_URL.to_owned(), "openai")
    }

    /// OpenAI with the key from `OPENAI_API_KEY` and, if set, the base URL from
    /// `OPENAI_BASE_URL`, over the shared default client.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut builder = OpenAi::builder();
        if let Ok(base) = std::env::var("OPENAI_BASE_URL")
            && !base.trim().is_empty()
        {
            builder = builder.base_url(base.trim());
        }
        builder.build()
    }

    /// A builder for an OpenAI-compatible server at `base_url` (the URL that
    /// `/chat/completions` is appended to, such as `http://localhost:8000/v1`).
    pub fn compatible(base_url: impl Into<String>) -> OpenAiBuilder {
        OpenAiBuilder::new(Flavor::Compatible, base_url.into(), "openai-compatible")
    }

    /// A builder for the Azure OpenAI `deployment` at `endpoint`
    /// (`https://NAME.openai.azure.com`), with this `api_version` (such as `2024-10-21`).
    /// The request's `model` is sent but Azure answers with the deployment's model.
    ///
    /// ```
    /// use tower::{ServiceExt, service_fn};
    /// use tower_llm_providers::{ChatRequest, Message, OpenAi, RequestBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let http = service_fn(|request: http::Request<RequestBody>| async move {
    ///     assert_eq!(
    ///         request.uri(),
    ///         "https://contoso.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    ///     );
    ///     assert!(request.headers()["api-key"].is_sensitive());
    ///     let body = r#"{"id":"c","model":"gpt-4o","choices":[{"index":0,
    ///         "message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]}"#;
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
    ///         bytes::Bytes::from(body),
    ///     )))
    /// });
    /// let azure = OpenAi::azure("https://contoso.openai.azure.com", "gpt4o-prod", "2024-10-21")
    ///     .api_key("azure-key") // or AZURE_OPENAI_API_KEY
    ///     .build_with(http)
    ///     .unwrap();
    /// let request = ChatRequest::new("gpt-4o", vec![Message::user("Hi")]);
    /// assert_eq!(azure.oneshot(request).await.unwrap().content, "Hi");
    /// # }
    /// ```
    pub fn azure(
        endpoint: impl Into<String>,
        deployment: impl Into<String>,
        api_version: impl Into<String>,
    ) -> OpenAiBuilder {
        OpenAiBuilder::new(
            Flavor::Azure {
                deployment: deployment.into(),
                api_version: api_version.into(),
            },
            endpoint.into(),
            "azure-openai",
        )
    }
}

impl<S> OpenAi<S> {
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

    fn post(&self, uri: &Uri, body: Vec<u8>, stream: bool) -> http::Request<RequestBody> {
        post_json(uri, &self.config.headers, body, stream)
    }

    /// The JSON body this service sends for `request`.
    pub fn encode_chat(&self, request: &ChatRequest, stream: bool) -> Vec<u8> {
        encode_chat(
            request,
            stream,
            self.config.include_usage,
            self.config.legacy_max_tokens,
        )
    }
}

impl<S, B> Service<ChatRequest> for OpenAi<S>
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
        if let Err(error) = self.config.ctx.check_extra(&request) {
            let ctx = self.config.ctx.clone();
            return ResponseFuture::failed(error, ctx, decode_chat, call, CallObs::chat);
        }
        let body = self.encode_chat(&request, false);
        let http = self.post(&self.config.chat_uri, body, false);
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

impl<S, B> Service<Streaming<ChatRequest>> for OpenAi<S>
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
        let future = match self.config.ctx.check_extra(&request.0) {
            Ok(()) => {
                let body = self.encode_chat(&request.0, true);
                let http = self.post(&self.config.chat_uri, body, true);
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

impl<S, B> Service<EmbeddingRequest> for OpenAi<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = EmbeddingResponse;
    type Error = UpstreamError;
    type Future = ResponseFuture<S::Future, B, EmbeddingResponse>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <Self as Service<ChatRequest>>::poll_ready(self, cx)
    }

    fn call(&mut self, request: EmbeddingRequest) -> Self::Future {
        let call = self
            .config
            .ctx
            .observe
            .start(Operation::Embeddings, RequestFacts::embeddings(&request));
        let body = encode_embeddings(&request);
        let http = self.post(&self.config.embeddings_uri, body, false);
        let future = call.in_span(|| self.inner.call(http));
        ResponseFuture::new(
            future,
            self.config.ctx.clone(),
            decode_embeddings,
            call,
            CallObs::embeddings,
        )
    }
}

/// Encodes `request` as OpenAI sends it (`max_completion_tokens`, usage asked for in
/// streams): the body [`OpenAi`] posts, for a transport of your own.
pub fn encode_request(request: &ChatRequest, stream: bool) -> Vec<u8> {
    encode_chat(request, stream, true, false)
}

/// Decodes a chat completions body, as [`OpenAi`] does.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, UpstreamError> {
    decode_chat(
        &standalone_ctx(),
        Bytes::copy_from_slice(body),
        ResponseMeta::default(),
    )
}

pub(crate) fn standalone_ctx() -> Ctx {
    Ctx {
        dialect: Dialect::OpenAi,
        provider: Cow::Borrowed("openai"),
        max_body: DEFAULT_MAX_BODY_BYTES,
        key: None,
        observe: crate::observe::Observe::standalone("openai"),
        strict_fields: false,
    }
}

// ---- wire format: requests -------------------------------------------------------------

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    metadata: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a Value,
}

fn wire_message(message: &Message) -> WireMessage<'_> {
    let content = if message.content.is_empty() && !message.tool_calls.is_empty() {
        None
    } else {
        Some(message.content.as_str())
    };
    WireMessage {
        role: message.role.as_str(),
        content,
        // A tool message's `name` is for Gemini; OpenAI matches on `tool_call_id`.
        name: if message.role == Role::Tool {
            None
        } else {
            message.name.as_deref()
        },
        tool_calls: message
            .tool_calls
            .iter()
            .map(|call| WireToolCall {
                id: &call.id,
                kind: "function",
                function: WireFunctionCall {
                    name: &call.name,
                    arguments: &call.arguments,
                },
            })
            .collect(),
        tool_call_id: message.tool_call_id.as_deref(),
    }
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => Value::from("auto"),
        ToolChoice::None => Value::from("none"),
        ToolChoice::Required => Value::from("required"),
        ToolChoice::Function(name) => {
            serde_json::json!({"type": "function", "function": {"name": name}})
        }
    }
}

fn response_format(format: &ResponseFormat) -> Value {
    match format {
        ResponseFormat::Text => serde_json::json!({"type": "text"}),
        ResponseFormat::JsonObject => serde_json::json!({"type": "json_object"}),
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        } => serde_json::json!({
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": strict},
        }),
    }
}

/// Encodes `request` as a chat completions body.
pub(crate) fn encode_chat(
    request: &ChatRequest,
    stream: bool,
    include_usage: bool,
    legacy_max_tokens: bool,
) -> Vec<u8> {
    let wire = WireRequest {
        model: &request.model,
        messages: request.messages.iter().map(wire_message).collect(),
        temperature: request.temperature,
        top_p: request.top_p,
        max_tokens: request.max_tokens.filter(|_| legacy_max_tokens),
        max_completion_tokens: request.max_tokens.filter(|_| !legacy_max_tokens),
        stop: &request.stop,
        seed: request.seed,
        tools: request
            .tools
            .iter()
            .map(|tool| WireTool {
                kind: "function",
                function: WireFunction {
                    name: &tool.name,
                    description: tool.description.as_deref(),
                    parameters: &tool.parameters,
                },
            })
            .collect(),
        tool_choice: request.tool_choice.as_ref().map(tool_choice),
        response_format: request.response_format.as_ref().map(response_format),
        user: request.user.as_deref(),
        metadata: &request.metadata,
        stream,
        stream_options: (stream && include_usage).then_some(StreamOptions {
            include_usage: true,
        }),
    };
    crate::chat::encode_with_extra(
        &wire,
        request.extra_for(Dialect::OpenAi),
        crate::chat::body_size_hint(request),
    )
}

#[derive(Serialize)]
struct WireEmbeddingRequest<'a> {
    model: &'a str,
    input: &'a [String],
    encoding_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
}

fn encode_embeddings(request: &EmbeddingRequest) -> Vec<u8> {
    crate::chat::encode_with_extra(
        &WireEmbeddingRequest {
            model: &request.model,
            input: &request.input,
            encoding_format: "float",
            dimensions: request.dimensions,
            user: request.user.as_deref(),
        },
        Some(&request.extra),
        request.input.iter().map(|i| i.len() + 8).sum::<usize>() + 128,
    )
}

// ---- wire format: responses ------------------------------------------------------------

/// A chat completion body: the fields read typed, everything else in `extra`.
///
/// Deserialised by hand rather than with `#[serde(flatten)]`, which buffers the whole object
/// (the answer's text included) into serde's internal `Content` before reading the fields
/// out of it: this reads each field once, straight from the body.
struct WireResponse {
    id: Option<String>,
    model: Option<String>,
    choices: Option<Vec<WireChoice>>,
    usage: Option<WireUsage>,
    extra: Map<String, Value>,
}

/// A key of a chat completion body: one of [`WireResponse`]'s typed fields, or another.
enum WireResponseField {
    Id,
    Model,
    Choices,
    Usage,
    Other(String),
}

impl<'de> Deserialize<'de> for WireResponseField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;

        impl serde::de::Visitor<'_> for FieldVisitor {
            type Value = WireResponseField;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<WireResponseField, E> {
                Ok(match key {
                    "id" => WireResponseField::Id,
                    "model" => WireResponseField::Model,
                    "choices" => WireResponseField::Choices,
                    "usage" => WireResponseField::Usage,
                    other => WireResponseField::Other(other.to_owned()),
                })
            }

            fn visit_string<E: serde::de::Error>(
                self,
                key: String,
            ) -> Result<WireResponseField, E> {
                match self.visit_str::<E>(&key)? {
                    WireResponseField::Other(_) => Ok(WireResponseField::Other(key)),
                    known => Ok(known),
                }
            }
        }

        deserializer.deserialize_identifier(FieldVisitor)
    }
}

impl<'de> Deserialize<'de> for WireResponse {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ResponseVisitor;

        impl<'de> serde::de::Visitor<'de> for ResponseVisitor {
            type Value = WireResponse;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chat completion object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<WireResponse, A::Error> {
                use serde::de::Error as _;
                let mut wire = WireResponse {
                    id: None,
                    model: None,
                    choices: None,
                    usage: None,
                    extra: Map::new(),
                };
                // A typed field seen twice is refused, as the derived impl refuses it.
                let (mut id, mut model, mut choices, mut usage) = (false, false, false, false);
                let once = |seen: &mut bool, name: &'static str| {
                    if std::mem::replace(seen, true) {
                        Err(A::Error::duplicate_field(name))
                    } else {
                        Ok(())
                    }
                };
                while let Some(field) = map.next_key::<WireResponseField>()? {
                    match field {
                        WireResponseField::Id => {
                            once(&mut id, "id")?;
                            wire.id = map.next_value()?;
                        }
                        WireResponseField::Model => {
                            once(&mut model, "model")?;
                            wire.model = map.next_value()?;
                        }
                        WireResponseField::Choices => {
                            once(&mut choices, "choices")?;
                            wire.choices = map.next_value()?;
                        }
                        WireResponseField::Usage => {
                            once(&mut usage, "usage")?;
                            wire.usage = map.next_value()?;
                        }
                        WireResponseField::Other(key) => {
                            let value: Value = map.next_value()?;
                            wire.extra.insert(key, value);
                        }
                    }
                }
                Ok(wire)
            }
        }

        deserializer.deserialize_map(ResponseVisitor)
    }
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    message: Option<WireMessageOut>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessageOut {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCallOut>>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCallOut {
    #[serde(default)]
    id: Option<String>,
    function: WireFunctionOut,
}

#[derive(Deserialize)]
struct WireFunctionOut {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<WireUsageDetails>,
}

#[derive(Deserialize)]
struct WireUsageDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl WireUsage {
    fn usage(&self) -> tower_llm_core::Usage {
        usage(
            self.prompt_tokens.unwrap_or(0),
            self.completion_tokens.unwrap_or(0),
            self.prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        )
    }
}

/// Decodes a chat completions body.
pub(crate) fn decode_chat(
    ctx: &Ctx,
    body: Bytes,
    meta: ResponseMeta,
) -> Result<ChatResponse, UpstreamError> {
    let wire: WireResponse = serde_json::from_slice(&body)
        .map_err(|e| ctx.malformed("chat completion is not valid JSON", &body, e))?;
    if let Some(error) = wire.extra.get("error").filter(|e| !e.is_null()) {
        let value = serde_json::json!({ "error": error });
        return Err(ctx.for_error_value(&value, &String::from_utf8_lossy(&body)));
    }
    let choices = wire.choices.unwrap_or_default();
    let Some(choice) = choices.into_iter().find(|c| c.index.unwrap_or(0) == 0) else {
        return Err(ctx.malformed("chat completion", &body, "no choice in the answer"));
    };
    let extra = wire.extra;
    let message = choice.message.unwrap_or(WireMessageOut {
        content: None,
        tool_calls: None,
        refusal: None,
    });
    let refusal = message.refusal.filter(|r| !r.is_empty());
    let mut finish_reason = choice.finish_reason.as_deref().map(finish_reason_openai);
    if refusal.is_some() && matches!(finish_reason, None | Some(FinishReason::Stop)) {
        finish_reason = Some(FinishReason::Refusal);
    }
    Ok(ChatResponse {
        id: wire.id.unwrap_or_default(),
        model: wire.model.unwrap_or_default(),
        content: message.content.unwrap_or_default(),
        tool_calls: message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|call| ToolCall {
                id: call.id.unwrap_or_default(),
                name: call.function.name.unwrap_or_default(),
                arguments: call.function.arguments.unwrap_or_default(),
            })
            .collect(),
        blocks: Vec::new(),
        refusal,
        finish_reason,
        usage: wire.usage.as_ref().map(WireUsage::usage),
        extra,
        meta,
    })
}

#[derive(Deserialize)]
struct WireEmbeddingResponse {
    #[serde(default)]
    model: Option<String>,
    data: Vec<WireEmbedding>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

fn decode_embeddings(
    ctx: &Ctx,
    body: Bytes,
    meta: ResponseMeta,
) -> Result<EmbeddingResponse, UpstreamError> {
    let mut wire: WireEmbeddingResponse = serde_json::from_slice(&body)
        .map_err(|e| ctx.malformed("embeddings answer is not valid JSON", &body, e))?;
    wire.data.sort_by_key(|d| d.index);
    Ok(EmbeddingResponse {
        model: wire.model.unwrap_or_default(),
        embeddings: wire.data.into_iter().map(|d| d.embedding).collect(),
        usage: wire.usage.as_ref().map(WireUsage::usage),
        meta,
    })
}

// ---- wire format: stream chunks --------------------------------------------------------

#[derive(Deserialize)]
struct WireChunk<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    choices: Option<Vec<WireChunkChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCallDelta>>,
}

#[derive(Deserialize)]
struct WireToolCallDelta {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunctionOut>,
}

/// Decodes chat completion chunks; the stream ends at `data: [DONE]`.
#[derive(Debug, Default)]
pub(crate) struct StreamDecoder {
    pub(crate) model: Option<String>,
    refused: bool,
}

impl StreamDecoder {
    pub(crate) fn event(
        &mut self,
        ctx: &Ctx,
        event: &SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(Step::Done);
        }
        let chunk: WireChunk<'_> = serde_json::from_str(data).map_err(|e| {
            ctx.malformed(
                "stream event is not valid JSON",
                &Bytes::copy_from_slice(data.as_bytes()),
                e,
            )
        })?;
        if self.model.is_none()
            && let Some(model) = chunk.model.filter(|m| !m.is_empty())
        {
            self.model = Some(model.into_owned());
        }
        for choice in chunk.choices.into_iter().flatten() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push_back(ChatChunk::Content(text));
                }
                if let Some(text) = delta.refusal.filter(|t| !t.is_empty()) {
                    self.refused = true;
                    out.push_back(ChatChunk::Refusal(text));
                }
                for (position, call) in delta.tool_calls.into_iter().flatten().enumerate() {
                    let function = call.function;
                    out.push_back(ChatChunk::ToolCall(ToolCallDelta {
                        index: call.index.unwrap_or(position as u32),
                        id: call.id,
                        name: function.as_ref().and_then(|f| f.name.clone()),
                        arguments: function.and_then(|f| f.arguments).unwrap_or_default(),
                    }));
                }
            }
            if let Some(reason) = choice.finish_reason {
                let reason = match finish_reason_openai(&reason) {
                    FinishReason::Stop if self.refused => FinishReason::Refusal,
                    reason => reason,
                };
                out.push_back(ChatChunk::Finish(reason));
            }
        }
        if let Some(usage) = chunk.usage {
            out.push_back(ChatChunk::Usage(usage.usage()));
        }
        Ok(Step::Continue)
    }
}
