//! The tower-llm tour: the README's first command.
//!
//! ```text
//! cargo run --release --example tour
//! ```
//!
//! Starts the testkit's mock LLM API in-process (no key, no network) and plays seven
//! scenarios, each without and with the layer that addresses it, then all the layers together
//! (the stack `docs/composing.md` explains), over real HTTP on loopback
//! through the real OpenAI provider service ([`OpenAi`] pointed at the mock with a dummy key).
//! Every number in the final table is measured while it runs: upstream calls are what the mock
//! counted, latencies are timed around each call.
//!
//! Latencies are scaled down about 50 times (a typical 1 s answer takes 20 ms) so that the tour
//! takes seconds. The quota scenario cannot be scaled that way: the mock, like the providers,
//! counts its quota over a sliding 60 s window. It runs instead on tokio's paused clock (the
//! mock's latencies and quota window, and the limiter, all follow tokio time), so three minutes
//! of quota pass in a fraction of a second, over the same real sockets.
//!
//! Each scenario is a small function that builds its stacks with `ServiceBuilder` the way a
//! program would; read them top to bottom.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_batch::{BatchLayer, PackAdapter};
use tower_llm_breaker::CircuitBreakerLayer;
use tower_llm_core::BoxError;
use tower_llm_dedup::DedupLayer;
use tower_llm_providers::{
    ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, HttpClient, HttpClientConfig,
    Message, OpenAi,
};
use tower_llm_race::{
    Answer, FallbackLayer, GatherLayer, HedgeDelay, HedgeLayer, RaceLayer, RouteLayer, VoteLayer,
};
use tower_llm_ratelimit::{Quota, RateLimitLayer, Reconcile};
use tower_llm_retry::{Backoff, Jitter, RetryBudget, RetryLayer, StatsOnly};
use tower_llm_testkit::{
    DEFAULT_DIMENSIONS, Fault, FaultPlan, Latency, MockServer, Quota as MockQuota, embedding_for,
};

/// The flat price the table charges per upstream call. Providers bill tokens, not calls;
/// read the money column as "calls saved × this price".
const PRICE_PER_CALL: f64 = 0.002;
/// A key the mock accepts and no provider would.
const DUMMY_KEY: &str = "sk-tour-not-a-real-key";
const MODEL: &str = "gpt-4o-mini";

const FLOOD_REQUESTS: usize = 300;
const OUTAGE_REQUESTS: usize = 80;
const FLAKY_REQUESTS: usize = 300;
const BUDGET_REQUESTS: usize = 100;
const TWO_PROVIDER_REQUESTS: usize = 100;
const QUOTA_MINUTES: u64 = 3;
const QUOTA_OFFERED_PER_SECOND: u64 = 3;
const QUOTA_REQUESTS: usize = (QUOTA_MINUTES * 60 * QUOTA_OFFERED_PER_SECOND) as usize;
const EMBEDDING_REQUESTS: usize = 24;
const ROUTED_REQUESTS: usize = 60;
const STACK_REQUESTS: usize = 300;

const TOTAL_REQUESTS: usize = 2 * FLOOD_REQUESTS
    + 2 * OUTAGE_REQUESTS
    + 2 * FLAKY_REQUESTS
    + 2 * BUDGET_REQUESTS
    + 5 * TWO_PROVIDER_REQUESTS
    + 2 * QUOTA_REQUESTS
    + 2 * EMBEDDING_REQUESTS
    + 2 * ROUTED_REQUESTS
    + 2 * STACK_REQUESTS;

fn main() -> Result<(), BoxError> {
    let wall = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut table = Table::default();
    println!(
        "tower-llm tour: an in-process mock of the OpenAI API on loopback, called through the \
         OpenAI provider with a dummy key;\n{TOTAL_REQUESTS} requests in seven scenarios, each \
         without and with the layer for it, then the whole stack.\n"
    );
    let progress = Progress::start(TOTAL_REQUESTS as u64);

    runtime.block_on(duplicate_flood(&progress, &mut table))?;
    runtime.block_on(outage(&progress, &mut table))?;
    runtime.block_on(transient_failures(&progress, &mut table))?;
    runtime.block_on(two_providers(&progress, &mut table))?;
    quota(&progress, &mut table)?;
    runtime.block_on(embeddings(&progress, &mut table))?;
    runtime.block_on(routing(&progress, &mut table))?;
    runtime.block_on(whole_stack(&progress, &mut table))?;

    progress.finish();
    table.print();
    println!(
        "\nThe whole tour took {:.1} s of wall time. Latencies are about 1/50 of real ones.",
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}

// The scenarios.

/// 70 % of the requests repeat one of the last 20 distinct prompts: dedup answers them from the
/// in-flight call or its cache.
async fn duplicate_flood(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
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
        .ttl(Duration::from_secs(300))
        .build()?;
    let stats = dedup.stats();
    let stack = ServiceBuilder::new().layer(dedup).service(openai(&server)?);
    let with = drive(stack, requests(), every(2), progress).await;
    table.row("", "+ dedup", with, &[&server], Some(without));
    let s = stats.snapshot();
    table.note(format!(
        "duplicate flood: dedup answered {} from its cache and {} by joining a call in flight",
        s.hits, s.coalesced
    ));
    Ok(())
}

/// The upstream fails every call with a 503 after 300 ms, then recovers 1.2 s in. Without a
/// breaker every caller waits for its failure; with one, callers fail in microseconds once it
/// opens, and a probe finds the recovery.
async fn outage(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
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
    let breaker = CircuitBreakerLayer::builder()
        .name("mock")
        .consecutive_failures(5)
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
async fn transient_failures(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
    progress.scenario("5% transient failures");
    let flaky = typical("mock")
        .seed(5)
        .fault(Fault::Status(500), 0.025)
        .fault(Fault::Status(503), 0.025);
    let server = MockServer::start(flaky).await?;
    let requests = |n: usize| (0..n).map(|i| chat(&format!("question {i}"))).collect();
    let retry = || {
        RetryLayer::builder()
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
async fn two_providers(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
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
        .delay(HedgeDelay::percentile(0.9, Duration::from_millis(40)))
        .build()?;
    let hedged = ServiceBuilder::new().layer(hedge).service(providers()?);
    let sample = drive(hedged, requests(), every(5), progress).await;
    table.row("", "hedged", sample, &[&fast, &steady], Some(baseline));
    Ok(())
}

/// A 60 requests / 10,000 tokens a minute quota, offered three requests a second for three
/// minutes, on tokio's paused clock (see the module docs).
fn quota(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
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
async fn embeddings(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
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
                    Ok::<_, BoxError>(EmbeddingResponse {
                        model: response.model.clone(),
                        embeddings: vectors.to_vec(),
                        usage: None,
                        meta: response.meta.clone(),
                    })
                })
                .collect::<Vec<_>>()
        },
    )
    .key_by(|r: &EmbeddingRequest| (r.model.clone(), r.input.len()));
    let batch = BatchLayer::builder()
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
async fn routing(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
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
async fn whole_stack(progress: &Progress, table: &mut Table) -> Result<(), BoxError> {
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
        .consecutive_failures(5)
        .cooldown(Duration::from_millis(100))
        .build()?;
    let limiter = RateLimitLayer::builder()
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

// Providers and requests.

/// The real OpenAI provider, pointed at the mock.
fn openai(server: &MockServer) -> Result<OpenAi<HttpClient>, BoxError> {
    Ok(OpenAi::builder()
        .api_key(DUMMY_KEY)
        .base_url(format!("{}/v1", server.base_url()))
        .build()?)
}

fn openai_with(server: &MockServer, client: HttpClient) -> Result<OpenAi<HttpClient>, BoxError> {
    Ok(OpenAi::builder()
        .api_key(DUMMY_KEY)
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(client)?)
}

/// Several providers behind one strategy need one type, and race, vote and route mark which
/// one answered: box them, with the answer wrapped.
type Provider = BoxCloneService<ChatRequest, Answer<ChatResponse>, BoxError>;

fn provider(server: &MockServer) -> Result<Provider, BoxError> {
    let service = ServiceBuilder::new()
        .map_response(Answer::new)
        .map_err(BoxError::from)
        .service(openai(server)?);
    Ok(BoxCloneService::new(service))
}

fn chat(prompt: &str) -> ChatRequest {
    ChatRequest::new(MODEL, vec![Message::user(prompt)])
}

/// A healthy upstream whose latency looks like an LLM API's, 50 times faster: median 20 ms,
/// 99th percentile 80 ms.
fn typical(name: &str) -> FaultPlan {
    FaultPlan::healthy()
        .name(name)
        .seed(1)
        .latency(Latency::LongTail {
            median: Duration::from_millis(20),
            p99: Duration::from_millis(80),
        })
}

fn every(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

// Measuring.

/// What one run measured on the caller's side.
#[derive(Debug, Default)]
struct Sample {
    latencies: Vec<Duration>,
    ok: usize,
}

/// Sends `requests` open loop, one every `gap` (a gap of zero sends them all at once), each on
/// its own task, and times each call from its scheduled start.
async fn drive<S, Req>(service: S, requests: Vec<Req>, gap: Duration, progress: &Progress) -> Sample
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Send,
    Req: Send + 'static,
{
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for (i, request) in requests.into_iter().enumerate() {
        let at = start + gap * i as u32;
        tokio::time::sleep_until(at).await;
        let service = service.clone();
        let progress = progress.clone();
        calls.spawn(async move {
            let result = service.oneshot(request).await;
            progress.advance();
            (at.elapsed(), result.is_ok())
        });
    }
    let mut sample = Sample::default();
    while let Some(joined) = calls.join_next().await {
        if let Ok((latency, ok)) = joined {
            sample.latencies.push(latency);
            sample.ok += usize::from(ok);
        }
    }
    sample.latencies.sort();
    sample
}

/// The final table.
#[derive(Debug, Default)]
struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

#[derive(Debug)]
struct Row {
    scenario: &'static str,
    variant: &'static str,
    requests: usize,
    upstream: u64,
    p50: Duration,
    p99: Duration,
    success: f64,
    rate_limited: u64,
    baseline: Option<u64>,
}

impl Table {
    /// Adds a row with what `servers` received since the last row, and resets their counters.
    /// Returns the upstream calls, the baseline of the rows that follow.
    fn row(
        &mut self,
        scenario: &'static str,
        variant: &'static str,
        sample: Sample,
        servers: &[&MockServer],
        baseline: Option<u64>,
    ) -> u64 {
        let (mut upstream, mut rate_limited) = (0, 0);
        for server in servers {
            let counters = server.counters();
            server.reset_counters();
            upstream += counters.requests;
            rate_limited += counters.status(429);
        }
        self.push(scenario, variant, sample, upstream, rate_limited, baseline)
    }

    fn push(
        &mut self,
        scenario: &'static str,
        variant: &'static str,
        sample: Sample,
        upstream: u64,
        rate_limited: u64,
        baseline: Option<u64>,
    ) -> u64 {
        let requests = sample.latencies.len();
        self.rows.push(Row {
            scenario,
            variant,
            requests,
            upstream,
            p50: percentile(&sample.latencies, 0.50),
            p99: percentile(&sample.latencies, 0.99),
            success: sample.ok as f64 / requests.max(1) as f64,
            rate_limited,
            baseline,
        });
        upstream
    }

    fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    fn print(&self) {
        println!(
            "\n{:<18} {:<17} {:>5} {:>9} {:>9} {:>9} {:>8} {:>5} {:>13}",
            "scenario", "variant", "reqs", "upstream", "p50", "p99", "success", "429s", "saved"
        );
        println!("{}", "-".repeat(102));
        for row in &self.rows {
            let saved = row.baseline.map_or(String::new(), |baseline| {
                let calls = baseline as f64 - row.upstream as f64;
                format!(
                    "{}${:.3}",
                    if calls < 0.0 { "-" } else { "" },
                    calls.abs() * PRICE_PER_CALL
                )
            });
            println!(
                "{:<18} {:<17} {:>5} {:>9} {:>9} {:>9} {:>7.1}% {:>5} {:>13}",
                row.scenario,
                row.variant,
                row.requests,
                row.upstream,
                millis(row.p50),
                millis(row.p99),
                row.success * 100.0,
                row.rate_limited,
                saved,
            );
        }
        println!(
            "\nupstream: calls the mock received; p50/p99: time to answer (or fail) per request; \
             429s: rate-limit refusals from the upstream;\nsaved: upstream calls avoided against \
             the first row of the scenario, at ${PRICE_PER_CALL} per call (a stated flat \
             price; negative: extra calls bought)."
        );
        for note in &self.notes {
            println!("- {note}");
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// A small deterministic generator for the scenarios' request mixes.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// The progress bar: a thread that redraws one line on stderr, so it keeps moving whatever the
// runtimes are doing (including the paused one).

#[derive(Debug, Clone)]
struct Progress {
    shared: Arc<ProgressState>,
    drawer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

#[derive(Debug)]
struct ProgressState {
    done: AtomicU64,
    total: u64,
    scenario: Mutex<&'static str>,
    finished: AtomicBool,
    terminal: bool,
    started: std::time::Instant,
}

impl Progress {
    fn start(total: u64) -> Progress {
        let shared = Arc::new(ProgressState {
            done: AtomicU64::new(0),
            total,
            scenario: Mutex::new(""),
            finished: AtomicBool::new(false),
            terminal: std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
        });
        let drawer = shared.terminal.then(|| {
            let state = shared.clone();
            std::thread::spawn(move || {
                while !state.finished.load(Ordering::Acquire) {
                    state.draw();
                    std::thread::sleep(Duration::from_millis(80));
                }
            })
        });
        Progress {
            shared,
            drawer: Arc::new(Mutex::new(drawer)),
        }
    }

    fn scenario(&self, name: &'static str) {
        if let Ok(mut scenario) = self.shared.scenario.lock() {
            *scenario = name;
        }
        if !self.shared.terminal {
            eprintln!("tour: {name}...");
        }
    }

    fn advance(&self) {
        self.shared.done.fetch_add(1, Ordering::Relaxed);
    }

    fn finish(&self) {
        self.shared.finished.store(true, Ordering::Release);
        // The last line is drawn once the drawer has stopped, so the table starts below it.
        if let Some(drawer) = self.drawer.lock().ok().and_then(|mut d| d.take()) {
            let _ = drawer.join();
        }
        if self.shared.terminal {
            self.shared.draw();
            eprintln!();
        }
    }
}

impl ProgressState {
    fn draw(&self) {
        const WIDTH: u64 = 32;
        let done = self.done.load(Ordering::Relaxed).min(self.total);
        let filled = (done * WIDTH / self.total.max(1)) as usize;
        let scenario = self.scenario.lock().map_or("", |s| *s);
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[2K[{}{}] {done:>4}/{} requests  {:>4.1} s  {scenario}",
            "#".repeat(filled),
            "-".repeat(WIDTH as usize - filled),
            self.total,
            self.started.elapsed().as_secs_f64(),
        );
        let _ = stderr.flush();
    }
}
