//! One call to one service, readiness included, and a set of such calls in flight.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_llm_core::{AttemptBudget, BoxError, BudgetScope, Classify, Outcome};
use tower_service::Service;

use crate::error::ServiceFailure;

pin_project! {
    /// Waits for a clone of the service to be ready, then calls it and waits for the answer,
    /// so a service that is not ready holds up only its own attempt.
    #[project = AttemptProj]
    pub(crate) enum Attempt<S, Req>
    where
        S: Service<Req>,
    {
        Readying { service: S, request: Option<Req> },
        Calling { #[pin] future: S::Future },
    }
}

impl<S: Service<Req>, Req> Attempt<S, Req> {
    pub(crate) fn new(service: S, request: Req) -> Self {
        Attempt::Readying {
            service,
            request: Some(request),
        }
    }
}

impl<S: Service<Req>, Req> Future for Attempt<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                AttemptProj::Readying { service, request } => {
                    ready!(service.poll_ready(cx))?;
                    let request = request
                        .take()
                        .expect("an attempt leaves Readying as soon as it takes its request");
                    let future = service.call(request);
                    // The service clone is dropped here: the call's future owns what it needs.
                    self.set(Attempt::Calling { future });
                }
                AttemptProj::Calling { future } => return future.poll(cx),
            }
        }
    }
}

/// An attempt polled with the strategy's shared budget marked, if it has one, so a layer
/// inside holding the same budget does not count the request again.
pub(crate) type ScopedAttempt<S, Req> = BudgetScope<Attempt<S, Req>>;

/// Starts an attempt, marked with `budget` (a shared one) when there is one.
pub(crate) fn scoped<S: Service<Req>, Req>(
    budget: Option<&AttemptBudget>,
    service: S,
    request: Req,
) -> ScopedAttempt<S, Req> {
    let attempt = Attempt::new(service, request);
    match budget {
        Some(budget) => budget.scope(attempt),
        None => BudgetScope::none(attempt),
    }
}

type PinnedAttempt<S, Req> = Pin<Box<ScopedAttempt<S, Req>>>;

/// One finished attempt: the service's index and its result.
pub(crate) type Finished<S, Req> = (
    usize,
    Result<<S as Service<Req>>::Response, <S as Service<Req>>::Error>,
);

/// What a strategy makes of one service's result.
pub(crate) enum Verdict<Res> {
    /// The result is the strategy's answer (a success, or an error the classifier accepted).
    Answer(Result<Res, BoxError>),
    /// The service failed.
    Failed(ServiceFailure),
}

pub(crate) fn judge<C, Res, E>(
    classifier: &C,
    service: usize,
    result: Result<Res, E>,
) -> Verdict<Res>
where
    C: Classify<Res, E>,
    E: Into<BoxError>,
{
    match (classifier.classify(result.as_ref()), result) {
        (Outcome::Success, result) => Verdict::Answer(result.map_err(Into::into)),
        (Outcome::Failure(failure), Ok(_)) => {
            Verdict::Failed(ServiceFailure::new(service, failure, None))
        }
        (Outcome::Failure(failure), Err(error)) => {
            Verdict::Failed(ServiceFailure::new(service, failure, Some(error.into())))
        }
    }
}

/// The calls a strategy has in flight, one slot per service.
///
/// The number of services is only known at run time and an attempt's future is not `Unpin`,
/// so each attempt is boxed (one allocation per call started; without `unsafe` there is no
/// way to pin into a `Vec`). Every poll polls each attempt in flight, in service order:
/// strategies run over a handful of providers, where that costs less than tracking wakers
/// per attempt, and the order makes a tie go to the earlier service.
pub(crate) struct Attempts<S: Service<Req>, Req> {
    slots: Vec<Option<PinnedAttempt<S, Req>>>,
    in_flight: usize,
    budget: Option<AttemptBudget>,
}

impl<S: Service<Req>, Req> Attempts<S, Req> {
    pub(crate) fn new(services: usize) -> Self {
        let mut slots = Vec::with_capacity(services);
        slots.resize_with(services, || None);
        Attempts {
            slots,
            in_flight: 0,
            budget: None,
        }
    }

    /// Attempts polled with the shared `budget` marked (see [`scoped`]).
    pub(crate) fn with_budget(services: usize, budget: Option<AttemptBudget>) -> Self {
        Attempts {
            budget,
            ..Attempts::new(services)
        }
    }

    /// Starts a call to `service`, which sits at `index` in the strategy's list.
    pub(crate) fn launch(&mut self, index: usize, service: S, request: Req) {
        if let Some(slot) = self.slots.get_mut(index) {
            if slot.is_none() {
                self.in_flight += 1;
            }
            *slot = Some(Box::pin(scoped(self.budget.as_ref(), service, request)));
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The next attempt to finish, or `None` when none is in flight.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Finished<S, Req>>> {
        if self.in_flight == 0 {
            return Poll::Ready(None);
        }
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some(attempt) = slot
                && let Poll::Ready(result) = attempt.as_mut().poll(cx)
            {
                *slot = None;
                self.in_flight -= 1;
                return Poll::Ready(Some((index, result)));
            }
        }
        Poll::Pending
    }

    /// Drops every attempt still in flight, which cancels its call; returns how many.
    pub(crate) fn cancel_all(&mut self) -> usize {
        let cancelled = self.in_flight;
        for slot in &mut self.slots {
            *slot = None;
        }
        self.in_flight = 0;
        cancelled
    }

    /// The indexes of the services with a call in flight, in order.
    pub(crate) fn in_flight_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| slot.as_ref().map(|_| i))
    }

    /// Whether the service at `index` has a call in flight.
    pub(crate) fn is_in_flight(&self, index: usize) -> bool {
        self.slots.get(index).is_some_and(Option::is_some)
    }
}

impl<S: Service<Req>, Req> fmt::Debug for Attempts<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let in_flight: Vec<usize> = self.in_flight_indexes().collect();
        f.debug_struct("Attempts")
            .field("in_flight", &in_flight)
            .finish()
    }
}
