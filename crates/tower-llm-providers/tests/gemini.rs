//! Gemini over a scripted client.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Piece, Reply, call, deliveries, drain, mock, split};
use serde_json::json;
use tower_llm_core::{FailureKind, Usage};
use tower_llm_providers::{
    ChatChunk, ChatRequest, FinishReason, Gemini, Message, ResponseFormat, Tool, ToolCall,
    ToolCallDelta, ToolChoice,
};

const GENERATE: &str = include_str!("fixtures/gemini_generate.json");
const FUNCTION_CALL: &str = include_str!("fixtures/gemini_function_call.json");
const STREAM: &str = include_str!("fixtures/gemini_stream.sse");
const QUOTA: &str = include_str!("fixtures/gemini_quota.json");

type Sent = std::sync::Arc<std::sync::Mutex<Vec<common::Sent>>>;

fn gemini(reply: Reply) -> (Gemini<common::MockClient>, Sent) {
    let (client, sent) = mock(reply);
    (
        Gemini::builder()
            .api_key("AIza-secret")
            .build_with(client)
            .unwrap(),
        sent,
    )
}

fn hello() -> ChatRequest {
    ChatRequest::new(
        "gemini-2.5-flash",
        vec![Message::system("Be brief."), Message::user("Tell a story")],
    )
}

#[tokio::test]
async fn documented_answer_and_request_mapping() {
    let (mut service, sent) = gemini(Reply::json(200, GENERATE));
    let request = ChatRequest {
        stop: vec!["END".into()],
        top_p: Some(0.9),
        response_format: Some(ResponseFormat::JsonSchema {
            name: "s".into(),
            schema: json!({"type": "object"}),
            strict: true,
        }),
        tool_choice: Some(ToolChoice::Function("f".into())),
        ..hello()
            .temperature(0.5)
            .max_tokens(200)
            .seed(11)
            .tool(Tool {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
            })
    };
    let answer = call(&mut service, request).await.unwrap();
    assert_eq!(
        answer.content,
        "In a land far away, a robot named Rusty found a magic backpack."
    );
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert_eq!(answer.model, "gemini-2.5-flash");
    assert_eq!(answer.id, "mAitaLmkHPPlz7IPvtfUqQ4");
    assert_eq!(
        answer.usage,
        Some(Usage::new(8, 34).with_cached_input_tokens(2))
    );

    let sent = sent.lock().unwrap();
    assert_eq!(
        sent[0].uri,
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(sent[0].headers["x-goog-api-key"], "AIza-secret");
    assert!(sent[0].headers["x-goog-api-key"].is_sensitive());
    assert_eq!(
        sent[0].body,
        json!({
            "contents": [{"role": "user", "parts": [{"text": "Tell a story"}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {"temperature": 0.5, "topP": 0.9, "maxOutputTokens": 200,
                "stopSequences": ["END"], "seed": 11, "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object"}},
            "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object"}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}
        })
    );
}

#[tokio::test]
async fn function_calls_and_responses() {
    let (mut service, sent) = gemini(Reply::json(200, FUNCTION_CALL));
    let answer = call(&mut service, hello()).await.unwrap();
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        answer.tool_calls,
        vec![ToolCall {
            id: "set_light_values".into(),
            name: "set_light_values".into(),
            arguments: r#"{"brightness":25,"color_temp":"warm"}"#.into()
        }]
    );
    let request = ChatRequest::new(
        "models/gemini-2.5-flash",
        vec![
            Message::user("Dim the lights"),
            Message::assistant_tool_calls(answer.tool_calls.clone()),
            Message {
                name: None,
                ..Message::tool_result("set_light_values", "", "{\"ok\":true}")
            },
        ],
    );
    call(&mut service, request).await.unwrap();
    let sent = sent.lock().unwrap();
    assert!(
        sent[1]
            .uri
            .ends_with("/models/gemini-2.5-flash:generateContent")
    );
    assert_eq!(
        sent[1].body["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Dim the lights"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "set_light_values", "args": {"brightness": 25, "color_temp": "warm"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "set_light_values", "response": {"ok": true}}}]}
        ])
    );
}

fn expected_stream() -> Vec<ChatChunk> {
    vec![
        ChatChunk::Content("The".into()),
        ChatChunk::Content(" quick brown fox".into()),
        ChatChunk::Content(" jumps.".into()),
        ChatChunk::Finish(FinishReason::Stop),
        ChatChunk::Usage(Usage::new(9, 7)),
    ]
}

async fn stream_with(pieces: Vec<Piece>) -> Vec<Result<ChatChunk, tower_llm_core::UpstreamError>> {
    let (mut service, sent) = gemini(Reply::sse(pieces));
    let items = drain(call(&mut service, hello().streaming()).await.unwrap()).await;
    assert!(
        sent.lock().unwrap()[0]
            .uri
            .ends_with(":streamGenerateContent?alt=sse")
    );
    items
}

#[tokio::test]
async fn documented_stream_at_awkward_splits() {
    for (how, pieces) in deliveries(STREAM.as_bytes()) {
        let items: Vec<_> = stream_with(pieces)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(items, expected_stream(), "{how}");
    }
}

#[tokio::test]
async fn stream_without_a_finish_reason_is_an_error() {
    let cut = STREAM.rfind("data:").unwrap();
    let items = stream_with(split(&STREAM.as_bytes()[..cut], &[])).await;
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[2].as_ref().unwrap_err().kind(),
        FailureKind::Transport
    );
}

#[tokio::test]
async fn streamed_function_call_and_in_stream_error() {
    let call_event = format!("data: {}\r\n\r\n", FUNCTION_CALL.replace('\n', ""));
    let items = stream_with(split(call_event.as_bytes(), &[10])).await;
    assert_eq!(
        items[0].as_ref().unwrap(),
        &ChatChunk::ToolCall(
            ToolCallDelta::new(0)
                .id("set_light_values")
                .name("set_light_values")
                .arguments(r#"{"brightness":25,"color_temp":"warm"}"#)
        )
    );
    assert_eq!(
        items[1].as_ref().unwrap(),
        &ChatChunk::Finish(FinishReason::ToolCalls)
    );

    let error_event = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]},\"index\":0}]}\n\ndata: {\"error\":{\"code\":503,\"message\":\"The model is overloaded. Please try again later.\",\"status\":\"UNAVAILABLE\"}}\n\n";
    let items = stream_with(split(error_event.as_bytes(), &[])).await;
    assert_eq!(items[0].as_ref().unwrap(), &ChatChunk::Content("a".into()));
    assert_eq!(
        items[1].as_ref().unwrap_err().kind(),
        FailureKind::Overloaded
    );
    assert_eq!(items.len(), 2);

    let blocked = "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"usageMetadata\":{\"promptTokenCount\":5}}\n\n";
    let items = stream_with(split(blocked.as_bytes(), &[])).await;
    assert_eq!(
        items[0].as_ref().unwrap_err().kind(),
        FailureKind::ContentFiltered
    );
}

#[tokio::test]
async fn quota_and_retry_info() {
    let (mut service, _) = gemini(Reply::json(429, QUOTA));
    let error = call(&mut service, hello()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::QuotaExhausted);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(43)));
    assert_eq!(error.code(), Some("RESOURCE_EXHAUSTED"));

    let per_minute = QUOTA.replace("PerDay", "PerMinute");
    let (mut service, _) = gemini(Reply::json(429, &per_minute));
    let error = call(&mut service, hello().streaming()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::RateLimited);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(43)));

    let (mut service, _) = gemini(Reply::json(429, &per_minute).header("retry-after", "2"));
    assert_eq!(
        call(&mut service, hello()).await.unwrap_err().retry_after(),
        Some(Duration::from_secs(2))
    );
}

#[tokio::test]
async fn error_statuses_and_bad_bodies() {
    let cases = [
        (400, "INVALID_ARGUMENT", FailureKind::BadRequest),
        (403, "PERMISSION_DENIED", FailureKind::Forbidden),
        (404, "NOT_FOUND", FailureKind::NotFound),
        (500, "INTERNAL", FailureKind::ServerError),
        (503, "UNAVAILABLE", FailureKind::Overloaded),
        (504, "DEADLINE_EXCEEDED", FailureKind::Timeout),
    ];
    for (status, code, kind) in cases {
        let body = json!({"error": {"code": status, "message": "m", "status": code}}).to_string();
        let (mut service, _) = gemini(Reply::json(status, &body));
        let error = call(&mut service, hello()).await.unwrap_err();
        assert_eq!(error.kind(), kind, "{code}");
        assert_eq!(error.code(), Some(code));
    }
    let (mut service, _) = gemini(Reply::json(
        200,
        "{\"promptFeedback\":{\"blockReason\":\"PROHIBITED_CONTENT\"}}",
    ));
    assert_eq!(
        call(&mut service, hello()).await.unwrap_err().kind(),
        FailureKind::ContentFiltered
    );
    let (mut service, _) = gemini(Reply::json(200, "[1, 2"));
    assert!(
        call(&mut service, hello())
            .await
            .unwrap_err()
            .message()
            .contains("not valid JSON")
    );
    let (mut service, _) = gemini(Reply::json(502, "<html><title>Bad Gateway</title></html>"));
    assert_eq!(
        call(&mut service, hello()).await.unwrap_err().message(),
        "HTML error page (Bad Gateway)"
    );
    let (mut service, sent) = gemini(Reply::json(200, GENERATE));
    let error = call(
        &mut service,
        ChatRequest::new("../etc", vec![Message::user("x")]),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), FailureKind::BadRequest);
    assert!(sent.lock().unwrap().is_empty(), "nothing was sent");
}
