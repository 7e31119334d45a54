//! Anthropic Messages over a scripted client.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Piece, Reply, call, deliveries, drain, mock, split};
use serde_json::json;
use tower_llm_core::{FailureKind, Usage};
use tower_llm_providers::{
    Anthropic, BlockDelta, ChatAccumulator, ChatChunk, ChatRequest, ContentBlock, FinishReason,
    Message, Tool, ToolCall, ToolCallDelta, ToolChoice,
};

const MESSAGE: &str = include_str!("fixtures/anthropic_message.json");
const STREAM: &str = include_str!("fixtures/anthropic_stream.sse");
const STREAM_ERROR: &str = include_str!("fixtures/anthropic_stream_error.sse");

type Sent = std::sync::Arc<std::sync::Mutex<Vec<common::Sent>>>;

fn anthropic(reply: Reply) -> (Anthropic<common::MockClient>, Sent) {
    let (client, sent) = mock(reply);
    (
        Anthropic::builder()
            .api_key("sk-ant-secret")
            .build_with(client)
            .unwrap(),
        sent,
    )
}

fn hello() -> ChatRequest {
    ChatRequest::new(
        "claude-sonnet-4-5",
        vec![
            Message::system("Be brief."),
            Message::system("Be kind."),
            Message::user("Weather in SF?"),
        ],
    )
}

#[tokio::test]
async fn documented_message_and_request_mapping() {
    let (mut service, sent) = anthropic(Reply::json(200, MESSAGE));
    let request = ChatRequest {
        stop: vec!["\n\nHuman:".into()],
        user: Some("user-7".into()),
        tool_choice: Some(ToolChoice::Required),
        ..hello().temperature(0.0).seed(3).tool(Tool {
            name: "get_weather".into(),
            description: Some("Current weather".into()),
            parameters: json!({"type": "object"}),
        })
    };
    let answer = call(&mut service, request).await.unwrap();
    assert_eq!(answer.content, "I'll check the weather.");
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        answer.tool_calls,
        vec![ToolCall {
            id: "toolu_01A09q90qw90lq917835lq9".into(),
            name: "get_weather".into(),
            arguments: r#"{"location":"San Francisco, CA"}"#.into(),
        }]
    );
    assert_eq!(
        answer.usage,
        Some(Usage::new(2095 + 100 + 10, 503).with_cached_input_tokens(100))
    );
    assert_eq!(answer.extra["role"], "assistant");

    let sent = sent.lock().unwrap();
    assert_eq!(sent[0].uri, "https://api.anthropic.com/v1/messages");
    assert_eq!(sent[0].headers["x-api-key"], "sk-ant-secret");
    assert!(sent[0].headers["x-api-key"].is_sensitive());
    assert_eq!(sent[0].headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        sent[0].body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "system": "Be brief.\n\nBe kind.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in SF?"}]}],
            "temperature": 0.0,
            "stop_sequences": ["\n\nHuman:"],
            "tools": [{"name": "get_weather", "description": "Current weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "metadata": {"user_id": "user-7"}
        })
    );
}

#[tokio::test]
async fn tool_results_go_back_as_blocks_in_one_user_turn() {
    let (mut service, sent) = anthropic(Reply::json(200, MESSAGE));
    let calls = vec![
        ToolCall {
            id: "toolu_1".into(),
            name: "a".into(),
            arguments: "{\"x\":1}".into(),
        },
        ToolCall {
            id: "toolu_2".into(),
            name: "b".into(),
            arguments: "{}".into(),
        },
    ];
    let request = ChatRequest::new(
        "claude",
        vec![
            Message::user("go"),
            Message {
                content: "Calling.".into(),
                ..Message::assistant_tool_calls(calls)
            },
            Message::tool_result("toolu_1", "a", "one"),
            Message::tool_result("toolu_2", "b", "two"),
        ],
    )
    .max_tokens(10);
    call(&mut service, request).await.unwrap();
    let sent = sent.lock().unwrap();
    assert_eq!(sent[0].body["max_tokens"], 10);
    assert_eq!(
        sent[0].body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "go"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Calling."},
                {"type": "tool_use", "id": "toolu_1", "name": "a", "input": {"x": 1}},
                {"type": "tool_use", "id": "toolu_2", "name": "b", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "two"}
            ]}
        ])
    );
}

fn expected_stream() -> Vec<ChatChunk> {
    vec![
        ChatChunk::Block(BlockDelta::Start {
            index: 0,
            block: ContentBlock::Text {
                text: String::new(),
                citations: Vec::new(),
            },
        }),
        ChatChunk::Content("Okay, let's check the weather".into()),
        ChatChunk::Content(" for San Francisco:".into()),
        ChatChunk::Block(BlockDelta::Start {
            index: 1,
            block: ContentBlock::ToolUse(ToolCall {
                id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                name: "get_weather".into(),
                arguments: String::new(),
            }),
        }),
        ChatChunk::ToolCall(
            ToolCallDelta::new(0)
                .id("toolu_01T1x1fJ34qAmk2tNTrN7Up6")
                .name("get_weather"),
        ),
        ChatChunk::ToolCall(ToolCallDelta::new(0)),
        ChatChunk::ToolCall(ToolCallDelta::new(0).arguments("{\"location\":")),
        ChatChunk::ToolCall(ToolCallDelta::new(0).arguments(" \"San Francisco, CA\"}")),
        ChatChunk::Finish(FinishReason::ToolCalls),
        ChatChunk::Usage(Usage::new(472, 89)),
    ]
}

async fn stream_with(pieces: Vec<Piece>) -> Vec<Result<ChatChunk, tower_llm_core::UpstreamError>> {
    let (mut service, sent) = anthropic(Reply::sse(pieces));
    let stream = call(&mut service, hello().streaming()).await.unwrap();
    let items = drain(stream).await;
    assert_eq!(sent.lock().unwrap()[0].body["stream"], true);
    items
}

#[tokio::test]
async fn documented_stream_at_awkward_splits() {
    let crlf = STREAM.replace('\n', "\r\n");
    for transcript in [STREAM, crlf.as_str()] {
        for (how, pieces) in deliveries(transcript.as_bytes()) {
            let items: Vec<_> = stream_with(pieces)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(items, expected_stream(), "{how}");
        }
        // And in four pieces, two of them one byte long.
        for cut in (0..transcript.len()).step_by(7) {
            let items: Vec<_> =
                stream_with(split(transcript.as_bytes(), &[cut, cut + 1, cut + 300]))
                    .await
                    .into_iter()
                    .map(Result::unwrap)
                    .collect();
            assert_eq!(items, expected_stream(), "cut at {cut}");
        }
    }
    let mut acc = ChatAccumulator::default();
    expected_stream().iter().for_each(|c| acc.push(c));
    let answer = acc.finish();
    assert_eq!(
        answer.tool_calls[0].arguments,
        "{\"location\": \"San Francisco, CA\"}"
    );
    // Text and a tool call say it all: no blocks to keep.
    assert!(answer.blocks.is_empty());
}

#[tokio::test]
async fn overloaded_error_event_inside_a_200_stream() {
    let items = stream_with(split(STREAM_ERROR.as_bytes(), &[100, 101])).await;
    assert!(matches!(
        items[0].as_ref().unwrap(),
        ChatChunk::Block(BlockDelta::Start { index: 0, .. })
    ));
    assert_eq!(
        items[1].as_ref().unwrap(),
        &ChatChunk::Content("Hello".into())
    );
    let error = items[2].as_ref().unwrap_err();
    assert_eq!(error.kind(), FailureKind::Overloaded);
    assert_eq!(error.code(), Some("overloaded_error"));
    assert_eq!(error.provider(), Some("anthropic"));
    assert_eq!(items.len(), 3);
}

#[tokio::test]
async fn stream_without_message_stop_is_an_error() {
    let cut = STREAM.find("event: message_stop").unwrap();
    let items = stream_with(split(&STREAM.as_bytes()[..cut], &[])).await;
    assert_eq!(
        items.last().unwrap().as_ref().unwrap_err().kind(),
        FailureKind::Transport
    );
    let mut pieces = split(&STREAM.as_bytes()[..400], &[]);
    pieces.push(Piece::Fail);
    let items = stream_with(pieces).await;
    assert_eq!(
        items.last().unwrap().as_ref().unwrap_err().kind(),
        FailureKind::Transport
    );
}

#[tokio::test]
async fn error_statuses() {
    let cases = [
        (
            400,
            "invalid_request_error",
            "max_tokens: field required",
            FailureKind::BadRequest,
        ),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 200001 tokens > 200000 maximum",
            FailureKind::ContextLengthExceeded,
        ),
        (
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API.",
            FailureKind::QuotaExhausted,
        ),
        (
            401,
            "authentication_error",
            "invalid x-api-key",
            FailureKind::Unauthorized,
        ),
        (403, "permission_error", "no", FailureKind::Forbidden),
        (
            404,
            "not_found_error",
            "model: claude-9",
            FailureKind::NotFound,
        ),
        (
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
            FailureKind::ContextLengthExceeded,
        ),
        (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            FailureKind::RateLimited,
        ),
        (
            500,
            "api_error",
            "Internal server error",
            FailureKind::ServerError,
        ),
        (
            529,
            "overloaded_error",
            "Overloaded",
            FailureKind::Overloaded,
        ),
    ];
    for (status, ty, message, kind) in cases {
        let body = json!({"type": "error", "error": {"type": ty, "message": message}}).to_string();
        let (mut service, _) = anthropic(Reply::json(status, &body).header("retry-after", "4"));
        let error = call(&mut service, hello()).await.unwrap_err();
        assert_eq!(error.kind(), kind, "{status} {ty}");
        assert_eq!(error.code(), Some(ty));
        assert_eq!(error.message(), message);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(4)));
        // The same through the streaming entry point.
        let (mut service, _) = anthropic(Reply::json(status, &body));
        assert_eq!(
            call(&mut service, hello().streaming())
                .await
                .unwrap_err()
                .kind(),
            kind
        );
    }
    let (mut service, _) = anthropic(Reply::json(
        200,
        "{\"type\":\"message\",\"content\":[{\"type\":",
    ));
    assert!(
        call(&mut service, hello())
            .await
            .unwrap_err()
            .message()
            .contains("not valid JSON")
    );
}

#[test]
fn missing_key_names_the_knob() {
    let (client, _) = mock(Reply::json(200, "{}"));
    let error = Anthropic::builder()
        .default_max_tokens(0)
        .api_key("k")
        .build_with(client)
        .unwrap_err();
    assert_eq!(error.knob(), "default_max_tokens");
}
