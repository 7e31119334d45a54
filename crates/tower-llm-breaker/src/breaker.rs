//! The state machine of one breaker.
//!
//! The state lives in one atomic word, `epoch << 2 | state`, so the closed path is a load to
//! admit a call and, when it finishes, a load (is it still the same closed period?) plus one
//! or two relaxed read-modify-writes on counters. Every transition takes a mutex, bumps the
//! epoch and publishes the new word last: an outcome that finishes after a transition carries
//! an old epoch and is ignored, so a slow call started before a trip can neither retrip nor
//! close the breaker. Half-open bookkeeping lives under the same mutex; it is only taken
//! while the breaker is open or half-open, where a few hundred nanoseconds do not matter.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tower_llm_core::CircuitOpen;

use crate::config::{Config, Verdict};
use crate::observe::{Observe, Trip};
use crate::state::{BreakerStats, State, StateChange};
use crate::window::Outcomes;

pub(crate) struct Breaker {
    config: Arc<Config>,
    base: Instant,
    /// `epoch << 2 | state`.
    word: AtomicU64,
    /// Nanoseconds since `base` at which an open breaker admits its first probe;
    /// [`HELD_OPEN`] while [forced open](Breaker::force_open).
    open_until: AtomicU64,
    /// Nanoseconds since `base` of the last transition.
    since: AtomicU64,
    consecutive: AtomicUsize,
    window: Option<Outcomes>,
    counts: Counts,
    half_open: Mutex<HalfOpen>,
    name: Arc<str>,
    key: Option<Arc<str>>,
    /// Metric handles are registered once, when the breaker is made: registering per
    /// rejection would build its labels, allocating, on the open path. The cost is that a
    /// recorder must be installed before the breaker is made (as the `metrics` docs advise).
    observe: Observe,
    times_calls: bool,
    clock_at_end: bool,
}

#[derive(Debug, Default)]
struct Counts {
    successes: AtomicU64,
    failures: AtomicU64,
    ignored: AtomicU64,
    slow: AtomicU64,
    rejected: AtomicU64,
    opened: AtomicU64,
}

#[derive(Debug, Default)]
struct HalfOpen {
    /// Probes handed out in this half-open period and not given back.
    admitted: usize,
    successes: usize,
    failures: usize,
    /// Opens since the breaker last closed, for the growing cool-down.
    trips_in_row: u32,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = self.word.load(Ordering::Relaxed);
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("state", &State::from_bits(word))
            .field("epoch", &(word >> 2))
            .finish_non_exhaustive()
    }
}

/// The `open_until` of a breaker forced open: no cool-down ends it, only a reset.
const HELD_OPEN: u64 = u64::MAX;

const fn pack(state: State, epoch: u64) -> u64 {
    epoch << 2 | state.bits()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Breaker {
    pub(crate) fn new(config: Arc<Config>, key: Option<Arc<str>>) -> Self {
        let name: Arc<str> = Arc::from(&*config.name);
        Breaker {
            observe: Observe::new(name.clone(), key.clone()),
            window: config.uses_window().then(|| Outcomes::new(config.window)),
            times_calls: config.times_calls(),
            clock_at_end: config.clock_at_end(),
            config,
            base: Instant::now(),
            word: AtomicU64::new(pack(State::Closed, 0)),
            open_until: AtomicU64::new(0),
            since: AtomicU64::new(0),
            consecutive: AtomicUsize::new(0),
            counts: Counts::default(),
            half_open: Mutex::new(HalfOpen::default()),
            name,
            key,
        }
    }

    fn ticks(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.base))
    }

    fn lock(&self) -> MutexGuard<'_, HalfOpen> {
        // The guarded data is a few counters that are never left half-updated by a panic.
        self.half_open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a call or refuses it. `clock` is read only when the answer depends on time.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        clock: impl Fn() -> Instant,
    ) -> Result<Permit, CircuitOpen> {
        let word = self.word.load(Ordering::Acquire);
        let state = State::from_bits(word);
        if state == State::Closed {
            let started = if self.times_calls {
                Some(clock())
            } else {
                None
            };
            return Ok(Permit::new(self, false, word >> 2, started));
        }
        let now = clock();
        if state == State::Open {
            let until = self.open_until.load(Ordering::Acquire);
            let t = self.ticks(now);
            if t < until {
                return Err(self.reject(self.retry_in(until, t)));
            }
        }
        self.acquire_slow(now)
    }

    /// The retry hint of a call refused while open: the rest of the cool-down, or, while
    /// forced open, the cool-down itself (the operator's reset could come at any time).
    fn retry_in(&self, until: u64, t: u64) -> Duration {
        if until == HELD_OPEN {
            self.config.cooldown
        } else {
            Duration::from_nanos(until - t)
        }
    }

    fn acquire_slow(self: &Arc<Self>, now: Instant) -> Result<Permit, CircuitOpen> {
        let mut change = None;
        let result = {
            let mut half_open = self.lock();
            let word = self.word.load(Ordering::Acquire);
            let epoch = word >> 2;
            let started = self.times_calls.then_some(now);
            match State::from_bits(word) {
                State::Closed => Ok(Permit::new(self, false, epoch, started)),
                State::Open => {
                    let until = self.open_until.load(Ordering::Acquire);
                    let t = self.ticks(now);
                    if t < until {
                        Err(self.retry_in(until, t))
                    } else {
                        half_open.admitted = 1;
                        half_open.successes = 0;
                        half_open.failures = 0;
                        self.since.store(t, Ordering::Relaxed);
                        self.word
                            .store(pack(State::HalfOpen, epoch + 1), Ordering::Release);
                        change = Some(self.change(State::Open, State::HalfOpen, now, None));
                        Ok(Permit::new(self, true, epoch + 1, started))
                    }
                }
                State::HalfOpen => {
                    if half_open.admitted < self.config.probes {
                        half_open.admitted += 1;
                        Ok(Permit::new(self, true, epoch, started))
                    } else {
                        // The probes in flight decide; a caller should come back no later than
                        // the cool-down a failed probe would start.
                        Err(self
                            .config
                            .cooldown_for(half_open.trips_in_row.saturating_add(1)))
                    }
                }
            }
        };
        self.announce(change, None);
        result.map_err(|retry_in| self.reject(retry_in))
    }

    fn reject(&self, retry_in: Duration) -> CircuitOpen {
        self.counts.rejected.fetch_add(1, Ordering::Relaxed);
        self.observe.rejected(retry_in);
        CircuitOpen::new(retry_in)
    }

    fn settle_closed(
        &self,
        epoch: u64,
        verdict: Verdict,
        slow: bool,
        now: Option<Instant>,
        clock: impl Fn() -> Instant,
    ) {
        if verdict == Verdict::Ignored {
            return;
        }
        if self.word.load(Ordering::Acquire) != pack(State::Closed, epoch) {
            return;
        }
        let failure = verdict == Verdict::Failure;
        let mut trip = None;
        if let Some(threshold) = self.config.consecutive_failures {
            match verdict {
                Verdict::Success => {
                    // Skip the write when there is nothing to reset, so that concurrent
                    // successes share the cache line instead of fighting over it.
                    if self.consecutive.load(Ordering::Relaxed) != 0 {
                        self.consecutive.store(0, Ordering::Relaxed);
                    }
                }
                Verdict::Failure => {
                    let run = self
                        .consecutive
                        .fetch_add(1, Ordering::Relaxed)
                        .saturating_add(1);
                    if run >= threshold {
                        trip = Some(Trip::Consecutive(run));
                    }
                }
                Verdict::Ignored => {}
            }
        }
        if let Some(window) = &self.window
            && verdict != Verdict::Ignored
        {
            let t = now.map_or(0, |now| self.ticks(now));
            window.record(failure, slow, t);
            if trip.is_none() && (failure || slow) {
                let tally = window.tally(t);
                let minimum = self.config.minimum_calls;
                if failure
                    && self
                        .config
                        .failure_rate
                        .is_some_and(|rate| tally.failure_rate_reached(rate, minimum))
                {
                    trip = Some(Trip::FailureRate {
                        failures: tally.failures,
                        calls: tally.calls,
                    });
                } else if slow
                    && self
                        .config
                        .slow_calls
                        .is_some_and(|s| tally.slow_rate_reached(s.rate, minimum))
                {
                    trip = Some(Trip::SlowRate {
                        slow: tally.slow,
                        calls: tally.calls,
                    });
                }
            }
        }
        if let Some(cause) = trip {
            self.trip(epoch, now.unwrap_or_else(clock), cause);
        }
    }

    fn trip(&self, epoch: u64, now: Instant, cause: Trip) {
        let change = {
            let mut half_open = self.lock();
            if self.word.load(Ordering::Acquire) != pack(State::Closed, epoch) {
                return;
            }
            half_open.trips_in_row = 1;
            self.open(&mut half_open, State::Closed, epoch, now)
        };
        self.announce(Some(change), Some(cause));
    }

    /// Opens the breaker and holds it open, whatever its state, until [`reset`]: calls are
    /// refused, no probe is admitted, outcomes of calls in flight are ignored.
    ///
    /// [`reset`]: Breaker::reset
    pub(crate) fn force_open(&self) {
        self.force_open_at(Instant::now());
    }

    pub(crate) fn force_open_at(&self, now: Instant) {
        let change = {
            let mut half_open = self.lock();
            let word = self.word.load(Ordering::Acquire);
            let from = State::from_bits(word);
            if from == State::Open && self.open_until.load(Ordering::Acquire) == HELD_OPEN {
                return;
            }
            let t = self.ticks(now);
            half_open.admitted = 0;
            half_open.successes = 0;
            half_open.failures = 0;
            self.open_until.store(HELD_OPEN, Ordering::Release);
            self.since.store(t, Ordering::Relaxed);
            self.counts.opened.fetch_add(1, Ordering::Relaxed);
            self.word
                .store(pack(State::Open, (word >> 2) + 1), Ordering::Release);
            // Already open on a cool-down: held now, but not a state change to announce.
            (from != State::Open).then(|| {
                let mut change = self.change(from, State::Open, now, None);
                change.forced = true;
                change
            })
        };
        self.announce(change, None);
    }

    /// Closes the breaker with empty counts, whatever its state (a forced open included):
    /// the window and the consecutive count are cleared, the cool-down is back to its base,
    /// and the outcomes of calls in flight are ignored. The running totals of [`BreakerStats`]
    /// stay.
    pub(crate) fn reset(&self) {
        self.reset_at(Instant::now());
    }

    pub(crate) fn reset_at(&self, now: Instant) {
        let change = {
            let mut half_open = self.lock();
            let word = self.word.load(Ordering::Acquire);
            let from = State::from_bits(word);
            let epoch = word >> 2;
            half_open.admitted = 0;
            half_open.successes = 0;
            half_open.failures = 0;
            half_open.trips_in_row = 0;
            if from == State::Closed {
                // Publish the new epoch before clearing, so that calls of the old one stop
                // recording; one that read the old word just before may still land a single
                // outcome in the cleared window, as if it had finished after the reset.
                self.word
                    .store(pack(State::Closed, epoch + 1), Ordering::Release);
                self.clear_counts();
                self.since.store(self.ticks(now), Ordering::Relaxed);
                None
            } else {
                let mut change = self.close(from, epoch, now);
                change.forced = true;
                Some(change)
            }
        };
        match change {
            Some(change) => self.announce(Some(change), None),
            None => self.observe.reset_closed(),
        }
    }

    fn clear_counts(&self) {
        if let Some(window) = &self.window {
            window.reset();
        }
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// Moves to open; the caller holds the lock and has checked the state and epoch.
    fn open(&self, half_open: &mut HalfOpen, from: State, epoch: u64, now: Instant) -> StateChange {
        let cooldown = self.config.cooldown_for(half_open.trips_in_row);
        let t = self.ticks(now);
        half_open.admitted = 0;
        half_open.successes = 0;
        half_open.failures = 0;
        self.open_until
            .store(t.saturating_add(nanos(cooldown)), Ordering::Release);
        self.since.store(t, Ordering::Relaxed);
        self.counts.opened.fetch_add(1, Ordering::Relaxed);
        self.word
            .store(pack(State::Open, epoch + 1), Ordering::Release);
        self.change(from, State::Open, now, Some(cooldown))
    }

    fn settle_probe(&self, epoch: u64, verdict: Verdict, slow: bool, now: Instant) {
        let mut tripped = false;
        let change = {
            let mut half_open = self.lock();
            if self.word.load(Ordering::Acquire) != pack(State::HalfOpen, epoch) {
                return;
            }
            let probes = self.config.probes;
            let needed = self.config.probe_successes;
            match verdict {
                Verdict::Ignored => {
                    half_open.admitted = half_open.admitted.saturating_sub(1);
                    None
                }
                Verdict::Success if !slow => {
                    half_open.successes += 1;
                    (half_open.successes >= needed).then(|| {
                        half_open.trips_in_row = 0;
                        self.close(State::HalfOpen, epoch, now)
                    })
                }
                Verdict::Success | Verdict::Failure => {
                    tripped = true;
                    half_open.failures += 1;
                    (half_open.failures > probes - needed).then(|| {
                        half_open.trips_in_row = half_open.trips_in_row.saturating_add(1);
                        self.open(&mut half_open, State::HalfOpen, epoch, now)
                    })
                }
            }
        };
        self.announce(change, tripped.then_some(Trip::ProbeFailed));
    }

    /// Moves from `from` (open or half-open) to closed with empty counts; the caller holds
    /// the lock.
    fn close(&self, from: State, epoch: u64, now: Instant) -> StateChange {
        // Cleared before the new word is published: no closed-path call of the new epoch
        // can record before it sees that word.
        self.clear_counts();
        self.since.store(self.ticks(now), Ordering::Relaxed);
        self.word
            .store(pack(State::Closed, epoch + 1), Ordering::Release);
        self.change(from, State::Closed, now, None)
    }

    fn release_probe(&self, epoch: u64) {
        let mut half_open = self.lock();
        if self.word.load(Ordering::Acquire) == pack(State::HalfOpen, epoch) {
            half_open.admitted = half_open.admitted.saturating_sub(1);
        }
    }

    fn change(
        &self,
        from: State,
        to: State,
        at: Instant,
        cooldown: Option<Duration>,
    ) -> StateChange {
        StateChange {
            breaker: self.name.clone(),
            key: self.key.clone(),
            from,
            to,
            at,
            cooldown,
            forced: false,
        }
    }

    /// Reports a state change (`trip`: why it opened on its own) to the funnel and the hook;
    /// called outside the lock, so the hook may read stats.
    fn announce(&self, change: Option<StateChange>, trip: Option<Trip>) {
        let Some(change) = change else { return };
        self.observe.transition(&change, trip);
        if let Some(hook) = &self.config.hook {
            hook(&change);
        }
    }

    /// Whether the breaker is closed, without reading the clock.
    pub(crate) fn is_closed(&self) -> bool {
        State::from_bits(self.word.load(Ordering::Acquire)) == State::Closed
    }

    pub(crate) fn state(&self) -> State {
        self.state_at(Instant::now())
    }

    pub(crate) fn state_at(&self, now: Instant) -> State {
        let state = State::from_bits(self.word.load(Ordering::Acquire));
        if state == State::Open && self.ticks(now) >= self.open_until.load(Ordering::Acquire) {
            State::HalfOpen
        } else {
            state
        }
    }

    pub(crate) fn stats(&self) -> BreakerStats {
        self.stats_at(Instant::now())
    }

    pub(crate) fn stats_at(&self, now: Instant) -> BreakerStats {
        let t = self.ticks(now);
        let word = self.word.load(Ordering::Acquire);
        let stored = State::from_bits(word);
        let until = self.open_until.load(Ordering::Acquire);
        let since = self.since.load(Ordering::Relaxed);
        let forced_open = stored == State::Open && until == HELD_OPEN;
        let (state, entered, next_probe_in) = match stored {
            State::Open if forced_open => (State::Open, since, None),
            State::Open if t >= until => (State::HalfOpen, until, None),
            State::Open => (State::Open, since, Some(Duration::from_nanos(until - t))),
            other => (other, since, None),
        };
        let probes_in_flight = if stored == State::HalfOpen {
            let half_open = self.lock();
            half_open
                .admitted
                .saturating_sub(half_open.successes + half_open.failures)
        } else {
            0
        };
        let tally = self.window.as_ref().map(|w| w.tally(t)).unwrap_or_default();
        BreakerStats {
            state,
            time_in_state: Duration::from_nanos(t.saturating_sub(entered)),
            next_probe_in,
            successes: self.counts.successes.load(Ordering::Relaxed),
            failures: self.counts.failures.load(Ordering::Relaxed),
            ignored: self.counts.ignored.load(Ordering::Relaxed),
            slow: self.counts.slow.load(Ordering::Relaxed),
            rejected: self.counts.rejected.load(Ordering::Relaxed),
            opened: self.counts.opened.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            window_calls: tally.calls,
            window_failures: tally.failures,
            window_slow: tally.slow,
            probes_in_flight,
            forced_open,
        }
    }

    #[cfg(test)]
    pub(crate) fn base(&self) -> Instant {
        self.base
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
}

/// The right to make one call: a closed-path call or a half-open probe.
///
/// A probe permit dropped without [`settle`](Permit::settle) (its future was dropped, or
/// panicked) gives its place back, so half-open can never get stuck waiting for it.
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    epoch: u64,
    started: Option<Instant>,
    /// Where the call's time stops for the slow-call policy, when not at its end (a stream:
    /// its head).
    timed_until: Option<Instant>,
    settled: bool,
}

impl Permit {
    fn new(breaker: &Arc<Breaker>, probe: bool, epoch: u64, started: Option<Instant>) -> Self {
        Permit {
            breaker: Arc::clone(breaker),
            probe,
            epoch,
            started,
            timed_until: None,
            settled: false,
        }
    }

    pub(crate) fn config(&self) -> &Config {
        self.breaker.config()
    }

    #[cfg(test)]
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }

    #[cfg(test)]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Records the call's outcome. `clock` is read only if the outcome depends on time.
    /// Stops the call's clock for the slow-call policy here (a stream's head), whenever it
    /// is settled.
    pub(crate) fn time_until_now(&mut self) {
        if self.started.is_some() {
            self.timed_until = Some(Instant::now());
        }
    }

    pub(crate) fn settle(mut self, verdict: Verdict, clock: impl Fn() -> Instant) {
        self.settled = true;
        let breaker = &*self.breaker;
        let counter = match verdict {
            Verdict::Success => &breaker.counts.successes,
            Verdict::Failure => &breaker.counts.failures,
            Verdict::Ignored => &breaker.counts.ignored,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = breaker.clock_at_end.then(&clock);
        let slow = match (
            self.started,
            self.timed_until.or(now),
            breaker.config.slow_calls,
        ) {
            (Some(started), Some(now), Some(policy)) if verdict != Verdict::Ignored => {
                now.saturating_duration_since(started) >= policy.threshold
            }
            _ => false,
        };
        if slow {
            breaker.counts.slow.fetch_add(1, Ordering::Relaxed);
        }
        if self.probe {
            breaker.settle_probe(self.epoch, verdict, slow, now.unwrap_or_else(&clock));
        } else {
            breaker.settle_closed(self.epoch, verdict, slow, now, clock);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.release_probe(self.epoch);
        }
    }
}
