//! Server- and user-controlled extremes found in review: usage counts near `u64::MAX`, a UTF-8
//! byte-order mark before the first event, and timeouts too long to add to the clock. Each
//! must give a sensible answer, never a panic.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::{Reply, call, drain, mock, split};
use tower_llm_providers::{
    Anthropic, ChatChunk, ChatRequest, ChunkDecoder, Gemini, Message, OpenAi, StreamTimeouts,
    anthropic, gemini,
};

const MAX: u64 = u64::MAX;

#[test]
fn anthropic_usage_near_u64_max_saturates() {
    let body = format!(
        r#"{{"id":"m","type":"message","role":"assistant","model":"c","content":[{{"type":"text","text":"hi"}}],"stop_reason":"end_turn","usage":{{"input_tokens":{MAX},"output_tokens":1,"cache_read_input_tokens":{MAX},"cache_creation_input_tokens":{MAX}}}}}"#
    );
    let response = anthropic::decode_response(body.as_bytes()).expect("a valid body");
    assert_eq!(response.usage.expect("usage").input_tokens, MAX);
}

#[test]
fn anthropic_stream_usage_near_u64_max_saturates() {
    let events = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"c\",\"usage\":{{\"input_tokens\":{MAX},\"cache_read_input_tokens\":{MAX},\"output_tokens\":1}}}}}}\n\n\
         event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"input_tokens\":{MAX},\"cache_creation_input_tokens\":{MAX},\"output_tokens\":{MAX}}}}}\n\n\
         event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    );
    let mut decoder = ChunkDecoder::anthropic();
    let mut chunks = VecDeque::new();
    assert!(decoder.feed(events.as_bytes(), &mut chunks).expect("valid"));
    assert!(
        chunks
            .iter()
            .any(|c| matches!(c, ChatChunk::Usage(u) if u.input_tokens == MAX))
    );
}

#[test]
fn gemini_usage_near_u64_max_saturates() {
    let body = format!(
        r#"{{"candidates":[{{"content":{{"parts":[{{"text":"hi"}}],"role":"model"}},"finishReason":"STOP","index":0}}],"usageMetadata":{{"promptTokenCount":1,"candidatesTokenCount":{MAX},"thoughtsTokenCount":{MAX}}}}}"#
    );
    let response = gemini::decode_response(body.as_bytes()).expect("a valid body");
    assert_eq!(response.usage.expect("usage").output_tokens, MAX);
    let events = format!("data: {body}\n\n");
    let mut decoder = ChunkDecoder::gemini();
    let mut chunks = VecDeque::new();
    decoder.feed(events.as_bytes(), &mut chunks).expect("valid");
    decoder.finish(&mut chunks).expect("complete");
    assert!(
        chunks
            .iter()
            .any(|c| matches!(c, ChatChunk::Usage(u) if u.output_tokens == MAX))
    );
}

/// The WHATWG event-stream rules drop one leading U+FEFF; without that the first field name
/// is `\u{FEFF}data` and the first event is silently lost.
#[test]
fn a_leading_byte_order_mark_is_skipped_at_every_split() {
    let stream = "\u{FEFF}data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\
                  data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
                  data: [DONE]\n\n"
        .as_bytes();
    for cut in 0..=stream.len() {
        for second in [cut, cut.saturating_add(1), cut.saturating_add(2)] {
            let second = second.min(stream.len());
            let mut decoder = ChunkDecoder::openai();
            let mut chunks = VecDeque::new();
            decoder.feed(&stream[..cut], &mut chunks).expect("valid");
            decoder
                .feed(&stream[cut..second], &mut chunks)
                .expect("valid");
            assert!(
                decoder.feed(&stream[second..], &mut chunks).expect("valid"),
                "cuts at {cut}, {second}"
            );
            decoder.finish(&mut chunks).expect("complete");
            assert_eq!(
                chunks.front(),
                Some(&ChatChunk::Content("Hi".into())),
                "cuts at {cut}, {second}"
            );
        }
    }
}

#[test]
fn only_one_leading_byte_order_mark_is_skipped() {
    let mut parser = tower_llm_providers::sse::SseParser::new();
    let mut events = VecDeque::new();
    parser
        .feed(
            "\u{FEFF}\u{FEFF}data: a\n\ndata: b\n\n".as_bytes(),
            &mut events,
        )
        .expect("small");
    // The second BOM is part of the first field's name, so that event is dropped as the
    // spec says; only the leading one is special.
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "b");
    let mut parser = tower_llm_providers::sse::SseParser::new();
    let mut events = VecDeque::new();
    // An incomplete BOM is not a BOM: its bytes stay in the first line.
    parser.feed(b"\xEF\xBB", &mut events).expect("small");
    parser.feed(b"data: x\n\n", &mut events).expect("small");
    assert!(events.is_empty());
    parser.feed(b"data: y\n\n", &mut events).expect("small");
    assert_eq!(events[0].data, "y");
}

const OPENAI_STREAM: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\
    data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
    data: [DONE]\n\n";

#[tokio::test(start_paused = true)]
async fn timeouts_too_long_for_the_clock_mean_no_limit() {
    let huge = StreamTimeouts::none()
        .first_token(Duration::MAX)
        .between_chunks(Duration::MAX)
        .total(Duration::MAX);
    for timeouts in [
        huge,
        StreamTimeouts::none().first_token(Duration::MAX),
        StreamTimeouts::none().total(Duration::MAX),
        StreamTimeouts::none().between_chunks(Duration::MAX),
    ] {
        let (client, _) = mock(Reply::sse(split(OPENAI_STREAM.as_bytes(), &[40, 90])));
        let mut openai = OpenAi::builder()
            .api_key("k")
            .stream_timeouts(timeouts)
            .build_with(client)
            .unwrap();
        let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
        let items = drain(call(&mut openai, request).await.expect("a stream")).await;
        assert!(items.iter().all(Result::is_ok), "{items:?}");
        assert_eq!(items.len(), 2);
    }
    let (client, _) = mock(Reply::sse(split(b"event: message_stop\n", &[])));
    let mut claude = Anthropic::builder()
        .api_key("k")
        .stream_timeouts(huge)
        .build_with(client)
        .unwrap();
    let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
    drop(call(&mut claude, request).await);
    let (client, _) = mock(Reply::sse(split(b"", &[])));
    let mut gemini = Gemini::builder()
        .api_key("k")
        .stream_timeouts(huge)
        .build_with(client)
        .unwrap();
    let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
    drop(call(&mut gemini, request).await);
}

/// An error status whose body then stalls: the stream's first-token limit still applies,
/// so the caller is not left waiting on a body that never ends.
#[tokio::test(start_paused = true)]
async fn a_stalled_error_body_still_times_out() {
    use common::Piece;
    for status in [200, 500] {
        let mut reply = Reply::sse(vec![
            Piece::Data("{\"error\":".into()),
            Piece::Stall(Duration::from_secs(3600)),
            Piece::Data("{}}".into()),
        ]);
        reply.status = status;
        reply.headers = vec![("content-type", "application/json".into())];
        let (client, _) = mock(reply);
        let mut openai = OpenAi::builder()
            .api_key("k")
            .stream_timeouts(StreamTimeouts::none().first_token(Duration::from_secs(5)))
            .build_with(client)
            .unwrap();
        let started = tokio::time::Instant::now();
        let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
        let error = call(&mut openai, request).await.expect_err("no stream");
        assert_eq!(
            error.kind(),
            tower_llm_core::FailureKind::Timeout,
            "{error}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}

/// A caller that takes longer over one chunk than the between-chunks limit does not turn the
/// server's next (prompt) chunk into a timeout: the limit counts the wait, not the caller.
#[tokio::test(start_paused = true)]
async fn a_slow_caller_is_not_a_silent_server() {
    use common::Piece;
    use futures_util::StreamExt;
    let first = OPENAI_STREAM.find("\n\n").unwrap() + 2;
    let (client, _) = mock(Reply::sse(vec![
        Piece::Data(OPENAI_STREAM[..first].to_owned().into()),
        Piece::Stall(Duration::from_secs(2)),
        Piece::Data(OPENAI_STREAM[first..].to_owned().into()),
    ]));
    let mut openai = OpenAi::builder()
        .api_key("k")
        .stream_timeouts(StreamTimeouts::none().between_chunks(Duration::from_secs(3)))
        .build_with(client)
        .unwrap();
    let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
    let mut stream = call(&mut openai, request).await.expect("a stream");
    assert_eq!(
        stream.next().await.expect("a chunk").expect("content"),
        ChatChunk::Content("Hi".into())
    );
    // The caller is busy for 10 s; the server then answers 2 s after being read again.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rest: Vec<_> = stream.collect().await;
    assert!(rest.iter().all(Result::is_ok), "{rest:?}");
    assert!(!rest.is_empty());

    // A server silent for longer than the limit still times out.
    let (client, _) = mock(Reply::sse(vec![
        Piece::Data(OPENAI_STREAM[..first].to_owned().into()),
        Piece::Stall(Duration::from_secs(4)),
        Piece::Data(OPENAI_STREAM[first..].to_owned().into()),
    ]));
    let mut openai = OpenAi::builder()
        .api_key("k")
        .stream_timeouts(StreamTimeouts::none().between_chunks(Duration::from_secs(3)))
        .build_with(client)
        .unwrap();
    let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
    let mut stream = call(&mut openai, request).await.expect("a stream");
    assert!(stream.next().await.expect("a chunk").is_ok());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let resumed = tokio::time::Instant::now();
    let error = stream
        .next()
        .await
        .expect("an item")
        .expect_err("the server was silent for 4 s");
    assert_eq!(error.kind(), tower_llm_core::FailureKind::Timeout);
    assert_eq!(resumed.elapsed(), Duration::from_secs(3));
}
