//! Errors sent inside a 200 stream end it as an error, whatever the shape of their payload:
//! with or without an `error` key, named `event: error` or typed `"type":"error"`, JSON or
//! not, and even when the stream's terminal event follows.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;

use common::{Piece, Reply, call, drain, mock};
use tower_llm_core::FailureKind;
use tower_llm_providers::{
    Anthropic, ChatChunk, ChatRequest, ChunkDecoder, Gemini, Message, OpenAi,
};

/// A dialect's name, its decoder and its clean end.
type Dialect = (&'static str, fn() -> ChunkDecoder, &'static str);

fn decoders() -> [Dialect; 3] {
    [
        ("openai", ChunkDecoder::openai, "data: [DONE]\n\n"),
        (
            "anthropic",
            ChunkDecoder::anthropic,
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ),
        (
            "gemini",
            ChunkDecoder::gemini,
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}]}\n\n",
        ),
    ]
}

/// Error payloads as upstreams and the proxies between send them.
const ERRORS: [(&str, &str); 7] = [
    ("event: error\ndata: {\"message\":\"boom\"}\n\n", "boom"),
    (
        "event: error\ndata: {\"type\":\"error\",\"message\":\"boom\"}\n\n",
        "boom",
    ),
    (
        "data: {\"type\":\"error\",\"message\":\"boom\"}\n\n",
        "boom",
    ),
    (
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"boom\"}}\n\n",
        "boom",
    ),
    (
        "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n",
        "boom",
    ),
    ("event: error\ndata: upstream boom\n\n", "upstream boom"),
    // vLLM and other OpenAI-compatible servers.
    (
        "data: {\"object\":\"error\",\"message\":\"boom\",\"type\":\"BadRequestError\",\"param\":null,\"code\":400}\n\n",
        "boom",
    ),
];

#[test]
fn every_error_shape_is_an_error_in_every_dialect() {
    for (dialect, decoder, terminal) in decoders() {
        for (error, message) in ERRORS {
            // Some text first, then the error, then the dialect's clean end.
            let stream = format!("{error}{terminal}");
            let mut decoder = decoder();
            let mut chunks = VecDeque::new();
            let outcome = decoder
                .feed(stream.as_bytes(), &mut chunks)
                .and_then(|_| decoder.finish(&mut chunks));
            let error = outcome.expect_err(&format!("{dialect}: {error:?} ended as a success"));
            assert!(
                error.message().contains(message),
                "{dialect}: {error:?}: {}",
                error.message()
            );
            assert!(
                !chunks.iter().any(|c| matches!(c, ChatChunk::Finish(_))),
                "{dialect}: no clean finish after an error"
            );
        }
    }
}

#[test]
fn an_anthropic_overload_event_is_classified() {
    let mut decoder = ChunkDecoder::anthropic();
    let mut chunks = VecDeque::new();
    let error = decoder
        .feed(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            &mut chunks,
        )
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::Overloaded);
}

#[test]
fn a_content_that_says_error_is_not_an_error() {
    let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"error\"}}]}\n\n\
                  data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\\"error\\\"\"}}]}\n\n\
                  data: [DONE]\n\n";
    let mut decoder = ChunkDecoder::openai();
    let mut chunks = VecDeque::new();
    assert!(decoder.feed(stream.as_bytes(), &mut chunks).unwrap());
    decoder.finish(&mut chunks).unwrap();
    assert_eq!(
        chunks.into_iter().collect::<Vec<_>>(),
        vec![
            ChatChunk::Content("error".into()),
            ChatChunk::Content("\"error\"".into())
        ]
    );
}

#[tokio::test]
async fn an_error_event_without_an_error_key_fails_the_streamed_call() {
    let hello = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n";
    let body =
        format!("{hello}event: error\ndata: {{\"message\":\"stream reset\"}}\n\ndata: [DONE]\n\n");
    let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();

    let (client, _) = mock(Reply::sse(vec![Piece::Data(body.into())]));
    let mut openai = OpenAi::builder().api_key("k").build_with(client).unwrap();
    let items = drain(call(&mut openai, request.clone()).await.unwrap()).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(
        items[0].as_ref().unwrap(),
        &ChatChunk::Content("Hel".into())
    );
    assert!(
        items[1]
            .as_ref()
            .unwrap_err()
            .message()
            .contains("stream reset")
    );

    let body = "event: error\ndata: {\"message\":\"stream reset\"}\n\n\
                event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let (client, _) = mock(Reply::sse(vec![Piece::Data(body.into())]));
    let mut anthropic = Anthropic::builder()
        .api_key("k")
        .build_with(client)
        .unwrap();
    let items = drain(call(&mut anthropic, request.clone()).await.unwrap()).await;
    assert!(items.last().unwrap().is_err(), "{items:?}");

    let body = "event: error\ndata: {\"message\":\"stream reset\"}\n\n";
    let (client, _) = mock(Reply::sse(vec![Piece::Data(body.into())]));
    let mut gemini = Gemini::builder().api_key("k").build_with(client).unwrap();
    let items = drain(call(&mut gemini, request).await.unwrap()).await;
    assert!(
        items
            .last()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .message()
            .contains("stream reset"),
        "{items:?}"
    );
}
