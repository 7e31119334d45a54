//! How a provider cuts its stream into events: the framing half of a
//! [`Protocol`](crate::protocol::Protocol)'s streams.
//!
//! A [`Framing`] takes the body's bytes as the network cuts them and hands back one
//! [`Event`] at a time; the protocol's [`StreamDecoder`](crate::protocol::StreamDecoder)
//! turns each event into chunks. Three framings exist:
//!
//! | framing | content type | used by |
//! |---|---|---|
//! | [`SseFraming`] | `text/event-stream` | OpenAI, Anthropic, Gemini (`alt=sse`) |
//! | [`NdjsonFraming`] | `application/x-ndjson` (one JSON value a line) | Ollama's native API, servers that stream lines |
//! | `bedrock::EventStreamFraming` (feature `bedrock`) | `application/vnd.amazon.eventstream` | AWS Bedrock `ConverseStream` |
//!
//! Every framing is bounded: it holds at most one unfinished event, refused past its
//! `max_event_bytes` whatever the input, and hands events on as soon as they are complete
//! (a network read full of small events is never turned into a list first).

use std::fmt;

use crate::sse::{SseEvent, SseParser};

/// One event of a stream, as its framing delivered it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The event's name: SSE's `event:` field, AWS event stream's `:event-type` (or
    /// `:exception-type` for an exception).
    pub name: Option<String>,
    /// The payload (a JSON document for every provider), as text.
    pub data: String,
    /// The framing itself marks the event as an error: SSE's `event: error`, an AWS event
    /// stream message of type `exception` or `error`. The payload may still say more.
    pub error: bool,
}

impl Event {
    /// An event with this name and payload.
    pub fn new(name: Option<String>, data: impl Into<String>) -> Self {
        Event {
            name,
            data: data.into(),
            error: false,
        }
    }

    /// The same event, marked as an error by its framing.
    pub fn into_error(mut self) -> Self {
        self.error = true;
        self
    }
}

impl From<SseEvent> for Event {
    fn from(event: SseEvent) -> Self {
        let error = event.event.as_deref() == Some("error");
        Event {
            name: event.event,
            data: event.data,
            error,
        }
    }
}

/// A framing broke its own rules: an event or line over the limit, a bad checksum, a body
/// cut inside an event. The stream fails with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FramingError(pub String);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FramingError {}

/// An incremental stream framing. See the [module docs](self).
pub trait Framing: Send + Sync + fmt::Debug {
    /// Takes bytes from `input` up to the end of the next complete event and returns it,
    /// leaving the bytes after it in `input`; `None` once all of `input` has been taken in
    /// without completing one (its unfinished part is kept for the next call).
    fn next_event(&mut self, input: &mut &[u8]) -> Result<Option<Event>, FramingError>;

    /// The body has ended: the last event, if one was complete without its final
    /// separator; an error if the body was cut inside a frame that cannot end there.
    fn finish(&mut self) -> Result<Option<Event>, FramingError>;

    /// Bytes held for an event not yet complete (the bound the tests check).
    fn buffered(&self) -> usize;
}

/// Server-sent events (`text/event-stream`), over [`SseParser`].
#[derive(Debug)]
pub struct SseFraming(SseParser);

impl SseFraming {
    /// SSE framing refusing events and lines over `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseFraming(SseParser::with_max_event_bytes(max_event_bytes))
    }
}

impl Framing for SseFraming {
    fn next_event(&mut self, input: &mut &[u8]) -> Result<Option<Event>, FramingError> {
        self.0
            .next_event(input)
            .map(|event| event.map(Event::from))
            .map_err(|e| FramingError(e.to_string()))
    }

    fn finish(&mut self) -> Result<Option<Event>, FramingError> {
        self.0
            .finish()
            .map(|event| event.map(Event::from))
            .map_err(|e| FramingError(e.to_string()))
    }

    fn buffered(&self) -> usize {
        self.0.buffered()
    }
}

/// Newline-delimited JSON: one event a line (`\n` or `\r\n`), blank lines skipped, no
/// names. A last line without its newline is still an event.
#[derive(Debug)]
pub struct NdjsonFraming {
    line: Vec<u8>,
    max_event_bytes: usize,
}

impl NdjsonFraming {
    /// NDJSON framing refusing lines over `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        NdjsonFraming {
            line: Vec::new(),
            max_event_bytes,
        }
    }

    fn too_large(&self) -> FramingError {
        FramingError(format!(
            "stream line larger than {} bytes",
            self.max_event_bytes
        ))
    }

    fn take_line(&mut self) -> Result<Option<Event>, FramingError> {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            // Keep the allocation for the next line.
            line.clear();
            self.line = line;
            return Ok(None);
        }
        match String::from_utf8(line) {
            Ok(data) => Ok(Some(Event::new(None, data))),
            Err(_) => Err(FramingError("stream line is not UTF-8".into())),
        }
    }
}

impl Framing for NdjsonFraming {
    fn next_event(&mut self, input: &mut &[u8]) -> Result<Option<Event>, FramingError> {
        while let Some(end) = memchr::memchr(b'\n', input) {
            let (head, tail) = input.split_at(end);
            if self.line.len() + head.len() > self.max_event_bytes {
                return Err(self.too_large());
            }
            self.line.extend_from_slice(head);
            *input = tail.get(1..).unwrap_or_default();
            if let Some(event) = self.take_line()? {
                return Ok(Some(event));
            }
        }
        if self.line.len() + input.len() > self.max_event_bytes {
            return Err(self.too_large());
        }
        self.line.extend_from_slice(input);
        *input = &[];
        Ok(None)
    }

    fn finish(&mut self) -> Result<Option<Event>, FramingError> {
        self.take_line()
    }

    fn buffered(&self) -> usize {
        self.line.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all(framing: &mut dyn Framing, pieces: &[&[u8]]) -> Result<Vec<Event>, FramingError> {
        let mut events = Vec::new();
        for piece in pieces {
            let mut input = *piece;
            while let Some(event) = framing.next_event(&mut input)? {
                events.push(event);
            }
            assert!(input.is_empty());
        }
        events.extend(framing.finish()?);
        Ok(events)
    }

    #[test]
    fn ndjson_splits_lines_anywhere_and_skips_blank_ones() {
        let mut framing = NdjsonFraming::new(64);
        let events = all(
            &mut framing,
            &[b"{\"a\":", b"1}\r\n\n  \n{\"b\"", b":2}\n{\"c\":3}"],
        )
        .unwrap();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
        assert!(events.iter().all(|e| e.name.is_none() && !e.error));
        assert_eq!(framing.buffered(), 0);
    }

    #[test]
    fn ndjson_refuses_an_endless_line_without_holding_it() {
        let mut framing = NdjsonFraming::new(1024);
        let piece = [b'x'; 512];
        let mut refused = None;
        for _ in 0..8 {
            let mut input: &[u8] = &piece;
            if let Err(error) = framing.next_event(&mut input) {
                refused = Some(error);
                break;
            }
        }
        assert!(refused.is_some_and(|e| e.0.contains("1024")));
        assert!(framing.buffered() <= 1024);
    }

    #[test]
    fn ndjson_refuses_bytes_that_are_not_text() {
        let mut framing = NdjsonFraming::new(64);
        assert!(all(&mut framing, &[b"\xff\xfe\n"]).is_err());
    }

    #[test]
    fn sse_marks_error_events() {
        let mut framing = SseFraming::new(1024);
        let events = all(
            &mut framing,
            &[b"event: error\ndata: {\"message\":\"x\"}\n\ndata: ok\n\n"],
        )
        .unwrap();
        assert!(events[0].error);
        assert_eq!(events[0].name.as_deref(), Some("error"));
        assert!(!events[1].error);
        assert_eq!(events[1].data, "ok");
    }
}
