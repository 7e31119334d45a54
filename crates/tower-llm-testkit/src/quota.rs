//! The sliding 60 s window behind [`Quota`](crate::Quota).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::plan::Quota;

/// The length of a quota window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// One dimension (requests or tokens) of a quota as the rate-limit headers report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LimitState {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    /// Until the window is back to its full limit.
    pub(crate) reset: Duration,
}

/// What the rate-limit headers of one answer say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RateLimitState {
    pub(crate) requests: Option<LimitState>,
    pub(crate) tokens: Option<LimitState>,
}

/// The verdict of the quota on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QuotaCheck {
    Admitted(RateLimitState),
    Refused {
        retry_after: Duration,
        state: RateLimitState,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct QuotaWindow {
    quota: Quota,
    /// What is still in the window, oldest first.
    charges: VecDeque<Charge>,
    /// Admitted requests among `charges`.
    requests: u64,
    /// Tokens of `charges`.
    tokens: u64,
}

/// Tokens counted at one instant: a request's cost when it was admitted, or what its answer
/// used beyond that cost.
#[derive(Clone, Copy, Debug)]
struct Charge {
    at: Instant,
    tokens: u64,
    request: bool,
}

impl QuotaWindow {
    pub(crate) fn new(quota: Quota) -> Self {
        QuotaWindow {
            quota,
            charges: VecDeque::new(),
            requests: 0,
            tokens: 0,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&charge) = self.charges.front() {
            if charge.at + WINDOW > now {
                break;
            }
            self.charges.pop_front();
            self.tokens -= charge.tokens;
            self.requests -= u64::from(charge.request);
        }
    }

    fn until_expired(charge: Option<&Charge>, now: Instant) -> Duration {
        charge.map_or(Duration::ZERO, |charge| {
            (charge.at + WINDOW).saturating_duration_since(now)
        })
    }

    /// Admits a request of `cost` tokens at `now`, or says how long until it would be.
    pub(crate) fn check(&mut self, now: Instant, cost: u64) -> QuotaCheck {
        self.expire(now);
        let count = self.requests;
        let requests_ok = count < self.quota.requests_per_minute;
        let tokens_ok = self.tokens.saturating_add(cost) <= self.quota.tokens_per_minute;
        if requests_ok && tokens_ok {
            self.charges.push_back(Charge {
                at: now,
                tokens: cost,
                request: true,
            });
            self.requests += 1;
            self.tokens += cost;
            return QuotaCheck::Admitted(self.state(now));
        }
        let never = self.quota.requests_per_minute == 0 || cost > self.quota.tokens_per_minute;
        let retry_after = if never {
            // It will never fit: tell the client to come back when the window is empty.
            Self::until_expired(self.charges.back(), now).max(Duration::from_secs(1))
        } else {
            let for_requests = if requests_ok {
                Duration::ZERO
            } else {
                // `count - limit + 1` of the oldest requests must expire.
                let index = (count - self.quota.requests_per_minute) as usize;
                let request = self.charges.iter().filter(|c| c.request).nth(index);
                Self::until_expired(request, now)
            };
            let for_tokens = if tokens_ok {
                Duration::ZERO
            } else {
                let mut left = self.tokens;
                let mut last = None;
                for charge in &self.charges {
                    left -= charge.tokens;
                    last = Some(charge);
                    if left + cost <= self.quota.tokens_per_minute {
                        break;
                    }
                }
                Self::until_expired(last, now)
            };
            for_requests.max(for_tokens)
        };
        QuotaCheck::Refused {
            retry_after,
            state: self.state(now),
        }
    }

    /// Counts `tokens` more at `now`, beyond what an admitted request cost: what its answer
    /// used over the estimate it was admitted at, as a provider counts the tokens a call
    /// really used. Not a request; later requests wait for these tokens to leave the window
    /// like any others.
    pub(crate) fn charge(&mut self, now: Instant, tokens: u64) {
        self.expire(now);
        if tokens == 0 {
            return;
        }
        self.charges.push_back(Charge {
            at: now,
            tokens,
            request: false,
        });
        self.tokens = self.tokens.saturating_add(tokens);
    }

    fn state(&self, now: Instant) -> RateLimitState {
        // Each limit resets when the last charge it counts leaves the window: a token-only
        // charge (usage beyond an admission) moves the tokens' reset, not the requests'.
        let last_request = self.charges.iter().rev().find(|c| c.request);
        let limit = |limit: u64, used: u64, last: Option<&Charge>| {
            (limit != u64::MAX).then(|| LimitState {
                limit,
                remaining: limit.saturating_sub(used),
                reset: Self::until_expired(last, now),
            })
        };
        RateLimitState {
            requests: limit(self.quota.requests_per_minute, self.requests, last_request),
            tokens: limit(
                self.quota.tokens_per_minute,
                self.tokens,
                self.charges.back(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_after(check: QuotaCheck) -> Option<Duration> {
        match check {
            QuotaCheck::Admitted(_) => None,
            QuotaCheck::Refused { retry_after, .. } => Some(retry_after),
        }
    }

    #[test]
    fn requests_slide_out_of_the_window() {
        let start = Instant::now();
        let mut window = QuotaWindow::new(Quota::new(2, u64::MAX));
        assert_eq!(refused_after(window.check(start, 1)), None);
        let later = start + Duration::from_secs(10);
        assert_eq!(refused_after(window.check(later, 1)), None);
        assert_eq!(
            refused_after(window.check(later, 1)),
            Some(Duration::from_secs(50))
        );
        assert_eq!(refused_after(window.check(start + WINDOW, 1)), None);
        assert_eq!(
            refused_after(window.check(start + WINDOW, 1)),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn tokens_wait_for_enough_to_free() {
        let start = Instant::now();
        let mut window = QuotaWindow::new(Quota::new(u64::MAX, 100));
        assert_eq!(refused_after(window.check(start, 40)), None);
        let t1 = start + Duration::from_secs(5);
        assert_eq!(refused_after(window.check(t1, 40)), None);
        let t2 = start + Duration::from_secs(6);
        // 80 used; 50 more fits once the first 40 leave the window, 54 s from now.
        assert_eq!(
            refused_after(window.check(t2, 50)),
            Some(Duration::from_secs(54))
        );
        // 20 more fits at once.
        assert_eq!(refused_after(window.check(t2, 20)), None);
        match window.check(t2, 1) {
            QuotaCheck::Refused { state, .. } => {
                let tokens = state.tokens.expect("token limit");
                assert_eq!((tokens.limit, tokens.remaining), (100, 0));
                assert_eq!(tokens.reset, WINDOW);
                assert_eq!(state.requests, None);
            }
            QuotaCheck::Admitted(_) => panic!("over the token quota"),
        }
    }

    #[test]
    fn never_fitting_request_gets_a_bounded_hint() {
        let mut window = QuotaWindow::new(Quota::new(5, 10));
        let after = refused_after(window.check(Instant::now(), 11));
        assert_eq!(after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn tokens_charged_after_admission_hold_the_window_but_are_no_request() {
        let start = Instant::now();
        let mut window = QuotaWindow::new(Quota::new(2, 100));
        assert_eq!(refused_after(window.check(start, 30)), None);
        // Its answer used 50 more than it was admitted at.
        let t1 = start + Duration::from_secs(5);
        window.charge(t1, 50);
        // 80 counted: 20 more fit; 51 only once the 50 have left too, not the 30 alone.
        let t2 = start + Duration::from_secs(10);
        assert_eq!(
            refused_after(window.clone().check(t2, 51)),
            Some(Duration::from_secs(55))
        );
        match window.check(t2, 20) {
            QuotaCheck::Admitted(state) => {
                // Two requests: the charge was not one.
                assert_eq!(state.requests.expect("limited").remaining, 0);
                assert_eq!(state.tokens.expect("limited").remaining, 0);
            }
            QuotaCheck::Refused { .. } => panic!("20 more fit"),
        }
        // A charge after the last request moves the tokens' reset only.
        let t3 = start + Duration::from_secs(20);
        window.charge(t3, 1);
        match window.clone().check(t3, 0) {
            QuotaCheck::Refused { state, .. } | QuotaCheck::Admitted(state) => {
                let requests = state.requests.expect("limited");
                let tokens = state.tokens.expect("limited");
                assert_eq!(
                    requests.reset,
                    Duration::from_secs(50),
                    "the request at 10 s"
                );
                assert_eq!(tokens.reset, Duration::from_secs(60), "the charge at 20 s");
            }
        }
    }

    proptest::proptest! {
        /// Against a reference model: a request is admitted exactly when the last 60 s of
        /// admitted requests and charged tokens leave room for it, and a refusal's hint is
        /// exact: at `now + retry_after` the same request is admitted, a millisecond earlier
        /// it is not.
        #[test]
        fn window_matches_the_model_and_hints_are_exact(
            rpm in 1u64..6,
            tpm in 10u64..200,
            ops in proptest::collection::vec((0u64..30_000, 0u64..60, proptest::bool::weighted(0.3)), 1..60),
        ) {
            let mut now = Instant::now();
            let mut window = QuotaWindow::new(Quota::new(rpm, tpm));
            // When, how many tokens, whether a request.
            let mut counted: Vec<(Instant, u64, bool)> = Vec::new();
            for (advance, cost, charge) in ops {
                now += Duration::from_millis(advance);
                if charge {
                    window.charge(now, cost);
                    counted.push((now, cost, false));
                    continue;
                }
                let live: Vec<(Instant, u64, bool)> =
                    counted.iter().copied().filter(|(at, _, _)| *at + WINDOW > now).collect();
                let used: u64 = live.iter().map(|(_, c, _)| c).sum();
                let live = live.iter().filter(|(_, _, request)| *request).count() as u64;
                let fits = live < rpm && used + cost <= tpm;
                match window.check(now, cost) {
                    QuotaCheck::Admitted(state) => {
                        proptest::prop_assert!(fits);
                        counted.push((now, cost, true));
                        let requests = state.requests.expect("limited");
                        proptest::prop_assert_eq!(requests.remaining, rpm - live - 1);
                        let tokens = state.tokens.expect("limited");
                        proptest::prop_assert_eq!(tokens.remaining, tpm - used - cost);
                    }
                    QuotaCheck::Refused { retry_after, .. } => {
                        proptest::prop_assert!(!fits);
                        if cost <= tpm {
                            let mut later = window.clone();
                            let admitted_later = matches!(
                                later.check(now + retry_after, cost),
                                QuotaCheck::Admitted(_)
                            );
                            proptest::prop_assert!(admitted_later);
                            if retry_after >= Duration::from_millis(1) {
                                let mut earlier = window.clone();
                                let early = now + retry_after - Duration::from_millis(1);
                                let refused_earlier = matches!(
                                    earlier.check(early, cost),
                                    QuotaCheck::Refused { .. }
                                );
                                proptest::prop_assert!(refused_earlier);
                            }
                        }
                    }
                }
            }
        }
    }
}
