//! The one provider service, [`Provider`], over any [`Protocol`], and its builder.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Body;
use tower_llm_core::{BoxError, UpstreamError};
use tower_service::Service;

use crate::body::DEFAULT_MAX_BODY_BYTES;
use crate::builder;
use crate::chat::{ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Streaming};
use crate::client::{HttpClient, RequestBody, shared_client};
use crate::error::{CallContext, ConfigError};
use crate::future::{ResponseFuture, StreamFuture};
use crate::key::ApiKey;
use crate::observe::{CallObs, Observe, Operation, RequestFacts};
use crate::protocol::{EmbeddingProtocol, Hooks, Protocol};
use crate::sse::DEFAULT_MAX_EVENT_BYTES;
use crate::stream::{ChatStream, StreamTimeouts};

/// A provider: one [`Protocol`] over an inner HTTP service `S`.
///
/// It is a `Service<ChatRequest>` (a whole [`ChatResponse`]), a
/// `Service<Streaming<ChatRequest>>` (a [`ChatStream`]) and, when its protocol serves them, a
/// `Service<EmbeddingRequest>`. [`OpenAi`](crate::OpenAi), [`Anthropic`](crate::Anthropic),
/// [`Gemini`](crate::Gemini) (and `Bedrock` with its feature) are this type over their
/// protocols.
///
/// Clones share their configuration and the inner client (and so its connection pool). It
/// never retries: put a retry layer in front.
pub struct Provider<P, S = HttpClient> {
    inner: S,
    shared: Arc<Shared<P>>,
}

struct Shared<P> {
    protocol: P,
    cx: CallContext,
    timeouts: StreamTimeouts,
    max_event_bytes: usize,
}

impl<P, S: Clone> Clone for Provider<P, S> {
    fn clone(&self) -> Self {
        Provider {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<P: fmt::Debug, S> fmt::Debug for Provider<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.shared.cx.provider)
            .field("protocol", &self.shared.protocol)
            .finish_non_exhaustive()
    }
}

impl<P, S> Provider<P, S> {
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

    /// The protocol, with its settings.
    pub fn protocol(&self) -> &P {
        &self.shared.protocol
    }

    /// The provider's name, as configured on its builder.
    pub fn name(&self) -> &str {
        &self.shared.cx.provider
    }
}

impl<P: Protocol, S> Provider<P, S> {
    /// The HTTP request this provider sends for `request` (its body, URL and headers, the
    /// key header marked sensitive), for a transport of your own.
    pub fn chat_request(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<http::Request<RequestBody>, UpstreamError> {
        self.shared
            .protocol
            .chat_request(&self.shared.cx, request, stream)
    }

    /// Starts a chat call: its observation, and its HTTP request unless the request is
    /// refused before any call.
    fn start(
        &self,
        op: Operation,
        request: &ChatRequest,
        stream: bool,
    ) -> (CallObs, Result<http::Request<RequestBody>, UpstreamError>) {
        let shared = &*self.shared;
        let call = shared.cx.observe.start(
            op,
            RequestFacts::chat(request, shared.protocol.max_tokens_sent(request)),
        );
        let unsupported = shared.protocol.unsupported_fields(request);
        let http = shared
            .cx
            .check_fields(request, &unsupported)
            .and_then(|()| shared.protocol.chat_request(&shared.cx, request, stream));
        (call, http)
    }
}

impl<P, S, B> Service<ChatRequest> for Provider<P, S>
where
    P: Protocol,
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
            .map_err(|e| self.shared.cx.transport("client not ready", e.into()))
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let (call, http) = self.start(Operation::Chat, &request, false);
        let cx = self.shared.cx.clone();
        match http {
            Ok(http) => {
                let future = call.in_span(|| self.inner.call(http));
                ResponseFuture::new(future, cx, P::decode_chat, call, CallObs::chat)
            }
            Err(error) => ResponseFuture::failed(error, cx, P::decode_chat, call, CallObs::chat),
        }
    }
}

impl<P, S, B> Service<Streaming<ChatRequest>> for Provider<P, S>
where
    P: Protocol,
    S: Service<http::Request<RequestBody>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = ChatStream<B>;
    type Error = UpstreamError;
    type Future = StreamFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <Self as Service<ChatRequest>>::poll_ready(self, cx)
    }

    fn call(&mut self, request: Streaming<ChatRequest>) -> Self::Future {
        let (call, http) = self.start(Operation::Stream, &request.0, true);
        let future = http.map(|http| call.in_span(|| self.inner.call(http)));
        StreamFuture::new(
            future,
            self.shared.cx.clone(),
            self.shared.timeouts,
            self.shared.max_event_bytes,
            call,
        )
    }
}

impl<P, S, B> Service<EmbeddingRequest> for Provider<P, S>
where
    P: EmbeddingProtocol,
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
        let shared = &*self.shared;
        let call = shared
            .cx
            .observe
            .start(Operation::Embeddings, RequestFacts::embeddings(&request));
        let cx = shared.cx.clone();
        match shared.protocol.embeddings_request(&shared.cx, &request) {
            Ok(http) => {
                let future = call.in_span(|| self.inner.call(http));
                ResponseFuture::new(future, cx, P::decode_embeddings, call, CallObs::embeddings)
                    .expecting(request.input.len(), |answer| answer.embeddings.len())
            }
            Err(error) => {
                ResponseFuture::failed(error, cx, P::decode_embeddings, call, CallObs::embeddings)
            }
        }
    }
}

/// The settings of one protocol's builder: the knobs only it has, and how they and the
/// [`CommonSettings`] make the protocol.
pub trait ProtocolSettings: Clone + fmt::Debug {
    /// The protocol these settings make.
    type Protocol: Protocol;

    /// Checks every setting and makes the protocol; a refusal names its knob.
    fn protocol(self, common: &CommonSettings) -> Result<Self::Protocol, ConfigError>;
}

/// The settings every provider's builder has.
#[derive(Clone, Debug)]
pub struct CommonSettings {
    base_url: String,
    api_key: Option<ApiKey>,
    name: Cow<'static, str>,
    timeouts: StreamTimeouts,
    max_body_bytes: usize,
    max_event_bytes: usize,
    record_sizes: bool,
    strict_fields: bool,
}

impl CommonSettings {
    /// The defaults, with this base URL and name.
    pub fn new(base_url: impl Into<String>, name: &'static str) -> Self {
        CommonSettings {
            base_url: base_url.into(),
            api_key: None,
            name: Cow::Borrowed(name),
            timeouts: StreamTimeouts::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            record_sizes: false,
            strict_fields: false,
        }
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    /// The key given to the builder, if any.
    pub fn api_key(&self) -> Option<&ApiKey> {
        self.api_key.as_ref()
    }

    /// The key given, or the first of these environment variables that is set; a refusal
    /// of knob `api_key` naming them otherwise.
    pub fn api_key_or_env(&self, vars: &[&str]) -> Result<ApiKey, ConfigError> {
        builder::key_or_env(self.api_key.clone(), vars)
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Builds a [`Provider`]: the settings every provider has, plus its protocol's `K`.
/// [`OpenAiBuilder`](crate::OpenAiBuilder), [`AnthropicBuilder`](crate::AnthropicBuilder)
/// and [`GeminiBuilder`](crate::GeminiBuilder) are this type. Every setting is checked by
/// [`build`](Self::build).
#[derive(Clone, Debug)]
pub struct ProviderBuilder<K> {
    settings: K,
    common: CommonSettings,
}

impl<K: ProtocolSettings> ProviderBuilder<K> {
    /// A builder with these protocol settings and common settings.
    pub fn new(settings: K, common: CommonSettings) -> Self {
        ProviderBuilder { settings, common }
    }

    /// The protocol's own settings, for its setters.
    pub(crate) fn settings_mut(&mut self) -> &mut K {
        &mut self.settings
    }

    /// The API key. Without one, each provider reads its environment variable (see its
    /// builder's constructor); an OpenAI-compatible server is called without a key.
    pub fn api_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.common.api_key = Some(key.into());
        self
    }

    /// The base URL (each provider's constructor names its default).
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.common.base_url = base_url.into();
        self
    }

    /// The provider name in errors, spans and metrics (each provider's constructor names
    /// its default: `openai`, `openai-compatible`, `azure-openai`, `anthropic`, `gemini`,
    /// `bedrock`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.common.name = name.into();
        self
    }

    /// Timeouts of streamed answers; [`StreamTimeouts::default`] (10 min to the first chunk,
    /// 10 min of silence) unless set. [`StreamTimeouts::none`] turns them off.
    pub fn stream_timeouts(mut self, timeouts: StreamTimeouts) -> Self {
        self.common.timeouts = timeouts;
        self
    }

    /// The largest non-streaming body read (default 16 MiB); past it, the call fails.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.common.max_body_bytes = limit;
        self
    }

    /// The largest single stream event (default 4 MiB).
    pub fn max_event_bytes(mut self, limit: usize) -> Self {
        self.common.max_event_bytes = limit;
        self
    }

    /// Records the prompt's and the answer's sizes, in characters (never their text), as
    /// the span fields `prompt_chars` and `answer_chars` (default off).
    pub fn record_sizes(mut self, record: bool) -> Self {
        self.common.record_sizes = record;
        self
    }

    /// Refuses a request whose `extra` fields are written for another dialect
    /// ([`ChatRequest::extra_dialect`](crate::ChatRequest::extra_dialect)) with a `BadRequest`
    /// that names them, instead of leaving them out (the default, counted in
    /// `tower_llm_providers_fields_dropped_total`).
    pub fn strict_fields(mut self, strict: bool) -> Self {
        self.common.strict_fields = strict;
        self
    }

    /// Builds the service over the process-wide [`shared_client`].
    pub fn build(self) -> Result<Provider<K::Protocol, HttpClient>, ConfigError> {
        let client = shared_client()?;
        self.build_with(client)
    }

    /// Builds the service over your own HTTP client (or the default one wrapped in
    /// tower-http layers).
    pub fn build_with<S>(self, client: S) -> Result<Provider<K::Protocol, S>, ConfigError> {
        let common = self.common;
        builder::check_limits(common.max_body_bytes, common.max_event_bytes)?;
        let protocol = self.settings.protocol(&common)?;
        let observe = Observe::new(
            common.name.clone(),
            protocol.gen_ai_provider(),
            protocol.endpoint(),
            common.record_sizes,
        );
        let cx = CallContext {
            dialect: K::Protocol::DIALECT,
            hooks: Hooks::of::<K::Protocol>(),
            provider: common.name,
            max_body: common.max_body_bytes,
            key: protocol.secret().cloned(),
            observe,
            strict_fields: common.strict_fields,
        };
        Ok(Provider {
            inner: client,
            shared: Arc::new(Shared {
                protocol,
                cx,
                timeouts: common.timeouts,
                max_event_bytes: common.max_event_bytes,
            }),
        })
    }
}
