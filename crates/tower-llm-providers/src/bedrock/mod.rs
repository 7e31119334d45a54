//! AWS Bedrock's Converse and ConverseStream APIs (cargo feature `bedrock`, off by default).
//!
//! [`Bedrock`] is the [`Provider`] over [`BedrockProtocol`]: a `Service<ChatRequest>` and a
//! `Service<Streaming<ChatRequest>>` like every provider of this crate, with the same errors,
//! timeouts, spans, metrics and end signal. It authenticates with a Bedrock API key
//! (`Authorization: Bearer`, given or from `AWS_BEARER_TOKEN_BEDROCK`) when there is one, and
//! otherwise signs each request with SigV4 (credentials given or from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; region given or from `AWS_REGION`, then
//! `AWS_DEFAULT_REGION`). Its streams are AWS event streams, decoded by
//! [`EventStreamFraming`]; its token quota takes `maxTokens` at admission
//! ([`Dialect::Bedrock`]).
//!
//! ```
//! use tower::{ServiceExt, service_fn};
//! use tower_llm_providers::bedrock::{AwsCredentials, Bedrock};
//! use tower_llm_providers::{ChatRequest, Message, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let http = service_fn(|request: http::Request<RequestBody>| async move {
//!     assert_eq!(
//!         request.uri(),
//!         "https://bedrock-runtime.eu-west-3.amazonaws.com/model/amazon.nova-lite-v1%3A0/converse"
//!     );
//!     let auth = request.headers()["authorization"].to_str().unwrap();
//!     assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
//!     let body = r#"{"output":{"message":{"role":"assistant","content":[{"text":"Paris."}]}},
//!         "stopReason":"end_turn","usage":{"inputTokens":9,"outputTokens":2,"totalTokens":11}}"#;
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
//!         bytes::Bytes::from(body),
//!     )))
//! });
//! let bedrock = Bedrock::builder()
//!     .region("eu-west-3")
//!     .credentials(AwsCredentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"))
//!     .build_with(http)
//!     .unwrap();
//! let request = ChatRequest::new("amazon.nova-lite-v1:0", vec![Message::user("Capital of France?")]);
//! let answer = bedrock.oneshot(request).await.unwrap();
//! assert_eq!(answer.content, "Paris.");
//! # }
//! ```
//!
//! The pieces are public for a transport of your own:
//!
//! - [`eventstream`]: the binary `application/vnd.amazon.eventstream` framing ConverseStream
//!   answers in, decoded incrementally with bounded memory;
//! - [`sign`]: SigV4 signing of a request and its body (service `bedrock`), with credentials
//!   from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION` then `AWS_DEFAULT_REGION`) or given in code, secrets never printed;
//! - [`wire`]: the Converse JSON for a [`ChatRequest`], answers and
//!   stream events decoded into [`ChatResponse`] and
//!   [`ChatChunk`](crate::ChatChunk)s, error bodies and in-stream exceptions classified.
//!
//! The endpoint of a region is [`endpoint`]; the path of a model's call is
//! [`wire::converse_path`].
//!
//! # Example
//!
//! A ConverseStream body, framed as Bedrock sends it, decoded into chunks:
//!
//! ```
//! use std::collections::VecDeque;
//! use tower_llm_providers::bedrock::eventstream::EventStreamDecoder;
//! use tower_llm_providers::bedrock::wire::ConverseStreamDecoder;
//! use tower_llm_providers::{ChatAccumulator, ChatChunk};
//!
//! # fn frame(event_type: &str, payload: &str) -> Vec<u8> {
//! #     let mut head = Vec::new();
//! #     for (name, value) in [(":event-type", event_type), (":message-type", "event")] {
//! #         head.push(name.len() as u8);
//! #         head.extend_from_slice(name.as_bytes());
//! #         head.push(7);
//! #         head.extend_from_slice(&(value.len() as u16).to_be_bytes());
//! #         head.extend_from_slice(value.as_bytes());
//! #     }
//! #     let total = (16 + head.len() + payload.len()) as u32;
//! #     let mut out = total.to_be_bytes().to_vec();
//! #     out.extend_from_slice(&(head.len() as u32).to_be_bytes());
//! #     out.extend_from_slice(&crc32(&out).to_be_bytes());
//! #     out.extend_from_slice(&head);
//! #     out.extend_from_slice(payload.as_bytes());
//! #     out.extend_from_slice(&crc32(&out).to_be_bytes());
//! #     out
//! # }
//! # fn crc32(bytes: &[u8]) -> u32 {
//! #     let mut crc = !0u32;
//! #     for &b in bytes {
//! #         crc ^= u32::from(b);
//! #         for _ in 0..8 {
//! #             crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
//! #         }
//! #     }
//! #     !crc
//! # }
//! let mut body = frame("messageStart", r#"{"role":"assistant"}"#);
//! body.extend(frame("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Paris."}}"#));
//! body.extend(frame("contentBlockStop", r#"{"contentBlockIndex":0}"#));
//! body.extend(frame("messageStop", r#"{"stopReason":"end_turn"}"#));
//! body.extend(frame("metadata", r#"{"usage":{"inputTokens":9,"outputTokens":2,"totalTokens":11}}"#));
//!
//! let mut frames = EventStreamDecoder::new();
//! let mut events = ConverseStreamDecoder::default();
//! let mut chunks = VecDeque::new();
//! let mut input = &body[..];
//! while let Some(message) = frames.next_message(&mut input).unwrap() {
//!     events.message(&message, &mut chunks).unwrap();
//! }
//! frames.finish().unwrap();
//! events.finish().unwrap();
//! let mut answer = ChatAccumulator::default();
//! chunks.iter().for_each(|chunk| answer.push(chunk));
//! let answer = answer.finish();
//! assert_eq!(answer.content, "Paris.");
//! assert_eq!(answer.usage.unwrap().input_tokens, 9);
//! ```

pub mod eventstream;
pub mod sign;
pub mod wire;

use std::fmt;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use tower_llm_core::{FailureKind, UpstreamError};

use crate::builder;
use crate::chat::{ChatField, ChatRequest, ChatResponse};
use crate::client::{HttpClient, RequestBody};
use crate::error::{CallContext, ConfigError, config_error};
use crate::framing::{Event, Framing, FramingError};
use crate::key::ApiKey;
use crate::meta::{Dialect, ResponseMeta};
use crate::protocol::{Protocol, Step, StreamDecoder, content_type_is};
use crate::provider::{CommonSettings, ProtocolSettings, Provider, ProviderBuilder};
pub use eventstream::DEFAULT_MAX_MESSAGE_BYTES;
use eventstream::{EventStreamDecoder, MessageType};
pub use sign::{AwsCredentials, SigV4Signer};

/// The event-stream content type of ConverseStream answers.
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// AWS Bedrock's Converse API: the [`Provider`] over [`BedrockProtocol`]. See the
/// [module docs](self).
pub type Bedrock<S = HttpClient> = Provider<BedrockProtocol, S>;

/// Builds a [`Bedrock`] service.
pub type BedrockBuilder = ProviderBuilder<BedrockSettings>;

/// The settings only a [`BedrockBuilder`] has.
#[derive(Clone, Debug, Default)]
pub struct BedrockSettings {
    region: Option<String>,
    credentials: Option<AwsCredentials>,
}

/// How calls are authenticated.
enum Auth {
    /// A Bedrock API key, as `Authorization: Bearer` (marked sensitive).
    Bearer(HeaderValue),
    SigV4(SigV4Signer),
}

/// The Converse wire format, with one region's endpoint and its authentication.
pub struct BedrockProtocol {
    base: String,
    endpoint: Uri,
    auth: Auth,
    // What an upstream could echo back: the API key, else the session token (the secret
    // access key itself is never sent).
    secret: Option<ApiKey>,
}

impl fmt::Debug for BedrockProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::Bearer(_) => "api key ****",
            Auth::SigV4(_) => "sigv4",
        };
        f.debug_struct("BedrockProtocol")
            .field("endpoint", &self.endpoint)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

impl Bedrock {
    /// A builder: the region's `bedrock-runtime` endpoint unless a `base_url` is given; a
    /// Bedrock API key (given, or `AWS_BEARER_TOKEN_BEDROCK`) if there is one, else SigV4
    /// with the [`credentials`](BedrockBuilder::credentials) given or the environment's.
    pub fn builder() -> BedrockBuilder {
        BedrockBuilder::new(
            BedrockSettings::default(),
            CommonSettings::new("", "bedrock"),
        )
    }

    /// Bedrock with everything from the environment, over the shared default client.
    pub fn from_env() -> Result<Self, ConfigError> {
        Bedrock::builder().build()
    }
}

impl BedrockBuilder {
    /// The AWS region (default: `AWS_REGION`, then `AWS_DEFAULT_REGION`).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.settings_mut().region = Some(region.into());
        self
    }

    /// The credentials SigV4 signs with (default: the environment's), when no API key is
    /// given.
    pub fn credentials(mut self, credentials: AwsCredentials) -> Self {
        self.settings_mut().credentials = Some(credentials);
        self
    }
}

impl ProtocolSettings for BedrockSettings {
    type Protocol = BedrockProtocol;

    fn protocol(self, common: &CommonSettings) -> Result<BedrockProtocol, ConfigError> {
        let region = match self.region {
            Some(region) => Some(region),
            None => sign::region_from_env(),
        };
        let base = match (common.base_url(), &region) {
            ("", Some(region)) => endpoint(region),
            ("", None) => {
                return Err(config_error(
                    "region",
                    "not given and neither AWS_REGION nor AWS_DEFAULT_REGION is set",
                ));
            }
            (base, _) => base.to_owned(),
        };
        let endpoint = builder::endpoint(format!("{base}/model/m/converse"))?;
        let api_key = match common.api_key() {
            Some(key) => Some(key.clone()),
            None if self.credentials.is_none() => {
                ApiKey::from_env_vars(&["AWS_BEARER_TOKEN_BEDROCK"])
            }
            None => None,
        };
        let (auth, secret) = match api_key {
            Some(key) => (
                Auth::Bearer(builder::key_header(&key, "Bearer ")?),
                Some(key),
            ),
            None => {
                let credentials = match self.credentials {
                    Some(credentials) => credentials,
                    None => AwsCredentials::from_env()?,
                };
                let Some(region) = region else {
                    return Err(config_error(
                        "region",
                        "SigV4 needs one: not given and neither AWS_REGION nor AWS_DEFAULT_REGION is set",
                    ));
                };
                let secret = credentials.secrets().last().cloned();
                (Auth::SigV4(SigV4Signer::new(credentials, region)?), secret)
            }
        };
        Ok(BedrockProtocol {
            base,
            endpoint,
            auth,
            secret,
        })
    }
}

impl Protocol for BedrockProtocol {
    const DIALECT: Dialect = Dialect::Bedrock;

    fn gen_ai_provider(&self) -> &'static str {
        "aws.bedrock"
    }

    fn endpoint(&self) -> &Uri {
        &self.endpoint
    }

    fn secret(&self) -> Option<&ApiKey> {
        self.secret.as_ref()
    }

    /// Converse has no `seed`, no response format, no end-user id and no request metadata.
    fn unsupported_fields(&self, request: &ChatRequest) -> Vec<ChatField> {
        ChatField::set_in(
            &[
                ChatField::Seed,
                ChatField::ResponseFormat,
                ChatField::User,
                ChatField::Metadata,
            ],
            request,
        )
    }

    fn chat_request(
        &self,
        cx: &CallContext,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<http::Request<RequestBody>, UpstreamError> {
        let uri = format!(
            "{}{}",
            self.base,
            wire::converse_path(&request.model, stream)
        );
        let uri: Uri = uri.parse().map_err(|_| {
            cx.error(
                FailureKind::BadRequest,
                "the model id cannot be put in a URL",
            )
        })?;
        let body = wire::encode_chat(request, request.extra_for(Dialect::Bedrock));
        let mut http = http::Request::new(RequestBody::new(Bytes::new()));
        *http.method_mut() = http::Method::POST;
        *http.uri_mut() = uri;
        let headers = http.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(if stream {
                EVENT_STREAM
            } else {
                "application/json"
            }),
        );
        match &self.auth {
            Auth::Bearer(value) => {
                http.headers_mut().insert(AUTHORIZATION, value.clone());
            }
            Auth::SigV4(signer) => signer.sign(&mut http, &body).map_err(|e| {
                cx.error(
                    FailureKind::Other,
                    format!("signing the request failed: {e}"),
                )
            })?,
        }
        *http.body_mut() = RequestBody::new(Bytes::from(body));
        Ok(http)
    }

    fn decode_chat(
        cx: &CallContext,
        body: Bytes,
        meta: ResponseMeta,
    ) -> Result<ChatResponse, UpstreamError> {
        wire::decode_chat(cx, body, meta)
    }

    fn status_error(
        cx: &CallContext,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        _note: Option<&str>,
    ) -> UpstreamError {
        wire::error_for_status(cx, status, headers, body)
    }

    fn stream_error(cx: &CallContext, event: &Event) -> Option<UpstreamError> {
        let name = event.name.as_deref().unwrap_or("exception");
        event
            .error
            .then(|| wire::exception(cx, name, event.data.as_bytes()))
    }

    fn is_stream(headers: &HeaderMap) -> bool {
        content_type_is(headers, EVENT_STREAM)
    }

    fn framing(max_event_bytes: usize) -> Box<dyn Framing> {
        Box::new(EventStreamFraming::new(max_event_bytes))
    }

    fn stream_decoder() -> Box<dyn StreamDecoder> {
        Box::<wire::StreamDecoder>::default()
    }
}

/// The AWS event-stream framing (`application/vnd.amazon.eventstream`) as a [`Framing`]:
/// each message is an [`Event`] named by its `:event-type` (or, marked as an error, its
/// `:exception-type` or `:error-code`), its payload as the data.
#[derive(Debug)]
pub struct EventStreamFraming(EventStreamDecoder);

impl EventStreamFraming {
    /// The framing, refusing messages over `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        EventStreamFraming(EventStreamDecoder::with_max_message_bytes(
            max_message_bytes,
        ))
    }
}

impl Framing for EventStreamFraming {
    fn next_event(&mut self, input: &mut &[u8]) -> Result<Option<Event>, FramingError> {
        let Some(message) = self
            .0
            .next_message(input)
            .map_err(|e| FramingError(e.to_string()))?
        else {
            return Ok(None);
        };
        let data = match (message.message_type, &message.error_message) {
            // An `error` message carries its text in a header; its payload may be empty.
            (MessageType::Error, Some(text)) if message.payload.is_empty() => {
                serde_json::json!({ "message": text }).to_string()
            }
            _ => String::from_utf8(message.payload.to_vec())
                .map_err(|_| FramingError("event-stream payload is not UTF-8".into()))?,
        };
        let event = Event::new(Some(message.kind), data);
        Ok(Some(match message.message_type {
            MessageType::Event => event,
            MessageType::Exception | MessageType::Error => event.into_error(),
        }))
    }

    fn finish(&mut self) -> Result<Option<Event>, FramingError> {
        self.0
            .finish()
            .map(|()| None)
            .map_err(|e| FramingError(e.to_string()))
    }

    fn buffered(&self) -> usize {
        self.0.buffered()
    }
}

impl StreamDecoder for wire::StreamDecoder {
    fn event(
        &mut self,
        cx: &CallContext,
        event: &Event,
        out: &mut std::collections::VecDeque<crate::ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        let name = event.name.as_deref().unwrap_or_default();
        wire::StreamDecoder::event(self, cx, name, event.data.as_bytes(), out)
    }

    /// ConverseStream never names the model.
    fn model(&self) -> Option<&str> {
        None
    }
}

#[cfg(test)]
mod tests;

/// The Bedrock runtime endpoint of `region`: `https://bedrock-runtime.{region}.amazonaws.com`.
///
/// ```
/// assert_eq!(
///     tower_llm_providers::bedrock::endpoint("eu-west-3"),
///     "https://bedrock-runtime.eu-west-3.amazonaws.com"
/// );
/// ```
pub fn endpoint(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}
