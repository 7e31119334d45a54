//! The response future of [`Hedge`](super::Hedge).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_llm_core::{BoxError, Classify};
use tower_service::Service;

use super::Shared;
use crate::answer::{Answered, NoRecord, RecordWinner};
use crate::attempt::{Attempts, Verdict, judge};
use crate::error::{AllFailed, Ending, ServiceFailure};
use crate::limits::{CallDeadline, cut_at_deadline};
use crate::observe::Observe;

/// The first service, whose latency the delay percentile learns.
const PRIMARY: usize = 0;

pin_project! {
    /// The response future of [`Hedge`](super::Hedge).
    pub struct HedgeFuture<S, Req, C, W = NoRecord>
    where
        S: Service<Req>,
    {
        attempts: Attempts<S, Req>,
        services: Vec<S>,
        shared: Arc<Shared>,
        request: Option<Req>,
        classifier: C,
        record: W,
        failures: Vec<ServiceFailure>,
        // The services used, in order: 0..max_attempts.
        max_attempts: usize,
        launched: usize,
        // No more hedges: the budget was spent, or the next would start past the deadline.
        hedging_over: bool,
        // Nothing more at all: a failure no other service would fix.
        stopped: bool,
        started: Instant,
        last_launch: Instant,
        deadline: CallDeadline,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<S, Req, C, W> HedgeFuture<S, Req, C, W>
where
    S: Service<Req> + Clone,
    Req: Clone,
{
    pub(super) fn new(
        attempts: Attempts<S, Req>,
        services: Vec<S>,
        shared: Arc<Shared>,
        request: Req,
        classifier: C,
        record: W,
        max_attempts: usize,
    ) -> Self {
        let now = Instant::now();
        let mut future = HedgeFuture {
            attempts,
            services,
            shared,
            request: Some(request),
            classifier,
            record,
            failures: Vec::new(),
            max_attempts,
            launched: 0,
            hedging_over: false,
            stopped: false,
            started: now,
            last_launch: now,
            deadline: CallDeadline::current(),
            timer: None,
        };
        if future.deadline.has_passed() {
            return future;
        }
        launch(
            &future.shared.observe,
            &mut future.attempts,
            &future.services,
            &mut future.request,
            &mut future.launched,
            future.max_attempts,
        );
        future
    }
}

/// Sends the request to the next service; the last possible attempt takes the request
/// itself instead of a clone.
fn launch<S, Req>(
    observe: &Observe,
    attempts: &mut Attempts<S, Req>,
    services: &[S],
    request: &mut Option<Req>,
    launched: &mut usize,
    max_attempts: usize,
) where
    S: Service<Req> + Clone,
    Req: Clone,
{
    let index = *launched;
    let Some(service) = services.get(index) else {
        return;
    };
    let this = if index + 1 >= max_attempts {
        request.take()
    } else {
        request.clone()
    };
    if let Some(this) = this {
        attempts.launch(index, service.clone(), this);
        *launched += 1;
        observe.legs_started(1);
    }
}

impl<S, Req, C, W> Future for HedgeFuture<S, Req, C, W>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
    W: RecordWinner<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(next) = this.attempts.poll_next(cx) {
                let Some((index, result)) = next else {
                    // Nothing was sent: the deadline had passed when the call was made.
                    let ending = if this.deadline.has_passed() && *this.launched == 0 {
                        Ending::Deadline
                    } else if *this.stopped {
                        Ending::Stopped
                    } else {
                        Ending::Exhausted
                    };
                    return Poll::Ready(Err(AllFailed::ended(
                        &this.shared.observe,
                        ending,
                        this.services.len(),
                        this.failures,
                    )));
                };
                match judge(this.classifier, index, result) {
                    Verdict::Answer(answer) => {
                        // A primary cut short by a hedge took at least this long: counting
                        // it keeps hedging from talking the percentile down.
                        let primary_timed = (index == PRIMARY && answer.is_ok())
                            || this.attempts.is_in_flight(PRIMARY);
                        if primary_timed && this.shared.learns() {
                            let now = Instant::now();
                            this.shared.record_latency(now - *this.started, now);
                        }
                        this.shared.observe.cancelled(this.attempts.cancel_all());
                        match &answer {
                            Ok(_) => this.shared.observe.answered_by(index),
                            // An error the classifier let through is the caller's answer,
                            // but not a success to count.
                            Err(_) => this.shared.observe.answered_with_error(),
                        }
                        let answered = Answered::new(index, *this.launched);
                        return Poll::Ready(answer.map(|mut response| {
                            this.record.record_winner(&mut response, answered);
                            response
                        }));
                    }
                    Verdict::Failed(failure) => {
                        this.shared.observe.leg_failed(index, failure.kind());
                        if !failure.kind().is_worth_trying_elsewhere() {
                            *this.stopped = true;
                        }
                        this.failures.push(failure);
                        if this.attempts.in_flight() > 0 {
                            continue;
                        }
                        let can_fail_over =
                            this.shared.config.failover && *this.launched < *this.max_attempts;
                        let ending = if *this.stopped {
                            Some(Ending::Stopped)
                        } else if this.deadline.has_passed() {
                            Some(Ending::Deadline)
                        } else if !can_fail_over {
                            Some(Ending::Exhausted)
                        } else if !this.shared.withdraw(true) {
                            Some(Ending::BudgetSpent)
                        } else {
                            None
                        };
                        if let Some(ending) = ending {
                            return Poll::Ready(Err(AllFailed::ended(
                                &this.shared.observe,
                                ending,
                                this.services.len(),
                                this.failures,
                            )));
                        }
                        launch(
                            &this.shared.observe,
                            this.attempts,
                            this.services,
                            this.request,
                            this.launched,
                            *this.max_attempts,
                        );
                        this.shared.observe.failed_over();
                        *this.last_launch = Instant::now();
                        this.timer.set(None);
                        continue;
                    }
                }
            }

            if !(*this.stopped || *this.hedging_over || *this.launched >= *this.max_attempts) {
                if this.timer.is_none() {
                    let delay = this.shared.delay(Instant::now());
                    // A delay past the end of the clock (`Duration::MAX` for "never") never
                    // fires; a hedge that would start at or past the deadline is not sent.
                    match this.last_launch.checked_add(delay) {
                        Some(at) if this.deadline.allows_start_at(at) => {
                            this.timer.set(Some(sleep_until(at)));
                        }
                        _ => *this.hedging_over = true,
                    }
                }
                if let Some(timer) = this.timer.as_mut().as_pin_mut()
                    && timer.poll(cx).is_ready()
                {
                    this.timer.set(None);
                    if this.shared.withdraw(false) {
                        let leg = *this.launched;
                        let delay = Instant::now().saturating_duration_since(*this.last_launch);
                        this.shared.observe.hedge_fired(leg, delay);
                        launch(
                            &this.shared.observe,
                            this.attempts,
                            this.services,
                            this.request,
                            this.launched,
                            *this.max_attempts,
                        );
                        *this.last_launch = Instant::now();
                        continue;
                    }
                    *this.hedging_over = true;
                }
            }

            // Polled after the calls, so an answer at the deadline itself still wins.
            ready!(this.deadline.poll_passed(cx));
            this.failures
                .extend(this.attempts.in_flight_indexes().map(cut_at_deadline));
            this.shared.observe.cancelled(this.attempts.cancel_all());
            return Poll::Ready(Err(AllFailed::ended(
                &this.shared.observe,
                Ending::Deadline,
                this.services.len(),
                this.failures,
            )));
        }
    }
}

impl<S: Service<Req>, Req, C, W> fmt::Debug for HedgeFuture<S, Req, C, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("attempts", &self.attempts)
            .field("launched", &self.launched)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}
