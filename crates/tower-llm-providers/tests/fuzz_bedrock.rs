//! Property tests of Bedrock's decoders, the twin of `fuzz.rs`: the Converse answer, the
//! error body and in-stream exception readers, and ConverseStream (the AWS event-stream
//! framing and the event decoder, as the provider runs them and on their own). Whatever
//! arrives, nothing panics, a stream yields at most one error and ends, and nothing that is
//! not a whole answer ends as one: a cut, garbled or incomplete stream is an error.

#![cfg(feature = "bedrock")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;

use bytes::Bytes;
use common::{Piece, Reply, call, drain, mock};
use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use serde_json::Value;
use tower_llm_core::{FailureKind, MAX_ERROR_BODY, UpstreamError};
use tower_llm_providers::bedrock::wire::{
    ConverseStreamDecoder, decode_error, decode_exception, decode_response,
};
use tower_llm_providers::bedrock::{Bedrock, BedrockProtocol};
use tower_llm_providers::{ChatAccumulator, ChatChunk, ChatRequest, ChunkDecoder, Message};
use tower_llm_testkit::event_stream_message;

/// Recorded ConverseStream events, `[event type, payload]` pairs, framed by [`framed`].
const TRANSCRIPTS: [&str; 2] = [
    include_str!("fixtures/bedrock_converse_stream_tool_use.json"),
    include_str!("fixtures/bedrock_converse_stream_parallel_tool_use.json"),
];

const BODIES: [&str; 3] = [
    include_str!("fixtures/bedrock_converse_text.json"),
    include_str!("fixtures/bedrock_converse_tool_use.json"),
    include_str!("fixtures/bedrock_converse_parallel_tool_use.json"),
];

const ERRORS: &str = include_str!("fixtures/bedrock_errors.json");

const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

const MAX_EVENT: usize = 1024;

/// A stream is complete only once it has had both of these events.
const TERMINALS: [&str; 2] = ["messageStop", "metadata"];

/// A recorded transcript framed as Bedrock sends it.
fn framed(transcript: &str) -> Vec<u8> {
    let events: Vec<(String, Value)> = serde_json::from_str(transcript).unwrap();
    let mut bytes = Vec::new();
    for (event_type, payload) in events {
        bytes.extend_from_slice(&event_stream_message(
            &[
                (":event-type", &event_type),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.to_string().as_bytes(),
        ));
    }
    bytes
}

fn decoder() -> ChunkDecoder {
    ChunkDecoder::of::<BedrockProtocol>("bedrock")
}

/// Feeds `bytes` cut at `cuts` through Bedrock's stream decoding, then finishes it.
fn decode_split(bytes: &[u8], cuts: &[usize]) -> (Vec<ChatChunk>, Result<(), UpstreamError>) {
    let mut decoder = decoder();
    let mut chunks = VecDeque::new();
    for piece in split(bytes, cuts) {
        let Piece::Data(piece) = piece else {
            unreachable!("split makes data pieces")
        };
        if let Err(error) = decoder.feed(&piece, &mut chunks) {
            return (chunks.into(), Err(error));
        }
    }
    let end = decoder.finish(&mut chunks);
    (chunks.into(), end)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// `bytes` with `flips` written over it, then cut at `truncate`.
fn mutate(bytes: &[u8], flips: &[(usize, u8)], truncate: Option<usize>) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    for &(at, byte) in flips {
        let len = bytes.len();
        bytes[at % len] = byte;
    }
    if let Some(at) = truncate {
        // Drawn over a range wider than any input: folded into this one, so that a cut lands
        // anywhere in it rather than mostly past its end.
        bytes.truncate(at % (bytes.len() + 1));
    }
    bytes
}

/// `cuts` drawn over a range wider than `len`, folded into `0..=len`: each lands somewhere
/// in the input (clamping would put most of them at its end).
fn within(len: usize, cuts: &[usize]) -> Vec<usize> {
    cuts.iter().map(|&c| c % (len + 1)).collect()
}

/// The testkit's split, at `cuts` folded into the input ([`within`]).
fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Piece> {
    common::split(bytes, &within(bytes.len(), cuts))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn bedrock(reply: Reply) -> Bedrock<common::MockClient> {
    let (client, _) = mock(reply);
    Bedrock::builder()
        .api_key("k")
        .region("us-east-1")
        .max_event_bytes(MAX_EVENT)
        .build_with(client)
        .unwrap()
}

fn request() -> ChatRequest {
    ChatRequest::new("amazon.nova-micro-v1:0", vec![Message::user("hi")])
}

/// Streams `pieces` through the Bedrock provider; at most one error, last.
fn check_stream(pieces: Vec<Piece>) -> Result<(), TestCaseError> {
    runtime().block_on(async {
        let reply = Reply {
            status: 200,
            headers: vec![("content-type", EVENT_STREAM.into())],
            pieces,
        };
        let mut service = bedrock(reply);
        let items = drain(call(&mut service, request().streaming()).await.unwrap()).await;
        let errors = items.iter().filter(|i| i.is_err()).count();
        prop_assert!(errors <= 1, "at most one error: {items:?}");
        if errors == 1 {
            prop_assert!(items.last().unwrap().is_err(), "the error is the last item");
        }
        Ok(())
    })
}

/// Answers a Converse call with `body` at `status`: an error status is an error with a
/// bounded body; a success is an answer only when the body has `output.message`.
fn check_body(status: u16, body: &[u8]) -> Result<(), TestCaseError> {
    runtime().block_on(async {
        let reply = Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            pieces: vec![Piece::Data(Bytes::copy_from_slice(body))],
        };
        let mut service = bedrock(reply);
        match call(&mut service, request()).await {
            Ok(_) => {
                prop_assert!(status < 400, "status {status} was an answer");
                prop_assert!(answer_shaped(body), "{:?}", String::from_utf8_lossy(body));
            }
            Err(error) => {
                prop_assert!(error.body().is_none_or(|b| b.len() <= MAX_ERROR_BODY));
            }
        }
        Ok(())
    })
}

/// What any body the Converse decoder accepts must be: JSON with an `output.message`.
/// Whether `body` is JSON with an `/output/message`. Bytes that are not UTF-8 are read as
/// U+FFFD: the decoder skips the fields it does not read without checking their strings (as
/// serde does), so a bad byte in an ignored field leaves an answer an answer.
fn answer_shaped(body: &[u8]) -> bool {
    serde_json::from_str::<Value>(&String::from_utf8_lossy(body))
        .is_ok_and(|v| v.pointer("/output/message").is_some())
}

/// A ConverseStream event type: the real ones, more often than not, and noise.
fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(vec![
            "messageStart",
            "contentBlockStart",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z]{0,16}",
    ]
}

/// A payload shaped like ConverseStream's, with block indices that collide, skip and go
/// out of order, and now and then noise.
fn payload() -> impl Strategy<Value = String> {
    let index = prop_oneof![4 => 0u32..4, 1 => Just(u32::MAX)];
    (index, "[a-z{}\":]{0,8}").prop_flat_map(|(i, text)| {
        let text = serde_json::to_string(&text).unwrap();
        prop_oneof![
            Just(format!(r#"{{"contentBlockIndex":{i},"delta":{{"text":{text}}}}}"#)),
            Just(format!(
                r#"{{"contentBlockIndex":{i},"delta":{{"toolUse":{{"input":{text}}}}}}}"#
            )),
            Just(format!(
                r#"{{"contentBlockIndex":{i},"start":{{"toolUse":{{"toolUseId":"t{i}","name":"f"}}}}}}"#
            )),
            Just(format!(
                r#"{{"contentBlockIndex":{i},"delta":{{"reasoningContent":{{"text":{text}}}}}}}"#
            )),
            Just(format!(
                r#"{{"contentBlockIndex":{i},"delta":{{"reasoningContent":{{"signature":{text}}}}}}}"#
            )),
            Just(format!(
                r#"{{"contentBlockIndex":{i},"delta":{{"reasoningContent":{{"redactedContent":"AAA"}}}}}}"#
            )),
            Just(format!(r#"{{"contentBlockIndex":{i},"delta":{{"citation":{{}}}}}}"#)),
            Just(format!(r#"{{"contentBlockIndex":{i}}}"#)),
            Just(r#"{"stopReason":"tool_use"}"#.to_owned()),
            Just(r#"{"usage":{"inputTokens":3,"outputTokens":18446744073709551615}}"#.to_owned()),
            Just(r#"{"role":"assistant"}"#.to_owned()),
            Just(text),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn valid_streams_decode_the_same_at_any_split(
        which in 0usize..TRANSCRIPTS.len(),
        cuts in proptest::collection::vec(0usize..8192, 0..16),
    ) {
        let bytes = framed(TRANSCRIPTS[which]);
        let (whole, end) = decode_split(&bytes, &[]);
        prop_assert!(end.is_ok(), "{end:?}");
        prop_assert!(!whole.is_empty());
        let (split, end) = decode_split(&bytes, &cuts);
        prop_assert!(end.is_ok(), "{end:?}");
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn random_bytes_never_end_as_a_success(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(0usize..2048, 0..10),
    ) {
        let complete = TERMINALS.iter().all(|t| contains(&bytes, t));
        let (_, end) = decode_split(&bytes, &cuts);
        prop_assert!(complete || end.is_err(), "random bytes ended as a success");
    }

    /// A checksum guards every message: bytes written over a stream, or a stream cut short,
    /// fail it; the stream ends well only when nothing was changed.
    #[test]
    fn mutated_streams_fail_or_are_unchanged(
        which in 0usize..TRANSCRIPTS.len(),
        flips in proptest::collection::vec((0usize..8192, any::<u8>()), 0..6),
        truncate in proptest::option::of(0usize..8192),
        cuts in proptest::collection::vec(0usize..8192, 0..10),
    ) {
        let original = framed(TRANSCRIPTS[which]);
        let bytes = mutate(&original, &flips, truncate);
        let (chunks, end) = decode_split(&bytes, &cuts);
        if end.is_ok() {
            prop_assert_eq!(&bytes, &original);
            prop_assert_eq!(chunks, decode_split(&original, &[]).0);
        }
    }

    #[test]
    fn random_and_mutated_streams_through_the_provider(
        which in 0usize..TRANSCRIPTS.len(),
        flips in proptest::collection::vec((0usize..8192, any::<u8>()), 0..6),
        truncate in proptest::option::of(0usize..8192),
        noise in proptest::collection::vec(any::<u8>(), 0..1024),
        cuts in proptest::collection::vec(0usize..8192, 0..10),
    ) {
        let bytes = mutate(&framed(TRANSCRIPTS[which]), &flips, truncate);
        check_stream(split(&bytes, &cuts))?;
        check_stream(split(&noise, &cuts))?;
    }

    /// Well-framed events whose payloads break the decoder's rules (deltas for blocks never
    /// started, blocks started twice, a tool input for a text block): an error or chunks
    /// that rebuild into an answer, never a panic; complete only after `messageStop` and
    /// `metadata` were accepted.
    #[test]
    fn event_shaped_noise(
        events in proptest::collection::vec((event_type(), payload()), 0..24),
    ) {
        let mut decoder = ConverseStreamDecoder::default();
        let mut chunks = VecDeque::new();
        let mut accepted = Vec::new();
        let mut failed = false;
        for (event_type, payload) in &events {
            match decoder.event(event_type, payload.as_bytes(), &mut chunks) {
                Ok(_) => accepted.push(event_type.as_str()),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed && decoder.finish().is_ok() {
            prop_assert!(TERMINALS.iter().all(|t| accepted.contains(t)), "{events:?}");
        }
        let starts = accepted.iter().filter(|t| **t == "contentBlockStart").count();
        let mut answer = ChatAccumulator::default();
        chunks.iter().for_each(|chunk| answer.push(chunk));
        prop_assert!(answer.finish().tool_calls.len() <= starts);
    }

    #[test]
    fn random_and_mutated_answer_bodies(
        which in 0usize..BODIES.len(),
        flips in proptest::collection::vec((0usize..4096, any::<u8>()), 0..6),
        truncate in proptest::option::of(0usize..4096),
        noise in proptest::collection::vec(any::<u8>(), 0..512),
        status in prop_oneof![Just(200u16), Just(400u16), Just(403u16), Just(429u16), Just(500u16), Just(503u16)],
    ) {
        let body = mutate(BODIES[which].as_bytes(), &flips, truncate);
        prop_assert!(decode_response(&body).is_err() || answer_shaped(&body));
        prop_assert!(decode_response(&noise).is_err() || answer_shaped(&noise));
        check_body(status, &body)?;
        check_body(status, &noise)?;
    }

    /// An error body, whatever it holds, is read into an error that keeps the status, a
    /// bounded body and code; the `x-amzn-errortype` header, when it names a type, decides
    /// the kind whatever the body says.
    #[test]
    fn error_bodies_of_any_shape(
        status in 400u16..600,
        error_type in proptest::option::of(prop_oneof![
            Just("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/".to_owned()),
            Just("AccessDeniedException".to_owned()),
            ".{0,300}",
        ]),
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..12_000),
            "\\{\"(message|Message|__type|code)\":\"[a-zA-Z#:. ]{0,64}\"\\}".prop_map(String::into_bytes),
        ],
    ) {
        let mut headers = HeaderMap::new();
        if let Some(Ok(value)) = error_type.as_deref().map(HeaderValue::from_str) {
            headers.insert("x-amzn-errortype", value);
        }
        headers.insert("x-amzn-requestid", HeaderValue::from_static("0b6a1e4c-5f2d"));
        let status = StatusCode::from_u16(status).unwrap();
        let error = decode_error(status, &headers, &body);
        prop_assert_eq!(error.status(), Some(status));
        prop_assert_eq!(error.request_id(), Some("0b6a1e4c-5f2d"));
        prop_assert!(error.body().is_none_or(|b| b.len() <= MAX_ERROR_BODY));
        prop_assert!(error.code().is_none_or(|c| c.chars().count() <= 128));
        match headers.get("x-amzn-errortype").and_then(|v| v.to_str().ok()) {
            Some(t) if t.starts_with("ThrottlingException") => {
                prop_assert_eq!(error.kind(), FailureKind::RateLimited);
            }
            Some("AccessDeniedException") => prop_assert_eq!(error.kind(), FailureKind::Forbidden),
            _ => {}
        }
    }

    #[test]
    fn mutated_recorded_error_bodies(
        which in 0usize..8,
        flips in proptest::collection::vec((0usize..512, any::<u8>()), 0..6),
        truncate in proptest::option::of(0usize..512),
    ) {
        let cases: Vec<Value> = serde_json::from_str(ERRORS).unwrap();
        let case = &cases[which % cases.len()];
        let body = mutate(case["body"].to_string().as_bytes(), &flips, truncate);
        let status = StatusCode::from_u16(case["status"].as_u64().unwrap() as u16).unwrap();
        let error = decode_error(status, &HeaderMap::new(), &body);
        prop_assert_eq!(error.status(), Some(status));
        prop_assert!(error.body().is_none_or(|b| b.len() <= MAX_ERROR_BODY));
    }

    /// An exception, whatever its payload, is an error with a bounded body and code; a
    /// throttling exception is rate limiting whatever its payload says.
    #[test]
    fn in_stream_exceptions_of_any_shape(
        exception_type in prop_oneof![Just("throttlingException".to_owned()), ".{0,300}"],
        payload in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..12_000),
            "\\{\"message\":\"[a-z ]{0,40}\",\"originalStatusCode\":[0-9]{1,6}\\}".prop_map(String::into_bytes),
        ],
    ) {
        let error = decode_exception(&exception_type, &payload);
        prop_assert!(error.code().is_none_or(|c| c.chars().count() <= 128));
        prop_assert!(error.body().is_none_or(|b| b.len() <= MAX_ERROR_BODY));
        if exception_type == "throttlingException" {
            prop_assert_eq!(error.kind(), FailureKind::RateLimited);
        }
    }
}

/// Feeds `events` to a fresh decoder, each accepted, then finishes it.
fn finish_after(events: &[(&str, &str)]) -> Result<(), UpstreamError> {
    let mut decoder = ConverseStreamDecoder::default();
    let mut chunks = VecDeque::new();
    for (event_type, payload) in events {
        if let Err(error) = decoder.event(event_type, payload.as_bytes(), &mut chunks) {
            panic!("{event_type} {payload} refused: {error}");
        }
    }
    decoder.finish()
}

/// A stream is complete only with both of its terminal events: `messageStop` without the
/// `metadata` that follows it, or `metadata` without `messageStop`, is a stream cut short.
#[test]
fn a_stream_needs_both_message_stop_and_metadata() {
    const START: (&str, &str) = ("messageStart", r#"{"role":"assistant"}"#);
    const DELTA: (&str, &str) = (
        "contentBlockDelta",
        r#"{"contentBlockIndex":0,"delta":{"text":"Hello"}}"#,
    );
    const BLOCK_STOP: (&str, &str) = ("contentBlockStop", r#"{"contentBlockIndex":0}"#);
    const STOP: (&str, &str) = ("messageStop", r#"{"stopReason":"end_turn"}"#);
    const METADATA: (&str, &str) = (
        "metadata",
        r#"{"usage":{"inputTokens":3,"outputTokens":1,"totalTokens":4},"metrics":{"latencyMs":12}}"#,
    );

    assert!(finish_after(&[]).is_err(), "an empty stream");
    assert!(finish_after(&[START]).is_err(), "messageStart alone");
    assert!(
        finish_after(&[START, STOP]).is_err(),
        "messageStart and messageStop without metadata"
    );
    assert!(
        finish_after(&[START, DELTA, BLOCK_STOP, STOP]).is_err(),
        "an answer and messageStop without metadata"
    );
    assert!(
        finish_after(&[START, METADATA]).is_err(),
        "metadata without messageStop"
    );
    assert!(
        finish_after(&[START, DELTA, BLOCK_STOP, METADATA]).is_err(),
        "an answer and metadata without messageStop"
    );

    finish_after(&[START, STOP, METADATA]).unwrap();
    finish_after(&[START, DELTA, BLOCK_STOP, STOP, METADATA]).unwrap();
}

/// Every stream cut short, at every byte, is an error: it never ends as a short answer.
#[test]
fn every_stream_cut_short_is_an_error() {
    for transcript in TRANSCRIPTS {
        let bytes = framed(transcript);
        for cut in 0..bytes.len() {
            let (_, end) = decode_split(&bytes[..cut], &[]);
            assert!(end.is_err(), "cut at {cut} of {} ended well", bytes.len());
        }
    }
}

/// Every Converse answer cut anywhere short of its end is an error.
#[test]
fn every_answer_cut_short_is_an_error() {
    for body in BODIES {
        assert!(decode_response(body.as_bytes()).is_ok());
        for cut in 0..body.trim_end().len() {
            assert!(
                decode_response(&body.as_bytes()[..cut]).is_err(),
                "{body:.60} cut at {cut} was an answer"
            );
        }
    }
}
