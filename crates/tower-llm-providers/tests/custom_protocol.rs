//! A provider added from outside the crate: Ollama's native `/api/chat`, which streams
//! newline-delimited JSON rather than server-sent events. It is the worked example of
//! `docs/providers.md`: a protocol, its settings, its stream decoder, nothing else, and the
//! whole [`Provider`] (whole answers, streams in every split, errors, the end signal the
//! layers wait for, the key scrubbed) comes with it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri};
use serde::Deserialize;
use tower_llm_core::{
    ClassifyResponse, FailureKind, ResponseUsage, StreamEnd, UpstreamError, Usage,
};
use tower_llm_providers::framing::{Event, Framing, NdjsonFraming};
use tower_llm_providers::meta::{Dialect, ResponseMeta};
use tower_llm_providers::protocol::{content_type_is, post_json};
use tower_llm_providers::{
    ApiKey, CallContext, ChatChunk, ChatRequest, ChatResponse, CommonSettings, ConfigError,
    FinishReason, Message, Protocol, ProtocolSettings, Provider, ProviderBuilder, RequestBody,
    Step, StreamDecoder,
};

use common::{Piece, Reply, call, deliveries, drain, mock};

// ---- the protocol ----------------------------------------------------------------------

/// Ollama's native chat API.
#[derive(Debug)]
struct OllamaProtocol {
    chat_uri: Uri,
    headers: HeaderMap,
    key: Option<ApiKey>,
}

/// Its builder's own settings (none: the common ones are enough).
#[derive(Clone, Debug, Default)]
struct OllamaSettings;

impl ProtocolSettings for OllamaSettings {
    type Protocol = OllamaProtocol;

    fn protocol(self, common: &CommonSettings) -> Result<OllamaProtocol, ConfigError> {
        let chat_uri = format!("{}/api/chat", common.base_url())
            .parse()
            .map_err(|_| ConfigError::new("provider", "base_url", "is not a URL"))?;
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        // Ollama behind an authenticating proxy: an optional bearer key.
        if let Some(key) = common.api_key() {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| ConfigError::new("provider", "api_key", "not a header value"))?;
            value.set_sensitive(true);
            headers.insert("authorization", value);
        }
        Ok(OllamaProtocol {
            chat_uri,
            headers,
            key: common.api_key().cloned(),
        })
    }
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct WireAnswer {
    #[serde(default)]
    model: String,
    message: Option<WireMessage>,
    #[serde(default)]
    done: bool,
    done_reason: Option<String>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
}

impl WireAnswer {
    fn finish_reason(&self) -> Option<FinishReason> {
        let reason = match self.done_reason.as_deref() {
            Some("length") => FinishReason::Length,
            _ => FinishReason::Stop,
        };
        self.done.then_some(reason)
    }

    fn usage(&self) -> Option<Usage> {
        Some(Usage::new(self.prompt_eval_count?, self.eval_count?))
    }
}

impl Protocol for OllamaProtocol {
    const DIALECT: Dialect = Dialect::Other("ollama");

    fn gen_ai_provider(&self) -> &'static str {
        "ollama"
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
        let messages: Vec<_> = request
            .messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let body = serde_json::json!({
            "model": request.model,
            "messages": messages,
            "stream": stream,
        });
        let mut http = post_json(
            &self.chat_uri,
            &self.headers,
            body.to_string().into(),
            false,
        );
        if stream {
            http.headers_mut()
                .insert("accept", HeaderValue::from_static("application/x-ndjson"));
        }
        Ok(http)
    }

    fn decode_chat(
        cx: &CallContext,
        body: Bytes,
        meta: ResponseMeta,
    ) -> Result<ChatResponse, UpstreamError> {
        let wire: WireAnswer = serde_json::from_slice(&body)
            .map_err(|e| cx.malformed("answer is not Ollama's JSON", &body, e))?;
        let mut answer = ChatResponse::new(wire.message.as_ref().map_or("", |m| &m.content))
            .with_model(wire.model.as_str());
        answer.finish_reason = wire.finish_reason();
        answer.usage = wire.usage();
        answer.meta = meta;
        Ok(answer)
    }

    fn is_stream(headers: &HeaderMap) -> bool {
        content_type_is(headers, "application/x-ndjson")
    }

    fn framing(max_event_bytes: usize) -> Box<dyn Framing> {
        Box::new(NdjsonFraming::new(max_event_bytes))
    }

    fn stream_decoder() -> Box<dyn StreamDecoder> {
        Box::<OllamaEvents>::default()
    }
}

/// Each line is a whole answer so far; the one with `done: true` ends the stream.
#[derive(Debug, Default)]
struct OllamaEvents {
    model: Option<String>,
}

impl StreamDecoder for OllamaEvents {
    fn event(
        &mut self,
        cx: &CallContext,
        event: &Event,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        let wire: WireAnswer = serde_json::from_str(&event.data).map_err(|e| {
            cx.malformed(
                "stream line is not Ollama's JSON",
                &Bytes::copy_from_slice(event.data.as_bytes()),
                e,
            )
        })?;
        if self.model.is_none() && !wire.model.is_empty() {
            self.model = Some(wire.model.clone());
        }
        if let Some(text) = wire.message.as_ref().map(|m| &m.content)
            && !text.is_empty()
        {
            out.push_back(ChatChunk::Content(text.clone()));
        }
        let Some(reason) = wire.finish_reason() else {
            return Ok(Step::Continue);
        };
        out.push_back(ChatChunk::Finish(reason));
        if let Some(usage) = wire.usage() {
            out.push_back(ChatChunk::Usage(usage));
        }
        Ok(Step::Done)
    }

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

type Ollama<S> = Provider<OllamaProtocol, S>;

fn ollama<S>(client: S, key: Option<&str>) -> Ollama<S> {
    let mut builder = ProviderBuilder::new(
        OllamaSettings,
        CommonSettings::new("http://localhost:11434", "ollama"),
    );
    if let Some(key) = key {
        builder = builder.api_key(key);
    }
    builder.build_with(client).unwrap()
}

// ---- the proof -------------------------------------------------------------------------

const STREAM: &str = concat!(
    r#"{"model":"llama3.2","message":{"role":"assistant","content":"The sky"},"done":false}"#,
    "\n",
    r#"{"model":"llama3.2","message":{"role":"assistant","content":" is blue."},"done":false}"#,
    "\r\n",
    r#"{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":7}"#,
    "\n"
);

fn ndjson(pieces: Vec<Piece>) -> Reply {
    let mut reply = Reply::sse(pieces);
    reply.headers = vec![("content-type", "application/x-ndjson".into())];
    reply
}

#[tokio::test]
async fn a_whole_answer_through_an_outside_protocol() {
    let body = r#"{"model":"llama3.2","message":{"role":"assistant","content":"Blue."},
        "done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":3}"#;
    let (client, sent) = mock(Reply::json(200, body).header("x-request-id", "req-7"));
    let mut service = ollama(client, None);
    let request = ChatRequest::new("llama3.2", vec![Message::user("Sky colour?")]);
    let answer = call(&mut service, request).await.unwrap();
    assert_eq!(answer.content, "Blue.");
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert_eq!(answer.usage.map(|u| u.total()), Some(29));
    assert_eq!(answer.meta.dialect, Some(Dialect::Other("ollama")));
    assert_eq!(answer.meta.request_id.as_deref(), Some("req-7"));
    let sent = sent.lock().unwrap();
    assert_eq!(sent[0].uri, "http://localhost:11434/api/chat");
    assert_eq!(sent[0].body["stream"], false);
    assert_eq!(sent[0].body["messages"][0]["content"], "Sky colour?");
}

#[tokio::test]
async fn its_ndjson_stream_decodes_the_same_in_every_split() {
    for (label, pieces) in deliveries(STREAM.as_bytes()) {
        let (client, sent) = mock(ndjson(pieces));
        let mut service = ollama(client, None);
        let request = ChatRequest::new("llama3.2", vec![Message::user("Sky?")]).streaming();
        let mut stream = call(&mut service, request).await.unwrap();
        let ended = Arc::new(Mutex::new(None));
        let record = Arc::clone(&ended);
        stream
            .end_signal()
            .unwrap()
            .on_end(move |end| *record.lock().unwrap() = Some(end.clone()));
        let items = drain(&mut stream).await;
        let chunks: Vec<ChatChunk> = items.into_iter().map(|i| i.unwrap()).collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| match c {
                ChatChunk::Content(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "The sky is blue.", "{label}");
        assert!(
            chunks.contains(&ChatChunk::Finish(FinishReason::Stop)),
            "{label}"
        );
        assert_eq!(stream.model(), Some("llama3.2"), "{label}");
        assert_eq!(
            ResponseUsage::usage(&stream).map(|u| u.total()),
            Some(33),
            "{label}"
        );
        assert!(
            matches!(
                *ended.lock().unwrap(),
                Some(StreamEnd::Completed { usage: Some(_) })
            ),
            "{label}"
        );
        assert_eq!(
            sent.lock().unwrap()[0].headers["accept"],
            "application/x-ndjson"
        );
    }
}

#[tokio::test]
async fn a_cut_stream_an_error_line_and_an_sse_answer_are_errors() {
    // Cut before the `done` line: an error, never a short answer.
    let cut = STREAM.lines().next().unwrap().to_owned() + "\n";
    let (client, _) = mock(ndjson(vec![Piece::Data(Bytes::from(cut))]));
    let mut service = ollama(client, None);
    let request = ChatRequest::new("llama3.2", vec![Message::user("Sky?")]).streaming();
    let items = drain(call(&mut service, request).await.unwrap()).await;
    let error = items.into_iter().find_map(Result::err).unwrap();
    assert_eq!(error.kind(), FailureKind::Transport);

    // Ollama reports a failure mid-stream as a line with an `error` key.
    let line = "{\"error\":\"model runner stopped (key sk-secret-123456 rejected)\"}\n";
    let (client, _) = mock(ndjson(vec![Piece::Data(Bytes::from(line))]));
    let mut service = ollama(client, Some("sk-secret-123456"));
    let request = ChatRequest::new("llama3.2", vec![Message::user("Sky?")]).streaming();
    let items = drain(call(&mut service, request).await.unwrap()).await;
    let error = items.into_iter().find_map(Result::err).unwrap();
    assert!(
        error.to_string().contains("model runner stopped"),
        "{error}"
    );
    assert!(
        !format!("{error:?}").contains("sk-secret-123456"),
        "{error:?}"
    );

    // A server answering with another content type is not taken for the stream.
    let (client, _) = mock(Reply::sse(vec![Piece::Data(Bytes::from("data: x\n\n"))]));
    let mut service = ollama(client, None);
    let request = ChatRequest::new("llama3.2", vec![Message::user("Sky?")]).streaming();
    assert!(call(&mut service, request).await.is_err());
}

#[tokio::test]
async fn an_error_status_is_classified_and_scrubbed() {
    let body = r#"{"error":"model \"llama9\" not found, try pulling it first"}"#;
    let (client, _) = mock(Reply::json(404, body));
    let mut service = ollama(client, Some("sk-secret-123456"));
    let request = ChatRequest::new("llama9", vec![Message::user("Hi")]);
    let error = call(&mut service, request).await.unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(404));
    assert!(error.to_string().contains("not found"), "{error}");
}
