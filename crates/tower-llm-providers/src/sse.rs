//! An incremental parser for server-sent events (the `text/event-stream` format).
//!
//! Bytes arrive in whatever pieces the network cuts them into: a frame may be split anywhere,
//! even inside a `\r\n` or a multi-byte character. The parser keeps the unfinished line and
//! the event being built between calls, follows the WHATWG rules (`\n`, `\r\n` and `\r` line
//! ends, `:` comments, multi-line `data`, `event` names, one optional space after the colon),
//! and refuses a line or an event larger than its limit instead of growing without bound.
//!
//! Memory is bounded by the limits whatever the input: [`SseParser::next_event`] hands each
//! event on as soon as its blank line is read, so a network read full of tiny events is never
//! turned into a list first; the `event` name and the `id` are capped at
//! [`MAX_FIELD_BYTES`], and the last `id` is kept once by the parser
//! ([`SseParser::last_event_id`]) instead of being copied into every later event. What the
//! parser holds is at most one line and one event's data, each under `max_event_bytes`.

use std::collections::VecDeque;
use std::fmt;

/// The default limit on one event (and on one line), in bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// The limit on an `event:` name and an `id:` value, in bytes. No provider sends more than a
/// few dozen; a longer one is refused like an oversized event.
pub const MAX_FIELD_BYTES: usize = 1024;

/// One event of a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SseEvent {
    /// The `event:` name, if one was given (the spec's default is `message`).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// An event with this name and data.
    pub fn new(event: Option<String>, data: impl Into<String>) -> Self {
        SseEvent {
            event,
            data: data.into(),
        }
    }
}

/// A line, an event or a field went over the parser's size limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseTooLarge {
    /// What was too large: `"line"`, `"event"`, `"event name"` or `"id"`.
    pub what: &'static str,
    /// The limit, in bytes.
    pub limit: usize,
}

impl fmt::Display for SseTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server-sent event {} larger than {} bytes",
            self.what, self.limit
        )
    }
}

impl std::error::Error for SseTooLarge {}

/// The incremental parser: hand it the bytes as they arrive and take the events out one at a
/// time with [`next_event`](Self::next_event), then [`finish`](Self::finish) it at the end of
/// the stream. [`feed`](Self::feed) collects every event of a piece at once, for callers that
/// control the size of the pieces.
///
/// ```
/// use tower_llm_providers::sse::SseParser;
///
/// let mut parser = SseParser::new();
/// let mut input: &[u8] = b"event: ping\r\nid: 7\r\ndata: {\"a\"";
/// assert_eq!(parser.next_event(&mut input).unwrap(), None);
/// assert!(input.is_empty());
/// let mut input: &[u8] = b":1}\r\n\r\ndata: next\n\n";
/// let event = parser.next_event(&mut input).unwrap().unwrap();
/// assert_eq!(event.event.as_deref(), Some("ping"));
/// assert_eq!(event.data, "{\"a\":1}");
/// assert_eq!(parser.last_event_id(), Some("7"));
/// // The second event is still in `input`, not parsed yet.
/// assert_eq!(input, b"data: next\n\n");
/// ```
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous piece ended in `\r`: a `\n` first in the next one belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    /// How many bytes of a leading UTF-8 byte-order mark have been seen; `None` once the
    /// stream's first bytes have been judged (the spec drops one BOM at the very start).
    bom_seen: Option<usize>,
    max_event_bytes: usize,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser with the [default limit](DEFAULT_MAX_EVENT_BYTES).
    pub fn new() -> Self {
        SseParser::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser refusing lines and events over `max_event_bytes`.
    pub fn with_max_event_bytes(max_event_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            event: None,
            data: String::new(),
            has_data: false,
            id: None,
            bom_seen: Some(0),
            max_event_bytes,
        }
    }

    /// Bytes held for events not yet complete.
    pub fn buffered(&self) -> usize {
        self.line.len()
            + self.data.len()
            + self.event.as_ref().map_or(0, String::len)
            + self.id.as_ref().map_or(0, String::len)
    }

    /// The last `id:` the stream set (the spec's "last event ID"), if any.
    pub fn last_event_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Parses `input` up to the end of the next complete event and returns it, leaving the
    /// bytes after it in `input`; `None` once all of `input` has been taken in without
    /// completing an event (its unfinished part is kept for the next call).
    pub fn next_event(&mut self, input: &mut &[u8]) -> Result<Option<SseEvent>, SseTooLarge> {
        let mut bytes = *input;
        if let Some(seen) = self.bom_seen {
            // The BOM itself may be split across pieces: match it byte by byte.
            let want = BOM.get(seen..).unwrap_or_default();
            let matched = want.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            if matched == want.len() {
                self.bom_seen = None;
                bytes = bytes.get(matched..).unwrap_or_default();
            } else if matched == bytes.len() {
                self.bom_seen = Some(seen + matched);
                *input = &[];
                return Ok(None);
            } else {
                // Not a BOM after all: the bytes held back belong to the first line.
                self.bom_seen = None;
                self.push_partial(BOM.get(..seen).unwrap_or_default())?;
            }
        }
        // An empty piece says nothing about whether a `\n` follows a `\r`.
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', bytes) {
            let (head, tail) = bytes.split_at(end);
            let line_end_len = match tail {
                [b'\r', b'\n', ..] => 2,
                [b'\r'] => {
                    self.after_cr = true;
                    1
                }
                _ => 1,
            };
            let event = if self.line.is_empty() {
                self.process_line(head)?
            } else {
                self.push_partial(head)?;
                let line = std::mem::take(&mut self.line);
                let event = self.process_line(&line);
                self.line = line;
                self.line.clear();
                event?
            };
            bytes = tail.get(line_end_len..).unwrap_or_default();
            if event.is_some() {
                *input = bytes;
                return Ok(event);
            }
        }
        self.push_partial(bytes)?;
        *input = &[];
        Ok(None)
    }

    /// Parses the next piece of the stream, appending each completed event to `out`.
    ///
    /// Every event of `bytes` is held in `out` at once: over input you do not control, take
    /// them one at a time with [`next_event`](Self::next_event) instead.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        out: &mut VecDeque<SseEvent>,
    ) -> Result<(), SseTooLarge> {
        while let Some(event) = self.next_event(&mut bytes)? {
            out.push_back(event);
        }
        Ok(())
    }

    /// Ends the stream: a last event not followed by a blank line is still delivered (the
    /// decoders, not the parser, decide whether the stream ended properly).
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseTooLarge> {
        if let Some(seen) = self.bom_seen.take() {
            self.push_partial(BOM.get(..seen).unwrap_or_default())?;
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            // A non-empty line never completes an event.
            self.process_line(&line)?;
        }
        Ok(self.dispatch())
    }

    fn too_large(&self, what: &'static str) -> SseTooLarge {
        SseTooLarge {
            what,
            limit: self.max_event_bytes,
        }
    }

    fn push_partial(&mut self, bytes: &[u8]) -> Result<(), SseTooLarge> {
        if self.line.len() + bytes.len() > self.max_event_bytes {
            return Err(self.too_large("line"));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseTooLarge> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        // A whole line can arrive in one piece without passing through `push_partial`.
        if line.len() > self.max_event_bytes {
            return Err(self.too_large("line"));
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event_bytes {
                    return Err(self.too_large("event"));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                push_text(&mut self.data, value);
                self.has_data = true;
            }
            b"event" => {
                if value.len() > MAX_FIELD_BYTES {
                    return Err(SseTooLarge {
                        what: "event name",
                        limit: MAX_FIELD_BYTES,
                    });
                }
                set_field(&mut self.event, value);
            }
            b"id" if !value.contains(&0) => {
                if value.len() > MAX_FIELD_BYTES {
                    return Err(SseTooLarge {
                        what: "id",
                        limit: MAX_FIELD_BYTES,
                    });
                }
                set_field(&mut self.id, value);
            }
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

/// Replaces a field's value, reusing its allocation: a stream repeating `id:` on every event
/// allocates nothing per event.
fn set_field(field: &mut Option<String>, value: &[u8]) {
    let held = field.get_or_insert_with(String::new);
    held.clear();
    push_text(held, value);
}

/// Appends `bytes` as text, invalid UTF-8 replaced (`U+FFFD`), as the spec's decoding does.
/// Valid text, every provider's, takes the fast check, not the lossy walk.
fn push_text(to: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => to.push_str(text),
        Err(_) => to.push_str(&String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_split(input: &[u8], cuts: &[usize]) -> Result<Vec<SseEvent>, SseTooLarge> {
        let mut parser = SseParser::new();
        let mut out = VecDeque::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, input.len());
            parser.feed(&input[start..cut], &mut out)?;
            start = cut;
        }
        parser.feed(&input[start..], &mut out)?;
        out.extend(parser.finish()?);
        Ok(out.into_iter().collect())
    }

    const TRANSCRIPT: &[u8] = b": hello\r\n\r\nevent: message_start\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nid: 7\rdata:no-space\r\rdata: \xe6\x97\xa5\xe6\x9c\xac\n\ndata: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent::new(Some("message_start".into()), "{\"a\":\n1}"),
            SseEvent::new(None, "no-space"),
            SseEvent::new(None, "日本"),
            SseEvent::new(None, "[DONE]"),
        ]
    }

    #[test]
    fn whole_transcript() {
        assert_eq!(parse_split(TRANSCRIPT, &[]).expect("small"), expected());
    }

    #[test]
    fn every_single_split_gives_the_same_events() {
        for cut in 0..=TRANSCRIPT.len() {
            assert_eq!(
                parse_split(TRANSCRIPT, &[cut]).expect("small"),
                expected(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn empty_piece_between_cr_and_lf() {
        let cr = TRANSCRIPT
            .iter()
            .position(|&b| b == b'\r')
            .expect("has a CR")
            + 1;
        assert_eq!(
            parse_split(TRANSCRIPT, &[cr, cr, cr]).expect("small"),
            expected()
        );
    }

    #[test]
    fn byte_by_byte() {
        let cuts: Vec<usize> = (0..TRANSCRIPT.len()).collect();
        assert_eq!(parse_split(TRANSCRIPT, &cuts).expect("small"), expected());
    }

    #[test]
    fn event_without_data_is_dropped_and_name_resets() {
        let events = parse_split(b"event: ping\n\ndata: x\n\n", &[]).expect("small");
        assert_eq!(events, vec![SseEvent::new(None, "x")]);
    }

    #[test]
    fn unterminated_last_event_is_delivered_at_finish() {
        let events = parse_split(b"data: [DONE]", &[]).expect("small");
        assert_eq!(events[0].data, "[DONE]");
    }

    #[test]
    fn oversized_line_is_refused() {
        let mut parser = SseParser::with_max_event_bytes(16);
        let mut out = VecDeque::new();
        assert!(parser.feed(&[b'a'; 10], &mut out).is_ok());
        assert_eq!(
            parser.feed(&[b'a'; 10], &mut out),
            Err(SseTooLarge {
                what: "line",
                limit: 16
            })
        );
        let mut parser = SseParser::with_max_event_bytes(16);
        let many = b"data: 0123456789\ndata: 0123456789\n\n";
        assert!(parser.feed(many, &mut out).is_err());
    }

    #[test]
    fn an_oversized_line_in_one_piece_is_refused_whatever_its_field() {
        for line in [
            &b": a comment far longer than the limit\n"[..],
            b"event: a name far longer than the limit\n",
            b"id: an id far longer than the limit\n",
            b"retry: 1234567890123456789012345678901234567890\n",
        ] {
            let mut parser = SseParser::with_max_event_bytes(16);
            let mut out = VecDeque::new();
            assert_eq!(
                parser.feed(line, &mut out).map_err(|e| e.limit),
                Err(16),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn the_id_is_kept_once_and_reused() {
        let mut parser = SseParser::new();
        let mut input: &[u8] = b"id: abc\ndata: 1\n\ndata: 2\n\nid\ndata: 3\n\n";
        let first = parser.next_event(&mut input).expect("small");
        assert_eq!(first.map(|e| e.data), Some("1".into()));
        assert_eq!(parser.last_event_id(), Some("abc"));
        let second = parser.next_event(&mut input).expect("small");
        assert_eq!(second.map(|e| e.data), Some("2".into()));
        assert_eq!(parser.last_event_id(), Some("abc"));
        // An empty `id` resets the last event id (to empty, as the spec says).
        assert!(parser.next_event(&mut input).expect("small").is_some());
        assert_eq!(parser.last_event_id(), Some(""));
    }

    #[test]
    fn names_and_ids_over_the_field_limit_are_refused() {
        for field in ["event", "id"] {
            let line = format!("{field}: {}\n", "x".repeat(MAX_FIELD_BYTES + 1));
            let mut parser = SseParser::new();
            let mut input = line.as_bytes();
            let refused = parser.next_event(&mut input).map_err(|e| e.limit);
            assert_eq!(refused, Err(MAX_FIELD_BYTES), "{field}");
        }
    }

    #[test]
    fn next_event_stops_after_each_event() {
        let mut parser = SseParser::new();
        let mut input: &[u8] = b"data: a\n\ndata: b\n\ndata: c";
        let mut seen = Vec::new();
        while let Some(event) = parser.next_event(&mut input).expect("small") {
            seen.push((event.data, input.len()));
        }
        assert_eq!(seen, vec![("a".to_owned(), 16), ("b".to_owned(), 7)]);
        assert_eq!(
            parser.finish().expect("small").map(|e| e.data),
            Some("c".into())
        );
    }

    proptest! {
        #[test]
        fn random_splits_do_not_change_the_events(cuts in proptest::collection::vec(0..TRANSCRIPT.len(), 0..12)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(parse_split(TRANSCRIPT, &cuts).expect("small"), expected());
        }

        #[test]
        fn random_bytes_never_panic_and_stay_bounded(
            input in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(0usize..4096, 0..16),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut parser = SseParser::with_max_event_bytes(256);
            let mut out = VecDeque::new();
            let mut start = 0;
            for cut in cuts {
                let cut = cut.clamp(start, input.len());
                if parser.feed(&input[start..cut], &mut out).is_err() {
                    return Ok(());
                }
                prop_assert!(parser.buffered() <= 2 * 256 + 1 + 2 * MAX_FIELD_BYTES);
                start = cut;
            }
            let _ = parser.feed(&input[start..], &mut out);
            prop_assert!(parser.buffered() <= 2 * 256 + 1 + 2 * MAX_FIELD_BYTES);
            for event in &out {
                prop_assert!(event.data.len() <= 3 * 256);
            }
        }
    }
}
