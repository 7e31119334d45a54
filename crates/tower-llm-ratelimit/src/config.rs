//! The configuration a builder checks and a layer value keeps.

use std::borrow::Cow;
use std::time::Duration;

use tower_llm_core::TokenCounting;

use crate::adaptive::AdaptiveConcurrency;
use crate::quota::Quota;

/// What to do with a call's tokens once its actual usage is known.
///
/// The local budget should count the way the provider's own limiter counts, so that it never
/// believes more is left than the server does:
///
/// | provider | how it counts ([`TokenCounting`]) | what [`FollowProvider`](Reconcile::FollowProvider) does |
/// |----------|-----------------------------------|------------------|
/// | OpenAI (and OpenAI-compatible servers) | prompt estimate plus `max_tokens` at admission, kept whatever the call used ([`ReservedAtAdmission`](TokenCounting::ReservedAtAdmission)) | [`ChargeOnly`](Reconcile::ChargeOnly) |
/// | Anthropic, Gemini | input tokens at admission, output tokens as produced ([`AsProduced`](TokenCounting::AsProduced)) | [`RefundAndCharge`](Reconcile::RefundAndCharge) |
/// | a response that does not say (raw `http::Response` without the extension, your own types) | | [`ChargeOnly`](Reconcile::ChargeOnly) |
///
/// The default is [`FollowProvider`](Reconcile::FollowProvider): the response says how its
/// provider counts ([`ResponseUsage::token_counting`]; the typed answers of
/// `tower-llm-providers` say it from their dialect, a raw `http::Response` when a
/// [`TokenCounting`] is in its extensions), and a response that does not say is reconciled
/// with [`ChargeOnly`](Reconcile::ChargeOnly), which never over-admits against either kind
/// of provider. Set another variant to decide for every response.
///
/// [`ResponseUsage::token_counting`]: tower_llm_core::ResponseUsage::token_counting
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reconcile {
    /// Reconcile as the response says its provider counts ([`TokenCounting`]), and as
    /// [`ChargeOnly`](Reconcile::ChargeOnly) when it does not say. The default.
    #[default]
    FollowProvider,
    /// Keep the reservation (prompt estimate plus `max_tokens`) and charge usage beyond it,
    /// never refund. Matches OpenAI, whose limiter counts `max_tokens` up front and keeps
    /// it.
    ChargeOnly,
    /// Refund what the call did not use and charge what it used beyond the estimate, so the
    /// budget follows real usage. Matches providers that count output tokens as they are
    /// produced (Anthropic, Gemini); against OpenAI it would let through calls the server
    /// refuses with a 429.
    RefundAndCharge,
    /// Keep the estimate; the response's usage is not read.
    Off,
}

impl Reconcile {
    /// The setting for one response whose provider counts as `counting` says (if it said):
    /// never [`FollowProvider`](Reconcile::FollowProvider).
    #[inline]
    pub(crate) fn resolve(self, counting: Option<TokenCounting>) -> Reconcile {
        match (self, counting) {
            (Reconcile::FollowProvider, Some(TokenCounting::AsProduced)) => {
                Reconcile::RefundAndCharge
            }
            (Reconcile::FollowProvider, _) => Reconcile::ChargeOnly,
            (chosen, _) => chosen,
        }
    }
}

/// What to do when the shared Redis store cannot be reached (feature `redis`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendFailure {
    /// Send the call anyway, limited only by this instance's local limits (concurrency,
    /// spacing, pause). The provider's own 429 remains the last line; availability wins.
    #[default]
    Open,
    /// Refuse the call at once with a rate-limited error: the budget is never exceeded, but
    /// a Redis outage stops traffic.
    Closed,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) name: Cow<'static, str>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) adaptive: Option<AdaptiveConcurrency>,
    pub(crate) spacing: Option<Duration>,
    pub(crate) requests: Option<Quota>,
    pub(crate) tokens: Option<Quota>,
    pub(crate) max_wait: Duration,
    pub(crate) max_queue: usize,
    pub(crate) max_keys: usize,
    pub(crate) adapt: bool,
    pub(crate) pause_on_rate_limit: bool,
    pub(crate) default_pause: Duration,
    pub(crate) reconcile: Reconcile,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<crate::redis::RedisBackend>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: Cow::Borrowed(crate::observe::DEFAULT_NAME),
            concurrency: None,
            adaptive: None,
            spacing: None,
            requests: None,
            tokens: None,
            max_wait: Duration::from_secs(60),
            max_queue: 1024,
            max_keys: 10_000,
            adapt: false,
            pause_on_rate_limit: true,
            default_pause: Duration::from_secs(1),
            reconcile: Reconcile::default(),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

impl Config {
    /// Whether calls in flight are counted: a static or an adaptive concurrency limit.
    #[inline]
    pub(crate) fn counts_in_flight(&self) -> bool {
        self.concurrency.is_some() || self.adaptive.is_some()
    }
}
