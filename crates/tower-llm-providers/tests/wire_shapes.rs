//! Recorded shapes from the providers' documented formats that go beyond text and tool
//! calls: OpenAI refusals (whole and streamed), Anthropic server tools.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use tower_llm_providers::{
    ChatAccumulator, ChatChunk, ChunkDecoder, FinishReason, anthropic, openai,
};

/// Every chunk of `transcript`, fed whole and then one byte at a time: the same either way.
fn chunks(mut decoder: impl FnMut() -> ChunkDecoder, transcript: &str) -> Vec<ChatChunk> {
    let mut whole = VecDeque::new();
    let mut d = decoder();
    assert!(d.feed(transcript.as_bytes(), &mut whole).unwrap());
    d.finish(&mut whole).unwrap();
    let mut bytewise = VecDeque::new();
    let mut d = decoder();
    for b in transcript.as_bytes() {
        d.feed(std::slice::from_ref(b), &mut bytewise).unwrap();
    }
    d.finish(&mut bytewise).unwrap();
    assert_eq!(whole, bytewise);
    whole.into()
}

#[test]
fn openai_refusal_is_a_refusal_not_an_empty_stop() {
    let answer = openai::decode_response(include_bytes!("fixtures/openai_refusal.json")).unwrap();
    assert_eq!(answer.finish_reason, Some(FinishReason::Refusal));
    assert_eq!(
        answer.refusal.as_deref(),
        Some("I'm sorry, I cannot assist with that request.")
    );
    assert_eq!(answer.content, "");
    assert!(!answer.extra.contains_key("refusal"));
}

#[test]
fn openai_streamed_refusal() {
    let chunks = chunks(
        ChunkDecoder::openai,
        include_str!("fixtures/openai_stream_refusal.sse"),
    );
    assert!(!chunks.iter().any(|c| matches!(c, ChatChunk::Content(_))));
    assert!(chunks.contains(&ChatChunk::Finish(FinishReason::Refusal)));
    let mut acc = ChatAccumulator::default();
    for chunk in &chunks {
        acc.push(chunk);
    }
    let answer = acc.finish();
    assert_eq!(
        answer.refusal.as_deref(),
        Some("I'm sorry, I cannot assist with that.")
    );
    assert_eq!(answer.finish_reason, Some(FinishReason::Refusal));
    assert_eq!(answer.usage.unwrap().total(), 92);
}

#[test]
fn anthropic_refusal_stop_reason() {
    let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5",
        "content":[{"type":"text","text":"I can't help with that."}],"stop_reason":"refusal",
        "usage":{"input_tokens":10,"output_tokens":6}}"#;
    let answer = anthropic::decode_response(body.as_bytes()).unwrap();
    assert_eq!(answer.finish_reason, Some(FinishReason::Refusal));
}

/// A streamed answer that used Anthropic's server-side web search, in the shape of the
/// Messages API's documented transcript: the `server_tool_use` block's input arrives as
/// `input_json_delta`s and its result as a `web_search_tool_result` block. Neither is a tool
/// call for the caller: the text around them is the answer.
#[test]
fn anthropic_server_tool_blocks_are_not_the_callers_tool_calls() {
    let transcript = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-opus-4-1\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":2679,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":3}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"I'll check. \"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"server_tool_use\",\"id\":\"srvtoolu_014hJH82Qum7Td6UV8gDXThB\",\"name\":\"web_search\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"query\\\": \\\"weather NYC today\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"web_search_tool_result\",\"tool_use_id\":\"srvtoolu_014hJH82Qum7Td6UV8gDXThB\",\"content\":[{\"type\":\"web_search_result\",\"title\":\"Weather\",\"url\":\"https://example.com\",\"encrypted_content\":\"Eq8B\",\"page_age\":null}]}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"text_delta\",\"text\":\"Sunny, 21 C.\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":3}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":510,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let chunks = chunks(ChunkDecoder::anthropic, transcript);
    let mut answer = ChatAccumulator::default();
    for chunk in &chunks {
        answer.push(chunk);
    }
    let answer = answer.finish();
    assert_eq!(answer.content, "I'll check. Sunny, 21 C.");
    assert!(answer.tool_calls.is_empty(), "{:?}", answer.tool_calls);
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert_eq!(answer.usage.unwrap().output_tokens, 510);

    // An input delta for a block that never started is still malformed.
    let orphan = concat!(
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":7,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
    );
    let mut decoder = ChunkDecoder::anthropic();
    let mut out = std::collections::VecDeque::new();
    assert!(decoder.feed(orphan.as_bytes(), &mut out).is_err());
}
