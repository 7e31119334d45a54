//! One deadline for a whole call, whatever layers it goes through.
//!
//! A [`Deadline`] is the instant by which the caller needs an answer. It is current on the task
//! while a call is made and polled ([`Deadline::enter`], [`Deadline::scope`]), so every layer
//! inside reads the time left with [`Deadline::current`] without any trait on the request:
//! a retry starts no attempt that cannot finish in time, a limiter queues no caller whose wait
//! would pass it, a provider's own timeout is cut to what is left. Deadlines nest: an inner one
//! later than the outer one changes nothing (the earlier always wins).
//!
//! ```
//! use std::time::Duration;
//! use tower_llm_core::Deadline;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! assert_eq!(Deadline::current(), None);
//! let deadline = Deadline::after(Duration::from_secs(30));
//! let left = deadline
//!     .scope(async {
//!         // Any layer or service polled inside sees it.
//!         Deadline::current().map(|d| d.time_left())
//!     })
//!     .await;
//! assert_eq!(left, Some(Duration::from_secs(30)));
//! # }
//! ```

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::classify::FailureKind;
use crate::error::{BoxError, UpstreamError};

thread_local! {
    /// The deadline of the call being made or polled on this thread, if any.
    static CURRENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The instant by which a call must be answered, on tokio's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    pub const fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// A deadline `timeout` from now (so far away that it never comes, when `now + timeout`
    /// is past what the clock holds).
    pub fn after(timeout: Duration) -> Self {
        const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
        let now = Instant::now();
        Deadline(
            now.checked_add(timeout)
                .or_else(|| now.checked_add(FAR))
                .unwrap_or(now),
        )
    }

    /// The instant itself.
    pub const fn instant(self) -> Instant {
        self.0
    }

    /// The time left until it, zero once it has passed.
    pub fn time_left(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn has_passed(self) -> bool {
        Instant::now() >= self.0
    }

    /// Whether something taking `duration` from now would finish after it.
    pub fn would_pass(self, duration: Duration) -> bool {
        duration > self.time_left()
    }

    /// The earlier of two deadlines.
    #[must_use]
    pub fn min(self, other: Deadline) -> Deadline {
        if other.0 < self.0 { other } else { self }
    }

    /// The deadline of the call being made or polled on this task now, if any.
    pub fn current() -> Option<Deadline> {
        CURRENT.with(Cell::get).map(Deadline)
    }

    /// The smaller of `limit` and the current deadline's time left: what a timeout of this
    /// call should be.
    pub fn cap(limit: Option<Duration>) -> Option<Duration> {
        match (limit, Deadline::current()) {
            (Some(limit), Some(deadline)) => Some(limit.min(deadline.time_left())),
            (None, Some(deadline)) => Some(deadline.time_left()),
            (limit, None) => limit,
        }
    }

    /// Runs `f` (a service's `call`, say) with this deadline current, or the current one if
    /// that is earlier.
    pub fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        let _restore = Restore::set(self);
        f()
    }

    /// Wraps `future` so that this deadline (or the current one, if earlier, when the future
    /// is polled) is current while it is polled.
    pub fn scope<F: Future>(self, future: F) -> WithDeadline<F> {
        WithDeadline {
            deadline: self,
            future,
        }
    }
}

/// Sets the current deadline and puts the previous one back when dropped (a panic included).
struct Restore(Option<Instant>);

impl Restore {
    fn set(deadline: Deadline) -> Self {
        let previous = CURRENT.with(Cell::get);
        let earliest = match previous {
            Some(outer) if outer < deadline.0 => outer,
            _ => deadline.0,
        };
        CURRENT.with(|current| current.set(Some(earliest)));
        Restore(previous)
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.0));
    }
}

pin_project! {
    /// A future polled with a [`Deadline`] current (see [`Deadline::scope`]).
    #[derive(Debug)]
    pub struct WithDeadline<F> {
        deadline: Deadline,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for WithDeadline<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _restore = Restore::set(*this.deadline);
        this.future.poll(cx)
    }
}

/// Gives every call a deadline `timeout` after it is made (or keeps the caller's, if that is
/// earlier), current for every layer and service inside, and ends the call at it with a
/// [`Timeout`](FailureKind::Timeout) error that says so. A call made when its deadline has
/// already passed (the caller's, or a zero `timeout`) is refused at once, from `call`, without
/// reaching the inner service.
///
/// Put it outermost: the layers inside read the time left ([`Deadline::current`]) and plan
/// within it.
///
/// Every service made by one layer value (and its clones) counts into one
/// [`DeadlineHandle`]: the calls the deadline cut and those it refused.
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_llm_core::{BoxError, Deadline, DeadlineLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = DeadlineLayer::new(Duration::from_secs(20));
/// let handle = layer.handle();
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|_: ()| async {
///         Ok::<_, BoxError>(Deadline::current().map(|d| d.time_left()))
///     }));
/// assert_eq!(service.oneshot(()).await.unwrap(), Some(Duration::from_secs(20)));
/// assert_eq!(handle.stats().cut, 0);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DeadlineLayer {
    timeout: Duration,
    counters: Arc<Counters>,
}

impl DeadlineLayer {
    /// A deadline `timeout` after each call is made.
    pub fn new(timeout: Duration) -> Self {
        DeadlineLayer {
            timeout,
            counters: Arc::default(),
        }
    }

    /// The handle on the counts of every service this layer value makes, before or after the
    /// stacks are built and boxed.
    pub fn handle(&self) -> DeadlineHandle {
        DeadlineHandle {
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            timeout: self.timeout,
            counters: Arc::clone(&self.counters),
        }
    }
}

/// The counts of a [`DeadlineLayer`], shared by every service it made. Only the calls that
/// end badly write to them; each call's future holds a reference to them (one shared
/// reference count, taken and given back per call).
#[derive(Debug, Default)]
struct Counters {
    cut: AtomicU64,
    refused: AtomicU64,
}

/// Reads the counts of a [`DeadlineLayer`] (see [`DeadlineLayer::handle`]). Clones read the
/// same counts.
#[derive(Clone, Debug)]
pub struct DeadlineHandle {
    counters: Arc<Counters>,
}

impl DeadlineHandle {
    /// A snapshot of the counts, taken now.
    pub fn stats(&self) -> DeadlineStats {
        DeadlineStats {
            cut: self.counters.cut.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of a [`DeadlineLayer`]'s counts (see [`DeadlineHandle::stats`]). Running totals
/// since the layer was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadlineStats {
    /// Calls ended by the deadline: by this layer while the inner service was still working
    /// on them, or by the inner service itself failing once the deadline had passed (a
    /// provider's or a rate limiter's own timeout, which reads the same deadline).
    pub cut: u64,
    /// Calls refused without reaching the inner service because their deadline had already
    /// passed when they were made.
    pub refused: u64,
}

/// The service of [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl<S> DeadlineService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes this service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for DeadlineService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // One clock read: the deadline, its check and the error's "after" all count from it.
        let started = Instant::now();
        let mut deadline = Deadline::at(started + self.timeout);
        if let Some(outer) = Deadline::current() {
            deadline = deadline.min(outer);
        }
        if deadline.instant() <= started {
            // Nothing the inner service could do would arrive in time: it is not called, and
            // the readiness it gave stays with it for the next call.
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            let error = UpstreamError::new(
                FailureKind::Timeout,
                "the call's deadline had passed before it was made",
            );
            return DeadlineFuture {
                kind: Kind::Refused {
                    error: Some(error.into()),
                },
            };
        }
        let future = deadline.enter(|| self.inner.call(request));
        DeadlineFuture {
            kind: Kind::Running {
                future: deadline.scope(future),
                sleep: tokio::time::sleep_until(deadline.instant()),
                started,
                counters: Arc::clone(&self.counters),
            },
        }
    }
}

pin_project! {
    /// The future of a [`DeadlineService`] call.
    #[derive(Debug)]
    pub struct DeadlineFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        // The call is with the inner service, until it answers or the deadline passes.
        Running {
            #[pin]
            future: WithDeadline<F>,
            #[pin]
            sleep: Sleep,
            started: Instant,
            counters: Arc<Counters>,
        },
        // The deadline had passed when the call was made.
        Refused {
            error: Option<BoxError>,
        },
    }
}

impl<F, T, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Running {
                future,
                sleep,
                started,
                counters,
            } => {
                if let Poll::Ready(result) = future.poll(cx) {
                    // An inner service that reads the deadline (a provider's timeouts, a rate
                    // limiter's wait) fails at the same instant with an error of its own:
                    // the deadline cut that call too.
                    if result.is_err() && sleep.deadline() <= Instant::now() {
                        counters.cut.fetch_add(1, Ordering::Relaxed);
                    }
                    return Poll::Ready(result.map_err(Into::into));
                }
                if sleep.poll(cx).is_ready() {
                    counters.cut.fetch_add(1, Ordering::Relaxed);
                    let waited = started.elapsed();
                    let error = UpstreamError::new(
                        FailureKind::Timeout,
                        format!("the call's deadline passed after {waited:?}"),
                    );
                    return Poll::Ready(Err(error.into()));
                }
                Poll::Pending
            }
            KindProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "deadline future polled after completion".into()))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_earlier_deadline_wins_and_leaving_restores_the_outer_one() {
        let outer = Deadline::after(Duration::from_secs(10));
        let later = Deadline::after(Duration::from_secs(60));
        let sooner = Deadline::after(Duration::from_secs(2));
        outer.enter(|| {
            assert_eq!(Deadline::current(), Some(outer));
            later.enter(|| assert_eq!(Deadline::current(), Some(outer)));
            sooner.enter(|| assert_eq!(Deadline::current(), Some(sooner)));
            assert_eq!(Deadline::current(), Some(outer));
        });
        assert_eq!(Deadline::current(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_scoped_future_sees_its_deadline_on_every_poll_and_only_then() {
        let deadline = Deadline::after(Duration::from_secs(5));
        let seen = deadline
            .scope(async {
                let before = Deadline::current();
                tokio::time::sleep(Duration::from_secs(1)).await;
                (before, Deadline::current().map(Deadline::time_left))
            })
            .await;
        assert_eq!(seen, (Some(deadline), Some(Duration::from_secs(4))));
        assert_eq!(Deadline::current(), None, "not current outside the future");
    }

    #[tokio::test(start_paused = true)]
    async fn cap_and_passing() {
        assert_eq!(
            Deadline::cap(Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        let deadline = Deadline::after(Duration::from_secs(2));
        deadline.enter(|| {
            assert_eq!(
                Deadline::cap(Some(Duration::from_secs(3))),
                Some(Duration::from_secs(2))
            );
            assert_eq!(Deadline::cap(None), Some(Duration::from_secs(2)));
            assert!(deadline.would_pass(Duration::from_secs(3)));
            assert!(!deadline.would_pass(Duration::from_secs(1)));
        });
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(deadline.has_passed());
        assert_eq!(deadline.time_left(), Duration::ZERO);
        // A timeout too long for the clock is a deadline that never comes, not a panic.
        assert!(!Deadline::after(Duration::MAX).has_passed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_ends_a_call_at_its_deadline_and_nested_ones_keep_the_earlier() {
        use tower::{ServiceBuilder, ServiceExt, service_fn};

        let slow = service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, BoxError>(())
        });
        let started = Instant::now();
        let error = ServiceBuilder::new()
            .layer(DeadlineLayer::new(Duration::from_secs(5)))
            .service(slow)
            .oneshot(())
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let failure = crate::classify::classify_dyn_error(&*error);
        assert_eq!(failure.kind, FailureKind::Timeout, "{error}");
        assert!(error.to_string().contains("deadline"), "{error}");

        // An inner layer with a longer timeout keeps the outer deadline.
        let seen = ServiceBuilder::new()
            .layer(DeadlineLayer::new(Duration::from_secs(5)))
            .layer(DeadlineLayer::new(Duration::from_secs(50)))
            .service(service_fn(|_: ()| async {
                Ok::<_, BoxError>(Deadline::current().map(Deadline::time_left))
            }))
            .oneshot(())
            .await
            .unwrap();
        assert_eq!(seen, Some(Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_handle_counts_cut_and_refused_calls_of_every_service_of_the_layer() {
        use tower::{ServiceExt, service_fn};

        let calls = Arc::new(AtomicU64::new(0));
        let slow = {
            let calls = Arc::clone(&calls);
            service_fn(move |_: ()| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, BoxError>(())
                }
            })
        };
        let layer = DeadlineLayer::new(Duration::from_secs(5));
        let handle = layer.handle();
        let first = layer.layer(slow.clone());
        let second = layer.clone().layer(slow);
        assert_eq!(handle.stats(), DeadlineStats::default());

        first.clone().oneshot(()).await.unwrap_err();
        // A call made once the caller's deadline has passed never reaches the service.
        let passed = Deadline::at(Instant::now());
        let error = passed.scope(second.clone().oneshot(())).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let failure = crate::classify::classify_dyn_error(&*error);
        assert_eq!(failure.kind, FailureKind::Timeout, "{error}");
        // A call its caller dropped, once it had reached the service, is neither.
        let mut dropped = Box::pin(second.clone().oneshot(()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(dropped.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the call reached the service"
        );
        drop(dropped);
        tokio::time::advance(Duration::from_secs(10)).await;
        let stats = handle.stats();
        assert_eq!((stats.cut, stats.refused), (1, 1));
    }

    /// An inner service that gives up at the deadline itself, with an error of its own, as
    /// providers and rate limiters do: that call was cut by the deadline too. One that fails
    /// before it was not.
    #[tokio::test(start_paused = true)]
    async fn an_inner_service_failing_at_the_deadline_is_a_cut() {
        use tower::{ServiceExt, service_fn};
        let gives_up = service_fn(|early: bool| async move {
            let left = Deadline::current().map_or(Duration::ZERO, Deadline::time_left);
            tokio::time::sleep(if early { left / 2 } else { left }).await;
            Err::<(), BoxError>("gave up".into())
        });
        let layer = DeadlineLayer::new(Duration::from_secs(5));
        let handle = layer.handle();
        let service = layer.layer(gives_up);
        let started = Instant::now();
        let error = service.clone().oneshot(false).await.unwrap_err();
        assert_eq!(error.to_string(), "gave up", "the inner error is kept");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(handle.stats().cut, 1);
        service.oneshot(true).await.unwrap_err();
        assert_eq!(
            handle.stats().cut,
            1,
            "a failure before the deadline is not a cut"
        );
    }

    #[test]
    fn a_panic_inside_restores_the_outer_deadline() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let _guard = runtime.enter();
        let deadline = Deadline::after(Duration::from_secs(1));
        let result = std::panic::catch_unwind(|| deadline.enter(|| panic!("inside")));
        assert!(result.is_err());
        assert_eq!(Deadline::current(), None);
    }
}
