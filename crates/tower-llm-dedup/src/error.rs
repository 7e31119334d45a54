//! The layer's errors.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use tower_llm_core::BoxError;

/// One failure delivered to every caller that shared an upstream call.
///
/// It is cheap to clone and shows the original error through [`source`](StdError::source),
/// so core's classifier (which walks the source chain) classifies it exactly as the original:
/// a shared 429 is still rate limited, with its retry-after.
#[derive(Clone)]
pub struct SharedError {
    inner: Arc<dyn StdError + Send + Sync + 'static>,
}

impl SharedError {
    pub(crate) fn new(error: BoxError) -> Self {
        SharedError {
            inner: Arc::from(error),
        }
    }

    /// The original error.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.inner
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedError").field(&self.inner).finish()
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shared upstream call failed: {}", self.inner)
    }
}

impl StdError for SharedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.inner)
    }
}

/// The inner service's future (or stream) panicked while driving a shared call. Every caller
/// waiting on that call gets this error instead of hanging.
#[derive(Clone, Debug)]
pub struct InnerPanicked {
    message: String,
}

impl InnerPanicked {
    pub(crate) fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = tower_llm_core::panic_message(payload).to_owned();
        InnerPanicked { message }
    }

    /// The panic's message, when it had one.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for InnerPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the inner service panicked: {}", self.message)
    }
}

impl StdError for InnerPanicked {}

pub use tower_llm_core::ConfigError;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower_llm_core::{FailureKind, RateLimited, classify_dyn_error};

    #[test]
    fn classification_survives_sharing() {
        let original: BoxError = Box::new(RateLimited::new("quota", Some(Duration::from_secs(3))));
        let expected = classify_dyn_error(&*original);
        let shared = SharedError::new(original);
        let failure = classify_dyn_error(&shared);
        assert_eq!(failure.kind, expected.kind);
        assert_eq!(failure.kind, FailureKind::RateLimited);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(3)));
        let boxed: BoxError = Box::new(shared.clone());
        assert_eq!(classify_dyn_error(&*boxed).kind, FailureKind::RateLimited);
    }
}
