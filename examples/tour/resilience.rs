//! Resilience across layers: one deadline, one attempt budget, a concurrency limit that adapts.
//! Each runs on tokio's paused clock over real sockets (like the quota scenario): the waits
//! they are about (a 30 s Retry-After, an outage's retries) are real size, and take a fraction
//! of a second of wall time.

use std::time::Duration;

use tower::{Layer, ServiceBuilder};
use tower_llm_core::{AttemptBudget, BoxError, BudgetConfig, DeadlineLayer};
use tower_llm_providers::{HttpClient, HttpClientConfig};
use tower_llm_race::{FallbackLayer, HedgeDelay, HedgeLayer};
use tower_llm_ratelimit::{AdaptiveConcurrency, RateLimitLayer};
use tower_llm_retry::{Backoff, Jitter, RetryLayer};
use tower_llm_testkit::{Fault, FaultPlan, Latency, MockServer};

use crate::measure::{Table, drive};
use crate::progress::Progress;
use crate::upstream::{Provider, chat, openai_with, provider_with};
use crate::{ADAPTIVE_REQUESTS, BUDGET_OUTAGE_REQUESTS, DEADLINE_REQUESTS};

/// A runtime on tokio's paused clock, and a client whose pooled connections belong to it.
fn paused() -> Result<(tokio::runtime::Runtime, HttpClient), BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let client = runtime.block_on(async { HttpClientConfig::default().build() })?;
    Ok((runtime, client))
}

/// The first provider answers every call 429 "retry after 30 s"; the second answers in a
/// second. Retry on the first (it honours hints up to a minute) inside a fallback to the
/// second: the retries wait out the hints and the fallback runs a minute late. With a 10 s
/// deadline over the stack, retry hands the hint back at once and the fallback answers.
pub(super) fn deadline(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
    progress.scenario("deadline (tokio time)");
    let started = std::time::Instant::now();
    let (runtime, client) = paused()?;
    runtime.block_on(async {
        let limited = MockServer::start(
            FaultPlan::healthy()
                .name("limited")
                .latency(Latency::Fixed(Duration::from_millis(200)))
                .fault(
                    Fault::RateLimited {
                        retry_after: Duration::from_secs(30),
                        form: Default::default(),
                    },
                    1.0,
                ),
        )
        .await?;
        let spare = MockServer::start(
            FaultPlan::healthy()
                .name("spare")
                .latency(Latency::Fixed(Duration::from_secs(1))),
        )
        .await?;
        let stack = || -> Result<_, BoxError> {
            let retry = RetryLayer::builder()
                .name("tour-retry")
                .max_attempts(3)
                .backoff(Backoff::fixed(Duration::from_secs(1)))
                .jitter(Jitter::None)
                .max_retry_after(Duration::from_secs(60))
                .build()?;
            let first: Provider = Provider::new(retry.layer(provider_with(&limited, &client)?));
            Ok(FallbackLayer::new()
                .name("tour-fallback")
                .layer(vec![first, provider_with(&spare, &client)?]))
        };
        let requests = || {
            (0..DEADLINE_REQUESTS)
                .map(|i| chat(&format!("question {i}")))
                .collect()
        };
        let gap = Duration::from_millis(250);

        let without = drive(stack()?, requests(), gap, progress).await;
        let without = table.row(
            "429, hint 30 s",
            "retry, fallback",
            without,
            &[&limited, &spare],
            None,
        );
        let bounded = ServiceBuilder::new()
            .layer(DeadlineLayer::new(Duration::from_secs(10)))
            .service(stack()?);
        let with = drive(bounded, requests(), gap, progress).await;
        table.row(
            "",
            "+ deadline 10 s",
            with,
            &[&limited, &spare],
            Some(without),
        );
        Ok::<_, BoxError>(())
    })?;
    table.note(format!(
        "deadline: under a 10 s deadline retry handed the 30 s hint back at once (waiting would \
         miss the deadline; the other provider may not), so the fallback answered in about a \
         second instead of a minute and two waits. Tokio time; {:.2} s of wall time",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Both providers down (503). Retry (5 attempts) over a fallback across three hedges over the
/// two providers: each layer's own budget lets every layer multiply the load; one budget
/// handed to all of them bounds it to (1 + ratio) x requests + floor.
pub(super) fn shared_budget(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
    progress.scenario("attempt budget (tokio time)");
    let started = std::time::Instant::now();
    let (runtime, client) = paused()?;
    let config = BudgetConfig::new(0.2)
        .window(Duration::from_secs(60))
        .min_per_second(1);
    let mut spent = String::new();
    runtime.block_on(async {
        let down = |name: &str, latency: u64| {
            FaultPlan::healthy()
                .name(name)
                .latency(Latency::Fixed(Duration::from_millis(latency)))
                .fault(Fault::Status(503), 1.0)
        };
        let a = MockServer::start(down("a", 400)).await?;
        let b = MockServer::start(down("b", 600)).await?;
        let stack = |budget: Option<&AttemptBudget>| -> Result<_, BoxError> {
            let hedge = |name: &'static str| -> Result<_, BoxError> {
                let mut builder = HedgeLayer::builder()
                    .name(name)
                    .delay(HedgeDelay::Fixed(Duration::from_millis(200)))
                    .max_extra_attempts(1);
                if let Some(budget) = budget {
                    builder = builder.shared_budget(budget.clone());
                }
                Ok(builder.build()?)
            };
            let (pa, pb) = (provider_with(&a, &client)?, provider_with(&b, &client)?);
            let legs = vec![
                Provider::new(hedge("tour-hedge-ab")?.layer(vec![pa.clone(), pb.clone()])),
                Provider::new(hedge("tour-hedge-ba")?.layer(vec![pb, pa.clone()])),
                Provider::new(hedge("tour-hedge-aa")?.layer(vec![pa.clone(), pa])),
            ];
            let mut fallback = FallbackLayer::new().name("tour-fallback");
            let mut retry = RetryLayer::builder()
                .name("tour-retry")
                .max_attempts(5)
                .backoff(Backoff::fixed(Duration::from_millis(100)))
                .jitter(Jitter::None);
            if let Some(budget) = budget {
                fallback = fallback.shared_budget(budget.clone());
                retry = retry.shared_budget(budget.clone());
            }
            Ok(retry.build()?.layer(fallback.layer(legs)))
        };
        let requests = || {
            (0..BUDGET_OUTAGE_REQUESTS)
                .map(|i| chat(&format!("question {i}")))
                .collect()
        };
        let gap = Duration::from_millis(50);

        let without = drive(stack(None)?, requests(), gap, progress).await;
        let without = table.row(
            "outage, 2 providers",
            "each layer's own",
            without,
            &[&a, &b],
            None,
        );
        let budget = AttemptBudget::new(config)?;
        let with = drive(stack(Some(&budget))?, requests(), gap, progress).await;
        table.row("", "+ one budget", with, &[&a, &b], Some(without));
        for spender in budget.stats().spenders {
            if !spent.is_empty() {
                spent.push_str(", ");
            }
            spent.push_str(&format!(
                "{} {} {}",
                spender.role, spender.name, spender.withdrawals
            ));
        }
        Ok::<_, BoxError>(())
    })?;
    table.note(format!(
        "attempt budget: retry (5 attempts) over a fallback across three hedges; one budget \
         (20% of requests + 1/s over 60 s) handed to all of them bounds the upstream calls to \
         1.2 x {BUDGET_OUTAGE_REQUESTS} + 60, whatever the nesting (extra attempts by spender: \
         {spent}). Tokio time; {:.2} s of wall time",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The mock's hidden capacity: past this many calls in flight it answers 429 at once.
const CAPACITY: usize = 10;

/// An upstream that can answer 10 calls at a time (1 s each), offered three times that. A
/// static concurrency limit set twice too high meets 429s; set twice too low, it wastes half
/// the capacity; the adaptive limit finds it.
pub(super) fn adaptive(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
    progress.scenario("adaptive concurrency (tokio time)");
    let started = std::time::Instant::now();
    let (runtime, client) = paused()?;
    let mut found = 0;
    runtime.block_on(async {
        let server = MockServer::start(
            FaultPlan::healthy()
                .name("capacity")
                .latency(Latency::Fixed(Duration::from_secs(1)))
                .capacity(CAPACITY),
        )
        .await?;
        let requests = || {
            (0..ADAPTIVE_REQUESTS)
                .map(|i| chat(&format!("question {i}")))
                .collect()
        };
        // Three times what the upstream answers: 30 calls a second for 1 s calls.
        let gap = Duration::from_millis(33);
        let limiter = |concurrency: Option<usize>| {
            let builder = RateLimitLayer::builder()
                .name("tour-limit")
                .max_wait(Duration::from_secs(2));
            match concurrency {
                Some(n) => builder.concurrency(n),
                None => builder
                    .adaptive_concurrency(AdaptiveConcurrency::new().min(1).max(64).initial(4)),
            }
            .build()
        };

        let high = ServiceBuilder::new()
            .layer(limiter(Some(2 * CAPACITY))?)
            .service(openai_with(&server, client.clone())?);
        let sample = drive(high, requests(), gap, progress).await;
        let baseline = table.row("capacity 10, 3x", "static 20", sample, &[&server], None);

        let low = ServiceBuilder::new()
            .layer(limiter(Some(CAPACITY / 2))?)
            .service(openai_with(&server, client.clone())?);
        let sample = drive(low, requests(), gap, progress).await;
        table.row("", "static 5", sample, &[&server], Some(baseline));

        let layer = limiter(None)?;
        let handle = layer.handle();
        let adaptive = ServiceBuilder::new()
            .layer(layer)
            .service(openai_with(&server, client)?);
        let sample = drive(adaptive, requests(), gap, progress).await;
        table.row("", "+ adaptive", sample, &[&server], Some(baseline));
        found = handle.stats().concurrency_limit.unwrap_or_default();
        Ok::<_, BoxError>(())
    })?;
    table.note(format!(
        "adaptive concurrency: the upstream answers {CAPACITY} calls at a time and refuses the \
         rest with 429 (no hint); the limit started at 4 and ended at {found}. Every limiter \
         refuses what it cannot send within 2 s locally (no upstream call), so success is \
         capped near a third. Tokio time; {:.2} s of wall time",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
