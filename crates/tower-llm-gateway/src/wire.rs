//! OpenAI's wire format, both ways: client JSON into the typed requests of
//! `tower-llm-providers`, and typed answers back into the JSON and SSE chunks OpenAI clients
//! read.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tower_llm_core::Usage;

use crate::app::EventWriter;
use crate::error::{ApiError, Dialect};
use crate::request_id::RequestId;
use tower_llm_providers::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, FinishReason,
    Message, ResponseFormat, Role, Tool, ToolCall, ToolChoice,
};

/// A chat request as the gateway received it.
#[derive(Debug)]
pub(crate) struct ParsedChat {
    pub(crate) request: ChatRequest,
    pub(crate) stream: bool,
    /// `stream_options.include_usage`: send a last chunk with the usage.
    pub(crate) include_usage: bool,
}

/// Fields read into the typed request; everything else goes to `extra` untouched.
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "user",
    "metadata",
    "stream",
    "stream_options",
    "n",
];

fn field_error(field: &str, want: &str) -> String {
    format!("`{field}` must be {want}")
}

fn opt_f64(body: &Map<String, Value>, field: &str) -> Result<Option<f64>, String> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| field_error(field, "a number")),
    }
}

/// Takes the optional string `field` out of `body` (moved, not copied).
fn take_str(body: &mut Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match body.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field_error(field, "a string")),
    }
}

fn content_text(value: Value, index: usize) -> Result<String, String> {
    match value {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text").and_then(Value::as_str) {
                        Some(t) => text.push_str(t),
                        None => {
                            return Err(format!(
                                "`messages[{index}].content`: a text part needs a `text` string"
                            ));
                        }
                    },
                    Some(other) => {
                        return Err(format!(
                            "`messages[{index}].content`: parts of type {other:?} are not supported by this gateway"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "`messages[{index}].content`: each part needs a `type`"
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(field_error(
            &format!("messages[{index}].content"),
            "a string or an array of parts",
        )),
    }
}

fn parse_message(index: usize, value: Value) -> Result<Message, String> {
    let Value::Object(mut object) = value else {
        return Err(field_error(&format!("messages[{index}]"), "an object"));
    };
    let has_tool_calls = object
        .get("tool_calls")
        .and_then(Value::as_array)
        .is_some_and(|calls| !calls.is_empty());
    let role = match object.get("role") {
        Some(Value::String(role)) => match role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => return Err(format!("`messages[{index}].role`: unknown role {other:?}")),
        },
        // The openai SDK's streamed tool loop sends back the message it accumulated from the
        // deltas, and streamed tool calls carry no role: such a message is the assistant's.
        None | Some(Value::Null) if has_tool_calls => Role::Assistant,
        None | Some(Value::Null) => {
            return Err(format!("`messages[{index}].role` is required"));
        }
        Some(_) => return Err(field_error(&format!("messages[{index}].role"), "a string")),
    };
    let content = content_text(object.remove("content").unwrap_or(Value::Null), index)?;
    let mut tool_calls = Vec::new();
    if let Some(calls) = object.get("tool_calls").filter(|v| !v.is_null()) {
        let Some(calls) = calls.as_array() else {
            return Err(field_error(
                &format!("messages[{index}].tool_calls"),
                "an array",
            ));
        };
        for call in calls {
            let function = call.get("function");
            let id = call.get("id").and_then(Value::as_str);
            let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
            let arguments = function
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or("{}");
            let (Some(id), Some(name)) = (id, name) else {
                return Err(format!(
                    "`messages[{index}].tool_calls`: each call needs `id` and `function.name`"
                ));
            };
            tool_calls.push(ToolCall {
                id: id.to_owned(),
                name: name.to_owned(),
                arguments: arguments.to_owned(),
            });
        }
    }
    Ok(Message {
        role,
        content,
        name: take_str(&mut object, "name")?,
        tool_calls,
        tool_call_id: take_str(&mut object, "tool_call_id")?,
        blocks: Vec::new(),
    })
}

fn parse_tools(value: &Value) -> Result<Vec<Tool>, String> {
    let Some(tools) = value.as_array() else {
        return Err(field_error("tools", "an array"));
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let function = tool
                .get("function")
                .ok_or_else(|| format!("`tools[{i}].function` is required"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("`tools[{i}].function.name` is required"))?;
            Ok(Tool {
                name: name.to_owned(),
                description: function
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: function
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
        })
        .collect()
}

fn parse_tool_choice(value: &Value) -> Result<ToolChoice, String> {
    match value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(format!("`tool_choice`: unknown value {other:?}")),
        },
        Value::Object(_) => value
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Function(name.to_owned()))
            .ok_or_else(|| "`tool_choice.function.name` is required".to_owned()),
        _ => Err(field_error("tool_choice", "a string or an object")),
    }
}

fn parse_response_format(value: &Value) -> Result<ResponseFormat, String> {
    match value.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let schema = value
                .get("json_schema")
                .ok_or("`response_format.json_schema` is required")?;
            Ok(ResponseFormat::JsonSchema {
                name: schema
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("response")
                    .to_owned(),
                schema: schema.get("schema").cloned().unwrap_or(Value::Null),
                strict: schema
                    .get("strict")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        }
        _ => Err("`response_format.type` must be text, json_object or json_schema".to_owned()),
    }
}

/// Reads an OpenAI chat completions body. The error is a message for the client's 400.
///
/// The fields read are moved out of `body` (the prompt's text is not copied); what is left
/// goes to the request's `extra`.
pub(crate) fn parse_chat(body: Value, tenant: &str) -> Result<ParsedChat, String> {
    let Value::Object(mut body) = body else {
        return Err("the request body must be a JSON object".to_owned());
    };
    let model = match body.remove("model") {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(_) => return Err(field_error("model", "a non-empty string")),
        None => return Err("`model` is required".to_owned()),
    };
    let messages = match body.remove("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| parse_message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => return Err("`messages` must not be empty".to_owned()),
        Some(_) => return Err(field_error("messages", "an array")),
        None => return Err("`messages` is required".to_owned()),
    };
    let mut request = ChatRequest::new(model, messages);
    request.temperature = opt_f64(&body, "temperature")?;
    request.top_p = opt_f64(&body, "top_p")?;
    let max_tokens = body
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| body.get("max_tokens").filter(|v| !v.is_null()));
    request.max_tokens = match max_tokens {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| field_error("max_tokens", "a positive integer"))?,
        ),
    };
    request.stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| field_error("stop", "a string or an array of strings"))?,
        Some(_) => return Err(field_error("stop", "a string or an array of strings")),
    };
    request.seed = match body.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| field_error("seed", "an integer"))?,
        ),
    };
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        request.tools = parse_tools(tools)?;
    }
    if let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) {
        request.tool_choice = Some(parse_tool_choice(choice)?);
    }
    if let Some(format) = body.get("response_format").filter(|v| !v.is_null()) {
        request.response_format = Some(parse_response_format(format)?);
    }
    request.user = take_str(&mut body, "user")?;
    match body.remove("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => request.metadata = m,
        Some(_) => return Err(field_error("metadata", "an object")),
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field_error("stream", "a boolean")),
    };
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(n) if n.as_u64().is_some_and(|n| n > 1) => {
            return Err(
                "`n` greater than 1 is not supported by this gateway: it returns one choice; \
                 send n requests instead"
                    .to_owned(),
            );
        }
        Some(_) => return Err(field_error("n", "a positive integer")),
    }
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for (name, value) in body {
        if !CHAT_FIELDS.contains(&name.as_str()) {
            request.extra.insert(name, value);
        }
    }
    // What the client sent beyond the modelled fields is OpenAI's: a provider of another
    // dialect leaves it out rather than answer 400 to it.
    request.extra_dialect = Some(tower_llm_providers::Dialect::OpenAi);
    request.tenant = Some(tenant.to_owned());
    Ok(ParsedChat {
        request,
        stream,
        include_usage,
    })
}

/// How the client wants its vectors: JSON numbers, or base64 of little-endian `f32`s (what
/// the openai SDK asks for by default, then decodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EmbeddingEncoding {
    Float,
    Base64,
}

/// Reads an OpenAI embeddings body.
pub(crate) fn parse_embeddings(
    body: Value,
    tenant: &str,
) -> Result<(EmbeddingRequest, EmbeddingEncoding), String> {
    let Value::Object(mut body) = body else {
        return Err("the request body must be a JSON object".to_owned());
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(field_error("model", "a non-empty string")),
        None => return Err("`model` is required".to_owned()),
    };
    let input = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| field_error("input", "a string or an array of strings"))?,
        Some(Value::Array(_)) => return Err("`input` must not be empty".to_owned()),
        Some(_) => return Err(field_error("input", "a string or an array of strings")),
        None => return Err("`input` is required".to_owned()),
    };
    let mut request = EmbeddingRequest::new(model, input);
    request.dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| field_error("dimensions", "a positive integer"))?,
        ),
    };
    request.user = take_str(&mut body, "user")?;
    // The gateway asks every provider for floats and encodes them itself.
    let encoding = match body.get("encoding_format") {
        None | Some(Value::Null) => EmbeddingEncoding::Float,
        Some(Value::String(f)) if f == "float" => EmbeddingEncoding::Float,
        Some(Value::String(f)) if f == "base64" => EmbeddingEncoding::Base64,
        Some(_) => return Err(field_error("encoding_format", "\"float\" or \"base64\"")),
    };
    for (name, value) in body {
        if !["model", "input", "dimensions", "user", "encoding_format"].contains(&name.as_str()) {
            request.extra.insert(name, value);
        }
    }
    request.tenant = Some(tenant.to_owned());
    Ok((request, encoding))
}

/// A fresh id for a streamed completion (the chunks of one stream share it).
pub(crate) fn completion_id() -> String {
    static STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("chatcmpl-gw{:x}-{serial}", unix_now())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_str(reason: &FinishReason) -> &str {
    match reason {
        // OpenAI ends a refusal with "stop" and says it in `refusal`.
        FinishReason::Refusal => "stop",
        other => other.as_str(),
    }
}

/// Token usage as OpenAI reports it, serialised straight from core's [`Usage`].
#[derive(Serialize)]
struct UsageJson {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokensJson,
}

#[derive(Serialize)]
struct CachedTokensJson {
    cached_tokens: u64,
}

fn usage_json(usage: &Usage) -> UsageJson {
    UsageJson {
        prompt_tokens: usage.input_tokens,
        completion_tokens: usage.output_tokens,
        total_tokens: usage.total(),
        prompt_tokens_details: CachedTokensJson {
            cached_tokens: usage.cached_input_tokens,
        },
    }
}

/// A chat completion as OpenAI returns it, serialised straight from the provider's typed
/// answer (no `Value` tree: the answer's text is written once, not copied into a tree first).
#[derive(Serialize)]
pub(crate) struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageJson>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: MessageJson<'a>,
    finish_reason: &'a str,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct MessageJson<'a> {
    role: &'static str,
    /// `null` when the answer is only tool calls or a refusal, as OpenAI sends it.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: Vec<ToolCallJson<'a>>,
}

#[derive(Serialize)]
struct ToolCallJson<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionJson<'a>,
}

#[derive(Serialize)]
struct FunctionJson<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// A chat completion as OpenAI returns it. `model` is the name the client asked for.
pub(crate) fn chat_response_json<'a>(
    response: &'a ChatResponse,
    model: &'a str,
) -> ChatCompletion<'a> {
    let tool_calls = response
        .tool_calls
        .iter()
        .map(|c| ToolCallJson {
            id: &c.id,
            kind: "function",
            function: FunctionJson {
                name: &c.name,
                arguments: &c.arguments,
            },
        })
        .collect();
    ChatCompletion {
        id: if response.id.is_empty() {
            "chatcmpl-gateway"
        } else {
            &response.id
        },
        object: "chat.completion",
        created: unix_now(),
        model,
        choices: [Choice {
            index: 0,
            message: MessageJson {
                role: "assistant",
                content: if response.content.is_empty()
                    && (!response.tool_calls.is_empty() || response.refusal.is_some())
                {
                    None
                } else {
                    Some(&response.content)
                },
                refusal: response.refusal.as_deref(),
                tool_calls,
            },
            finish_reason: response.finish_reason.as_ref().map_or("stop", finish_str),
            logprobs: None,
        }],
        usage: response.usage.as_ref().map(usage_json),
    }
}

/// Builds the `data:` payloads of a streamed completion, chunk by chunk.
#[derive(Debug)]
pub(crate) struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    sent_role: bool,
}

impl ChunkWriter {
    pub(crate) fn new(id: String, model: String, include_usage: bool) -> Self {
        ChunkWriter {
            id,
            model,
            created: unix_now(),
            include_usage,
            sent_role: false,
        }
    }

    fn chunk_json(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    }

    /// The delta with `role: "assistant"` on the first one of the stream, whatever it
    /// carries (text or a tool call), as OpenAI sends it.
    fn delta(&mut self, mut delta: Value) -> Value {
        if !self.sent_role {
            self.sent_role = true;
            delta["role"] = json!("assistant");
        }
        delta
    }
}

impl EventWriter for ChunkWriter {
    fn chunk(&mut self, chunk: &ChatChunk, out: &mut String) {
        let value = match chunk {
            ChatChunk::Content(text) => {
                let delta = self.delta(json!({"content": text}));
                self.chunk_json(delta, None)
            }
            ChatChunk::ToolCall(call) => {
                let mut entry =
                    json!({"index": call.index, "function": {"arguments": call.arguments}});
                if let Some(id) = &call.id {
                    entry["id"] = json!(id);
                    entry["type"] = json!("function");
                }
                if let Some(name) = &call.name {
                    entry["function"]["name"] = json!(name);
                }
                let delta = self.delta(json!({"tool_calls": [entry]}));
                self.chunk_json(delta, None)
            }
            ChatChunk::Refusal(text) => {
                let delta = self.delta(json!({"refusal": text}));
                self.chunk_json(delta, None)
            }
            ChatChunk::Finish(reason) => self.chunk_json(json!({}), Some(finish_str(reason))),
            ChatChunk::Usage(usage) => {
                if !self.include_usage {
                    return;
                }
                json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage_json(usage),
                })
            }
            // OpenAI's format has no content blocks: thinking, citations and server tools
            // are not relayed, nor is a kind of chunk the gateway does not know yet.
            _ => return,
        };
        out.push_str("data: ");
        out.push_str(&value.to_string());
        out.push_str("\n\n");
    }

    fn finish(&mut self, out: &mut String) {
        out.push_str("data: [DONE]\n\n");
    }

    fn fail(&mut self, error: ApiError, id: &RequestId, out: &mut String) {
        out.push_str("data: ");
        out.push_str(&error.body(Dialect::OpenAi, id).to_string());
        out.push_str("\n\ndata: [DONE]\n\n");
    }
}

/// Embeddings as OpenAI returns them, in the encoding the client asked for.
pub(crate) fn embeddings_json(
    response: &EmbeddingResponse,
    model: &str,
    encoding: EmbeddingEncoding,
) -> Value {
    let data: Vec<Value> = response
        .embeddings
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let embedding = match encoding {
                EmbeddingEncoding::Float => json!(e),
                EmbeddingEncoding::Base64 => {
                    let bytes: Vec<u8> = e.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let usage = response.usage.unwrap_or_default();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": usage.input_tokens, "total_tokens": usage.total()},
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message_of(response: &ChatResponse) -> Value {
        let body = serde_json::to_value(chat_response_json(response, "m")).unwrap();
        body["choices"][0]["message"].clone()
    }

    #[test]
    fn content_is_null_beside_tool_calls_or_a_refusal_and_text_otherwise() {
        let refused = ChatResponse::default()
            .with_refusal("I can't help with that.")
            .with_finish_reason(FinishReason::Refusal);
        let message = message_of(&refused);
        assert_eq!(message["content"], Value::Null, "{message}");
        assert_eq!(message["refusal"], "I can't help with that.");
        let body = serde_json::to_value(chat_response_json(&refused, "m")).unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "stop");

        let called = ChatResponse::default().with_tool_calls(vec![ToolCall {
            id: "call_1".to_owned(),
            name: "f".to_owned(),
            arguments: "{}".to_owned(),
        }]);
        assert_eq!(message_of(&called)["content"], Value::Null);

        // An answer that is really empty stays a string, as OpenAI sends it.
        assert_eq!(message_of(&ChatResponse::default())["content"], "");
        let answered = ChatResponse::new("hi");
        let message = message_of(&answered);
        assert_eq!(message["content"], "hi");
        assert!(message.get("refusal").is_none());
    }
}
