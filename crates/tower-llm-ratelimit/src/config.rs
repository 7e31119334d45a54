//! The configuration a builder checks and a layer value keeps.

use std::time::Duration;

use crate::quota::Quota;

/// What to do with a call's tokens once its actual usage is known.
///
/// Pick the one that matches how the provider's own limiter counts, so the local budget never
/// believes more is left than the server does:
///
/// | provider | how it counts | setting |
/// |----------|---------------|---------|
/// | OpenAI (and most OpenAI-compatible servers with a token limit) | prompt estimate plus `max_tokens` at admission, kept whatever the call used | [`ChargeOnly`](Reconcile::ChargeOnly) (default) |
/// | Anthropic | input tokens at admission; output tokens estimated from `max_tokens`, then adjusted to what was produced | [`RefundAndCharge`](Reconcile::RefundAndCharge) |
///
/// The default is [`ChargeOnly`](Reconcile::ChargeOnly): it never over-admits against either
/// provider. Against Anthropic it leaves unused output tokens idle until the window moves on;
/// [`RefundAndCharge`](Reconcile::RefundAndCharge) gives them back, but against OpenAI it
/// would let through calls the server refuses with a 429.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reconcile {
    /// Keep the reservation (prompt estimate plus `max_tokens`) and charge usage beyond it,
    /// never refund. Matches OpenAI, whose limiter counts `max_tokens` up front and keeps
    /// it. The default.
    #[default]
    ChargeOnly,
    /// Refund what the call did not use and charge what it used beyond the estimate, so the
    /// budget follows real usage. Matches providers that adjust their own count at the end
    /// of a call (Anthropic's output tokens).
    RefundAndCharge,
    /// Keep the estimate; the response's usage is not read.
    Off,
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
    pub(crate) concurrency: Option<usize>,
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
            concurrency: None,
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
