//! The errors a batched call can end with.
//!
//! Each is boxed into a [`BoxError`] the tower way. [`BatchFailed`] and [`BatchClosed`] keep the
//! original error in their [`source`](StdError::source) chain, so
//! [`classify_dyn_error`](tower_llm_core::classify_dyn_error) (and with it
//! [`DefaultClassifier`](tower_llm_core::DefaultClassifier)) classifies them as the inner
//! service's error: a batch that failed with a 503 is `Overloaded` for every one of its callers.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use tower_llm_core::{BoxError, ClassifyError, Failure, classify_dyn_error};

/// The inner service failed the whole batch; every caller of the batch gets this error, sharing
/// the one original error.
#[derive(Clone, Debug)]
pub struct BatchFailed {
    source: Arc<BoxError>,
    size: usize,
}

impl BatchFailed {
    pub(crate) fn new(source: Arc<BoxError>, size: usize) -> Self {
        BatchFailed { source, size }
    }

    /// The inner service's error.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &**self.source
    }

    /// How many requests the failed batch held.
    pub const fn batch_size(&self) -> usize {
        self.size
    }
}

impl fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} requests failed: {}", self.size, self.source)
    }
}

impl StdError for BatchFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&**self.source)
    }
}

impl ClassifyError for BatchFailed {
    fn classify_error(&self) -> Failure {
        classify_dyn_error(&**self.source)
    }
}

/// A panic in the inner service or the adapter, caught so that it fails only the batch it hit
/// (or, from `poll_ready`, stops the batcher with this as the reason) instead of unwinding the
/// batching task and every other batch with it.
#[derive(Debug)]
pub(crate) struct Panicked {
    during: &'static str,
    message: String,
}

impl Panicked {
    pub(crate) fn boxed(during: &'static str, payload: &(dyn std::any::Any + Send)) -> BoxError {
        let message = tower_llm_core::panic_message(payload).to_owned();
        Box::new(Panicked { during, message })
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panicked in {}: {}", self.during, self.message)
    }
}

impl StdError for Panicked {}

/// The batching task has stopped: the inner service failed `poll_ready` (its error is the
/// source), or the runtime that ran the task shut down.
#[derive(Clone, Debug)]
pub struct BatchClosed {
    source: Option<Arc<BoxError>>,
}

impl BatchClosed {
    pub(crate) fn new(source: Option<Arc<BoxError>>) -> Self {
        BatchClosed { source }
    }
}

impl fmt::Display for BatchClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "batching stopped: inner service failed: {source}"),
            None => f.write_str("batching stopped: its task is gone"),
        }
    }
}

impl StdError for BatchClosed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| &**e as &(dyn StdError + 'static))
    }
}

impl ClassifyError for BatchClosed {
    fn classify_error(&self) -> Failure {
        classify_dyn_error(self)
    }
}

/// The batch response had no answer for this caller's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemMissing {
    position: usize,
}

impl ItemMissing {
    /// No answer for the request at `position` in its batch.
    pub const fn new(position: usize) -> Self {
        ItemMissing { position }
    }

    /// The request's position in its batch.
    pub const fn position(&self) -> usize {
        self.position
    }
}

impl fmt::Display for ItemMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the batch response has no answer for request {} of the batch",
            self.position
        )
    }
}

impl StdError for ItemMissing {}

/// A [`VecAdapter`](crate::VecAdapter)'s inner service answered a different number of results
/// than it was sent, so no result can be trusted to belong to its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LengthMismatch {
    pub(crate) sent: usize,
    pub(crate) received: usize,
}

impl LengthMismatch {
    /// A batch of `sent` requests answered with `received` results.
    pub const fn new(sent: usize, received: usize) -> Self {
        LengthMismatch { sent, received }
    }

    /// Requests in the batch.
    pub const fn sent(&self) -> usize {
        self.sent
    }

    /// Results in the response.
    pub const fn received(&self) -> usize {
        self.received
    }
}

impl fmt::Display for LengthMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the inner service answered {} results for a batch of {}",
            self.received, self.sent
        )
    }
}

impl StdError for LengthMismatch {}

pub use tower_llm_core::ConfigError;
