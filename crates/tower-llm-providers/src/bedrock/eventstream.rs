//! An incremental decoder of the AWS event-stream framing
//! (`application/vnd.amazon.eventstream`), which Bedrock's `ConverseStream` answers in.
//!
//! Each message is binary: a 12-byte prelude (total length, headers length, both big-endian
//! `u32`, and the CRC32 of those 8 bytes), the headers (name length `u8`, name, value type
//! `u8`, value), the payload, and the CRC32 of everything before it. The headers say what the
//! message is: `:message-type` is `event` (with `:event-type`), `exception` (with
//! `:exception-type`) or `error` (with `:error-code` and `:error-message`).
//!
//! Bytes arrive in whatever pieces the network cuts them into. The decoder keeps at most one
//! message: it reads the prelude first, refuses a message announced larger than its limit
//! before buffering (or allocating) any of it, and copies from each piece only the bytes the
//! current message still needs, so the rest of a network read stays with the caller until
//! the message before it has been handed on. A bad CRC, an impossible length, a header that
//! does not parse, a message without its type headers, or a body that ends inside a message
//! ([`finish`](EventStreamDecoder::finish)) is an error, never a panic.
//!
//! `aws-smithy-eventstream` has a frame decoder too, but it decodes from a buffer the caller
//! fills without bound and has no configurable limit, which is what this one adds.
//!
//! # Example
//!
//! ```
//! use tower_llm_providers::bedrock::eventstream::{EventStreamDecoder, MessageType};
//!
//! // A `messageStop` event as Bedrock frames it.
//! let frame: Vec<u8> = [
//!     &[0, 0, 0, 89, 0, 0, 0, 48][..], // total and headers lengths
//!     &[0x76, 0xf8, 0x42, 0x7f],       // their CRC32
//!     b"\x0b:event-type\x07\x00\x0bmessageStop\x0d:message-type\x07\x00\x05event",
//!     br#"{"stopReason":"end_turn"}"#,
//!     &[0x46, 0xf7, 0x49, 0xbc], // the CRC32 of all the above
//! ]
//! .concat();
//! let mut decoder = EventStreamDecoder::new();
//! // Split anywhere: the first piece completes nothing.
//! let (first, second) = frame.split_at(50);
//! let mut input = first;
//! assert_eq!(decoder.next_message(&mut input).unwrap(), None);
//! let mut input = second;
//! let message = decoder.next_message(&mut input).unwrap().unwrap();
//! assert_eq!(message.message_type, MessageType::Event);
//! assert_eq!(message.kind, "messageStop");
//! assert_eq!(&message.payload[..], br#"{"stopReason":"end_turn"}"#);
//! assert!(decoder.finish().is_ok());
//! ```

use std::fmt;

use bytes::{Bytes, BytesMut};

/// The default limit on one message, in bytes (prelude, headers, payload and CRC).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The prelude: total length, headers length, their CRC32.
const PRELUDE: usize = 12;
/// The message CRC32 at the end.
const TRAILER: usize = 4;

/// What a message is, by its `:message-type` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `event`: a piece of the answer, named by `:event-type`.
    Event,
    /// `exception`: a modelled failure, named by `:exception-type` (Bedrock:
    /// `throttlingException`, `modelStreamErrorException`, ...), with a JSON payload.
    Exception,
    /// `error`: an unmodelled failure, with `:error-code` and `:error-message` headers.
    Error,
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMessage {
    /// What it is.
    pub message_type: MessageType,
    /// Its name: the `:event-type` of an event, the `:exception-type` of an exception, the
    /// `:error-code` of an error.
    pub kind: String,
    /// An error's `:error-message` header (`None` for events and exceptions).
    pub error_message: Option<String>,
    /// The payload (JSON for Bedrock's events and exceptions).
    pub payload: Bytes,
}

/// Why the bytes are not a valid event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventStreamError {
    /// A prelude announced a message larger than the decoder's limit.
    TooLarge {
        /// The announced total length.
        announced: u64,
        /// The limit.
        limit: usize,
    },
    /// The prelude's lengths cannot describe a message (shorter than a prelude and CRC, or
    /// headers longer than the message).
    BadLength {
        /// The announced total length.
        total: u32,
        /// The announced headers length.
        headers: u32,
    },
    /// The prelude's CRC32 does not match its lengths.
    PreludeChecksum {
        /// The CRC32 in the prelude.
        expected: u32,
        /// The CRC32 of the lengths.
        computed: u32,
    },
    /// The message's CRC32 does not match its bytes.
    MessageChecksum {
        /// The CRC32 at the end of the message.
        expected: u32,
        /// The CRC32 of the message's bytes.
        computed: u32,
    },
    /// A header does not parse.
    BadHeader(&'static str),
    /// A header the message needs is missing (or has an unknown value).
    MissingHeader(&'static str),
    /// The stream ended inside a message, with this many bytes of it read.
    Truncated {
        /// The bytes of the unfinished message that were read.
        buffered: usize,
    },
}

impl fmt::Display for EventStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventStreamError::TooLarge { announced, limit } => write!(
                f,
                "event-stream message of {announced} bytes is larger than the limit of {limit} bytes"
            ),
            EventStreamError::BadLength { total, headers } => write!(
                f,
                "event-stream prelude has impossible lengths (total {total}, headers {headers})"
            ),
            EventStreamError::PreludeChecksum { expected, computed } => write!(
                f,
                "event-stream prelude CRC32 mismatch (sent {expected:#010x}, computed {computed:#010x})"
            ),
            EventStreamError::MessageChecksum { expected, computed } => write!(
                f,
                "event-stream message CRC32 mismatch (sent {expected:#010x}, computed {computed:#010x})"
            ),
            EventStreamError::BadHeader(what) => write!(f, "event-stream header: {what}"),
            EventStreamError::MissingHeader(name) => {
                write!(f, "event-stream message without a valid `{name}` header")
            }
            EventStreamError::Truncated { buffered } => write!(
                f,
                "event stream ended inside a message ({buffered} bytes of it read)"
            ),
        }
    }
}

impl std::error::Error for EventStreamError {}

/// The incremental decoder. See the [module docs](self).
#[derive(Debug)]
pub struct EventStreamDecoder {
    /// The current message's bytes so far (at most one message).
    buffer: BytesMut,
    /// The current message's total length, once its prelude has been read and checked.
    total: Option<usize>,
    max_message_bytes: usize,
}

impl Default for EventStreamDecoder {
    fn default() -> Self {
        EventStreamDecoder::new()
    }
}

impl EventStreamDecoder {
    /// A decoder with the [default limit](DEFAULT_MAX_MESSAGE_BYTES).
    pub fn new() -> Self {
        EventStreamDecoder::with_max_message_bytes(DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// A decoder refusing messages over `max_message_bytes` (at least the 16 bytes of an
    /// empty message are always allowed).
    pub fn with_max_message_bytes(max_message_bytes: usize) -> Self {
        EventStreamDecoder {
            buffer: BytesMut::new(),
            total: None,
            max_message_bytes: max_message_bytes.max(PRELUDE + TRAILER),
        }
    }

    /// Bytes held for the message not yet complete.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Takes from `input` the bytes of the next message and returns it once complete,
    /// leaving the bytes after it in `input`; `None` once all of `input` has been taken in
    /// without completing a message (its part is kept for the next call).
    pub fn next_message(
        &mut self,
        input: &mut &[u8],
    ) -> Result<Option<EventMessage>, EventStreamError> {
        let total = match self.total {
            Some(total) => total,
            None => {
                take(&mut self.buffer, input, PRELUDE);
                if self.buffer.len() < PRELUDE {
                    return Ok(None);
                }
                let total = self.check_prelude()?;
                self.buffer.reserve(total - PRELUDE);
                self.total = Some(total);
                total
            }
        };
        take(&mut self.buffer, input, total);
        if self.buffer.len() < total {
            return Ok(None);
        }
        self.total = None;
        let message = std::mem::take(&mut self.buffer).freeze();
        decode_message(message).map(Some)
    }

    /// Ends the stream: an error when it ended inside a message.
    pub fn finish(&self) -> Result<(), EventStreamError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(EventStreamError::Truncated {
                buffered: self.buffer.len(),
            })
        }
    }

    /// Checks the prelude in the buffer; the message's total length.
    fn check_prelude(&mut self) -> Result<usize, EventStreamError> {
        let prelude = &self.buffer[..PRELUDE];
        let total = be_u32(&prelude[0..4]);
        let headers = be_u32(&prelude[4..8]);
        let expected = be_u32(&prelude[8..12]);
        let computed = crc32fast::hash(&prelude[..8]);
        // The checksum first: lengths that fail it are noise, not a message to size up.
        if expected != computed {
            return Err(EventStreamError::PreludeChecksum { expected, computed });
        }
        let total_len = total as usize;
        if total_len > self.max_message_bytes {
            return Err(EventStreamError::TooLarge {
                announced: u64::from(total),
                limit: self.max_message_bytes,
            });
        }
        if total_len < PRELUDE + TRAILER || headers as usize > total_len - PRELUDE - TRAILER {
            return Err(EventStreamError::BadLength { total, headers });
        }
        Ok(total_len)
    }
}

/// Moves bytes from `input` into `buffer` until it holds `up_to` bytes.
fn take(buffer: &mut BytesMut, input: &mut &[u8], up_to: usize) {
    let want = up_to.saturating_sub(buffer.len()).min(input.len());
    let (head, rest) = input.split_at(want);
    buffer.extend_from_slice(head);
    *input = rest;
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(word)
}

/// Decodes one whole message (prelude already checked).
fn decode_message(message: Bytes) -> Result<EventMessage, EventStreamError> {
    let total = message.len();
    let expected = be_u32(&message[total - TRAILER..]);
    let computed = crc32fast::hash(&message[..total - TRAILER]);
    if expected != computed {
        return Err(EventStreamError::MessageChecksum { expected, computed });
    }
    let headers_len = be_u32(&message[4..8]) as usize;
    let headers = &message[PRELUDE..PRELUDE + headers_len];
    let mut found = Headers::default();
    parse_headers(headers, &mut found)?;
    let payload = message.slice(PRELUDE + headers_len..total - TRAILER);
    let message_type = match found.message_type.as_deref() {
        Some("event") => MessageType::Event,
        Some("exception") => MessageType::Exception,
        Some("error") => MessageType::Error,
        _ => return Err(EventStreamError::MissingHeader(":message-type")),
    };
    let (kind, error_message) = match message_type {
        MessageType::Event => (
            found
                .event_type
                .ok_or(EventStreamError::MissingHeader(":event-type"))?,
            None,
        ),
        MessageType::Exception => (
            found
                .exception_type
                .ok_or(EventStreamError::MissingHeader(":exception-type"))?,
            None,
        ),
        MessageType::Error => (
            found
                .error_code
                .ok_or(EventStreamError::MissingHeader(":error-code"))?,
            found.error_message,
        ),
    };
    Ok(EventMessage {
        message_type,
        kind,
        error_message,
        payload,
    })
}

/// The headers a message is read by; the others are checked and skipped.
#[derive(Default)]
struct Headers {
    message_type: Option<String>,
    event_type: Option<String>,
    exception_type: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
}

/// The value types of the framing, by their tag.
const TYPE_BOOL_TRUE: u8 = 0;
const TYPE_BOOL_FALSE: u8 = 1;
const TYPE_BYTE: u8 = 2;
const TYPE_INT16: u8 = 3;
const TYPE_INT32: u8 = 4;
const TYPE_INT64: u8 = 5;
const TYPE_BYTES: u8 = 6;
const TYPE_STRING: u8 = 7;
const TYPE_TIMESTAMP: u8 = 8;
const TYPE_UUID: u8 = 9;

fn parse_headers(mut bytes: &[u8], found: &mut Headers) -> Result<(), EventStreamError> {
    while let Some((&name_len, rest)) = bytes.split_first() {
        let name_len = usize::from(name_len);
        if name_len == 0 {
            return Err(EventStreamError::BadHeader("empty header name"));
        }
        let (name, rest) = split(rest, name_len, "header name cut short")?;
        let name =
            std::str::from_utf8(name).map_err(|_| EventStreamError::BadHeader("name not UTF-8"))?;
        let (&tag, rest) = rest
            .split_first()
            .ok_or(EventStreamError::BadHeader("header without a value type"))?;
        let fixed = match tag {
            TYPE_BOOL_TRUE | TYPE_BOOL_FALSE => Some(0),
            TYPE_BYTE => Some(1),
            TYPE_INT16 => Some(2),
            TYPE_INT32 => Some(4),
            TYPE_INT64 | TYPE_TIMESTAMP => Some(8),
            TYPE_UUID => Some(16),
            TYPE_BYTES | TYPE_STRING => None,
            _ => return Err(EventStreamError::BadHeader("unknown value type")),
        };
        bytes = match fixed {
            Some(len) => split(rest, len, "header value cut short")?.1,
            None => {
                let (len, rest) = split(rest, 2, "header value length cut short")?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let (value, rest) = split(rest, len, "header value cut short")?;
                if tag == TYPE_STRING {
                    let value = std::str::from_utf8(value)
                        .map_err(|_| EventStreamError::BadHeader("string value not UTF-8"))?;
                    let slot = match name {
                        ":message-type" => Some(&mut found.message_type),
                        ":event-type" => Some(&mut found.event_type),
                        ":exception-type" => Some(&mut found.exception_type),
                        ":error-code" => Some(&mut found.error_code),
                        ":error-message" => Some(&mut found.error_message),
                        _ => None,
                    };
                    if let Some(slot) = slot {
                        *slot = Some(value.to_owned());
                    }
                }
                rest
            }
        };
    }
    Ok(())
}

fn split<'a>(
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), EventStreamError> {
    if bytes.len() < at {
        return Err(EventStreamError::BadHeader(what));
    }
    Ok(bytes.split_at(at))
}

/// Frames one message with string headers (tests and fixtures).
#[cfg(test)]
pub(crate) fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    for (name, value) in headers {
        head.push(name.len() as u8);
        head.extend_from_slice(name.as_bytes());
        head.push(TYPE_STRING);
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    let total = (PRELUDE + head.len() + payload.len() + TRAILER) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// An `event` message of `event_type` with a JSON payload, as Bedrock frames it (tests).
#[cfg(test)]
pub(crate) fn encode_event(event_type: &str, payload: &str) -> Vec<u8> {
    encode(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn transcript() -> Vec<u8> {
        let mut bytes = encode_event("messageStart", r#"{"role":"assistant"}"#);
        bytes.extend(encode_event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Hello"}}"#,
        ));
        bytes.extend(encode(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
            ],
            br#"{"message":"Too many requests"}"#,
        ));
        bytes.extend(encode(
            &[
                (":message-type", "error"),
                (":error-code", "InternalFailure"),
                (":error-message", "boom"),
            ],
            b"",
        ));
        bytes
    }

    fn decode_split(
        input: &[u8],
        cuts: &[usize],
        limit: usize,
    ) -> Result<Vec<EventMessage>, EventStreamError> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut decoder = EventStreamDecoder::with_max_message_bytes(limit);
        let mut messages = Vec::new();
        let mut start = 0;
        for end in cuts.into_iter().chain([input.len()]) {
            let mut piece = &input[start..end.max(start)];
            start = end.max(start);
            while let Some(message) = decoder.next_message(&mut piece)? {
                messages.push(message);
            }
            assert!(piece.is_empty(), "a piece is taken in whole when pending");
            assert!(decoder.buffered() <= limit.max(16));
        }
        decoder.finish()?;
        Ok(messages)
    }

    fn expected() -> Vec<EventMessage> {
        let event = |kind: &str, payload: &'static str| EventMessage {
            message_type: MessageType::Event,
            kind: kind.to_owned(),
            error_message: None,
            payload: Bytes::from_static(payload.as_bytes()),
        };
        vec![
            event("messageStart", r#"{"role":"assistant"}"#),
            event(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"Hello"}}"#,
            ),
            EventMessage {
                message_type: MessageType::Exception,
                kind: "throttlingException".to_owned(),
                error_message: None,
                payload: Bytes::from_static(br#"{"message":"Too many requests"}"#),
            },
            EventMessage {
                message_type: MessageType::Error,
                kind: "InternalFailure".to_owned(),
                error_message: Some("boom".to_owned()),
                payload: Bytes::new(),
            },
        ]
    }

    #[test]
    fn whole_transcript() {
        assert_eq!(
            decode_split(&transcript(), &[], DEFAULT_MAX_MESSAGE_BYTES),
            Ok(expected())
        );
    }

    #[test]
    fn every_single_split_gives_the_same_messages() {
        let input = transcript();
        for cut in 0..=input.len() {
            assert_eq!(
                decode_split(&input, &[cut], DEFAULT_MAX_MESSAGE_BYTES),
                Ok(expected()),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn next_message_stops_after_each_message() {
        let input = transcript();
        let mut decoder = EventStreamDecoder::new();
        let mut rest = &input[..];
        let first = decoder.next_message(&mut rest).expect("succeeds");
        assert_eq!(first.as_ref(), expected().first());
        let first_len = encode_event("messageStart", r#"{"role":"assistant"}"#).len();
        assert_eq!(rest.len(), input.len() - first_len);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn the_documented_example_frame_decodes() {
        // The frame of the module docs, built by the encoder: the bytes quoted there are
        // this encoder's output, so a change to either shows here.
        let frame = encode(
            &[(":event-type", "messageStop"), (":message-type", "event")],
            br#"{"stopReason":"end_turn"}"#,
        );
        assert_eq!(frame.len(), 89);
        assert_eq!(&frame[8..12], &[0x76, 0xf8, 0x42, 0x7f]);
        assert_eq!(&frame[85..], &[0x46, 0xf7, 0x49, 0xbc]);
    }

    #[test]
    fn a_message_over_the_limit_is_refused_from_its_prelude() {
        let big = encode_event("contentBlockDelta", &"x".repeat(10_000));
        let mut decoder = EventStreamDecoder::with_max_message_bytes(1024);
        let mut input = &big[..];
        let error = decoder.next_message(&mut input).expect_err("fails");
        assert_eq!(
            error,
            EventStreamError::TooLarge {
                announced: big.len() as u64,
                limit: 1024
            }
        );
        // Only the prelude was read.
        assert_eq!(input.len(), big.len() - PRELUDE);
        assert!(decoder.buffer.capacity() < 1024);
    }

    #[test]
    fn corrupted_checksums_are_refused() {
        let good = encode_event("messageStop", r#"{"stopReason":"end_turn"}"#);
        let mut bad_prelude = good.clone();
        bad_prelude[9] ^= 1;
        assert!(matches!(
            decode_split(&bad_prelude, &[], 1 << 20),
            Err(EventStreamError::PreludeChecksum { .. })
        ));
        let mut bad_payload = good.clone();
        let at = bad_payload.len() - 6;
        bad_payload[at] ^= 0x20;
        assert!(matches!(
            decode_split(&bad_payload, &[], 1 << 20),
            Err(EventStreamError::MessageChecksum { .. })
        ));
    }

    #[test]
    fn impossible_lengths_are_refused() {
        let prelude = |total: u32, headers: u32| {
            let mut out = total.to_be_bytes().to_vec();
            out.extend_from_slice(&headers.to_be_bytes());
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_be_bytes());
            out
        };
        for (total, headers) in [(15, 0), (0, 0), (20, 5), (16, 1)] {
            assert_eq!(
                decode_split(&prelude(total, headers), &[], 1 << 20),
                Err(EventStreamError::BadLength { total, headers }),
                "{total} {headers}"
            );
        }
    }

    #[test]
    fn a_body_ending_inside_a_message_is_truncated() {
        let frame = encode_event("messageStop", "{}");
        for cut in [1, PRELUDE - 1, PRELUDE, frame.len() - 1] {
            assert_eq!(
                decode_split(&frame[..cut], &[], 1 << 20),
                Err(EventStreamError::Truncated { buffered: cut }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn messages_without_their_type_headers_are_refused() {
        for (headers, missing) in [
            (vec![(":event-type", "x")], ":message-type"),
            (vec![(":message-type", "event")], ":event-type"),
            (vec![(":message-type", "exception")], ":exception-type"),
            (vec![(":message-type", "error")], ":error-code"),
            (vec![(":message-type", "mystery")], ":message-type"),
        ] {
            assert_eq!(
                decode_split(&encode(&headers, b"{}"), &[], 1 << 20),
                Err(EventStreamError::MissingHeader(missing))
            );
        }
    }

    #[test]
    fn every_header_type_is_skipped_and_bad_ones_refused() {
        let mut head = Vec::new();
        for (tag, value) in [
            (TYPE_BOOL_TRUE, vec![]),
            (TYPE_BOOL_FALSE, vec![]),
            (TYPE_BYTE, vec![1]),
            (TYPE_INT16, vec![0, 1]),
            (TYPE_INT32, vec![0, 0, 0, 1]),
            (TYPE_INT64, vec![0; 8]),
            (TYPE_BYTES, vec![0, 2, 0xff, 0xfe]),
            (TYPE_TIMESTAMP, vec![0; 8]),
            (TYPE_UUID, vec![7; 16]),
        ] {
            head.extend_from_slice(&[1, b'x', tag]);
            head.extend_from_slice(&value);
        }
        let typed = encode(&[(":message-type", "event"), (":event-type", "e")], b"p");
        // Splice the typed headers in front of the string ones, fixing lengths and CRCs.
        let frame = |head: &[u8]| {
            let strings = &typed[PRELUDE..typed.len() - 1 - TRAILER];
            let mut all = head.to_vec();
            all.extend_from_slice(strings);
            let total = (PRELUDE + all.len() + 1 + TRAILER) as u32;
            let mut out = total.to_be_bytes().to_vec();
            out.extend_from_slice(&(all.len() as u32).to_be_bytes());
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_be_bytes());
            out.extend_from_slice(&all);
            out.push(b'p');
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_be_bytes());
            out
        };
        let messages = decode_split(&frame(&head), &[], 1 << 20).expect("succeeds");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].kind, "e");
        assert_eq!(&messages[0].payload[..], b"p");
        for bad in [
            vec![0u8],                    // empty name
            vec![1, b'x', 10],            // unknown type
            vec![1, b'x', TYPE_INT64, 0], // value cut short
            vec![3, b'x'],                // name cut short
        ] {
            assert!(matches!(
                decode_split(&frame(&bad), &[], 1 << 20),
                Err(EventStreamError::BadHeader(_))
            ));
        }
    }

    proptest! {
        #[test]
        fn random_splits_give_the_same_messages(
            cuts in proptest::collection::vec(0usize..1024, 0..16),
        ) {
            prop_assert_eq!(decode_split(&transcript(), &cuts, 1 << 20), Ok(expected()));
        }

        #[test]
        fn random_bytes_never_panic_nor_pass_silently(
            input in proptest::collection::vec(any::<u8>(), 1..2048),
            cuts in proptest::collection::vec(0usize..2048, 0..8),
            limit in 16usize..4096,
        ) {
            // Random bytes are not a stream: an error, always (a random message with two
            // valid CRC32s and type headers is a 2^-64 event).
            prop_assert!(decode_split(&input, &cuts, limit).is_err());
        }

        #[test]
        fn a_flipped_bit_is_caught(at in 0usize..4096, bit in 0u8..8) {
            let mut input = transcript();
            let at = at % input.len();
            input[at] ^= 1 << bit;
            prop_assert!(decode_split(&input, &[], 1 << 20).is_err());
        }
    }
}
