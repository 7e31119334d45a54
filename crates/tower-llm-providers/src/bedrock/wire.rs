//! Bedrock's Converse API wire format: requests, answers, stream events, error bodies.
//!
//! A [`ChatRequest`] goes to `POST /model/{modelId}/converse` (or `/converse-stream`) as:
//!
//! | chat type | Converse |
//! |---|---|
//! | `model` | the URL's `{modelId}`, percent-encoded ([`converse_path`]); not in the body |
//! | system messages | `system: [{"text"}]` |
//! | user and assistant text | `messages[].content[].text` (empty text is left out: Bedrock refuses it) |
//! | assistant tool calls | `toolUse {toolUseId, name, input}` (arguments parsed; `{}` when not JSON) |
//! | tool results | `toolResult {toolUseId, content: [{"text"}]}`, consecutive results in one user turn |
//! | assistant [`blocks`](crate::Message::blocks) | text, `toolUse`, thinking as `reasoningContent.reasoningText {text, signature}`, redacted thinking as `reasoningContent.redactedContent`, a raw Bedrock block (one key, no `type`) as it came; other dialects' raw blocks are left out |
//! | `max_tokens`, `temperature`, `top_p`, `stop` | `inferenceConfig {maxTokens, temperature, topP, stopSequences}` |
//! | `tools` | `toolConfig.tools[].toolSpec {name, description, inputSchema.json}` |
//! | `tool_choice` | `toolConfig.toolChoice`: auto `{"auto":{}}`, required `{"any":{}}`, a function `{"tool":{"name"}}`; none: no tools are offered (they stay, without a choice, when the conversation already has tool blocks, which Bedrock then requires) |
//! | `seed`, `response_format`, `user`, `metadata` | no Converse equivalent: not sent |
//! | `extra` | merged into the body (`additionalModelRequestFields`, `guardrailConfig`, `performanceConfig`, `requestMetadata`, ...) |
//!
//! An answer's `output.message.content` becomes the text, the tool calls (arguments as JSON
//! text) and, when there is more than text and calls, the [`ContentBlock`]s: reasoning as
//! [`ContentBlock::Thinking`] / [`ContentBlock::RedactedThinking`] (as Anthropic's), any other
//! block raw. `stopReason` maps to [`FinishReason`]: `end_turn` and `stop_sequence` to
//! `Stop`, `max_tokens` and `model_context_window_exceeded` to `Length`, `tool_use` to
//! `ToolCalls`, `content_filtered` and `guardrail_intervened` to `ContentFilter`. Usage counts
//! cache reads and writes as input, as core's `Usage` does. `metrics`, `trace` and the other
//! top-level fields stay in [`ChatResponse::extra`]. Converse names no response id or model.
//!
//! A stream's events (`messageStart`, `contentBlockStart`, `contentBlockDelta`,
//! `contentBlockStop`, `messageStop`, `metadata`) become [`ChatChunk`]s; it is complete once
//! both `messageStop` and `metadata` (the usage) have come. An exception message
//! (`throttlingException`, `modelStreamErrorException`, `validationException`,
//! `internalServerException`, `serviceUnavailableException`, ...) is a classified error, as
//! is an error body ([`decode_error`]): its type is in the `x-amzn-errortype` header.

use std::collections::VecDeque;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tower_llm_core::{FailureKind, UpstreamError, retry_after};

use super::eventstream::{EventMessage, MessageType};
use crate::chat::{
    BlockDelta, ChatChunk, ChatRequest, ChatResponse, ContentBlock, FinishReason, Role, ToolCall,
    ToolCallDelta, ToolChoice, tool_calls_and_blocks,
};
use crate::error::{CallContext as Ctx, looks_like_html};
use crate::meta::ResponseMeta;
use crate::protocol::Step;
use crate::stream::usage;

/// The path of the Converse (or, with `stream`, ConverseStream) call for `model_id`, which
/// is percent-encoded: model ids have colons (`anthropic.claude-3-5-haiku-20241022-v1:0`)
/// and ARNs slashes, and SigV4 signs the path as sent.
///
/// ```
/// use tower_llm_providers::bedrock::wire::converse_path;
///
/// assert_eq!(
///     converse_path("anthropic.claude-3-5-haiku-20241022-v1:0", false),
///     "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
/// );
/// assert_eq!(
///     converse_path("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0", true),
///     "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Famazon.nova-lite-v1%3A0/converse-stream"
/// );
/// ```
pub fn converse_path(model_id: &str, stream: bool) -> String {
    let mut path = String::with_capacity(model_id.len() * 3 + 24);
    path.push_str("/model/");
    for byte in model_id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path.push_str(if stream {
        "/converse-stream"
    } else {
        "/converse"
    });
    path
}

/// Encodes `request` as a Converse (and ConverseStream: the body is the same) JSON body,
/// with its `extra` fields unless they are written for another dialect.
pub fn encode_request(request: &ChatRequest) -> Vec<u8> {
    encode_chat(request, request.extra_for(crate::meta::Dialect::Bedrock))
}

/// Decodes a Converse answer body.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, UpstreamError> {
    decode_chat(
        &standalone_ctx(),
        Bytes::copy_from_slice(body),
        ResponseMeta::default(),
    )
}

/// A context for decoding without a provider (the standalone functions and tests), made once.
pub(crate) fn standalone_ctx() -> Ctx {
    static CONTEXT: std::sync::OnceLock<Ctx> = std::sync::OnceLock::new();
    CONTEXT
        .get_or_init(|| Ctx::standalone::<super::BedrockProtocol>("bedrock", "aws.bedrock"))
        .clone()
}

// ---- wire format: requests -------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<WireSystem<'a>>,
    #[serde(skip_serializing_if = "InferenceConfig::is_empty")]
    inference_config: InferenceConfig<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
}

#[derive(Serialize)]
struct WireSystem<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
}

impl InferenceConfig<'_> {
    fn is_empty(&self) -> bool {
        self.max_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.stop_sequences.is_empty()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireTool<'a> {
    tool_spec: ToolSpec<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: InputSchema<'a>,
}

#[derive(Serialize)]
struct InputSchema<'a> {
    json: &'a Value,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<WireBlock<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum WireBlock<'a> {
    Text(&'a str),
    #[serde(rename_all = "camelCase")]
    ToolUse {
        tool_use_id: &'a str,
        name: &'a str,
        input: Value,
    },
    #[serde(rename_all = "camelCase")]
    ToolResult {
        tool_use_id: &'a str,
        content: [WireSystem<'a>; 1],
    },
    ReasoningContent(WireReasoning<'a>),
    /// A Bedrock block kept raw (one key naming its type), sent as it came.
    #[serde(untagged)]
    Raw(&'a Value),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum WireReasoning<'a> {
    ReasoningText {
        text: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        signature: &'a str,
    },
    RedactedContent(&'a str),
}

impl<'a> WireBlock<'a> {
    fn tool_use(call: &'a ToolCall) -> Self {
        let input = match serde_json::from_str(&call.arguments) {
            Ok(Value::Object(input)) => Value::Object(input),
            // Converse takes an object; a model's malformed arguments go back empty.
            _ => Value::Object(Map::new()),
        };
        WireBlock::ToolUse {
            tool_use_id: &call.id,
            name: &call.name,
            input,
        }
    }

    /// An assistant message's block as it goes back; `None` for empty text (refused by
    /// Bedrock) and for another dialect's raw blocks.
    fn from_block(block: &'a ContentBlock) -> Option<Self> {
        Some(match block {
            ContentBlock::Text { text, .. } if text.is_empty() => return None,
            ContentBlock::Text { text, .. } => WireBlock::Text(text),
            ContentBlock::ToolUse(call) => WireBlock::tool_use(call),
            ContentBlock::Thinking {
                thinking,
                signature,
            } => WireBlock::ReasoningContent(WireReasoning::ReasoningText {
                text: thinking,
                signature,
            }),
            ContentBlock::RedactedThinking { data } => {
                WireBlock::ReasoningContent(WireReasoning::RedactedContent(data))
            }
            ContentBlock::Other(raw) if is_bedrock_block(raw) => WireBlock::Raw(raw),
            // Anthropic's server tools and blocks tagged by `type` are not Converse blocks.
            _ => return None,
        })
    }
}

/// Whether a raw block has Converse's shape: an object with one key, its type.
fn is_bedrock_block(raw: &Value) -> bool {
    raw.as_object()
        .is_some_and(|block| block.len() == 1 && !block.contains_key("type"))
}

fn has_tool_blocks(request: &ChatRequest) -> bool {
    request.messages.iter().any(|m| {
        m.role == Role::Tool
            || !m.tool_calls.is_empty()
            || m.blocks
                .iter()
                .any(|b| matches!(b, ContentBlock::ToolUse(_)))
    })
}

pub(crate) fn encode_chat(request: &ChatRequest, extra: Option<&Map<String, Value>>) -> Vec<u8> {
    let system: Vec<WireSystem<'_>> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System && !m.content.is_empty())
        .map(|m| WireSystem { text: &m.content })
        .collect();
    let mut messages: Vec<WireMessage<'_>> = Vec::with_capacity(request.messages.len());
    for message in request.messages.iter().filter(|m| m.role != Role::System) {
        let (role, blocks) = match message.role {
            Role::User | Role::System => (
                "user",
                if message.content.is_empty() {
                    Vec::new()
                } else {
                    vec![WireBlock::Text(&message.content)]
                },
            ),
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
                    blocks.push(WireBlock::Text(&message.content));
                }
                blocks.extend(message.tool_calls.iter().map(WireBlock::tool_use));
                ("assistant", blocks)
            }
            Role::Tool => (
                "user",
                vec![WireBlock::ToolResult {
                    tool_use_id: message.tool_call_id.as_deref().unwrap_or_default(),
                    content: [WireSystem {
                        text: &message.content,
                    }],
                }],
            ),
        };
        // Results of parallel tool calls belong in one user turn.
        match messages.last_mut() {
            Some(last)
                if message.role == Role::Tool
                    && last.role == "user"
                    && !last.content.is_empty()
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
    let offered = !request.tools.is_empty()
        && (request.tool_choice != Some(ToolChoice::None) || has_tool_blocks(request));
    let tool_config = offered.then(|| ToolConfig {
        tools: request
            .tools
            .iter()
            .map(|tool| WireTool {
                tool_spec: ToolSpec {
                    name: &tool.name,
                    description: tool.description.as_deref(),
                    input_schema: InputSchema {
                        json: &tool.parameters,
                    },
                },
            })
            .collect(),
        tool_choice: request
            .tool_choice
            .as_ref()
            .and_then(|choice| match choice {
                ToolChoice::Auto => Some(serde_json::json!({"auto": {}})),
                ToolChoice::Required => Some(serde_json::json!({"any": {}})),
                ToolChoice::Function(name) => Some(serde_json::json!({"tool": {"name": name}})),
                ToolChoice::None => None,
            }),
    });
    let wire = WireRequest {
        messages,
        system,
        inference_config: InferenceConfig {
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            stop_sequences: &request.stop,
        },
        tool_config,
    };
    crate::chat::encode_with_extra(&wire, extra, crate::chat::body_size_hint(request))
}

// ---- wire format: responses ------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    output: Option<WireOutput>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct WireOutput {
    #[serde(default)]
    message: Option<WireAnswer>,
}

#[derive(Deserialize)]
struct WireAnswer {
    #[serde(default)]
    content: Vec<WireContent>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum WireContent {
    Text(String),
    ToolUse(WireToolUse),
    ReasoningContent(WireReasoningOut),
    /// Anything else (citations, images, documents, guard content, types to come), raw.
    #[serde(untagged)]
    Raw(Value),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolUse {
    tool_use_id: String,
    name: String,
    #[serde(default)]
    input: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReasoningOut {
    #[serde(default)]
    reasoning_text: Option<WireReasoningText>,
    #[serde(default)]
    redacted_content: Option<String>,
}

#[derive(Deserialize)]
struct WireReasoningText {
    #[serde(default)]
    text: String,
    #[serde(default)]
    signature: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_write_input_tokens: Option<u64>,
}

impl WireUsage {
    fn usage(&self) -> tower_llm_core::Usage {
        // `inputTokens` leaves out cache reads and writes; core's `Usage` counts every
        // prompt token. Counts come from the server: saturate rather than overflow.
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let written = self.cache_write_input_tokens.unwrap_or(0);
        let input = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(read)
            .saturating_add(written);
        usage(input, self.output_tokens.unwrap_or(0), read)
    }
}

/// Converse's `stopReason` as a [`FinishReason`].
pub(crate) fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "content_filtered" | "guardrail_intervened" => FinishReason::ContentFilter,
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

fn reasoning_block(reasoning: WireReasoningOut) -> Option<ContentBlock> {
    match reasoning {
        WireReasoningOut {
            reasoning_text: Some(text),
            ..
        } => Some(ContentBlock::Thinking {
            thinking: text.text,
            signature: text.signature.unwrap_or_default(),
        }),
        WireReasoningOut {
            redacted_content: Some(data),
            ..
        } => Some(ContentBlock::RedactedThinking { data }),
        _ => None,
    }
}

/// Decodes a Converse answer body (the status was a success).
pub(crate) fn decode_chat(
    ctx: &Ctx,
    body: Bytes,
    meta: ResponseMeta,
) -> Result<ChatResponse, UpstreamError> {
    let wire: WireResponse = serde_json::from_slice(&body)
        .map_err(|e| ctx.malformed("Converse answer is not valid JSON", &body, e))?;
    let Some(answer) = wire.output.and_then(|output| output.message) else {
        return Err(ctx.malformed(
            "Converse answer",
            &body,
            "no `output.message` in the answer",
        ));
    };
    let mut response = ChatResponse {
        meta,
        finish_reason: wire.stop_reason.as_deref().map(finish_reason),
        usage: wire.usage.as_ref().map(WireUsage::usage),
        extra: wire.extra,
        ..ChatResponse::default()
    };
    let mut blocks = Vec::with_capacity(answer.content.len());
    for block in answer.content {
        blocks.push(match block {
            WireContent::Text(text) => {
                response.content.push_str(&text);
                ContentBlock::Text {
                    text,
                    citations: Vec::new(),
                }
            }
            WireContent::ToolUse(call) => ContentBlock::ToolUse(ToolCall {
                id: call.tool_use_id,
                name: call.name,
                arguments: arguments_text(&call.input),
            }),
            WireContent::ReasoningContent(reasoning) => match reasoning_block(reasoning) {
                Some(block) => block,
                None => ContentBlock::Other(serde_json::json!({"reasoningContent": {}})),
            },
            WireContent::Raw(raw) => ContentBlock::Other(raw),
        });
    }
    (response.tool_calls, response.blocks) = tool_calls_and_blocks(blocks);
    Ok(response)
}

// ---- wire format: stream events --------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart {
    content_block_index: u32,
    #[serde(default)]
    start: Option<StartKind>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum StartKind {
    #[serde(rename_all = "camelCase")]
    ToolUse { tool_use_id: String, name: String },
    #[serde(untagged)]
    Raw(Value),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDeltaEvent {
    content_block_index: u32,
    delta: DeltaKind,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum DeltaKind {
    Text(String),
    ToolUse {
        #[serde(default)]
        input: String,
    },
    ReasoningContent(ReasoningDelta),
    Citation(Value),
    #[serde(untagged)]
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum ReasoningDelta {
    Text(String),
    Signature(String),
    RedactedContent(String),
    #[serde(untagged)]
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageStop {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// The kind of each block a stream has started, by the block's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Started {
    Text,
    /// The `n`th tool call of the answer.
    Tool(u32),
    Reasoning,
    Redacted,
    Other,
}

/// Decodes ConverseStream events into chunks; the stream is complete once it has had both
/// `messageStop` and `metadata`. Unlike Anthropic's, it learns no model name: ConverseStream
/// never sends one (the model is the one the request's URL named).
#[derive(Debug, Default)]
pub(crate) struct StreamDecoder {
    /// The blocks started so far, with their index, in order.
    blocks: Vec<(u32, Started)>,
    tool_calls: u32,
    stopped: bool,
    metadata: bool,
}

impl StreamDecoder {
    /// Whether the stream has had its last event.
    pub(crate) fn finished(&self) -> bool {
        self.stopped && self.metadata
    }

    /// Decodes one message of the stream: an event, or an exception or error (an `Err`).
    pub(crate) fn message(
        &mut self,
        ctx: &Ctx,
        message: &EventMessage,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        match message.message_type {
            MessageType::Event => self.event(ctx, &message.kind, &message.payload, out),
            MessageType::Exception => Err(exception(ctx, &message.kind, &message.payload)),
            MessageType::Error => {
                let text = match &message.error_message {
                    Some(text) => format!("{}: {text}", message.kind),
                    None => message.kind.clone(),
                };
                Err(ctx.with_body(
                    ctx.error(FailureKind::ServerError, format!("stream error: {text}")),
                    message.payload.clone(),
                ))
            }
        }
    }

    /// Decodes one event, named by its `:event-type`, with its JSON payload.
    pub(crate) fn event(
        &mut self,
        ctx: &Ctx,
        event_type: &str,
        payload: &[u8],
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        let malformed = |e: &dyn std::fmt::Display| {
            ctx.malformed(
                "stream event is not valid JSON",
                &Bytes::copy_from_slice(payload),
                e,
            )
        };
        match event_type {
            "contentBlockStart" => {
                let event: BlockStart =
                    serde_json::from_slice(payload).map_err(|e| malformed(&e))?;
                let index = event.content_block_index;
                match event.start {
                    Some(StartKind::ToolUse { tool_use_id, name }) => {
                        let call = self.tool_calls;
                        self.start(ctx, payload, index, Started::Tool(call))?;
                        self.tool_calls += 1;
                        out.push_back(ChatChunk::Block(BlockDelta::Start {
                            index,
                            block: ContentBlock::ToolUse(ToolCall {
                                id: tool_use_id.clone(),
                                name: name.clone(),
                                arguments: String::new(),
                            }),
                        }));
                        out.push_back(ChatChunk::ToolCall(ToolCallDelta {
                            index: call,
                            id: Some(tool_use_id),
                            name: Some(name),
                            arguments: String::new(),
                        }));
                    }
                    Some(StartKind::Raw(raw)) => {
                        self.start(ctx, payload, index, Started::Other)?;
                        out.push_back(ChatChunk::Block(BlockDelta::Start {
                            index,
                            block: ContentBlock::Other(raw),
                        }));
                    }
                    None => {}
                }
            }
            "contentBlockDelta" => {
                let event: BlockDeltaEvent =
                    serde_json::from_slice(payload).map_err(|e| malformed(&e))?;
                self.delta(ctx, payload, event, out)?;
            }
            "messageStop" => {
                let event: MessageStop =
                    serde_json::from_slice(payload).map_err(|e| malformed(&e))?;
                self.stopped = true;
                if let Some(reason) = event.stop_reason {
                    out.push_back(ChatChunk::Finish(finish_reason(&reason)));
                }
            }
            "metadata" => {
                let event: Metadata = serde_json::from_slice(payload).map_err(|e| malformed(&e))?;
                self.metadata = true;
                if let Some(u) = event.usage {
                    out.push_back(ChatChunk::Usage(u.usage()));
                }
            }
            // `messageStart` says only the role; `contentBlockStop` nothing a chunk carries;
            // event types to come are skipped, as the SDKs do.
            _ => {}
        }
        Ok(if self.finished() {
            Step::Done
        } else {
            Step::Continue
        })
    }

    fn delta(
        &mut self,
        ctx: &Ctx,
        payload: &[u8],
        event: BlockDeltaEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<(), UpstreamError> {
        let index = event.content_block_index;
        let started = self.kind_of(index);
        let mut start = |decoder: &mut Self, kind, block| -> Result<(), UpstreamError> {
            decoder.start(ctx, payload, index, kind)?;
            out.push_back(ChatChunk::Block(BlockDelta::Start { index, block }));
            Ok(())
        };
        match event.delta {
            DeltaKind::Text(text) => {
                if started.is_none() {
                    let block = ContentBlock::Text {
                        text: String::new(),
                        citations: Vec::new(),
                    };
                    start(self, Started::Text, block)?;
                }
                out.push_back(ChatChunk::Content(text));
            }
            DeltaKind::ToolUse { input } => {
                let Some(Started::Tool(call)) = started else {
                    return Err(self.unexpected(ctx, payload, index, "toolUse"));
                };
                out.push_back(ChatChunk::ToolCall(ToolCallDelta {
                    index: call,
                    id: None,
                    name: None,
                    arguments: input,
                }));
            }
            DeltaKind::ReasoningContent(ReasoningDelta::RedactedContent(data)) => {
                // Redacted reasoning comes whole, in one delta: it starts the block.
                if started.is_some() {
                    return Err(self.unexpected(ctx, payload, index, "redactedContent"));
                }
                start(
                    self,
                    Started::Redacted,
                    ContentBlock::RedactedThinking { data },
                )?;
            }
            DeltaKind::ReasoningContent(reasoning) => {
                match started {
                    None => {
                        let block = ContentBlock::Thinking {
                            thinking: String::new(),
                            signature: String::new(),
                        };
                        start(self, Started::Reasoning, block)?;
                    }
                    Some(Started::Reasoning) => {}
                    Some(_) => {
                        return Err(self.unexpected(ctx, payload, index, "reasoningContent"));
                    }
                }
                match reasoning {
                    ReasoningDelta::Text(text) => {
                        out.push_back(ChatChunk::Block(BlockDelta::Thinking { index, text }));
                    }
                    ReasoningDelta::Signature(signature) => {
                        out.push_back(ChatChunk::Block(BlockDelta::Signature { index, signature }));
                    }
                    ReasoningDelta::RedactedContent(_) | ReasoningDelta::Other(_) => {}
                }
            }
            DeltaKind::Citation(citation) => {
                out.push_back(ChatChunk::Block(BlockDelta::Citation { index, citation }));
            }
            DeltaKind::Other(_) => {}
        }
        Ok(())
    }

    /// The kind of the block at `index`, if it has started (most deltas are for the last).
    fn kind_of(&self, index: u32) -> Option<Started> {
        match self.blocks.last() {
            Some(&(last, kind)) if last == index => Some(kind),
            _ => self
                .blocks
                .iter()
                .rev()
                .find(|(i, _)| *i == index)
                .map(|&(_, kind)| kind),
        }
    }

    /// Records a block start, refusing a stream with more blocks than any answer has (the
    /// lists here and in a `ChatAccumulator` must stay bounded) or a block started twice.
    fn start(
        &mut self,
        ctx: &Ctx,
        payload: &[u8],
        index: u32,
        kind: Started,
    ) -> Result<(), UpstreamError> {
        if self.blocks.len() >= MAX_BLOCKS {
            return Err(ctx.malformed(
                "stream",
                &Bytes::copy_from_slice(payload),
                format!("more than {MAX_BLOCKS} content blocks"),
            ));
        }
        if self.kind_of(index).is_some() {
            return Err(ctx.malformed(
                "stream",
                &Bytes::copy_from_slice(payload),
                format!("content block {index} started twice"),
            ));
        }
        self.blocks.push((index, kind));
        Ok(())
    }

    fn unexpected(&self, ctx: &Ctx, payload: &[u8], index: u32, what: &str) -> UpstreamError {
        let found = match self.kind_of(index) {
            None => "not started".to_owned(),
            Some(kind) => format!("a {kind:?} block"),
        };
        ctx.malformed(
            "stream",
            &Bytes::copy_from_slice(payload),
            format!("{what} delta for content block {index}, which is {found}"),
        )
    }
}

/// The most content blocks a streamed answer may have.
const MAX_BLOCKS: usize = 4096;

// ---- errors ------------------------------------------------------------------------------

/// The failure kind of a Bedrock error type (`ThrottlingException`, or in a stream
/// `throttlingException`), if it names one.
fn kind_of_type(error_type: &str) -> Option<FailureKind> {
    let name = error_type.to_ascii_lowercase();
    Some(match name.as_str() {
        "throttlingexception" | "toomanyrequestsexception" => FailureKind::RateLimited,
        "servicequotaexceededexception" => FailureKind::QuotaExhausted,
        "serviceunavailableexception" | "modelnotreadyexception" => FailureKind::Overloaded,
        "modeltimeoutexception" => FailureKind::Timeout,
        "internalserverexception" | "modelerrorexception" | "modelstreamerrorexception" => {
            FailureKind::ServerError
        }
        "validationexception" | "serializationexception" => FailureKind::BadRequest,
        "accessdeniedexception" => FailureKind::Forbidden,
        "resourcenotfoundexception" => FailureKind::NotFound,
        // AWS answers a bad or expired signature or key with 403; the credentials are at
        // fault, not their permissions.
        "unrecognizedclientexception"
        | "invalidsignatureexception"
        | "incompletesignatureexception"
        | "missingauthenticationtokenexception"
        | "expiredtokenexception"
        | "invalidclienttokenid" => FailureKind::Unauthorized,
        _ => return None,
    })
}

/// Whether a validation message says the prompt is too long for the model.
fn says_too_long(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "too long",
        "too many input tokens",
        "context length",
        "context window",
        "maximum context",
    ]
    .iter()
    .any(|phrase| message.contains(phrase))
}

/// The error type named by `x-amzn-errortype` (`ThrottlingException:http://internal...`)
/// or a body's `__type` / `code` (`com.amazon.coral.service#UnrecognizedClientException`).
fn error_type(headers: &HeaderMap, body: Option<&Value>) -> Option<String> {
    let raw = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            let body = body?;
            ["__type", "code", "Code"]
                .iter()
                .find_map(|key| body.get(*key)?.as_str().map(str::to_owned))
        })?;
    let name = raw.split(':').next().unwrap_or_default();
    let name = name.rsplit('#').next().unwrap_or_default().trim();
    (!name.is_empty()).then(|| name.chars().take(128).collect())
}

fn message_of(body: Option<&Value>) -> Option<String> {
    let body = body?;
    ["message", "Message"]
        .iter()
        .find_map(|key| body.get(*key)?.as_str().map(str::to_owned))
}

fn classify(status_kind: FailureKind, error_type: Option<&str>, message: &str) -> FailureKind {
    match error_type.and_then(kind_of_type) {
        Some(FailureKind::BadRequest) if says_too_long(message) => {
            FailureKind::ContextLengthExceeded
        }
        Some(kind) => kind,
        None if status_kind == FailureKind::BadRequest && says_too_long(message) => {
            FailureKind::ContextLengthExceeded
        }
        None => status_kind,
    }
}

/// The classified error of a non-success Bedrock answer: the kind from the error type
/// (`x-amzn-errortype`, else the body's `__type`), else from the status; the message from
/// the body's `message`; the type as the error's code; the `x-amzn-requestid`; the retry
/// hint of the headers; the body (scrubbed, like the message, of the provider's key).
pub(crate) fn error_for_status(
    ctx: &Ctx,
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
) -> UpstreamError {
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let error_type = error_type(headers, json.as_ref());
    let message = match message_of(json.as_ref()) {
        Some(message) => message,
        None if looks_like_html(&body) => "HTML error page".to_owned(),
        None if body.is_empty() => "empty error body".to_owned(),
        None => "error body is not Bedrock's JSON error".to_owned(),
    };
    let status_kind = FailureKind::from_status(status).unwrap_or(FailureKind::Other);
    let kind = classify(status_kind, error_type.as_deref(), &message);
    let mut error = ctx
        .error(kind, message)
        .with_status(status)
        .with_retry_after(retry_after(headers));
    if let Some(error_type) = error_type {
        error = error.with_code(ctx.scrub(error_type));
    }
    if let Some(id) = request_id(headers) {
        error = error.with_request_id(ctx.scrub(id));
    }
    ctx.with_body(error, body)
}

/// The classified error of a non-success Bedrock answer, for callers outside a provider
/// (tests, a transport of your own): the kind from the error type (`x-amzn-errortype`, else
/// the body's `__type`), else from the status (a `ValidationException` saying the input is
/// too long is `ContextLengthExceeded`); the message from the body's `message`; the type as
/// the error's code; the `x-amzn-requestid`; the retry hint of the headers; the body.
pub fn decode_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    error_for_status(
        &standalone_ctx(),
        status,
        headers,
        Bytes::copy_from_slice(body),
    )
}

/// Bedrock's request id (`x-amzn-requestid`), cut to 256 bytes.
pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("x-amzn-requestid")?.to_str().ok()?.trim();
    if value.is_empty() {
        return None;
    }
    Some(value.chars().take(256).collect())
}

/// The classified error of an exception message inside a stream: the kind from its
/// `:exception-type`, the message from its payload's `message`. A
/// `modelStreamErrorException` carrying the model's `originalStatusCode` is classified by
/// that status when it says more (a 429 is rate limiting).
pub(crate) fn exception(ctx: &Ctx, exception_type: &str, payload: &[u8]) -> UpstreamError {
    let json: Option<Value> = serde_json::from_slice(payload).ok();
    let message = message_of(json.as_ref()).unwrap_or_else(|| exception_type.to_owned());
    let original_kind = json
        .as_ref()
        .and_then(|j| j.get("originalStatusCode")?.as_u64())
        .and_then(|code| StatusCode::from_u16(u16::try_from(code).ok()?).ok())
        .and_then(FailureKind::from_status);
    let kind = match (
        classify(FailureKind::ServerError, Some(exception_type), &message),
        original_kind,
    ) {
        (FailureKind::ServerError, Some(original)) => original,
        (kind, _) => kind,
    };
    let error = ctx
        .error(kind, message)
        .with_code(ctx.scrub(exception_type.chars().take(128).collect()));
    ctx.with_body(error, Bytes::copy_from_slice(payload))
}

/// The classified error of an in-stream exception, for callers outside a provider.
pub fn decode_exception(exception_type: &str, payload: &[u8]) -> UpstreamError {
    exception(&standalone_ctx(), exception_type, payload)
}

/// A ConverseStream decoder without I/O: messages of the event stream go in, chunks come
/// out. The provider's stream is this over an [`EventStreamDecoder`](super::eventstream::EventStreamDecoder)
/// and an HTTP body.
///
/// ```
/// use std::collections::VecDeque;
/// use tower_llm_providers::ChatChunk;
/// use tower_llm_providers::bedrock::wire::ConverseStreamDecoder;
///
/// let mut decoder = ConverseStreamDecoder::default();
/// let mut chunks = VecDeque::new();
/// let delta = br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#;
/// assert!(!decoder.event("contentBlockDelta", delta, &mut chunks).unwrap());
/// assert!(chunks.contains(&ChatChunk::Content("Hi".into())));
/// decoder.event("messageStop", br#"{"stopReason":"end_turn"}"#, &mut chunks).unwrap();
/// let usage = br#"{"usage":{"inputTokens":5,"outputTokens":1,"totalTokens":6}}"#;
/// assert!(decoder.event("metadata", usage, &mut chunks).unwrap());
/// assert!(decoder.finish().is_ok());
/// ```
#[derive(Debug)]
pub struct ConverseStreamDecoder {
    decoder: StreamDecoder,
    ctx: Ctx,
}

impl Default for ConverseStreamDecoder {
    fn default() -> Self {
        ConverseStreamDecoder {
            decoder: StreamDecoder::default(),
            ctx: standalone_ctx(),
        }
    }
}

impl ConverseStreamDecoder {
    /// Decodes one event, appending its chunks to `out`; `true` once the stream is complete.
    pub fn event(
        &mut self,
        event_type: &str,
        payload: &[u8],
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, UpstreamError> {
        let step = self.decoder.event(&self.ctx, event_type, payload, out)?;
        Ok(matches!(step, Step::Done))
    }

    /// Decodes one message of the event stream (exceptions and errors are `Err`s);
    /// `true` once the stream is complete.
    pub fn message(
        &mut self,
        message: &EventMessage,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, UpstreamError> {
        let step = self.decoder.message(&self.ctx, message, out)?;
        Ok(matches!(step, Step::Done))
    }

    /// Ends the stream: an error unless it had both `messageStop` and `metadata`.
    pub fn finish(&self) -> Result<(), UpstreamError> {
        if self.decoder.finished() {
            Ok(())
        } else {
            Err(incomplete(&self.ctx))
        }
    }
}

/// The error of a stream whose body ended before `messageStop` and `metadata`.
pub(crate) fn incomplete(ctx: &Ctx) -> UpstreamError {
    ctx.error(
        FailureKind::Transport,
        "stream ended without messageStop and metadata (connection cut or proxy timeout)",
    )
}
