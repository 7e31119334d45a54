//! The Converse wire format against recorded shapes of AWS's documented examples
//! (`tests/fixtures/bedrock_*`), framed and split as a network would.

use std::collections::VecDeque;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower_llm_core::FailureKind;

use super::eventstream::{self, EventStreamDecoder, EventStreamError};
use super::wire::{self, ConverseStreamDecoder, StreamDecoder, decode_response, encode_request};
use crate::chat::{
    ChatChunk, ChatRequest, ChatResponse, ContentBlock, FinishReason, Message, Tool, ToolCall,
    ToolChoice,
};
use crate::key::ApiKey;
use crate::meta::Dialect;
use crate::protocol::Step;
use crate::stream::ChatAccumulator;

const TEXT: &str = include_str!("../../tests/fixtures/bedrock_converse_text.json");
const TOOL_USE: &str = include_str!("../../tests/fixtures/bedrock_converse_tool_use.json");
const TOOL_USE_STREAM: &str =
    include_str!("../../tests/fixtures/bedrock_converse_stream_tool_use.json");
const ERRORS: &str = include_str!("../../tests/fixtures/bedrock_errors.json");

fn body_of(request: &ChatRequest) -> Value {
    serde_json::from_slice(&encode_request(request)).expect("JSON")
}

fn weather() -> Tool {
    Tool {
        name: "top_song".into(),
        description: Some("The most popular song on a radio station.".into()),
        parameters: json!({"type": "object", "properties": {"sign": {"type": "string"}},
            "required": ["sign"]}),
    }
}

fn call() -> ToolCall {
    ToolCall {
        id: "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q".into(),
        name: "top_song".into(),
        arguments: r#"{"sign":"WZPZ"}"#.into(),
    }
}

#[test]
fn a_request_is_encoded_as_converse_documents_it() {
    let mut request = ChatRequest::new(
        "amazon.nova-lite-v1:0",
        vec![
            Message::system("You are a DJ."),
            Message::user("What is the most popular song on WZPZ?"),
            Message::assistant_tool_calls(vec![
                call(),
                ToolCall {
                    id: "t2".into(),
                    name: "top_song".into(),
                    arguments: "not json".into(),
                },
            ]),
            Message::tool_result(
                "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                "top_song",
                "Elemental Hotel",
            ),
            Message::tool_result("t2", "top_song", "none"),
        ],
    )
    .temperature(0.5)
    .max_tokens(512)
    .tool(weather())
    .extra("additionalModelRequestFields", json!({"top_k": 200}));
    request.top_p = Some(0.9);
    request.stop = vec!["END".into()];
    request.tool_choice = Some(ToolChoice::Function("top_song".into()));
    request.seed = Some(7);
    request.user = Some("u-1".into());
    assert_eq!(
        body_of(&request),
        json!({
            "system": [{"text": "You are a DJ."}],
            "messages": [
                {"role": "user", "content": [{"text": "What is the most popular song on WZPZ?"}]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song",
                        "input": {"sign": "WZPZ"}}},
                    {"toolUse": {"toolUseId": "t2", "name": "top_song", "input": {}}},
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                        "content": [{"text": "Elemental Hotel"}]}},
                    {"toolResult": {"toolUseId": "t2", "content": [{"text": "none"}]}},
                ]},
            ],
            "inferenceConfig": {"maxTokens": 512, "temperature": 0.5, "topP": 0.9,
                "stopSequences": ["END"]},
            "toolConfig": {
                "tools": [{"toolSpec": {"name": "top_song",
                    "description": "The most popular song on a radio station.",
                    "inputSchema": {"json": {"type": "object",
                        "properties": {"sign": {"type": "string"}}, "required": ["sign"]}}}}],
                "toolChoice": {"tool": {"name": "top_song"}},
            },
            "additionalModelRequestFields": {"top_k": 200},
        })
    );
    assert_eq!(
        wire::converse_path(&request.model, true),
        "/model/amazon.nova-lite-v1%3A0/converse-stream"
    );
}

#[test]
fn tool_choices_map_and_none_offers_no_tools() {
    let choice = |choice: ToolChoice, history: bool| {
        let mut messages = vec![Message::user("hi")];
        if history {
            messages.push(Message::assistant_tool_calls(vec![call()]));
            messages.push(Message::tool_result(&call().id, "top_song", "x"));
        }
        let mut request = ChatRequest::new("m", messages).tool(weather());
        request.tool_choice = Some(choice);
        body_of(&request).get("toolConfig").cloned()
    };
    let config = |c: ToolChoice| choice(c, false).map(|c| c["toolChoice"].clone());
    assert_eq!(config(ToolChoice::Auto), Some(json!({"auto": {}})));
    assert_eq!(config(ToolChoice::Required), Some(json!({"any": {}})));
    assert_eq!(choice(ToolChoice::None, false), None);
    // Bedrock refuses tool blocks without a toolConfig: the tools stay, with no choice.
    let kept = choice(ToolChoice::None, true).expect("tools kept");
    assert!(kept.get("toolChoice").is_none());
    assert_eq!(kept["tools"][0]["toolSpec"]["name"], "top_song");
    let bare = body_of(&ChatRequest::new("m", vec![Message::user("hi")]));
    assert_eq!(
        bare,
        json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    );
}

#[test]
fn extra_fields_of_another_dialect_are_not_sent() {
    let request = ChatRequest::new("m", vec![Message::user("hi")])
        .extra("frequency_penalty", json!(0.5))
        .extra_from(Dialect::OpenAi);
    assert!(body_of(&request).get("frequency_penalty").is_none());
    // The provider passes what `extra_for` gives it.
    let body = wire::encode_chat(&request, Some(&request.extra));
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(body["frequency_penalty"], json!(0.5));
}

#[test]
fn a_text_answer_decodes() {
    let answer = decode_response(TEXT.as_bytes()).expect("decodes");
    assert_eq!(
        answer.content,
        "The most popular song on WZPZ is Elemental Hotel by 8 Storey Hike."
    );
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    let usage = answer.usage.expect("usage");
    assert_eq!((usage.input_tokens, usage.output_tokens), (30, 628));
    assert!(answer.blocks.is_empty() && answer.tool_calls.is_empty());
    assert_eq!(answer.extra["metrics"], json!({"latencyMs": 1275}));
}

fn tool_use_answer() -> ChatResponse {
    decode_response(TOOL_USE.as_bytes()).expect("decodes")
}

#[test]
fn reasoning_text_and_tool_use_decode_into_blocks() {
    let answer = tool_use_answer();
    assert_eq!(answer.content, "I'll look up the top song on WZPZ.");
    assert_eq!(answer.tool_calls, vec![call()]);
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    let usage = answer.usage.expect("usage");
    // Cache reads count as input, as core's `Usage` counts every prompt token.
    assert_eq!(
        (
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_input_tokens
        ),
        (675, 87, 300)
    );
    assert_eq!(answer.blocks.len(), 3);
    assert!(matches!(
        &answer.blocks[0],
        ContentBlock::Thinking { thinking, signature }
            if thinking.starts_with("The user wants") && signature.starts_with("ErcB")
    ));
    assert!(
        matches!(&answer.blocks[1], ContentBlock::Text { text, .. } if text == &answer.content)
    );
    assert_eq!(answer.blocks[2], ContentBlock::ToolUse(call()));
}

#[test]
fn the_next_turn_sends_the_reasoning_back_as_it_came() {
    let answer = tool_use_answer();
    let request = ChatRequest::new(
        "m",
        vec![
            Message::user("Top song on WZPZ?"),
            answer.to_message(),
            Message::tool_result(&call().id, "top_song", "Elemental Hotel"),
        ],
    )
    .tool(weather());
    let body = body_of(&request);
    let original: Value = serde_json::from_str(TOOL_USE).expect("JSON");
    assert_eq!(
        body["messages"][1]["content"],
        original["output"]["message"]["content"]
    );
}

#[test]
fn redacted_reasoning_and_unknown_blocks_are_kept_and_sent_back() {
    let body = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"redactedContent": "RW5jcnlwdGVk"}},
            {"citationsContent": {"content": [{"text": "cited"}], "citations": []}},
            {"text": "Done."},
        ]}},
        "stopReason": "guardrail_intervened",
    });
    let answer = decode_response(body.to_string().as_bytes()).expect("decodes");
    assert_eq!(answer.finish_reason, Some(FinishReason::ContentFilter));
    assert_eq!(
        answer.blocks[0],
        ContentBlock::RedactedThinking {
            data: "RW5jcnlwdGVk".into()
        }
    );
    assert_eq!(
        answer.blocks[1],
        ContentBlock::Other(
            json!({"citationsContent": {"content": [{"text": "cited"}], "citations": []}})
        )
    );
    let mut message = answer.to_message();
    // Another dialect's raw block (Anthropic's server tool) is no Converse block.
    message.blocks.push(ContentBlock::ServerToolUse(
        json!({"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}),
    ));
    message
        .blocks
        .push(ContentBlock::Other(json!({"type": "mystery"})));
    let sent = body_of(&ChatRequest::new("m", vec![Message::user("q"), message]));
    assert_eq!(
        sent["messages"][1]["content"],
        body["output"]["message"]["content"]
    );
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (reason, finish) in [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::Stop),
        ("max_tokens", FinishReason::Length),
        ("model_context_window_exceeded", FinishReason::Length),
        ("tool_use", FinishReason::ToolCalls),
        ("content_filtered", FinishReason::ContentFilter),
        ("guardrail_intervened", FinishReason::ContentFilter),
        ("something_new", FinishReason::Other("something_new".into())),
    ] {
        assert_eq!(wire::finish_reason(reason), finish, "{reason}");
    }
}

#[test]
fn answers_that_are_not_converse_are_malformed() {
    for body in [
        &b"{\"output\":{}}"[..],
        b"{\"stopReason\":\"end_turn\"}",
        b"not json",
        b"<html><body>502</body></html>",
    ] {
        let error = decode_response(body).expect_err("fails");
        assert_eq!(error.kind(), FailureKind::ServerError);
    }
}

// ---- streams ---------------------------------------------------------------------------

/// The stream fixture, framed as Bedrock sends it.
fn framed(events: &[(String, Value)]) -> Vec<u8> {
    events
        .iter()
        .flat_map(|(kind, payload)| eventstream::encode_event(kind, &payload.to_string()))
        .collect()
}

fn fixture_events() -> Vec<(String, Value)> {
    serde_json::from_str(TOOL_USE_STREAM).expect("fixture")
}

/// Decodes a framed body cut at `cuts`, as the provider's stream does.
fn decode_stream(body: &[u8], cuts: &[usize]) -> Result<ChatResponse, String> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut frames = EventStreamDecoder::new();
    let mut events = ConverseStreamDecoder::default();
    let mut chunks = VecDeque::new();
    let mut start = 0;
    let mut done = false;
    for end in cuts.into_iter().chain([body.len()]) {
        let mut piece = &body[start..end.max(start)];
        start = end.max(start);
        while let Some(message) = frames.next_message(&mut piece).map_err(|e| e.to_string())? {
            done = events
                .message(&message, &mut chunks)
                .map_err(|e| e.to_string())?;
        }
    }
    frames.finish().map_err(|e| e.to_string())?;
    events.finish().map_err(|e| e.to_string())?;
    assert!(done, "complete once metadata came after messageStop");
    let mut answer = ChatAccumulator::default();
    for chunk in &chunks {
        answer.push(chunk);
    }
    Ok(answer.finish())
}

/// `answer` with its tool calls' arguments written compactly: a stream sends the model's
/// text (`{"sign": "WZPZ"}`), a whole answer a JSON object.
fn normalized(mut answer: ChatResponse) -> ChatResponse {
    let compact = |call: &mut ToolCall| {
        let value: Value = serde_json::from_str(&call.arguments).expect("JSON arguments");
        call.arguments = value.to_string();
    };
    answer.tool_calls.iter_mut().for_each(compact);
    for block in &mut answer.blocks {
        if let ContentBlock::ToolUse(call) = block {
            compact(call);
        }
    }
    answer
}

#[test]
fn a_stream_rebuilds_the_whole_answer() {
    let streamed = normalized(decode_stream(&framed(&fixture_events()), &[]).expect("decodes"));
    let whole = tool_use_answer();
    assert_eq!(streamed.content, whole.content);
    assert_eq!(streamed.tool_calls, whole.tool_calls);
    assert_eq!(streamed.blocks, whole.blocks);
    assert_eq!(streamed.finish_reason, whole.finish_reason);
    assert_eq!(streamed.usage, whole.usage);
}

#[test]
fn stream_chunks_come_in_order() {
    let mut decoder = StreamDecoder::default();
    let ctx = wire::standalone_ctx();
    let mut chunks = VecDeque::new();
    let events = fixture_events();
    for (kind, payload) in &events[..6] {
        let step = decoder
            .event(&ctx, kind, payload.to_string().as_bytes(), &mut chunks)
            .expect("decodes");
        assert!(matches!(step, Step::Continue));
    }
    let kinds: Vec<String> = chunks
        .iter()
        .map(|chunk| match chunk {
            ChatChunk::Block(block) => format!("{block:?}")
                .split(' ')
                .next()
                .unwrap_or("")
                .to_owned(),
            ChatChunk::Content(text) => format!("Content({text})"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Start",
            "Thinking",
            "Thinking",
            "Signature",
            "Start",
            "Content(I'll look up)",
        ]
    );
}

#[test]
fn a_stream_without_its_metadata_or_stop_is_an_error() {
    let events = fixture_events();
    let without_metadata = framed(&events[..events.len() - 1]);
    let error = decode_stream(&without_metadata, &[]).expect_err("fails");
    assert!(
        error.contains("without messageStop and metadata"),
        "{error}"
    );
    let mut without_stop = events.clone();
    without_stop.remove(events.len() - 2);
    assert!(decode_stream(&framed(&without_stop), &[]).is_err());
    // Cut inside the last message: the framing says so.
    let body = framed(&events);
    let error = decode_stream(&body[..body.len() - 3], &[]).expect_err("fails");
    assert!(error.contains("ended inside a message"), "{error}");
}

fn exception_frame(kind: &str, payload: &str) -> Vec<u8> {
    eventstream::encode(
        &[
            (":message-type", "exception"),
            (":exception-type", kind),
            (":content-type", "application/json"),
        ],
        payload.as_bytes(),
    )
}

fn stream_error(body: &[u8]) -> crate::UpstreamError {
    let mut frames = EventStreamDecoder::new();
    let mut events = ConverseStreamDecoder::default();
    let mut chunks = VecDeque::new();
    let mut input = body;
    while let Some(message) = frames.next_message(&mut input).expect("framing") {
        if let Err(error) = events.message(&message, &mut chunks) {
            return error;
        }
    }
    panic!("no error in the stream");
}

#[test]
fn in_stream_exceptions_are_classified_errors() {
    let events = fixture_events();
    for (kind, payload, expected) in [
        (
            "throttlingException",
            r#"{"message":"Too many requests, please wait before trying again."}"#,
            FailureKind::RateLimited,
        ),
        (
            "modelStreamErrorException",
            r#"{"message":"Model error","originalStatusCode":429,"originalMessage":"slow down"}"#,
            FailureKind::RateLimited,
        ),
        (
            "modelStreamErrorException",
            r#"{"message":"Model error"}"#,
            FailureKind::ServerError,
        ),
        (
            "validationException",
            r#"{"message":"Malformed input request"}"#,
            FailureKind::BadRequest,
        ),
        (
            "internalServerException",
            r#"{"message":"Internal failure"}"#,
            FailureKind::ServerError,
        ),
        (
            "serviceUnavailableException",
            r#"{"message":"Bedrock is unable to process your request."}"#,
            FailureKind::Overloaded,
        ),
    ] {
        let mut body = framed(&events[..6]);
        body.extend(exception_frame(kind, payload));
        let error = stream_error(&body);
        assert_eq!(error.kind(), expected, "{kind}");
        assert_eq!(error.code(), Some(kind));
        assert!(!error.message().is_empty());
        assert_eq!(error.provider(), Some("bedrock"));
    }
    let error = stream_error(&eventstream::encode(
        &[
            (":message-type", "error"),
            (":error-code", "InternalFailure"),
            (":error-message", "It broke"),
        ],
        b"",
    ));
    assert_eq!(error.kind(), FailureKind::ServerError);
    assert!(error.message().contains("InternalFailure: It broke"));
}

#[test]
fn out_of_place_deltas_are_malformed_not_guessed() {
    let ctx = wire::standalone_ctx();
    let run = |events: &[(&str, Value)]| {
        let mut decoder = StreamDecoder::default();
        let mut chunks = VecDeque::new();
        for (kind, payload) in events {
            decoder.event(&ctx, kind, payload.to_string().as_bytes(), &mut chunks)?;
        }
        Ok::<_, crate::UpstreamError>(())
    };
    let tool_delta = json!({"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{}"}}});
    let error = run(&[("contentBlockDelta", tool_delta)]).expect_err("fails");
    assert!(
        error
            .message()
            .contains("toolUse delta for content block 3")
    );
    let start =
        json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "a", "name": "f"}}});
    let error = run(&[
        ("contentBlockStart", start.clone()),
        ("contentBlockStart", start),
    ])
    .expect_err("fails");
    assert!(error.message().contains("started twice"));
    let error = run(&[("messageStop", json!("not an object"))]).expect_err("fails");
    assert_eq!(error.kind(), FailureKind::ServerError);
    let many: Vec<(&str, Value)> = (0..=4096)
        .map(|i| {
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": i, "delta": {"text": "x"}}),
            )
        })
        .collect();
    let error = run(&many).expect_err("fails");
    assert!(error.message().contains("more than 4096 content blocks"));
    // Unknown events and deltas are skipped, as the SDKs do.
    run(&[
        ("somethingNew", json!({"x": 1})),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"image": {}}}),
        ),
    ])
    .expect("skipped");
}

proptest! {
    #[test]
    fn random_splits_decode_the_same(cuts in proptest::collection::vec(0usize..8192, 0..12)) {
        let body = framed(&fixture_events());
        let whole = decode_stream(&body, &[]).expect("decodes");
        let split = decode_stream(&body, &cuts).expect("decodes");
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn random_payloads_never_panic_nor_finish_the_stream(
        events in proptest::collection::vec(
            (
                prop::sample::select(vec![
                    "messageStart", "contentBlockStart", "contentBlockDelta",
                    "contentBlockStop", "messageStop", "metadata", "other",
                ]),
                proptest::collection::vec(any::<u8>(), 0..64),
            ),
            0..24,
        ),
    ) {
        let mut decoder = ConverseStreamDecoder::default();
        let mut chunks = VecDeque::new();
        for (kind, payload) in &events {
            if decoder.event(kind, payload, &mut chunks).is_err() {
                break;
            }
        }
        // Random bytes are no `messageStop` and `metadata` pair: never a clean end.
        let stop_and_metadata = events.iter().filter(|(kind, payload)| {
            matches!(*kind, "messageStop" | "metadata")
                && serde_json::from_slice::<Value>(payload).is_ok_and(|v| v.is_object())
        }).count();
        prop_assert!(decoder.finish().is_err() || stop_and_metadata >= 2);
    }

    #[test]
    fn random_bodies_are_never_a_clean_stream(body in proptest::collection::vec(any::<u8>(), 1..2048)) {
        prop_assert!(decode_stream(&body, &[]).is_err());
    }
}

#[test]
fn an_oversized_event_is_refused_before_it_is_read() {
    let mut frames = EventStreamDecoder::with_max_message_bytes(256);
    let big = eventstream::encode_event(
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0, "delta": {"text": "x".repeat(1000)}}).to_string(),
    );
    let mut input = &big[..];
    assert!(matches!(
        frames.next_message(&mut input),
        Err(EventStreamError::TooLarge { limit: 256, .. })
    ));
}

// ---- error bodies ------------------------------------------------------------------------

#[test]
fn documented_error_bodies_are_classified() {
    let cases: Vec<Value> = serde_json::from_str(ERRORS).expect("fixture");
    for case in cases {
        let mut headers = HeaderMap::new();
        if let Some(errortype) = case["errortype"].as_str() {
            headers.insert(
                "x-amzn-errortype",
                HeaderValue::from_str(errortype).expect("ascii"),
            );
        }
        headers.insert(
            "x-amzn-requestid",
            HeaderValue::from_static("5d2a3b4c-1111-2222-3333-444455556666"),
        );
        let status =
            StatusCode::from_u16(case["status"].as_u64().expect("status") as u16).expect("status");
        let body = case["body"].to_string();
        let error = wire::decode_error(status, &headers, body.as_bytes());
        assert_eq!(
            format!("{:?}", error.kind()),
            case["kind"].as_str().expect("kind"),
            "{case}"
        );
        assert_eq!(error.code(), case["code"].as_str(), "{case}");
        assert_eq!(error.status(), Some(status));
        assert_eq!(
            error.message(),
            case["body"]["message"].as_str().expect("message")
        );
        assert_eq!(
            error.request_id(),
            Some("5d2a3b4c-1111-2222-3333-444455556666")
        );
        assert_eq!(error.body().map(|b| &b[..]), Some(body.as_bytes()));
    }
}

#[test]
fn odd_error_bodies_fall_back_to_the_status() {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("3"));
    let error = wire::decode_error(StatusCode::TOO_MANY_REQUESTS, &headers, b"");
    assert_eq!(error.kind(), FailureKind::RateLimited);
    assert_eq!(error.message(), "empty error body");
    assert_eq!(error.retry_after(), Some(std::time::Duration::from_secs(3)));
    let error = wire::decode_error(
        StatusCode::BAD_GATEWAY,
        &HeaderMap::new(),
        b"<html><head><title>502</title></head></html>",
    );
    assert_eq!(error.kind(), FailureKind::ServerError);
    assert_eq!(error.message(), "HTML error page");
    let error = wire::decode_error(
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        br#"{"message":"prompt is too long: 250000 tokens > 200000 maximum"}"#,
    );
    assert_eq!(error.kind(), FailureKind::ContextLengthExceeded);
}

#[test]
fn echoed_secrets_are_scrubbed_from_errors() {
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let mut ctx = wire::standalone_ctx();
    ctx.key = Some(ApiKey::new(secret));
    let body = Bytes::from(format!(
        r#"{{"message":"The request signature we calculated does not match for key {secret}."}}"#
    ));
    let error = wire::error_for_status(&ctx, StatusCode::FORBIDDEN, &HeaderMap::new(), body);
    let shown = format!(
        "{error} {error:?} {}",
        String::from_utf8_lossy(error.body().expect("body"))
    );
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("[redacted key]"));
    let error = wire::exception(
        &ctx,
        "validationException",
        format!(r#"{{"message":"bad {secret}"}}"#).as_bytes(),
    );
    assert!(!format!("{error} {error:?}").contains(secret));
}
