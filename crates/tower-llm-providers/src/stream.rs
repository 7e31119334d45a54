//! Streamed answers: SSE events decoded into [`ChatChunk`]s, with timeouts.
//!
//! A [`ChatStream`] yields `Ok(chunk)` items, then ends (`None`) only after the provider's
//! terminal event (OpenAI `data: [DONE]`, Anthropic `message_stop`, Gemini's last candidate
//! with a `finishReason`). An error event inside the stream, a connection cut, a stream that
//! ends without its terminal event or a timeout yields one classified `Err` item, after which
//! the stream ends.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_core::Stream;
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_llm_core::{
    BoxError, ClassifyError, EndSignal, FailureKind, StreamEnd, UpstreamError, Usage,
};

use crate::chat::{BlockAccumulator, ChatChunk, ChatResponse, FinishReason, ToolCall};
use crate::error::CallContext;
use crate::future::with_request_id;
use crate::meta::ResponseMeta;
use crate::observe::CallObs;
use crate::protocol::{Decoding, Step};
use crate::{anthropic, gemini, openai};

/// Timeouts of a streamed answer, on tokio's clock.
///
/// On by default ([`StreamTimeouts::default`]), so that a stalled upstream cannot hold a caller
/// (and whatever the layers hold for the call) for as long as it likes:
///
/// | limit | default | runs |
/// |---|---|---|
/// | `first_token` | 10 min | from the request being sent to the first chunk handed over |
/// | `between_chunks` | 10 min | from the response head, then from each sign of life (an event read) or chunk asked for |
/// | `total` | none | from the request being sent to the end |
///
/// A call made with a [`Deadline`](tower_llm_core::Deadline) current (set by
/// [`DeadlineLayer`](tower_llm_core::DeadlineLayer) or the gateway) has its `total` cut to the
/// time left: the stream, which outlives the layer that set the deadline, ends there too.
///
/// The values follow what real providers need: a reasoning model (OpenAI's o-series, Claude or
/// Gemini thinking) may think for minutes before its first token, and OpenAI's Chat
/// Completions sends nothing while it does (Anthropic sends `ping` events and thinking
/// deltas, which count as signs of life); the official SDKs wait 10 minutes. A long answer is
/// legitimate, so the whole stream has no limit unless you set one. [`StreamTimeouts::none`]
/// turns every limit off. The silence limit is as long as the first-token one: a server that
/// sends its head at once and then thinks in silence (OpenAI's does) must not be cut before
/// the first token could come; the SDKs' read timeout is the same 10 minutes between any two
/// reads. Set a shorter `between_chunks` for models that do not think silently.
///
/// `between_chunks` runs from the response head on, so a stall right after the head, after
/// OpenAI's role-only first chunk or after Anthropic's `message_start` is caught like a stall
/// mid-answer. Its clock restarts when the caller asks for the next chunk, not when the last
/// one was handed over: time the caller spends on a chunk is not held against the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// The most time until the first chunk (headers included).
    pub first_token: Option<Duration>,
    /// The most silence from the server once its response head has arrived.
    pub between_chunks: Option<Duration>,
    /// The most time for the whole answer.
    pub total: Option<Duration>,
    /// `total` is the time left before the caller's deadline, shorter than any limit of the
    /// provider's own: when it fires, the caller gave up, the upstream did not fail.
    total_from_deadline: bool,
}

impl Default for StreamTimeouts {
    /// 10 minutes to the first chunk, 10 minutes of silence at most, no limit on the whole.
    fn default() -> Self {
        StreamTimeouts {
            first_token: Some(Self::DEFAULT_FIRST_TOKEN),
            between_chunks: Some(Self::DEFAULT_BETWEEN_CHUNKS),
            total: None,
            total_from_deadline: false,
        }
    }
}

impl StreamTimeouts {
    /// The default `first_token` limit: 10 minutes.
    pub const DEFAULT_FIRST_TOKEN: Duration = Duration::from_secs(600);

    /// The default `between_chunks` limit: 10 minutes, as long as `first_token`'s (a silent
    /// think after an early response head must not be cut first).
    pub const DEFAULT_BETWEEN_CHUNKS: Duration = Duration::from_secs(600);

    /// No limits: a stalled upstream holds the caller until it closes the connection.
    pub const fn none() -> Self {
        StreamTimeouts {
            first_token: None,
            between_chunks: None,
            total: None,
            total_from_deadline: false,
        }
    }

    /// Sets the first-token timeout.
    pub const fn first_token(mut self, limit: Duration) -> Self {
        self.first_token = Some(limit);
        self
    }

    /// Sets the between-chunks timeout.
    pub const fn between_chunks(mut self, limit: Duration) -> Self {
        self.between_chunks = Some(limit);
        self
    }

    /// Sets the total timeout.
    pub const fn total(mut self, limit: Duration) -> Self {
        self.total = Some(limit);
        self
    }

    /// These limits, with `total` cut to the time left before `deadline` (the call's own,
    /// when it has one).
    pub(crate) fn within(mut self, deadline: Option<tower_llm_core::Deadline>) -> Self {
        if let Some(deadline) = deadline {
            let left = deadline.time_left();
            if self.total.is_none_or(|total| left < total) {
                self.total = Some(left);
                self.total_from_deadline = true;
            }
        }
        self
    }

    /// The error of the `total` limit firing: a timeout of the upstream's, or, when the limit
    /// was the caller's deadline, a cancellation. A breaker, an adaptive limit or a fallback
    /// must not hold a short deadline a client chose against the provider.
    pub(crate) fn total_elapsed(&self, ctx: &CallContext) -> UpstreamError {
        if self.total_from_deadline {
            ctx.error(
                FailureKind::Cancelled,
                format!(
                    "the call's deadline passed {:?} into the stream",
                    self.total.unwrap_or_default()
                ),
            )
        } else {
            timeout(ctx, "total", self.total)
        }
    }

    /// The earliest limit that applies before the first chunk.
    pub(crate) fn before_first(&self, started: Instant) -> Option<Instant> {
        match (self.first_token, self.total) {
            (Some(a), Some(b)) => deadline(started, a.min(b)),
            (Some(a), None) | (None, Some(a)) => deadline(started, a),
            (None, None) => None,
        }
    }
}

/// `from + limit`, or no deadline when that is past what the clock can hold (`Instant + Duration`
/// panics on overflow, and a limit like `Duration::MAX` means "no limit" in practice).
pub(crate) fn deadline(from: Instant, limit: Duration) -> Option<Instant> {
    from.checked_add(limit)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Reading,
    /// The terminal event has arrived: the answer is complete. What is left of the body (the
    /// chunked terminator, a trailing newline) is read so that the connection goes back to
    /// the pool and the upstream is done before the layers let the next call go, as the
    /// official SDKs do; a server that holds the body open after its terminal event is
    /// waited for at most [`DRAIN_GRACE`] (1 s) and [`MAX_DRAIN`] bytes. The stream's end
    /// (and its signal) comes after that, when the caller polls it once more.
    Draining,
    BodyEnded,
    Finished,
}

/// The most bytes read after the terminal event before giving up on the body's end.
const MAX_DRAIN: usize = 64 * 1024;

/// How long the body's end is waited for after the terminal event.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

pin_project! {
    /// A streamed chat answer: a [`Stream`] of `Result<ChatChunk, UpstreamError>`.
    ///
    /// `B` is the inner client's response body ([`hyper::body::Incoming`] with the default
    /// client). Dropping the stream drops the body, which closes (or, once read to the end,
    /// returns to the pool) its connection.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use tower::{ServiceExt, service_fn};
    /// use tower_llm_providers::{ChatChunk, ChatRequest, Message, OpenAi, RequestBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let http = service_fn(|_request: http::Request<RequestBody>| async move {
    ///     let events = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\
    ///                   data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
    ///                   data: [DONE]\n\n";
    ///     let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(events)));
    ///     response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    ///     Ok::<_, std::convert::Infallible>(response)
    /// });
    /// let openai = OpenAi::builder().api_key("sk-test").build_with(http).unwrap();
    /// let request = ChatRequest::new("gpt-4o-mini", vec![Message::user("Hi")]).streaming();
    /// let mut stream = openai.oneshot(request).await.unwrap();
    /// let mut text = String::new();
    /// while let Some(chunk) = stream.next().await {
    ///     if let ChatChunk::Content(delta) = chunk.unwrap() {
    ///         text.push_str(&delta);
    ///     }
    /// }
    /// assert_eq!(text, "Hi");
    /// # }
    /// ```
    pub struct ChatStream<B> {
        #[pin]
        body: B,
        // The protocol's framing and event decoder.
        decoding: Decoding,
        // What is left of the last read: parsed one event at a time, as the caller asks.
        input: Bytes,
        pending: VecDeque<ChatChunk>,
        ctx: CallContext,
        meta: ResponseMeta,
        usage: Option<Usage>,
        timeouts: StreamTimeouts,
        // Until the first chunk is handed over: the first-token limit.
        first_timer: Option<Pin<Box<Sleep>>>,
        // The between-chunks limit: from the head, then from each sign of life. The instant
        // moves with every event; the timer is only set to it when the stream is about to wait
        // (resetting a tokio timer takes the driver's lock: once per wait, not per event).
        silence_at: Option<Instant>,
        silence_timer: Option<Pin<Box<Sleep>>>,
        total_timer: Option<Pin<Box<Sleep>>>,
        // A chunk was handed over: restart the between-chunks timer on the next poll.
        rearm: bool,
        phase: Phase,
        // Bytes read after the terminal event, once it has come.
        drained: Option<usize>,
        // Fired once: at the terminal event, at the first error, or when dropped (as a
        // completed answer once the finish chunk was handed over or the terminal event
        // decoded, as dropped before that).
        end: EndSignal,
        // A `ChatChunk::Finish` has been handed over: the caller has the whole answer.
        finish_seen: bool,
        // The call's span and metrics: they end with the stream.
        call: CallObs,
    }

    impl<B> PinnedDrop for ChatStream<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.end.ended().is_some() {
                return;
            }
            // A caller that stops reading once it has the finish chunk (or before reading
            // the chunks the terminal event came with) had a whole answer: the upstream
            // finished it, and the layers count it so, with the usage the stream carried
            // (handed over or still queued). Before that it is a drop, which the layers count
            // as neither.
            let decoded = matches!(*this.phase, Phase::Draining | Phase::Finished);
            if !*this.finish_seen && !decoded {
                return;
            }
            let usage = this.usage.or_else(|| {
                this.pending.iter().find_map(|chunk| match chunk {
                    ChatChunk::Usage(usage) => Some(*usage),
                    _ => None,
                })
            });
            this.call.stream_completed(this.decoding.model(), usage);
            this.end.finish(StreamEnd::Completed { usage });
        }
    }
}

impl<B> fmt::Debug for ChatStream<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("provider", &self.ctx.provider)
            .field("phase", &self.phase)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<B> ChatStream<B> {
    pub(crate) fn new(
        body: B,
        ctx: CallContext,
        meta: ResponseMeta,
        timeouts: StreamTimeouts,
        started: Instant,
        max_event_bytes: usize,
        mut call: CallObs,
    ) -> Self {
        call.stream_head(&meta);
        let timer = |from: Instant, limit: Option<Duration>| {
            limit
                .and_then(|limit| deadline(from, limit))
                .map(|at| Box::pin(tokio::time::sleep_until(at)))
        };
        // The head has arrived: the between-chunks clock starts now.
        let silence_at = timeouts
            .between_chunks
            .and_then(|limit| deadline(Instant::now(), limit));
        let first_timer = timer(started, timeouts.first_token);
        let total_timer = timeouts
            .total
            .and_then(|limit| deadline(started, limit))
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        ChatStream {
            body,
            decoding: Decoding::new(&ctx, max_event_bytes),
            input: Bytes::new(),
            pending: VecDeque::new(),
            ctx,
            meta,
            usage: None,
            timeouts,
            first_timer,
            silence_at,
            silence_timer: None,
            total_timer,
            rearm: false,
            phase: Phase::Reading,
            drained: None,
            end: EndSignal::new(),
            finish_seen: false,
            call,
        }
    }
}

impl<B> ChatStream<B> {
    /// The HTTP facts of the answer: status, request id, rate-limit headers, provider.
    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    /// The model that answered, once the stream has said (OpenAI and Gemini name it in every
    /// chunk, Anthropic in its first event).
    pub fn model(&self) -> Option<&str> {
        self.decoding.model()
    }

    /// The usage the stream reported, once a [`ChatChunk::Usage`] has been handed over.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl<B> tower_llm_core::ResponseUsage for ChatStream<B> {
    /// The usage the stream has reported so far: `None` until its usage chunk has been
    /// read (a limiter that looks when the stream starts sees none and keeps its
    /// reservation).
    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// From the dialect of the provider that answered.
    fn token_counting(&self) -> Option<tower_llm_core::TokenCounting> {
        self.meta.token_counting()
    }
}

impl<B> tower_llm_core::RateLimitHeaders for ChatStream<B> {
    /// The rate-limit headers of the stream's HTTP answer.
    fn rate_limit_headers(&self) -> Option<&http::HeaderMap> {
        Some(&self.meta.headers)
    }
}

impl<B> tower_llm_core::ClassifyResponse for ChatStream<B> {
    /// A stream's head is a success (the provider answered 200 with an event stream); how
    /// the call went is known at its end, through
    /// [`end_signal`](tower_llm_core::ClassifyResponse::end_signal).
    fn classify_response(&self) -> tower_llm_core::Outcome {
        tower_llm_core::Outcome::Success
    }

    /// Fired at the terminal event ([`StreamEnd::Completed`], with the usage the stream
    /// reported), at the first error item (a cut, a stall, an error event, a malformed event:
    /// [`StreamEnd::Failed`]), or when the stream is dropped before either: as
    /// [`StreamEnd::Completed`] (with the usage read so far or already queued) once the
    /// caller has had the finish chunk or the terminal event has been decoded, since the
    /// answer was whole; as [`StreamEnd::Dropped`] before that.
    fn end_signal(&mut self) -> Option<&mut EndSignal> {
        Some(&mut self.end)
    }
}

impl<B> Stream for ChatStream<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Item = Result<ChatChunk, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(self.as_mut().poll_inner(cx));
        match item {
            Some(Err(error)) => {
                let error = with_request_id(error, self.meta.request_id.as_deref());
                let failure = error.classify_error();
                let this = self.as_mut().project();
                this.call.failed(&error, this.decoding.model(), *this.usage);
                this.end.finish(StreamEnd::Failed(failure));
                Poll::Ready(Some(Err(error)))
            }
            None => {
                let this = self.as_mut().project();
                let usage = *this.usage;
                this.call.stream_completed(this.decoding.model(), usage);
                this.end.finish(StreamEnd::Completed { usage });
                Poll::Ready(None)
            }
            Some(Ok(chunk)) => {
                let this = self.as_mut().project();
                match &chunk {
                    ChatChunk::Usage(usage) => *this.usage = Some(*usage),
                    ChatChunk::Finish(_) => *this.finish_seen = true,
                    _ => {}
                }
                this.call.chunk(&chunk, this.decoding.model());
                Poll::Ready(Some(Ok(chunk)))
            }
        }
    }
}

impl<B> ChatStream<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn poll_inner(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<ChatChunk, UpstreamError>>> {
        let mut this = self.project();
        // The between-chunks clock starts when the caller asks for the next chunk, not when
        // the last one was handed over: time the caller spends on a chunk is not the server's
        // silence (the transport reads nothing until it is polled again).
        if std::mem::take(this.rearm) {
            rearm(this.silence_at, this.timeouts.between_chunks);
        }
        loop {
            if let Some(chunk) = this.pending.pop_front() {
                *this.first_timer = None;
                *this.rearm = true;
                return Poll::Ready(Some(Ok(chunk)));
            }
            if *this.phase == Phase::Finished {
                return Poll::Ready(None);
            }
            if *this.phase == Phase::Draining {
                if this.drained.is_none() {
                    // What is left of the body is not the answer: it is not parsed, and a
                    // server that keeps the body open gets a short grace, not the silence
                    // limit (or none).
                    *this.drained = Some(0);
                    *this.input = Bytes::new();
                    rearm(this.silence_at, Some(DRAIN_GRACE));
                }
                let drained = drain(this.body.as_mut(), this.drained, cx);
                let timed_out = silence_elapsed(this.silence_timer, *this.silence_at, cx)
                    || [this.first_timer.as_mut(), this.total_timer.as_mut()]
                        .into_iter()
                        .flatten()
                        .any(|timer| timer.as_mut().poll(cx).is_ready());
                if drained.is_pending() && !timed_out {
                    return Poll::Pending;
                }
                *this.phase = Phase::Finished;
                continue;
            }
            if !this.input.is_empty() {
                let mut rest = &this.input[..];
                let decoded = this.decoding.next(this.ctx, &mut rest, this.pending);
                let used = this.input.len() - rest.len();
                this.input.advance(used);
                match decoded {
                    Ok(None) => {}
                    Ok(Some(step)) => {
                        // A sign of life (a ping or a thinking delta counts too).
                        rearm(this.silence_at, this.timeouts.between_chunks);
                        end_at(step, this.phase);
                    }
                    Err(error) => return Poll::Ready(Some(Err(finish(this.phase, error)))),
                }
                continue;
            }
            if *this.phase == Phase::BodyEnded {
                if this.decoding.end_of_body() {
                    *this.phase = Phase::Finished;
                    continue;
                }
                let error = this.ctx.error(
                    FailureKind::Transport,
                    "stream ended without its terminal event (connection cut or proxy timeout)",
                );
                return Poll::Ready(Some(Err(finish(this.phase, error))));
            }
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        // Zero-copy for hyper's `Bytes` frames.
                        *this.input = data.copy_to_bytes(data.remaining());
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    let error = this.ctx.transport("stream cut", error.into());
                    return Poll::Ready(Some(Err(finish(this.phase, error))));
                }
                Poll::Ready(None) => {
                    *this.phase = Phase::BodyEnded;
                    match this.decoding.finish(this.ctx, this.pending) {
                        Ok(step) => {
                            if let Some(step) = step {
                                end_at(step, this.phase);
                            }
                        }
                        Err(error) => return Poll::Ready(Some(Err(finish(this.phase, error)))),
                    }
                }
                Poll::Pending => {
                    if let Some(timer) = this.total_timer.as_mut()
                        && timer.as_mut().poll(cx).is_ready()
                    {
                        let error = this.timeouts.total_elapsed(this.ctx);
                        return Poll::Ready(Some(Err(finish(this.phase, error))));
                    }
                    if let Some(timer) = this.first_timer.as_mut()
                        && timer.as_mut().poll(cx).is_ready()
                    {
                        let error = timeout(this.ctx, "first-token", this.timeouts.first_token);
                        return Poll::Ready(Some(Err(finish(this.phase, error))));
                    }
                    if silence_elapsed(this.silence_timer, *this.silence_at, cx) {
                        let error =
                            timeout(this.ctx, "between-chunks", this.timeouts.between_chunks);
                        return Poll::Ready(Some(Err(finish(this.phase, error))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// After the terminal event, the stream drains what is left of its body, unless the body has
/// already ended (no blank line after the event): it is not polled again.
fn end_at(step: Step, phase: &mut Phase) {
    if step == Step::Done {
        *phase = if *phase == Phase::BodyEnded {
            Phase::Finished
        } else {
            Phase::Draining
        };
    }
}

/// Restarts the between-chunks clock from now (or drops it when there is no limit).
fn rearm(at: &mut Option<Instant>, limit: Option<Duration>) {
    *at = limit.and_then(|limit| deadline(Instant::now(), limit));
}

/// Whether the between-chunks limit has run out: the timer is set to `at` first (made, moved
/// or dropped), then polled, so that it wakes the task when it does.
fn silence_elapsed(
    timer: &mut Option<Pin<Box<Sleep>>>,
    at: Option<Instant>,
    cx: &mut Context<'_>,
) -> bool {
    let Some(at) = at else {
        *timer = None;
        return false;
    };
    let timer = match timer {
        Some(timer) => {
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            timer
        }
        None => timer.insert(Box::pin(tokio::time::sleep_until(at))),
    };
    timer.as_mut().poll(cx).is_ready()
}

/// Reads the body after the terminal event until it ends (ready), fails or goes past
/// [`MAX_DRAIN`] bytes (ready: the connection is then closed rather than pooled), or has
/// nothing for now (pending). `drained` counts the bytes read so far.
fn drain<B>(mut body: Pin<&mut B>, drained: &mut Option<usize>, cx: &mut Context<'_>) -> Poll<()>
where
    B: Body,
{
    let total = drained.get_or_insert(0);
    loop {
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    *total = total.saturating_add(data.remaining());
                }
                if *total > MAX_DRAIN {
                    return Poll::Ready(());
                }
            }
            Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    }
}

fn finish(phase: &mut Phase, error: UpstreamError) -> UpstreamError {
    *phase = Phase::Finished;
    error
}

pub(crate) fn timeout(ctx: &CallContext, which: &str, limit: Option<Duration>) -> UpstreamError {
    ctx.error(
        FailureKind::Timeout,
        format!(
            "stream {which} timeout of {:?} elapsed",
            limit.unwrap_or_default()
        ),
    )
}

/// Builds a whole [`ChatResponse`] from a stream's chunks, for callers that stream for
/// latency but also want the complete answer.
///
/// ```
/// use tower_llm_providers::{ChatAccumulator, ChatChunk, FinishReason};
///
/// let mut acc = ChatAccumulator::default();
/// acc.push(&ChatChunk::Content("Hel".into()));
/// acc.push(&ChatChunk::Content("lo".into()));
/// acc.push(&ChatChunk::Finish(FinishReason::Stop));
/// let response = acc.finish();
/// assert_eq!(response.content, "Hello");
/// assert_eq!(response.finish_reason, Some(FinishReason::Stop));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ChatAccumulator {
    response: ChatResponse,
    /// The calls by the index the server gave them, in order of first appearance.
    calls: Vec<(u32, ToolCall)>,
    blocks: BlockAccumulator,
}

/// The most tool calls one answer is rebuilt with: pieces of further calls are left out, so
/// that indices a server makes up cannot grow the answer without bound.
const MAX_TOOL_CALLS: usize = 1024;

impl ChatAccumulator {
    /// Adds one chunk.
    pub fn push(&mut self, chunk: &ChatChunk) {
        self.blocks.push(chunk, self.response.content.len());
        match chunk {
            ChatChunk::Content(text) => self.response.content.push_str(text),
            ChatChunk::ToolCall(delta) => {
                // Pieces of several calls may interleave, and a call's first piece may come
                // after a later call's (`index` 1 before 0): each goes to its own call.
                let found = self
                    .calls
                    .iter()
                    .position(|(index, _)| *index == delta.index);
                let at = match found {
                    Some(at) => at,
                    None if self.calls.len() < MAX_TOOL_CALLS => {
                        let call = ToolCall {
                            id: String::new(),
                            name: String::new(),
                            arguments: String::new(),
                        };
                        self.calls.push((delta.index, call));
                        self.calls.len() - 1
                    }
                    None => return,
                };
                let call = &mut self.calls[at].1;
                if let Some(id) = &delta.id {
                    call.id.clone_from(id);
                }
                if let Some(name) = &delta.name {
                    call.name.clone_from(name);
                }
                call.arguments.push_str(&delta.arguments);
            }
            ChatChunk::Usage(usage) => self.response.usage = Some(*usage),
            ChatChunk::Refusal(text) => self
                .response
                .refusal
                .get_or_insert_with(String::new)
                .push_str(text),
            ChatChunk::Finish(reason) => self.response.finish_reason = Some(reason.clone()),
            ChatChunk::Block(_) => {}
        }
    }

    /// The answer so far; its tool calls in the order of their indices.
    pub fn finish(mut self) -> ChatResponse {
        // Each index appears once (`push` merges a call's pieces).
        self.calls.sort_unstable_by_key(|(index, _)| *index);
        let calls: Vec<ToolCall> = self.calls.into_iter().map(|(_, call)| call).collect();
        self.response.blocks = self.blocks.finish(&self.response.content, &calls);
        self.response.tool_calls = calls;
        self.response
    }
}

pub(crate) fn usage(input: u64, output: u64, cached: u64) -> Usage {
    Usage::new(input, output).with_cached_input_tokens(cached)
}

pub(crate) fn finish_reason_openai(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

/// A provider's event stream decoded without I/O: the bytes go in as they arrive, chunks
/// come out. [`ChatStream`] is this over an HTTP body, plus timeouts; use it directly over a
/// transport of your own.
///
/// ```
/// use std::collections::VecDeque;
/// use tower_llm_providers::{ChatChunk, ChunkDecoder};
///
/// let mut decoder = ChunkDecoder::openai();
/// let mut chunks = VecDeque::new();
/// let done = decoder
///     .feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\nda", &mut chunks)
///     .unwrap();
/// assert!(!done);
/// assert_eq!(chunks.pop_front(), Some(ChatChunk::Content("Hi".into())));
/// assert!(decoder.feed(b"ta: [DONE]\n\n", &mut chunks).unwrap());
/// assert!(decoder.finish(&mut chunks).is_ok());
/// ```
#[derive(Debug)]
pub struct ChunkDecoder {
    decoding: Decoding,
    ctx: CallContext,
    done: bool,
}

impl ChunkDecoder {
    fn new(ctx: CallContext) -> Self {
        ChunkDecoder {
            decoding: Decoding::new(&ctx, crate::sse::DEFAULT_MAX_EVENT_BYTES),
            ctx,
            done: false,
        }
    }

    /// A decoder of OpenAI (and compatible, and Azure) chat completion chunks.
    pub fn openai() -> Self {
        ChunkDecoder::new(openai::standalone_context().clone())
    }

    /// A decoder of Anthropic Messages stream events.
    pub fn anthropic() -> Self {
        ChunkDecoder::new(anthropic::standalone_context().clone())
    }

    /// A decoder of Gemini `streamGenerateContent?alt=sse` events.
    pub fn gemini() -> Self {
        ChunkDecoder::new(gemini::standalone_context().clone())
    }

    /// A decoder of protocol `P`'s streams (its framing and its events), named `name` in
    /// its errors.
    pub fn of<P: crate::Protocol>(name: &'static str) -> Self {
        ChunkDecoder::new(CallContext::standalone::<P>(name, name))
    }

    /// Decodes the next bytes, appending chunks to `out`; `true` once the terminal event
    /// has been seen (later bytes are ignored).
    pub fn feed(
        &mut self,
        bytes: &[u8],
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, UpstreamError> {
        let mut bytes = bytes;
        while !self.done {
            match self.decoding.next(&self.ctx, &mut bytes, out)? {
                Some(step) => self.done = step == Step::Done,
                None => break,
            }
        }
        Ok(self.done)
    }

    /// Bytes held for an event not yet complete.
    pub fn buffered(&self) -> usize {
        self.decoding.buffered()
    }

    /// Ends the stream: an error unless it was complete.
    pub fn finish(&mut self, out: &mut VecDeque<ChatChunk>) -> Result<(), UpstreamError> {
        if !self.done && self.decoding.finish(&self.ctx, out)? == Some(Step::Done) {
            self.done = true;
        }
        if self.done || self.decoding.end_of_body() {
            Ok(())
        } else {
            Err(self.ctx.error(
                FailureKind::Transport,
                "stream ended without its terminal event (connection cut or proxy timeout)",
            ))
        }
    }
}
