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

mod wire;

use std::fmt;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Uri};
use tower_llm_core::UpstreamError;

use crate::builder;
use crate::chat::{ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse};
use crate::client::{HttpClient, RequestBody, post_json};
use crate::error::{CallContext, ConfigError, config_error};
use crate::key::ApiKey;
use crate::meta::{Dialect, ResponseMeta};
use crate::protocol::{EmbeddingProtocol, Protocol, StreamDecoder};
use crate::provider::{CommonSettings, ProtocolSettings, Provider, ProviderBuilder};

const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// A chat completions (and embeddings) service for OpenAI, OpenAI-compatible servers and
/// Azure OpenAI: the [`Provider`] over [`OpenAiProtocol`]. See the [module docs](crate::openai).
pub type OpenAi<S = HttpClient> = Provider<OpenAiProtocol, S>;

/// Builds an [`OpenAi`] service. Every setting is checked by
/// [`build`](ProviderBuilder::build).
pub type OpenAiBuilder = ProviderBuilder<OpenAiSettings>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    Compatible,
    Azure {
        deployment: String,
        api_version: String,
    },
}

/// The settings only an [`OpenAiBuilder`] has.
#[derive(Clone, Debug)]
pub struct OpenAiSettings {
    flavor: Flavor,
    organization: Option<String>,
    project: Option<String>,
    include_usage: bool,
    legacy_max_tokens: bool,
}

/// The chat completions wire format, with one upstream's URLs and headers.
pub struct OpenAiProtocol {
    chat_uri: Uri,
    embeddings_uri: Uri,
    headers: HeaderMap,
    key: Option<ApiKey>,
    gen_ai_provider: &'static str,
    include_usage: bool,
    legacy_max_tokens: bool,
}

impl fmt::Debug for OpenAiProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProtocol")
            .field("chat_uri", &self.chat_uri)
            .field("api_key", &self.key.as_ref().map(|_| "****"))
            .finish_non_exhaustive()
    }
}

impl OpenAi {
    /// A builder for `api.openai.com`.
    pub fn builder() -> OpenAiBuilder {
        OpenAiBuilder::new(
            OpenAiSettings::new(Flavor::OpenAi),
            CommonSettings::new(OPENAI_BASE_URL, "openai"),
        )
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
        OpenAiBuilder::new(
            OpenAiSettings::new(Flavor::Compatible),
            CommonSettings::new(base_url, "openai-compatible"),
        )
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
            OpenAiSettings::new(Flavor::Azure {
                deployment: deployment.into(),
                api_version: api_version.into(),
            }),
            CommonSettings::new(endpoint, "azure-openai"),
        )
    }
}

impl OpenAiBuilder {
    /// The `OpenAI-Organization` header.
    pub fn organization(mut self, organization: impl Into<String>) -> Self {
        self.settings_mut().organization = Some(organization.into());
        self
    }

    /// The `OpenAI-Project` header.
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.settings_mut().project = Some(project.into());
        self
    }

    /// Whether streams ask for a final usage chunk (`stream_options.include_usage`, default
    /// on). Turn it off for a compatible server that refuses the field.
    pub fn include_usage(mut self, include: bool) -> Self {
        self.settings_mut().include_usage = include;
        self
    }

    /// Sends the output budget as `max_tokens` (default for compatible servers and Azure)
    /// rather than `max_completion_tokens` (default for OpenAI, required by its reasoning
    /// models).
    pub fn legacy_max_tokens(mut self, legacy: bool) -> Self {
        self.settings_mut().legacy_max_tokens = legacy;
        self
    }
}

impl OpenAiSettings {
    fn new(flavor: Flavor) -> Self {
        let legacy_max_tokens = !matches!(flavor, Flavor::OpenAi);
        OpenAiSettings {
            flavor,
            organization: None,
            project: None,
            include_usage: true,
            legacy_max_tokens,
        }
    }
}

impl ProtocolSettings for OpenAiSettings {
    type Protocol = OpenAiProtocol;

    fn protocol(self, common: &CommonSettings) -> Result<OpenAiProtocol, ConfigError> {
        let base = common.base_url();
        let (chat, embeddings) = match &self.flavor {
            Flavor::Azure {
                deployment,
                api_version,
            } => {
                if deployment.is_empty() || deployment.contains(['/', '?', '#']) {
                    return Err(config_error(
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

        let key = match (&self.flavor, common.api_key()) {
            (_, Some(key)) => Some(key.clone()),
            (Flavor::OpenAi, None) => Some(common.api_key_or_env(&["OPENAI_API_KEY"])?),
            (Flavor::Azure { .. }, None) => Some(common.api_key_or_env(&["AZURE_OPENAI_API_KEY"])?),
            (Flavor::Compatible, None) => None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = &key {
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
                    .map_err(|_| config_error(knob, "not a valid header value"))?;
                headers.insert(HeaderName::from_static(header), value);
            }
        }
        Ok(OpenAiProtocol {
            chat_uri,
            embeddings_uri,
            headers,
            key,
            gen_ai_provider: match self.flavor {
                Flavor::Azure { .. } => "azure.ai.openai",
                // A compatible server speaks OpenAI's format: the conventions' discriminator
                // of that telemetry flavour.
                Flavor::OpenAi | Flavor::Compatible => "openai",
            },
            include_usage: self.include_usage,
            legacy_max_tokens: self.legacy_max_tokens,
        })
    }
}

impl Protocol for OpenAiProtocol {
    const DIALECT: Dialect = Dialect::OpenAi;

    fn gen_ai_provider(&self) -> &'static str {
        self.gen_ai_provider
    }

    fn endpoint(&self) -> &Uri {
        &self.chat_uri
    }

    fn secret(&self) -> Option<&ApiKey> {
        self.key.as_ref()
    }

    fn chat_request(
        &self,
        _cx: &CallContext,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<http::Request<RequestBody>, UpstreamError> {
        let body = wire::encode_chat(request, stream, self.include_usage, self.legacy_max_tokens);
        Ok(post_json(&self.chat_uri, &self.headers, body, stream))
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

impl EmbeddingProtocol for OpenAiProtocol {
    fn embeddings_request(
        &self,
        _cx: &CallContext,
        request: &EmbeddingRequest,
    ) -> Result<http::Request<RequestBody>, UpstreamError> {
        let body = wire::encode_embeddings(request);
        Ok(post_json(&self.embeddings_uri, &self.headers, body, false))
    }

    fn decode_embeddings(
        cx: &CallContext,
        body: Bytes,
        meta: ResponseMeta,
    ) -> Result<EmbeddingResponse, UpstreamError> {
        wire::decode_embeddings(cx, &body, meta)
    }
}

/// Encodes `request` as OpenAI sends it (`max_completion_tokens`, usage asked for in
/// streams): the body [`OpenAi`] posts, for a transport of your own.
pub fn encode_request(request: &ChatRequest, stream: bool) -> Vec<u8> {
    wire::encode_chat(request, stream, true, false)
}

/// Decodes a chat completions body, as [`OpenAi`] does.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, UpstreamError> {
    wire::decode_chat(standalone_context(), body, ResponseMeta::default())
}

/// The context of a decoder used without a service, made once.
pub(crate) fn standalone_context() -> &'static CallContext {
    static CONTEXT: std::sync::OnceLock<CallContext> = std::sync::OnceLock::new();
    CONTEXT.get_or_init(|| CallContext::standalone::<OpenAiProtocol>("openai", "openai"))
}
