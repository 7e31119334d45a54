//! Property tests in place of a cargo-fuzz target: random bytes, random splits and mutated
//! transcripts fed through every provider's stream and response decoders. Whatever arrives,
//! the result is chunks and at most one error, the stream ends, and nothing panics; a line
//! or event over the limit is an error, not a growing buffer.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Piece, Reply, call, drain, mock, split};
use proptest::prelude::*;
use std::collections::VecDeque;

use tower_llm_providers::{
    Anthropic, ChatChunk, ChatRequest, ChunkDecoder, Gemini, Message, OpenAi,
};

const TRANSCRIPTS: [&str; 5] = [
    include_str!("fixtures/openai_stream.sse"),
    include_str!("fixtures/openai_stream_refusal.sse"),
    include_str!("fixtures/openai_stream_tools.sse"),
    include_str!("fixtures/anthropic_stream.sse"),
    include_str!("fixtures/gemini_stream.sse"),
];

const BODIES: [&str; 6] = [
    include_str!("fixtures/openai_chat.json"),
    include_str!("fixtures/openai_refusal.json"),
    include_str!("fixtures/openai_tool_call.json"),
    include_str!("fixtures/anthropic_message.json"),
    include_str!("fixtures/gemini_generate.json"),
    include_str!("fixtures/gemini_quota.json"),
];

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

fn check_bodies(status: u16, body: &[u8]) -> Result<(), TestCaseError> {
    runtime().block_on(async {
        let reply = Reply {
            status,
            headers: vec![],
            pieces: vec![Piece::Data(bytes::Bytes::copy_from_slice(body))],
        };
        let (client, _) = mock(reply.clone());
        let mut openai = OpenAi::builder().api_key("k").build_with(client).unwrap();
        let a = call(&mut openai, request()).await;
        let (client, _) = mock(reply.clone());
        let mut anthropic = Anthropic::builder()
            .api_key("k")
            .build_with(client)
            .unwrap();
        let b = call(&mut anthropic, request()).await;
        let (client, _) = mock(reply);
        let mut gemini = Gemini::builder().api_key("k").build_with(client).unwrap();
        let c = call(&mut gemini, request()).await;
        if status >= 400 {
            prop_assert!(a.is_err() && b.is_err() && c.is_err());
            for error in [a.unwrap_err(), b.unwrap_err(), c.unwrap_err()] {
                prop_assert!(
                    error
                        .body()
                        .is_none_or(|b| b.len() <= tower_llm_core::MAX_ERROR_BODY)
                );
            }
        }
        Ok(())
    })
}

/// The transcripts' decoders, in the order of `TRANSCRIPTS`.
fn decoder_for(which: usize) -> ChunkDecoder {
    match which {
        0..=2 => ChunkDecoder::openai(),
        3 => ChunkDecoder::anthropic(),
        _ => ChunkDecoder::gemini(),
    }
}

/// Feeds `bytes` cut at `cuts` through a decoder, then finishes it.
fn decode_split(
    mut decoder: ChunkDecoder,
    bytes: &[u8],
    cuts: &[usize],
) -> (Vec<ChatChunk>, Result<(), tower_llm_core::UpstreamError>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn valid_transcripts_decode_the_same_at_any_split(
        which in 0usize..TRANSCRIPTS.len(),
        cuts in proptest::collection::vec(0usize..4096, 0..16),
    ) {
        let bytes = TRANSCRIPTS[which].as_bytes();
        let (whole, end) = decode_split(decoder_for(which), bytes, &[]);
        prop_assert!(end.is_ok(), "{end:?}");
        prop_assert!(!whole.is_empty());
        let (split, end) = decode_split(decoder_for(which), bytes, &cuts);
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
        let terminal: &[u8] = match which {
            0 | 1 => b"[DONE]",
            2 => b"message_stop",
            _ => b"finishReason",
        };
        let complete = bytes.windows(terminal.len()).any(|w| w == terminal);
        let (_, end) = decode_split(decoder_for(which), &bytes, &cuts);
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
        flips in proptest::collection::vec((0usize..4096, any::<u8>()), 0..6),
        truncate in proptest::option::of(0usize..4096),
        cuts in proptest::collection::vec(0usize..4096, 0..10),
    ) {
        let mut bytes = TRANSCRIPTS[which].as_bytes().to_vec();
        for (at, byte) in flips {
            let len = bytes.len();
            bytes[at % len] = byte;
        }
        if let Some(at) = truncate {
            bytes.truncate(at.min(bytes.len()));
        }
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
        let mut bytes = BODIES[which].as_bytes().to_vec();
        for (at, byte) in flips {
            let len = bytes.len();
            bytes[at % len] = byte;
        }
        if let Some(at) = truncate {
            bytes.truncate(at.min(bytes.len()));
        }
        check_bodies(status, &bytes)?;
        check_bodies(status, &noise)?;
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
