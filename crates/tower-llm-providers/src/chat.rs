//! One set of chat and embedding types, mapped to each provider's wire format.
//!
//! A [`ChatRequest`] models what every provider understands; anything else goes in its
//! [`extra`](ChatRequest::extra) map, which is merged into the provider's JSON body as is (so
//! it must be spelled the provider's way). Responses keep the provider's unmodelled top-level
//! fields in their own `extra` map.

use serde_json::{Map, Value};

use crate::meta::{Dialect, ResponseMeta};
use tower_llm_core::{
    CacheControl, ClassifyResponse, Deterministic, Fingerprint, FingerprintHasher, Outcome,
    RateLimitHeaders, RequestCost, ResponseUsage, Usage, estimate_text_tokens,
};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions for the model. Anthropic and Gemini take these out of the message list and
    /// send them in their own system field.
    System,
    /// The person (or program) asking.
    User,
    /// The model's earlier answers, possibly with tool calls.
    Assistant,
    /// The result of a tool call, answering [`Message::tool_call_id`].
    Tool,
}

impl Role {
    /// The OpenAI spelling of the role.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text (may be empty for an assistant message that only calls tools).
    pub content: String,
    /// An optional participant name (OpenAI only).
    pub name: Option<String>,
    /// Tool calls made by an assistant message.
    pub tool_calls: Vec<ToolCall>,
    /// For a [`Role::Tool`] message: the id of the call it answers. Gemini matches results
    /// by function name instead, so for Gemini put the function name in [`name`](Self::name).
    pub tool_call_id: Option<String>,
    /// An assistant message's content blocks, in order, as Anthropic sent them (see
    /// [`ChatResponse::blocks`]). When not empty, Anthropic is sent these instead of
    /// `content` and `tool_calls`, so that thinking, server tools and citations go back as
    /// they came; OpenAI and Gemini are sent `content` and `tool_calls` and never these.
    /// [`ChatResponse::to_message`] fills both.
    pub blocks: Vec<ContentBlock>,
}

impl Message {
    fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            blocks: Vec::new(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new(Role::Assistant, content)
    }

    /// An assistant message that calls tools.
    pub fn assistant_tool_calls(tool_calls: Vec<ToolCall>) -> Self {
        Message {
            tool_calls,
            ..Message::new(Role::Assistant, "")
        }
    }

    /// The result of the tool call `tool_call_id` (of the function `name`).
    pub fn tool_result(
        tool_call_id: impl Into<String>,
        name: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        Message {
            tool_call_id: Some(tool_call_id.into()),
            name: Some(name.into()),
            ..Message::new(Role::Tool, content)
        }
    }
}

/// A function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// A JSON Schema of its arguments.
    pub parameters: Value,
}

/// A call the model made to a [`Tool`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// The provider's id for the call (Gemini has none: the function name is used).
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments, as JSON text.
    pub arguments: String,
}

/// One block of an answer's content, for the providers whose answers are lists of typed
/// blocks (Anthropic's Messages API).
///
/// [`ChatResponse::content`] and [`ChatResponse::tool_calls`] flatten an answer's text and
/// tool calls; the blocks keep everything else in its place: the model's thinking and its
/// signature, redacted thinking, the provider's own tools and their results, the citations
/// on each piece of text, and block types this crate does not know, raw. They go back to the
/// provider in the next turn as they came (Anthropic requires thinking blocks back alongside
/// tool use), through [`Message::blocks`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ContentBlock {
    /// Text, with the citations that support it (Anthropic's citation objects, raw:
    /// `char_location`, `page_location`, `web_search_result_location`, ...).
    Text {
        /// The text.
        text: String,
        /// Its citations, raw.
        citations: Vec<Value>,
    },
    /// A call of one of the caller's tools (also in [`ChatResponse::tool_calls`]).
    ToolUse(ToolCall),
    /// The model's reasoning (extended thinking), with the signature the provider checks
    /// when the block is sent back.
    Thinking {
        /// The reasoning text.
        thinking: String,
        /// The provider's signature over it.
        signature: String,
    },
    /// Reasoning the provider encrypted: opaque, sent back as is.
    RedactedThinking {
        /// The encrypted reasoning.
        data: String,
    },
    /// A call of a tool the provider runs itself (`server_tool_use`: web search, web
    /// fetch, code execution; `mcp_tool_use`), the block raw.
    ServerToolUse(Value),
    /// What a provider-run tool returned (`web_search_tool_result`,
    /// `code_execution_tool_result`, `mcp_tool_result`, any `*_tool_result`), the block raw.
    ServerToolResult(Value),
    /// A block type this crate does not model, raw: kept and sent back, never an error.
    Other(Value),
}

impl ContentBlock {
    /// The block for a raw JSON block that is not text, a tool call or thinking, by its
    /// `type`: a server tool's call or result, or another type.
    pub(crate) fn raw(block: Value) -> ContentBlock {
        let kind = block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind == "server_tool_use" || kind == "mcp_tool_use" {
            ContentBlock::ServerToolUse(block)
        } else if kind.ends_with("_tool_result") {
            ContentBlock::ServerToolResult(block)
        } else {
            ContentBlock::Other(block)
        }
    }

    /// Whether the block says something [`ChatResponse::content`] and
    /// [`ChatResponse::tool_calls`] do not: anything but uncited text and tool calls.
    fn is_beyond_text_and_calls(&self) -> bool {
        match self {
            ContentBlock::Text { citations, .. } => !citations.is_empty(),
            ContentBlock::ToolUse(_) => false,
            _ => true,
        }
    }

    fn fingerprint(&self, h: &mut FingerprintHasher) {
        match self {
            ContentBlock::Text { text, citations } => {
                h.write_tag(1);
                h.write_str(text);
                h.write_u64(citations.len() as u64);
                for citation in citations {
                    h.write_json(citation);
                }
            }
            ContentBlock::ToolUse(call) => {
                h.write_tag(2);
                h.write_str(&call.id);
                h.write_str(&call.name);
                h.write_str(&call.arguments);
            }
            ContentBlock::Thinking {
                thinking,
                signature,
            } => {
                h.write_tag(3);
                h.write_str(thinking);
                h.write_str(signature);
            }
            ContentBlock::RedactedThinking { data } => {
                h.write_tag(4);
                h.write_str(data);
            }
            ContentBlock::ServerToolUse(raw) => {
                h.write_tag(5);
                h.write_json(raw);
            }
            ContentBlock::ServerToolResult(raw) => {
                h.write_tag(6);
                h.write_json(raw);
            }
            ContentBlock::Other(raw) => {
                h.write_tag(7);
                h.write_json(raw);
            }
        }
    }
}

/// Keeps the blocks only when they say more than the flattened text and tool calls.
fn keep_blocks_if_needed(blocks: &mut Vec<ContentBlock>) {
    if !blocks.iter().any(ContentBlock::is_beyond_text_and_calls) {
        blocks.clear();
    }
}

/// An answer's tool calls, and its blocks when they say more than its text and tool calls:
/// the calls are moved out of blocks that are not kept, copied from blocks that are.
pub(crate) fn tool_calls_and_blocks(
    blocks: Vec<ContentBlock>,
) -> (Vec<ToolCall>, Vec<ContentBlock>) {
    if blocks.iter().any(ContentBlock::is_beyond_text_and_calls) {
        let calls = blocks
            .iter()
            .filter_map(|block| match block {
                ContentBlock::ToolUse(call) => Some(call.clone()),
                _ => None,
            })
            .collect();
        return (calls, blocks);
    }
    let calls = blocks
        .into_iter()
        .filter_map(|block| match block {
            ContentBlock::ToolUse(call) => Some(call),
            _ => None,
        })
        .collect();
    (calls, Vec::new())
}

/// Whether and which tools the model must call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// The model must not call tools.
    None,
    /// The model must call some tool.
    Required,
    /// The model must call this function.
    Function(String),
}

/// The shape the answer must take.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema's name.
        name: String,
        /// The JSON Schema.
        schema: Value,
        /// Whether the provider must follow the schema exactly (OpenAI `strict`).
        strict: bool,
    },
}

/// A chat completion request, in one shape for every provider.
///
/// ```
/// use tower_llm_providers::{ChatRequest, Message};
///
/// let request = ChatRequest::new("gpt-4o-mini", vec![Message::user("Say hi")])
///     .temperature(0.0)
///     .max_tokens(64);
/// assert_eq!(request.max_tokens, Some(64));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRequest {
    /// The model (for Azure, ignored in favour of the configured deployment).
    pub model: String,
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// The most tokens to generate. Anthropic requires one: its provider uses its configured
    /// default when this is `None`.
    pub max_tokens: Option<u32>,
    /// Sequences that end generation.
    pub stop: Vec<String>,
    /// A seed for reproducible sampling (OpenAI, Gemini; Anthropic has none).
    pub seed: Option<i64>,
    /// Functions the model may call.
    pub tools: Vec<Tool>,
    /// Whether and which tools the model must call.
    pub tool_choice: Option<ToolChoice>,
    /// The shape of the answer.
    pub response_format: Option<ResponseFormat>,
    /// The end user's id, sent to the provider for abuse monitoring (OpenAI `user`, Anthropic
    /// `metadata.user_id`; Gemini has no such field).
    pub user: Option<String>,
    /// Who this request is made for in *your* system (tenant, account, API key label). Never
    /// sent upstream; it only keeps caches and limits apart (see [`Fingerprint`]).
    pub tenant: Option<String>,
    /// Key-value metadata (OpenAI `metadata`; Anthropic and Gemini do not take it and it is
    /// not sent to them).
    pub metadata: Map<String, Value>,
    /// Fields this type does not model, merged into the provider's JSON body as is (to
    /// which providers: see [`extra_dialect`](Self::extra_dialect)).
    pub extra: Map<String, Value>,
    /// The wire format `extra`'s fields are written in.
    ///
    /// `None` (the default): they go as they are to whichever provider gets the request; the
    /// caller knows where it sends. `Some(dialect)`: they go only to a provider of that
    /// dialect (OpenAI, Azure and OpenAI-compatible servers share one). A provider of another
    /// dialect leaves them out, counting them in `tower_llm_providers_fields_dropped_total`,
    /// or, built with `strict_fields(true)`, refuses the request with a `BadRequest` that
    /// names them, before any upstream call. Anthropic and Gemini answer 400 to a field they
    /// do not know: a fallback from OpenAI to Anthropic must not send `frequency_penalty`.
    /// Fields with an equivalent in every dialect are modelled above and mapped (the table
    /// in `docs/providers.md`).
    ///
    /// ```
    /// use serde_json::json;
    /// use tower_llm_providers::{ChatRequest, Dialect, Message};
    ///
    /// let request = ChatRequest::new("gpt-4o-mini", vec![Message::user("Hi")])
    ///     .extra("frequency_penalty", json!(0.5))
    ///     .extra_from(Dialect::OpenAi);
    /// assert_eq!(request.extra_dialect, Some(Dialect::OpenAi));
    /// ```
    pub extra_dialect: Option<Dialect>,
}

impl ChatRequest {
    /// A request for `model` with these `messages`.
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        ChatRequest {
            model: model.into(),
            messages,
            ..ChatRequest::default()
        }
    }

    /// Sets the temperature.
    pub fn temperature(mut self, temperature: f64) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the output budget.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: i64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Adds a tool.
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// Sets the tenant (see the field's docs).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets an unmodelled field of the provider's body.
    pub fn extra(mut self, name: impl Into<String>, value: Value) -> Self {
        self.extra.insert(name.into(), value);
        self
    }

    /// Says which dialect the [`extra`](Self::extra) fields are written in, so that only a
    /// provider of that dialect gets them (see [`extra_dialect`](Self::extra_dialect)).
    pub fn extra_from(mut self, dialect: Dialect) -> Self {
        self.extra_dialect = Some(dialect);
        self
    }

    /// Asks for a streamed answer (see [`Streaming`]).
    pub fn streaming(self) -> Streaming<ChatRequest> {
        Streaming(self)
    }

    /// The `extra` fields a provider of `dialect` sends: all of them, or none when they are
    /// written for another dialect.
    pub(crate) fn extra_for(&self, dialect: Dialect) -> Option<&Map<String, Value>> {
        match self.extra_dialect {
            _ if self.extra.is_empty() => None,
            Some(from) if from != dialect => None,
            _ => Some(&self.extra),
        }
    }

    /// The dialect of `extra` fields a provider of `dialect` leaves out, if there are any.
    pub(crate) fn foreign_extra(&self, dialect: Dialect) -> Option<Dialect> {
        self.extra_dialect
            .filter(|from| *from != dialect && !self.extra.is_empty())
    }
}

/// A field of [`ChatRequest`] that some APIs have no equivalent for: a protocol names the
/// ones its encoder leaves out ([`Protocol::unsupported_fields`](crate::Protocol::unsupported_fields)),
/// and the provider counts them in `tower_llm_providers_fields_dropped_total` (`from =
/// "common"`) or, built with `strict_fields(true)`, refuses a request that sets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChatField {
    /// [`ChatRequest::seed`].
    Seed,
    /// [`ChatRequest::response_format`] (other than plain text).
    ResponseFormat,
    /// [`ChatRequest::user`].
    User,
    /// [`ChatRequest::metadata`].
    Metadata,
}

impl ChatField {
    /// The field's name, as OpenAI's API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatField::Seed => "seed",
            ChatField::ResponseFormat => "response_format",
            ChatField::User => "user",
            ChatField::Metadata => "metadata",
        }
    }

    /// Whether `request` sets this field (a plain-text response format is the default and
    /// asks for nothing).
    pub fn is_set(self, request: &ChatRequest) -> bool {
        match self {
            ChatField::Seed => request.seed.is_some(),
            ChatField::ResponseFormat => request
                .response_format
                .as_ref()
                .is_some_and(|format| *format != ResponseFormat::Text),
            ChatField::User => request.user.is_some(),
            ChatField::Metadata => !request.metadata.is_empty(),
        }
    }

    /// Those of `fields` that `request` sets: what a protocol without them leaves out.
    pub fn set_in(fields: &[ChatField], request: &ChatRequest) -> Vec<ChatField> {
        fields
            .iter()
            .copied()
            .filter(|field| field.is_set(request))
            .collect()
    }
}

/// Asks a provider for a streamed answer: `Service<Streaming<ChatRequest>>` answers with a
/// [`ChatStream`](crate::ChatStream) of [`ChatChunk`]s.
#[derive(Clone, Debug, PartialEq)]
pub struct Streaming<R>(pub R);

fn write_f64(h: &mut FingerprintHasher, value: Option<f64>) {
    match value {
        None => h.write_tag(0),
        Some(v) => {
            h.write_tag(1);
            // -0.0 and 0.0 ask for the same thing.
            h.write_u64(if v == 0.0 { 0 } else { v.to_bits() });
        }
    }
}

fn write_opt_str(h: &mut FingerprintHasher, value: Option<&str>) {
    h.write_option(value);
}

impl Fingerprint for Message {
    fn fingerprint(&self, h: &mut FingerprintHasher) {
        h.write_str(self.role.as_str());
        h.write_str(&self.content);
        write_opt_str(h, self.name.as_deref());
        write_opt_str(h, self.tool_call_id.as_deref());
        h.write_u64(self.tool_calls.len() as u64);
        for call in &self.tool_calls {
            h.write_str(&call.id);
            h.write_str(&call.name);
            h.write_str(&call.arguments);
        }
        h.write_u64(self.blocks.len() as u64);
        for block in &self.blocks {
            block.fingerprint(h);
        }
    }
}

/// Everything that changes the answer goes in: model, messages, sampling, stop, seed, tools,
/// tool choice, response format, metadata and `extra`; and the caller's identity: `user` and
/// `tenant`.
///
/// The API key is not part of the request, so two tenants whose requests go through the same
/// cache with different keys (one dedup layer in front of several providers, or a cache shared
/// between deployments through Redis) must set [`ChatRequest::tenant`], or use one
/// [`FingerprintKey`](tower_llm_core::FingerprintKey) per tenant. One provider service behind
/// one in-process cache serves one key, where the model name already tells requests apart.
impl Fingerprint for ChatRequest {
    fn fingerprint(&self, h: &mut FingerprintHasher) {
        h.write_str("tower-llm-providers/chat");
        write_opt_str(h, self.tenant.as_deref());
        write_opt_str(h, self.user.as_deref());
        h.write_str(&self.model);
        h.write_u64(self.messages.len() as u64);
        for message in &self.messages {
            message.fingerprint(h);
        }
        write_f64(h, self.temperature);
        write_f64(h, self.top_p);
        h.write_option(self.max_tokens.map(u64::from).as_ref());
        h.write_u64(self.stop.len() as u64);
        for stop in &self.stop {
            h.write_str(stop);
        }
        h.write_option(self.seed.map(|s| s as u64).as_ref());
        h.write_u64(self.tools.len() as u64);
        for tool in &self.tools {
            h.write_str(&tool.name);
            write_opt_str(h, tool.description.as_deref());
            h.write_json(&tool.parameters);
        }
        match &self.tool_choice {
            None => h.write_tag(0),
            Some(ToolChoice::Auto) => h.write_tag(1),
            Some(ToolChoice::None) => h.write_tag(2),
            Some(ToolChoice::Required) => h.write_tag(3),
            Some(ToolChoice::Function(name)) => {
                h.write_tag(4);
                h.write_str(name);
            }
        }
        match &self.response_format {
            None => h.write_tag(0),
            Some(ResponseFormat::Text) => h.write_tag(1),
            Some(ResponseFormat::JsonObject) => h.write_tag(2),
            Some(ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            }) => {
                h.write_tag(3);
                h.write_str(name);
                h.write_json(schema);
                h.write_tag(u8::from(*strict));
            }
        }
        write_map(h, &self.metadata);
        write_map(h, &self.extra);
        // Which providers get `extra` changes the body one of them sends; without fields,
        // or without a dialect (the key every earlier version computed), it changes nothing.
        if let (Some(dialect), false) = (self.extra_dialect, self.extra.is_empty()) {
            h.write_str(dialect.as_str());
        }
    }
}

impl<R: Fingerprint> Fingerprint for Streaming<R> {
    /// A streamed answer is a different response type: it never shares a key with the same
    /// request asked whole.
    fn fingerprint(&self, h: &mut FingerprintHasher) {
        h.write_str("stream");
        self.0.fingerprint(h);
    }
}

/// Serializes a wire body with `extra` merged in. An `extra` field that a modelled field also
/// sets wins, rather than being sent twice (which providers read differently).
pub(crate) fn encode_with_extra<T: serde::Serialize>(
    wire: &T,
    extra: Option<&Map<String, Value>>,
    size_hint: usize,
) -> Vec<u8> {
    // Serializing borrowed strings and JSON values cannot fail.
    let Some(extra) = extra.filter(|extra| !extra.is_empty()) else {
        let mut body = Vec::with_capacity(size_hint);
        return match serde_json::to_writer(&mut body, wire) {
            Ok(()) => body,
            Err(_) => Vec::new(),
        };
    };
    let mut body = serde_json::to_value(wire).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut body {
        for (name, value) in extra {
            fields.insert(name.clone(), value.clone());
        }
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Roughly the size of `request`'s JSON, to allocate the body once.
pub(crate) fn body_size_hint(request: &ChatRequest) -> usize {
    let text: usize = request
        .messages
        .iter()
        .map(|m| {
            m.content.len()
                + 48
                + m.tool_calls
                    .iter()
                    .map(|c| c.arguments.len() + 96)
                    .sum::<usize>()
                + m.blocks.iter().map(block_size_hint).sum::<usize>()
        })
        .sum();
    text + request.tools.len() * 512 + 256
}

fn block_size_hint(block: &ContentBlock) -> usize {
    match block {
        ContentBlock::Text { text, citations } => text.len() + 32 + citations.len() * 256,
        ContentBlock::ToolUse(call) => call.arguments.len() + 96,
        ContentBlock::Thinking {
            thinking,
            signature,
        } => thinking.len() + signature.len() + 48,
        ContentBlock::RedactedThinking { data } => data.len() + 48,
        // Raw blocks are rare (server tools): a guess, not a second serialization.
        ContentBlock::ServerToolUse(_)
        | ContentBlock::ServerToolResult(_)
        | ContentBlock::Other(_) => 1024,
    }
}

fn write_map(h: &mut FingerprintHasher, map: &Map<String, Value>) {
    h.write_u64(map.len() as u64);
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (name, value) in entries {
        h.write_str(name);
        h.write_json(value);
    }
}

/// Default output budget assumed when a request names none, as in core's JSON estimate.
const ASSUMED_OUTPUT_TOKENS: u64 = tower_llm_core::DEFAULT_OUTPUT_TOKENS;

impl RequestCost for ChatRequest {
    /// The text of every message, tool definition and tool call, plus `max_tokens` (or 1024
    /// when unset), estimated with core's [`estimate_text_tokens`].
    fn estimated_tokens(&self) -> u64 {
        let messages: u64 = self
            .messages
            .iter()
            .map(|m| {
                estimate_text_tokens(&m.content)
                    + m.tool_calls
                        .iter()
                        .map(|c| estimate_text_tokens(&c.name) + estimate_text_tokens(&c.arguments))
                        .sum::<u64>()
                    + m.blocks
                        .iter()
                        .map(|b| match b {
                            ContentBlock::Thinking { thinking, .. } => {
                                estimate_text_tokens(thinking)
                            }
                            _ => 0,
                        })
                        .sum::<u64>()
            })
            .sum();
        let tools: u64 = self
            .tools
            .iter()
            .map(|t| {
                estimate_text_tokens(&t.name)
                    + t.description.as_deref().map_or(0, estimate_text_tokens)
                    + estimate_text_tokens(&t.parameters.to_string())
            })
            .sum();
        messages + tools + self.max_tokens.map_or(ASSUMED_OUTPUT_TOKENS, u64::from)
    }
}

impl Deterministic for ChatRequest {
    /// Core's rule: a seed, or a temperature of zero.
    fn is_deterministic(&self) -> bool {
        self.seed.is_some() || self.temperature == Some(0.0)
    }
}

impl<R: RequestCost> RequestCost for Streaming<R> {
    fn estimated_tokens(&self) -> u64 {
        self.0.estimated_tokens()
    }
}

impl<R: Deterministic> Deterministic for Streaming<R> {
    fn is_deterministic(&self) -> bool {
        self.0.is_deterministic()
    }
}

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FinishReason {
    /// It finished its answer or hit a stop sequence.
    Stop,
    /// It ran out of output tokens.
    Length,
    /// It called tools and waits for their results.
    ToolCalls,
    /// The provider's content filter stopped it.
    ContentFilter,
    /// The model declined to answer: OpenAI sent a `refusal` instead of content (its text is
    /// in [`ChatResponse::refusal`] or [`ChatChunk::Refusal`]), or Anthropic stopped with
    /// `stop_reason: "refusal"`.
    Refusal,
    /// Anything else, in the provider's words.
    Other(String),
}

impl FinishReason {
    /// Its name: `stop`, `length`, `tool_calls`, `content_filter`, `refusal`, or the
    /// provider's word (the OpenTelemetry GenAI `gen_ai.response.finish_reasons` values).
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Refusal => "refusal",
            FinishReason::Other(other) => other,
        }
    }
}

/// A chat completion.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ChatResponse {
    /// The provider's id for the response.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// The answer's text (all text parts, joined).
    pub content: String,
    /// Tools the model called.
    pub tool_calls: Vec<ToolCall>,
    /// The answer's content blocks in order (Anthropic), when it has any that `content` and
    /// `tool_calls` cannot carry: thinking, redacted thinking, the provider's own tools and
    /// their results, cited text, unknown block types. Empty otherwise, and always for
    /// OpenAI and Gemini. Sent back by [`to_message`](Self::to_message).
    pub blocks: Vec<ContentBlock>,
    /// The model's explanation when it declined to answer (OpenAI `message.refusal`); the
    /// finish reason is then [`FinishReason::Refusal`].
    pub refusal: Option<String>,
    /// Why it stopped.
    pub finish_reason: Option<FinishReason>,
    /// Tokens used.
    pub usage: Option<Usage>,
    /// The provider's top-level fields this type does not model.
    pub extra: Map<String, Value>,
    /// The HTTP facts of the answer: status, request id, rate-limit headers, provider.
    pub meta: ResponseMeta,
}

impl ChatResponse {
    /// An answer with this text and nothing else (for a test double, or a cache of your own);
    /// the `with_` methods fill in the rest. The type may grow fields, so it is built this
    /// way rather than with a struct expression.
    ///
    /// ```
    /// use tower_llm_providers::{ChatResponse, FinishReason, Usage};
    ///
    /// let answer = ChatResponse::new("Paris.")
    ///     .with_model("gpt-4o-mini")
    ///     .with_finish_reason(FinishReason::Stop)
    ///     .with_usage(Usage::new(12, 3));
    /// assert_eq!(answer.content, "Paris.");
    /// assert_eq!(answer.usage.map(|u| u.total()), Some(15));
    /// ```
    pub fn new(content: impl Into<String>) -> Self {
        ChatResponse {
            content: content.into(),
            ..ChatResponse::default()
        }
    }

    /// The same answer from this model.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// The same answer with this finish reason.
    pub fn with_finish_reason(mut self, reason: FinishReason) -> Self {
        self.finish_reason = Some(reason);
        self
    }

    /// The same answer with this usage.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// The same answer with these tool calls.
    pub fn with_tool_calls(mut self, calls: Vec<ToolCall>) -> Self {
        self.tool_calls = calls;
        self
    }

    /// The same answer refused, with the model's refusal text.
    pub fn with_refusal(mut self, refusal: impl Into<String>) -> Self {
        self.refusal = Some(refusal.into());
        self
    }

    /// This answer as the assistant message of the next turn: its text, its tool calls and
    /// its [`blocks`](Self::blocks), so that Anthropic gets its thinking and server tool
    /// blocks back as it requires, and other providers the text and tool calls.
    ///
    /// ```
    /// use tower_llm_providers::{ChatRequest, ChatResponse, Message};
    ///
    /// # fn next_turn(answer: ChatResponse, tool_output: String) -> ChatRequest {
    /// let mut request = ChatRequest::new("claude-sonnet-4-5", vec![Message::user("Weather in Paris?")]);
    /// request.messages.push(answer.to_message());
    /// for call in &answer.tool_calls {
    ///     request.messages.push(Message::tool_result(&call.id, &call.name, tool_output.clone()));
    /// }
    /// # request
    /// # }
    /// ```
    pub fn to_message(&self) -> Message {
        Message {
            tool_calls: self.tool_calls.clone(),
            blocks: self.blocks.clone(),
            ..Message::assistant(self.content.clone())
        }
    }
}

impl From<ChatResponse> for Message {
    /// [`ChatResponse::to_message`], without copying.
    fn from(answer: ChatResponse) -> Message {
        Message {
            tool_calls: answer.tool_calls,
            blocks: answer.blocks,
            ..Message::assistant(answer.content)
        }
    }
}

impl ResponseUsage for ChatResponse {
    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// From the dialect of the provider that answered (see [`ResponseMeta::token_counting`]).
    fn token_counting(&self) -> Option<tower_llm_core::TokenCounting> {
        self.meta.token_counting()
    }
}

impl ClassifyResponse for ChatResponse {
    /// Always a success: failures arrive as errors.
    fn classify_response(&self) -> Outcome {
        Outcome::Success
    }
}

/// One piece of a streamed answer.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ChatChunk {
    /// More text.
    Content(String),
    /// Part of a tool call: the first part of each call carries its id and name, later parts
    /// more of its arguments. Parts of one call share an `index`.
    ToolCall(ToolCallDelta),
    /// Tokens used by the whole call (sent once, near the end).
    Usage(Usage),
    /// Why the model stopped.
    Finish(FinishReason),
    /// More of the model's refusal text (OpenAI `delta.refusal`): it declined to answer, and
    /// the stream's finish is [`FinishReason::Refusal`].
    Refusal(String),
    /// A content block starts, or grows in a way [`Content`](Self::Content) and
    /// [`ToolCall`](Self::ToolCall) do not carry (Anthropic: thinking, signatures, citations,
    /// server tools). Text and tool-call arguments still arrive as those chunks; callers
    /// that only want the text can ignore these. [`ChatAccumulator`](crate::ChatAccumulator)
    /// rebuilds [`ChatResponse::blocks`] from them.
    Block(BlockDelta),
}

/// A piece of a streamed content block (see [`ChatChunk::Block`]). `index` is the block's
/// position in the answer, as the provider numbers it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BlockDelta {
    /// A block starts: every block of the answer starts with one, in order. Text and
    /// thinking start empty or with their first piece; a tool call starts with its id and
    /// name (its arguments follow as [`ChatChunk::ToolCall`]s); redacted thinking, server
    /// tool results and unknown blocks arrive whole.
    Start {
        /// The block's position.
        index: u32,
        /// The block as it starts.
        block: ContentBlock,
    },
    /// More of a thinking block's text.
    Thinking {
        /// The block's position.
        index: u32,
        /// More reasoning text.
        text: String,
    },
    /// A thinking block's signature (sent once, at its end).
    Signature {
        /// The block's position.
        index: u32,
        /// The signature (or more of it).
        signature: String,
    },
    /// A citation for the text block.
    Citation {
        /// The block's position.
        index: u32,
        /// The citation, raw.
        citation: Value,
    },
    /// More of a server tool call's input, as JSON text.
    ServerToolInput {
        /// The block's position.
        index: u32,
        /// More of the input's JSON text.
        partial_json: String,
    },
}

/// Rebuilds [`ChatResponse::blocks`] from [`ChatChunk`]s (for [`ChatAccumulator`](crate::ChatAccumulator)).
#[derive(Clone, Debug, Default)]
pub(crate) struct BlockAccumulator {
    blocks: Vec<ContentBlock>,
    /// The provider's index of each block.
    indices: Vec<u32>,
    /// The input JSON text of server tool calls so far, by position in `blocks`.
    server_inputs: Vec<(usize, String)>,
    /// Where each text block's text starts in the answer's content, by position in
    /// `blocks`: a block's text is the content from there to the next text block, cut out
    /// at the end rather than copied twice as it streams.
    text_starts: Vec<(usize, usize)>,
}

impl BlockAccumulator {
    fn position(&self, index: u32) -> Option<usize> {
        self.indices.iter().rposition(|&i| i == index)
    }

    /// Adds a chunk's part in the blocks; `content_len` is the length of the answer's
    /// content before this chunk.
    pub(crate) fn push(&mut self, chunk: &ChatChunk, content_len: usize) {
        match chunk {
            ChatChunk::Block(BlockDelta::Start { index, block }) => {
                if let ContentBlock::Text { .. } = block {
                    self.text_starts.push((self.blocks.len(), content_len));
                }
                self.blocks.push(block.clone());
                self.indices.push(*index);
            }
            ChatChunk::Block(BlockDelta::Thinking { index, text }) => {
                if let Some(ContentBlock::Thinking { thinking, .. }) =
                    self.position(*index).map(|at| &mut self.blocks[at])
                {
                    thinking.push_str(text);
                }
            }
            ChatChunk::Block(BlockDelta::Signature { index, signature }) => {
                if let Some(ContentBlock::Thinking { signature: s, .. }) =
                    self.position(*index).map(|at| &mut self.blocks[at])
                {
                    s.push_str(signature);
                }
            }
            ChatChunk::Block(BlockDelta::Citation { index, citation }) => {
                if let Some(ContentBlock::Text { citations, .. }) =
                    self.position(*index).map(|at| &mut self.blocks[at])
                {
                    citations.push(citation.clone());
                }
            }
            ChatChunk::Block(BlockDelta::ServerToolInput {
                index,
                partial_json,
            }) => {
                let Some(at) = self.position(*index) else {
                    return;
                };
                match self.server_inputs.iter_mut().find(|(p, _)| *p == at) {
                    Some((_, text)) => text.push_str(partial_json),
                    None => self.server_inputs.push((at, partial_json.clone())),
                }
            }
            ChatChunk::Content(_)
            | ChatChunk::ToolCall(_)
            | ChatChunk::Usage(_)
            | ChatChunk::Finish(_)
            | ChatChunk::Refusal(_) => {}
        }
    }

    /// The blocks, with their text (cut from the answer's `content`), the tool calls' final
    /// arguments and the server tools' inputs; or none when the text and the calls say it
    /// all.
    pub(crate) fn finish(mut self, content: &str, calls: &[ToolCall]) -> Vec<ContentBlock> {
        keep_blocks_if_needed(&mut self.blocks);
        if self.blocks.is_empty() {
            return self.blocks;
        }
        let ends = self
            .text_starts
            .iter()
            .skip(1)
            .map(|&(_, start)| start)
            .chain([content.len()]);
        for (&(at, start), end) in self.text_starts.iter().zip(ends) {
            if let Some(ContentBlock::Text { text, .. }) = self.blocks.get_mut(at) {
                text.push_str(content.get(start..end).unwrap_or_default());
            }
        }
        for (at, input) in self.server_inputs {
            if let Some(ContentBlock::ServerToolUse(Value::Object(block))) = self.blocks.get_mut(at)
            {
                // A cut or malformed input stays as the text that came, not a guess.
                let input = serde_json::from_str(&input).unwrap_or(Value::String(input));
                block.insert("input".to_owned(), input);
            }
        }
        let started_calls = self.blocks.iter_mut().filter_map(|block| match block {
            ContentBlock::ToolUse(call) => Some(call),
            _ => None,
        });
        for call in started_calls {
            if let Some(done) = calls.iter().find(|c| c.id == call.id) {
                call.clone_from(done);
            }
        }
        self.blocks
    }
}

/// A piece of a streamed tool call.
///
/// ```
/// use tower_llm_providers::ToolCallDelta;
///
/// let first = ToolCallDelta::new(0).id("call_1").name("get_weather").arguments("{\"city\"");
/// assert_eq!((first.index, first.name.as_deref()), (0, Some("get_weather")));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolCallDelta {
    /// Which call of this answer (0 for the first) this piece belongs to.
    pub index: u32,
    /// The call's id, on its first piece.
    pub id: Option<String>,
    /// The function's name, on its first piece.
    pub name: Option<String>,
    /// More of the arguments' JSON text.
    pub arguments: String,
}

impl ToolCallDelta {
    /// A piece of call `index` (0 for the answer's first call), with nothing in it yet.
    pub fn new(index: u32) -> Self {
        ToolCallDelta {
            index,
            ..ToolCallDelta::default()
        }
    }

    /// With the call's id (on its first piece).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// With the function's name (on its first piece).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// With more of the arguments' JSON text.
    pub fn arguments(mut self, arguments: impl Into<String>) -> Self {
        self.arguments = arguments.into();
        self
    }
}

/// An embeddings request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EmbeddingRequest {
    /// The embedding model.
    pub model: String,
    /// The texts to embed.
    pub input: Vec<String>,
    /// The vector size, for models that can shorten theirs.
    pub dimensions: Option<u32>,
    /// The end user's id, sent upstream.
    pub user: Option<String>,
    /// Your tenant, never sent upstream (see [`ChatRequest::tenant`]).
    pub tenant: Option<String>,
    /// Fields this type does not model, merged into the body as is.
    pub extra: Map<String, Value>,
}

impl EmbeddingRequest {
    /// Embeds `input` with `model`.
    pub fn new(model: impl Into<String>, input: Vec<String>) -> Self {
        EmbeddingRequest {
            model: model.into(),
            input,
            ..EmbeddingRequest::default()
        }
    }
}

impl Fingerprint for EmbeddingRequest {
    fn fingerprint(&self, h: &mut FingerprintHasher) {
        h.write_str("tower-llm-providers/embeddings");
        write_opt_str(h, self.tenant.as_deref());
        write_opt_str(h, self.user.as_deref());
        h.write_str(&self.model);
        h.write_u64(self.input.len() as u64);
        for input in &self.input {
            h.write_str(input);
        }
        h.write_option(self.dimensions.map(u64::from).as_ref());
        write_map(h, &self.extra);
    }
}

impl RequestCost for EmbeddingRequest {
    fn estimated_tokens(&self) -> u64 {
        self.input.iter().map(|s| estimate_text_tokens(s)).sum()
    }
}

impl Deterministic for EmbeddingRequest {
    fn is_deterministic(&self) -> bool {
        true
    }
}

/// Embedding vectors, one per input, in input order.
///
/// ```
/// use tower_llm_providers::EmbeddingResponse;
///
/// let answer = EmbeddingResponse::new("text-embedding-3-small", vec![vec![0.1, 0.2]]);
/// assert_eq!(answer.embeddings.len(), 1);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct EmbeddingResponse {
    /// The model that answered.
    pub model: String,
    /// One vector per input.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens used.
    pub usage: Option<Usage>,
    /// The HTTP facts of the answer: status, request id, rate-limit headers, provider.
    pub meta: ResponseMeta,
}

impl EmbeddingResponse {
    /// The vectors `model` answered, one per input (no usage, default HTTP facts: for a
    /// service of your own, or a test).
    pub fn new(model: impl Into<String>, embeddings: Vec<Vec<f32>>) -> Self {
        EmbeddingResponse {
            model: model.into(),
            embeddings,
            ..EmbeddingResponse::default()
        }
    }

    /// With the tokens used.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }
}

impl ResponseUsage for EmbeddingResponse {
    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// From the dialect of the provider that answered (see [`ResponseMeta::token_counting`]).
    fn token_counting(&self) -> Option<tower_llm_core::TokenCounting> {
        self.meta.token_counting()
    }
}

impl ClassifyResponse for EmbeddingResponse {
    fn classify_response(&self) -> Outcome {
        Outcome::Success
    }
}

// Typed requests never ask to bypass a cache by themselves (wrap the request in a type of your
// own to add that). Implementing the traits lets dedup and the rate limiter take these types
// without glue.
impl CacheControl for ChatRequest {}
impl CacheControl for EmbeddingRequest {}
impl<R: CacheControl> CacheControl for Streaming<R> {
    fn bypasses_dedup(&self) -> bool {
        self.0.bypasses_dedup()
    }
}
impl RateLimitHeaders for ChatResponse {
    /// The rate-limit headers of the HTTP answer (see [`ResponseMeta::headers`]).
    fn rate_limit_headers(&self) -> Option<&http::HeaderMap> {
        Some(&self.meta.headers)
    }
}

impl RateLimitHeaders for EmbeddingResponse {
    /// The rate-limit headers of the HTTP answer (see [`ResponseMeta::headers`]).
    fn rate_limit_headers(&self) -> Option<&http::HeaderMap> {
        Some(&self.meta.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tower_llm_core::FingerprintKey;

    fn base() -> ChatRequest {
        ChatRequest::new("m", vec![Message::user("hi")])
    }

    #[test]
    fn every_answer_changing_field_changes_the_key() {
        let key = FingerprintKey::random();
        let variants = [
            base(),
            ChatRequest {
                model: "n".into(),
                ..base()
            },
            ChatRequest {
                messages: vec![Message::user("ho")],
                ..base()
            },
            ChatRequest {
                messages: vec![Message::system("hi")],
                ..base()
            },
            base().temperature(0.5),
            ChatRequest {
                top_p: Some(0.5),
                ..base()
            },
            base().max_tokens(5),
            ChatRequest {
                stop: vec!["x".into()],
                ..base()
            },
            base().seed(1),
            base().tool(Tool {
                name: "f".into(),
                description: None,
                parameters: json!({}),
            }),
            ChatRequest {
                tool_choice: Some(ToolChoice::Required),
                ..base()
            },
            ChatRequest {
                response_format: Some(ResponseFormat::JsonObject),
                ..base()
            },
            ChatRequest {
                user: Some("u".into()),
                ..base()
            },
            base().tenant("acme"),
            base().extra("logprobs", json!(true)),
            ChatRequest {
                metadata: json!({"a": 1}).as_object().cloned().unwrap_or_default(),
                ..base()
            },
        ];
        let keys: std::collections::HashSet<_> =
            variants.iter().map(|r| key.fingerprint(r)).collect();
        assert_eq!(keys.len(), variants.len());
        assert_ne!(
            key.fingerprint(&base()),
            key.fingerprint(&base().streaming())
        );
        assert_eq!(key.fingerprint(&base()), key.fingerprint(&base()));
    }

    #[test]
    fn user_and_tenant_are_not_interchangeable() {
        let key = FingerprintKey::random();
        let a = ChatRequest {
            user: Some("x".into()),
            ..base()
        };
        let b = base().tenant("x");
        assert_ne!(key.fingerprint(&a), key.fingerprint(&b));
    }

    #[test]
    fn cost_and_determinism() {
        let request = ChatRequest::new("m", vec![Message::user("x".repeat(400))]).max_tokens(10);
        assert_eq!(request.estimated_tokens(), 110);
        assert_eq!(base().estimated_tokens(), 1 + 1024);
        assert!(!base().is_deterministic());
        assert!(base().temperature(0.0).is_deterministic());
        assert!(base().temperature(0.7).seed(3).is_deterministic());
        assert!(EmbeddingRequest::new("e", vec!["a".into()]).is_deterministic());
    }
}
