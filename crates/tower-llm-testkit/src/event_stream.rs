//! The AWS event-stream framing (`application/vnd.amazon.eventstream`) Bedrock's
//! ConverseStream answers in, written with correct CRC32s.

use bytes::Bytes;

/// The value type of a string header.
const STRING: u8 = 7;

/// One event-stream message: the 12-byte prelude (total length, headers length, their
/// CRC32), `headers` as string headers, `payload`, and the CRC32 of all of it. Header names
/// are cut to 255 bytes and values to 65535, the framing's limits.
///
/// ```
/// let frame = tower_llm_testkit::event_stream_message(
///     &[(":message-type", "event"), (":event-type", "messageStop")],
///     br#"{"stopReason":"end_turn"}"#,
/// );
/// let total = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
/// assert_eq!(total as usize, frame.len());
/// ```
pub fn event_stream_message(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut head = Vec::new();
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(usize::from(u8::MAX))];
        let value = &value.as_bytes()[..value.len().min(usize::from(u16::MAX))];
        head.push(name.len() as u8);
        head.extend_from_slice(name);
        head.push(STRING);
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value);
    }
    let total = 12 + head.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    Bytes::from(out)
}

/// A Bedrock event: `:event-type`, JSON content, `:message-type: event`.
pub(crate) fn event(event_type: &str, payload: &str) -> Bytes {
    event_stream_message(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

/// A Bedrock exception: `:exception-type`, JSON content, `:message-type: exception`.
pub(crate) fn exception(exception_type: &str, payload: &str) -> Bytes {
    event_stream_message(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_frame_is_written_byte_for_byte() {
        // The messageStop frame worked out by hand from the framing's definition (and
        // decoded by the providers' decoder in its own docs).
        let expected: Vec<u8> = [
            &[0, 0, 0, 89, 0, 0, 0, 48, 0x76, 0xf8, 0x42, 0x7f][..],
            b"\x0b:event-type\x07\x00\x0bmessageStop\x0d:message-type\x07\x00\x05event",
            br#"{"stopReason":"end_turn"}"#,
            &[0x46, 0xf7, 0x49, 0xbc],
        ]
        .concat();
        let frame = event_stream_message(
            &[(":event-type", "messageStop"), (":message-type", "event")],
            br#"{"stopReason":"end_turn"}"#,
        );
        assert_eq!(&frame[..], &expected[..]);
    }
}
