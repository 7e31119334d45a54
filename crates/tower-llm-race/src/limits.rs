//! What fallback and hedge read from across the stack: the call's [`Deadline`] and a shared
//! [`AttemptBudget`].

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep, sleep_until};
use tower_llm_core::{AttemptBudget, Deadline, Failure, FailureKind, Spender, UpstreamError};

use crate::error::ServiceFailure;

/// The deadline of one call, read as it was made, and a timer on it armed only once the call
/// has to wait.
#[derive(Debug)]
pub(crate) struct CallDeadline {
    deadline: Option<Deadline>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl CallDeadline {
    /// The deadline current now (the caller's [`DeadlineLayer`](tower_llm_core::DeadlineLayer)
    /// makes it current while the strategy is called and polled), if any.
    pub(crate) fn current() -> Self {
        CallDeadline {
            deadline: Deadline::current(),
            timer: None,
        }
    }

    /// Whether the deadline has passed: nothing more may start.
    pub(crate) fn has_passed(&self) -> bool {
        self.deadline.is_some_and(Deadline::has_passed)
    }

    /// Whether a call started at `at` would start before the deadline.
    pub(crate) fn allows_start_at(&self, at: Instant) -> bool {
        self.deadline.is_none_or(|deadline| at < deadline.instant())
    }

    /// Ready once the deadline has passed; never, without one. Polled after the calls in
    /// flight, so an answer arriving at the deadline itself still wins.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        // Boxed: only calls with a deadline that have to wait pay for a timer.
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(sleep_until(deadline.instant())));
        timer.as_mut().poll(cx)
    }
}

/// The failure listed for a call still running when the deadline passed.
pub(crate) fn cut_at_deadline(service: usize) -> ServiceFailure {
    let error = UpstreamError::new(FailureKind::Timeout, "still running at the call's deadline");
    ServiceFailure::new(
        service,
        Failure::new(FailureKind::Timeout),
        Some(error.into()),
    )
}

/// A strategy's account on a shared [`AttemptBudget`].
#[derive(Clone, Debug)]
pub(crate) struct SharedBudget {
    spender: Spender,
}

impl SharedBudget {
    /// Registers the strategy `role` named `name` as a spender of `budget`.
    pub(crate) fn new(budget: &AttemptBudget, role: &'static str, name: &str) -> Self {
        SharedBudget {
            spender: budget.spender(role, name.to_owned()),
        }
    }

    pub(crate) fn budget(&self) -> &AttemptBudget {
        self.spender.budget()
    }

    /// A call came in: counted unless a layer further out holding the budget counted it.
    #[inline]
    pub(crate) fn on_request(&self) {
        self.spender.budget().deposit_once();
    }

    /// Takes one extra call; `false` when the budget is spent (the refusal is counted).
    pub(crate) fn spend(&self) -> bool {
        self.spender.spend()
    }
}
