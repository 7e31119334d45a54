//! Responses that finish later: a stream is returned at its first byte and ends much later.
//!
//! A layer that holds something for the length of a call (a concurrency slot, a token
//! reservation, a breaker's probe slot) or judges a call by how it went must wait for a
//! stream's end, not its head. A streaming response type carries an [`EndSignal`]; a layer
//! reaches it through [`ClassifyResponse::end_signal`](crate::ClassifyResponse::end_signal)
//! (or [`Classify::end_signal`](crate::Classify::end_signal)) and hangs a hook on it; the
//! stream fires it once, with how it ended ([`StreamEnd`]). A whole answer has no signal, and
//! the layer finishes with it at once: the check is one inlined `None` for those.
//!
//! Bring your own stream type: hold an `EndSignal`, call [`finish`](EndSignal::finish) at its
//! terminal event or its first error, and return it from `end_signal`. A stream dropped
//! before either tells its hooks [`StreamEnd::Dropped`] by itself.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use tower_llm_core::{ClassifyResponse, EndSignal, Outcome, StreamEnd, Usage};
//!
//! /// A user's own streamed answer.
//! struct MyStream {
//!     end: EndSignal,
//! }
//!
//! impl ClassifyResponse for MyStream {
//!     fn classify_response(&self) -> Outcome {
//!         Outcome::Success
//!     }
//!     fn end_signal(&mut self) -> Option<&mut EndSignal> {
//!         Some(&mut self.end)
//!     }
//! }
//!
//! let seen = Arc::new(Mutex::new(None));
//! let mut stream = MyStream { end: EndSignal::new() };
//! // What a layer does with the response it passes on:
//! let record = Arc::clone(&seen);
//! stream
//!     .end_signal()
//!     .unwrap()
//!     .on_end(move |end| *record.lock().unwrap() = Some(end.clone()));
//! // What the stream does at its terminal event:
//! let usage = Usage::new(10, 5);
//! stream.end.finish(StreamEnd::Completed { usage: Some(usage) });
//! assert_eq!(*seen.lock().unwrap(), Some(StreamEnd::Completed { usage: Some(usage) }));
//! ```

use std::fmt;

use crate::classify::{Failure, FailureKind, Outcome};
use crate::cost::Usage;

/// How a response that went on after it was returned (a stream) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEnd {
    /// Its terminal event arrived: the call succeeded, with the usage the stream reported, if
    /// it reported any.
    Completed {
        /// The usage the stream reported (OpenAI's `include_usage` chunk, Anthropic's
        /// `message_delta`, Gemini's `usageMetadata`), if any.
        usage: Option<Usage>,
    },
    /// It failed after it started: an error event, a cut connection, a stall, a malformed
    /// event.
    Failed(Failure),
    /// The caller dropped it before its end: nothing is known about the upstream's health.
    Dropped,
}

impl StreamEnd {
    /// The outcome of the call the stream was: `None` for a stream the caller dropped (a
    /// dropped call is neither a success nor a failure).
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            StreamEnd::Completed { .. } => Some(Outcome::Success),
            StreamEnd::Failed(failure) => Some(Outcome::Failure(*failure)),
            StreamEnd::Dropped => None,
        }
    }

    /// The usage a completed stream reported.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            StreamEnd::Completed { usage } => *usage,
            _ => None,
        }
    }

    /// A failure of `kind`.
    pub fn failed(kind: FailureKind) -> Self {
        StreamEnd::Failed(Failure::new(kind))
    }
}

type Hook = Box<dyn FnOnce(&StreamEnd) + Send + Sync>;

/// Where layers wait for a stream's end: hooks hung on it run once, in the order they were
/// hung, when the stream [finishes](EndSignal::finish), or with [`StreamEnd::Dropped`] when it
/// is dropped first.
///
/// It allocates only when a hook is hung. Hooks run on the task that polls (or drops) the
/// stream; they are short (release a permit, record an outcome) and must not block.
#[derive(Default)]
pub struct EndSignal {
    hooks: Vec<Hook>,
    ended: Option<StreamEnd>,
}

impl EndSignal {
    /// A signal with no hooks, not yet ended.
    pub const fn new() -> Self {
        EndSignal {
            hooks: Vec::new(),
            ended: None,
        }
    }

    /// Runs `hook` with the stream's end: when it comes, or at once if it already came. A hook
    /// must be short and must not panic (it may run inside the stream's `Drop`).
    pub fn on_end(&mut self, hook: impl FnOnce(&StreamEnd) + Send + Sync + 'static) {
        match &self.ended {
            Some(end) => hook(end),
            None => self.hooks.push(Box::new(hook)),
        }
    }

    /// Ends the stream: every hook runs with `end`. Only the first end counts; later ones
    /// are ignored (an error after the terminal event changes nothing).
    pub fn finish(&mut self, end: StreamEnd) {
        if self.ended.is_some() {
            return;
        }
        for hook in self.hooks.drain(..) {
            hook(&end);
        }
        self.ended = Some(end);
    }

    /// How the stream ended, once it has.
    pub fn ended(&self) -> Option<&StreamEnd> {
        self.ended.as_ref()
    }

    /// Whether any hook is waiting.
    pub fn is_watched(&self) -> bool {
        !self.hooks.is_empty()
    }
}

impl Drop for EndSignal {
    fn drop(&mut self) {
        if self.hooks.is_empty() {
            return;
        }
        if std::thread::panicking() {
            // Dropped while the thread unwinds: a hook that panicked now would abort the
            // process. Each runs on its own, and a panic in one is swallowed.
            for hook in self.hooks.drain(..) {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    hook(&StreamEnd::Dropped);
                }));
            }
            return;
        }
        self.finish(StreamEnd::Dropped);
    }
}

impl fmt::Debug for EndSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndSignal")
            .field("hooks", &self.hooks.len())
            .field("ended", &self.ended)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Seen = Arc<Mutex<Vec<(usize, StreamEnd)>>>;

    /// A hook that records the end it is given, as hook number `n`.
    fn hook(seen: &Seen, n: usize) -> impl FnOnce(&StreamEnd) + Send + Sync + 'static {
        let seen = Arc::clone(seen);
        move |end| seen.lock().unwrap().push((n, end.clone()))
    }

    #[test]
    fn hooks_run_once_in_order_with_the_first_end() {
        let seen = Seen::default();
        let mut signal = EndSignal::new();
        signal.on_end(hook(&seen, 1));
        signal.on_end(hook(&seen, 2));
        signal.finish(StreamEnd::failed(FailureKind::Transport));
        signal.finish(StreamEnd::Completed { usage: None });
        drop(signal);
        let failed = StreamEnd::failed(FailureKind::Transport);
        assert_eq!(*seen.lock().unwrap(), [(1, failed.clone()), (2, failed)]);
    }

    #[test]
    fn a_dropped_signal_tells_its_hooks() {
        let seen = Seen::default();
        let mut signal = EndSignal::new();
        signal.on_end(hook(&seen, 1));
        drop(signal);
        assert_eq!(*seen.lock().unwrap(), [(1, StreamEnd::Dropped)]);
    }

    #[test]
    fn a_hook_hung_after_the_end_runs_at_once() {
        let seen = Seen::default();
        let mut signal = EndSignal::new();
        signal.finish(StreamEnd::Completed { usage: None });
        signal.on_end(hook(&seen, 1));
        assert_eq!(
            *seen.lock().unwrap(),
            [(1, StreamEnd::Completed { usage: None })]
        );
    }

    #[test]
    fn outcomes() {
        assert_eq!(
            StreamEnd::Completed { usage: None }.outcome(),
            Some(Outcome::Success)
        );
        assert_eq!(StreamEnd::Dropped.outcome(), None);
        let failed = StreamEnd::failed(FailureKind::Timeout).outcome().unwrap();
        assert_eq!(failed.kind(), Some(FailureKind::Timeout));
    }
}
