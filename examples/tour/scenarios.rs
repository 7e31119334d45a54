//! The scenarios: each builds its stacks with `ServiceBuilder` the way a program would, runs
//! them without and with the layer it is about, and adds its rows to the table.

use std::time::Duration;

use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_llm_batch::{BatchLayer, PackAdapter};
use tower_llm_breaker::CircuitBreakerLayer;
use tower_llm_core::BoxError;
use tower_llm_dedup::DedupLayer;
use tower_llm_providers::{
    ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, HttpClientConfig,
};
use tower_llm_race::{
    Answer, FallbackLayer, GatherLayer, HedgeDelay, HedgeLayer, RaceLayer, RouteLayer, VoteLayer,
};
use tower_llm_ratelimit::{Quota, RateLimitLayer, Reconcile};
use tower_llm_retry::{Backoff, Jitter, RetryBudget, RetryLayer, StatsOnly};
use tower_llm_testkit::{
    DEFAULT_DIMENSIONS, Fault, FaultPlan, Latency, MockServer, Quota as MockQuota, embedding_for,
};

use crate::measure::{Table, drive};
use crate::progress::Progress;
use crate::upstream::{Provider, SplitMix, chat, every, openai, openai_with, provider, typical};
use crate::{
    BUDGET_REQUESTS, EMBEDDING_REQUESTS, FLAKY_REQUESTS, FLOOD_REQUESTS, OUTAGE_REQUESTS,
    QUOTA_MINUTES, QUOTA_OFFERED_PER_SECOND, QUOTA_REQUESTS, ROUTED_REQUESTS, STACK_REQUESTS,
    TWO_PROVIDER_REQUESTS,
};

/// 70 % of the requests repeat one of the last 20 distinct prompts: dedup answers them from the
/// in-flight call or its cache.
pub(super) async fn duplicate_flood(
    progress: &Progress,
    table: &mut Table,
) -> Result<(), BoxError> {
    progress.scenario("duplicate flood");
    let server = MockServer::start(typical("mock")).await?;
    let mut rng = SplitMix(7);
    let mut recent: Vec<String> = Vec::new();
    let prompts: Vec<String> = (0..FLOOD_REQUESTS)
        .map(|i| {
            if !recent.is_empty() && rng.chance(0.7) {
                recent[rng.below(recent.len())].clone()
            } else {
                let prompt = format!("Summarise ticket #{i}");
                recent.push(prompt.clone());
                if recent.len() > 20 {
                    recent.remove(0);
                }
                prompt
            }
        })
        .collect();
    // Temperature 0: the answer is deterministic, so dedup may keep it.
    let requests = || prompts.iter().map(|p| chat(p).temperature(0.0)).collect();

    let plain = openai(&server)?;
    let without = drive(plain, requests(), every(2), progress).await;
    let without = table.row("duplicate flood", "plain", without, &[&server], None);

    // The provider's ChatRequest is keyed by core's fingerprint (model, messages, sampling,
    // tenant: everything that changes the answer), dedup's default.
    let dedup = DedupLayer::builder()
        .name("tour-dedup")
        .ttl(Duration::from_secs(300))
        .build()?;
    let handle = dedup.handle();
    let stack = ServiceBuilder::new().layer(dedup).service(openai(&server)?);
    let with = drive(stack, requests(), every(2), progress).await;
    table.row("", "+ dedup", with, &[&server], Some(without));
    let s = handle.stats();
    table.note(format!(
        "duplicate flood: dedup answered {} from its cache and {} by joining a call in flight",
        s.hits, s.coalesced
    ));
    Ok(())
}

/// The upstream fails every call with a 503 after 300 ms, then recovers 1.2 s in. Without a
/// breaker every caller waits for its failure; with one, callers fail in microseconds once it
/// opens, and a probe finds the recovery.
pub(super) async fn outage(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
    progress.scenario("outage");
    let down = FaultPlan::healthy()
        .latency(Latency::Fixed(Duration::from_millis(300)))
        .fault(Fault::Status(503), 1.0);
    let requests = || {
        (0..OUTAGE_REQUESTS)
            .map(|i| chat(&format!("question {i}")))
            .collect()
    };
    let recover_after = Duration::from_millis(1_200);

    let server = MockServer::start(down.clone()).await?;
    let plain = openai(&server)?;
    let (without, ()) = tokio::join!(
        drive(plain, requests(), every(20), progress),
        recover(&server, recover_after)
    );
    let without = table.row("outage", "plain", without, &[&server], None);

    server.set_plan(down);
    // A failure rate, as in production, but over a minimum of 10 calls instead of the
    // default 40: this outage is only 80 calls long. Keep the default for real traffic.
    let breaker = CircuitBreakerLayer::builder()
        .name("mock")
        .minimum_calls(10)
        .cooldown(Duration::from_millis(100))
        .build()?;
    let stack = ServiceBuilder::new()
        .layer(breaker)
        .service(openai(&server)?);
    let (with, ()) = tokio::join!(
        drive(stack, requests(), every(20), progress),
        recover(&server, recover_after)
    );
    let spared = without.saturating_sub(server.counters().requests);
    table.row("", "+ breaker", with, &[&server], Some(without));
    table.note(format!(
        "outage: the breaker spared the failing upstream {spared} of {without} calls; it also \
         refused calls after the recovery until a probe (one per 100 ms cool-down) succeeded"
    ));
    Ok(())
}

async fn recover(server: &MockServer, after: Duration) {
    tokio::time::sleep(after).await;
    server.set_plan(typical("mock"));
}

/// 5 % of calls fail with a 500 or a 503; retry with backoff turns them into successes. Then,
/// in a total outage, the retry budget keeps retries from tripling the load.
pub(super) async fn transient_failures(
    progress: &Progress,
    table: &mut Table,
) -> Result<(), BoxError> {
    progress.scenario("5% transient failures");
    let flaky = typical("mock")
        .seed(5)
        .fault(Fault::Status(500), 0.025)
        .fault(Fault::Status(503), 0.025);
    let server = MockServer::start(flaky).await?;
    let requests = |n: usize| (0..n).map(|i| chat(&format!("question {i}"))).collect();
    let retry = || {
        RetryLayer::builder()
            .name("tour-retry")
            .max_attempts(3)
            .backoff(Backoff::exponential(Duration::from_millis(10)))
            .jitter(Jitter::Full)
            .deadline(Duration::from_secs(2))
            .record_attempts(StatsOnly)
    };

    let plain = openai(&server)?;
    let without = drive(plain, requests(FLAKY_REQUESTS), every(2), progress).await;
    let without = table.row("5% failures", "plain", without, &[&server], None);

    let layer = retry().build()?;
    let stack = ServiceBuilder::new()
        .layer(layer.clone())
        .service(openai(&server)?);
    let with = drive(stack, requests(FLAKY_REQUESTS), every(2), progress).await;
    table.row("", "+ retry", with, &[&server], Some(without));
    let stats = layer.handle().stats();
    table.note(format!(
        "5% failures: retry made {} retries and recovered {} calls",
        stats.retries, stats.recovered
    ));

    progress.scenario("retry budget in an outage");
    server.set_plan(
        FaultPlan::healthy()
            .latency(Latency::Fixed(Duration::from_millis(5)))
            .fault(Fault::Status(503), 1.0),
    );
    let unbudgeted = ServiceBuilder::new()
        .layer(retry().no_budget().build()?)
        .service(openai(&server)?);
    let without = drive(unbudgeted, requests(BUDGET_REQUESTS), every(2), progress).await;
    let without = table.row("  in an outage", "+ retry", without, &[&server], None);

    // One retry per ten requests over 10 s, plus one a second.
    let budget = RetryBudget::new(0.1)
        .window(Duration::from_secs(10))
        .min_per_second(1);
    let budgeted = ServiceBuilder::new()
        .layer(retry().budget(budget).build()?)
        .service(openai(&server)?);
    let with = drive(budgeted, requests(BUDGET_REQUESTS), every(2), progress).await;
    table.row("", "+ retry, budget", with, &[&server], Some(without));
    Ok(())
}

/// Two providers: one usually fast with a long tail, one steady but slower. The fast one
/// alone, then asking both in turn, both at once, racing them and hedging the first with the
/// second.
pub(super) async fn two_providers(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
    progress.scenario("two providers");
    let fast = MockServer::start(FaultPlan::healthy().name("fast").seed(11).latency(
        Latency::LongTail {
            median: Duration::from_millis(15),
            p99: Duration::from_millis(200),
        },
    ))
    .await?;
    let steady = MockServer::start(FaultPlan::healthy().name("steady").seed(12).latency(
        Latency::LongTail {
            median: Duration::from_millis(40),
            p99: Duration::from_millis(60),
        },
    ))
    .await?;
    let providers =
        || -> Result<Vec<Provider>, BoxError> { Ok(vec![provider(&fast)?, provider(&steady)?]) };
    let requests = || {
        (0..TWO_PROVIDER_REQUESTS)
            .map(|i| chat(&format!("question {i}")))
            .collect()
    };

    // The fast one alone: the baseline, one call per request, and its long tail.
    let alone = provider(&fast)?;
    let sample = drive(alone, requests(), every(5), progress).await;
    let baseline = table.row(
        "two providers",
        "fast one alone",
        sample,
        &[&fast, &steady],
        None,
    );

    // Sequential: what a program without these layers writes to get both answers.
    let pair = providers()?;
    let sequential = service_fn(move |request: ChatRequest| {
        let (first, second) = (pair[0].clone(), pair[1].clone());
        async move {
            let a = first.oneshot(request.clone()).await?;
            let b = second.oneshot(request).await?;
            Ok::<_, BoxError>((a, b))
        }
    });
    let sample = drive(sequential, requests(), every(5), progress).await;
    table.row("", "sequential", sample, &[&fast, &steady], Some(baseline));

    let joined = ServiceBuilder::new()
        .layer(GatherLayer::new())
        .service(providers()?);
    let sample = drive(joined, requests(), every(5), progress).await;
    table.row(
        "",
        "joined (gather)",
        sample,
        &[&fast, &steady],
        Some(baseline),
    );

    let raced = ServiceBuilder::new()
        .layer(RaceLayer::new())
        .service(providers()?);
    let sample = drive(raced, requests(), every(5), progress).await;
    table.row("", "raced", sample, &[&fast, &steady], Some(baseline));

    // Hedge: ask the fast one; if it has not answered by its own 90th percentile, ask the
    // steady one too. At most 10 % extra calls over time.
    let hedge = HedgeLayer::builder()
        .name("tour-hedge")
        .delay(HedgeDelay::percentile(0.9, Duration::from_millis(40)))
        .build()?;
    let hedged = ServiceBuilder::new().layer(hedge).service(providers()?);
    let sample = drive(hedged, requests(), every(5), progress).await;
    table.row("", "hedged", sample, &[&fast, &steady], Some(baseline));
    Ok(())
}

/// A 60 requests / 10,000 tokens a minute quota, offered three requests a second for three
/// minutes, on tokio's paused clock (see the module docs).
pub(super) fn quota(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
    progress.scenario("60 RPM quota at 3x (tokio time)");
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    runtime.block_on(async {
        let plan = FaultPlan::healthy()
            .latency(Latency::Fixed(Duration::from_millis(300)))
            .quota(MockQuota::new(60, 10_000));
        let server = MockServer::start(plan.clone()).await?;
        // Pooled connections belong to the runtime that opened them: one client for this one.
        let client = HttpClientConfig::default().build()?;
        let requests = || {
            (0..QUOTA_REQUESTS)
                .map(|i| chat(&format!("request {i}")).max_tokens(100))
                .collect()
        };
        let gap = Duration::from_secs(1) / QUOTA_OFFERED_PER_SECOND as u32;

        let plain = openai_with(&server, client.clone())?;
        let without = drive(plain, requests(), gap, progress).await;
        let without = table.row("quota 60 RPM, 3x", "plain", without, &[&server], None);

        // A fresh account: the first run's last minute would still count against this one.
        let server = MockServer::start(plan).await?;

        let limiter = RateLimitLayer::builder()
            .name("tour-limit")
            .requests(Quota::per_minute(60))
            .tokens(Quota::per_minute(10_000))
            // The mock, like OpenAI, charges the estimate up front and keeps it.
            .reconcile(Reconcile::ChargeOnly)
            .max_wait(Duration::from_secs(10))
            .build()?;
        let stack = ServiceBuilder::new()
            .layer(limiter)
            .service(openai_with(&server, client)?);
        let with = drive(stack, requests(), gap, progress).await;
        table.row("", "+ rate limit", with, &[&server], Some(without));
        Ok::<_, BoxError>(())
    })?;
    table.note(format!(
        "quota: the quota is real size (60 RPM, 10k TPM, 60 s window); time is what was \
         scaled: {QUOTA_MINUTES} minutes on tokio's paused clock (real sockets) took {:.2} s of \
         wall time, and the latencies in those rows are tokio time. The limiter sent what fits \
         and refused the rest locally (no upstream call, a retry hint for the caller)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// 24 small embedding requests: one call each, or packed into calls of up to 8 inputs.
pub(super) async fn embeddings(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
    progress.scenario("24 embeddings");
    let server = MockServer::start(typical("mock")).await?;
    let texts: Vec<String> = (0..EMBEDDING_REQUESTS)
        .map(|i| format!("document {i}"))
        .collect();
    let requests = || {
        texts
            .iter()
            .map(|t| EmbeddingRequest::new("text-embedding-3-small", vec![t.clone()]))
            .collect()
    };

    let plain = openai(&server)?;
    let without = drive(plain.clone(), requests(), every(0), progress).await;
    let without = table.row("24 embeddings", "plain", without, &[&server], None);

    // Requests of the same model and input count share a call, so the answer splits evenly.
    let adapter = PackAdapter::new(
        |requests: Vec<EmbeddingRequest>| {
            let model = requests
                .first()
                .map(|r| r.model.clone())
                .unwrap_or_default();
            EmbeddingRequest::new(model, requests.into_iter().flat_map(|r| r.input).collect())
        },
        |response: EmbeddingResponse, packed: usize| {
            let per_request = response.embeddings.len() / packed.max(1);
            response
                .embeddings
                .chunks(per_request.max(1))
                .map(|vectors| {
                    let mut part = EmbeddingResponse::new(response.model.clone(), vectors.to_vec());
                    part.meta = response.meta.clone();
                    Ok::<_, BoxError>(part)
                })
                .collect::<Vec<_>>()
        },
    )
    .key_by(|r: &EmbeddingRequest| (r.model.clone(), r.input.len()));
    let batch = BatchLayer::builder()
        .name("tour-batch")
        .adapter(adapter)
        .max_items(8)
        .max_wait(Duration::from_millis(5))
        .build()?;
    let stack = ServiceBuilder::new().layer(batch).service(plain);

    // Check that every caller got the vector of its own text, not a neighbour's.
    let mut matched = 0;
    for (text, request) in texts.iter().zip(requests()) {
        let answer = stack.clone().oneshot(request).await;
        if answer.is_ok_and(|a| a.embeddings == [embedding_for(text, DEFAULT_DIMENSIONS)]) {
            matched += 1;
        }
    }
    server.reset_counters();
    let with = drive(stack, requests(), every(0), progress).await;
    table.row("", "+ batch", with, &[&server], Some(without));
    table.note(format!(
        "24 embeddings: {matched} of {EMBEDDING_REQUESTS} batched answers checked against their \
         own input's vector (one at a time, before the measured run)"
    ));
    Ok(())
}

/// Short prompts go to a small fast model; complex ones to a vote of three large models (two
/// must agree). Compared with sending everything to the vote.
pub(super) async fn routing(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
    progress.scenario("routing");
    let small = MockServer::start(FaultPlan::healthy().name("small").seed(21).latency(
        Latency::LongTail {
            median: Duration::from_millis(10),
            p99: Duration::from_millis(40),
        },
    ))
    .await?;
    let large = |seed| {
        FaultPlan::healthy()
            .name("large")
            .seed(seed)
            .latency(Latency::LongTail {
                median: Duration::from_millis(50),
                p99: Duration::from_millis(200),
            })
    };
    let voters = [
        MockServer::start(large(22)).await?,
        MockServer::start(large(23)).await?,
        // One of the three is flaky: the vote still reaches its quorum.
        MockServer::start(large(24).fault(Fault::Status(500), 0.1)).await?,
    ];
    let vote = || -> Result<Provider, BoxError> {
        let vote = VoteLayer::majority(|a: &Answer<ChatResponse>| a.content.clone()).build()?;
        let services = voters.iter().map(provider).collect::<Result<Vec<_>, _>>()?;
        Ok(BoxCloneService::new(
            ServiceBuilder::new().layer(vote).service(services),
        ))
    };
    let mut rng = SplitMix(3);
    let prompts: Vec<String> = (0..ROUTED_REQUESTS)
        .map(|i| {
            if rng.chance(2.0 / 3.0) {
                format!("{i} + 2?")
            } else {
                format!(
                    "Case {i}: the supplier delivered late twice and the contract has a \
                     force majeure clause; can we terminate without penalty?"
                )
            }
        })
        .collect();
    let requests = || prompts.iter().map(|p| chat(p)).collect();
    let servers = [&small, &voters[0], &voters[1], &voters[2]];

    let everything = vote()?;
    let sample = drive(everything, requests(), every(10), progress).await;
    let baseline = table.row("routing", "all to the vote", sample, &servers, None);

    let is_short = |request: &ChatRequest| {
        request
            .messages
            .iter()
            .map(|m| m.content.len())
            .sum::<usize>()
            < 40
    };
    let router = ServiceBuilder::new()
        .layer(RouteLayer::predicate(is_short))
        .service(vec![provider(&small)?, vote()?]);
    let sample = drive(router, requests(), every(10), progress).await;
    table.row("", "+ route", sample, &servers, Some(baseline));
    Ok(())
}

/// Everything together, in the order `docs/composing.md` explains: dedup, then retry, then a
/// fallback across two providers, each behind its own breaker, rate limiter and timeout. The
/// primary is flaky (5 % of calls fail) and down from 0.3 s to 0.7 s; requests repeat as in the
/// flood. Compared with calling the primary alone.
pub(super) async fn whole_stack(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
    progress.scenario("the whole stack");
    let flaky = || typical("primary").seed(31).fault(Fault::Status(500), 0.05);
    let primary = MockServer::start(flaky()).await?;
    let secondary = MockServer::start(typical("secondary").seed(32)).await?;
    let mut rng = SplitMix(9);
    let prompts: Vec<String> = (0..STACK_REQUESTS)
        .map(|i| {
            if i > 0 && rng.chance(0.7) {
                format!("Summarise ticket #{}", i - 1 - rng.below(i.min(20)))
            } else {
                format!("Summarise ticket #{i}")
            }
        })
        .collect();
    let requests = || prompts.iter().map(|p| chat(p).temperature(0.0)).collect();
    let down = FaultPlan::healthy()
        .latency(Latency::Fixed(Duration::from_millis(50)))
        .fault(Fault::Status(503), 1.0);
    let outage = || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        primary.set_plan(down.clone());
        tokio::time::sleep(Duration::from_millis(400)).await;
        primary.set_plan(flaky());
    };

    let plain = openai(&primary)?;
    let (sample, ()) = tokio::join!(drive(plain, requests(), every(3), progress), outage());
    let baseline = table.row(
        "whole stack",
        "primary alone",
        sample,
        &[&primary, &secondary],
        None,
    );

    let stack = ServiceBuilder::new()
        .layer(DedupLayer::builder().build()?)
        .layer(
            RetryLayer::builder()
                .name("tour-retry")
                .max_attempts(3)
                .backoff(Backoff::exponential(Duration::from_millis(10)))
                .budget(RetryBudget::new(0.2))
                .record_attempts(StatsOnly)
                .build()?,
        )
        .layer(FallbackLayer::new())
        .service(vec![guarded(&primary)?, guarded(&secondary)?]);
    let (sample, ()) = tokio::join!(drive(stack, requests(), every(3), progress), outage());
    table.row(
        "",
        "+ whole stack",
        sample,
        &[&primary, &secondary],
        Some(baseline),
    );
    Ok(())
}

/// One provider with what belongs to it alone: its breaker, its quota, a timeout on its calls.
fn guarded(server: &MockServer) -> Result<Provider, BoxError> {
    let breaker = CircuitBreakerLayer::builder()
        .name(server.base_url())
        .cooldown(Duration::from_millis(100))
        .build()?;
    let limiter = RateLimitLayer::builder()
        .name("tour-limit")
        .concurrency(64)
        .requests(Quota::per_minute(60_000))
        .tokens(Quota::per_minute(10_000_000))
        .max_wait(Duration::from_millis(200))
        .build()?;
    let service = ServiceBuilder::new()
        .map_response(Answer::new)
        .layer(breaker)
        .layer(limiter)
        .timeout(Duration::from_millis(500))
        .service(openai(server)?);
    Ok(BoxCloneService::new(service))
}
