//! Streaming dedup over real SSE: the testkit's mock server streams an OpenAI chat completion.
#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_dedup::{ReplayStream, StreamDedupLayer};
use tower_llm_testkit::{Fault, FaultPlan, MockServer, TestClient, openai_chat_stream};

type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// An SSE client: the response is the body's data frames, as they arrive.
fn sse_client()
-> impl Service<http::Request<Bytes>, Response = Chunks, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    let client = TestClient::new();
    service_fn(move |request: http::Request<Bytes>| {
        let client = client.clone();
        async move {
            let response = client.send_streaming(request).await?;
            if !response.status().is_success() {
                return Err::<Chunks, BoxError>(format!("status {}", response.status()).into());
            }
            let chunks: Chunks = Box::pin(futures_util::stream::try_unfold(
                response.into_body(),
                |mut body| async move {
                    Ok(TestClient::next_chunk(&mut body)
                        .await?
                        .map(|chunk| (chunk, body)))
                },
            ));
            Ok(chunks)
        }
    })
}

async fn read_all(stream: ReplayStream<Bytes>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut stream = stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

const PROMPT: &str = "tell me a story about seven small streaming words";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_streams_make_one_upstream_call() {
    let plan = FaultPlan::healthy().stream_chunk_delay(Duration::from_millis(20));
    let server = MockServer::start(plan).await.expect("server");
    let layer = StreamDedupLayer::builder().build().expect("valid");
    let service = ServiceBuilder::new().layer(layer).service(sse_client());
    let base = server.base_url();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let service = service.clone();
            let request = openai_chat_stream(&base, "gpt-4o-mini", PROMPT);
            tokio::spawn(
                async move { read_all(service.oneshot(request).await.expect("head")).await },
            )
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        bodies.push(task.await.expect("no panic").expect("whole stream"));
    }
    assert!(String::from_utf8_lossy(&bodies[0]).contains("[DONE]"));
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    assert_eq!(server.counters().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_whole_stream() {
    let plan = FaultPlan::healthy().stream_chunk_delay(Duration::from_millis(50));
    let server = MockServer::start(plan).await.expect("server");
    let service = ServiceBuilder::new()
        .layer(StreamDedupLayer::builder().build().expect("valid"))
        .service(sse_client());
    let base = server.base_url();
    let mut first = service
        .clone()
        .oneshot(openai_chat_stream(&base, "gpt-4o-mini", PROMPT))
        .await
        .expect("head");
    let mut early = Vec::new();
    for _ in 0..3 {
        early.extend_from_slice(&first.next().await.expect("a chunk").expect("ok"));
    }
    let late = service
        .clone()
        .oneshot(openai_chat_stream(&base, "gpt-4o-mini", PROMPT))
        .await
        .expect("joined");
    let rest = read_all(first).await.expect("rest");
    early.extend_from_slice(&rest);
    let late = read_all(late).await.expect("late joiner's stream");
    assert_eq!(late, early, "the late joiner got every chunk, in order");
    assert!(String::from_utf8_lossy(&late).contains("[DONE]"));
    assert_eq!(server.counters().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_fails_every_subscriber_and_is_not_cached() {
    let plan = FaultPlan::healthy()
        .stream_chunk_delay(Duration::from_millis(20))
        .script([Some(Fault::CutStream { after_chunks: 2 })]);
    let server = MockServer::start(plan).await.expect("server");
    let layer = StreamDedupLayer::builder()
        .cache_all()
        .build()
        .expect("valid");
    let service = ServiceBuilder::new().layer(layer).service(sse_client());
    let base = server.base_url();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            let request = openai_chat_stream(&base, "gpt-4o-mini", PROMPT);
            tokio::spawn(
                async move { read_all(service.oneshot(request).await.expect("head")).await },
            )
        })
        .collect();
    for task in tasks {
        task.await
            .expect("no panic")
            .expect_err("the cut reaches every subscriber");
    }
    assert_eq!(server.counters().requests, 1);
    let again = service
        .clone()
        .oneshot(openai_chat_stream(&base, "gpt-4o-mini", PROMPT))
        .await
        .expect("head");
    assert!(!again.is_cached());
    read_all(again)
        .await
        .expect("the second call streams whole");
    assert_eq!(server.counters().requests, 2);
    let cached = service
        .clone()
        .oneshot(openai_chat_stream(&base, "gpt-4o-mini", PROMPT))
        .await
        .expect("head");
    assert!(
        cached.is_cached(),
        "the whole stream was cached (cache_all)"
    );
    read_all(cached).await.expect("replay");
    assert_eq!(server.counters().requests, 2);
}
