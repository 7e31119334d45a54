//! What a provider is: a [`Protocol`], and the one service over every protocol,
//! [`Provider`](crate::Provider).
//!
//! A protocol knows one API's wire: how a call is written (URL, authentication, body), how a
//! whole answer and an error body are read, how its streams are framed ([`Framing`]) and
//! decoded ([`StreamDecoder`]), which errors it sends inside a stream. Everything else, the
//! `tower::Service` impls, reading bodies within their limits, timeouts, the rate-limit
//! headers kept in [`ResponseMeta`], the key scrubbed from what the upstream says, the span
//! and metrics, the end signal the layers wait for, is [`Provider`](crate::Provider)'s and
//! the same for every protocol.
//!
//! Each protocol of this crate lives in its own module (`openai`, `anthropic`, `gemini`,
//! `bedrock`), with its builder settings ([`ProtocolSettings`](crate::ProtocolSettings)).
//! Adding one is a new module implementing these two traits, and one line in `lib.rs`; see
//! `docs/providers.md` for a worked example.
//!
//! How its provider counts tokens against a tokens-per-minute limit comes from its
//! [`Dialect`] ([`Dialect::token_counting`]); the rate-limit and request-id headers kept are
//! the same set for every protocol ([`ResponseMeta`]).

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};
use tower_llm_core::UpstreamError;

use crate::chat::{
    ChatChunk, ChatField, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse,
};
use crate::client::RequestBody;
pub use crate::client::post_json;
use crate::error::CallContext;
use crate::framing::{Event, Framing, SseFraming};
use crate::key::ApiKey;
use crate::meta::{Dialect, ResponseMeta};

/// One provider API's wire format. See the [module docs](self).
///
/// Methods on `&self` write requests (they see the protocol's settings: URLs, keys,
/// versions); the associated functions read answers, so that futures and streams need no
/// reference to the protocol.
pub trait Protocol: Send + Sync + fmt::Debug + 'static {
    /// The wire format: which `extra` fields of a request it takes, how its provider counts
    /// tokens.
    const DIALECT: Dialect;

    /// The OpenTelemetry GenAI `gen_ai.provider.name` of this protocol's calls (`openai`,
    /// `azure.ai.openai`, `anthropic`, `gcp.gemini`, `aws.bedrock`).
    fn gen_ai_provider(&self) -> &'static str;

    /// The endpoint calls go to (its host and port are the span's `server.address` and
    /// `server.port`).
    fn endpoint(&self) -> &Uri;

    /// The provider's secret, scrubbed (whole and in its masked forms) from every text the
    /// upstream sends back before it enters an error, a log or a metric.
    fn secret(&self) -> Option<&ApiKey>;

    /// The HTTP request of a chat call, authenticated. `stream` asks for a streamed answer.
    fn chat_request(
        &self,
        cx: &CallContext,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<http::Request<RequestBody>, UpstreamError>;

    /// The fields `request` sets that this protocol's API has no equivalent for, and that
    /// [`chat_request`](Self::chat_request) leaves out: the provider counts them, or refuses
    /// the request in strict mode (`strict_fields`). None by default; a protocol lists what
    /// it drops with [`ChatField::set_in`].
    fn unsupported_fields(&self, request: &ChatRequest) -> Vec<ChatField> {
        let _ = request;
        Vec::new()
    }

    /// The `max_tokens` the request goes out with (a protocol that must send one fills in
    /// its default): the span's `gen_ai.request.max_tokens`.
    fn max_tokens_sent(&self, request: &ChatRequest) -> Option<u32> {
        request.max_tokens
    }

    /// Reads a whole answer's body (status 2xx).
    fn decode_chat(
        cx: &CallContext,
        body: Bytes,
        meta: ResponseMeta,
    ) -> Result<ChatResponse, UpstreamError>;

    /// The error for a non-success answer with (the start of) this body; `note` replaces the
    /// body's message when the body could not be read whole. The default reads the dialect's
    /// JSON error body with core's reader.
    fn status_error(
        cx: &CallContext,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        note: Option<&str>,
    ) -> UpstreamError {
        cx.for_status(status, headers, body, note)
    }

    /// An error sent inside a stream, whatever keys its payload has; `None` lets the
    /// decoder see the event. The default catches an event its framing marks as an error
    /// (SSE's `event: error`), a payload with a non-null `error`, and one whose `type` is
    /// `"error"`.
    fn stream_error(cx: &CallContext, event: &Event) -> Option<UpstreamError> {
        cx.stream_error(event)
    }

    /// Whether a 2xx answer with these headers is this protocol's stream. The default:
    /// `text/event-stream`, or no content type at all (some compatible servers send none;
    /// the decoder then judges the body).
    fn is_stream(headers: &HeaderMap) -> bool {
        content_type_is(headers, "text/event-stream")
    }

    /// The framing of a new stream, refusing events over `max_event_bytes`. Default: SSE.
    fn framing(max_event_bytes: usize) -> Box<dyn Framing> {
        Box::new(SseFraming::new(max_event_bytes))
    }

    /// A decoder for a new stream's events.
    fn stream_decoder() -> Box<dyn StreamDecoder>;
}

/// A [`Protocol`] that also serves embeddings.
pub trait EmbeddingProtocol: Protocol {
    /// The HTTP request of an embeddings call, authenticated.
    fn embeddings_request(
        &self,
        cx: &CallContext,
        request: &EmbeddingRequest,
    ) -> Result<http::Request<RequestBody>, UpstreamError>;

    /// Reads an embeddings answer's body (status 2xx).
    fn decode_embeddings(
        cx: &CallContext,
        body: Bytes,
        meta: ResponseMeta,
    ) -> Result<EmbeddingResponse, UpstreamError>;
}

/// Whether a stream goes on after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// More events follow.
    Continue,
    /// That was the terminal event: the answer is complete.
    Done,
}

/// One stream's event decoder: events in, [`ChatChunk`]s out.
pub trait StreamDecoder: Send + Sync + fmt::Debug {
    /// Decodes one event, appending its chunks to `out`. An error ends the stream.
    fn event(
        &mut self,
        cx: &CallContext,
        event: &Event,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError>;

    /// The model that answered, once an event has named it.
    fn model(&self) -> Option<&str>;

    /// Whether the body may end here without a terminal event (Gemini ends a complete
    /// stream with the body, after a finish reason). Default: never.
    fn end_of_body(&mut self) -> bool {
        false
    }
}

/// Whether the answer's content type is `expected` (ignoring case and parameters), or absent:
/// the usual [`Protocol::is_stream`].
pub fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    match headers.get(http::header::CONTENT_TYPE) {
        None => true,
        Some(value) => value.to_str().is_ok_and(|v| {
            v.trim_start()
                .get(..expected.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(expected))
        }),
    }
}

/// A protocol's answer-reading functions, kept by value in its [`CallContext`] so that the
/// futures and streams, which are not generic over the protocol, can call them.
#[derive(Clone, Copy)]
pub(crate) struct Hooks {
    pub(crate) status_error:
        fn(&CallContext, StatusCode, &HeaderMap, Bytes, Option<&str>) -> UpstreamError,
    pub(crate) stream_error: fn(&CallContext, &Event) -> Option<UpstreamError>,
    pub(crate) is_stream: fn(&HeaderMap) -> bool,
    pub(crate) framing: fn(usize) -> Box<dyn Framing>,
    pub(crate) decoder: fn() -> Box<dyn StreamDecoder>,
}

impl Hooks {
    pub(crate) fn of<P: Protocol>() -> Hooks {
        Hooks {
            status_error: P::status_error,
            stream_error: P::stream_error,
            is_stream: P::is_stream,
            framing: P::framing,
            decoder: P::stream_decoder,
        }
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hooks")
    }
}

/// A stream's framing and decoder together: bytes in, chunks out. [`ChatStream`] drives it
/// over an HTTP body with timeouts; [`ChunkDecoder`] over bytes the caller hands it.
///
/// [`ChatStream`]: crate::ChatStream
/// [`ChunkDecoder`]: crate::ChunkDecoder
#[derive(Debug)]
pub(crate) struct Decoding {
    framing: Box<dyn Framing>,
    decoder: Box<dyn StreamDecoder>,
}

impl Decoding {
    pub(crate) fn new(cx: &CallContext, max_event_bytes: usize) -> Self {
        Decoding {
            framing: (cx.hooks.framing)(max_event_bytes),
            decoder: (cx.hooks.decoder)(),
        }
    }

    /// Takes the next complete event out of `input` and decodes it into `out`; `None` once
    /// `input` is used up without completing one.
    pub(crate) fn next(
        &mut self,
        cx: &CallContext,
        input: &mut &[u8],
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Option<Step>, UpstreamError> {
        let event = self
            .framing
            .next_event(input)
            .map_err(|e| cx.error(tower_llm_core::FailureKind::ServerError, e.0))?;
        match event {
            Some(event) => self.decode(cx, &event, out).map(Some),
            None => Ok(None),
        }
    }

    /// The body has ended: decodes the last event, if the framing held a complete one.
    pub(crate) fn finish(
        &mut self,
        cx: &CallContext,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Option<Step>, UpstreamError> {
        let last = self
            .framing
            .finish()
            .map_err(|e| cx.error(tower_llm_core::FailureKind::ServerError, e.0))?;
        match last {
            Some(event) => self.decode(cx, &event, out).map(Some),
            None => Ok(None),
        }
    }

    fn decode(
        &mut self,
        cx: &CallContext,
        event: &Event,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        if let Some(error) = (cx.hooks.stream_error)(cx, event) {
            return Err(error);
        }
        self.decoder.event(cx, event, out)
    }

    pub(crate) fn model(&self) -> Option<&str> {
        self.decoder.model()
    }

    pub(crate) fn end_of_body(&mut self) -> bool {
        self.decoder.end_of_body()
    }

    /// Bytes the framing holds for an unfinished event.
    pub(crate) fn buffered(&self) -> usize {
        self.framing.buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_match_without_case_or_parameters() {
        let mut headers = HeaderMap::new();
        assert!(content_type_is(&headers, "text/event-stream"));
        for (value, expected) in [
            ("text/event-stream; charset=utf-8", true),
            ("  Text/Event-Stream", true),
            ("application/json", false),
            ("text/event", false),
        ] {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(value),
            );
            assert_eq!(
                content_type_is(&headers, "text/event-stream"),
                expected,
                "{value}"
            );
        }
    }
}
