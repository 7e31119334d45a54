//! An incremental parser for server-sent events (the `text/event-stream` format).
//!
//! Bytes arrive in whatever pieces the network cuts them into: a frame may be split anywhere,
//! even inside a `\r\n` or a multi-byte character. The parser keeps the unfinished line and
//! the event being built between calls, follows the WHATWG rules (`\n`, `\r\n` and `\r` line
//! ends, `:` comments, multi-line `data`, `event` names, one optional space after the colon),
//! and refuses a line or an event larger than its limit instead of growing without bound.

use std::collections::VecDeque;
use std::fmt;

/// The default limit on one event (and on one line), in bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One event of a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, if one was given (the spec's default is `message`).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The `id:` field, if one was given.
    pub id: Option<String>,
}

/// A line or an event went over the parser's size limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseTooLarge {
    /// The limit, in bytes.
    pub limit: usize,
}

impl fmt::Display for SseTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server-sent event larger than {} bytes", self.limit)
    }
}

impl std::error::Error for SseTooLarge {}

/// The incremental parser: [`feed`](Self::feed) it bytes as they arrive, then
/// [`finish`](Self::finish) it at the end of the stream.
///
/// ```
/// use tower_llm_providers::sse::SseParser;
///
/// let mut parser = SseParser::new();
/// let mut events = std::collections::VecDeque::new();
/// parser.feed(b"event: ping\r\ndata: {\"a\"", &mut events).unwrap();
/// assert!(events.is_empty());
/// parser.feed(b":1}\r\n\r\n: a comment\n", &mut events).unwrap();
/// let event = events.pop_front().unwrap();
/// assert_eq!(event.event.as_deref(), Some("ping"));
/// assert_eq!(event.data, "{\"a\":1}");
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
        self.line.len() + self.data.len()
    }

    /// Parses the next piece of the stream, appending each completed event to `out`.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        out: &mut VecDeque<SseEvent>,
    ) -> Result<(), SseTooLarge> {
        if let Some(seen) = self.bom_seen {
            // The BOM itself may be split across pieces: match it byte by byte.
            let want = BOM.get(seen..).unwrap_or_default();
            let matched = want.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            if matched == want.len() {
                self.bom_seen = None;
                bytes = bytes.get(matched..).unwrap_or_default();
            } else if matched == bytes.len() {
                self.bom_seen = Some(seen + matched);
                return Ok(());
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
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, tail) = bytes.split_at(end);
            let line_end_len = match tail {
                [b'\r', b'\n', ..] => 2,
                [b'\r'] => {
                    self.after_cr = true;
                    1
                }
                _ => 1,
            };
            if self.line.is_empty() {
                self.process_line(head, out)?;
            } else {
                self.push_partial(head)?;
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, out)?;
                self.line = line;
                self.line.clear();
            }
            bytes = &tail[line_end_len..];
        }
        self.push_partial(bytes)
    }

    /// Ends the stream: a last event not followed by a blank line is still delivered (the
    /// decoders, not the parser, decide whether the stream ended properly).
    pub fn finish(&mut self, out: &mut VecDeque<SseEvent>) -> Result<(), SseTooLarge> {
        if let Some(seen) = self.bom_seen.take() {
            self.push_partial(BOM.get(..seen).unwrap_or_default())?;
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
        }
        self.dispatch(out);
        Ok(())
    }

    fn push_partial(&mut self, bytes: &[u8]) -> Result<(), SseTooLarge> {
        if self.line.len() + bytes.len() > self.max_event_bytes {
            return Err(SseTooLarge {
                limit: self.max_event_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(
        &mut self,
        line: &[u8],
        out: &mut VecDeque<SseEvent>,
    ) -> Result<(), SseTooLarge> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        // A whole line can arrive in one piece without passing through `push_partial`.
        if line.len() > self.max_event_bytes {
            return Err(SseTooLarge {
                limit: self.max_event_bytes,
            });
        }
        if line[0] == b':' {
            return Ok(());
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
                    return Err(SseTooLarge {
                        limit: self.max_event_bytes,
                    });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut VecDeque<SseEvent>) {
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push_back(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
            id: self.id.clone(),
        });
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
        parser.finish(&mut out)?;
        Ok(out.into_iter().collect())
    }

    const TRANSCRIPT: &[u8] = b": hello\r\n\r\nevent: message_start\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nid: 7\rdata:no-space\r\rdata: \xe6\x97\xa5\xe6\x9c\xac\n\ndata: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: Some("message_start".into()),
                data: "{\"a\":\n1}".into(),
                id: None,
            },
            SseEvent {
                event: None,
                data: "no-space".into(),
                id: Some("7".into()),
            },
            SseEvent {
                event: None,
                data: "日本".into(),
                id: Some("7".into()),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
                id: Some("7".into()),
            },
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
        assert_eq!(
            events,
            vec![SseEvent {
                event: None,
                data: "x".into(),
                id: None
            }]
        );
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
            Err(SseTooLarge { limit: 16 })
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
                parser.feed(line, &mut out),
                Err(SseTooLarge { limit: 16 }),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
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
                prop_assert!(parser.buffered() <= 2 * 256 + 1);
                start = cut;
            }
            let _ = parser.feed(&input[start..], &mut out);
            prop_assert!(parser.buffered() <= 2 * 256 + 1);
            for event in &out {
                prop_assert!(event.data.len() <= 3 * 256);
            }
        }
    }
}
