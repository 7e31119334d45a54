//! Reading a response body whole, up to a limit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_llm_core::BoxError;

/// The default limit on a response body read whole (non-streaming answers, error bodies).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub(crate) enum ReadError {
    /// The body went past the limit; the bytes read so far.
    TooLarge(Bytes),
    /// The body failed mid-way; the bytes read so far.
    Body(BoxError, Bytes),
}

pin_project! {
    /// Collects a body into one buffer, refusing more than `limit` bytes.
    pub(crate) struct ReadBody<B> {
        #[pin]
        body: B,
        first: Option<Bytes>,
        rest: BytesMut,
        limit: usize,
    }
}

impl<B> ReadBody<B> {
    pub(crate) fn new(body: B, limit: usize) -> Self {
        ReadBody {
            body,
            first: None,
            rest: BytesMut::new(),
            limit,
        }
    }
}

impl<B> ReadBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn take(first: &mut Option<Bytes>, rest: &mut BytesMut) -> Bytes {
        if rest.is_empty() {
            first.take().unwrap_or_default()
        } else {
            std::mem::take(rest).freeze()
        }
    }

    pub(crate) fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Bytes, ReadError>> {
        let mut this = self.project();
        let len = |first: &Option<Bytes>, rest: &BytesMut| {
            first.as_ref().map_or(0, Bytes::len) + rest.len()
        };
        if this.body.size_hint().lower() > *this.limit as u64 {
            return Poll::Ready(Err(ReadError::TooLarge(Bytes::new())));
        }
        loop {
            match ready!(this.body.as_mut().poll_frame(cx)) {
                None => return Poll::Ready(Ok(Self::take(this.first, this.rest))),
                Some(Err(e)) => {
                    return Poll::Ready(Err(ReadError::Body(
                        e.into(),
                        Self::take(this.first, this.rest),
                    )));
                }
                Some(Ok(frame)) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue;
                    };
                    let have = len(this.first, this.rest);
                    let room = this.limit.saturating_sub(have);
                    let too_large = data.remaining() > room;
                    let chunk = data.copy_to_bytes(data.remaining().min(room));
                    // The common case is one frame: keep it without copying.
                    if this.first.is_none() && this.rest.is_empty() {
                        *this.first = Some(chunk);
                    } else {
                        if let Some(first) = this.first.take() {
                            this.rest.extend_from_slice(&first);
                        }
                        this.rest.extend_from_slice(&chunk);
                    }
                    if too_large {
                        return Poll::Ready(Err(ReadError::TooLarge(Self::take(
                            this.first, this.rest,
                        ))));
                    }
                }
            }
        }
    }
}

impl<B> Future for ReadBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Bytes, ReadError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_read(cx)
    }
}
