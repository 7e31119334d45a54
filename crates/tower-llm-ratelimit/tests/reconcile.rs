//! The default reconcile follows the provider's own counter, as the response reports it
//! (`ResponseUsage::token_counting`): over the typed OpenAI service the reservation is kept
//! (OpenAI counts `max_tokens` at admission), over the typed Anthropic service it is brought
//! down to the usage (Anthropic counts output tokens as produced). Real HTTP against the
//! testkit's mock, in paused time.

#![allow(clippy::unwrap_used)]

mod typed;

use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_llm_core::{BoxError, RequestCost, ResponseUsage, TokenCounting};
use tower_llm_providers::{ChatRequest, ChatResponse, Message, UpstreamError};
use tower_llm_ratelimit::{Quota, RateLimitLayer, RateLimitStats, Reconcile};
use tower_llm_testkit::{FaultPlan, MockServer};
use typed::{anthropic, openai};

const MAX_TOKENS: u32 = 400;
/// Room for one call's reservation, not two: the second call goes at once only if the
/// first one's unused output tokens were given back.
const TOKENS_PER_MINUTE: u64 = 600;

fn request(i: usize) -> ChatRequest {
    ChatRequest::new("m", vec![Message::user(format!("question {i}"))]).max_tokens(MAX_TOKENS)
}

/// Two calls through a tokens quota reconciled with `reconcile` (`None`: the default): the
/// stats after them, the usage of the first answer, and when the second call got its answer.
async fn two_calls<S>(service: S, reconcile: Option<Reconcile>) -> (RateLimitStats, u64, Duration)
where
    S: Service<ChatRequest, Response = ChatResponse, Error = UpstreamError> + Clone,
{
    let builder = RateLimitLayer::builder()
        .tokens(Quota::per_minute(TOKENS_PER_MINUTE).with_burst(TOKENS_PER_MINUTE))
        .max_wait(Duration::from_secs(120));
    let layer = match reconcile {
        Some(reconcile) => builder.reconcile(reconcile).build(),
        None => builder.build(),
    }
    .unwrap();
    let handle = layer.handle();
    let mut limited = layer.layer(service);
    let start = Instant::now();
    let first = limited
        .ready()
        .await
        .unwrap()
        .call(request(0))
        .await
        .unwrap();
    let used = first.usage().unwrap().total();
    assert!(used < request(0).estimated_tokens(), "{used}");
    limited
        .ready()
        .await
        .unwrap()
        .call(request(1))
        .await
        .unwrap();
    (handle.stats(), used, start.elapsed())
}

async fn mock() -> MockServer {
    MockServer::start(FaultPlan::healthy()).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn over_openai_the_default_keeps_the_reservation() {
    let server = mock().await;
    let (stats, _, second_done) = two_calls(openai(&server), None).await;
    assert_eq!(stats.tokens_refunded, 0, "{stats:?}");
    assert_eq!(stats.tokens_charged, 0, "{stats:?}");
    // The first reservation fills the window: the second call waits for it to move on.
    assert!(second_done >= Duration::from_secs(20), "{second_done:?}");
    assert_eq!(server.counters().status(429), 0);
}

#[tokio::test(start_paused = true)]
async fn over_anthropic_the_default_reconciles_to_usage() {
    let server = mock().await;
    let estimate = request(0).estimated_tokens();
    let (stats, used, second_done) = two_calls(anthropic(&server), None).await;
    // The first call's refund is exactly what it did not use (the second's too).
    assert!(stats.tokens_refunded >= estimate - used, "{stats:?}");
    assert_eq!(stats.tokens_charged, 0, "{stats:?}");
    // Its unused tokens came back at once: the second call did not wait.
    assert!(second_done < Duration::from_secs(1), "{second_done:?}");
}

#[tokio::test(start_paused = true)]
async fn a_chosen_reconcile_wins_over_the_provider() {
    let server = mock().await;
    let (stats, _, _) = two_calls(anthropic(&server), Some(Reconcile::ChargeOnly)).await;
    assert_eq!(stats.tokens_refunded, 0, "{stats:?}");

    let (stats, used, _) = two_calls(openai(&server), Some(Reconcile::RefundAndCharge)).await;
    assert!(
        stats.tokens_refunded >= request(0).estimated_tokens() - used,
        "{stats:?}"
    );
}

/// A raw `http::Response` says how its provider counts with a `TokenCounting` extension;
/// without one, the default keeps the reservation.
#[tokio::test(start_paused = true)]
async fn raw_responses_say_it_with_an_extension() {
    /// The call's estimate and the tokens refunded after it.
    async fn reserved_and_refunded(counting: Option<TokenCounting>) -> (u64, u64) {
        let layer = RateLimitLayer::builder()
            .tokens(Quota::per_minute(10_000))
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layer.layer(tower::service_fn(
            move |_req: http::Request<String>| async move {
                let mut response =
                    http::Response::new(r#"{"usage":{"input_tokens":3,"output_tokens":7}}"#);
                if let Some(counting) = counting {
                    response.extensions_mut().insert(counting);
                }
                Ok::<_, BoxError>(response)
            },
        ));
        let body = r#"{"model":"m","max_tokens":100,"messages":[]}"#.to_owned();
        let request = http::Request::post("http://upstream/v1/messages")
            .body(body)
            .unwrap();
        svc.oneshot(request).await.unwrap();
        let stats = handle.stats();
        (stats.tokens_reserved, stats.tokens_refunded)
    }
    let (reserved, refunded) = reserved_and_refunded(None).await;
    assert!(reserved > 100, "{reserved}");
    assert_eq!(refunded, 0);
    let (_, refunded) = reserved_and_refunded(Some(TokenCounting::ReservedAtAdmission)).await;
    assert_eq!(refunded, 0);
    let (reserved, refunded) = reserved_and_refunded(Some(TokenCounting::AsProduced)).await;
    assert_eq!(refunded, reserved - 10);
}
