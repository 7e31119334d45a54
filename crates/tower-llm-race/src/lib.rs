//! One request, several providers: race, hedge, fallback, gather, vote and route.
//!
//! Each strategy is a tower [`Layer`](tower_layer::Layer) over a `Vec` of services of one
//! type, and a `Clone` service that takes the request. Services of different providers
//! share a type once boxed into `tower::util::BoxCloneService<Req, Res, BoxError>`.
//!
//! | strategy | calls per request | latency | use it for |
//! |---|---|---|---|
//! | [`race`] | all | the fastest success | worst-case latency, at N times the cost |
//! | [`hedge`] | one, more when late | the first service's, tail cut at the delay | tail latency, at a bounded extra cost |
//! | [`fallback`] | one, more on failure | the first healthy service's | availability at the lowest cost |
//! | [`gather`] | all | the slowest (or a timeout) | every answer ("hybrid context") |
//! | [`vote`] | all | until a quorum agrees | agreement between models |
//! | [`route`] | one | the chosen service's | fast model for easy prompts, canaries |
//!
//! Shared behaviour:
//!
//! - **Classification through core.** Results are judged by a classifier
//!   ([`Classify`](tower_llm_core::Classify), default
//!   [`DefaultClassifier`](tower_llm_core::DefaultClassifier)): an HTTP 500 response is a
//!   failure like an error is, a breaker's "circuit open" is worth trying elsewhere, a 400
//!   is a client error no other provider would fix.
//! - **No trait tax.** With its defaults every strategy takes any response type (a `String`,
//!   a typed provider answer): the only bound is the classifier's
//!   ([`ClassifyResponse`](tower_llm_core::ClassifyResponse), which core and the providers
//!   implement), or none with a classifier of your own.
//! - **Which service answered.** Each strategy knows an [`Answered`] (the service's index and
//!   how many calls were started) and hands it to its `W` type parameter, a [`RecordWinner`]
//!   set with the layer's `record_winner`: [`NoRecord`] by default, [`MarkResponse`] for an
//!   extension on `http::Response` or the [`Answer<T>`] wrapper ([`RecordAnswer`]), or a
//!   closure of your own.
//! - **State and handles.** A strategy's state belongs to its layer value: every service one
//!   layer value makes shares it, in whatever stack (the hedge's latency record, budget and
//!   counters, read through [`HedgeLayer::handle`]; a weighted route's random sequence; the
//!   other strategies' counters, read through `handle()` on [`RaceLayer`], [`FallbackLayer`],
//!   [`GatherLayer`], [`VoteLayer`] and [`RouteLayer`] as a [`StrategyHandle`] whose
//!   [`stats`](StrategyHandle::stats) is a [`StrategyStats`]). Handles work before the stack
//!   is built and after it is boxed. Independent state means another layer value.
//! - **Deadline and budget.** Fallback and hedge read the call's
//!   [`Deadline`](tower_llm_core::Deadline) (core's `DeadlineLayer` further out): they start
//!   no service or leg at or past it, never wait out a retry hint (another service may answer
//!   now), and at the deadline end with [`AllFailed`] saying so
//!   ([`is_at_deadline`](AllFailed::is_at_deadline)) and listing what was tried. Both can be
//!   handed core's [`AttemptBudget`](tower_llm_core::AttemptBudget), shared with retry layers,
//!   so every extra call of the stack draws on one budget (see [`fallback`] for an example).
//! - **When every service fails**, the error is [`AllFailed`] (or [`NoQuorum`] for a vote),
//!   listing each service's failure, classified; boxed, it still classifies (as the most
//!   hopeful of its failures) for a retry or breaker layer further out.
//! - **Readiness.** Each service is cloned per call and polled ready inside the response
//!   future, so one service that is not ready holds up only its own call; the strategies'
//!   own `poll_ready` is always ready. Rejections are errors from the response future.
//! - **Cancellation.** A call that lost (or outlived a timeout) is dropped as soon as the
//!   outcome is known, which cancels it: an HTTP client closes the connection and the
//!   provider stops generating. Dropping a strategy's future drops every call it started.
//!
//! # Observability
//!
//! One funnel per crate feeds `tracing` (feature `tracing`) and `metrics` (feature `metrics`),
//! both default; with a feature off its code is compiled out. Every builder has
//! `name(..)` (default: the strategy, e.g. "race", "fallback"): the `name` label on every
//! series and the `name` field on every event, beside `strategy`. Prompts, answers and
//! error texts never appear; failures are reported by their [`FailureKind`](tower_llm_core::FailureKind).
//!
//! Events (target `tower_llm_race::observe`, no spans):
//!
//! | message | level | fields |
//! |---|---|---|
//! | `hedge fired` | debug | `leg`, `delay_ms` |
//! | `budget exhausted` | warn | `spender` (`hedge` or `fallback`), `budget` (`own` or `shared`) |
//! | `deadline passed` | warn | `services`, `tried`, `kinds` |
//! | `losers cancelled` | debug | `cancelled` |
//! | `service failed` | debug | `service`, `kind` |
//! | `falling back to the next service` | info | `from`, `to`, `kind` |
//! | `all services failed` | warn | `services`, `kinds` |
//!
//! Counters (unit: count), labelled `name` and `strategy`, their names in [`metrics`](mod@metrics):
//! `tower_llm_race_requests_total`, `tower_llm_race_attempts_total`,
//! `tower_llm_race_failures_total` (also labelled `kind`), `tower_llm_race_cancelled_total`,
//! `tower_llm_race_exhausted_total`, `tower_llm_race_hedges_total`,
//! `tower_llm_race_hedge_budget_exhausted_total` (hedge only),
//! `tower_llm_race_budget_exhausted_total` and `tower_llm_race_deadline_total` (fallback and
//! hedge).
//!
//! # Example
//!
//! Route short prompts to a fast model and the others to a vote of three, across provider
//! types boxed into one service type:
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
//! use tower_llm_core::BoxError;
//! use tower_llm_race::{Answer, MarkResponse, RecordAnswer};
//! use tower_llm_race::{route::RouteLayer, vote::VoteLayer};
//!
//! type Provider = BoxCloneService<String, Answer<String>, BoxError>;
//!
//! fn model(reply: &'static str) -> Provider {
//!     BoxCloneService::new(service_fn(move |_prompt: String| async move {
//!         Ok::<_, BoxError>(Answer::new(reply.to_string()))
//!     }))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let vote = ServiceBuilder::new()
//!     .layer(VoteLayer::majority(|a: &Answer<String>| a.to_lowercase()).build()?)
//!     .service(vec![model("Yes"), model("no"), model("yes")]);
//! let router = ServiceBuilder::new()
//!     .layer(RouteLayer::predicate(|prompt: &String| prompt.len() < 20).record_winner(MarkResponse))
//!     .service(vec![model("fast"), BoxCloneService::new(vote)]);
//!
//! let quick = router.clone().oneshot("2 + 2?".to_string()).await?;
//! assert_eq!(quick.as_str(), "fast");
//! let hard = router.oneshot("Is this contract enforceable in France?".to_string()).await?;
//! assert_eq!(hard.as_str(), "Yes");
//! assert_eq!(hard.answered().map(|a| a.service), Some(1)); // the route's mark
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod answer;
mod attempt;
mod error;
pub mod fallback;
pub mod gather;
pub mod hedge;
mod limits;
pub mod metrics;
mod observe;
pub mod race;
pub mod route;
pub mod vote;

pub use answer::{Answer, Answered, MarkResponse, NoRecord, RecordAnswer, RecordWinner};
pub use error::{AllFailed, ConfigError, NoQuorum, NoSuchService, ServiceFailure};
pub use fallback::{Fallback, FallbackFuture, FallbackLayer};
pub use gather::{Gather, GatherFuture, GatherLayer, Gathered};
pub use hedge::{Hedge, HedgeBudget, HedgeDelay, HedgeFuture, HedgeHandle, HedgeLayer, HedgeStats};
pub use observe::{StrategyHandle, StrategyStats};
pub use race::{Race, RaceFuture, RaceLayer};
pub use route::{Route, RouteFuture, RouteLayer};
pub use vote::{Ballot, Vote, VoteFuture, VoteLayer};
