//! The gemini wire format: requests, answers and stream events.

use crate::chat::{
    ChatChunk, ChatRequest, ChatResponse, FinishReason, ResponseFormat, Role, ToolCall,
    ToolCallDelta, ToolChoice,
};
use crate::error::{CallContext, Dialect};
use crate::framing::Event;
use crate::meta::ResponseMeta;
use crate::protocol::Step;
use crate::stream::usage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use tower_llm_core::{FailureKind, UpstreamError};

// ---- wire format: requests -------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    contents: Vec<WireContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<WireContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<WireGenerationConfig<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTools<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<Value>,
}

#[derive(Serialize)]
struct WireContent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: Vec<WirePart<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum WirePart<'a> {
    Text(&'a str),
    FunctionCall { name: &'a str, args: Value },
    FunctionResponse { name: &'a str, response: Value },
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireGenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireTools<'a> {
    function_declarations: Vec<WireFunction<'a>>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a Value,
}

pub(crate) fn encode_chat(request: &ChatRequest) -> Vec<u8> {
    let system: Vec<WirePart<'_>> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| WirePart::Text(&m.content))
        .collect();
    let mut contents: Vec<WireContent<'_>> = Vec::with_capacity(request.messages.len());
    for (position, message) in request.messages.iter().enumerate() {
        let (role, parts) = match message.role {
            Role::System => continue,
            Role::User => ("user", vec![WirePart::Text(&message.content)]),
            Role::Assistant => {
                let mut parts = Vec::with_capacity(1 + message.tool_calls.len());
                if !message.content.is_empty() {
                    parts.push(WirePart::Text(&message.content));
                }
                for call in &message.tool_calls {
                    parts.push(WirePart::FunctionCall {
                        name: &call.name,
                        args: serde_json::from_str(&call.arguments)
                            .unwrap_or_else(|_| Value::Object(Map::new())),
                    });
                }
                ("model", parts)
            }
            Role::Tool => {
                let name = message.name.as_deref().or_else(|| {
                    let id = message.tool_call_id.as_deref()?;
                    request.messages[..position]
                        .iter()
                        .rev()
                        .flat_map(|m| &m.tool_calls)
                        .find(|c| c.id == id)
                        .map(|c| c.name.as_str())
                });
                let response = match serde_json::from_str::<Value>(&message.content) {
                    Ok(Value::Object(object)) => Value::Object(object),
                    _ => serde_json::json!({ "content": message.content }),
                };
                (
                    "user",
                    vec![WirePart::FunctionResponse {
                        name: name.unwrap_or_default(),
                        response,
                    }],
                )
            }
        };
        match contents.last_mut() {
            // Gemini wants parallel function responses in one turn.
            Some(last)
                if message.role == Role::Tool
                    && last.role == Some("user")
                    && last
                        .parts
                        .iter()
                        .all(|p| matches!(p, WirePart::FunctionResponse { .. })) =>
            {
                last.parts.extend(parts);
            }
            _ => contents.push(WireContent {
                role: Some(role),
                parts,
            }),
        }
    }
    let (response_mime_type, response_json_schema) = match &request.response_format {
        None | Some(ResponseFormat::Text) => (None, None),
        Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
        Some(ResponseFormat::JsonSchema { schema, .. }) => (Some("application/json"), Some(schema)),
    };
    let config = WireGenerationConfig {
        temperature: request.temperature,
        top_p: request.top_p,
        max_output_tokens: request.max_tokens,
        stop_sequences: &request.stop,
        seed: request.seed,
        response_mime_type,
        response_json_schema,
    };
    let has_config = config.temperature.is_some()
        || config.top_p.is_some()
        || config.max_output_tokens.is_some()
        || !config.stop_sequences.is_empty()
        || config.seed.is_some()
        || config.response_mime_type.is_some();
    let tool_config = request.tool_choice.as_ref().map(|choice| {
        let config = match choice {
            ToolChoice::Auto => serde_json::json!({"mode": "AUTO"}),
            ToolChoice::None => serde_json::json!({"mode": "NONE"}),
            ToolChoice::Required => serde_json::json!({"mode": "ANY"}),
            ToolChoice::Function(name) => {
                serde_json::json!({"mode": "ANY", "allowedFunctionNames": [name]})
            }
        };
        serde_json::json!({ "functionCallingConfig": config })
    });
    let wire = WireRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(WireContent {
            role: None,
            parts: system,
        }),
        generation_config: has_config.then_some(config),
        tools: if request.tools.is_empty() {
            Vec::new()
        } else {
            vec![WireTools {
                function_declarations: request
                    .tools
                    .iter()
                    .map(|tool| WireFunction {
                        name: &tool.name,
                        description: tool.description.as_deref(),
                        parameters: &tool.parameters,
                    })
                    .collect(),
            }]
        },
        tool_config,
    };
    crate::chat::encode_with_extra(
        &wire,
        request.extra_for(Dialect::Gemini),
        crate::chat::body_size_hint(request),
    )
}

// ---- wire format: responses ------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Option<Vec<WireCandidate>>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    prompt_feedback: Option<WirePromptFeedback>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireContentOut>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize)]
struct WireContentOut {
    #[serde(default)]
    parts: Option<Vec<WirePartOut>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePartOut {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
}

impl WireUsage {
    fn usage(self) -> tower_llm_core::Usage {
        usage(
            self.prompt_token_count.unwrap_or(0),
            // Counts come from the server: saturate rather than overflow (a panic in debug).
            self.candidates_token_count
                .unwrap_or(0)
                .saturating_add(self.thoughts_token_count.unwrap_or(0)),
            self.cached_content_token_count.unwrap_or(0),
        )
    }
}

fn finish_reason(reason: &str, called_tools: bool) -> FinishReason {
    match reason {
        "STOP" if called_tools => FinishReason::ToolCalls,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        other => FinishReason::Other(other.to_owned()),
    }
}

/// The ids given to an answer's calls, so that those made up keep apart: a call's id is the
/// server's, or, when it sends none (Gemini matches results by name), the function's name,
/// with the call's position added when an earlier call of the answer already has that id.
/// Two calls to one function must not share an id in a history sent on to another provider.
/// At most [`REMEMBERED_IDS`] are kept; calls past them without an id of their own are told
/// apart by their position alone, so a server's endless calls cost no more per call.
#[derive(Debug, Default)]
struct CallIds(Vec<String>);

/// The most ids an answer remembers to keep them unique.
const REMEMBERED_IDS: usize = 1024;

impl CallIds {
    /// The call at `position` among the answer's calls.
    fn call_of(&mut self, call: WireFunctionCall, position: u32) -> ToolCall {
        let full = self.0.len() >= REMEMBERED_IDS;
        let id = match call.id {
            Some(id) => id,
            None if !full && !self.0.contains(&call.name) => call.name.clone(),
            None => format!("{}#{position}", call.name),
        };
        if !full {
            self.0.push(id.clone());
        }
        ToolCall {
            id,
            arguments: call.args.map_or_else(|| "{}".to_owned(), |a| a.to_string()),
            name: call.name,
        }
    }
}

fn blocked(ctx: &CallContext, feedback: Option<&WirePromptFeedback>) -> Option<UpstreamError> {
    let reason = feedback?.block_reason.as_deref()?;
    Some(
        ctx.error(
            FailureKind::ContentFiltered,
            format!("prompt blocked: {reason}"),
        )
        .with_code(ctx.scrub(reason.to_owned())),
    )
}

fn error_in_body(
    ctx: &CallContext,
    extra: &Map<String, Value>,
    raw: &[u8],
) -> Option<UpstreamError> {
    let error = extra.get("error").filter(|e| !e.is_null())?;
    let value = serde_json::json!({ "error": error });
    Some(ctx.for_error_value(&value, &String::from_utf8_lossy(raw)))
}

pub(crate) fn decode_chat(
    ctx: &CallContext,
    body: &[u8],
    meta: ResponseMeta,
) -> Result<ChatResponse, UpstreamError> {
    let wire: WireResponse = serde_json::from_slice(body)
        .map_err(|e| ctx.malformed("generateContent answer is not valid JSON", body, e))?;
    if let Some(error) = error_in_body(ctx, &wire.extra, body) {
        return Err(error);
    }
    let candidate = wire
        .candidates
        .into_iter()
        .flatten()
        .find(|c| c.index.unwrap_or(0) == 0);
    let Some(candidate) = candidate else {
        return Err(blocked(ctx, wire.prompt_feedback.as_ref())
            .unwrap_or_else(|| ctx.malformed("generateContent answer", body, "no candidate")));
    };
    let mut response = ChatResponse {
        meta,
        id: wire.response_id.unwrap_or_default(),
        model: wire.model_version.unwrap_or_default(),
        usage: wire.usage_metadata.map(WireUsage::usage),
        extra: wire.extra,
        ..ChatResponse::default()
    };
    let mut ids = CallIds::default();
    for part in candidate
        .content
        .and_then(|c| c.parts)
        .into_iter()
        .flatten()
    {
        if let Some(call) = part.function_call {
            let position = u32::try_from(response.tool_calls.len()).unwrap_or(u32::MAX);
            response.tool_calls.push(ids.call_of(call, position));
        } else if let Some(text) = part.text
            && part.thought != Some(true)
        {
            response.content.push_str(&text);
        }
    }
    response.finish_reason = candidate
        .finish_reason
        .as_deref()
        .map(|r| finish_reason(r, !response.tool_calls.is_empty()));
    Ok(response)
}

/// Decodes `streamGenerateContent?alt=sse` events: each is a whole `GenerateContentResponse`.
#[derive(Debug, Default)]
pub(crate) struct StreamDecoder {
    finished: bool,
    tool_calls: u32,
    ids: CallIds,
    pub(crate) model: Option<String>,
}

impl crate::protocol::StreamDecoder for StreamDecoder {
    fn event(
        &mut self,
        ctx: &CallContext,
        event: &Event,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<Step, UpstreamError> {
        let raw = event.data.as_bytes();
        let wire: WireResponse = serde_json::from_str(&event.data)
            .map_err(|e| ctx.malformed("stream event is not valid JSON", raw, e))?;
        if let Some(error) = error_in_body(ctx, &wire.extra, raw) {
            return Err(error);
        }
        if self.model.is_none() {
            self.model = wire.model_version.filter(|m| !m.is_empty());
        }
        let candidate = wire
            .candidates
            .into_iter()
            .flatten()
            .find(|c| c.index.unwrap_or(0) == 0);
        let Some(candidate) = candidate else {
            if let Some(error) = blocked(ctx, wire.prompt_feedback.as_ref()) {
                return Err(error);
            }
            return Ok(Step::Continue);
        };
        for part in candidate
            .content
            .and_then(|c| c.parts)
            .into_iter()
            .flatten()
        {
            if let Some(call) = part.function_call {
                let call = self.ids.call_of(call, self.tool_calls);
                out.push_back(ChatChunk::ToolCall(ToolCallDelta {
                    index: self.tool_calls,
                    id: Some(call.id),
                    name: Some(call.name),
                    arguments: call.arguments,
                }));
                self.tool_calls += 1;
            } else if let Some(text) = part.text
                && part.thought != Some(true)
                && !text.is_empty()
            {
                out.push_back(ChatChunk::Content(text));
            }
        }
        if let Some(reason) = candidate.finish_reason {
            self.finished = true;
            out.push_back(ChatChunk::Finish(finish_reason(
                &reason,
                self.tool_calls > 0,
            )));
            if let Some(usage) = wire.usage_metadata {
                out.push_back(ChatChunk::Usage(usage.usage()));
            }
        }
        Ok(Step::Continue)
    }

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn end_of_body(&mut self) -> bool {
        self.finished
    }
}
