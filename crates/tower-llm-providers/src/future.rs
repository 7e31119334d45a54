//! The response futures every provider shares.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_llm_core::{BoxError, FailureKind, MAX_ERROR_BODY, UpstreamError};

use crate::body::{ReadBody, ReadError};
use crate::error::CallContext;
use crate::meta::ResponseMeta;
use crate::observe::CallObs;
use crate::stream::{ChatStream, StreamTimeouts, timeout};

/// Turns a success body and the answer's HTTP facts into the typed answer.
pub(crate) type Decode<T> = fn(&CallContext, Bytes, ResponseMeta) -> Result<T, UpstreamError>;

/// Tells the call's observation what the answer was.
pub(crate) type Answered<T> = fn(&mut CallObs, &T);

/// `error` with the upstream's request id, unless it has one.
pub(crate) fn with_request_id(error: UpstreamError, request_id: Option<&str>) -> UpstreamError {
    match request_id {
        Some(id) if error.request_id().is_none() => error.with_request_id(id),
        _ => error,
    }
}

/// The most of an error body read before giving up on the rest.
const MAX_ERROR_READ: usize = 64 * 1024;

pin_project! {
    #[project = CallProj]
    enum CallState<F, B> {
        Calling { #[pin] future: F },
        Reading { #[pin] body: ReadBody<B>, parts: Option<http::response::Parts> },
        Failed { error: Option<UpstreamError> },
        Done,
    }
}

pin_project! {
    /// The future of a non-streaming provider call: the inner client's answer, read whole (up
    /// to the provider's body limit) and decoded, or a classified [`UpstreamError`].
    pub struct ResponseFuture<F, B, T> {
        #[pin]
        state: CallState<F, B>,
        ctx: CallContext,
        decode: Decode<T>,
        call: CallObs,
        answered: Answered<T>,
        // How many items the answer must hold (an embeddings answer: one vector per input),
        // and how to count them.
        expect: Option<(usize, fn(&T) -> usize)>,
    }
}

impl<F, B, T> fmt::Debug for ResponseFuture<F, B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("provider", &self.ctx.provider)
            .finish_non_exhaustive()
    }
}

impl<F, B, T> ResponseFuture<F, B, T> {
    pub(crate) fn new(
        future: F,
        ctx: CallContext,
        decode: Decode<T>,
        call: CallObs,
        answered: Answered<T>,
    ) -> Self {
        ResponseFuture {
            state: CallState::Calling { future },
            ctx,
            decode,
            call,
            answered,
            expect: None,
        }
    }

    pub(crate) fn failed(
        error: UpstreamError,
        ctx: CallContext,
        decode: Decode<T>,
        call: CallObs,
        answered: Answered<T>,
    ) -> Self {
        ResponseFuture {
            state: CallState::Failed { error: Some(error) },
            ctx,
            decode,
            call,
            answered,
            expect: None,
        }
    }

    /// The answer must hold `items` items, as `count` counts them; one that holds another
    /// number is a malformed answer (a vector missing from an embeddings answer would leave
    /// a caller's texts paired with the wrong vectors).
    pub(crate) fn expecting(mut self, items: usize, count: fn(&T) -> usize) -> Self {
        self.expect = Some((items, count));
        self
    }
}

fn polled_after_completion(ctx: &CallContext) -> UpstreamError {
    ctx.error(
        FailureKind::Other,
        "response future polled after completion",
    )
}

/// The error for a finished read of a non-success answer.
fn status_error(
    ctx: &CallContext,
    parts: &http::response::Parts,
    read: Result<Bytes, ReadError>,
) -> UpstreamError {
    match read {
        Ok(body) => (ctx.hooks.status_error)(ctx, parts.status, &parts.headers, body, None),
        Err(ReadError::TooLarge(start)) => (ctx.hooks.status_error)(
            ctx,
            parts.status,
            &parts.headers,
            start.slice(..start.len().min(MAX_ERROR_BODY)),
            Some("error body too large to read whole"),
        ),
        Err(ReadError::Body(_, start)) => (ctx.hooks.status_error)(
            ctx,
            parts.status,
            &parts.headers,
            start,
            Some("error body cut short"),
        ),
    }
}

impl<F, B, E, T> Future for ResponseFuture<F, B, T>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<T, UpstreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = {
            let _entered = self.call.enter();
            ready!(self.as_mut().poll_inner(cx))
        };
        let this = self.project();
        match &result {
            Ok(answer) => (this.answered)(this.call, answer),
            Err(error) => this.call.failed(error, None, None),
        }
        Poll::Ready(result)
    }
}

impl<F, B, E, T> ResponseFuture<F, B, T>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn poll_inner(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, UpstreamError>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                CallProj::Calling { future } => match ready!(future.poll(cx)) {
                    Err(error) => {
                        this.state.set(CallState::Done);
                        return Poll::Ready(Err(this
                            .ctx
                            .transport("request failed", error.into())));
                    }
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        let limit = if parts.status.is_success() {
                            this.ctx.max_body
                        } else {
                            MAX_ERROR_READ
                        };
                        this.state.set(CallState::Reading {
                            body: ReadBody::new(body, limit),
                            parts: Some(parts),
                        });
                    }
                },
                CallProj::Reading { body, parts } => {
                    let read = ready!(body.poll_read(cx));
                    let Some(parts) = parts.take() else {
                        return Poll::Ready(Err(polled_after_completion(this.ctx)));
                    };
                    this.state.set(CallState::Done);
                    if !parts.status.is_success() {
                        return Poll::Ready(Err(status_error(this.ctx, &parts, read)));
                    }
                    let meta = this.ctx.meta(parts.status, &parts.headers);
                    let request_id = meta.request_id.clone();
                    let result = match read {
                        Ok(bytes) => {
                            // The body is kept (a reference count) only for a count to check.
                            let expect = this.expect.map(|expect| (expect, bytes.clone()));
                            (this.decode)(this.ctx, bytes, meta).and_then(|answer| match expect {
                                Some(((items, count), body)) if count(&answer) != items => {
                                    Err(this.ctx.malformed(
                                        "answer",
                                        &body,
                                        format_args!("{} items for {items} inputs", count(&answer)),
                                    ))
                                }
                                _ => Ok(answer),
                            })
                        }
                        Err(ReadError::TooLarge(start)) => {
                            let error = this
                                .ctx
                                .error(
                                    FailureKind::Other,
                                    format!(
                                        "response body larger than {} bytes",
                                        this.ctx.max_body
                                    ),
                                )
                                .with_status(parts.status);
                            Err(this.ctx.with_body(error, start))
                        }
                        Err(ReadError::Body(error, start)) => {
                            let error = this
                                .ctx
                                .transport("response body cut short", error)
                                .with_status(parts.status);
                            Err(this.ctx.with_body(error, start))
                        }
                    };
                    return Poll::Ready(
                        result.map_err(|error| with_request_id(error, request_id.as_deref())),
                    );
                }
                CallProj::Failed { error } => {
                    let error = error
                        .take()
                        .unwrap_or_else(|| polled_after_completion(this.ctx));
                    this.state.set(CallState::Done);
                    return Poll::Ready(Err(error));
                }
                CallProj::Done => return Poll::Ready(Err(polled_after_completion(this.ctx))),
            }
        }
    }
}

pin_project! {
    /// The future of a streaming provider call: resolves to a [`ChatStream`] once the
    /// provider answers `200` with an event stream, or to a classified [`UpstreamError`].
    /// The stream's first-token and total timeouts already run while it waits for headers.
    pub struct StreamFuture<F, B> {
        #[pin]
        state: CallState<F, B>,
        ctx: CallContext,
        timeouts: StreamTimeouts,
        started: Instant,
        deadline: Option<Pin<Box<Sleep>>>,
        max_event_bytes: usize,
        // Taken by the stream when the head arrives.
        call: Option<CallObs>,
    }
}

impl<F, B> fmt::Debug for StreamFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamFuture")
            .field("provider", &self.ctx.provider)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl<F, B> StreamFuture<F, B> {
    pub(crate) fn new(
        state: Result<F, UpstreamError>,
        ctx: CallContext,
        timeouts: StreamTimeouts,
        max_event_bytes: usize,
        call: CallObs,
    ) -> Self {
        let started = Instant::now();
        // A call with a deadline (core's `Deadline`, current while `call` runs) ends there,
        // stream included: the layer that set it sees only the head.
        let timeouts = timeouts.within(tower_llm_core::Deadline::current());
        let deadline = timeouts
            .before_first(started)
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        StreamFuture {
            state: match state {
                Ok(future) => CallState::Calling { future },
                Err(error) => CallState::Failed { error: Some(error) },
            },
            ctx,
            timeouts,
            started,
            deadline,
            max_event_bytes,
            call: Some(call),
        }
    }
}

impl<F, B, E> Future for StreamFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<ChatStream<B>, UpstreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = {
            let _entered = self.call.as_ref().map(CallObs::enter);
            ready!(self.as_mut().poll_inner(cx))
        };
        if let (Err(error), Some(call)) = (&result, self.as_mut().project().call) {
            call.failed(error, None, None);
        }
        Poll::Ready(result)
    }
}

impl<F, B, E> StreamFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn poll_inner(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ChatStream<B>, UpstreamError>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                CallProj::Calling { future } => match future.poll(cx) {
                    Poll::Pending => {
                        if let Some(deadline) = this.deadline.as_mut()
                            && deadline.as_mut().poll(cx).is_ready()
                        {
                            this.state.set(CallState::Done);
                            return Poll::Ready(Err(before_first_timeout(this.ctx, this.timeouts)));
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(error)) => {
                        this.state.set(CallState::Done);
                        return Poll::Ready(Err(this
                            .ctx
                            .transport("request failed", error.into())));
                    }
                    Poll::Ready(Ok(response)) => {
                        let (parts, body) = response.into_parts();
                        if parts.status.is_success() && (this.ctx.hooks.is_stream)(&parts.headers) {
                            this.state.set(CallState::Done);
                            let meta = this.ctx.meta(parts.status, &parts.headers);
                            return Poll::Ready(Ok(ChatStream::new(
                                body,
                                this.ctx.clone(),
                                meta,
                                *this.timeouts,
                                *this.started,
                                *this.max_event_bytes,
                                this.call.take().unwrap_or_else(CallObs::none),
                            )));
                        }
                        this.state.set(CallState::Reading {
                            body: ReadBody::new(body, MAX_ERROR_READ),
                            parts: Some(parts),
                        });
                    }
                },
                CallProj::Reading { body, parts } => {
                    let read = match body.poll_read(cx) {
                        Poll::Ready(read) => read,
                        Poll::Pending => {
                            // An error body that stalls must not outlive the stream's limits.
                            if let Some(deadline) = this.deadline.as_mut()
                                && deadline.as_mut().poll(cx).is_ready()
                            {
                                this.state.set(CallState::Done);
                                return Poll::Ready(Err(before_first_timeout(
                                    this.ctx,
                                    this.timeouts,
                                )));
                            }
                            return Poll::Pending;
                        }
                    };
                    let Some(parts) = parts.take() else {
                        return Poll::Ready(Err(polled_after_completion(this.ctx)));
                    };
                    this.state.set(CallState::Done);
                    if parts.status.is_success() {
                        // A 200 that is not the protocol's stream: a JSON error some servers
                        // send with 200, or a proxy's page.
                        let body = match read {
                            Ok(b) | Err(ReadError::TooLarge(b)) | Err(ReadError::Body(_, b)) => b,
                        };
                        let content_type = parts
                            .headers
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let error = match serde_json::from_slice::<serde_json::Value>(&body) {
                            Ok(value) if value.get("error").is_some() => this
                                .ctx
                                .for_error_value(&value, &String::from_utf8_lossy(&body)),
                            _ => this.ctx.malformed(
                                "streaming answer",
                                &body,
                                format!("expected a stream, got {content_type:?}"),
                            ),
                        };
                        let error = with_request_id(
                            error.with_status(parts.status),
                            crate::meta::request_id(&parts.headers)
                                .map(|id| this.ctx.scrub(id))
                                .as_deref(),
                        );
                        return Poll::Ready(Err(error));
                    }
                    return Poll::Ready(Err(status_error(this.ctx, &parts, read)));
                }
                CallProj::Failed { error } => {
                    let error = error
                        .take()
                        .unwrap_or_else(|| polled_after_completion(this.ctx));
                    this.state.set(CallState::Done);
                    return Poll::Ready(Err(error));
                }
                CallProj::Done => return Poll::Ready(Err(polled_after_completion(this.ctx))),
            }
        }
    }
}

/// The timeout that fired before the first chunk: the first-token one when it is the shorter.
fn before_first_timeout(ctx: &CallContext, timeouts: &StreamTimeouts) -> UpstreamError {
    let first = timeouts.first_token;
    let total = timeouts.total;
    if first.is_some() && (total.is_none() || first <= total) {
        timeout(ctx, "first-token", first)
    } else {
        timeouts.total_elapsed(ctx)
    }
}
