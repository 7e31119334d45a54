//! OpenAI, OpenAI-compatible and Azure over a scripted client: documented fixtures, streams
//! split at every awkward boundary, errors of every kind.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Piece, Reply, call, deliveries, drain, mock, split};
use serde_json::json;
use tower_llm_core::{BoxError, Classify, DefaultClassifier, FailureKind, ResponseUsage, Usage};
use tower_llm_providers::{
    ChatAccumulator, ChatChunk, ChatRequest, EmbeddingRequest, FinishReason, Message, OpenAi,
    ResponseFormat, StreamTimeouts, Tool, ToolCall, ToolChoice,
};

const CHAT: &str = include_str!("fixtures/openai_chat.json");
const TOOL_CALL: &str = include_str!("fixtures/openai_tool_call.json");
const STREAM: &str = include_str!("fixtures/openai_stream.sse");
const STREAM_TOOLS: &str = include_str!("fixtures/openai_stream_tools.sse");
const STREAM_ERROR: &str = include_str!("fixtures/openai_stream_error.sse");

fn openai(
    reply: Reply,
) -> (
    OpenAi<common::MockClient>,
    std::sync::Arc<std::sync::Mutex<Vec<common::Sent>>>,
) {
    let (client, sent) = mock(reply);
    let service = OpenAi::builder()
        .api_key("sk-test-secret-key")
        .organization("org-1")
        .build_with(client)
        .unwrap();
    (service, sent)
}

fn hello() -> ChatRequest {
    ChatRequest::new(
        "gpt-4o-mini",
        vec![Message::system("Be brief."), Message::user("Hello")],
    )
}

#[tokio::test]
async fn documented_answer_and_request_encoding() {
    let (mut service, sent) = openai(Reply::json(200, CHAT));
    let request = ChatRequest {
        stop: vec!["END".into()],
        user: Some("user-42".into()),
        tool_choice: Some(ToolChoice::Function("lookup".into())),
        response_format: Some(ResponseFormat::JsonSchema {
            name: "answer".into(),
            schema: json!({"type": "object"}),
            strict: true,
        }),
        ..hello()
            .temperature(0.2)
            .max_tokens(100)
            .seed(7)
            .tool(Tool {
                name: "lookup".into(),
                description: Some("Looks things up".into()),
                parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
            })
            .extra("logprobs", json!(true))
            .tenant("acme")
    };
    let answer = call(&mut service, request).await.unwrap();
    assert_eq!(answer.content, "Hello! How can I assist you today?");
    assert_eq!(answer.id, "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
    assert_eq!(answer.model, "gpt-4.1-2025-04-14");
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert_eq!(answer.usage(), Some(Usage::new(19, 10)));
    assert_eq!(answer.extra["system_fingerprint"], "fp_44709d6fcb");
    assert_eq!(answer.extra["service_tier"], "default");

    let sent = sent.lock().unwrap();
    let sent = &sent[0];
    assert_eq!(sent.uri, "https://api.openai.com/v1/chat/completions");
    assert_eq!(sent.headers["authorization"], "Bearer sk-test-secret-key");
    assert!(sent.headers["authorization"].is_sensitive());
    assert_eq!(sent.headers["openai-organization"], "org-1");
    assert_eq!(
        sent.body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"}
            ],
            "temperature": 0.2,
            "max_completion_tokens": 100,
            "stop": ["END"],
            "seed": 7,
            "tools": [{"type": "function", "function": {"name": "lookup",
                "description": "Looks things up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
            "user": "user-42",
            "logprobs": true
        })
    );
}

#[tokio::test]
async fn tool_calls_round_trip() {
    let (mut service, sent) = openai(Reply::json(200, TOOL_CALL));
    let answer = call(&mut service, hello()).await.unwrap();
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(answer.content, "");
    assert_eq!(
        answer.tool_calls,
        vec![ToolCall {
            id: "call_abc123".into(),
            name: "get_current_weather".into(),
            arguments: "{\n\"location\": \"Boston, MA\"\n}".into(),
        }]
    );
    assert_eq!(answer.usage.unwrap().cached_input_tokens, 64);

    // The answer goes back as an assistant message, the result as a tool message.
    let follow_up = ChatRequest::new(
        "gpt-4o-mini",
        vec![
            Message::user("Weather?"),
            Message::assistant_tool_calls(answer.tool_calls.clone()),
            Message::tool_result("call_abc123", "get_current_weather", "{\"temp\": 20}"),
        ],
    );
    call(&mut service, follow_up).await.unwrap();
    let sent = sent.lock().unwrap();
    assert_eq!(
        sent[1].body["messages"],
        json!([
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_abc123",
                "type": "function", "function": {"name": "get_current_weather",
                "arguments": "{\n\"location\": \"Boston, MA\"\n}"}}]},
            {"role": "tool", "content": "{\"temp\": 20}", "tool_call_id": "call_abc123"}
        ])
    );
}

fn expected_stream() -> Vec<ChatChunk> {
    vec![
        ChatChunk::Content("Hello".into()),
        ChatChunk::Content(", wörld 日本".into()),
        ChatChunk::Finish(FinishReason::Stop),
        ChatChunk::Usage(Usage::new(9, 4)),
    ]
}

async fn stream_with(pieces: Vec<Piece>) -> Vec<Result<ChatChunk, tower_llm_core::UpstreamError>> {
    let (mut service, _) = openai(Reply::sse(pieces));
    let stream = call(&mut service, hello().streaming()).await.unwrap();
    assert!(
        DefaultClassifier
            .classify(Ok::<_, &BoxError>(&stream))
            .is_success()
    );
    drain(stream).await
}

#[tokio::test]
async fn stream_whole_and_split_at_every_byte() {
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
async fn stream_request_asks_for_usage_and_events() {
    let (mut service, sent) = openai(Reply::sse(split(STREAM.as_bytes(), &[])));
    let _ = drain(call(&mut service, hello().streaming()).await.unwrap()).await;
    let sent = sent.lock().unwrap();
    assert_eq!(sent[0].body["stream"], true);
    assert_eq!(
        sent[0].body["stream_options"],
        json!({"include_usage": true})
    );
    assert_eq!(sent[0].headers["accept"], "text/event-stream");
}

#[tokio::test]
async fn streamed_tool_calls_accumulate() {
    let items = stream_with(split(STREAM_TOOLS.as_bytes(), &[7, 100, 333])).await;
    let mut acc = ChatAccumulator::default();
    for item in &items {
        acc.push(item.as_ref().unwrap());
    }
    let response = acc.finish();
    assert_eq!(response.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        response.tool_calls,
        vec![ToolCall {
            id: "call_DdmO9pD3xa9XTPNJ32zg2hcA".into(),
            name: "get_weather".into(),
            arguments: "{\"location\":\"Paris\"}".into(),
        }]
    );
}

#[tokio::test]
async fn error_event_in_a_200_stream_is_a_classified_error_item() {
    let items = stream_with(split(STREAM_ERROR.as_bytes(), &[50])).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(
        items[0].as_ref().unwrap(),
        &ChatChunk::Content("Hel".into())
    );
    let error = items[1].as_ref().unwrap_err();
    assert_eq!(error.kind(), FailureKind::ServerError);
    assert_eq!(error.code(), Some("server_error"));
    assert!(error.message().contains("The server had an error"));
    let boxed: BoxError = Box::new(items.into_iter().nth(1).unwrap().unwrap_err());
    assert!(
        DefaultClassifier
            .classify(Err::<&(), _>(&boxed))
            .kind()
            .unwrap()
            .is_retryable()
    );
}

#[tokio::test]
async fn cut_stream_is_an_error_never_a_silent_success() {
    // Ends cleanly at an event boundary, but before [DONE].
    let cut_at = STREAM.find("data: [DONE]").unwrap();
    let items = stream_with(split(&STREAM.as_bytes()[..cut_at], &[])).await;
    let error = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(error.kind(), FailureKind::Transport);
    assert!(error.message().contains("terminal event"));
    // Ends mid-event.
    let items = stream_with(split(&STREAM.as_bytes()[..cut_at - 20], &[])).await;
    assert!(items.last().unwrap().is_err());
    // The connection resets mid-stream.
    let mut pieces = split(&STREAM.as_bytes()[..200], &[]);
    pieces.push(Piece::Fail);
    let items = stream_with(pieces).await;
    let error = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(error.kind(), FailureKind::Transport);
    assert!(std::error::Error::source(error).is_some());
}

#[tokio::test]
async fn stream_error_statuses_and_non_stream_bodies() {
    let (mut service, _) = openai(
        Reply::json(429, r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#)
            .header("retry-after", "20"),
    );
    let error = call(&mut service, hello().streaming()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::RateLimited);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(20)));

    // A 200 with a JSON error instead of an event stream (some compatible servers).
    let (mut service, _) = openai(Reply::json(
        200,
        r#"{"error":{"message":"model not loaded","type":"server_error"}}"#,
    ));
    let error = call(&mut service, hello().streaming()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::ServerError);
    assert_eq!(error.message(), "model not loaded");

    // A 200 HTML page from a captive proxy.
    let mut reply = Reply::json(200, "<!DOCTYPE html><html><title>Login</title></html>");
    reply.headers = vec![("content-type", "text/html".into())];
    let (mut service, _) = openai(reply);
    let error = call(&mut service, hello().streaming()).await.unwrap_err();
    assert!(error.message().contains("HTML"), "{error}");
}

#[tokio::test]
async fn every_error_status_is_classified() {
    let cases = [
        (
            400,
            r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#,
            FailureKind::BadRequest,
        ),
        (
            400,
            r#"{"error":{"message":"too long","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            FailureKind::ContextLengthExceeded,
        ),
        (
            400,
            r#"{"error":{"message":"filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#,
            FailureKind::ContentFiltered,
        ),
        (
            401,
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            FailureKind::Unauthorized,
        ),
        (
            401,
            r#"{"error":{"message":"no key","type":"invalid_request_error","param":null,"code":null}}"#,
            FailureKind::Unauthorized,
        ),
        (
            403,
            r#"{"error":{"message":"region","type":"invalid_request_error","code":"unsupported_country_region_territory"}}"#,
            FailureKind::Forbidden,
        ),
        (
            404,
            r#"{"error":{"message":"The model does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
            FailureKind::NotFound,
        ),
        (408, "", FailureKind::Timeout),
        (413, "", FailureKind::ContextLengthExceeded),
        (422, "{}", FailureKind::BadRequest),
        (
            429,
            r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
            FailureKind::RateLimited,
        ),
        (
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
            FailureKind::QuotaExhausted,
        ),
        (
            500,
            r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#,
            FailureKind::ServerError,
        ),
        (
            502,
            "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
            FailureKind::ServerError,
        ),
        (
            503,
            r#"{"error":{"message":"The engine is currently overloaded","type":"server_error"}}"#,
            FailureKind::Overloaded,
        ),
        (504, "", FailureKind::Timeout),
    ];
    for (status, body, kind) in cases {
        let (mut service, _) = openai(Reply::json(status, body));
        let error = call(&mut service, hello()).await.unwrap_err();
        assert_eq!(error.kind(), kind, "{status} {body}");
        assert_eq!(error.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(error.provider(), Some("openai"));
        if !body.is_empty() {
            assert_eq!(error.body().unwrap().as_ref(), body.as_bytes());
        }
    }
}

#[tokio::test]
async fn retry_after_in_every_header_form() {
    let cases: [(&'static str, &str, Duration); 4] = [
        ("retry-after", "7", Duration::from_secs(7)),
        ("retry-after-ms", "1500", Duration::from_millis(1500)),
        ("x-ms-retry-after-ms", "250", Duration::from_millis(250)),
        (
            "retry-after",
            "Wed, 21 Oct 2099 07:28:00 GMT",
            Duration::ZERO,
        ),
    ];
    for (name, value, expected) in cases {
        let (mut service, _) = openai(Reply::json(429, "{}").header(name, value));
        let error = call(&mut service, hello()).await.unwrap_err();
        let after = error.retry_after().unwrap();
        if expected.is_zero() {
            assert!(after > Duration::from_secs(3600), "{name}: {after:?}");
        } else {
            assert_eq!(after, expected, "{name}");
        }
    }
}

#[tokio::test]
async fn malformed_truncated_and_oversized_bodies() {
    let (mut service, _) = openai(Reply::json(200, r#"{"id":"x","choices":[{"message":"#));
    let error = call(&mut service, hello()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::ServerError);
    assert!(error.message().contains("not valid JSON"), "{error}");
    assert!(error.body().is_some());

    let (mut service, _) = openai(Reply::json(200, "<html><body>Gateway</body></html>"));
    let error = call(&mut service, hello()).await.unwrap_err();
    assert!(error.message().contains("HTML"), "{error}");

    let (mut service, _) = openai(Reply::json(200, r#"{"id":"x","choices":[]}"#));
    assert!(
        call(&mut service, hello())
            .await
            .unwrap_err()
            .message()
            .contains("no choice")
    );

    let mut reply = Reply::json(200, &CHAT[..100]);
    reply.pieces.push(Piece::Fail);
    let (mut service, _) = openai(reply);
    let error = call(&mut service, hello()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Transport);
    assert!(error.message().contains("cut short"), "{error}");

    let (client, _) = mock(Reply::json(200, CHAT));
    let mut small = OpenAi::builder()
        .api_key("k")
        .max_body_bytes(64)
        .build_with(client)
        .unwrap();
    let error = call(&mut small, hello()).await.unwrap_err();
    assert!(error.message().contains("larger than 64 bytes"), "{error}");
    assert_eq!(error.body().unwrap().len(), 64);
}

#[tokio::test(start_paused = true)]
async fn stream_timeouts_on_the_paused_clock() {
    let first_line = STREAM.find("\n\n").unwrap() + 2;
    let second = first_line + STREAM[first_line..].find("\n\n").unwrap() + 2;
    let build = |pieces: Vec<Piece>, timeouts: StreamTimeouts| {
        let (client, _) = mock(Reply::sse(pieces));
        OpenAi::builder()
            .api_key("k")
            .stream_timeouts(timeouts)
            .build_with(client)
            .unwrap()
    };
    let data = |range: std::ops::Range<usize>| {
        Piece::Data(bytes::Bytes::copy_from_slice(&STREAM.as_bytes()[range]))
    };

    // First token: the first content arrives after 5 s, the limit is 2 s.
    let mut service = build(
        vec![
            data(0..first_line),
            Piece::Stall(Duration::from_secs(5)),
            data(first_line..STREAM.len()),
        ],
        StreamTimeouts::none().first_token(Duration::from_secs(2)),
    );
    let started = tokio::time::Instant::now();
    let items = drain(call(&mut service, hello().streaming()).await.unwrap()).await;
    let error = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(error.kind(), FailureKind::Timeout);
    assert!(error.message().contains("first-token"), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));

    // Between chunks: "Hello" at once, then a 10 s stall against a 3 s limit.
    let mut service = build(
        vec![
            data(0..second),
            Piece::Stall(Duration::from_secs(10)),
            data(second..STREAM.len()),
        ],
        StreamTimeouts::none()
            .first_token(Duration::from_secs(2))
            .between_chunks(Duration::from_secs(3)),
    );
    let started = tokio::time::Instant::now();
    let items = drain(call(&mut service, hello().streaming()).await.unwrap()).await;
    assert_eq!(
        items[0].as_ref().unwrap(),
        &ChatChunk::Content("Hello".into())
    );
    let error = items[1].as_ref().unwrap_err();
    assert!(error.message().contains("between-chunks"), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(3));

    // Total: each chunk comes within the between-chunks limit, but the whole takes too long.
    let mut pieces = Vec::new();
    for piece in split(
        STREAM.as_bytes(),
        &[first_line, second, second + 200, second + 400],
    ) {
        pieces.push(piece);
        pieces.push(Piece::Stall(Duration::from_secs(2)));
    }
    let mut service = build(
        pieces,
        StreamTimeouts::none()
            .between_chunks(Duration::from_secs(3))
            .total(Duration::from_secs(5)),
    );
    let started = tokio::time::Instant::now();
    let items = drain(call(&mut service, hello().streaming()).await.unwrap()).await;
    let error = items.last().unwrap().as_ref().unwrap_err();
    assert!(error.message().contains("total"), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(5));

    // Without limits the same slow stream completes.
    let mut pieces = Vec::new();
    for piece in split(STREAM.as_bytes(), &[first_line, second]) {
        pieces.push(piece);
        pieces.push(Piece::Stall(Duration::from_secs(60)));
    }
    let mut service = build(pieces, StreamTimeouts::none());
    let items = drain(call(&mut service, hello().streaming()).await.unwrap()).await;
    assert!(items.iter().all(Result::is_ok));
}

#[tokio::test]
async fn compatible_servers_and_azure() {
    let (client, sent) = mock(Reply::json(200, CHAT));
    let mut vllm = OpenAi::compatible("http://localhost:8000/v1/")
        .build_with(client)
        .unwrap();
    call(&mut vllm, hello().max_tokens(5)).await.unwrap();
    {
        let sent = sent.lock().unwrap();
        assert_eq!(sent[0].uri, "http://localhost:8000/v1/chat/completions");
        assert!(!sent[0].headers.contains_key("authorization"));
        assert_eq!(sent[0].body["max_tokens"], 5);
        assert!(sent[0].body.get("max_completion_tokens").is_none());
    }

    let (client, _) = mock(Reply::json(500, "{}"));
    let mut named = OpenAi::compatible("https://api.groq.com/openai/v1")
        .api_key("gsk")
        .name("groq")
        .build_with(client)
        .unwrap();
    assert_eq!(
        call(&mut named, hello()).await.unwrap_err().provider(),
        Some("groq")
    );

    let (client, sent) = mock(Reply::json(200, CHAT));
    let mut azure = OpenAi::azure("https://res.openai.azure.com", "gpt4o-prod", "2024-10-21")
        .api_key("azure-secret")
        .build_with(client)
        .unwrap();
    call(&mut azure, hello()).await.unwrap();
    let sent = sent.lock().unwrap();
    assert_eq!(
        sent[0].uri,
        "https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(sent[0].headers["api-key"], "azure-secret");
    assert!(sent[0].headers["api-key"].is_sensitive());
}

#[tokio::test]
async fn azure_content_filter_error() {
    let body = r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":true,"severity":"high"}}}}}"#;
    let (client, _) = mock(Reply::json(400, body).header("x-ms-retry-after-ms", "10"));
    let mut azure = OpenAi::azure("https://res.openai.azure.com", "d", "2024-10-21")
        .api_key("k")
        .build_with(client)
        .unwrap();
    let error = call(&mut azure, hello()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::ContentFiltered);
    assert_eq!(error.provider(), Some("azure-openai"));
    assert!(!error.kind().is_retryable());
}

#[tokio::test]
async fn embeddings() {
    let body = r#"{"object":"list","data":[{"object":"embedding","embedding":[0.5,0.25],"index":1},{"object":"embedding","embedding":[0.1,-0.2],"index":0}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let (client, sent) = mock(Reply::json(200, body));
    let mut service = OpenAi::builder().api_key("k").build_with(client).unwrap();
    let request = EmbeddingRequest {
        dimensions: Some(2),
        ..EmbeddingRequest::new("text-embedding-3-small", vec!["a".into(), "b".into()])
    };
    let answer = call(&mut service, request).await.unwrap();
    assert_eq!(answer.embeddings, vec![vec![0.1, -0.2], vec![0.5, 0.25]]);
    assert_eq!(answer.usage.unwrap().input_tokens, 8);
    let sent = sent.lock().unwrap();
    assert_eq!(sent[0].uri, "https://api.openai.com/v1/embeddings");
    assert_eq!(
        sent[0].body,
        json!({"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "float", "dimensions": 2})
    );
}

/// One vector per input, each at its index: a missing, duplicated or out-of-range index is a
/// malformed answer, never texts paired with the wrong vectors; a server that sends no
/// indices lists them in input order.
#[tokio::test]
async fn embeddings_pair_each_input_with_its_vector_or_fail() {
    let request = || {
        EmbeddingRequest::new(
            "text-embedding-3-small",
            vec!["a".into(), "b".into(), "c".into()],
        )
    };
    let answer = |data: &str| format!(r#"{{"object":"list","data":{data},"model":"m"}}"#);
    for (data, why) in [
        ("[]", "no vector"),
        (
            r#"[{"embedding":[1.0],"index":0},{"embedding":[2.0],"index":1}]"#,
            "one missing",
        ),
        (
            r#"[{"embedding":[1.0],"index":0},{"embedding":[2.0],"index":0},{"embedding":[3.0],"index":1}]"#,
            "a duplicate",
        ),
        (
            r#"[{"embedding":[1.0],"index":0},{"embedding":[2.0],"index":1},{"embedding":[3.0],"index":7}]"#,
            "out of range",
        ),
        (
            r#"[{"embedding":[1.0]},{"embedding":[2.0],"index":1},{"embedding":[3.0],"index":2}]"#,
            "one without its index",
        ),
    ] {
        let (client, _) = mock(Reply::json(200, &answer(data)));
        let mut service = OpenAi::builder().api_key("k").build_with(client).unwrap();
        let error = call(&mut service, request()).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::ServerError, "{why}: {error}");
    }
    let (client, _) = mock(Reply::json(
        200,
        &answer(r#"[{"embedding":[1.0]},{"embedding":[2.0]},{"embedding":[3.0]}]"#),
    ));
    let mut service = OpenAi::builder().api_key("k").build_with(client).unwrap();
    let vectors = call(&mut service, request()).await.unwrap().embeddings;
    assert_eq!(vectors, vec![vec![1.0], vec![2.0], vec![3.0]]);
}

#[test]
fn config_errors_name_the_knob() {
    let (client, _) = mock(Reply::json(200, "{}"));
    let error = OpenAi::compatible("not a url")
        .build_with(client.clone())
        .unwrap_err();
    assert_eq!(error.knob(), "base_url");
    let error = OpenAi::builder()
        .api_key("bad\nkey")
        .build_with(client.clone())
        .unwrap_err();
    assert_eq!(error.knob(), "api_key");
    let error = OpenAi::azure("https://x", "a/b", "v")
        .api_key("k")
        .build_with(client.clone())
        .unwrap_err();
    assert_eq!(error.knob(), "deployment");
    let error = OpenAi::builder()
        .api_key("k")
        .max_body_bytes(0)
        .build_with(client)
        .unwrap_err();
    assert_eq!(error.knob(), "max_body_bytes");
}

#[tokio::test]
async fn extra_overrides_a_modelled_field_instead_of_duplicating_it() {
    let (mut service, sent) = openai(Reply::json(200, CHAT));
    let request = hello()
        .temperature(0.2)
        .extra("temperature", json!(1.0))
        .extra("logit_bias", json!({"50256": -100}));
    call(&mut service, request).await.unwrap();
    let sent = sent.lock().unwrap();
    assert_eq!(sent[0].body["temperature"], 1.0);
    assert_eq!(sent[0].body["logit_bias"], json!({"50256": -100}));
}

#[test]
fn decoding_keeps_unmodelled_fields_in_extra_and_only_those() {
    let body = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "system_fingerprint": null,
        "service_tier": {"tier": "default", "nested": [1, 2, {"a": "\u{e9}\n"}]},
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi \"there\""},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 3,
                  "prompt_tokens_details": {"cached_tokens": 2}},
    });
    let answer = tower_llm_providers::openai::decode_response(body.to_string().as_bytes()).unwrap();
    assert_eq!(answer.id, "chatcmpl-1");
    assert_eq!(answer.model, "gpt-4o-mini");
    assert_eq!(answer.content, "Hi \"there\"");
    assert_eq!(answer.finish_reason, Some(FinishReason::Length));
    let usage = answer.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (4, 3));
    assert_eq!(usage.cached_input_tokens, 2);
    let keys: Vec<&str> = answer.extra.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["created", "object", "service_tier", "system_fingerprint"]
    );
    assert_eq!(answer.extra["service_tier"], body["service_tier"]);
    assert_eq!(answer.extra["system_fingerprint"], json!(null));
}

#[test]
fn decoding_reads_nulls_as_absent_and_refuses_what_is_not_a_completion() {
    use tower_llm_providers::openai::decode_response;
    let nulls = r#"{"id":null,"model":null,"usage":null,
        "choices":[{"index":0,"message":{"content":"ok"},"finish_reason":null}]}"#;
    let answer = decode_response(nulls.as_bytes()).unwrap();
    assert_eq!((answer.id.as_str(), answer.content.as_str()), ("", "ok"));
    assert!(answer.usage.is_none() && answer.extra.is_empty());

    let error = r#"{"error":{"message":"quota","type":"insufficient_quota"}}"#;
    let failure = decode_response(error.as_bytes()).unwrap_err();
    assert_eq!(failure.kind(), FailureKind::QuotaExhausted);

    let twice = r#"{"id":"a","id":"b","choices":[{"message":{"content":"x"}}]}"#;
    let failure = decode_response(twice.as_bytes()).unwrap_err();
    assert!(
        failure.to_string().contains("duplicate field `id`"),
        "{failure}"
    );

    for not_an_object in [r#"[1]"#, r#""text""#, r#"{"choices":3}"#, r#"{"id":"a""#] {
        let failure = decode_response(not_an_object.as_bytes()).unwrap_err();
        assert_eq!(failure.kind(), FailureKind::ServerError, "{not_an_object}");
    }
}
