//! Memory held while decoding hostile event streams, measured by a counting global allocator.
//!
//! Each input is 1 MiB, cut into pieces of random size (1 byte to 64 KiB) and served as the
//! frames of a streamed answer. Whatever the input, the peak of live heap bytes while the
//! stream is read must stay within a small multiple of the configured `max_event_bytes`:
//! a parser that copied the `id` into every event, or parsed a whole read into a list before
//! handing any event on, would hold many times that.
//!
//! One test function runs every case in turn: the allocator counts the whole process, so no
//! other test may run beside it.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use peak_alloc::PeakAlloc;
use tower::{ServiceExt, service_fn};
use tower_llm_providers::sse::SseParser;
use tower_llm_providers::{ChatChunk, ChatRequest, Message, OpenAi, RequestBody};

/// Counts the live heap bytes of this test binary, and their peak.
#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

const LIMIT: usize = 64 * 1024;
const INPUT: usize = 1024 * 1024;
/// What the decoder may hold beyond the input itself: one line and one event's data (each up
/// to the limit), the chunks of one event, and slack for the runtime's own allocations.
const BOUND: usize = 4 * LIMIT;

/// A small deterministic generator, so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `unit` repeated to 1 MiB after `head`, then cut into random pieces that share one buffer.
fn pieces(head: &str, unit: &str, seed: u64) -> Vec<Bytes> {
    let mut text = String::with_capacity(INPUT + unit.len());
    text.push_str(head);
    while text.len() < INPUT {
        text.push_str(unit);
    }
    let all = Bytes::from(text);
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut at = 0;
    while at < all.len() {
        let size = 1 + (rng.next() % (LIMIT as u64)) as usize;
        let end = (at + size).min(all.len());
        out.push(all.slice(at..end));
        at = end;
    }
    out
}

const TINY_EVENT: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n";

fn cases() -> Vec<(&'static str, String, String)> {
    let long_id = "i".repeat(1000);
    let long_name = "n".repeat(1000);
    vec![
        // A long (but allowed) id, then endless tiny events: the id must not be copied.
        (
            "long id, endless tiny events",
            format!("id: {long_id}\n"),
            TINY_EVENT.to_owned(),
        ),
        // The id repeated on every event.
        (
            "an id on every event",
            String::new(),
            format!("id: {long_id}\n{TINY_EVENT}"),
        ),
        // A long event name on every event.
        (
            "long event names",
            String::new(),
            format!("event: {long_name}\n{TINY_EVENT}"),
        ),
        // An id far over any limit.
        ("huge id", "id: ".to_owned(), "i".to_owned()),
        // One endless line, never ended by a newline.
        ("endless line", "data: ".to_owned(), "x".to_owned()),
        // Endless `event:` lines that never dispatch.
        (
            "endless event names",
            String::new(),
            format!("event: {long_name}\n"),
        ),
        // Comments only.
        (
            "endless comments",
            String::new(),
            ": keep-alive\n".to_owned(),
        ),
    ]
}

fn stream_peak(runtime: &tokio::runtime::Runtime, frames: Vec<Bytes>) -> (usize, usize, bool) {
    let frames = std::sync::Mutex::new(Some(frames));
    let http = service_fn(move |_request: http::Request<RequestBody>| {
        let frames = frames.lock().unwrap().take().unwrap_or_default();
        async move {
            let body = StreamBody::new(futures_util::stream::iter(
                frames
                    .into_iter()
                    .map(|piece| Ok::<_, Infallible>(Frame::data(piece))),
            ));
            let mut response = http::Response::new(body);
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    let openai = OpenAi::builder()
        .api_key("sk-test")
        .max_event_bytes(LIMIT)
        .build_with(http)
        .unwrap();
    let request = ChatRequest::new("gpt-4o-mini", vec![Message::user("Hi")]).streaming();
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let (chunks, failed) = runtime.block_on(async move {
        let mut stream = openai.oneshot(request).await.unwrap();
        let mut chunks = 0;
        let mut failed = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(ChatChunk::Content(_)) => chunks += 1,
                Ok(_) => {}
                Err(_) => failed = true,
            }
        }
        (chunks, failed)
    });
    (ALLOCATOR.peak_usage() - before, chunks, failed)
}

fn parser_peak(frames: &[Bytes]) -> usize {
    let mut parser = SseParser::with_max_event_bytes(LIMIT);
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    'read: for frame in frames {
        let mut input = &frame[..];
        loop {
            match parser.next_event(&mut input) {
                Ok(Some(event)) => drop(event),
                Ok(None) => break,
                Err(_) => break 'read,
            }
        }
    }
    drop(parser);
    ALLOCATOR.peak_usage() - before
}

#[test]
fn hostile_streams_hold_a_small_multiple_of_the_limits() {
    // Streams have timeouts by default, so the runtime needs its timer.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut report = Vec::new();
    for (seed, (name, head, unit)) in cases().into_iter().enumerate() {
        let seed = 0x9E37_79B9_7F4A_7C15 ^ (seed as u64 + 1);
        let frames = pieces(&head, &unit, seed);
        let parser = parser_peak(&frames);
        let (stream, chunks, failed) = stream_peak(&runtime, frames);
        report.push(format!(
            "{name}: parser peak {parser} B, stream peak {stream} B, {chunks} chunks, failed {failed}"
        ));
        assert!(parser <= BOUND, "{name}: the parser held {parser} bytes");
        assert!(stream <= BOUND, "{name}: the stream held {stream} bytes");
        // None of these inputs is a complete answer: each must end as an error.
        assert!(failed, "{name}: ended without an error");
    }
    println!("{}", report.join("\n"));
}
