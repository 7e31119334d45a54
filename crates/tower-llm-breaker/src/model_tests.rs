//! The breaker against a plain, sequential reference model of its state machine, on random
//! sequences of admissions, outcomes, drops and time advances.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use crate::breaker::{Breaker, Permit};
use crate::config::{CircuitBreakerBuilder, Config, Verdict, Window};
use crate::state::State;

#[derive(Clone, Debug)]
enum Op {
    Acquire,
    Settle(usize, Verdict),
    Drop(usize),
    Advance(u64),
    ForceOpen,
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        3 => (any::<usize>(), Just(Verdict::Failure)).prop_map(|(i, v)| Op::Settle(i, v)),
        3 => (any::<usize>(), Just(Verdict::Success)).prop_map(|(i, v)| Op::Settle(i, v)),
        1 => (any::<usize>(), Just(Verdict::Ignored)).prop_map(|(i, v)| Op::Settle(i, v)),
        1 => any::<usize>().prop_map(Op::Drop),
        2 => (0u64..4_000).prop_map(Op::Advance),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::Reset),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop::option::of(1usize..5),
        prop::option::of(prop_oneof![Just(0.5), Just(0.75), Just(1.0)]),
        prop::option::of(prop_oneof![Just(0.5), Just(1.0)]),
        prop_oneof![
            (1usize..6).prop_map(Window::count),
            (1usize..5)
                .prop_map(|b| Window::time_with_buckets(Duration::from_secs(b as u64 * 2), b)),
        ],
        1usize..4,
        (1u64..4, prop_oneof![Just(1.0), Just(2.0)]),
        (1usize..4, prop_oneof![Just(0.5), Just(1.0)]),
    )
        .prop_filter_map(
            "invalid combination",
            |(consecutive, rate, slow, window, minimum, (cooldown, mult), (probes, probe_rate))| {
                let mut b = CircuitBreakerBuilder::new()
                    .window(window)
                    .minimum_calls(minimum)
                    .cooldown(Duration::from_secs(cooldown))
                    .cooldown_backoff(mult, Duration::from_secs(cooldown * 3))
                    .probes(probes)
                    .probe_success_rate(probe_rate);
                b = match consecutive {
                    Some(n) => b.consecutive_failures(n),
                    None => b.without_consecutive_failures(),
                };
                b = match rate {
                    Some(rate) => b.failure_rate(rate),
                    None => b.without_failure_rate(),
                };
                if let Some(rate) = slow {
                    b = b.slow_calls(Duration::from_millis(1_500), rate);
                }
                b.validate().ok()
            },
        )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ModelState {
    Closed,
    Open {
        until: Duration,
    },
    /// Forced open: only a reset ends it.
    Held,
    HalfOpen {
        admitted: usize,
        successes: usize,
        failures: usize,
    },
}

#[derive(Debug)]
struct ModelPermit {
    probe: bool,
    epoch: u64,
    started: Duration,
}

/// The breaker's specification, written the obvious way: one thread, plain fields.
struct Model {
    config: Config,
    now: Duration,
    state: ModelState,
    epoch: u64,
    consecutive: usize,
    /// (bucket or sequence index, failed, slow)
    window: VecDeque<(u64, bool, bool)>,
    trips_in_row: u32,
}

impl Model {
    fn new(config: Config) -> Self {
        Model {
            config,
            now: Duration::ZERO,
            state: ModelState::Closed,
            epoch: 0,
            consecutive: 0,
            window: VecDeque::new(),
            trips_in_row: 0,
        }
    }

    fn bucket(&self) -> u64 {
        match self.config.window {
            Window::Time { length, buckets } => {
                (self.now.as_nanos() / (length.as_nanos() / buckets as u128)) as u64
            }
            Window::Count { .. } => 0,
        }
    }

    fn tally(&self) -> (usize, usize, usize) {
        if !self.config.uses_window() {
            return (0, 0, 0);
        }
        let live: Vec<_> = match self.config.window {
            Window::Count { size } => self.window.iter().rev().take(size).collect(),
            Window::Time { buckets, .. } => {
                let now = self.bucket();
                self.window
                    .iter()
                    .filter(|(b, ..)| now - b < buckets as u64)
                    .collect()
            }
        };
        (
            live.len(),
            live.iter().filter(|e| e.1).count(),
            live.iter().filter(|e| e.2).count(),
        )
    }

    fn acquire(&mut self) -> Result<ModelPermit, Duration> {
        if self.state == ModelState::Held {
            return Err(self.config.cooldown);
        }
        if let ModelState::Open { until } = self.state {
            if self.now < until {
                return Err(until - self.now);
            }
            self.epoch += 1;
            self.state = ModelState::HalfOpen {
                admitted: 0,
                successes: 0,
                failures: 0,
            };
        }
        let probe = match &mut self.state {
            ModelState::Closed => false,
            ModelState::HalfOpen { admitted, .. } => {
                if *admitted == self.config.probes {
                    return Err(self.config.cooldown_for(self.trips_in_row + 1));
                }
                *admitted += 1;
                true
            }
            ModelState::Open { .. } | ModelState::Held => unreachable!("left above"),
        };
        Ok(ModelPermit {
            probe,
            epoch: self.epoch,
            started: self.now,
        })
    }

    fn open(&mut self) {
        let cooldown = self.config.cooldown_for(self.trips_in_row);
        self.epoch += 1;
        self.state = ModelState::Open {
            until: self.now + cooldown,
        };
    }

    fn settle(&mut self, permit: ModelPermit, verdict: Verdict) {
        let slow = verdict != Verdict::Ignored
            && self
                .config
                .slow_calls
                .is_some_and(|s| self.now - permit.started >= s.threshold);
        if permit.epoch != self.epoch {
            return;
        }
        if permit.probe {
            let ModelState::HalfOpen {
                admitted,
                successes,
                failures,
            } = &mut self.state
            else {
                return;
            };
            let needed = self.config.probe_successes;
            match verdict {
                Verdict::Ignored => *admitted -= 1,
                Verdict::Success if !slow => {
                    *successes += 1;
                    if *successes >= needed {
                        self.epoch += 1;
                        self.state = ModelState::Closed;
                        self.window.clear();
                        self.consecutive = 0;
                        self.trips_in_row = 0;
                    }
                }
                _ => {
                    *failures += 1;
                    if *failures > self.config.probes - needed {
                        self.trips_in_row += 1;
                        self.open();
                    }
                }
            }
            return;
        }
        if self.state != ModelState::Closed || verdict == Verdict::Ignored {
            return;
        }
        let failed = verdict == Verdict::Failure;
        let mut trip = false;
        if let Some(n) = self.config.consecutive_failures {
            if failed {
                self.consecutive += 1;
                trip = self.consecutive >= n;
            } else {
                self.consecutive = 0;
            }
        }
        if self.config.uses_window() {
            self.window.push_back((self.bucket(), failed, slow));
            let (calls, failures, slows) = self.tally();
            let min = self.config.minimum_calls;
            let rate_trip = calls >= min
                && ((failed
                    && self
                        .config
                        .failure_rate
                        .is_some_and(|r| failures as f64 >= r * calls as f64))
                    || (slow
                        && self
                            .config
                            .slow_calls
                            .is_some_and(|s| slows as f64 >= s.rate * calls as f64)));
            trip = trip || rate_trip;
        }
        if trip {
            self.trips_in_row = 1;
            self.open();
        }
    }

    fn force_open(&mut self) {
        if self.state == ModelState::Held {
            return;
        }
        self.epoch += 1;
        self.state = ModelState::Held;
    }

    fn reset(&mut self) {
        self.epoch += 1;
        self.state = ModelState::Closed;
        self.window.clear();
        self.consecutive = 0;
        self.trips_in_row = 0;
    }

    fn drop_permit(&mut self, permit: ModelPermit) {
        if permit.probe
            && permit.epoch == self.epoch
            && let ModelState::HalfOpen { admitted, .. } = &mut self.state
        {
            *admitted -= 1;
        }
    }

    fn state(&self) -> State {
        match self.state {
            ModelState::Closed => State::Closed,
            ModelState::Open { until } if self.now < until => State::Open,
            ModelState::Held => State::Open,
            _ => State::HalfOpen,
        }
    }

    fn in_flight(&self) -> usize {
        match self.state {
            ModelState::HalfOpen {
                admitted,
                successes,
                failures,
            } => admitted - successes - failures,
            _ => 0,
        }
    }
}

fn run(config: Config, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let breaker = Arc::new(Breaker::new(Arc::new(config.clone()), None));
    let base = breaker.base();
    let mut model = Model::new(config.clone());
    let mut permits: Vec<(Permit, ModelPermit)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let now = base + model.now;
        match op {
            Op::Acquire => match (breaker.acquire(|| now), model.acquire()) {
                (Ok(real), Ok(expected)) => {
                    prop_assert_eq!(real.is_probe(), expected.probe, "step {}", step);
                    permits.push((real, expected));
                }
                (Err(real), Err(expected)) => {
                    prop_assert_eq!(real.retry_in(), expected, "step {}", step);
                }
                (real, expected) => {
                    return Err(TestCaseError::fail(format!(
                        "step {step}: breaker {:?}, model {:?}",
                        real.map(|p| p.is_probe()),
                        expected.map(|p| p.probe)
                    )));
                }
            },
            Op::Settle(i, verdict) if !permits.is_empty() => {
                let (real, expected) = permits.remove(i % permits.len());
                real.settle(verdict, || now);
                model.settle(expected, verdict);
            }
            Op::Drop(i) if !permits.is_empty() => {
                let (real, expected) = permits.remove(i % permits.len());
                drop(real);
                model.drop_permit(expected);
            }
            Op::Advance(ms) => model.now += Duration::from_millis(ms),
            Op::ForceOpen => {
                breaker.force_open_at(now);
                model.force_open();
            }
            Op::Reset => {
                breaker.reset_at(now);
                model.reset();
            }
            Op::Settle(..) | Op::Drop(_) => {}
        }
        let now = base + model.now;
        let stats = breaker.stats_at(now);
        prop_assert_eq!(stats.state, model.state(), "step {}", step);
        prop_assert_eq!(breaker.state_at(now), model.state(), "step {}", step);
        prop_assert_eq!(stats.probes_in_flight, model.in_flight(), "step {}", step);
        prop_assert!(stats.probes_in_flight <= config.probes);
        prop_assert_eq!(
            stats.forced_open,
            model.state == ModelState::Held,
            "step {}",
            step
        );
        if model.state == ModelState::Closed {
            prop_assert_eq!(
                (stats.window_calls, stats.window_failures, stats.window_slow),
                model.tally(),
                "step {}",
                step
            );
            if config.consecutive_failures.is_some() {
                prop_assert_eq!(stats.consecutive_failures, model.consecutive);
            }
        }
    }
    // Never stuck: with every call gone, the breaker released and the longest cool-down
    // waited out, a call is admitted.
    permits.clear();
    if model.state == ModelState::Held {
        prop_assert!(
            breaker
                .acquire(|| base + model.now + config.max_cooldown * 100)
                .is_err(),
            "held open whatever the time"
        );
        breaker.reset_at(base + model.now);
    }
    let later = base + model.now + config.max_cooldown;
    prop_assert!(breaker.acquire(|| later).is_ok());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn breaker_follows_the_model(config in config(), ops in prop::collection::vec(op(), 1..120)) {
        run(config, ops)?;
    }
}

#[test]
fn a_probe_dropped_mid_flight_frees_its_place() {
    let config = CircuitBreakerBuilder::new()
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(1))
        .validate()
        .expect("valid");
    let breaker = Arc::new(Breaker::new(Arc::new(config), None));
    let t0 = breaker.base();
    breaker
        .acquire(|| t0)
        .expect("closed")
        .settle(Verdict::Failure, || t0);
    let t1 = t0 + Duration::from_secs(1);
    let probe = breaker.acquire(|| t1).expect("a probe");
    assert!(probe.is_probe());
    assert!(breaker.acquire(|| t1).is_err(), "only one probe");
    drop(probe);
    let probe = breaker.acquire(|| t1).expect("the place is free again");
    probe.settle(Verdict::Success, || t1);
    assert_eq!(breaker.state_at(t1), State::Closed);
}

/// Threads hammer one breaker with random outcomes, drops and time steps: no half-open
/// period ever has more probes out than the limit, and when the dust settles the breaker is
/// neither stuck nor miscounting.
#[test]
fn concurrent_callers_never_exceed_the_probe_limit() {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    const PROBES: usize = 2;
    let config = CircuitBreakerBuilder::new()
        .consecutive_failures(3)
        .failure_rate(0.5)
        .window(Window::count(20))
        .minimum_calls(10)
        .cooldown(Duration::from_millis(5))
        .probes(PROBES)
        .probe_success_rate(0.5)
        .validate()
        .expect("valid");
    let breaker = Arc::new(Breaker::new(Arc::new(config), None));
    let base = breaker.base();
    let offset_ms = Arc::new(AtomicU64::new(0));
    let probes_out: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let threads: Vec<_> = (0..4u64)
        .map(|seed| {
            let breaker = Arc::clone(&breaker);
            let offset_ms = Arc::clone(&offset_ms);
            let probes_out = Arc::clone(&probes_out);
            std::thread::spawn(move || {
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let mut held: Vec<Permit> = Vec::new();
                for _ in 0..20_000 {
                    let now = base + Duration::from_millis(offset_ms.load(Ordering::Relaxed));
                    match next() % 8 {
                        0..=3 => {
                            if let Ok(permit) = breaker.acquire(|| now) {
                                if permit.is_probe() {
                                    let mut out = probes_out.lock().expect("lock");
                                    let n = out.entry(permit.epoch()).or_default();
                                    *n += 1;
                                    assert!(*n <= PROBES, "{n} probes in one half-open period");
                                }
                                held.push(permit);
                            }
                        }
                        4..=6 if !held.is_empty() => {
                            let permit = held.swap_remove(next() as usize % held.len());
                            if permit.is_probe() {
                                *probes_out
                                    .lock()
                                    .expect("lock")
                                    .entry(permit.epoch())
                                    .or_default() -= 1;
                            }
                            match next() % 4 {
                                0 => drop(permit),
                                1 => permit.settle(Verdict::Success, || now),
                                2 => permit.settle(Verdict::Ignored, || now),
                                _ => permit.settle(Verdict::Failure, || now),
                            }
                        }
                        _ => {
                            offset_ms.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                for permit in held {
                    if permit.is_probe() {
                        *probes_out
                            .lock()
                            .expect("lock")
                            .entry(permit.epoch())
                            .or_default() -= 1;
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no thread panicked");
    }
    let later = base + Duration::from_millis(offset_ms.load(Ordering::Relaxed) + 10);
    assert_eq!(breaker.stats_at(later).probes_in_flight, 0);
    let stats = breaker.stats_at(later);
    assert!(stats.opened > 0, "the test exercised trips: {stats:?}");
    assert!(breaker.acquire(|| later).is_ok(), "not stuck");
}
