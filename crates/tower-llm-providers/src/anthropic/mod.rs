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

mod wire;

use std::fmt;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Uri};
use tower_llm_core::UpstreamError;

use crate::builder;
use crate::chat::{ChatField, ChatRequest, ChatResponse};
use crate::client::{HttpClient, RequestBody, post_json};
use crate::error::{CallContext, ConfigError, config_error};
use crate::key::ApiKey;
use crate::meta::{Dialect, ResponseMeta};
use crate::protocol::{Protocol, StreamDecoder};
use crate::provider::{CommonSettings, ProtocolSettings, Provider, ProviderBuilder};

const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";
const ANTHROPIC_VERSION: &str = "2023-06-01";
const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The Anthropic Messages service: the [`Provider`] over [`AnthropicProtocol`]. See the
/// [module docs](crate::anthropic).
pub type Anthropic<S = HttpClient> = Provider<AnthropicProtocol, S>;

/// Builds an [`Anthropic`] service.
pub type AnthropicBuilder = ProviderBuilder<AnthropicSettings>;

/// The settings only an [`AnthropicBuilder`] has.
#[derive(Clone, Debug)]
pub struct AnthropicSettings {
    version: String,
    default_max_tokens: u32,
}

/// The Messages wire format, with one upstream's URL and headers.
pub struct AnthropicProtocol {
    messages_uri: Uri,
    headers: HeaderMap,
    key: ApiKey,
    default_max_tokens: u32,
}

impl fmt::Debug for AnthropicProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProtocol")
            .field("messages_uri", &self.messages_uri)
            .field("api_key", &"****")
            .finish_non_exhaustive()
    }
}

impl Anthropic {
    /// A builder with Anthropic's defaults: `https://api.anthropic.com/v1`, the key from
    /// `ANTHROPIC_API_KEY` unless given.
    pub fn builder() -> AnthropicBuilder {
        AnthropicBuilder::new(
            AnthropicSettings {
                version: ANTHROPIC_VERSION.to_owned(),
                default_max_tokens: DEFAULT_MAX_TOKENS,
            },
            CommonSettings::new(ANTHROPIC_BASE_URL, "anthropic"),
        )
    }

    /// Anthropic with the key from `ANTHROPIC_API_KEY`, over the shared default client.
    pub fn from_env() -> Result<Self, ConfigError> {
        Anthropic::builder().build()
    }
}

impl AnthropicBuilder {
    /// The `anthropic-version` header (default `2023-06-01`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.settings_mut().version = version.into();
        self
    }

    /// The `max_tokens` sent when a request names none (default 4096).
    pub fn default_max_tokens(mut self, max_tokens: u32) -> Self {
        self.settings_mut().default_max_tokens = max_tokens;
        self
    }
}

impl ProtocolSettings for AnthropicSettings {
    type Protocol = AnthropicProtocol;

    fn protocol(self, common: &CommonSettings) -> Result<AnthropicProtocol, ConfigError> {
        if self.default_max_tokens == 0 {
            return Err(config_error("default_max_tokens", "must be above zero"));
        }
        let messages_uri = builder::endpoint(format!("{}/messages", common.base_url()))?;
        let key = common.api_key_or_env(&["ANTHROPIC_API_KEY"])?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            HeaderName::from_static("x-api-key"),
            builder::key_header(&key, "")?,
        );
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::try_from(self.version.as_str())
                .map_err(|_| config_error("version", "not a valid header value"))?,
        );
        Ok(AnthropicProtocol {
            messages_uri,
            headers,
            key,
            default_max_tokens: self.default_max_tokens,
        })
    }
}

impl Protocol for AnthropicProtocol {
    const DIALECT: Dialect = Dialect::Anthropic;

    fn gen_ai_provider(&self) -> &'static str {
        "anthropic"
    }

    fn endpoint(&self) -> &Uri {
        &self.messages_uri
    }

    fn secret(&self) -> Option<&ApiKey> {
        Some(&self.key)
    }

    /// Messages API has no `seed`, no response format and no free-form `metadata` (its `metadata.user_id` carries `user`).
    fn unsupported_fields(&self, request: &ChatRequest) -> Vec<ChatField> {
        ChatField::set_in(
            &[
                ChatField::Seed,
                ChatField::ResponseFormat,
                ChatField::Metadata,
            ],
            request,
        )
    }

    fn chat_request(
        &self,
        _cx: &CallContext,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<http::Request<RequestBody>, UpstreamError> {
        let body = wire::encode_chat(request, stream, self.default_max_tokens);
        Ok(post_json(&self.messages_uri, &self.headers, body, stream))
    }

    fn max_tokens_sent(&self, request: &ChatRequest) -> Option<u32> {
        Some(request.max_tokens.unwrap_or(self.default_max_tokens))
    }

    fn decode_chat(
        cx: &CallContext,
        body: Bytes,
        meta: ResponseMeta,
    ) -> Result<ChatResponse, UpstreamError> {
        wire::decode_chat(cx, &body, meta)
    }

    fn stream_decoder() -> Box<dyn StreamDecoder> {
        Box::<wire::StreamDecoder>::default()
    }
}

/// Encodes `request` as [`Anthropic`] sends it (with `max_tokens` 4096 when unset).
pub fn encode_request(request: &ChatRequest, stream: bool) -> Vec<u8> {
    wire::encode_chat(request, stream, DEFAULT_MAX_TOKENS)
}

/// Decodes a Messages body, as [`Anthropic`] does.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, UpstreamError> {
    wire::decode_chat(standalone_context(), body, ResponseMeta::default())
}

/// The context of a decoder used without a service, made once.
pub(crate) fn standalone_context() -> &'static CallContext {
    static CONTEXT: std::sync::OnceLock<CallContext> = std::sync::OnceLock::new();
    CONTEXT.get_or_init(|| CallContext::standalone::<AnthropicProtocol>("anthropic", "anthropic"))
}
