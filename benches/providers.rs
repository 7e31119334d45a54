//! The serde work of a provider call, ours beside async-openai's types, same data, same run:
//! encoding a 4 KiB chat request, decoding a chat completion, decoding a 200-chunk stream.
//!
//! Ours does more than a serde round trip: it maps the provider-neutral `ChatRequest` to the
//! wire format (and back), keeps unmodelled fields in `extra`, and parses the SSE framing
//! incrementally from 1 KiB network-sized pieces. async-openai's types only deserialize the
//! chunk JSON that a caller has already cut out of the stream (its SSE parsing lives in its
//! client, not in its types), so the stream comparison flatters the peer slightly.
//!
//! Run: `cargo bench -p tower-llm-benches --bench providers`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::hint::black_box;

use async_openai::types::chat::{
    CreateChatCompletionRequest, CreateChatCompletionResponse, CreateChatCompletionStreamResponse,
};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tower_llm_providers::{ChatRequest, ChunkDecoder, Message, Tool, openai};

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

criterion_group!(benches, bench);
criterion_main!(benches);
