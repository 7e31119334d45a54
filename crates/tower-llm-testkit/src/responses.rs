//! The bodies the mock answers with, shaped like each provider's.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use tower_llm_core::estimate_text_tokens;

use crate::embedding::embedding_for;
use crate::plan::{BareError, Route, StreamError};

/// Whose wire format a route speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

impl Route {
    pub(crate) const fn provider(self) -> Provider {
        match self {
            Route::OpenAiChat | Route::OpenAiEmbeddings => Provider::OpenAi,
            Route::AnthropicMessages => Provider::Anthropic,
            Route::GeminiGenerate | Route::GeminiStream => Provider::Gemini,
            Route::BedrockConverse | Route::BedrockConverseStream => Provider::Bedrock,
        }
    }
}

/// What a request asked for, read leniently from its JSON body.
#[derive(Clone, Debug)]
pub(crate) struct Prompt {
    pub(crate) model: String,
    /// The text of the last user message.
    pub(crate) last_user: String,
    pub(crate) prompt_tokens: u64,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// The output budget the request names, if any.
    pub(crate) max_tokens: Option<u64>,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

impl Prompt {
    /// Reads a chat request body of `route`'s provider. `model` is the model named in the
    /// URL (Gemini, Bedrock); other providers name it in the body.
    pub(crate) fn read(route: Route, body: &Value, url_model: Option<&str>) -> Prompt {
        let mut texts = Vec::new();
        let mut last_user = String::new();
        match route.provider() {
            // Bedrock's `system` and `content` are lists of `{"text"}` blocks.
            Provider::OpenAi | Provider::Anthropic | Provider::Bedrock => {
                if let Some(system) = body.get("system") {
                    texts.push(text_of(system));
                }
                for message in body
                    .get("messages")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let text = message.get("content").map(text_of).unwrap_or_default();
                    if message.get("role").and_then(Value::as_str) == Some("user") {
                        last_user.clone_from(&text);
                    }
                    texts.push(text);
                }
            }
            Provider::Gemini => {
                if let Some(system) = body.get("systemInstruction") {
                    texts.push(system.get("parts").map(text_of).unwrap_or_default());
                }
                for content in body
                    .get("contents")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let text = content.get("parts").map(text_of).unwrap_or_default();
                    let role = content.get("role").and_then(Value::as_str);
                    if role.is_none() || role == Some("user") {
                        last_user.clone_from(&text);
                    }
                    texts.push(text);
                }
            }
        }
        let model = url_model
            .map(str::to_owned)
            .or_else(|| body.get("model").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "mock-model".to_owned());
        Prompt {
            model,
            last_user,
            prompt_tokens: texts.iter().map(|t| estimate_text_tokens(t)).sum(),
            stream: matches!(route, Route::GeminiStream | Route::BedrockConverseStream)
                || body.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                == Some(true),
            max_tokens: tower_llm_core::requested_output_tokens(body)
                .or_else(|| body.get("inferenceConfig")?.get("maxTokens")?.as_u64()),
        }
    }
}

/// A normal answer's text and identity.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub(crate) id: u64,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) text: String,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    /// Whether the text was cut to the request's output budget.
    pub(crate) truncated: bool,
}

impl Reply {
    /// The reply `text` to `prompt`, cut to whole words within its output budget.
    pub(crate) fn new(id: u64, prompt: &Prompt, text: String) -> Reply {
        let mut text = text;
        let mut truncated = false;
        if let Some(budget) = prompt.max_tokens
            && estimate_text_tokens(&text) > budget
        {
            let mut kept = String::new();
            for word in text.split_inclusive(' ') {
                let longer = format!("{kept}{word}");
                if estimate_text_tokens(&longer) > budget {
                    break;
                }
                kept = longer;
            }
            text = kept;
            truncated = true;
        }
        Reply {
            truncated,
            id,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: prompt.model.clone(),
            completion_tokens: estimate_text_tokens(&text),
            text,
            prompt_tokens: prompt.prompt_tokens,
        }
    }

    fn openai_finish(&self) -> &'static str {
        if self.truncated { "length" } else { "stop" }
    }

    /// Anthropic's and Bedrock's stop reason.
    fn anthropic_stop(&self) -> &'static str {
        if self.truncated {
            "max_tokens"
        } else {
            "end_turn"
        }
    }

    /// The reply cut into word chunks (spaces kept), at least one.
    fn words(&self) -> Vec<&str> {
        let words: Vec<&str> = self.text.split_inclusive(' ').collect();
        if words.is_empty() { vec![""] } else { words }
    }
}

pub(crate) fn openai_chat(reply: &Reply) -> Value {
    json!({
        "id": format!("chatcmpl-mock{}", reply.id),
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": "fp_mock",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.text, "refusal": null},
            "logprobs": null,
            "finish_reason": reply.openai_finish(),
        }],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    })
}

pub(crate) fn anthropic_message(reply: &Reply) -> Value {
    json!({
        "id": format!("msg_mock{}", reply.id),
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": reply.anthropic_stop(),
        "stop_sequence": null,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens},
    })
}

fn bedrock_usage(reply: &Reply) -> Value {
    json!({
        "inputTokens": reply.prompt_tokens,
        "outputTokens": reply.completion_tokens,
        "totalTokens": reply.prompt_tokens + reply.completion_tokens,
    })
}

pub(crate) fn bedrock_converse(reply: &Reply) -> Value {
    json!({
        "output": {"message": {"role": "assistant", "content": [{"text": reply.text}]}},
        "stopReason": reply.anthropic_stop(),
        "usage": bedrock_usage(reply),
        "metrics": {"latencyMs": 1},
    })
}

fn gemini_usage(reply: &Reply, done: bool) -> Value {
    if done {
        json!({
            "promptTokenCount": reply.prompt_tokens,
            "candidatesTokenCount": reply.completion_tokens,
            "totalTokenCount": reply.prompt_tokens + reply.completion_tokens,
        })
    } else {
        json!({"promptTokenCount": reply.prompt_tokens, "totalTokenCount": reply.prompt_tokens})
    }
}

fn gemini_chunk(reply: &Reply, text: &str, done: bool) -> Value {
    let mut candidate = json!({
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    });
    if done {
        candidate["finishReason"] = json!(if reply.truncated {
            "MAX_TOKENS"
        } else {
            "STOP"
        });
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": gemini_usage(reply, done),
        "modelVersion": reply.model,
        "responseId": format!("mock{}", reply.id),
    })
}

pub(crate) fn gemini_generate(reply: &Reply) -> Value {
    gemini_chunk(reply, &reply.text, true)
}

/// The OpenAI embeddings answer for a request body, or `None` when it names no input.
pub(crate) fn openai_embeddings(body: &Value, id: u64) -> Result<Value, &'static str> {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => return Err("'input' must be a string or a non-empty array"),
    };
    let dims = match body.get("dimensions") {
        None | Some(Value::Null) => crate::embedding::DEFAULT_DIMENSIONS,
        Some(v) => match v.as_u64() {
            Some(d @ 1..=crate::embedding::MAX_DIMENSIONS) => d as usize,
            _ => return Err("'dimensions' must be an integer from 1 to 4096"),
        },
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-embedding");
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err("'encoding_format' must be \"float\" or \"base64\""),
    };
    let tokens: u64 = inputs.iter().map(|t| estimate_text_tokens(t)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_for(input, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "id": format!("emb-mock{id}"),
    }))
}

/// Standard base64 with padding, as OpenAI encodes `encoding_format: "base64"` vectors.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How the events of a stream are written on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `data: ...\n\n`, with `event: ...\n` before it when the event is named.
    Sse,
    /// `data: ...\r\n\r\n` (Gemini's SSE).
    SseCrLf,
    /// A JSON array sent element by element (Gemini without `alt=sse`).
    JsonArray,
    /// AWS event-stream messages (Bedrock's ConverseStream): the event's name is its
    /// `:event-type` (or `:exception-type`), its data the payload.
    EventStream,
}

/// One event of a stream: an optional SSE event name (the event type of an event-stream
/// message) and its data.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) name: Option<&'static str>,
    pub(crate) data: String,
    /// An event-stream exception rather than an event.
    pub(crate) exception: bool,
}

impl Event {
    fn data(value: &Value) -> Event {
        Event {
            name: None,
            data: value.to_string(),
            exception: false,
        }
    }

    fn named(name: &'static str, value: &Value) -> Event {
        Event {
            name: Some(name),
            data: value.to_string(),
            exception: false,
        }
    }

    pub(crate) fn encode(&self, framing: Framing, index: usize) -> Bytes {
        match framing {
            Framing::Sse => match self.name {
                Some(name) => format!("event: {name}\ndata: {}\n\n", self.data).into(),
                None => format!("data: {}\n\n", self.data).into(),
            },
            Framing::SseCrLf => match self.name {
                Some(name) => format!("event: {name}\r\ndata: {}\r\n\r\n", self.data).into(),
                None => format!("data: {}\r\n\r\n", self.data).into(),
            },
            Framing::JsonArray if index == 0 => format!("[{}", self.data).into(),
            Framing::JsonArray => format!(",\r\n{}", self.data).into(),
            Framing::EventStream => {
                let name = self.name.unwrap_or_default();
                if self.exception {
                    crate::event_stream::exception(name, &self.data)
                } else {
                    crate::event_stream::event(name, &self.data)
                }
            }
        }
    }

    /// The same event with its JSON cut in half.
    pub(crate) fn garbled(&self) -> Event {
        Event {
            name: self.name,
            data: truncate_json(&self.data),
            exception: self.exception,
        }
    }
}

/// The events of a streamed answer: opening events, one content chunk per word, closing
/// events, and the bytes that end the stream in its framing.
#[derive(Clone, Debug)]
pub(crate) struct StreamAnswer {
    pub(crate) framing: Framing,
    pub(crate) opening: Vec<Event>,
    pub(crate) chunks: Vec<Event>,
    pub(crate) closing: Vec<Event>,
    /// Written after the last event of a complete stream (`]` of a JSON array).
    pub(crate) trailer: Option<&'static str>,
}

pub(crate) fn openai_chat_stream(reply: &Reply, include_usage: bool) -> StreamAnswer {
    let chunk = |delta: Value, finish: Value| {
        let mut chunk = json!({
            "id": format!("chatcmpl-mock{}", reply.id),
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        Event::data(&chunk)
    };
    let opening = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    let chunks = reply
        .words()
        .into_iter()
        .map(|word| chunk(json!({"content": word}), Value::Null))
        .collect();
    let mut closing = vec![chunk(json!({}), json!(reply.openai_finish()))];
    if include_usage {
        closing.push(Event::data(&json!({
            "id": format!("chatcmpl-mock{}", reply.id),
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            },
        })));
    }
    closing.push(Event {
        name: None,
        data: "[DONE]".to_owned(),
        exception: false,
    });
    StreamAnswer {
        framing: Framing::Sse,
        opening,
        chunks,
        closing,
        trailer: None,
    }
}

/// Anthropic's events; `with_usage: false` leaves `usage` out of `message_start` and
/// `message_delta`.
pub(crate) fn anthropic_stream(reply: &Reply, with_usage: bool) -> StreamAnswer {
    let mut message = json!({
        "id": format!("msg_mock{}", reply.id),
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [],
        "stop_reason": null,
        "stop_sequence": null,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": 1},
    });
    let mut message_delta = json!({"type": "message_delta",
        "delta": {"stop_reason": reply.anthropic_stop(), "stop_sequence": null},
        "usage": {"output_tokens": reply.completion_tokens}});
    if !with_usage {
        for event in [&mut message, &mut message_delta] {
            if let Some(fields) = event.as_object_mut() {
                fields.remove("usage");
            }
        }
    }
    let opening = vec![
        Event::named(
            "message_start",
            &json!({"type": "message_start", "message": message}),
        ),
        Event::named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        ),
        Event::named("ping", &json!({"type": "ping"})),
    ];
    let chunks = reply
        .words()
        .into_iter()
        .map(|word| {
            Event::named(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": word}}),
            )
        })
        .collect();
    let closing = vec![
        Event::named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        Event::named("message_delta", &message_delta),
        Event::named("message_stop", &json!({"type": "message_stop"})),
    ];
    StreamAnswer {
        framing: Framing::Sse,
        opening,
        chunks,
        closing,
        trailer: None,
    }
}

/// Gemini's chunks; `with_usage: false` leaves `usageMetadata` out of every one.
pub(crate) fn gemini_stream(reply: &Reply, sse: bool, with_usage: bool) -> StreamAnswer {
    let words = reply.words();
    let last = words.len() - 1;
    let chunks = words
        .iter()
        .enumerate()
        .map(|(i, word)| {
            let mut chunk = gemini_chunk(reply, word, i == last);
            if !with_usage && let Some(chunk) = chunk.as_object_mut() {
                chunk.remove("usageMetadata");
            }
            Event::data(&chunk)
        })
        .collect();
    StreamAnswer {
        framing: if sse {
            Framing::SseCrLf
        } else {
            Framing::JsonArray
        },
        opening: Vec::new(),
        chunks,
        closing: Vec::new(),
        trailer: (!sse).then_some("]"),
    }
}

/// The in-stream error event `provider` sends for `error`: its error JSON, as a `data:` event
/// (OpenAI, Gemini) or an `event: error` (Anthropic).
pub(crate) fn stream_error(provider: Provider, error: StreamError) -> Event {
    let case = match error {
        // OpenAI names no overload inside a stream: it sends its server error.
        StreamError::Overloaded if provider == Provider::OpenAi => {
            return Event::data(&json!({"error": {
                "message": "The server had an error while processing your request. Sorry about that!",
                "type": "server_error",
                "param": null,
                "code": null,
            }}));
        }
        StreamError::Overloaded => ErrorCase::Overloaded,
        StreamError::RateLimited => ErrorCase::RateLimited { retry_after: None },
        StreamError::ServerError => ErrorCase::Status(StatusCode::INTERNAL_SERVER_ERROR),
        StreamError::InvalidRequest => ErrorCase::Status(StatusCode::BAD_REQUEST),
    };
    if provider == Provider::Bedrock {
        // ConverseStream's exceptions, by the name AWS gives each in `:exception-type`.
        let (name, message) = match error {
            StreamError::Overloaded => (
                "serviceUnavailableException",
                "Bedrock is unable to process your request.",
            ),
            StreamError::RateLimited => (
                "throttlingException",
                "Too many tokens, please wait before trying again.",
            ),
            StreamError::ServerError => (
                "internalServerException",
                "The server encountered an internal error.",
            ),
            StreamError::InvalidRequest => (
                "validationException",
                "The model returned the following errors: invalid request.",
            ),
        };
        return Event {
            name: Some(name),
            data: json!({ "message": message }).to_string(),
            exception: true,
        };
    }
    let (_, body) = error_body(provider, case);
    match provider {
        Provider::Anthropic => Event::named("error", &body),
        _ => Event::data(&body),
    }
}

/// The event a [`Fault::StreamBareError`](crate::Fault::StreamBareError) sends.
pub(crate) fn bare_error(shape: BareError) -> Event {
    const MESSAGE: &str = "upstream failed mid-stream";
    match shape {
        BareError::Message => Event::named("error", &json!({ "message": MESSAGE })),
        BareError::TypedMessage => Event::data(&json!({ "type": "error", "message": MESSAGE })),
        BareError::ObjectError => Event::data(&json!({
            "object": "error",
            "message": MESSAGE,
            "type": "BadRequestError",
            "param": null,
            "code": 400,
        })),
        BareError::Text => Event {
            name: Some("error"),
            data: MESSAGE.to_owned(),
            exception: false,
        },
    }
}

/// ConverseStream: `messageStart`, a `contentBlockDelta` per word, `contentBlockStop`,
/// `messageStop`, `metadata` with the usage; each payload padded with `p` as Bedrock pads
/// them.
pub(crate) fn bedrock_stream(reply: &Reply, with_usage: bool) -> StreamAnswer {
    const PAD: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0";
    let padded = |mut payload: Value, pad: usize| {
        payload["p"] = json!(&PAD[..pad % PAD.len()]);
        payload
    };
    let chunks = reply
        .words()
        .into_iter()
        .enumerate()
        .map(|(i, word)| {
            Event::named(
                "contentBlockDelta",
                &padded(
                    json!({"contentBlockIndex": 0, "delta": {"text": word}}),
                    7 + 3 * i,
                ),
            )
        })
        .collect();
    StreamAnswer {
        framing: Framing::EventStream,
        opening: vec![Event::named(
            "messageStart",
            &padded(json!({"role": "assistant"}), 40),
        )],
        chunks,
        closing: vec![
            Event::named(
                "contentBlockStop",
                &padded(json!({"contentBlockIndex": 0}), 30),
            ),
            Event::named(
                "messageStop",
                &padded(json!({"stopReason": reply.anthropic_stop()}), 20),
            ),
            Event::named(
                "metadata",
                &padded(
                    if with_usage {
                        json!({"usage": bedrock_usage(reply), "metrics": {"latencyMs": 1}})
                    } else {
                        json!({"metrics": {"latencyMs": 1}})
                    },
                    10,
                ),
            ),
        ],
        trailer: None,
    }
}

/// The first half of a JSON text, so that it no longer parses.
pub(crate) fn truncate_json(text: &str) -> String {
    let mut cut = text.len() / 2;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

/// What an error answer is about, before it is shaped for a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCase {
    /// An error status with the provider's usual body for it.
    Status(StatusCode),
    /// Too many requests or tokens; the retry hint, if any, is sent separately.
    RateLimited {
        retry_after: Option<Duration>,
    },
    QuotaExhausted,
    Overloaded,
    /// The prompt of `tokens` tokens is over the model's `limit`.
    ContextLengthExceeded {
        tokens: u64,
        limit: u64,
    },
}

/// The status and JSON body `provider` answers for `case`.
pub(crate) fn error_body(provider: Provider, case: ErrorCase) -> (StatusCode, Value) {
    match provider {
        Provider::OpenAi => openai_error(case),
        Provider::Anthropic => anthropic_error(case),
        Provider::Gemini => gemini_error(case),
        Provider::Bedrock => {
            let (status, _, message) = bedrock_error(case);
            (status, json!({ "message": message }))
        }
    }
}

/// The error type Bedrock names in `x-amzn-errortype` for `case`, with the suffix AWS adds.
pub(crate) fn bedrock_error_type(case: ErrorCase) -> String {
    let (_, kind, _) = bedrock_error(case);
    format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/")
}

/// Bedrock's status, error type and message for `case`. A bad or unknown key is what AWS
/// answers a signature it cannot match: 403 `UnrecognizedClientException`.
fn bedrock_error(case: ErrorCase) -> (StatusCode, &'static str, Cow<'static, str>) {
    let (status, kind, message): (u16, &str, Cow<'static, str>) = match case {
        ErrorCase::RateLimited { .. } => (
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.".into(),
        ),
        ErrorCase::QuotaExhausted => (
            400,
            "ServiceQuotaExceededException",
            "Too many tokens per day, please wait before trying again.".into(),
        ),
        ErrorCase::Overloaded => (
            503,
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.".into(),
        ),
        ErrorCase::ContextLengthExceeded { tokens, limit } => (
            400,
            "ValidationException",
            format!(
                "Input is too long for requested model. ({tokens} tokens, the model takes \
                 {limit})"
            )
            .into(),
        ),
        ErrorCase::Status(status) => {
            let (kind, message) = match status.as_u16() {
                401 => {
                    return (
                        StatusCode::FORBIDDEN,
                        "UnrecognizedClientException",
                        "The security token included in the request is invalid.".into(),
                    );
                }
                403 => (
                    "AccessDeniedException",
                    "You don't have access to the model with the specified model ID.",
                ),
                404 => (
                    "ResourceNotFoundException",
                    "Could not resolve the foundation model from the provided model identifier.",
                ),
                408 => (
                    "ModelTimeoutException",
                    "Model has timed out in processing the request.",
                ),
                424 => (
                    "ModelErrorException",
                    "The system encountered an unexpected error during processing.",
                ),
                429 => (
                    "ThrottlingException",
                    "Too many requests, please wait before trying again.",
                ),
                503 => (
                    "ServiceUnavailableException",
                    "Bedrock is unable to process your request.",
                ),
                400..=499 => ("ValidationException", "Malformed input request."),
                _ => (
                    "InternalServerException",
                    "The server encountered an internal error.",
                ),
            };
            return (status, kind, message.into());
        }
    };
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        kind,
        message,
    )
}

fn openai_error(case: ErrorCase) -> (StatusCode, Value) {
    let (status, message, kind, code): (u16, &str, &str, Value) = match case {
        ErrorCase::RateLimited { .. } => (
            429,
            "Rate limit reached for requests. Please try again later.",
            "requests",
            json!("rate_limit_exceeded"),
        ),
        ErrorCase::QuotaExhausted => (
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            json!("insufficient_quota"),
        ),
        ErrorCase::Overloaded => (
            503,
            "The server is overloaded or not ready yet.",
            "server_error",
            Value::Null,
        ),
        ErrorCase::ContextLengthExceeded { tokens, limit } => {
            let message = format!(
                "This model's maximum context length is {limit} tokens. However, your \
                 messages resulted in {tokens} tokens. Please reduce the length of the messages."
            );
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": message, "type": "invalid_request_error",
                    "param": "messages", "code": "context_length_exceeded"}}),
            );
        }
        ErrorCase::Status(status) => {
            let (message, kind, code) = match status.as_u16() {
                401 => (
                    "Incorrect API key provided.",
                    "invalid_request_error",
                    json!("invalid_api_key"),
                ),
                403 => (
                    "You are not allowed to access this resource.",
                    "invalid_request_error",
                    json!("unsupported_country_region_territory"),
                ),
                404 => (
                    "The model does not exist or you do not have access to it.",
                    "invalid_request_error",
                    json!("model_not_found"),
                ),
                429 => (
                    "Rate limit reached for requests.",
                    "requests",
                    json!("rate_limit_exceeded"),
                ),
                503 => (
                    "The server is overloaded or not ready yet.",
                    "server_error",
                    Value::Null,
                ),
                400..=499 => ("Invalid request.", "invalid_request_error", Value::Null),
                _ => (
                    "The server had an error while processing your request.",
                    "server_error",
                    Value::Null,
                ),
            };
            return (
                status,
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
            );
        }
    };
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

fn anthropic_error(case: ErrorCase) -> (StatusCode, Value) {
    let (status, kind, message) = match case {
        ErrorCase::RateLimited { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit. Please try again later.",
        ),
        ErrorCase::QuotaExhausted => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
        ),
        ErrorCase::Overloaded => (overloaded_529(), "overloaded_error", "Overloaded"),
        ErrorCase::ContextLengthExceeded { tokens, limit } => {
            let message = format!("prompt is too long: {tokens} tokens > {limit} maximum");
            return (
                StatusCode::BAD_REQUEST,
                json!({"type": "error",
                    "error": {"type": "invalid_request_error", "message": message}}),
            );
        }
        ErrorCase::Status(status) => {
            let (kind, message) = match status.as_u16() {
                401 => ("authentication_error", "invalid x-api-key"),
                403 => (
                    "permission_error",
                    "Your API key does not have permission to use the specified resource.",
                ),
                404 => (
                    "not_found_error",
                    "The requested resource could not be found.",
                ),
                413 => (
                    "request_too_large",
                    "Request exceeds the maximum allowed size.",
                ),
                429 => (
                    "rate_limit_error",
                    "Number of requests has exceeded your rate limit.",
                ),
                503 | 529 => ("overloaded_error", "Overloaded"),
                400..=499 => ("invalid_request_error", "Invalid request."),
                _ => ("api_error", "Internal server error"),
            };
            (status, kind, message)
        }
    };
    (
        status,
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

fn overloaded_529() -> StatusCode {
    StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

fn gemini_error(case: ErrorCase) -> (StatusCode, Value) {
    let error = |code: u16, message: &str, status: &str, details: Vec<Value>| {
        let mut error = json!({"code": code, "message": message, "status": status});
        if !details.is_empty() {
            error["details"] = Value::Array(details);
        }
        (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({ "error": error }),
        )
    };
    match case {
        ErrorCase::RateLimited { retry_after } => {
            let mut details = vec![json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                }],
            })];
            if let Some(after) = retry_after {
                details.push(json!({
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format!("{}s", crate::duration_format::whole_seconds(after)),
                }));
            }
            error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "RESOURCE_EXHAUSTED",
                details,
            )
        }
        ErrorCase::QuotaExhausted => error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "RESOURCE_EXHAUSTED",
            vec![json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                }],
            })],
        ),
        ErrorCase::Overloaded => error(
            503,
            "The model is overloaded. Please try again later.",
            "UNAVAILABLE",
            Vec::new(),
        ),
        ErrorCase::ContextLengthExceeded { tokens, limit } => error(
            400,
            &format!(
                "The input token count ({tokens}) exceeds the maximum number of tokens \
                 allowed ({limit})."
            ),
            "INVALID_ARGUMENT",
            Vec::new(),
        ),
        ErrorCase::Status(status) => {
            let code = status.as_u16();
            let (message, name) = match code {
                400 => ("Request contains an invalid argument.", "INVALID_ARGUMENT"),
                401 => (
                    "API key not valid. Please pass a valid API key.",
                    "UNAUTHENTICATED",
                ),
                403 => ("The caller does not have permission.", "PERMISSION_DENIED"),
                404 => ("Requested entity was not found.", "NOT_FOUND"),
                429 => ("Resource has been exhausted.", "RESOURCE_EXHAUSTED"),
                499 => ("The operation was cancelled.", "CANCELLED"),
                503 | 529 => (
                    "The model is overloaded. Please try again later.",
                    "UNAVAILABLE",
                ),
                504 => ("Deadline exceeded.", "DEADLINE_EXCEEDED"),
                402..=499 => (
                    "Request contains an invalid argument.",
                    "FAILED_PRECONDITION",
                ),
                _ => ("An internal error has occurred.", "INTERNAL"),
            };
            error(code, message, name, Vec::new())
        }
    }
}

/// The nginx-style page a proxy in front of an API answers when the API is down.
pub(crate) const HTML_ERROR_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn replies_are_cut_to_the_output_budget() {
        let prompt = Prompt::read(
            Route::OpenAiChat,
            &json!({"max_tokens": 3, "messages": [{"role": "user", "content": "x"}]}),
            None,
        );
        let reply = Reply::new(1, &prompt, "one two three four five six".to_owned());
        assert!(reply.truncated);
        assert!(reply.completion_tokens <= 3);
        assert!("one two three four five six".starts_with(&reply.text));
        assert_eq!(openai_chat(&reply)["choices"][0]["finish_reason"], "length");
        assert_eq!(anthropic_message(&reply)["stop_reason"], "max_tokens");
        assert_eq!(
            gemini_generate(&reply)["candidates"][0]["finishReason"],
            "MAX_TOKENS"
        );
    }
}
