//! Anthropic's Messages API inbound (`POST /v1/messages`): client JSON into the typed
//! `ChatRequest`, typed answers back into Anthropic's message and its stream of events, so the
//! anthropic SDK (and Claude Code) can use any provider through the same stacks.

use serde_json::{Map, Value, json};
use tower_llm_core::Usage;
use tower_llm_providers::{
    ChatChunk, ChatRequest, ChatResponse, FinishReason, Message, Role, Tool, ToolCall, ToolChoice,
};

use crate::app::EventWriter;
use crate::error::{ApiError, Dialect};
use crate::request_id::RequestId;

/// A messages request as the gateway received it.
#[derive(Debug)]
pub(crate) struct ParsedMessages {
    pub(crate) request: ChatRequest,
    pub(crate) stream: bool,
}

/// Fields read into the typed request; everything else goes to `extra` untouched.
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "tools",
    "tool_choice",
    "metadata",
    "stream",
];

fn field_error(field: &str, want: &str) -> String {
    format!("`{field}` must be {want}")
}

/// The text of a string or of an array of `text` blocks.
fn text_of(value: &Value, at: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(
                        block
                            .get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| format!("`{at}`: a text block needs a `text` string"))?,
                    ),
                    Some(other) => {
                        return Err(format!(
                            "`{at}`: blocks of type {other:?} are not supported here"
                        ));
                    }
                    None => return Err(format!("`{at}`: each block needs a `type`")),
                }
            }
            Ok(text)
        }
        _ => Err(field_error(at, "a string or an array of blocks")),
    }
}

/// One Anthropic message as one or more typed messages: a user turn's `tool_result` blocks
/// become tool messages, an assistant turn's `tool_use` blocks its tool calls.
fn push_message(index: usize, value: &Value, out: &mut Vec<Message>) -> Result<(), String> {
    let at = format!("messages[{index}]");
    let role = match value.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some(other) => return Err(format!("`{at}.role`: unknown role {other:?}")),
        None => return Err(format!("`{at}.role` is required")),
    };
    let content = value
        .get("content")
        .ok_or_else(|| format!("`{at}.content` is required"))?;
    let blocks = match content {
        Value::String(text) => {
            out.push(Message {
                role,
                content: text.clone(),
                name: None,
                tool_calls: Vec::new(),
                tool_call_id: None,
                blocks: Vec::new(),
            });
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(field_error(
                &format!("{at}.content"),
                "a string or an array of blocks",
            ));
        }
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (b, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content[{b}]");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(
                block
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("`{at}.text` is required"))?,
            ),
            Some("tool_use") if role == Role::Assistant => {
                let id = block.get("id").and_then(Value::as_str);
                let name = block.get("name").and_then(Value::as_str);
                let (Some(id), Some(name)) = (id, name) else {
                    return Err(format!("`{at}`: a tool_use block needs `id` and `name`"));
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(ToolCall {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    arguments: input.to_string(),
                });
            }
            Some("tool_result") if role == Role::User => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("`{at}.tool_use_id` is required"))?;
                let result = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(content) => text_of(content, &format!("{at}.content"))?,
                };
                // The function's name, from the assistant turn that called it (Gemini needs it).
                let name = out
                    .iter()
                    .rev()
                    .flat_map(|m| m.tool_calls.iter())
                    .find(|call| call.id == id)
                    .map(|call| call.name.clone())
                    .unwrap_or_default();
                out.push(Message::tool_result(id, name, result));
            }
            Some(other) => {
                return Err(format!(
                    "`{at}`: blocks of type {other:?} are not supported in a {} message",
                    if role == Role::User {
                        "user"
                    } else {
                        "assistant"
                    }
                ));
            }
            None => return Err(format!("`{at}.type` is required")),
        }
    }
    if !text.is_empty() || !tool_calls.is_empty() {
        out.push(Message {
            role,
            content: text,
            name: None,
            tool_calls,
            tool_call_id: None,
            blocks: Vec::new(),
        });
    }
    Ok(())
}

fn parse_tools(value: &Value) -> Result<Vec<Tool>, String> {
    let Some(tools) = value.as_array() else {
        return Err(field_error("tools", "an array"));
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("`tools[{i}].name` is required"))?;
            Ok(Tool {
                name: name.to_owned(),
                description: tool
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: tool
                    .get("input_schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
        })
        .collect()
}

fn parse_tool_choice(value: &Value) -> Result<ToolChoice, String> {
    match value.get("type").and_then(Value::as_str) {
        Some("auto") => Ok(ToolChoice::Auto),
        Some("any") => Ok(ToolChoice::Required),
        Some("none") => Ok(ToolChoice::None),
        Some("tool") => value
            .get("name")
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Function(name.to_owned()))
            .ok_or_else(|| "`tool_choice.name` is required with type \"tool\"".to_owned()),
        _ => Err("`tool_choice.type` must be auto, any, tool or none".to_owned()),
    }
}

/// Reads a Messages API body. The error is a message for the client's 400.
pub(crate) fn parse(body: Value, tenant: &str) -> Result<ParsedMessages, String> {
    let Value::Object(body) = body else {
        return Err("the request body must be a JSON object".to_owned());
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(field_error("model", "a non-empty string")),
        None => return Err("`model` is required".to_owned()),
    };
    let max_tokens = match body.get("max_tokens") {
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| field_error("max_tokens", "a positive integer"))?,
        None => return Err("`max_tokens` is required".to_owned()),
    };
    let mut messages = Vec::new();
    if let Some(system) = body.get("system").filter(|v| !v.is_null()) {
        let text = text_of(system, "system")?;
        if !text.is_empty() {
            messages.push(Message::system(text));
        }
    }
    match body.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, m) in list.iter().enumerate() {
                push_message(i, m, &mut messages)?;
            }
        }
        Some(Value::Array(_)) => return Err("`messages` must not be empty".to_owned()),
        Some(_) => return Err(field_error("messages", "an array")),
        None => return Err("`messages` is required".to_owned()),
    }
    let mut request = ChatRequest::new(model, messages);
    request.max_tokens = Some(max_tokens);
    let number = |field: &str| match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| field_error(field, "a number")),
    };
    request.temperature = number("temperature")?;
    request.top_p = number("top_p")?;
    request.stop = match body.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| field_error("stop_sequences", "an array of strings"))?,
        Some(_) => return Err(field_error("stop_sequences", "an array of strings")),
    };
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        request.tools = parse_tools(tools)?;
    }
    if let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) {
        request.tool_choice = Some(parse_tool_choice(choice)?);
    }
    if let Some(user) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        request.user = Some(user.to_owned());
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field_error("stream", "a boolean")),
    };
    for (name, value) in body {
        if !FIELDS.contains(&name.as_str()) {
            request.extra.insert(name, value);
        }
    }
    // What the client sent beyond the modelled fields is Anthropic's (`top_k`, `thinking`,
    // ...): a provider of another dialect leaves it out rather than answer 400 to it.
    request.extra_dialect = Some(tower_llm_providers::Dialect::Anthropic);
    request.tenant = Some(tenant.to_owned());
    Ok(ParsedMessages { request, stream })
}

fn stop_reason(reason: Option<&FinishReason>) -> &'static str {
    match reason {
        Some(FinishReason::Length) => "max_tokens",
        Some(FinishReason::ToolCalls) => "tool_use",
        Some(FinishReason::ContentFilter | FinishReason::Refusal) => "refusal",
        // Stop, a reason the gateway does not know yet, or none.
        _ => "end_turn",
    }
}

/// Usage as Anthropic counts it: `input_tokens` are the prompt tokens not read from the cache,
/// `cache_read_input_tokens` those that were (core's `input_tokens` counts both).
fn usage_json(usage: Option<&Usage>) -> Value {
    let usage = usage.copied().unwrap_or_default();
    json!({
        "input_tokens": usage.input_tokens.saturating_sub(usage.cached_input_tokens),
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    })
}

/// A fresh message id.
pub(crate) fn message_id() -> String {
    let id = RequestId::generate();
    format!("msg_{}", id.as_str().trim_start_matches("req_"))
}

/// A whole answer as Anthropic returns it. `model` is the name the client asked for.
pub(crate) fn response_json(response: &ChatResponse, model: &str) -> Value {
    let mut content = Vec::new();
    // A refusal's explanation is the answer's text to an Anthropic client.
    let text = match (&response.refusal, response.content.is_empty()) {
        (Some(refusal), true) => refusal.as_str(),
        _ => response.content.as_str(),
    };
    if !text.is_empty() || response.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in &response.tool_calls {
        let input: Value =
            serde_json::from_str(&call.arguments).unwrap_or_else(|_| Value::Object(Map::new()));
        content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
    }
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(response.finish_reason.as_ref()),
        "stop_sequence": null,
        "usage": usage_json(response.usage.as_ref()),
    })
}

/// Which content block is open in a stream.
#[derive(Debug, PartialEq, Eq)]
enum Block {
    None,
    Text,
    /// A tool call, by the provider's index of it.
    Tool(u32),
}

/// Writes a stream in Anthropic's event sequence: `message_start`, then per content block
/// `content_block_start`, `content_block_delta`s and `content_block_stop`, then
/// `message_delta` (stop reason, usage) and `message_stop`.
#[derive(Debug)]
pub(crate) struct EventSequence {
    id: String,
    model: String,
    started: bool,
    block: Block,
    /// The index of the next content block.
    next_index: u32,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl EventSequence {
    pub(crate) fn new(model: String) -> Self {
        EventSequence {
            id: message_id(),
            model,
            started: false,
            block: Block::None,
            next_index: 0,
            finish: None,
            usage: None,
        }
    }

    fn event(out: &mut String, kind: &str, data: &Value) {
        out.push_str("event: ");
        out.push_str(kind);
        out.push_str("\ndata: ");
        out.push_str(&data.to_string());
        out.push_str("\n\n");
    }

    fn start(&mut self, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        Self::event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": message}),
        );
    }

    fn close_block(&mut self, out: &mut String) {
        if self.block != Block::None {
            let index = self.next_index - 1;
            Self::event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
            self.block = Block::None;
        }
    }

    fn open_block(&mut self, out: &mut String, block: Block, content_block: Value) {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.block = block;
        Self::event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        );
    }

    fn delta(out: &mut String, index: u32, delta: Value) {
        Self::event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }
}

impl EventWriter for EventSequence {
    fn chunk(&mut self, chunk: &ChatChunk, out: &mut String) {
        self.start(out);
        match chunk {
            // Anthropic has no refusal text of its own: it is the answer's text.
            ChatChunk::Content(text) | ChatChunk::Refusal(text) => {
                if text.is_empty() {
                    return;
                }
                if self.block != Block::Text {
                    self.open_block(out, Block::Text, json!({"type": "text", "text": ""}));
                }
                Self::delta(
                    out,
                    self.next_index - 1,
                    json!({"type": "text_delta", "text": text}),
                );
            }
            ChatChunk::ToolCall(call) => {
                if self.block != Block::Tool(call.index) {
                    let block = json!({
                        "type": "tool_use",
                        "id": call.id.clone().unwrap_or_default(),
                        "name": call.name.clone().unwrap_or_default(),
                        "input": {},
                    });
                    self.open_block(out, Block::Tool(call.index), block);
                }
                if !call.arguments.is_empty() {
                    Self::delta(
                        out,
                        self.next_index - 1,
                        json!({"type": "input_json_delta", "partial_json": call.arguments}),
                    );
                }
            }
            ChatChunk::Finish(reason) => self.finish = Some(reason.clone()),
            ChatChunk::Usage(usage) => self.usage = Some(*usage),
            // Thinking, citations and server tools are not relayed (yet): the text and the
            // tool calls are; nor is a kind of chunk the gateway does not know yet.
            _ => {}
        }
    }

    fn finish(&mut self, out: &mut String) {
        self.start(out);
        self.close_block(out);
        // The counts of a `message_delta` are the totals so far, and the SDK takes the input
        // counts from it too: the upstream's usage comes only at the end of its stream, after
        // `message_start` said 0.
        Self::event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish.as_ref()), "stop_sequence": null},
                "usage": usage_json(self.usage.as_ref()),
            }),
        );
        Self::event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    fn fail(&mut self, error: ApiError, id: &RequestId, out: &mut String) {
        Self::event(out, "error", &error.body(Dialect::Anthropic, id));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn events(writer: &mut EventSequence, chunks: &[ChatChunk]) -> Vec<Value> {
        let mut out = String::new();
        for chunk in chunks {
            writer.chunk(chunk, &mut out);
        }
        writer.finish(&mut out);
        out.lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(|data| serde_json::from_str(data).unwrap())
            .collect()
    }

    #[test]
    fn usage_is_counted_as_anthropic_counts_it_and_totalled_in_message_delta() {
        let usage = Usage::new(120, 7).with_cached_input_tokens(100);
        let whole = response_json(&ChatResponse::new("hi").with_usage(usage), "m");
        let expected = json!({"input_tokens": 20, "cache_read_input_tokens": 100,
                              "output_tokens": 7});
        assert_eq!(whole["usage"], expected);

        // The upstream's usage comes after the text, at the end of its stream: the totals go
        // out with message_delta, which the SDK reads them from.
        let mut writer = EventSequence::new("m".to_owned());
        let sent = events(
            &mut writer,
            &[
                ChatChunk::Content("hi".to_owned()),
                ChatChunk::Finish(FinishReason::Stop),
                ChatChunk::Usage(usage),
            ],
        );
        let delta = sent.iter().find(|e| e["type"] == "message_delta").unwrap();
        assert_eq!(delta["usage"], expected);
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    }
}
