//! What the server answers from: the active plans, the counters, the received requests,
//! and the decision each request gets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use super::RECEIVED_CAPACITY;
use crate::counters::{Counters, ReceivedRequest};
use crate::plan::{Fault, FaultPlan, KeyEcho, Latency, Quota, Route, WeightedFault};
use crate::quota::{QuotaCheck, QuotaWindow, RateLimitState};

#[derive(Debug)]
pub(crate) struct Shared {
    pub(super) state: Mutex<ServerState>,
    /// Bumped on every counter change, for [`MockServer::wait_until`].
    pub(super) changed: watch::Sender<u64>,
}

#[derive(Debug)]
pub(super) struct ServerState {
    pub(super) plans: ActivePlans,
    pub(super) counters: Counters,
    pub(super) received: VecDeque<ReceivedRequest>,
    pub(super) next_id: u64,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, ServerState> {
        // A panic elsewhere must not take the mock down with it: the state stays usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn notify(&self) {
        self.changed
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    pub(super) fn arrive(self: &Arc<Self>, route: Option<Route>, key: &str) -> InFlight {
        {
            let mut state = self.lock();
            let counters = &mut state.counters;
            counters.requests += 1;
            counters.in_flight += 1;
            counters.max_concurrent = counters.max_concurrent.max(counters.in_flight);
            if let Some(route) = route {
                *counters.by_route.entry(route).or_default() += 1;
            }
            *counters.by_key.entry(key.to_owned()).or_default() += 1;
        }
        self.notify();
        InFlight {
            shared: self.clone(),
            finished: false,
        }
    }

    pub(super) fn answered(&self, status: StatusCode) {
        *self
            .lock()
            .counters
            .by_status
            .entry(status.as_u16())
            .or_default() += 1;
        self.notify();
    }

    pub(super) fn record(&self, request: ReceivedRequest) {
        let mut state = self.lock();
        if state.received.len() == RECEIVED_CAPACITY {
            state.received.pop_front();
        }
        state.received.push_back(request);
    }

    /// Counts `tokens` more in the quota window of `route`'s plan, if it has one.
    pub(super) fn charge(&self, route: Route, tokens: u64) {
        if let Some((_, window)) = &mut self.lock().plans.for_route(route).quota {
            window.charge(Instant::now(), tokens);
        }
    }

    pub(super) fn decide(&self, route: Route, key: &str, cost: u64) -> Decision {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        // This request is one of them (it arrived before it was read).
        let in_flight = state.counters.in_flight;
        state
            .plans
            .for_route(route)
            .decide(id, key, cost, in_flight, Instant::now())
    }
}

/// One request being answered. Dropped unfinished means the client went away.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) shared: Arc<Shared>,
    pub(super) finished: bool,
}

impl InFlight {
    pub(super) fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            let counters = &mut state.counters;
            counters.in_flight = counters.in_flight.saturating_sub(1);
            if self.finished {
                counters.completed += 1;
            } else {
                counters.cancelled += 1;
            }
        }
        self.shared.notify();
    }
}

#[derive(Debug)]
pub(super) struct ActivePlans {
    pub(super) global: PlanRuntime,
    pub(super) routes: BTreeMap<Route, PlanRuntime>,
}

impl ActivePlans {
    pub(super) fn new(plan: &FaultPlan) -> Self {
        ActivePlans {
            global: PlanRuntime::new(plan),
            routes: plan
                .parts()
                .routes
                .iter()
                .map(|(route, plan)| (*route, PlanRuntime::new(plan)))
                .collect(),
        }
    }

    pub(super) fn for_route(&mut self, route: Route) -> &mut PlanRuntime {
        self.routes.get_mut(&route).unwrap_or(&mut self.global)
    }
}

/// A plan being carried out: its RNG, what is left of its script, its quota window.
#[derive(Debug)]
pub(super) struct PlanRuntime {
    pub(super) rng: StdRng,
    pub(super) latency: Latency,
    pub(super) faults: Vec<WeightedFault>,
    pub(super) script: VecDeque<Option<Fault>>,
    pub(super) quota: Option<(Quota, QuotaWindow)>,
    pub(super) name: String,
    pub(super) reply: Option<String>,
    pub(super) chunk_delay: Duration,
    pub(super) context_window: Option<u64>,
    pub(super) capacity: Option<usize>,
    pub(super) api_keys: Vec<String>,
    pub(super) echo_api_key: KeyEcho,
}

impl PlanRuntime {
    pub(super) fn new(plan: &FaultPlan) -> Self {
        let parts = plan.parts();
        PlanRuntime {
            rng: StdRng::seed_from_u64(parts.seed),
            latency: *parts.latency,
            faults: parts.faults.to_vec(),
            script: parts.script.iter().cloned().collect(),
            quota: parts.quota.map(|q| (q, QuotaWindow::new(q))),
            name: parts.name.to_owned(),
            reply: parts.reply.map(str::to_owned),
            chunk_delay: parts.stream_chunk_delay,
            context_window: parts.context_window,
            capacity: parts.capacity,
            api_keys: parts.api_keys.to_vec(),
            echo_api_key: parts.echo_api_key,
        }
    }

    pub(super) fn decide(
        &mut self,
        id: u64,
        key: &str,
        cost: u64,
        in_flight: u64,
        now: Instant,
    ) -> Decision {
        let latency = self.latency.sample(&mut self.rng);
        let mut decision = Decision {
            id,
            verdict: Verdict::Normal,
            latency,
            limits: RateLimitState::default(),
            name: self.name.clone(),
            reply: self.reply.clone(),
            chunk_delay: self.chunk_delay,
            requests_limit: self.requests_limit(),
            context_window: self.context_window,
        };
        if !self.api_keys.is_empty() && !self.api_keys.iter().any(|k| k == key) {
            decision.verdict = Verdict::Unauthorized(self.echo_api_key.text(key));
            return decision;
        }
        let scripted = self.script.pop_front();
        if let Some(Some(fault)) = scripted {
            decision.verdict = Verdict::Fault(fault);
            return decision;
        }
        if self
            .capacity
            .is_some_and(|capacity| in_flight > capacity as u64)
        {
            decision.latency = Duration::ZERO;
            decision.verdict = Verdict::Fault(Fault::Status(429));
            return decision;
        }
        if let Some((_, window)) = &mut self.quota {
            match window.check(now, cost) {
                QuotaCheck::Admitted(limits) => decision.limits = limits,
                QuotaCheck::Refused { retry_after, state } => {
                    decision.limits = state;
                    decision.verdict = Verdict::OverQuota(retry_after);
                    return decision;
                }
            }
        }
        if scripted.is_none() && !self.faults.is_empty() {
            let draw: f64 = self.rng.random();
            let mut cumulative = 0.0;
            for weighted in &self.faults {
                let p = weighted.probability;
                cumulative += if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
                if draw < cumulative {
                    decision.verdict = Verdict::Fault(weighted.fault.clone());
                    break;
                }
            }
        }
        decision
    }

    /// The requests limit a 429 reports when no quota window says otherwise.
    pub(super) fn requests_limit(&self) -> u64 {
        self.quota
            .as_ref()
            .map(|(q, _)| q.requests_per_minute)
            .filter(|&l| l != u64::MAX)
            .unwrap_or(60)
    }
}

#[derive(Clone, Debug)]
pub(super) enum Verdict {
    Normal,
    Fault(Fault),
    OverQuota(Duration),
    /// With the refused key as the message repeats it, if it does.
    Unauthorized(Option<String>),
}

#[derive(Clone, Debug)]
pub(super) struct Decision {
    pub(super) id: u64,
    pub(super) verdict: Verdict,
    pub(super) latency: Duration,
    pub(super) limits: RateLimitState,
    pub(super) name: String,
    pub(super) reply: Option<String>,
    pub(super) chunk_delay: Duration,
    pub(super) requests_limit: u64,
    pub(super) context_window: Option<u64>,
}
