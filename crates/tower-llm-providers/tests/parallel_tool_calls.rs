//! Parallel tool calls (two or more in one answer) in every dialect, from recorded shapes of
//! the providers' documented formats (`tests/fixtures/*parallel*`): whole answers decode
//! every call, and streams, split anywhere, rebuild the same calls in a
//! [`ChatAccumulator`], each with its id, name and arguments, in order.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use tower_llm_providers::{
    ChatAccumulator, ChatChunk, ChatResponse, ChunkDecoder, FinishReason, ToolCall, anthropic,
    gemini, openai,
};

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

/// The answer `transcript` rebuilds into, delivered whole, byte by byte and in two pieces at
/// every position: the same chunks every way.
fn streamed(decoder: fn() -> ChunkDecoder, transcript: &[u8]) -> ChatResponse {
    let decode = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut d = decoder();
        let mut chunks = VecDeque::new();
        for piece in pieces {
            d.feed(piece, &mut chunks).unwrap();
        }
        d.finish(&mut chunks).unwrap();
        Vec::from(chunks)
    };
    let whole = decode(&mut std::iter::once(transcript));
    assert_eq!(decode(&mut transcript.chunks(1)), whole, "byte by byte");
    for cut in 0..transcript.len() {
        let (head, tail) = transcript.split_at(cut);
        assert_eq!(decode(&mut [head, tail].into_iter()), whole, "cut at {cut}");
    }
    let mut answer = ChatAccumulator::default();
    whole.iter().for_each(|chunk| answer.push(chunk));
    answer.finish()
}

/// The tool-call deltas of a stream, as (call index, id) for those that name their call.
fn announced(decoder: fn() -> ChunkDecoder, transcript: &[u8]) -> Vec<(u32, String)> {
    let mut d = decoder();
    let mut chunks = VecDeque::new();
    d.feed(transcript, &mut chunks).unwrap();
    chunks
        .into_iter()
        .filter_map(|chunk| match chunk {
            ChatChunk::ToolCall(delta) => delta.id.map(|id| (delta.index, id)),
            _ => None,
        })
        .collect()
}

#[test]
fn openai_answer_with_three_tool_calls() {
    let answer =
        openai::decode_response(include_bytes!("fixtures/openai_parallel_tool_calls.json"))
            .unwrap();
    assert_eq!(
        answer.tool_calls,
        [
            call(
                "call_12345xyz",
                "get_weather",
                r#"{"location":"Paris, France"}"#
            ),
            call(
                "call_67890abc",
                "get_weather",
                r#"{"location":"Bogotá, Colombia"}"#
            ),
            call(
                "call_99999def",
                "send_email",
                r#"{"to":"bob@email.com","body":"Hi bob"}"#
            ),
        ]
    );
    assert_eq!(answer.content, "");
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(answer.usage.unwrap().output_tokens, 72);
}

/// OpenAI's stream names both calls first, then sends their arguments interleaved, the last
/// pieces of both in one delta.
#[test]
fn openai_stream_with_interleaved_tool_call_deltas() {
    let transcript = include_bytes!("fixtures/openai_stream_parallel_tools.sse");
    assert_eq!(
        announced(ChunkDecoder::openai, transcript),
        [(0, "call_Q9tLk2vRa1".into()), (1, "call_Zp7mW4cXe8".into())]
    );
    let answer = streamed(ChunkDecoder::openai, transcript);
    assert_eq!(
        answer.tool_calls,
        [
            call(
                "call_Q9tLk2vRa1",
                "get_weather",
                r#"{"location":"Paris, France"}"#
            ),
            call(
                "call_Zp7mW4cXe8",
                "get_time",
                r#"{"timezone":"Europe/Paris"}"#
            ),
        ]
    );
    assert_eq!(answer.content, "");
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(answer.usage.unwrap().total(), 135);
}

#[test]
fn anthropic_message_with_two_tool_use_blocks() {
    let answer =
        anthropic::decode_response(include_bytes!("fixtures/anthropic_parallel_tool_use.json"))
            .unwrap();
    assert_eq!(
        answer.content,
        "I'll check the weather and the time in San Francisco."
    );
    assert_eq!(
        answer.tool_calls,
        [
            call(
                "toolu_01A09q90qw90lq917835lq9",
                "get_weather",
                r#"{"location":"San Francisco, CA","unit":"celsius"}"#,
            ),
            call(
                "toolu_01B19r91rx91mr928946mr0",
                "get_time",
                r#"{"timezone":"America/Los_Angeles"}"#,
            ),
        ]
    );
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
}

/// Each `tool_use` block's `input_json_delta`s go to its own call, by block index.
#[test]
fn anthropic_stream_with_two_tool_use_blocks() {
    let transcript = include_bytes!("fixtures/anthropic_stream_parallel_tool_use.sse");
    assert_eq!(
        announced(ChunkDecoder::anthropic, transcript),
        [
            (0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into()),
            (1, "toolu_01PJhz3vVo4ewQ5r8YnRwPqG".into())
        ]
    );
    let answer = streamed(ChunkDecoder::anthropic, transcript);
    assert_eq!(answer.content, "I'll check the weather and the time.");
    assert_eq!(
        answer.tool_calls,
        [
            call(
                "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "get_weather",
                r#"{"location": "San Francisco, CA", "unit": "celsius"}"#
            ),
            call(
                "toolu_01PJhz3vVo4ewQ5r8YnRwPqG",
                "get_time",
                r#"{"timezone": "America/Los_Angeles"}"#
            ),
        ]
    );
    // Text and calls carry the whole answer: no blocks to send back.
    assert!(answer.blocks.is_empty(), "{:?}", answer.blocks);
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(answer.usage.unwrap().output_tokens, 143);
}

/// Gemini's calls carry no id in its documented example: each call's id is its name.
#[test]
fn gemini_answer_with_three_function_calls() {
    let answer = gemini::decode_response(include_bytes!(
        "fixtures/gemini_parallel_function_calls.json"
    ))
    .unwrap();
    assert_eq!(
        answer.tool_calls,
        [
            call("power_disco_ball", "power_disco_ball", r#"{"power":true}"#),
            call(
                "start_music",
                "start_music",
                r#"{"energetic":true,"loud":true}"#
            ),
            call("dim_lights", "dim_lights", r#"{"brightness":0.5}"#),
        ]
    );
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
}

/// Gemini streams each call whole; calls over several events keep counting, and calls to
/// the same function stay apart by their ids.
#[test]
fn gemini_stream_with_calls_over_two_events() {
    let transcript = include_bytes!("fixtures/gemini_stream_parallel_function_calls.sse");
    let answer = streamed(ChunkDecoder::gemini, transcript);
    assert_eq!(
        answer.tool_calls,
        [
            call("fc_7c1e0a", "get_weather", r#"{"location":"Paris"}"#),
            call("fc_2b9d4f", "get_weather", r#"{"location":"Bogotá"}"#),
            call("fc_a04e11", "get_time", r#"{"timezone":"Europe/Paris"}"#),
        ]
    );
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(answer.usage.unwrap().output_tokens, 38);
}

#[cfg(feature = "bedrock")]
mod bedrock {
    use super::{call, streamed};
    use serde_json::Value;
    use tower_llm_providers::bedrock::BedrockProtocol;
    use tower_llm_providers::bedrock::wire::decode_response;
    use tower_llm_providers::{ChunkDecoder, FinishReason, ToolCall};
    use tower_llm_testkit::event_stream_message;

    fn calls() -> [ToolCall; 2] {
        [
            call(
                "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                "top_song",
                r#"{"sign":"WZPZ"}"#,
            ),
            call(
                "tooluse_9bR2xQpLTa2mW0cXe8vYhN",
                "top_song",
                r#"{"sign":"WKRP"}"#,
            ),
        ]
    }

    #[test]
    fn converse_answer_with_two_tool_use_blocks() {
        let answer = decode_response(include_bytes!(
            "fixtures/bedrock_converse_parallel_tool_use.json"
        ))
        .unwrap();
        assert_eq!(
            answer.content,
            "I'll look up the top songs on both stations."
        );
        assert_eq!(answer.tool_calls, calls());
        assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(answer.usage.unwrap().output_tokens, 118);
    }

    /// The recorded events framed as Bedrock sends them, then decoded as the provider does.
    #[test]
    fn converse_stream_with_two_tool_use_blocks() {
        let events: Vec<(String, Value)> = serde_json::from_str(include_str!(
            "fixtures/bedrock_converse_stream_parallel_tool_use.json"
        ))
        .unwrap();
        let mut transcript = Vec::new();
        for (event_type, payload) in events {
            transcript.extend_from_slice(&event_stream_message(
                &[
                    (":event-type", &event_type),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ],
                payload.to_string().as_bytes(),
            ));
        }
        let answer = streamed(
            || ChunkDecoder::of::<BedrockProtocol>("bedrock"),
            &transcript,
        );
        assert_eq!(
            answer.content,
            "I'll look up the top songs on both stations."
        );
        // Streamed arguments are the input's text as sent, pieces joined.
        let [first, second] = calls();
        assert_eq!(
            answer.tool_calls,
            [
                ToolCall {
                    arguments: r#"{"sign": "WZPZ"}"#.into(),
                    ..first
                },
                ToolCall {
                    arguments: r#"{"sign": "WKRP"}"#.into(),
                    ..second
                },
            ]
        );
        assert!(answer.blocks.is_empty(), "{:?}", answer.blocks);
        assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(answer.usage.unwrap().output_tokens, 118);
    }
}

/// A compatible server that names call 1 before call 0, in one delta, then continues each
/// call's arguments in deltas that carry only its index, interleaved (1, 0, 1): each piece
/// goes to the call its index names (not the last one announced), and the answer lists them
/// by index.
#[test]
fn a_later_call_announced_first_keeps_its_own_pieces() {
    let transcript = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[",
        "{\"index\":1,\"id\":\"call_b\",\"function\":{\"name\":\"g\",\"arguments\":\"{\\\"x\\\":\"}},",
        "{\"index\":0,\"id\":\"call_a\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"y\\\":\"}}]},",
        "\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[",
        "{\"index\":1,\"function\":{\"arguments\":\"2\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[",
        "{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[",
        "{\"index\":1,\"function\":{\"arguments\":\"}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let answer = streamed(ChunkDecoder::openai, transcript.as_bytes());
    assert_eq!(
        answer.tool_calls,
        vec![
            call("call_a", "f", "{\"y\":1}"),
            call("call_b", "g", "{\"x\":2}")
        ]
    );
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
}

/// Indices a server makes up (sparse, huge, endless) rebuild a bounded answer.
#[test]
fn made_up_indices_rebuild_a_bounded_answer() {
    let mut answer = ChatAccumulator::default();
    for index in (0..5_000u32).map(|i| i.wrapping_mul(2_654_435_761)) {
        answer.push(&ChatChunk::ToolCall(
            tower_llm_providers::ToolCallDelta::new(index).arguments("{}"),
        ));
    }
    let calls = answer.finish().tool_calls;
    assert_eq!(calls.len(), 1024);
    assert!(calls.iter().all(|c| c.arguments == "{}"));
}

/// Two calls to one function, without ids (as Gemini sends them): each gets an id of its
/// own, whole and streamed, so a history sent on to another provider pairs each result
/// with its call.
#[test]
fn gemini_calls_to_one_function_get_distinct_ids() {
    const ANSWER: &str = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Boston"}}},{"functionCall":{"name":"get_weather","args":{"city":"SF"}}},{"functionCall":{"name":"get_time","args":{}}}]},"finishReason":"STOP","index":0}]}"#;
    let expected = vec![
        call("get_weather", "get_weather", r#"{"city":"Boston"}"#),
        call("get_weather#1", "get_weather", r#"{"city":"SF"}"#),
        call("get_time", "get_time", "{}"),
    ];
    let whole = gemini::decode_response(ANSWER.as_bytes()).unwrap();
    assert_eq!(whole.tool_calls, expected);
    let transcript = format!("data: {ANSWER}\r\n\r\n");
    assert_eq!(
        streamed(ChunkDecoder::gemini, transcript.as_bytes()).tool_calls,
        expected
    );
}

/// Past the 1,024 ids an answer remembers, calls without ids still get distinct ones, by
/// their position.
#[test]
fn gemini_many_calls_without_ids_stay_distinct() {
    let parts: Vec<String> = (0..3_000)
        .map(|_| r#"{"functionCall":{"name":"f","args":{}}}"#.to_owned())
        .collect();
    let answer = format!(
        r#"{{"candidates":[{{"content":{{"parts":[{}]}},"finishReason":"STOP","index":0}}]}}"#,
        parts.join(",")
    );
    let calls = gemini::decode_response(answer.as_bytes())
        .unwrap()
        .tool_calls;
    assert_eq!(calls.len(), 3_000);
    let ids: std::collections::HashSet<&str> = calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 3_000, "every id distinct");
    assert_eq!(
        (calls[0].id.as_str(), calls[2_999].id.as_str()),
        ("f", "f#2999")
    );
}
