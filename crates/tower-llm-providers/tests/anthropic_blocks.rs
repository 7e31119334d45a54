//! Anthropic's content blocks beyond text and tool calls, in transcripts of the documented
//! shapes: extended thinking (thinking with its signature, redacted thinking) before a tool
//! call, and a web search (server tool use, its result, cited text) ending in a block type
//! this crate does not know. Whole answers and streams (at every split) give the same
//! blocks, and the blocks go back to Anthropic in the next turn exactly as they came, while
//! OpenAI and Gemini are never sent them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;

use common::{Reply, call, deliveries, drain, mock};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower_llm_core::{FingerprintKey, RequestCost};
use tower_llm_providers::{
    Anthropic, BlockDelta, ChatAccumulator, ChatChunk, ChatRequest, ChatResponse, ChunkDecoder,
    ContentBlock, FinishReason, Message, ToolCall, anthropic, gemini, openai,
};

const THINKING: &str = include_str!("fixtures/anthropic_thinking_message.json");
const THINKING_STREAM: &str = include_str!("fixtures/anthropic_thinking_stream.sse");
const WEB_SEARCH: &str = include_str!("fixtures/anthropic_web_search_message.json");
const WEB_SEARCH_STREAM: &str = include_str!("fixtures/anthropic_web_search_stream.sse");

const SIGNATURE: &str =
    "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds/9qkHzaUYdjc3L1nDmUGnPZbdQXbNsyXSe1";

fn content_of(transcript: &str) -> Value {
    serde_json::from_str::<Value>(transcript).unwrap()["content"].clone()
}

fn weather_call() -> ToolCall {
    ToolCall {
        id: "toolu_01A09q90qw90lq917835lq9".into(),
        name: "get_weather".into(),
        arguments: r#"{"location":"Paris, France","unit":"celsius"}"#.into(),
    }
}

#[test]
fn thinking_and_redacted_thinking_come_whole_with_the_tool_call() {
    let answer = anthropic::decode_response(THINKING.as_bytes()).unwrap();
    assert_eq!(answer.content, "I'll check the weather in Paris.");
    assert_eq!(answer.tool_calls, [weather_call()]);
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        answer.blocks,
        [
            ContentBlock::Thinking {
                thinking: "The user wants the weather in Paris. I should call get_weather \
                           with location Paris."
                    .into(),
                signature: SIGNATURE.into(),
            },
            ContentBlock::RedactedThinking {
                data: "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2Y\
                       fWXGmKDxH4mPnZ5sQ7vB8URj2pLmN3kJ"
                    .into(),
            },
            ContentBlock::Text {
                text: "I'll check the weather in Paris.".into(),
                citations: Vec::new(),
            },
            ContentBlock::ToolUse(weather_call()),
        ]
    );
}

#[test]
fn server_tools_results_citations_and_unknown_blocks_come_whole() {
    let answer = anthropic::decode_response(WEB_SEARCH.as_bytes()).unwrap();
    let raw = content_of(WEB_SEARCH);
    assert_eq!(
        answer.content,
        "I'll search for when Claude Shannon was born.Based on the search results, Claude \
         Shannon was born on April 30, 1916, in Petoskey, Michigan."
    );
    assert!(
        answer.tool_calls.is_empty(),
        "server tools are not the caller's"
    );
    assert_eq!(answer.blocks.len(), 7);
    assert_eq!(
        answer.blocks[1],
        ContentBlock::ServerToolUse(raw[1].clone())
    );
    assert_eq!(
        answer.blocks[2],
        ContentBlock::ServerToolResult(raw[2].clone())
    );
    let ContentBlock::Text { citations, .. } = &answer.blocks[4] else {
        panic!("{:?}", answer.blocks[4]);
    };
    assert_eq!(citations, raw[4]["citations"].as_array().unwrap());
    assert_eq!(answer.blocks[6], ContentBlock::Other(raw[6].clone()));
    // The usage's unmodelled server tool counts stay where they were.
    assert_eq!(answer.usage.unwrap().output_tokens, 931);
}

#[test]
fn an_answer_of_text_and_tool_calls_keeps_no_blocks() {
    let answer =
        anthropic::decode_response(include_bytes!("fixtures/anthropic_message.json")).unwrap();
    assert!(!answer.content.is_empty());
    assert!(answer.blocks.is_empty());
}

#[test]
fn odd_and_unknown_blocks_are_kept_raw_never_an_error() {
    let body = json!({
        "id": "msg_odd", "type": "message", "role": "assistant", "model": "m",
        "content": [
            {"type": "thinking", "thinking": 5},
            {"type": "text"},
            {"type": "hologram", "frames": [1, 2]},
            {"no_type": true},
            {"type": "text", "text": "fine"}
        ],
        "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}
    });
    let answer = anthropic::decode_response(body.to_string().as_bytes()).unwrap();
    assert_eq!(answer.content, "fine");
    let raw = body["content"].as_array().unwrap();
    assert_eq!(
        answer.blocks[..4],
        raw[..4]
            .iter()
            .map(|b| ContentBlock::Other(b.clone()))
            .collect::<Vec<_>>()[..]
    );
}

/// A transcript decoded as the bytes arrive in these pieces, and accumulated.
fn accumulate(transcript: &str, cuts: &[usize]) -> ChatResponse {
    let bytes = transcript.as_bytes();
    let mut decoder = ChunkDecoder::anthropic();
    let mut chunks = VecDeque::new();
    let mut done = false;
    let mut start = 0;
    for &cut in cuts.iter().chain([bytes.len()].iter()) {
        let cut = cut.clamp(start, bytes.len());
        done = decoder.feed(&bytes[start..cut], &mut chunks).unwrap();
        start = cut;
    }
    decoder.finish(&mut chunks).unwrap();
    assert!(done);
    let mut acc = ChatAccumulator::default();
    chunks.iter().for_each(|c| acc.push(c));
    acc.finish()
}

/// What a whole answer and its stream must agree on.
fn same_answer(streamed: &ChatResponse, whole: &ChatResponse, how: &str) {
    assert_eq!(streamed.content, whole.content, "{how}");
    assert_eq!(streamed.tool_calls.len(), whole.tool_calls.len(), "{how}");
    for (s, w) in streamed.tool_calls.iter().zip(&whole.tool_calls) {
        assert_eq!((&s.id, &s.name), (&w.id, &w.name), "{how}");
        let s: Value = serde_json::from_str(&s.arguments).unwrap();
        let w: Value = serde_json::from_str(&w.arguments).unwrap();
        assert_eq!(s, w, "{how}");
    }
    assert_eq!(streamed.finish_reason, whole.finish_reason, "{how}");
    assert_eq!(streamed.blocks.len(), whole.blocks.len(), "{how}");
    for (s, w) in streamed.blocks.iter().zip(&whole.blocks) {
        match (s, w) {
            // Arguments arrive as JSON text: the same value, spaced as it streamed.
            (ContentBlock::ToolUse(_), ContentBlock::ToolUse(_)) => {}
            _ => assert_eq!(s, w, "{how}"),
        }
    }
}

#[test]
fn streams_rebuild_the_blocks_of_the_whole_answer() {
    for (stream, whole) in [(THINKING_STREAM, THINKING), (WEB_SEARCH_STREAM, WEB_SEARCH)] {
        let whole = anthropic::decode_response(whole.as_bytes()).unwrap();
        assert!(!whole.blocks.is_empty());
        same_answer(&accumulate(stream, &[]), &whole, "whole");
        for cut in 0..stream.len() {
            same_answer(
                &accumulate(stream, &[cut]),
                &whole,
                &format!("cut at {cut}"),
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_splits_decode_the_same(
        cuts in proptest::collection::vec(0usize..4000, 0..40),
        which in 0usize..2,
    ) {
        let (stream, whole) = [(THINKING_STREAM, THINKING), (WEB_SEARCH_STREAM, WEB_SEARCH)][which];
        let mut cuts = cuts;
        cuts.sort_unstable();
        let whole = anthropic::decode_response(whole.as_bytes()).unwrap();
        same_answer(&accumulate(stream, &cuts), &whole, &format!("{cuts:?}"));
    }
}

#[test]
fn thinking_streams_as_its_own_chunks() {
    let mut decoder = ChunkDecoder::anthropic();
    let mut chunks = VecDeque::new();
    assert!(
        decoder
            .feed(THINKING_STREAM.as_bytes(), &mut chunks)
            .unwrap()
    );
    let chunks: Vec<_> = chunks.into_iter().collect();
    assert_eq!(
        chunks[..4],
        [
            ChatChunk::Block(BlockDelta::Start {
                index: 0,
                block: ContentBlock::Thinking {
                    thinking: String::new(),
                    signature: String::new(),
                },
            }),
            ChatChunk::Block(BlockDelta::Thinking {
                index: 0,
                text: "The user wants the weather in Paris.".into(),
            }),
            ChatChunk::Block(BlockDelta::Thinking {
                index: 0,
                text: " I should call get_weather with location Paris.".into(),
            }),
            ChatChunk::Block(BlockDelta::Signature {
                index: 0,
                signature: SIGNATURE.into(),
            }),
        ]
    );
    // The text and the call still arrive as the chunks every caller reads.
    let text: String = chunks
        .iter()
        .filter_map(|c| match c {
            ChatChunk::Content(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "I'll check the weather in Paris.");
}

#[test]
fn web_search_streams_its_input_citations_and_raw_blocks() {
    let mut decoder = ChunkDecoder::anthropic();
    let mut chunks = VecDeque::new();
    assert!(
        decoder
            .feed(WEB_SEARCH_STREAM.as_bytes(), &mut chunks)
            .unwrap()
    );
    let raw = content_of(WEB_SEARCH);
    let blocks: Vec<_> = chunks
        .iter()
        .filter_map(|c| match c {
            ChatChunk::Block(delta) => Some(delta.clone()),
            _ => None,
        })
        .collect();
    assert!(blocks.contains(&BlockDelta::ServerToolInput {
        index: 1,
        partial_json: "{\"query".into(),
    }));
    assert!(blocks.contains(&BlockDelta::Start {
        index: 2,
        block: ContentBlock::ServerToolResult(raw[2].clone()),
    }));
    assert!(blocks.contains(&BlockDelta::Citation {
        index: 4,
        citation: raw[4]["citations"][0].clone(),
    }));
    assert!(blocks.contains(&BlockDelta::Start {
        index: 6,
        block: ContentBlock::Other(raw[6].clone()),
    }));
    assert!(
        !chunks.iter().any(|c| matches!(c, ChatChunk::ToolCall(_))),
        "a server tool's input is not a tool call of the caller's"
    );
}

#[tokio::test]
async fn streams_over_the_service_at_every_split() {
    let whole = anthropic::decode_response(THINKING.as_bytes()).unwrap();
    for (how, pieces) in deliveries(THINKING_STREAM.as_bytes()) {
        let (client, _) = mock(Reply::sse(pieces));
        let mut claude = Anthropic::builder()
            .api_key("k")
            .build_with(client)
            .unwrap();
        let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
        let stream = call(&mut claude, request).await.unwrap();
        let mut acc = ChatAccumulator::default();
        for item in drain(stream).await {
            acc.push(&item.unwrap());
        }
        same_answer(&acc.finish(), &whole, &how);
    }
}

/// The request of the turn after `answer`, with the tool's result.
fn next_turn(answer: &ChatResponse) -> ChatRequest {
    let mut messages = vec![Message::user("What's the weather in Paris?")];
    messages.push(answer.to_message());
    for call in &answer.tool_calls {
        messages.push(Message::tool_result(&call.id, &call.name, "18°C, sunny"));
    }
    ChatRequest::new("claude-sonnet-4-5", messages)
}

#[tokio::test]
async fn anthropic_gets_every_block_back_as_it_came() {
    for transcript in [THINKING, WEB_SEARCH] {
        let answer = anthropic::decode_response(transcript.as_bytes()).unwrap();
        let (client, sent) = mock(Reply::json(200, THINKING));
        let mut claude = Anthropic::builder()
            .api_key("k")
            .build_with(client)
            .unwrap();
        call(&mut claude, next_turn(&answer)).await.unwrap();
        let body = &sent.lock().unwrap()[0].body;
        assert_eq!(body["messages"][1]["role"], "assistant");
        assert_eq!(body["messages"][1]["content"], content_of(transcript));
        // And whole or streamed, the same turn goes back.
        let streamed = accumulate(
            if transcript == THINKING {
                THINKING_STREAM
            } else {
                WEB_SEARCH_STREAM
            },
            &[],
        );
        let again: Value =
            serde_json::from_slice(&anthropic::encode_request(&next_turn(&streamed), false))
                .unwrap();
        assert_eq!(again["messages"][1]["content"], content_of(transcript));
    }
}

#[test]
fn the_next_turn_through_from_keeps_the_blocks_too() {
    let answer = anthropic::decode_response(THINKING.as_bytes()).unwrap();
    let message = Message::from(answer.clone());
    assert_eq!(message, answer.to_message());
    assert_eq!(message.blocks.len(), 4);
}

#[test]
fn openai_and_gemini_are_sent_the_text_and_calls_never_the_blocks() {
    let answer = anthropic::decode_response(THINKING.as_bytes()).unwrap();
    let request = next_turn(&answer);
    for (dialect, body) in [
        ("openai", openai::encode_request(&request, false)),
        ("gemini", gemini::encode_request(&request)),
    ] {
        let text = String::from_utf8(body).unwrap();
        for secret in [SIGNATURE, "redacted_thinking", "I should call get_weather"] {
            assert!(
                !text.contains(secret),
                "{dialect} was sent {secret}: {text}"
            );
        }
        assert!(
            text.contains("I'll check the weather in Paris."),
            "{dialect}"
        );
        assert!(text.contains("get_weather"), "{dialect}");
    }
}

#[test]
fn blocks_change_the_fingerprint_and_thinking_the_estimate() {
    let answer = anthropic::decode_response(THINKING.as_bytes()).unwrap();
    let with = next_turn(&answer);
    let mut without = with.clone();
    without.messages[1].blocks.clear();
    let key = FingerprintKey::random();
    assert_ne!(key.fingerprint(&with), key.fingerprint(&without));
    assert!(with.estimated_tokens() > without.estimated_tokens());
}

#[test]
fn an_empty_text_block_is_not_sent() {
    let message = Message {
        blocks: vec![
            ContentBlock::Text {
                text: String::new(),
                citations: Vec::new(),
            },
            ContentBlock::RedactedThinking { data: "x".into() },
        ],
        ..Message::assistant("")
    };
    let request = ChatRequest::new("m", vec![Message::user("q"), message]);
    let body: Value = serde_json::from_slice(&anthropic::encode_request(&request, false)).unwrap();
    assert_eq!(
        body["messages"][1]["content"],
        json!([{"type": "redacted_thinking", "data": "x"}])
    );
}
