//! A queued call's place in its key's line, and the shared store's answer for the first one.

use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::adaptive::OverloadNews;
use crate::key_state::{Admission, Blocked, KeyState, Limits};
use crate::limiter::Limiter;
use crate::quota::Charge;

/// A queued call's place. Dropping it leaves the queue and lets the next call go.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) key: Arc<KeyState>,
    pub(crate) limiter: Arc<Limiter>,
    id: u64,
    cost: u64,
    since: Instant,
    /// Whether this call counts as waiting (in the stats and the `waiting` gauge).
    counted: bool,
    done: bool,
}

/// What a queued call learns when it polls.
#[derive(Debug)]
pub(crate) enum Turn {
    /// Admitted: go.
    Go(Admission),
    /// Wait until woken, or until this time if given.
    Wait(Option<u64>),
    /// First in line with only the shared store left to ask (feature `redis`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    AskRemote,
}

impl Ticket {
    pub(crate) fn new(
        key: Arc<KeyState>,
        limiter: Arc<Limiter>,
        id: u64,
        cost: u64,
        waiting: bool,
    ) -> Self {
        if waiting {
            limiter.observe.queued(key.keyed(), cost);
        }
        Ticket {
            key,
            limiter,
            id,
            cost,
            since: Instant::now(),
            counted: waiting,
            done: false,
        }
    }

    /// From now on this call counts as waiting (the shared store said "not yet").
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn start_waiting(&mut self) {
        if !self.counted && !self.done {
            self.counted = true;
            self.since = Instant::now();
            self.limiter.observe.queued(self.key.keyed(), self.cost);
        }
    }

    pub(crate) fn cost(&self) -> u64 {
        self.cost
    }

    /// Checks whether this call may start; registers `waker` if not.
    pub(crate) fn poll_turn(&mut self, now: u64, waker: &Waker) -> Turn {
        let limiter = self.limiter.clone();
        let key = self.key.clone();
        let mut limits = key.lock();
        let head = limits.queue.front().map(|w| w.id);
        if head != Some(self.id) {
            if let Some(w) = limits.queue.iter_mut().find(|w| w.id == self.id) {
                set_waker(&mut w.waker, waker);
            }
            return Turn::Wait(None);
        }
        match limits.blocked(&limiter, now, self.cost) {
            None if limiter.remote() => {
                if let Some(w) = limits.queue.front_mut() {
                    set_waker(&mut w.waker, waker);
                }
                Turn::AskRemote
            }
            None => {
                let admission = self.leave(&mut limits, now, true);
                Turn::Go(admission)
            }
            Some(blocked) => {
                if let Some(w) = limits.queue.front_mut() {
                    set_waker(&mut w.waker, waker);
                }
                match blocked {
                    Blocked::Until(at) => Turn::Wait(Some(at)),
                    Blocked::Concurrency => Turn::Wait(None),
                }
            }
        }
    }

    /// The shared store admitted this call (it is first in line): start it locally.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn admit_remote(&mut self, now: u64) -> Admission {
        let key = self.key.clone();
        let mut limits = key.lock();
        self.leave(&mut limits, now, true)
    }

    fn leave(&mut self, limits: &mut Limits, now: u64, admit: bool) -> Admission {
        let was_head = limits.queue.front().is_some_and(|w| w.id == self.id);
        if let Some(pos) = limits.queue.iter().position(|w| w.id == self.id) {
            limits.queue.remove(pos);
            limits.queued_tokens = limits.queued_tokens.saturating_sub(self.cost);
        }
        let admission = if admit {
            let counts = self.limiter.config.counts_in_flight();
            limits.admit(now, self.cost, counts)
        } else {
            Admission::default()
        };
        if was_head {
            limits.wake_head();
        }
        self.done = true;
        if self.counted {
            self.limiter
                .observe
                .wait_ended(self.since.elapsed(), admit, self.key.keyed());
        }
        admission
    }

    /// Gives up the place (the wait ran out).
    pub(crate) fn give_up(&mut self, now: u64) {
        if !self.done {
            let key = self.key.clone();
            let mut limits = key.lock();
            self.leave(&mut limits, now, false);
        }
    }

    /// When a call like this one could expect to start, for a retry hint.
    pub(crate) fn retry_hint(&self, now: u64) -> Duration {
        let limits = self.key.lock();
        let at = limits.projected(&self.limiter, now, self.cost);
        Duration::from_nanos(at.saturating_sub(now))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            let now = self.limiter.now();
            let key = self.key.clone();
            let mut limits = key.lock();
            self.leave(&mut limits, now, false);
        }
    }
}

fn set_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// The shared store's answer for the call first in line (feature `redis`), with the latest
/// overload another instance may have recorded for the key when overloads are shared.
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum RemoteVerdict {
    /// Admitted; the token charge is recorded in this slot.
    Admitted(Option<Charge>, Option<OverloadNews>),
    /// Not yet: ask again after this long.
    Wait(Duration, Option<OverloadNews>),
    /// The store could not be reached or answered nonsense.
    Failed,
}

/// A question in flight to the shared store. Boxed: it only exists with the `redis` feature,
/// where a network round trip dwarfs the allocation.
pub(crate) type RemoteCheck =
    std::pin::Pin<Box<dyn std::future::Future<Output = RemoteVerdict> + Send>>;
