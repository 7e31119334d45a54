//! AWS Bedrock's Converse and ConverseStream APIs, piece by piece (cargo feature `bedrock`,
//! off by default).
//!
//! - [`eventstream`]: the binary `application/vnd.amazon.eventstream` framing ConverseStream
//!   answers in, decoded incrementally with bounded memory;
//! - [`sign`]: SigV4 signing of a request and its body (service `bedrock`), with credentials
//!   from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION` then `AWS_DEFAULT_REGION`) or given in code, secrets never printed;
//! - [`wire`]: the Converse JSON for a [`ChatRequest`](crate::ChatRequest), answers and
//!   stream events decoded into [`ChatResponse`](crate::ChatResponse) and
//!   [`ChatChunk`](crate::ChatChunk)s, error bodies and in-stream exceptions classified.
//!
//! The endpoint of a region is [`endpoint`]; the path of a model's call is
//! [`wire::converse_path`].
//!
//! # Example
//!
//! A ConverseStream body, framed as Bedrock sends it, decoded into chunks:
//!
//! ```
//! use std::collections::VecDeque;
//! use tower_llm_providers::bedrock::eventstream::EventStreamDecoder;
//! use tower_llm_providers::bedrock::wire::ConverseStreamDecoder;
//! use tower_llm_providers::{ChatAccumulator, ChatChunk};
//!
//! # fn frame(event_type: &str, payload: &str) -> Vec<u8> {
//! #     let mut head = Vec::new();
//! #     for (name, value) in [(":event-type", event_type), (":message-type", "event")] {
//! #         head.push(name.len() as u8);
//! #         head.extend_from_slice(name.as_bytes());
//! #         head.push(7);
//! #         head.extend_from_slice(&(value.len() as u16).to_be_bytes());
//! #         head.extend_from_slice(value.as_bytes());
//! #     }
//! #     let total = (16 + head.len() + payload.len()) as u32;
//! #     let mut out = total.to_be_bytes().to_vec();
//! #     out.extend_from_slice(&(head.len() as u32).to_be_bytes());
//! #     out.extend_from_slice(&crc32(&out).to_be_bytes());
//! #     out.extend_from_slice(&head);
//! #     out.extend_from_slice(payload.as_bytes());
//! #     out.extend_from_slice(&crc32(&out).to_be_bytes());
//! #     out
//! # }
//! # fn crc32(bytes: &[u8]) -> u32 {
//! #     let mut crc = !0u32;
//! #     for &b in bytes {
//! #         crc ^= u32::from(b);
//! #         for _ in 0..8 {
//! #             crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
//! #         }
//! #     }
//! #     !crc
//! # }
//! let mut body = frame("messageStart", r#"{"role":"assistant"}"#);
//! body.extend(frame("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Paris."}}"#));
//! body.extend(frame("contentBlockStop", r#"{"contentBlockIndex":0}"#));
//! body.extend(frame("messageStop", r#"{"stopReason":"end_turn"}"#));
//! body.extend(frame("metadata", r#"{"usage":{"inputTokens":9,"outputTokens":2,"totalTokens":11}}"#));
//!
//! let mut frames = EventStreamDecoder::new();
//! let mut events = ConverseStreamDecoder::default();
//! let mut chunks = VecDeque::new();
//! let mut input = &body[..];
//! while let Some(message) = frames.next_message(&mut input).unwrap() {
//!     events.message(&message, &mut chunks).unwrap();
//! }
//! frames.finish().unwrap();
//! events.finish().unwrap();
//! let mut answer = ChatAccumulator::default();
//! chunks.iter().for_each(|chunk| answer.push(chunk));
//! let answer = answer.finish();
//! assert_eq!(answer.content, "Paris.");
//! assert_eq!(answer.usage.unwrap().input_tokens, 9);
//! ```

pub mod eventstream;
pub mod sign;
pub mod wire;

#[cfg(test)]
mod tests;

/// The Bedrock runtime endpoint of `region`: `https://bedrock-runtime.{region}.amazonaws.com`.
///
/// ```
/// assert_eq!(
///     tower_llm_providers::bedrock::endpoint("eu-west-3"),
///     "https://bedrock-runtime.eu-west-3.amazonaws.com"
/// );
/// ```
pub fn endpoint(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}
