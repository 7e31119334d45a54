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
    /// Admitted requests still in the window, oldest first: when, and their cost.
    admitted: VecDeque<(Instant, u64)>,
    tokens: u64,
}

impl QuotaWindow {
    pub(crate) fn new(quota: Quota) -> Self {
        QuotaWindow {
            quota,
            admitted: VecDeque::new(),
            tokens: 0,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, cost)) = self.admitted.front() {
            if at + WINDOW > now {
                break;
            }
            self.admitted.pop_front();
            self.tokens -= cost;
        }
    }

    fn until_expired(&self, index: usize, now: Instant) -> Duration {
        self.admitted.get(index).map_or(Duration::ZERO, |&(at, _)| {
            (at + WINDOW).saturating_duration_since(now)
        })
    }

    /// Admits a request of `cost` tokens at `now`, or says how long until it would be.
    pub(crate) fn check(&mut self, now: Instant, cost: u64) -> QuotaCheck {
        self.expire(now);
        let count = self.admitted.len() as u64;
        let requests_ok = count < self.quota.requests_per_minute;
        let tokens_ok = self.tokens.saturating_add(cost) <= self.quota.tokens_per_minute;
        if requests_ok && tokens_ok {
            self.admitted.push_back((now, cost));
            self.tokens += cost;
            return QuotaCheck::Admitted(self.state(now));
        }
        let never = self.quota.requests_per_minute == 0 || cost > self.quota.tokens_per_minute;
        let retry_after = if never {
            // It will never fit: tell the client to come back when the window is empty.
            self.until_expired(self.admitted.len().saturating_sub(1), now)
                .max(Duration::from_secs(1))
        } else {
            let for_requests = if requests_ok {
                Duration::ZERO
            } else {
                // `count - limit + 1` of the oldest must expire.
                let index = (count - self.quota.requests_per_minute) as usize;
                self.until_expired(index, now)
            };
            let for_tokens = if tokens_ok {
                Duration::ZERO
            } else {
                let mut left = self.tokens;
                let mut index = 0;
                for (i, &(_, c)) in self.admitted.iter().enumerate() {
                    left -= c;
                    index = i;
                    if left + cost <= self.quota.tokens_per_minute {
                        break;
                    }
                }
                self.until_expired(index, now)
            };
            for_requests.max(for_tokens)
        };
        QuotaCheck::Refused {
            retry_after,
            state: self.state(now),
        }
    }

    fn state(&self, now: Instant) -> RateLimitState {
        let reset = self.admitted.back().map_or(Duration::ZERO, |&(at, _)| {
            (at + WINDOW).saturating_duration_since(now)
        });
        let limit = |limit: u64, used: u64| {
            (limit != u64::MAX).then(|| LimitState {
                limit,
                remaining: limit.saturating_sub(used),
                reset,
            })
        };
        RateLimitState {
            requests: limit(self.quota.requests_per_minute, self.admitted.len() as u64),
            tokens: limit(self.quota.tokens_per_minute, self.tokens),
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

    proptest::proptest! {
        /// Against a reference model: a request is admitted exactly when the last 60 s of
        /// admitted requests leave room for it, and a refusal's hint is exact: at
        /// `now + retry_after` the same request is admitted, a millisecond earlier it is not.
        #[test]
        fn window_matches_the_model_and_hints_are_exact(
            rpm in 1u64..6,
            tpm in 10u64..200,
            ops in proptest::collection::vec((0u64..30_000, 0u64..60), 1..60),
        ) {
            let mut now = Instant::now();
            let mut window = QuotaWindow::new(Quota::new(rpm, tpm));
            let mut admitted: Vec<(Instant, u64)> = Vec::new();
            for (advance, cost) in ops {
                now += Duration::from_millis(advance);
                let live: Vec<(Instant, u64)> =
                    admitted.iter().copied().filter(|(at, _)| *at + WINDOW > now).collect();
                let used: u64 = live.iter().map(|(_, c)| c).sum();
                let live = live.len() as u64;
                let fits = live < rpm && used + cost <= tpm;
                match window.check(now, cost) {
                    QuotaCheck::Admitted(state) => {
                        proptest::prop_assert!(fits);
                        admitted.push((now, cost));
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
