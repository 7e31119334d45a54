//! Memory held while decoding hostile Bedrock event streams, measured by a counting global
//! allocator (the twin of `sse_memory.rs` for the binary framing).
//!
//! Each input is 1 MiB of event-stream bytes, cut into pieces of random size (1 byte to
//! 64 KiB), fed to the framing decoder and the ConverseStream decoder as a network would, the
//! chunks consumed as they come. Whatever the input, the peak of live heap bytes must stay
//! within a small multiple of the decoder's `max_message_bytes`: a decoder that buffered a
//! whole read, allocated what a prelude announces, or kept state per message would hold many
//! times that.
//!
//! One test function runs every case in turn: the allocator counts the whole process, so no
//! other test may run beside it.

#![cfg(feature = "bedrock")]
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use bytes::Bytes;
use peak_alloc::PeakAlloc;
use tower_llm_providers::bedrock::eventstream::EventStreamDecoder;
use tower_llm_providers::bedrock::wire::ConverseStreamDecoder;
use tower_llm_testkit::event_stream_message;

/// Counts the live heap bytes of this test binary, and their peak.
#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

const LIMIT: usize = 64 * 1024;
const INPUT: usize = 1024 * 1024;
/// What the decoders may hold beyond the input itself: one message (up to the limit), its
/// payload's chunks, the list of started blocks (bounded by the decoder's block limit), and
/// slack for the allocator's own rounding.
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

fn event(event_type: &str, payload: &str) -> Bytes {
    event_stream_message(
        &[(":event-type", event_type), (":message-type", "event")],
        payload.as_bytes(),
    )
}

/// `head`, then units from `unit` (given the unit's number) up to 1 MiB, cut into random
/// pieces that share one buffer.
fn pieces(head: &[u8], unit: impl Fn(usize) -> Bytes, seed: u64) -> Vec<Bytes> {
    let mut bytes = Vec::with_capacity(INPUT + LIMIT);
    bytes.extend_from_slice(head);
    let mut n = 0;
    while bytes.len() < INPUT {
        bytes.extend_from_slice(&unit(n));
        n += 1;
    }
    let all = Bytes::from(bytes);
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

/// A prelude announcing `total` bytes, with a valid CRC.
fn prelude(total: u32) -> Vec<u8> {
    let mut out = total.to_be_bytes().to_vec();
    out.extend_from_slice(&0u32.to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

type Case = (&'static str, Vec<u8>, Box<dyn Fn(usize) -> Bytes>);

fn cases() -> Vec<Case> {
    let start = event("messageStart", r#"{"role":"assistant"}"#).to_vec();
    let big_text = "x".repeat(LIMIT - 200);
    vec![
        // Endless tiny deltas of one block: nothing may pile up per message.
        (
            "endless tiny deltas",
            start.clone(),
            Box::new(|_| {
                event(
                    "contentBlockDelta",
                    r#"{"contentBlockIndex":0,"delta":{"text":"x"}}"#,
                )
            }),
        ),
        // Each delta a new block: the started-block list grows to its limit, then the
        // stream is refused.
        (
            "a new block per delta",
            start.clone(),
            Box::new(|n| {
                event(
                    "contentBlockDelta",
                    &format!(r#"{{"contentBlockIndex":{n},"delta":{{"text":"x"}}}}"#),
                )
            }),
        ),
        // Messages just under the limit, back to back.
        (
            "messages just under the limit",
            start.clone(),
            Box::new(move |_| {
                event(
                    "contentBlockDelta",
                    &format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"{big_text}"}}}}"#),
                )
            }),
        ),
        // A prelude announcing 4 GiB: refused before anything is allocated for it.
        (
            "a 4 GiB prelude",
            [start.clone(), prelude(u32::MAX)].concat(),
            Box::new(|_| Bytes::from_static(&[0xAB; 4096])),
        ),
        // A prelude announcing just the limit, then the message never finishes.
        (
            "an unfinished message at the limit",
            [start, prelude(LIMIT as u32)].concat(),
            Box::new(|_| Bytes::from_static(&[0x00; 4096])),
        ),
        // Noise.
        (
            "noise",
            Vec::new(),
            Box::new(|n| {
                let mut rng = Rng(n as u64 + 7);
                Bytes::from((0..4096).map(|_| rng.next() as u8).collect::<Vec<u8>>())
            }),
        ),
    ]
}

/// Decodes `frames` as a stream would; the peak heap bytes held beyond the input, the
/// chunks handed on, and whether it ended in an error.
fn peak(frames: &[Bytes]) -> (usize, usize, bool) {
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let mut decoder = EventStreamDecoder::with_max_message_bytes(LIMIT);
    let mut events = ConverseStreamDecoder::default();
    let mut chunks = VecDeque::new();
    let mut handed_on = 0;
    let mut failed = false;
    'read: for frame in frames {
        let mut input = &frame[..];
        loop {
            match decoder.next_message(&mut input) {
                Ok(Some(message)) => {
                    if events.message(&message, &mut chunks).is_err() {
                        failed = true;
                        break 'read;
                    }
                    handed_on += chunks.len();
                    chunks.clear();
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'read;
                }
            }
        }
    }
    if !failed {
        failed = decoder.finish().is_err() || events.finish().is_err();
    }
    drop((decoder, events, chunks));
    (ALLOCATOR.peak_usage() - before, handed_on, failed)
}

#[test]
fn hostile_event_streams_hold_a_small_multiple_of_the_limit() {
    let mut report = Vec::new();
    for (seed, (name, head, unit)) in cases().into_iter().enumerate() {
        let seed = 0x9E37_79B9_7F4A_7C15 ^ (seed as u64 + 1);
        let frames = pieces(&head, unit, seed);
        let (held, chunks, failed) = peak(&frames);
        report.push(format!(
            "{name}: peak {held} B, {chunks} chunks, failed {failed}"
        ));
        assert!(held <= BOUND, "{name}: the decoders held {held} bytes");
        // None of these inputs is a complete answer: each must end as an error.
        assert!(failed, "{name}: ended without an error");
    }
    println!("{}", report.join("\n"));
}
