//! The retry budget: core's [`AttemptBudget`], owned by the layer or shared with other layers.
//!
//! A layer given a [`RetryBudget`] (the default) owns an [`AttemptBudget`] built from it and
//! counts every call it receives. A layer handed a shared budget
//! ([`RetryBuilder::shared_budget`](crate::RetryBuilder::shared_budget)) counts a call only
//! when no layer further out holding the same budget already did, and marks the budget while
//! it calls and polls the inner service, so a fallback or hedge inside it counts nothing again
//! (see core's [`AttemptBudget`] docs).

use std::task::{Context, Poll};

use tower_llm_core::{AttemptBudget, BudgetConfig, BudgetScope, Spender, Withdrawal};
use tower_service::Service;

/// Configuration of a retry budget: how many retries the layer may make, as a fraction of
/// the requests it saw recently, with a floor. It is core's [`BudgetConfig`]; the live budget
/// is core's [`AttemptBudget`], which several layers can share.
///
/// Each request earns `ratio` of a retry, each retry spends one; both expire after the window
/// (kept in ten slots), and `min_per_second × window` retries are always available. In a
/// total outage, upstream attempts within a window stay under `(1 + ratio) × requests +
/// floor`. The budget lives in the layer's shared state: every service the layer builds and
/// every clone draw on it. A call dropped while waiting to retry gives its retry back.
///
/// tower's `TpsBudget` does the same job but rounds the ratio to `1 / n` (0.4 allows 0.5),
/// can be overdrawn by concurrent withdrawals (it checks, then subtracts), and takes a mutex
/// and reads the clock on every deposit, which is the success path. This budget counts in
/// millionths of a retry, serialises withdrawals, and costs a request one relaxed atomic
/// increment.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_retry::RetryBudget;
///
/// // At most one retry per ten requests over the last 30 s, plus 2 retries a second.
/// let budget = RetryBudget::new(0.1)
///     .window(Duration::from_secs(30))
///     .min_per_second(2);
/// assert_eq!(budget.floor(), 60);
/// ```
pub type RetryBudget = BudgetConfig;

/// The budget a layer draws on, and whether other layers share it.
#[derive(Clone, Debug)]
pub(crate) struct LayerBudget {
    spender: Spender,
    shared: bool,
}

impl LayerBudget {
    /// A budget of the layer's own.
    pub(crate) fn own(config: RetryBudget, name: &str) -> Self {
        // The builder checked the configuration; the defaults are valid.
        let budget = AttemptBudget::new(config).unwrap_or_default();
        LayerBudget {
            spender: budget.spender("retry", name.to_owned()),
            shared: false,
        }
    }

    /// A budget handed to the layer, which other layers may hold too.
    pub(crate) fn shared(budget: &AttemptBudget, name: &str) -> Self {
        LayerBudget {
            spender: budget.spender("retry", name.to_owned()),
            shared: true,
        }
    }

    pub(crate) fn budget(&self) -> &AttemptBudget {
        self.spender.budget()
    }

    pub(crate) fn is_shared(&self) -> bool {
        self.shared
    }

    /// A call came in: counted, unless a layer further out holding the same shared budget
    /// already counted it.
    #[inline]
    pub(crate) fn on_request(&self) {
        if self.shared {
            self.budget().deposit_once();
        } else {
            self.budget().deposit();
        }
    }

    pub(crate) fn withdraw(&self) -> Option<Withdrawal> {
        self.spender.withdraw()
    }
}

/// The inner service of a [`Retry`](crate::Retry): called and polled with the layer's
/// shared budget marked in use, so layers inside holding the same budget do not count the
/// call again. With a budget of the layer's own it only passes calls through.
#[derive(Clone, Debug)]
pub struct Budgeted<S> {
    inner: S,
    budget: Option<AttemptBudget>,
}

impl<S> Budgeted<S> {
    pub(crate) fn new(inner: S, budget: Option<&LayerBudget>) -> Self {
        Budgeted {
            inner,
            budget: budget.filter(|b| b.is_shared()).map(|b| b.budget().clone()),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, taken out.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for Budgeted<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BudgetScope<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        match &self.budget {
            None => BudgetScope::none(self.inner.call(request)),
            Some(budget) => budget.scope(budget.enter(|| self.inner.call(request))),
        }
    }
}
