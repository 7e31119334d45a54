//! Recorded shapes from the providers' documented formats that go beyond text and tool
//! calls: OpenAI refusals (whole and streamed).

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
