//! A stream's end, as the layers see it: the signal it fires (completed with its usage, failed,
//! dropped), and the default timeouts that end a stalled stream.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Piece, Reply, call, mock};
use futures_util::StreamExt;
use tower_llm_core::{ClassifyResponse, FailureKind, StreamEnd, Usage};
use tower_llm_providers::{Anthropic, ChatRequest, ChatStream, Message, OpenAi, StreamTimeouts};

const ROLE_ONLY: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
const CONTENT: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
const FINISH: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

const MESSAGE_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"c\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n";

fn data(text: &str) -> Piece {
    Piece::Data(text.to_owned().into())
}

async fn openai_stream(pieces: Vec<Piece>) -> ChatStream<common::ScriptBody> {
    let (client, _) = mock(Reply::sse(pieces));
    let mut openai = OpenAi::builder().api_key("k").build_with(client).unwrap();
    let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
    call(&mut openai, request).await.expect("a stream")
}

async fn anthropic_stream(pieces: Vec<Piece>) -> ChatStream<common::ScriptBody> {
    let (client, _) = mock(Reply::sse(pieces));
    let mut anthropic = Anthropic::builder()
        .api_key("k")
        .build_with(client)
        .unwrap();
    let request = ChatRequest::new("c", vec![Message::user("hi")]).streaming();
    call(&mut anthropic, request).await.expect("a stream")
}

/// Hangs a hook on the stream's signal and returns where its end lands.
fn watch(stream: &mut ChatStream<common::ScriptBody>) -> Arc<Mutex<Vec<StreamEnd>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    stream
        .end_signal()
        .expect("a stream finishes later")
        .on_end(move |end| record.lock().unwrap().push(end.clone()));
    seen
}

/// Reads `stream` until its first error.
async fn first_error(
    stream: &mut ChatStream<common::ScriptBody>,
) -> tower_llm_providers::UpstreamError {
    loop {
        match stream.next().await.expect("an item") {
            Ok(_) => continue,
            Err(error) => return error,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_read_to_its_end_completes_with_its_usage() {
    let mut stream = openai_stream(vec![
        data(ROLE_ONLY),
        data(CONTENT),
        data(FINISH),
        data(USAGE),
        data(DONE),
    ])
    .await;
    let seen = watch(&mut stream);
    let mut items = 0;
    while let Some(item) = stream.next().await {
        item.unwrap();
        items += 1;
        if items < 3 {
            assert!(seen.lock().unwrap().is_empty(), "ended before its end");
        }
    }
    let usage = Usage::new(7, 3);
    assert_eq!(
        *seen.lock().unwrap(),
        [StreamEnd::Completed { usage: Some(usage) }]
    );
    drop(stream);
    assert_eq!(seen.lock().unwrap().len(), 1, "fired once");
}

#[tokio::test(start_paused = true)]
async fn a_cut_an_error_event_and_a_drop_each_end_the_stream_their_way() {
    // Cut: the body ends without [DONE].
    let mut cut = openai_stream(vec![data(CONTENT)]).await;
    let seen = watch(&mut cut);
    while cut.next().await.is_some() {}
    assert_eq!(
        *seen.lock().unwrap(),
        [StreamEnd::failed(FailureKind::Transport)]
    );

    // A named error event mid-stream.
    let mut errored = openai_stream(vec![
        data(CONTENT),
        data("event: error\ndata: {\"message\":\"overloaded\",\"type\":\"overloaded_error\"}\n\n"),
        data(DONE),
    ])
    .await;
    let seen = watch(&mut errored);
    while errored.next().await.is_some() {}
    let ends = seen.lock().unwrap().clone();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert!(matches!(ends[0], StreamEnd::Failed(_)), "{ends:?}");

    // Dropped by the caller halfway: neither a success nor a failure.
    let mut dropped = openai_stream(vec![
        data(CONTENT),
        Piece::Stall(Duration::from_secs(1)),
        data(FINISH),
        data(DONE),
    ])
    .await;
    let seen = watch(&mut dropped);
    dropped.next().await.unwrap().unwrap();
    drop(dropped);
    assert_eq!(*seen.lock().unwrap(), [StreamEnd::Dropped]);
}

/// The stall the default limits exist for: the head and OpenAI's role-only first chunk
/// arrive, then nothing. It ends in a timeout at the default between-chunks limit, counted
/// from the head.
#[tokio::test(start_paused = true)]
async fn a_stall_after_the_role_chunk_ends_at_the_default_limit() {
    let started = tokio::time::Instant::now();
    let mut stream = openai_stream(vec![
        data(ROLE_ONLY),
        Piece::Stall(Duration::from_secs(24 * 3600)),
        data(DONE),
    ])
    .await;
    let seen = watch(&mut stream);
    let error = stream
        .next()
        .await
        .expect("an item")
        .expect_err("the server went silent");
    assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
    assert_eq!(started.elapsed(), StreamTimeouts::DEFAULT_BETWEEN_CHUNKS);
    // At the defaults both limits run out at this instant (the head came with the request,
    // in paused time, and the role-only chunk is no chunk for the caller): the first-token
    // limit is the one named. The between-chunks limit on its own is shown below.
    assert!(error.to_string().contains("first-token"), "{error}");
    assert_eq!(
        *seen.lock().unwrap(),
        [StreamEnd::failed(FailureKind::Timeout)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_message_start_ends_at_the_default_limit() {
    let started = tokio::time::Instant::now();
    let mut stream = anthropic_stream(vec![
        data(MESSAGE_START),
        Piece::Stall(Duration::from_secs(24 * 3600)),
    ])
    .await;
    let error = first_error(&mut stream).await;
    assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
    assert_eq!(started.elapsed(), StreamTimeouts::DEFAULT_BETWEEN_CHUNKS);
    assert!(error.to_string().contains("first-token"), "{error}");
}

/// A shorter silence limit catches the same stalls on its own, counted from the response
/// head: OpenAI's role-only first chunk, or Anthropic's `message_start`, then nothing. The
/// first-token limit is off, so only `between_chunks` can end the stream, and it does so at
/// its 3 s, not at the mock's day of silence.
#[tokio::test(start_paused = true)]
async fn a_stall_right_after_the_head_ends_at_the_between_chunks_limit() {
    const SILENCE: Duration = Duration::from_secs(3);
    let timeouts = StreamTimeouts::none().between_chunks(SILENCE);
    let stall = || Piece::Stall(Duration::from_secs(24 * 3600));

    let (client, _) = mock(Reply::sse(vec![data(ROLE_ONLY), stall(), data(DONE)]));
    let mut openai = OpenAi::builder()
        .api_key("k")
        .stream_timeouts(timeouts)
        .build_with(client)
        .unwrap();
    let started = tokio::time::Instant::now();
    let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
    let mut stream = call(&mut openai, request).await.expect("a stream");
    let seen = watch(&mut stream);
    let error = first_error(&mut stream).await;
    assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
    assert!(error.to_string().contains("between-chunks"), "{error}");
    assert_eq!(started.elapsed(), SILENCE);
    assert_eq!(
        *seen.lock().unwrap(),
        [StreamEnd::failed(FailureKind::Timeout)]
    );

    let (client, _) = mock(Reply::sse(vec![data(MESSAGE_START), stall()]));
    let mut anthropic = Anthropic::builder()
        .api_key("k")
        .stream_timeouts(timeouts)
        .build_with(client)
        .unwrap();
    let started = tokio::time::Instant::now();
    let request = ChatRequest::new("c", vec![Message::user("hi")]).streaming();
    let mut stream = call(&mut anthropic, request).await.expect("a stream");
    let error = first_error(&mut stream).await;
    assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
    assert!(error.to_string().contains("between-chunks"), "{error}");
    assert_eq!(started.elapsed(), SILENCE);
}

/// With the first-token limit on at its default, a shorter silence limit still ends a stall
/// after the head first: the two run side by side, and the earlier one fires.
#[tokio::test(start_paused = true)]
async fn a_silence_limit_shorter_than_the_first_token_one_fires_first() {
    const SILENCE: Duration = Duration::from_secs(3);
    let (client, _) = mock(Reply::sse(vec![
        data(ROLE_ONLY),
        Piece::Stall(Duration::from_secs(24 * 3600)),
        data(DONE),
    ]));
    let mut openai = OpenAi::builder()
        .api_key("k")
        .stream_timeouts(StreamTimeouts::default().between_chunks(SILENCE))
        .build_with(client)
        .unwrap();
    let started = tokio::time::Instant::now();
    let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
    let mut stream = call(&mut openai, request).await.expect("a stream");
    let error = first_error(&mut stream).await;
    assert!(error.to_string().contains("between-chunks"), "{error}");
    assert_eq!(started.elapsed(), SILENCE);
}

/// Anthropic's pings during a long think are signs of life: the stream waits past the
/// between-chunks limit as long as they keep coming, and still has its first-token limit.
#[tokio::test(start_paused = true)]
async fn pings_keep_a_thinking_stream_alive_until_the_first_token_limit() {
    let ping = "event: ping\ndata: {\"type\":\"ping\"}\n\n";
    let mut pieces = vec![data(MESSAGE_START)];
    for _ in 0..20 {
        pieces.push(Piece::Stall(Duration::from_secs(60)));
        pieces.push(data(ping));
    }
    let started = tokio::time::Instant::now();
    let mut stream = anthropic_stream(pieces).await;
    let error = first_error(&mut stream).await;
    assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
    assert!(error.to_string().contains("first-token"), "{error}");
    assert_eq!(started.elapsed(), StreamTimeouts::DEFAULT_FIRST_TOKEN);
}

#[test]
fn the_defaults_are_on_and_none_turns_them_off() {
    let defaults = StreamTimeouts::default();
    assert_eq!(defaults.first_token, Some(Duration::from_secs(600)));
    assert_eq!(defaults.between_chunks, Some(Duration::from_secs(600)));
    assert_eq!(defaults.total, None);
    assert_eq!(StreamTimeouts::none().first_token, None);
}

/// After the terminal event the rest of the body is read, so the connection can be pooled; a
/// server that holds the body open is waited for a short grace only, then the stream ends as
/// completed (the answer was whole), not as a timeout.
#[tokio::test(start_paused = true)]
async fn a_body_held_open_after_the_terminal_event_is_given_a_short_grace() {
    let mut stream = openai_stream(vec![
        data(CONTENT),
        data(FINISH),
        data(DONE),
        Piece::Stall(Duration::from_secs(600)),
        data("data: trailing\n\n"),
    ])
    .await;
    let seen = watch(&mut stream);
    let started = tokio::time::Instant::now();
    let mut chunks = 0;
    while let Some(item) = stream.next().await {
        item.unwrap();
        chunks += 1;
    }
    assert_eq!(chunks, 2, "content and finish");
    assert_eq!(
        *seen.lock().unwrap(),
        [StreamEnd::Completed { usage: None }]
    );
    // The grace, not the 10-minute stall nor the 5-minute silence limit.
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

/// A terminal event that is the body's last bytes (no blank line after it) ends the stream
/// without polling the body again.
#[tokio::test(start_paused = true)]
async fn a_terminal_event_at_the_very_end_of_the_body_ends_the_stream() {
    let mut stream = openai_stream(vec![data(CONTENT), data(FINISH), data("data: [DONE]")]).await;
    let seen = watch(&mut stream);
    while let Some(item) = stream.next().await {
        item.unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [StreamEnd::Completed { usage: None }]
    );
}

/// A stream made under a call's deadline ends there, though the layer that set the deadline
/// saw only its head.
#[tokio::test(start_paused = true)]
async fn a_stream_ends_at_the_deadline_of_its_call() {
    use tower::{ServiceBuilder, ServiceExt};
    use tower_llm_core::DeadlineLayer;

    let (client, _) = mock(Reply::sse(vec![
        data(CONTENT),
        data(CONTENT),
        Piece::Stall(Duration::from_secs(60)),
        data(FINISH),
        data(DONE),
    ]));
    let openai = OpenAi::builder().api_key("k").build_with(client).unwrap();
    let service = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(20)))
        .service(openai);
    let started = tokio::time::Instant::now();
    let mut stream = service
        .oneshot(ChatRequest::new("m", vec![Message::user("hi")]).streaming())
        .await
        .unwrap();
    let error = first_error(&mut stream).await;
    // The caller gave up, the upstream did not fail: a breaker or an adaptive limit above the
    // provider must not count a short deadline a client chose against it.
    assert_eq!(error.kind(), FailureKind::Cancelled, "{error}");
    assert!(error.to_string().contains("deadline"), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(20));
}

/// The same before the first chunk: a deadline shorter than the upstream's time to first token
/// ends the call as cancelled; the provider's own limits, when shorter, still time it out.
#[tokio::test(start_paused = true)]
async fn a_deadline_before_the_first_chunk_is_a_cancellation_not_a_timeout() {
    use tower::{ServiceBuilder, ServiceExt};
    use tower_llm_core::DeadlineLayer;

    let slow = || {
        mock(Reply::sse(vec![
            Piece::Stall(Duration::from_secs(60)),
            data(CONTENT),
            data(FINISH),
            data(DONE),
        ]))
        .0
    };
    let openai = OpenAi::builder().api_key("k").build_with(slow()).unwrap();
    let service = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(5)))
        .service(openai);
    let request = || ChatRequest::new("m", vec![Message::user("hi")]).streaming();
    let mut stream = service.oneshot(request()).await.unwrap();
    let error = first_error(&mut stream).await;
    assert_eq!(error.kind(), FailureKind::Cancelled, "{error}");

    // The provider's own total, shorter than the time left: the upstream was too slow.
    let openai = OpenAi::builder()
        .api_key("k")
        .stream_timeouts(StreamTimeouts::none().total(Duration::from_secs(2)))
        .build_with(slow())
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(5)))
        .service(openai);
    let mut stream = service.oneshot(request()).await.unwrap();
    let error = first_error(&mut stream).await;
    assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
}
