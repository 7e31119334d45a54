//! The openai wire format: requests, answers and stream events.

use crate::chat::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, FinishReason,
    Message, ResponseFormat, Role, ToolCall, ToolCallDelta, ToolChoice,
};
use crate::error::{CallContext, Dialect};
use crate::framing::Event;
use crate::meta::ResponseMeta;
use crate::protocol::Step;
use crate::stream::{finish_reason_openai, usage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use tower_llm_core::UpstreamError;

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

pub(crate) fn encode_embeddings(request: &EmbeddingRequest) -> Vec<u8> {
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
    ctx: &CallContext,
    body: &[u8],
    meta: ResponseMeta,
) -> Result<ChatResponse, UpstreamError> {
    let wire: WireResponse = serde_json::from_slice(body)
        .map_err(|e| ctx.malformed("chat completion is not valid JSON", body, e))?;
    if let Some(error) = wire.extra.get("error").filter(|e| !e.is_null()) {
        let value = serde_json::json!({ "error": error });
        return Err(ctx.for_error_value(&value, &String::from_utf8_lossy(body)));
    }
    let choices = wire.choices.unwrap_or_default();
    let Some(choice) = choices.into_iter().find(|c| c.index.unwrap_or(0) == 0) else {
        return Err(ctx.malformed("chat completion", body, "no choice in the answer"));
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
    index: Option<usize>,
    embedding: Vec<f32>,
}

pub(crate) fn decode_embeddings(
    ctx: &CallContext,
    body: &[u8],
    meta: ResponseMeta,
) -> Result<EmbeddingResponse, UpstreamError> {
    let mut wire: WireEmbeddingResponse = serde_json::from_slice(body)
        .map_err(|e| ctx.malformed("embeddings answer is not valid JSON", body, e))?;
    // Each vector goes to its input by `index`: the indices must be 0..n, each once (a
    // duplicate or a gap would give a caller a vector for the wrong text). Servers that send
    // none list the vectors in input order.
    if wire.data.iter().any(|d| d.index.is_some()) {
        wire.data.sort_by_key(|d| d.index);
        if let Some(at) = (0..wire.data.len()).find(|&i| wire.data[i].index != Some(i)) {
            return Err(ctx.malformed(
                "embeddings answer",
                body,
                format_args!(
                    "its vectors' indices are not 0..{} each once (position {at})",
                    wire.data.len()
                ),
            ));
        }
    }
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

impl crate::protocol::StreamDecoder for StreamDecoder {
    fn event(
        &mut self,
        ctx: &CallContext,
        event: &Event,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(Step::Done);
        }
        let chunk: WireChunk<'_> = serde_json::from_str(data)
            .map_err(|e| ctx.malformed("stream event is not valid JSON", data.as_bytes(), e))?;
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

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}
