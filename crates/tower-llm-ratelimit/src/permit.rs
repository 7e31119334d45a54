//! A running call's claim on its key's limits, settled when the call ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower_llm_core::{FailureKind, Outcome};

use crate::adaptive::Verdict;
use crate::config::Reconcile;
use crate::headers::ServerLimits;
use crate::key_state::{Admission, KeyState, MAX_SERVER_WAIT};
use crate::limiter::Limiter;
use crate::quota::Charge;

/// A running call's claim: its concurrency slot and its token charge. Dropping it (the call
/// was cancelled) frees the slot; the tokens stay charged, since the upstream may have
/// counted the request already.
#[derive(Debug)]
pub(crate) struct Permit {
    key: Arc<KeyState>,
    cost: u64,
    admission: Admission,
    /// A token charge held in the shared store, for reconciling there (feature `redis`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) remote_charge: Option<Charge>,
    done: bool,
}

impl Permit {
    #[inline]
    pub(crate) fn new(key: Arc<KeyState>, cost: u64, admission: Admission) -> Self {
        key.limiter.observe.admitted(cost, key.counts_locally);
        #[cfg(feature = "redis")]
        if key.limiter.sharing == crate::limiter::OverloadSharing::Read {
            crate::redis::read_overloads(&key, admission.started);
        }
        Permit {
            key,
            cost,
            admission,
            remote_charge: None,
            done: false,
        }
    }

    #[inline]
    pub(crate) fn limiter(&self) -> &Limiter {
        &self.key.limiter
    }

    /// Records how the call ended (`None`: the caller dropped its stream, which says
    /// nothing of the upstream): reconciles tokens, pauses on a 429, learns from headers,
    /// moves an adaptive limit, frees the concurrency slot.
    #[inline]
    pub(crate) fn complete(
        &mut self,
        outcome: Option<Outcome>,
        usage: Option<(u64, Reconcile)>,
        server: Option<&http::HeaderMap>,
    ) {
        self.done = true;
        let config = &self.key.limiter.config;
        let pause = match outcome {
            Some(Outcome::Failure(f))
                if config.pause_on_rate_limit
                    && matches!(f.kind, FailureKind::RateLimited | FailureKind::CircuitOpen) =>
            {
                match f.retry_after {
                    Some(hint) => Some((hint, f.kind)),
                    // An adaptive limit that lowers itself on 429s answers one that names no
                    // time that way; one told to ignore them leaves it to the pause.
                    None if f.kind == FailureKind::RateLimited
                        && config
                            .adaptive
                            .as_ref()
                            .is_some_and(|a| a.decrease_on.contains(&FailureKind::RateLimited)) =>
                    {
                        None
                    }
                    None => Some((config.default_pause, f.kind)),
                }
            }
            _ => None,
        };
        let verdict = match &config.adaptive {
            Some(settings) => settings.verdict(outcome),
            None => Verdict::Neutral,
        };
        let learned = server.and_then(|headers| server_limits(&self.key.limiter, headers));
        // `usage` comes with the reconcile setting resolved for its response.
        let delta = match usage {
            Some((actual, Reconcile::RefundAndCharge)) => Some(actual as i128 - self.cost as i128),
            Some((actual, Reconcile::ChargeOnly)) if actual > self.cost => {
                Some(actual as i128 - self.cost as i128)
            }
            _ => None,
        }
        .filter(|d| *d != 0);
        if pause.is_none() && learned.is_none() && delta.is_none() {
            // Nothing to record but maybe a slot to free: the common success.
            if config.counts_in_flight() {
                self.free_slot(verdict);
            }
            return;
        }
        self.settle(verdict, pause, learned, delta);
    }

    /// Moves the claim into a new permit (held by a stream's end hook); this one is left
    /// settled, so dropping it frees nothing.
    pub(crate) fn hand_over(&mut self) -> Permit {
        self.done = true;
        Permit {
            key: Arc::clone(&self.key),
            cost: self.cost,
            admission: self.admission,
            remote_charge: self.remote_charge.take(),
            done: false,
        }
    }

    /// Learns the provider's limits from a response head while its body is still coming.
    pub(crate) fn learn(&self, server: &http::HeaderMap) {
        if let Some(learned) = server_limits(&self.key.limiter, server) {
            self.key.limiter.observe.learnt(&learned, self.key.keyed());
            let limiter = &self.key.limiter;
            let now = limiter.now();
            let change = {
                let mut limits = self.key.lock();
                let change = limits.learn(&limiter.config, now, learned);
                limits.wake_head();
                change
            };
            if let Some(change) = change {
                limiter.observe.limit_changed(change, self.key.keyed());
            }
        }
    }

    /// Gives the concurrency slot back (recording `verdict` in an adaptive limit) and lets
    /// the first waiter look again.
    #[inline]
    fn free_slot(&self, verdict: Verdict) {
        let limiter = &self.key.limiter;
        let (change, share) = {
            let mut limits = self.key.lock();
            let change = limits.release(&limiter.config, verdict, self.admission.started, || {
                limiter.now()
            });
            limits.wake_head();
            (change, limits.overload_to_share(limiter))
        };
        if let Some(change) = change {
            limiter.observe.limit_changed(change, self.key.keyed());
        }
        if share {
            self.share_overload();
        }
    }

    /// This instance backed off for an overload of its own and shares overloads: tells the
    /// other instances.
    #[cold]
    fn share_overload(&self) {
        #[cfg(feature = "redis")]
        crate::redis::publish_overload(&self.key);
    }

    /// The part of [`complete`](Self::complete) that records something (a pause, the
    /// server's word, a usage to reconcile), out of line so the common case stays small.
    #[inline(never)]
    fn settle(
        &self,
        verdict: Verdict,
        pause: Option<(Duration, FailureKind)>,
        learned: Option<ServerLimits>,
        delta: Option<i128>,
    ) {
        let config = &self.key.limiter.config;
        let now = self.key.limiter.now();
        #[cfg(feature = "redis")]
        if let (Some(d), Some(charge), Some(backend), Some(key)) = (
            delta,
            self.remote_charge,
            &config.redis,
            &self.key.remote_key,
        ) {
            backend.reconcile(config, key, charge, d);
        }
        let mut limits = self.key.lock();
        let mut changes = [None, None];
        if config.counts_in_flight() {
            changes[0] = limits.release(config, verdict, self.admission.started, || now);
        }
        let share = limits.overload_to_share(&self.key.limiter);
        let observe = &self.key.limiter.observe;
        if let Some((pause, cause)) = pause {
            limits.pause(now, pause);
            observe.paused_by_upstream(pause.min(MAX_SERVER_WAIT), cause, self.key.keyed());
        }
        if let Some(learned) = learned {
            observe.learnt(&learned, self.key.keyed());
            changes[1] = limits.learn(config, now, learned);
        }
        if let Some(delta) = delta {
            let amount = delta.unsigned_abs().min(u128::from(u64::MAX)) as u64;
            if let (Some(budget), Some(charge)) = (&mut limits.tokens, self.admission.tokens) {
                if delta < 0 {
                    budget.refund(now, charge, amount);
                } else {
                    budget.charge_more(now, charge, amount);
                }
            }
            if delta < 0 {
                observe.refunded(amount);
            } else {
                observe.charged(amount);
            }
        }
        limits.wake_head();
        drop(limits);
        for change in changes.into_iter().flatten() {
            observe.limit_changed(change, self.key.keyed());
        }
        if share {
            self.share_overload();
        }
    }
}

/// What the provider's headers say of its limits, when the limiter follows them and they say
/// anything.
fn server_limits(limiter: &Limiter, headers: &http::HeaderMap) -> Option<ServerLimits> {
    if !limiter.config.adapt {
        return None;
    }
    let limits = ServerLimits::from_headers(headers, SystemTime::now());
    (!limits.is_empty()).then_some(limits)
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A cancelled call says nothing of the upstream: its slot is freed, no more.
        if !self.done && self.key.limiter.config.counts_in_flight() {
            self.free_slot(Verdict::Neutral);
        }
    }
}
