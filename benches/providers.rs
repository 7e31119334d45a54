//! The serde work of a provider call, ours beside async-openai's types, same data, same run:
//! encoding a 4 KiB chat request, decoding a chat completion, decoding a 200-chunk stream.
//!
//! Ours does more than a serde round trip: it maps the provider-neutral `ChatRequest` to the
//! wire format (and back), keeps unmodelled fields in `extra`, and parses the SSE framing
//! incrementally from 1 KiB network-sized pieces. async-openai's types only deserialize the
//! chunk JSON that a caller has already cut out of the stream (its SSE parsing lives in its
//! client, not in its types), so the stream comparison flatters the peer slightly.
//!
//! `providers/chat_call` is a whole `OpenAi` chat call (encode, the inner HTTP service, read
//! and decode the body, the observability funnel) over an in-memory HTTP service answering
//! a canned completion: what the provider costs beside the network. Its `no_subscriber` case
//! runs with no `tracing` subscriber and no `metrics` recorder installed; `subscriber_info`
//! (only with the funnel built in) with a `tracing_subscriber` fmt subscriber at INFO
//! writing to `io::sink`, the cost of the span a real subscriber records.
//!
//! Whether the funnel is built in is a compile-time choice (the providers' `tracing` and
//! `metrics` features, on by default), so the features-off figure comes from another build:
//! compare the two with a criterion baseline.
//!
//! ```sh
//! cargo bench -p tower-llm-benches --bench providers --no-default-features -- chat_call --save-baseline off
//! cargo bench -p tower-llm-benches --bench providers -- chat_call --baseline-lenient off
//! ```
//!
//! The second run reports `no_subscriber` against the features-off build (criterion's
//! "change"), and `subscriber_info` on its own (it has no features-off counterpart).
//!
//! Run: `cargo bench -p tower-llm-benches --bench providers`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::hint::black_box;
use std::time::Instant;

use async_openai::types::chat::{
    CreateChatCompletionRequest, CreateChatCompletionResponse, CreateChatCompletionStreamResponse,
};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tower::{Service, ServiceExt, service_fn};
use tower_llm_providers::{ChatRequest, ChunkDecoder, Message, OpenAi, RequestBody, Tool, openai};

/// A conversation of about 4 KiB of JSON.
fn request() -> ChatRequest {
    let paragraph = "The quick brown fox jumps over the lazy dog while the engineers measure \
                     how long it takes to serialize a realistic chat request. ";
    let mut messages = vec![Message::system(paragraph.repeat(4))];
    for turn in 0..6 {
        messages.push(Message::user(format!(
            "Question {turn}: {}",
            paragraph.repeat(2)
        )));
        messages.push(Message::assistant(format!("Answer {turn}: {paragraph}")));
    }
    messages.push(Message::user(
        "And finally, summarise all of that in one sentence.",
    ));
    messages.push(Message::user(format!("Context: {}", paragraph.repeat(3))));
    ChatRequest::new("gpt-4o-mini", messages)
        .temperature(0.2)
        .max_tokens(512)
        .tool(Tool {
            name: "lookup".into(),
            description: Some("Looks a term up in the glossary".into()),
            parameters: json!({"type": "object", "properties": {"term": {"type": "string"}},
                "required": ["term"]}),
        })
}

fn response_body() -> String {
    let content = "Here is a summary of the conversation so far, written to be about as long \
                   as a typical answer. "
        .repeat(12);
    json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
            "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1024, "completion_tokens": 256, "total_tokens": 1280,
            "prompt_tokens_details": {"cached_tokens": 512, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
        "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb"
    })
    .to_string()
}

/// 200 content chunks, a finish chunk, a usage chunk and `[DONE]`.
fn stream_body() -> String {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
                "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        )
    };
    let mut body = String::new();
    for i in 0..200 {
        body.push_str(&chunk(json!({"content": format!(" word{i}")}), json!(null)));
    }
    body.push_str(&chunk(json!({}), json!("stop")));
    body.push_str(&format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
            "model": "gpt-4o-mini", "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 200, "total_tokens": 209}})
    ));
    body.push_str("data: [DONE]\n\n");
    body
}

fn bench(c: &mut Criterion) {
    let ours = request();
    let encoded = openai::encode_request(&ours, false);
    let peer: CreateChatCompletionRequest = serde_json::from_slice(&encoded).unwrap();
    println!("chat request: {} bytes", encoded.len());

    let mut group = c.benchmark_group("providers/encode_4k_request");
    group.bench_function("tower-llm-providers", |b| {
        b.iter(|| openai::encode_request(black_box(&ours), false))
    });
    group.bench_function("async-openai", |b| {
        b.iter(|| serde_json::to_vec(black_box(&peer)).unwrap())
    });
    group.finish();

    let response = response_body();
    assert_eq!(
        openai::decode_response(response.as_bytes())
            .unwrap()
            .usage
            .unwrap()
            .total(),
        1280
    );
    serde_json::from_str::<CreateChatCompletionResponse>(&response).unwrap();
    let mut group = c.benchmark_group("providers/decode_response");
    group.bench_function("tower-llm-providers", |b| {
        b.iter(|| openai::decode_response(black_box(response.as_bytes())).unwrap())
    });
    group.bench_function("async-openai", |b| {
        b.iter(|| {
            serde_json::from_slice::<CreateChatCompletionResponse>(black_box(response.as_bytes()))
                .unwrap()
        })
    });
    group.finish();

    let stream = stream_body();
    let decode_ours = |bytes: &[u8]| {
        let mut decoder = ChunkDecoder::openai();
        let mut chunks = VecDeque::with_capacity(256);
        for piece in bytes.chunks(1024) {
            decoder.feed(piece, &mut chunks).unwrap();
        }
        decoder.finish(&mut chunks).unwrap();
        chunks.len()
    };
    let decode_peer = |body: &str| {
        let mut n = 0;
        for event in body.split("\n\n") {
            let Some(data) = event.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                break;
            }
            let chunk: CreateChatCompletionStreamResponse = serde_json::from_str(data).unwrap();
            n += chunk.choices.len() + usize::from(chunk.usage.is_some());
        }
        n
    };
    assert_eq!(decode_ours(stream.as_bytes()), 202);
    assert_eq!(decode_peer(&stream), 202);
    let mut group = c.benchmark_group("providers/decode_200_chunk_stream");
    group.bench_function("tower-llm-providers", |b| {
        b.iter(|| decode_ours(black_box(stream.as_bytes())))
    });
    group.bench_function("async-openai", |b| {
        b.iter(|| decode_peer(black_box(&stream)))
    });
    group.finish();
}

/// A short completion, as an in-memory upstream answers it.
fn short_completion() -> Bytes {
    Bytes::from(
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1741569952,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
        })
        .to_string(),
    )
}

fn chat_call(c: &mut Criterion) {
    let body = short_completion();
    let http = service_fn(move |_request: http::Request<RequestBody>| {
        let body = body.clone();
        async move {
            let mut response = http::Response::new(http_body_util::Full::new(body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            Ok::<_, Infallible>(response)
        }
    });
    let mut openai = OpenAi::builder()
        .api_key("sk-bench")
        .build_with(http)
        .unwrap();
    let request = ChatRequest::new(
        "gpt-4o-mini",
        vec![Message::user("What is the capital of France?")],
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut calls = |iters: u64| {
        runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let answer = ServiceExt::<ChatRequest>::ready(&mut openai)
                    .await
                    .unwrap()
                    .call(black_box(request.clone()))
                    .await
                    .unwrap();
                black_box(answer);
            }
            start.elapsed()
        })
    };

    let mut group = c.benchmark_group("providers/chat_call");
    group.bench_function("no_subscriber", |b| b.iter_custom(&mut calls));
    if cfg!(feature = "observe") {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        group.bench_function("subscriber_info", |b| b.iter_custom(&mut calls));
    }
    group.finish();
}

criterion_group!(benches, bench, chat_call);
criterion_main!(benches);
