//! Each route's normal answer and streaming framing, over real HTTP.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use serde_json::{Value, json};
use tower::{Service, ServiceExt};
use tower_llm_testkit::{
    FaultPlan, MockServer, Route, TestClient, anthropic_messages, anthropic_messages_stream,
    embedding_for, gemini_generate, gemini_stream, openai_chat, openai_chat_stream,
    openai_embeddings, post_json, with_api_key,
};

async fn server() -> MockServer {
    MockServer::start(FaultPlan::healthy().name("fast"))
        .await
        .expect("mock starts")
}

fn json_of(response: &http::Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).expect("JSON body")
}

/// The `data:` payloads of an SSE body, with the event names before them.
fn sse_events(body: &str, separator: &str) -> Vec<(Option<String>, String)> {
    body.split(separator)
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d.to_owned();
                }
            }
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn openai_chat_answers_like_openai() {
    let server = server().await;
    let mut client = TestClient::new();
    let request = openai_chat(&server.base_url(), "gpt-4o-mini", "What is Rust?");
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-mock-server"], "fast");
    let body = json_of(&response);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "fast: What is Rust?"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    let prompt = tower_llm_core::estimate_text_tokens("What is Rust?");
    let completion = tower_llm_core::estimate_text_tokens("fast: What is Rust?");
    assert_eq!(usage["prompt_tokens"], prompt);
    assert_eq!(usage["completion_tokens"], completion);
    assert_eq!(usage["total_tokens"], prompt + completion);
    // Core reads the usage back.
    let read = tower_llm_core::ResponseUsage::usage(&response).unwrap();
    assert_eq!(read.total(), prompt + completion);
}

#[tokio::test]
async fn reply_is_the_last_user_message_or_the_fixed_reply() {
    let server = MockServer::start(FaultPlan::healthy().reply("forty-two"))
        .await
        .unwrap();
    let client = TestClient::new();
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]});
    let request = post_json(&server.url("/v1/chat/completions"), &body);
    let response = client.send(request).await.unwrap();
    assert_eq!(
        json_of(&response)["choices"][0]["message"]["content"],
        "forty-two"
    );

    let named = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let request = post_json(&named.url("/v1/chat/completions"), &body);
    let response = client.send(request).await.unwrap();
    assert_eq!(
        json_of(&response)["choices"][0]["message"]["content"],
        "mock: second"
    );
}

#[tokio::test]
async fn openai_stream_is_sse_with_usage_and_done() {
    let server = server().await;
    let client = TestClient::new();
    let request = openai_chat_stream(&server.base_url(), "gpt-4o", "one two three");
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(response.body().to_vec()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events = sse_events(&text, "\n\n");
    let (done, chunks) = events.split_last().unwrap();
    assert_eq!(done.1, "[DONE]");
    let chunks: Vec<Value> = chunks
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "fast: one two three");
    // One chunk per word, after the role chunk.
    let words = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(words, 4);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn embeddings_answer_each_input_with_its_vector() {
    let server = server().await;
    let client = TestClient::new();
    let response = client
        .send(openai_embeddings(&server.base_url(), &["alpha", "beta"]))
        .await
        .unwrap();
    let body = json_of(&response);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    for (i, input) in ["alpha", "beta"].iter().enumerate() {
        let item = &body["data"][i];
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let vector: Vec<f32> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(vector, embedding_for(input, 8));
    }
    let tokens = tower_llm_core::estimate_text_tokens("alpha")
        + tower_llm_core::estimate_text_tokens("beta");
    assert_eq!(body["usage"]["prompt_tokens"], tokens);

    let request = post_json(
        &server.url("/v1/embeddings"),
        &json!({"model": "e", "input": "gamma", "dimensions": 3}),
    );
    let body = json_of(&client.send(request).await.unwrap());
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 3);

    let request = post_json(&server.url("/v1/embeddings"), &json!({"model": "e"}));
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(json_of(&response)["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn anthropic_messages_answer_like_anthropic() {
    let server = server().await;
    let client = TestClient::new();
    let response = client
        .send(anthropic_messages(
            &server.base_url(),
            "claude-sonnet-4",
            "Hi",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json_of(&response);
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-sonnet-4");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["content"][0]["text"], "fast: Hi");
    assert_eq!(body["stop_reason"], "end_turn");
    assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn anthropic_stream_sends_every_event_type_in_order() {
    let server = server().await;
    let client = TestClient::new();
    let response = client
        .send(anthropic_messages_stream(
            &server.base_url(),
            "claude",
            "a b",
        ))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(response.body().to_vec()).unwrap();
    let events = sse_events(&text, "\n\n");
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let mut text = String::new();
    for (name, data) in &events {
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["type"], name.as_deref().unwrap());
        if let Some(delta) = data["delta"]["text"].as_str() {
            assert_eq!(data["delta"]["type"], "text_delta");
            text.push_str(delta);
        }
    }
    assert_eq!(text, "fast: a b");
    let delta: Value = serde_json::from_str(&events[7].1).unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn gemini_generate_answers_like_gemini() {
    let server = server().await;
    let client = TestClient::new();
    let response = client
        .send(gemini_generate(
            &server.base_url(),
            "gemini-2.0-flash",
            "Hey",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json_of(&response);
    let candidate = &body["candidates"][0];
    assert_eq!(candidate["content"]["parts"][0]["text"], "fast: Hey");
    assert_eq!(candidate["content"]["role"], "model");
    assert_eq!(candidate["finishReason"], "STOP");
    let usage = &body["usageMetadata"];
    assert_eq!(
        usage["totalTokenCount"].as_u64().unwrap(),
        usage["promptTokenCount"].as_u64().unwrap()
            + usage["candidatesTokenCount"].as_u64().unwrap()
    );
    assert_eq!(body["modelVersion"], "gemini-2.0-flash");
    assert_eq!(
        server.counters().route(Route::GeminiGenerate),
        1,
        "counted on its route"
    );
}

#[tokio::test]
async fn gemini_stream_is_crlf_sse_and_json_array_without_alt() {
    let server = server().await;
    let client = TestClient::new();
    let response = client
        .send(gemini_stream(&server.base_url(), "gemini-pro", "x y"))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(response.body().to_vec()).unwrap();
    assert!(text.ends_with("\r\n\r\n"));
    let events = sse_events(&text, "\r\n\r\n");
    assert_eq!(events.len(), 3);
    let chunks: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let joined: String = chunks
        .iter()
        .map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(joined, "fast: x y");
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert!(
        last["usageMetadata"]["candidatesTokenCount"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(chunks[0]["candidates"][0].get("finishReason").is_none());

    let url = server.url("/v1beta/models/gemini-pro:streamGenerateContent");
    let request = post_json(&url, &json!({"contents": [{"parts": [{"text": "x y"}]}]}));
    let response = client.send(request).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let array: Vec<Value> = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(array.len(), 3);
    assert_eq!(server.counters().route(Route::GeminiStream), 2);
}

#[tokio::test]
async fn unknown_paths_and_bad_bodies_get_provider_errors() {
    let server = server().await;
    let client = TestClient::new();
    let response = client
        .send(post_json(&server.url("/v1/nothing"), &json!({})))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = client
        .send(post_json(
            &server.url("/v1beta/models/gemini:countTokens"),
            &json!({}),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(json_of(&response)["error"]["status"], "NOT_FOUND");

    let mut request = anthropic_messages(&server.base_url(), "claude", "x");
    *request.body_mut() = Bytes::from_static(b"{not json");
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(json_of(&response)["error"]["type"], "invalid_request_error");

    let counters = server.counters();
    assert_eq!(counters.requests, 3);
    assert_eq!(counters.status(404), 2);
    assert_eq!(counters.status(400), 1);
}

#[tokio::test]
async fn keys_are_counted_per_provider_header() {
    let server = server().await;
    let client = TestClient::new();
    let base = server.base_url();
    let requests = [
        with_api_key(openai_chat(&base, "m", "a"), "sk-one"),
        with_api_key(openai_chat(&base, "m", "b"), "sk-one"),
        with_api_key(anthropic_messages(&base, "m", "c"), "sk-ant"),
        with_api_key(gemini_generate(&base, "m", "d"), "goog"),
        post_json(
            &format!("{base}/v1beta/models/m:generateContent?key=query-key"),
            &json!({"contents": []}),
        ),
        openai_chat(&base, "m", "no key"),
    ];
    for request in requests {
        assert_eq!(client.send(request).await.unwrap().status(), 200);
    }
    let counters = server.counters();
    assert_eq!(counters.key("sk-one"), 2);
    assert_eq!(counters.key("sk-ant"), 1);
    assert_eq!(counters.key("goog"), 1);
    assert_eq!(counters.key("query-key"), 1);
    assert_eq!(counters.key(""), 1);
    assert_eq!(counters.route(Route::OpenAiChat), 3);
    assert_eq!(counters.route(Route::AnthropicMessages), 1);
    assert_eq!(counters.route(Route::GeminiGenerate), 2);

    let received = server.received();
    assert_eq!(received.len(), 6);
    assert_eq!(received[0].api_key, "sk-one");
    assert_eq!(received[0].route, Some(Route::OpenAiChat));
    assert_eq!(received[0].json().unwrap()["messages"][0]["content"], "a");
    assert_eq!(received[2].headers["anthropic-version"], "2023-06-01");
    server.clear_received();
    assert!(server.received().is_empty());
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let values: Vec<u32> = text
        .bytes()
        .filter(|b| *b != b'=')
        .map(|b| ALPHABET.iter().position(|a| *a == b).unwrap() as u32)
        .collect();
    let mut out = Vec::new();
    for group in values.chunks(4) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, v)| n | v << (18 - 6 * i));
        for i in 0..group.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[tokio::test]
async fn embeddings_in_base64_are_little_endian_f32() {
    let server = server().await;
    let client = TestClient::new();
    let request = post_json(
        &server.url("/v1/embeddings"),
        &json!({"model": "e", "input": ["delta"], "encoding_format": "base64"}),
    );
    let body = json_of(&client.send(request).await.unwrap());
    let bytes = base64_decode(body["data"][0]["embedding"].as_str().unwrap());
    let vector: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vector, embedding_for("delta", 8));
}

#[tokio::test]
async fn replies_stop_at_max_tokens() {
    let server = MockServer::start(FaultPlan::healthy().reply("a long answer that goes on and on"))
        .await
        .unwrap();
    let client = TestClient::new();
    let body = json!({"model": "m", "max_tokens": 3,
        "messages": [{"role": "user", "content": "x"}]});
    let response = client
        .send(post_json(&server.url("/v1/chat/completions"), &body))
        .await
        .unwrap();
    let body = json_of(&response);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 3);
    let response = client
        .send(anthropic_messages_stream(&server.base_url(), "c", "x"))
        .await
        .unwrap();
    let text = String::from_utf8(response.body().to_vec()).unwrap();
    assert!(
        text.contains("\"stop_reason\":\"end_turn\""),
        "256 tokens is plenty"
    );
}
