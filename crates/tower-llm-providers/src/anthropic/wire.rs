//! The anthropic wire format: requests, answers and stream events.

use crate::chat::{
    BlockDelta, ChatChunk, ChatRequest, ChatResponse, ContentBlock, FinishReason, Role, ToolCall,
    ToolCallDelta, ToolChoice, tool_calls_and_blocks,
};
use crate::error::{CallContext, Dialect};
use crate::framing::Event;
use crate::meta::ResponseMeta;
use crate::protocol::Step;
use crate::stream::usage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use tower_llm_core::UpstreamError;

// ---- wire format: requests -------------------------------------------------------------

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<WireMetadata<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct WireMetadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<WireBlock<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock<'a> {
    Text {
        text: &'a str,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        citations: &'a [Value],
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
    /// A block kept raw (server tools, their results, unknown types): sent as it came.
    #[serde(untagged)]
    Raw(&'a Value),
}

impl<'a> WireBlock<'a> {
    fn text(text: &'a str) -> Self {
        WireBlock::Text {
            text,
            citations: &[],
        }
    }

    fn tool_use(call: &'a ToolCall) -> Self {
        WireBlock::ToolUse {
            id: &call.id,
            name: &call.name,
            input: serde_json::from_str(&call.arguments)
                .unwrap_or_else(|_| Value::Object(Map::new())),
        }
    }

    /// An assistant message's block as it goes back; `None` for empty text, which
    /// Anthropic refuses.
    fn from_block(block: &'a ContentBlock) -> Option<Self> {
        Some(match block {
            ContentBlock::Text { text, .. } if text.is_empty() => return None,
            ContentBlock::Text { text, citations } => WireBlock::Text { text, citations },
            ContentBlock::ToolUse(call) => WireBlock::tool_use(call),
            ContentBlock::Thinking {
                thinking,
                signature,
            } => WireBlock::Thinking {
                thinking,
                signature,
            },
            ContentBlock::RedactedThinking { data } => WireBlock::RedactedThinking { data },
            ContentBlock::ServerToolUse(raw)
            | ContentBlock::ServerToolResult(raw)
            | ContentBlock::Other(raw) => WireBlock::Raw(raw),
        })
    }
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a Value,
}

pub(crate) fn encode_chat(request: &ChatRequest, stream: bool, default_max_tokens: u32) -> Vec<u8> {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let mut messages: Vec<WireMessage<'_>> = Vec::with_capacity(request.messages.len());
    for message in request.messages.iter().filter(|m| m.role != Role::System) {
        let (role, blocks) = match message.role {
            Role::User | Role::System => ("user", vec![WireBlock::text(&message.content)]),
            // The blocks as they came, thinking and server tools included, when it has them.
            Role::Assistant if !message.blocks.is_empty() => (
                "assistant",
                message
                    .blocks
                    .iter()
                    .filter_map(WireBlock::from_block)
                    .collect(),
            ),
            Role::Assistant => {
                let mut blocks = Vec::with_capacity(1 + message.tool_calls.len());
                if !message.content.is_empty() {
                    blocks.push(WireBlock::text(&message.content));
                }
                blocks.extend(message.tool_calls.iter().map(WireBlock::tool_use));
                ("assistant", blocks)
            }
            Role::Tool => (
                "user",
                vec![WireBlock::ToolResult {
                    tool_use_id: message.tool_call_id.as_deref().unwrap_or_default(),
                    content: &message.content,
                }],
            ),
        };
        // Results of parallel tool calls belong in one user turn.
        match messages.last_mut() {
            Some(last)
                if message.role == Role::Tool
                    && last.role == "user"
                    && last
                        .content
                        .iter()
                        .all(|b| matches!(b, WireBlock::ToolResult { .. })) =>
            {
                last.content.extend(blocks);
            }
            _ => messages.push(WireMessage {
                role,
                content: blocks,
            }),
        }
    }
    let tool_choice = request.tool_choice.as_ref().map(|choice| match choice {
        ToolChoice::Auto => serde_json::json!({"type": "auto"}),
        ToolChoice::None => serde_json::json!({"type": "none"}),
        ToolChoice::Required => serde_json::json!({"type": "any"}),
        ToolChoice::Function(name) => serde_json::json!({"type": "tool", "name": name}),
    });
    let wire = WireRequest {
        model: &request.model,
        max_tokens: request.max_tokens.unwrap_or(default_max_tokens),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        temperature: request.temperature,
        top_p: request.top_p,
        stop_sequences: &request.stop,
        tools: request
            .tools
            .iter()
            .map(|tool| WireTool {
                name: &tool.name,
                description: tool.description.as_deref(),
                input_schema: &tool.parameters,
            })
            .collect(),
        tool_choice,
        metadata: request
            .user
            .as_deref()
            .map(|user_id| WireMetadata { user_id }),
        stream,
    };
    crate::chat::encode_with_extra(
        &wire,
        request.extra_for(Dialect::Anthropic),
        crate::chat::body_size_hint(request),
    )
}

// ---- wire format: responses ------------------------------------------------------------

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: Option<Vec<WireContent>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireContent {
    Text {
        text: String,
        #[serde(default)]
        citations: Option<Vec<Value>>,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    /// Anything else (server tools, their results, types to come, a known type in a shape
    /// it should not have), kept raw.
    #[serde(untagged)]
    Raw(Value),
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    fn input(&self) -> Option<u64> {
        // Anthropic counts cache reads and writes outside `input_tokens`; core's `Usage`
        // counts every prompt token.
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        // Counts come from the server: saturate rather than overflow (a panic in debug).
        self.input_tokens
            .map(|input| input.saturating_add(read).saturating_add(written))
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::Refusal,
        other => FinishReason::Other(other.to_owned()),
    }
}

fn arguments_text(input: &Value) -> String {
    if input.is_null() {
        "{}".to_owned()
    } else {
        input.to_string()
    }
}

pub(crate) fn decode_chat(
    ctx: &CallContext,
    body: &[u8],
    meta: ResponseMeta,
) -> Result<ChatResponse, UpstreamError> {
    let wire: WireResponse = serde_json::from_slice(body)
        .map_err(|e| ctx.malformed("message is not valid JSON", body, e))?;
    if wire.kind.as_deref() == Some("error") || wire.extra.contains_key("error") {
        let value = serde_json::json!({ "error": wire.extra.get("error") });
        return Err(ctx.for_error_value(&value, &String::from_utf8_lossy(body)));
    }
    let Some(content) = wire.content else {
        return Err(ctx.malformed("message", body, "no `content` in the answer"));
    };
    let mut response = ChatResponse {
        meta,
        id: wire.id.unwrap_or_default(),
        model: wire.model.unwrap_or_default(),
        finish_reason: wire.stop_reason.as_deref().map(finish_reason),
        usage: wire.usage.map(|u| {
            usage(
                u.input().unwrap_or(0),
                u.output_tokens.unwrap_or(0),
                u.cache_read_input_tokens.unwrap_or(0),
            )
        }),
        extra: wire.extra,
        ..ChatResponse::default()
    };
    let mut blocks = Vec::with_capacity(content.len());
    for block in content {
        blocks.push(match block {
            WireContent::Text { text, citations } => {
                response.content.push_str(&text);
                ContentBlock::Text {
                    text,
                    citations: citations.unwrap_or_default(),
                }
            }
            WireContent::ToolUse { id, name, input } => ContentBlock::ToolUse(ToolCall {
                id,
                name,
                arguments: arguments_text(&input),
            }),
            WireContent::Thinking {
                thinking,
                signature,
            } => ContentBlock::Thinking {
                thinking,
                signature,
            },
            WireContent::RedactedThinking { data } => ContentBlock::RedactedThinking { data },
            WireContent::Raw(raw) => ContentBlock::raw(raw),
        });
    }
    (response.tool_calls, response.blocks) = tool_calls_and_blocks(blocks);
    Ok(response)
}

// ---- wire format: stream events --------------------------------------------------------

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireStartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: WireBlockStart,
    },
    ContentBlockDelta {
        index: u32,
        delta: WireBlockDelta,
    },
    MessageDelta {
        #[serde(default)]
        delta: WireMessageDelta,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    // Error events are caught before the decoder, whatever their shape (stream.rs).
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireStartMessage {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlockStart {
    Text {
        #[serde(default)]
        text: String,
        #[serde(default)]
        citations: Option<Vec<Value>>,
    },
    ToolUse {
        id: String,
        name: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    /// Server tools (their input follows as `input_json_delta`s), their results (whole),
    /// types to come: kept raw.
    #[serde(untagged)]
    Raw(Value),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    CitationsDelta {
        citation: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
struct WireMessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// Decodes Messages stream events; the stream ends at `message_stop`.
#[derive(Debug, Default)]
pub(crate) struct StreamDecoder {
    input_tokens: u64,
    cached_tokens: u64,
    /// Content block index of each tool call so far, in call order.
    tool_blocks: Vec<u32>,
    /// Content blocks kept raw: the server's own tools (`server_tool_use`, `mcp_tool_use`),
    /// their results, unknown types. A server tool's `input_json_delta`s are not the
    /// caller's tool arguments: they go out as [`BlockDelta::ServerToolInput`].
    other_blocks: Vec<u32>,
    /// Content blocks started so far, of every type.
    blocks: usize,
    pub(crate) model: Option<String>,
}

impl StreamDecoder {
    fn decode_event(
        &mut self,
        ctx: &CallContext,
        event: &Event,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        let parsed: WireEvent = serde_json::from_str(&event.data).map_err(|e| {
            ctx.malformed("stream event is not valid JSON", event.data.as_bytes(), e)
        })?;
        match parsed {
            WireEvent::MessageStart { message } => {
                self.model = message.model.filter(|m| !m.is_empty());
                if let Some(u) = message.usage {
                    self.input_tokens = u.input().unwrap_or(0);
                    self.cached_tokens = u.cache_read_input_tokens.unwrap_or(0);
                }
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                self.check_blocks(ctx, event)?;
                self.blocks += 1;
                let start = |block| ChatChunk::Block(BlockDelta::Start { index, block });
                match content_block {
                    WireBlockStart::Text { text, citations } => {
                        out.push_back(start(ContentBlock::Text {
                            text: String::new(),
                            citations: citations.unwrap_or_default(),
                        }));
                        if !text.is_empty() {
                            out.push_back(ChatChunk::Content(text));
                        }
                    }
                    WireBlockStart::ToolUse { id, name } => {
                        let call = self.tool_blocks.len() as u32;
                        self.tool_blocks.push(index);
                        out.push_back(start(ContentBlock::ToolUse(ToolCall {
                            id: id.clone(),
                            name: name.clone(),
                            arguments: String::new(),
                        })));
                        out.push_back(ChatChunk::ToolCall(ToolCallDelta {
                            index: call,
                            id: Some(id),
                            name: Some(name),
                            arguments: String::new(),
                        }));
                    }
                    WireBlockStart::Thinking {
                        thinking,
                        signature,
                    } => out.push_back(start(ContentBlock::Thinking {
                        thinking,
                        signature,
                    })),
                    WireBlockStart::RedactedThinking { data } => {
                        out.push_back(start(ContentBlock::RedactedThinking { data }));
                    }
                    WireBlockStart::Raw(raw) => {
                        self.other_blocks.push(index);
                        out.push_back(start(ContentBlock::raw(raw)));
                    }
                }
            }
            WireEvent::ContentBlockDelta { index, delta } => match delta {
                WireBlockDelta::TextDelta { text } => out.push_back(ChatChunk::Content(text)),
                WireBlockDelta::ThinkingDelta { thinking } => {
                    out.push_back(ChatChunk::Block(BlockDelta::Thinking {
                        index,
                        text: thinking,
                    }));
                }
                WireBlockDelta::SignatureDelta { signature } => {
                    out.push_back(ChatChunk::Block(BlockDelta::Signature { index, signature }));
                }
                WireBlockDelta::CitationsDelta { citation } => {
                    out.push_back(ChatChunk::Block(BlockDelta::Citation { index, citation }));
                }
                WireBlockDelta::InputJsonDelta { partial_json } => {
                    let Some(call) = self.tool_blocks.iter().position(|&b| b == index) else {
                        if self.other_blocks.contains(&index) {
                            // A server tool's input: Anthropic runs it, the caller does not.
                            out.push_back(ChatChunk::Block(BlockDelta::ServerToolInput {
                                index,
                                partial_json,
                            }));
                            return Ok(Step::Continue);
                        }
                        return Err(ctx.malformed(
                            "stream",
                            event.data.as_bytes(),
                            format!("input_json_delta for block {index}, which is no tool_use"),
                        ));
                    };
                    out.push_back(ChatChunk::ToolCall(ToolCallDelta {
                        index: call as u32,
                        id: None,
                        name: None,
                        arguments: partial_json,
                    }));
                }
                WireBlockDelta::Other => {}
            },
            WireEvent::MessageDelta { delta, usage: u } => {
                if let Some(reason) = delta.stop_reason {
                    out.push_back(ChatChunk::Finish(finish_reason(&reason)));
                }
                if let Some(u) = u {
                    let input = u.input().unwrap_or(self.input_tokens);
                    let cached = u.cache_read_input_tokens.unwrap_or(self.cached_tokens);
                    out.push_back(ChatChunk::Usage(usage(
                        input,
                        u.output_tokens.unwrap_or(0),
                        cached,
                    )));
                }
            }
            WireEvent::MessageStop => return Ok(Step::Done),
            WireEvent::Other => {}
        }
        Ok(Step::Continue)
    }

    /// Refuses a stream with more content blocks than any answer has: the block lists (here
    /// and in a [`ChatAccumulator`](crate::ChatAccumulator)) grow with what the server sends,
    /// and must stay bounded.
    fn check_blocks(&self, ctx: &CallContext, event: &Event) -> Result<(), UpstreamError> {
        if self.blocks >= MAX_BLOCKS {
            return Err(ctx.malformed(
                "stream",
                event.data.as_bytes(),
                format!("more than {MAX_BLOCKS} content blocks"),
            ));
        }
        Ok(())
    }
}

/// The most content blocks a streamed answer may have.
const MAX_BLOCKS: usize = 4096;

impl crate::protocol::StreamDecoder for StreamDecoder {
    fn event(
        &mut self,
        cx: &CallContext,
        event: &Event,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        self.decode_event(cx, event, out)
    }

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}
