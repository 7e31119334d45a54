//! A stream the caller drops: a whole answer once the caller has had its finish chunk (or
//! the terminal event has been decoded), a drop before that. The layers hear it through the
//! stream's end signal.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tower::{ServiceExt, service_fn};
use tower_llm_core::{ClassifyResponse, StreamEnd, Usage};
use tower_llm_providers::{ChatChunk, ChatRequest, ChatStream, Message, OpenAi, RequestBody};

/// Content, the finish chunk, the usage chunk, then `[DONE]`, as OpenAI sends them with
/// `stream_options.include_usage`.
const EVENTS: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
    data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\
    data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n\
    data: [DONE]\n\n";

async fn stream() -> ChatStream<http_body_util::Full<bytes::Bytes>> {
    let http = service_fn(|_request: http::Request<RequestBody>| async move {
        let mut response =
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from(EVENTS)));
        response
            .headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        Ok::<_, std::convert::Infallible>(response)
    });
    let openai = OpenAi::builder()
        .api_key("sk-test")
        .build_with(http)
        .unwrap();
    let request = ChatRequest::new("gpt-4o-mini", vec![Message::user("Hi")]).streaming();
    openai.oneshot(request).await.unwrap()
}

/// The stream's end as its signal reports it, after reading until `stop` says so and
/// dropping it.
async fn end_after(stop: impl Fn(&ChatChunk) -> bool) -> StreamEnd {
    let mut stream = stream().await;
    let seen = Arc::new(Mutex::new(None));
    let record = Arc::clone(&seen);
    stream
        .end_signal()
        .unwrap()
        .on_end(move |end| *record.lock().unwrap() = Some(end.clone()));
    while let Some(chunk) = stream.next().await {
        if stop(&chunk.unwrap()) {
            break;
        }
    }
    assert!(seen.lock().unwrap().is_none(), "not ended before the drop");
    drop(stream);
    seen.lock().unwrap().take().expect("the drop ends it")
}

#[tokio::test]
async fn dropped_after_the_finish_chunk_is_a_whole_answer() {
    let end = end_after(|chunk| matches!(chunk, ChatChunk::Finish(_))).await;
    assert!(
        matches!(end, StreamEnd::Completed { .. }),
        "the caller had the whole answer: {end:?}"
    );
}

#[tokio::test]
async fn dropped_after_the_usage_chunk_carries_the_usage() {
    let end = end_after(|chunk| matches!(chunk, ChatChunk::Usage(_))).await;
    assert_eq!(
        end,
        StreamEnd::Completed {
            usage: Some(Usage::new(5, 1))
        }
    );
}

#[tokio::test]
async fn dropped_mid_answer_is_a_drop() {
    let end = end_after(|chunk| matches!(chunk, ChatChunk::Content(text) if text == "Hi")).await;
    assert!(matches!(end, StreamEnd::Dropped), "{end:?}");
}

#[tokio::test]
async fn read_to_its_end_it_completes_once_with_its_usage() {
    let mut stream = stream().await;
    let ends = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&ends);
    stream
        .end_signal()
        .unwrap()
        .on_end(move |end| record.lock().unwrap().push(end.clone()));
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    drop(stream);
    let ends = ends.lock().unwrap();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert!(
        matches!(ends[0], StreamEnd::Completed { usage: Some(_) }),
        "{ends:?}"
    );
}
