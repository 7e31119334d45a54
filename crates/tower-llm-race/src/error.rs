//! The errors of the strategies.
//!
//! A strategy's error type is [`BoxError`], the tower convention. When no service answered,
//! it boxes [`AllFailed`] (or [`NoQuorum`] for a vote), which lists each service's failure,
//! classified. Both stay classifiable after boxing: their [`source`](StdError::source) is a
//! core [`UpstreamError`] carrying the overall kind, which core's
//! [`classify_dyn_error`](tower_llm_core::classify_dyn_error) finds, so a retry or breaker
//! layer further out sees "rate limited, retry after 2 s" rather than an unknown error.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use tower_llm_core::{BoxError, ClassifyError, Failure, FailureKind, UpstreamError};

use crate::observe::Observe;

/// One service's failure within a strategy.
#[derive(Debug)]
pub struct ServiceFailure {
    service: usize,
    failure: Failure,
    error: Option<BoxError>,
}

impl ServiceFailure {
    /// A failure of the service at `service`, classified as `failure`; `error` is the
    /// service's error, or `None` when it answered with a response classified as a failure
    /// (an HTTP 500, say) or did not answer in time.
    pub fn new(service: usize, failure: Failure, error: Option<BoxError>) -> Self {
        ServiceFailure {
            service,
            failure,
            error,
        }
    }

    /// The index of the service in the strategy's list.
    pub const fn service(&self) -> usize {
        self.service
    }

    /// The failure, classified.
    pub const fn failure(&self) -> Failure {
        self.failure
    }

    /// The failure's kind.
    pub const fn kind(&self) -> FailureKind {
        self.failure.kind
    }

    /// The service's error, if it returned one.
    pub fn error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.error.as_deref()
    }

    /// The service's error, taken out, if it returned one.
    pub fn into_error(self) -> Option<BoxError> {
        self.error
    }
}

impl fmt::Display for ServiceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service #{}: {}", self.service, self.failure)?;
        match &self.error {
            Some(error) => write!(f, " ({error})"),
            None => f.write_str(" (response classified as a failure)"),
        }
    }
}

/// The failure that stands for several: what a layer further out should make of them.
///
/// A client error that stopped the strategy decides. Otherwise a retryable failure wins,
/// the one with the shortest retry hint (no hint counts as "now"), since retrying then has
/// the best chance; then one worth trying elsewhere; then the last one.
pub(crate) fn overall_failure<'a>(failures: impl IntoIterator<Item = &'a Failure>) -> Failure {
    let mut retryable: Option<Failure> = None;
    let mut elsewhere: Option<Failure> = None;
    let mut last: Option<Failure> = None;
    for failure in failures {
        let failure = *failure;
        if failure.kind.is_retryable() {
            let hint = |f: &Failure| f.retry_after.unwrap_or(Duration::ZERO);
            if retryable.is_none_or(|best| hint(&failure) < hint(&best)) {
                retryable = Some(failure);
            }
        } else if failure.kind.is_worth_trying_elsewhere() && elsewhere.is_none() {
            elsewhere = Some(failure);
        }
        last = Some(failure);
    }
    retryable
        .or(elsewhere)
        .or(last)
        .unwrap_or(Failure::new(FailureKind::Other))
}

fn summary(failure: Failure, message: &str) -> UpstreamError {
    UpstreamError::new(failure.kind, message).with_retry_after(failure.retry_after)
}

/// No service answered: every service tried failed, the strategy stopped on a failure that
/// no other service would fix (a client error), the call's deadline passed, or the attempt
/// budget refused the next service.
///
/// Lists each failure in the order it happened; at a deadline, the calls still running are
/// listed too, as timeouts. Its classification ([`ClassifyError`], and core's
/// `classify_dyn_error` on the boxed error) is the stopping failure if there was one, a
/// [`Timeout`](FailureKind::Timeout) at the deadline, else the most hopeful of the failures
/// (see [`AllFailed::failure`]).
#[derive(Debug)]
pub struct AllFailed {
    failures: Vec<ServiceFailure>,
    services: usize,
    ending: Ending,
    summary: UpstreamError,
}

/// Why a strategy ended without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Every service it could try failed.
    Exhausted,
    /// A failure no other service would fix.
    Stopped,
    /// The call's deadline passed.
    Deadline,
    /// The attempt budget refused the next service.
    BudgetSpent,
}

impl AllFailed {
    /// Every one of `services` services failed, as listed.
    pub fn new(services: usize, failures: Vec<ServiceFailure>) -> Self {
        let overall = overall_failure(failures.iter().map(|f| &f.failure));
        AllFailed {
            summary: summary(overall, "every service failed"),
            failures,
            services,
            ending: Ending::Exhausted,
        }
    }

    /// The strategy stopped on the first of `failures` that no other service would fix
    /// (not [worth trying elsewhere](FailureKind::is_worth_trying_elsewhere)), leaving other
    /// services of the `services` untried.
    pub fn stopped(services: usize, failures: Vec<ServiceFailure>) -> Self {
        let overall = failures
            .iter()
            .find(|f| !f.kind().is_worth_trying_elsewhere())
            .or(failures.last())
            .map_or(Failure::new(FailureKind::Other), |f| f.failure);
        AllFailed {
            summary: summary(overall, "stopped on a failure no other service would fix"),
            failures,
            services,
            ending: Ending::Stopped,
        }
    }

    /// The call's [`Deadline`](tower_llm_core::Deadline) passed after `failures` (the calls
    /// still running then included, as timeouts), before any of the `services` answered.
    /// Classified as a [`Timeout`](FailureKind::Timeout), with no retry hint: the caller has
    /// no time left to wait for one.
    pub fn at_deadline(services: usize, failures: Vec<ServiceFailure>) -> Self {
        AllFailed {
            summary: UpstreamError::new(FailureKind::Timeout, "the call's deadline passed"),
            failures,
            services,
            ending: Ending::Deadline,
        }
    }

    /// The attempt budget refused a call to another of the `services` after `failures`:
    /// extra attempts are spent (many calls are failing at once). Classified as the most
    /// hopeful of the failures.
    pub fn budget_spent(services: usize, failures: Vec<ServiceFailure>) -> Self {
        let overall = overall_failure(failures.iter().map(|f| &f.failure));
        AllFailed {
            summary: summary(overall, "the attempt budget is spent"),
            failures,
            services,
            ending: Ending::BudgetSpent,
        }
    }

    /// The error of a strategy that ended for `ending`, reported through its funnel.
    pub(crate) fn ended(
        observe: &Observe,
        ending: Ending,
        services: usize,
        failures: &mut Vec<ServiceFailure>,
    ) -> BoxError {
        let failures = std::mem::take(failures);
        match ending {
            Ending::Deadline => {
                observe.deadline_passed(services, &failures);
                AllFailed::at_deadline(services, failures).into()
            }
            Ending::Exhausted => {
                observe.exhausted(services, &failures);
                AllFailed::new(services, failures).into()
            }
            Ending::Stopped => {
                observe.exhausted(services, &failures);
                AllFailed::stopped(services, failures).into()
            }
            Ending::BudgetSpent => {
                observe.exhausted(services, &failures);
                AllFailed::budget_spent(services, failures).into()
            }
        }
    }

    /// Each service's failure, in the order they happened.
    pub fn failures(&self) -> &[ServiceFailure] {
        &self.failures
    }

    /// The failures, taken out.
    pub fn into_failures(self) -> Vec<ServiceFailure> {
        self.failures
    }

    /// How many services the strategy had.
    pub const fn services(&self) -> usize {
        self.services
    }

    /// Whether the strategy stopped early on a failure no other service would fix.
    pub const fn is_stopped(&self) -> bool {
        matches!(self.ending, Ending::Stopped)
    }

    /// Whether the strategy ended because the call's deadline passed.
    pub const fn is_at_deadline(&self) -> bool {
        matches!(self.ending, Ending::Deadline)
    }

    /// Whether the strategy ended because the attempt budget refused another call.
    pub const fn is_budget_spent(&self) -> bool {
        matches!(self.ending, Ending::BudgetSpent)
    }

    /// The failure that stands for all of them.
    pub const fn failure(&self) -> Failure {
        self.summary.failure()
    }
}

impl fmt::Display for AllFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.services == 0 {
            return f.write_str("no service to call");
        }
        let tried = self.failures.len();
        let services = self.services;
        match self.ending {
            Ending::Stopped => write!(f, "stopped after {tried} of {services} services failed")?,
            Ending::Deadline => write!(
                f,
                "the call's deadline passed with {tried} of {services} services tried"
            )?,
            Ending::BudgetSpent => write!(
                f,
                "the attempt budget is spent after {tried} of {services} services failed"
            )?,
            Ending::Exhausted if tried == services => write!(f, "all {services} services failed")?,
            Ending::Exhausted => write!(f, "{tried} of {services} services failed")?,
        }
        for (i, failure) in self.failures.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl StdError for AllFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.summary)
    }
}

impl ClassifyError for AllFailed {
    fn classify_error(&self) -> Failure {
        self.failure()
    }
}

/// A vote ended without a decision: too few answers agreed (or the combiner refused them)
/// before every service answered or the vote's timeout passed.
///
/// Classified as the services' failures would be when failures are what kept the quorum
/// out of reach, and as [`FailureKind::Other`] when the answers simply disagreed.
#[derive(Debug)]
pub struct NoQuorum {
    quorum: usize,
    answers: usize,
    failures: Vec<ServiceFailure>,
    summary: UpstreamError,
}

impl NoQuorum {
    /// `answers` answers arrived, not enough of them agreed for `quorum`, and `failures`
    /// failed.
    pub fn new(quorum: usize, answers: usize, failures: Vec<ServiceFailure>) -> Self {
        let overall = if answers >= quorum || failures.is_empty() {
            Failure::new(FailureKind::Other)
        } else {
            overall_failure(failures.iter().map(|f| &f.failure))
        };
        NoQuorum {
            summary: summary(overall, "no quorum"),
            quorum,
            answers,
            failures,
        }
    }

    /// How many agreeing answers the vote needed.
    pub const fn quorum(&self) -> usize {
        self.quorum
    }

    /// How many answers arrived.
    pub const fn answers(&self) -> usize {
        self.answers
    }

    /// The services that failed instead of answering.
    pub fn failures(&self) -> &[ServiceFailure] {
        &self.failures
    }

    /// The failure that stands for the vote.
    pub const fn failure(&self) -> Failure {
        self.summary.failure()
    }
}

impl fmt::Display for NoQuorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no quorum: {} answers arrived and fewer than {} agreed",
            self.answers, self.quorum
        )?;
        for failure in &self.failures {
            write!(f, "; {failure}")?;
        }
        Ok(())
    }
}

impl StdError for NoQuorum {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.summary)
    }
}

impl ClassifyError for NoQuorum {
    fn classify_error(&self) -> Failure {
        self.failure()
    }
}

/// A route chose a service the list does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoSuchService {
    index: usize,
    services: usize,
}

impl NoSuchService {
    /// The route chose `index` among `services` services.
    pub const fn new(index: usize, services: usize) -> Self {
        NoSuchService { index, services }
    }

    /// The index the route chose.
    pub const fn index(&self) -> usize {
        self.index
    }
}

impl fmt::Display for NoSuchService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the route chose service #{} but there are only {}",
            self.index, self.services
        )
    }
}

impl StdError for NoSuchService {}

impl ClassifyError for NoSuchService {
    fn classify_error(&self) -> Failure {
        Failure::new(FailureKind::Other)
    }
}

pub use tower_llm_core::ConfigError;

#[cfg(test)]
mod tests {
    use super::*;
    use tower_llm_core::classify_dyn_error;

    fn failure(service: usize, kind: FailureKind, after: Option<u64>) -> ServiceFailure {
        ServiceFailure::new(
            service,
            Failure::new(kind).with_retry_after(after.map(Duration::from_secs)),
            None,
        )
    }

    #[test]
    fn boxed_all_failed_classifies_as_its_most_hopeful_failure() {
        let error: BoxError = Box::new(AllFailed::new(
            3,
            vec![
                failure(0, FailureKind::RateLimited, Some(5)),
                failure(1, FailureKind::RateLimited, Some(2)),
                failure(2, FailureKind::QuotaExhausted, None),
            ],
        ));
        let classified = classify_dyn_error(&*error);
        assert_eq!(classified.kind, FailureKind::RateLimited);
        assert_eq!(classified.retry_after, Some(Duration::from_secs(2)));
        let text = error.to_string();
        assert!(text.starts_with("all 3 services failed: service #0: rate_limited"));
        assert!(text.contains("service #2: quota_exhausted"));
    }

    #[test]
    fn a_stop_classifies_as_the_stopping_failure() {
        let error = AllFailed::stopped(
            3,
            vec![
                failure(0, FailureKind::Overloaded, None),
                failure(1, FailureKind::Unauthorized, None),
            ],
        );
        assert_eq!(error.classify_error().kind, FailureKind::Unauthorized);
        assert!(error.is_stopped());
        assert!(error.to_string().starts_with("stopped after 2 of 3"));
    }

    #[test]
    fn at_the_deadline_it_says_so_and_lists_what_was_tried() {
        let error: BoxError = Box::new(AllFailed::at_deadline(
            3,
            vec![
                failure(0, FailureKind::RateLimited, Some(30)),
                failure(1, FailureKind::Timeout, None),
            ],
        ));
        let classified = classify_dyn_error(&*error);
        assert_eq!(classified.kind, FailureKind::Timeout);
        assert_eq!(
            classified.retry_after, None,
            "no time left to wait for a hint"
        );
        let text = error.to_string();
        assert!(
            text.starts_with(
                "the call's deadline passed with 2 of 3 services tried: service #0: rate_limited"
            ),
            "{text}"
        );
        assert!(text.contains("service #1: timeout"), "{text}");
        let budget = AllFailed::budget_spent(2, vec![failure(0, FailureKind::Overloaded, None)]);
        assert!(budget.is_budget_spent() && !budget.is_at_deadline());
        assert_eq!(budget.failure().kind, FailureKind::Overloaded);
        assert!(budget.to_string().contains("budget is spent"));
    }

    #[test]
    fn no_quorum_from_disagreement_is_other() {
        let disagreement = NoQuorum::new(2, 3, Vec::new());
        assert_eq!(disagreement.failure().kind, FailureKind::Other);
        let outage = NoQuorum::new(2, 1, vec![failure(1, FailureKind::Overloaded, None)]);
        assert_eq!(outage.failure().kind, FailureKind::Overloaded);
    }
}
