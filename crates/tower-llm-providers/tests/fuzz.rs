//! Property tests in place of a cargo-fuzz target: random bytes, random splits and mutated
//! transcripts fed through every provider's stream and response decoders, the embeddings
//! decoder and the NDJSON framing. Whatever arrives, the result is chunks and at most one
//! error, the stream ends, and nothing panics; a line or event over the limit is an error,
//! not a growing buffer; and nothing that is not a whole answer ends as one (no silent
//! success). Bedrock's decoders have the same tests in `fuzz_bedrock.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Piece, Reply, call, drain, mock};
use proptest::prelude::*;
use std::collections::VecDeque;

use tower_llm_providers::framing::{Framing, NdjsonFraming};
use tower_llm_providers::{
    Anthropic, ChatChunk, ChatRequest, ChunkDecoder, EmbeddingRequest, Gemini, Message, OpenAi,
    anthropic, gemini, openai,
};

/// A stream dialect: its decoder, and the bytes without which none of its streams is
/// complete (its terminal event's marker). Both come from here, so that a transcript's
/// decoder and terminal cannot disagree.
struct StreamDialect {
    decoder: fn() -> ChunkDecoder,
    terminal: &'static [u8],
}

const OPENAI_STREAM: StreamDialect = StreamDialect {
    decoder: ChunkDecoder::openai,
    terminal: b"[DONE]",
};

const ANTHROPIC_STREAM: StreamDialect = StreamDialect {
    decoder: ChunkDecoder::anthropic,
    terminal: b"message_stop",
};

/// Gemini ends a stream with the body, once a candidate has had a finish reason.
const GEMINI_STREAM: StreamDialect = StreamDialect {
    decoder: ChunkDecoder::gemini,
    terminal: b"finishReason",
};

const TRANSCRIPTS: [(&str, StreamDialect); 8] = [
    (include_str!("fixtures/openai_stream.sse"), OPENAI_STREAM),
    (
        include_str!("fixtures/openai_stream_refusal.sse"),
        OPENAI_STREAM,
    ),
    (
        include_str!("fixtures/openai_stream_tools.sse"),
        OPENAI_STREAM,
    ),
    (
        include_str!("fixtures/openai_stream_parallel_tools.sse"),
        OPENAI_STREAM,
    ),
    (
        include_str!("fixtures/anthropic_stream.sse"),
        ANTHROPIC_STREAM,
    ),
    (
        include_str!("fixtures/anthropic_stream_parallel_tool_use.sse"),
        ANTHROPIC_STREAM,
    ),
    (include_str!("fixtures/gemini_stream.sse"), GEMINI_STREAM),
    (
        include_str!("fixtures/gemini_stream_parallel_function_calls.sse"),
        GEMINI_STREAM,
    ),
];

const BODIES: [&str; 9] = [
    include_str!("fixtures/openai_chat.json"),
    include_str!("fixtures/openai_refusal.json"),
    include_str!("fixtures/openai_tool_call.json"),
    include_str!("fixtures/openai_parallel_tool_calls.json"),
    include_str!("fixtures/anthropic_message.json"),
    include_str!("fixtures/anthropic_parallel_tool_use.json"),
    include_str!("fixtures/gemini_generate.json"),
    include_str!("fixtures/gemini_parallel_function_calls.json"),
    include_str!("fixtures/gemini_quota.json"),
];

const EMBEDDINGS: &str = include_str!("fixtures/openai_embeddings.json");

/// Where each decoder finds its answer: a 2xx body it accepts must at least be JSON with
/// something at this pointer (OpenAI's first choice, Anthropic's content, Gemini's first
/// candidate, the embeddings' data).
const OPENAI_ANSWER: &str = "/choices/0";
const ANTHROPIC_ANSWER: &str = "/content";
const GEMINI_ANSWER: &str = "/candidates/0";
const EMBEDDINGS_ANSWER: &str = "/data";

const MAX_EVENT: usize = 512;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn request() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

fn embedding_request() -> EmbeddingRequest {
    EmbeddingRequest::new("m", vec!["a".into(), "b".into()])
}

/// Whether `body` is JSON with a value at `pointer`: what any body a decoder accepts as an
/// answer must be. Random, cut or garbled bytes are not.
/// Whether `body` is JSON with something at `pointer`. Bytes that are not UTF-8 are read as
/// U+FFFD: the decoders skip the fields they do not read without checking their strings (as
/// serde does), so a bad byte in an ignored field leaves an answer an answer.
fn answer_shaped(body: &[u8], pointer: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(&String::from_utf8_lossy(body))
        .is_ok_and(|v| v.pointer(pointer).is_some())
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

/// Streams `pieces` through each provider; checks the shape of what comes out.
fn check_streams(pieces: Vec<Piece>) -> Result<(), TestCaseError> {
    runtime().block_on(async {
        for provider in 0..3 {
            let (client, _) = mock(Reply::sse(pieces.clone()));
            let items = match provider {
                0 => {
                    let mut s = OpenAi::builder()
                        .api_key("k")
                        .max_event_bytes(MAX_EVENT)
                        .build_with(client)
                        .unwrap();
                    drain(call(&mut s, request().streaming()).await.unwrap()).await
                }
                1 => {
                    let mut s = Anthropic::builder()
                        .api_key("k")
                        .max_event_bytes(MAX_EVENT)
                        .build_with(client)
                        .unwrap();
                    drain(call(&mut s, request().streaming()).await.unwrap()).await
                }
                _ => {
                    let mut s = Gemini::builder()
                        .api_key("k")
                        .max_event_bytes(MAX_EVENT)
                        .build_with(client)
                        .unwrap();
                    drain(call(&mut s, request().streaming()).await.unwrap()).await
                }
            };
            let errors = items.iter().filter(|i| i.is_err()).count();
            prop_assert!(errors <= 1, "at most one error: {items:?}");
            if errors == 1 {
                prop_assert!(items.last().unwrap().is_err(), "the error is the last item");
            }
            for item in items.iter().flatten() {
                if let tower_llm_providers::ChatChunk::Content(text) = item {
                    prop_assert!(text.len() <= 3 * MAX_EVENT);
                }
            }
        }
        Ok(())
    })
}

/// Answers a chat call of each provider, and an embeddings call, with `body` at `status`.
/// An error status is always an error with a bounded body; a success is an answer only when
/// the body is one (no silent success).
fn check_bodies(status: u16, body: &[u8]) -> Result<(), TestCaseError> {
    runtime().block_on(async {
        let reply = Reply {
            status,
            headers: vec![],
            pieces: vec![Piece::Data(bytes::Bytes::copy_from_slice(body))],
        };
        let (client, _) = mock(reply.clone());
        let mut openai = OpenAi::builder().api_key("k").build_with(client).unwrap();
        let a = call(&mut openai, request()).await.map(drop);
        let embeddings = call(&mut openai, embedding_request()).await.map(drop);
        let (client, _) = mock(reply.clone());
        let mut anthropic = Anthropic::builder()
            .api_key("k")
            .build_with(client)
            .unwrap();
        let b = call(&mut anthropic, request()).await.map(drop);
        let (client, _) = mock(reply);
        let mut gemini = Gemini::builder().api_key("k").build_with(client).unwrap();
        let c = call(&mut gemini, request()).await.map(drop);
        let outcomes = [
            ("openai", OPENAI_ANSWER, a),
            ("anthropic", ANTHROPIC_ANSWER, b),
            ("gemini", GEMINI_ANSWER, c),
            ("embeddings", EMBEDDINGS_ANSWER, embeddings),
        ];
        for (decoder, pointer, outcome) in outcomes {
            match outcome {
                Ok(()) => {
                    prop_assert!(status < 400, "{decoder}: status {status} was an answer");
                    prop_assert!(
                        answer_shaped(body, pointer),
                        "{decoder}: a body without {pointer} was an answer: {:?}",
                        String::from_utf8_lossy(body)
                    );
                }
                Err(error) => prop_assert!(
                    error
                        .body()
                        .is_none_or(|b| b.len() <= tower_llm_core::MAX_ERROR_BODY)
                ),
            }
        }
        Ok(())
    })
}

/// Feeds `bytes` cut at `cuts` through a decoder, then finishes it.
fn decode_split(
    mut decoder: ChunkDecoder,
    bytes: &[u8],
    cuts: &[usize],
) -> (Vec<ChatChunk>, Result<(), tower_llm_core::UpstreamError>) {
    let mut cuts = within(bytes.len(), cuts);
    cuts.sort_unstable();
    let mut chunks = VecDeque::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        if let Err(error) = decoder.feed(&bytes[start..cut], &mut chunks) {
            return (chunks.into(), Err(error));
        }
        start = cut;
    }
    let end = decoder.finish(&mut chunks);
    (chunks.into(), end)
}

/// The events (their data) NDJSON framing cuts out of `bytes` delivered at `cuts`, and
/// whether it failed; checks its bounds on the way.
fn ndjson_events(
    bytes: &[u8],
    cuts: &[usize],
    max: usize,
) -> Result<(Vec<String>, bool), TestCaseError> {
    let mut framing = NdjsonFraming::new(max);
    let mut events = Vec::new();
    for piece in split(bytes, cuts) {
        let Piece::Data(piece) = piece else {
            unreachable!("split makes data pieces")
        };
        let mut input = &piece[..];
        loop {
            match framing.next_event(&mut input) {
                Ok(Some(event)) => {
                    prop_assert!(event.name.is_none() && !event.error);
                    events.push(event.data);
                }
                Ok(None) => break,
                Err(_) => return Ok((events, true)),
            }
            prop_assert!(framing.buffered() <= max);
        }
        prop_assert!(input.is_empty(), "a piece was left unread");
        prop_assert!(framing.buffered() <= max);
    }
    match framing.finish() {
        Ok(last) => events.extend(last.map(|e| e.data)),
        Err(_) => return Ok((events, true)),
    }
    Ok((events, false))
}

/// NDJSON by its definition: lines cut at `\n`, one `\r` before it dropped, blank lines
/// skipped; a line over `max` bytes, or not UTF-8, fails the stream where it stands.
fn ndjson_reference(bytes: &[u8], max: usize) -> (Vec<String>, bool) {
    let mut events = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        if line.len() > max {
            return (events, true);
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match std::str::from_utf8(line) {
            Ok(text) => events.push(text.to_owned()),
            Err(_) => return (events, true),
        }
    }
    (events, false)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn valid_transcripts_decode_the_same_at_any_split(
        which in 0usize..TRANSCRIPTS.len(),
        cuts in proptest::collection::vec(0usize..8192, 0..16),
    ) {
        let (transcript, dialect) = &TRANSCRIPTS[which];
        let bytes = transcript.as_bytes();
        let (whole, end) = decode_split((dialect.decoder)(), bytes, &[]);
        prop_assert!(end.is_ok(), "{end:?}");
        prop_assert!(!whole.is_empty());
        let (split, end) = decode_split((dialect.decoder)(), bytes, &cuts);
        prop_assert!(end.is_ok(), "{end:?}");
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn random_bytes_never_end_as_a_success(
        which in 0usize..TRANSCRIPTS.len(),
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(0usize..2048, 0..10),
    ) {
        // Only a stream holding its dialect's terminal event may end well.
        let dialect = &TRANSCRIPTS[which].1;
        let complete = bytes
            .windows(dialect.terminal.len())
            .any(|w| w == dialect.terminal);
        let (_, end) = decode_split((dialect.decoder)(), &bytes, &cuts);
        prop_assert!(complete || end.is_err(), "random bytes ended as a success");
    }

    #[test]
    fn random_bytes_at_random_splits(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(0usize..2048, 0..10),
    ) {
        check_streams(split(&bytes, &cuts))?;
    }

    #[test]
    fn sse_shaped_noise(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("data: [DONE]".to_owned()),
                Just("event: message_stop".to_owned()),
                Just("event: error".to_owned()),
                Just(": keep-alive".to_owned()),
                Just(String::new()),
                "data: \\{[a-z\":,0-9\\[\\] ]{0,40}\\}",
                "[a-z:]{0,12}",
                "data: .{0,600}",
            ],
            0..30,
        ),
        crlf in any::<bool>(),
        cuts in proptest::collection::vec(0usize..4096, 0..10),
    ) {
        let joined = lines.join(if crlf { "\r\n" } else { "\n" });
        check_streams(split(joined.as_bytes(), &cuts))?;
    }

    #[test]
    fn mutated_transcripts(
        which in 0usize..TRANSCRIPTS.len(),
        flips in proptest::collection::vec((0usize..8192, any::<u8>()), 0..6),
        truncate in proptest::option::of(0usize..8192),
        cuts in proptest::collection::vec(0usize..8192, 0..10),
    ) {
        let bytes = mutate(TRANSCRIPTS[which].0.as_bytes(), &flips, truncate);
        check_streams(split(&bytes, &cuts))?;
    }

    #[test]
    fn random_and_mutated_response_bodies(
        which in 0usize..BODIES.len(),
        flips in proptest::collection::vec((0usize..4096, any::<u8>()), 0..6),
        truncate in proptest::option::of(0usize..4096),
        noise in proptest::collection::vec(any::<u8>(), 0..512),
        status in prop_oneof![Just(200u16), Just(400u16), Just(429u16), Just(500u16), Just(529u16)],
    ) {
        check_bodies(status, &mutate(BODIES[which].as_bytes(), &flips, truncate))?;
        check_bodies(status, &noise)?;
    }

    #[test]
    fn random_and_mutated_embedding_bodies(
        flips in proptest::collection::vec((0usize..1024, any::<u8>()), 0..6),
        truncate in proptest::option::of(0usize..1024),
        status in prop_oneof![Just(200u16), Just(400u16), Just(429u16), Just(500u16)],
    ) {
        check_bodies(status, &mutate(EMBEDDINGS.as_bytes(), &flips, truncate))?;
    }

    #[test]
    fn ndjson_framing_is_its_definition_at_any_split(
        bytes in proptest::collection::vec(
            prop_oneof![
                // Mostly lines of text, \r\n and blank lines among them, now and then a
                // byte that is not UTF-8 (or a character cut in two by a split).
                40 => proptest::sample::select(b"\n\r {}\":,az\t".to_vec()),
                1 => proptest::sample::select(vec![0xc3u8, 0xa9, 0xff, 0x80, 0x0b]),
                1 => any::<u8>(),
            ],
            0..512,
        ),
        cuts in proptest::collection::vec(0usize..512, 0..12),
        max in 1usize..24,
    ) {
        let expected = ndjson_reference(&bytes, max);
        prop_assert_eq!(ndjson_events(&bytes, &[], max)?, expected.clone());
        prop_assert_eq!(ndjson_events(&bytes, &cuts, max)?, expected);
    }

    #[test]
    fn ndjson_documents_come_out_whole_at_any_split(
        documents in proptest::collection::vec("\\{\"[a-z]{1,8}\":[0-9]{1,5}\\}", 0..20),
        crlf in any::<bool>(),
        blank_lines in any::<bool>(),
        cuts in proptest::collection::vec(0usize..1024, 0..12),
    ) {
        let separator = match (crlf, blank_lines) {
            (false, false) => "\n",
            (true, false) => "\r\n",
            (false, true) => "\n \n\n",
            (true, true) => "\r\n\r\n",
        };
        let body = documents.join(separator);
        let (events, failed) = ndjson_events(body.as_bytes(), &cuts, 64)?;
        prop_assert!(!failed);
        prop_assert_eq!(events, documents);
    }
}

#[test]
fn an_endless_line_is_refused_not_buffered() {
    let endless: Vec<Piece> = (0..64)
        .map(|_| Piece::Data(bytes::Bytes::from(vec![b'x'; 256])))
        .collect();
    runtime().block_on(async {
        let (client, _) = mock(Reply::sse(endless));
        let mut s = OpenAi::builder()
            .api_key("k")
            .max_event_bytes(1024)
            .build_with(client)
            .unwrap();
        let items = drain(call(&mut s, request().streaming()).await.unwrap()).await;
        assert_eq!(items.len(), 1);
        let error = items[0].as_ref().unwrap_err();
        assert!(
            error.message().contains("larger than 1024 bytes"),
            "{error}"
        );
    });
}

/// Every transcript cut short of its terminal event, at every byte, is an error: a stream
/// that stops early is never a short answer. That holds inside the terminal event too, up
/// to the last byte of its line: `data: [DON`, Anthropic's `{"type":"message_st`, Gemini's
/// final JSON without its closing brace.
#[test]
fn every_transcript_cut_before_its_terminal_is_an_error() {
    for (transcript, dialect) in &TRANSCRIPTS {
        let bytes = transcript.as_bytes();
        let terminal = bytes
            .windows(dialect.terminal.len())
            .rposition(|w| w == dialect.terminal)
            .unwrap();
        // The end of the terminal event's line, before its `\r` or `\n`.
        let line_end = terminal
            + bytes[terminal..]
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap();
        assert!(line_end >= terminal + dialect.terminal.len());
        for cut in 0..line_end {
            let (_, end) = decode_split((dialect.decoder)(), &bytes[..cut], &[]);
            let at = String::from_utf8_lossy(&bytes[cut.saturating_sub(20)..cut]);
            assert!(
                end.is_err(),
                "cut at {cut} (after {at:?}) of {transcript:.60} ended well"
            );
        }
        // The boundary is tight: from the whole line on, the stream ends well (a last line
        // without its line break is still read).
        for cut in line_end..=bytes.len() {
            let (_, end) = decode_split((dialect.decoder)(), &bytes[..cut], &[]);
            assert!(end.is_ok(), "cut at {cut} of {transcript:.60}: {end:?}");
        }
    }
}

/// Every answer body cut anywhere short of its end is an error for every decoder, and a
/// whole body is an answer only for its own dialect.
#[test]
fn cut_and_misrouted_bodies_are_never_answers() {
    type Decode =
        fn(&[u8]) -> Result<tower_llm_providers::ChatResponse, tower_llm_core::UpstreamError>;
    let decoders: [(&str, Decode, &str); 3] = [
        ("openai", openai::decode_response, OPENAI_ANSWER),
        ("anthropic", anthropic::decode_response, ANTHROPIC_ANSWER),
        ("gemini", gemini::decode_response, GEMINI_ANSWER),
    ];
    for body in BODIES {
        let whole = body.trim_end().len();
        for (name, decode, pointer) in decoders {
            for cut in 0..whole {
                assert!(
                    decode(&body.as_bytes()[..cut]).is_err(),
                    "{name}: {body:.60} cut at {cut} was an answer"
                );
            }
            assert_eq!(
                decode(body.as_bytes()).is_ok(),
                answer_shaped(body.as_bytes(), pointer),
                "{name}: {body:.60}"
            );
        }
    }
}

#[test]
fn cut_embedding_bodies_are_never_answers() {
    runtime().block_on(async {
        let whole = EMBEDDINGS.trim_end().len();
        for cut in 0..=whole {
            let (client, _) = mock(Reply::json(200, &EMBEDDINGS[..cut]));
            let mut openai = OpenAi::builder().api_key("k").build_with(client).unwrap();
            let answer = call(&mut openai, embedding_request()).await;
            if cut == whole {
                assert_eq!(answer.unwrap().embeddings.len(), 2);
            } else {
                assert!(answer.is_err(), "cut at {cut} was an answer");
            }
        }
    });
}
