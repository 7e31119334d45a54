//! [`RequestBody`]: the body every provider sends.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The request body every provider sends: one JSON buffer, sent as one frame.
///
/// Its bytes stay readable ([`AsRef<[u8]>`](AsRef), [`bytes`](Self::bytes)) after it is
/// built, so a layer between a provider and its HTTP client reads the request as it is sent:
/// a rate limiter's token estimate (`RequestCost` for `http::Request<B: AsRef<[u8]>>`), a
/// dedup fingerprint, a test's assertions.
///
/// ```
/// use http_body::Body;
/// use tower_llm_providers::RequestBody;
///
/// let body = RequestBody::new(r#"{"model":"gpt-4o-mini"}"#);
/// assert_eq!(body.as_ref(), br#"{"model":"gpt-4o-mini"}"#);
/// assert_eq!(body.size_hint().exact(), Some(23));
/// ```
#[derive(Default)]
pub struct RequestBody {
    bytes: Bytes,
    /// The frame has been handed to the client.
    sent: bool,
}

impl RequestBody {
    /// A body of `bytes`.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        RequestBody {
            bytes: bytes.into(),
            sent: false,
        }
    }

    /// The body's bytes (a cheap clone of the buffer).
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The body's bytes, taken out of it.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// A clone is a body of its own, not yet sent, over the same buffer (a cheap clone).
impl Clone for RequestBody {
    fn clone(&self) -> Self {
        RequestBody::new(self.bytes.clone())
    }
}

impl AsRef<[u8]> for RequestBody {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> Self {
        RequestBody::new(bytes)
    }
}

impl From<Vec<u8>> for RequestBody {
    fn from(bytes: Vec<u8>) -> Self {
        RequestBody::new(bytes)
    }
}

impl From<String> for RequestBody {
    fn from(text: String) -> Self {
        RequestBody::new(text)
    }
}

impl From<&'static str> for RequestBody {
    fn from(text: &'static str) -> Self {
        RequestBody::new(text)
    }
}

/// The length only: a request body holds a prompt.
impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.sent || this.bytes.is_empty() {
            return Poll::Ready(None);
        }
        this.sent = true;
        Poll::Ready(Some(Ok(Frame::data(this.bytes.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent || self.bytes.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        let left = if self.is_end_stream() {
            0
        } else {
            self.bytes.len() as u64
        };
        SizeHint::with_exact(left)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn sends_its_bytes_once_and_keeps_them_readable() {
        let mut body = RequestBody::new("{}");
        assert!(!body.is_end_stream());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "{}");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert_eq!(body.as_ref(), b"{}", "still readable after it is sent");
        let again = body.clone();
        assert!(!again.is_end_stream(), "a clone sends its bytes again");
        assert_eq!(again.collect().await.unwrap().to_bytes(), "{}");
        let empty = RequestBody::default();
        assert!(empty.is_end_stream());
        assert_eq!(empty.collect().await.unwrap().to_bytes(), "");
        assert_eq!(format!("{body:?}"), "RequestBody { len: 2, .. }");
    }
}
