//! Recipe: the layers around any client you already have, through `tower::service_fn`.
//!
//! `cargo run --example service_fn` wraps a closure that calls a vendor SDK (a stand-in here,
//! in-process, flaky on purpose) with dedup, a rate limit, retry and a circuit breaker, and
//! prints what each did. Nothing in the layers knows the SDK: they need three small things.
//!
//! 1. **Errors the layers understand.** Map the SDK's errors to core's [`UpstreamError`]
//!    with a [`FailureKind`] (and a retry hint when the SDK has one): retry then knows what
//!    is worth retrying, the breaker what means "upstream unhealthy", and a 400 is neither.
//! 2. **A response type that says what it is.** [`ClassifyResponse`] (a returned value is a
//!    success), [`ResponseUsage`] (the tokens it cost, for the tokens-per-minute quota) and
//!    [`RateLimitHeaders`] (none here: the SDK does not expose headers). Plain `String`
//!    works for dedup, retry and the breaker already; the rate limiter wants the usage.
//! 3. **A request the layers can key and price.** A `String` prompt has core's
//!    `Fingerprint` and `RequestCost` already; your own type implements them the same way.
//!
//! Order, outermost first: dedup (a cached answer costs no quota and no retry), rate limit,
//! retry, breaker (retry outside it, so an open breaker's "come back in 30 s" ends the retry
//! at once instead of being hammered).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_breaker::{CircuitBreakerLayer, Window};
use tower_llm_core::{
    BoxError, ClassifyResponse, FailureKind, FingerprintKey, Outcome, ResponseUsage, UpstreamError,
    Usage, classify_dyn_error, estimate_text_tokens,
};
use tower_llm_dedup::DedupLayer;
use tower_llm_ratelimit::{Quota, RateLimitHeaders, RateLimitLayer};
use tower_llm_retry::{Backoff, RetryLayer, StatsOnly};

/// The vendor SDK you already use: an async call and its own error type.
#[derive(Debug, Default)]
struct VendorSdk {
    calls: AtomicU32,
    /// Refusals still to give before answering (overloaded, then a 429 on the last one).
    busy: AtomicU32,
    down: AtomicBool,
}

#[derive(Debug)]
enum VendorError {
    Busy,
    TooManyRequests { wait_seconds: u64 },
    Invalid(String),
    Unavailable,
}

impl VendorSdk {
    async fn complete(&self, prompt: &str) -> Result<(String, u32), VendorError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(VendorError::Unavailable);
        }
        match self
            .busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            Ok(1) => return Err(VendorError::TooManyRequests { wait_seconds: 0 }),
            Ok(_) => return Err(VendorError::Busy),
            Err(_) => {}
        }
        if prompt.is_empty() {
            return Err(VendorError::Invalid("empty prompt".into()));
        }
        Ok((format!("echo: {prompt}"), 12))
    }
}

/// Step 1: the SDK's errors in core's words.
fn to_upstream(error: VendorError) -> UpstreamError {
    match error {
        VendorError::Busy => UpstreamError::new(FailureKind::Overloaded, "vendor busy"),
        VendorError::TooManyRequests { wait_seconds } => {
            UpstreamError::new(FailureKind::RateLimited, "vendor rate limit")
                .with_retry_after(Some(Duration::from_secs(wait_seconds)))
        }
        VendorError::Invalid(why) => UpstreamError::new(FailureKind::BadRequest, why),
        VendorError::Unavailable => UpstreamError::new(FailureKind::ServerError, "vendor down"),
    }
}

/// Step 2: the answer, saying what it is and what it cost.
#[derive(Clone, Debug)]
struct Answer {
    text: String,
    usage: Usage,
}

impl ClassifyResponse for Answer {
    fn classify_response(&self) -> Outcome {
        Outcome::Success
    }
}

impl ResponseUsage for Answer {
    fn usage(&self) -> Option<Usage> {
        Some(self.usage)
    }
}

impl RateLimitHeaders for Answer {}

fn describe(result: &Result<Answer, BoxError>) -> String {
    match result {
        Ok(answer) => format!("ok \"{}\"", answer.text),
        Err(error) => format!("{} ({error})", classify_dyn_error(&**error).kind.as_str()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let sdk = Arc::new(VendorSdk::default());

    let client = service_fn({
        let sdk = sdk.clone();
        move |prompt: String| {
            let sdk = sdk.clone();
            async move {
                let (text, output_tokens) = sdk.complete(&prompt).await.map_err(to_upstream)?;
                let usage = Usage::new(estimate_text_tokens(&prompt), u64::from(output_tokens));
                Ok::<_, UpstreamError>(Answer { text, usage })
            }
        }
    });

    let key = FingerprintKey::process();
    let dedup = DedupLayer::<Answer>::builder()
        .key_fn(move |prompt: &String| Some(key.fingerprint(prompt)))
        .ttl(Duration::from_secs(60))
        // A String is not "deterministic" to the cache (no temperature or seed to read):
        // opt in to keeping every successful answer.
        .cache_all()
        .build()?;
    let limit = RateLimitLayer::builder()
        .requests(Quota::per_minute(600))
        .tokens(Quota::per_minute(100_000))
        .concurrency(8)
        .max_wait(Duration::from_secs(5))
        .build()?;
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(50)))
        .deadline(Duration::from_secs(2))
        .record_attempts(StatsOnly)
        .build()?;
    // The failure-rate policy, over a window sized for this demo's handful of calls: the
    // default (half of the last 100, once 40 are in) is what a service with real traffic
    // keeps.
    let breaker = CircuitBreakerLayer::builder()
        .name("vendor")
        .window(Window::count(10))
        .minimum_calls(5)
        .cooldown(Duration::from_secs(30))
        .build()?;
    let breaker_handle = breaker.handle();
    let retry_stats = retry.handle();

    let mut llm = ServiceBuilder::new()
        .layer(dedup)
        .layer(limit)
        .layer(retry)
        .layer(breaker)
        .service(client);

    // Overloaded, then rate limited, then answers: retry absorbs both.
    sdk.busy.store(2, Ordering::SeqCst);
    let first = llm.ready().await?.call("hello".to_owned()).await;
    println!(
        "1. flaky vendor:      {}  after {} SDK calls ({} retries)",
        describe(&first),
        sdk.calls.load(Ordering::SeqCst),
        retry_stats.stats().retries
    );

    // The same prompt three times at once: the cache answers, the SDK is not called.
    let before = sdk.calls.load(Ordering::SeqCst);
    let (a, b, c) = tokio::join!(
        llm.clone().oneshot("hello".to_owned()),
        llm.clone().oneshot("hello".to_owned()),
        llm.clone().oneshot("hello".to_owned()),
    );
    println!(
        "2. three duplicates:  {}, {}, {}  with {} new SDK calls",
        describe(&a),
        describe(&b),
        describe(&c),
        sdk.calls.load(Ordering::SeqCst) - before
    );

    // A client mistake is not retried and does not count against the vendor's health.
    let before = sdk.calls.load(Ordering::SeqCst);
    let invalid = llm.ready().await?.call(String::new()).await;
    println!(
        "3. invalid request:   {}  with {} SDK call",
        describe(&invalid),
        sdk.calls.load(Ordering::SeqCst) - before
    );

    // An outage: the first request retries and fails, which opens the breaker; the second
    // fails at once without reaching the SDK. The open breaker's "back in 30 s" also pauses
    // the rate limiter's key for that long (its `pause_on_rate_limit`, on by default), so the
    // third is refused by the limiter itself, at once, since 30 s is beyond its `max_wait`.
    sdk.down.store(true, Ordering::SeqCst);
    for n in 1..=3 {
        let before = sdk.calls.load(Ordering::SeqCst);
        let result = llm.ready().await?.call(format!("question {n}")).await;
        println!(
            "4. outage, request {n}: {}  with {} SDK calls, breaker {:?}",
            describe(&result),
            sdk.calls.load(Ordering::SeqCst) - before,
            breaker_handle.state()
        );
    }
    Ok(())
}
