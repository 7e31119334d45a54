//! What the limiter reads from requests and responses, chosen by the builder: the bounds on
//! the request and response types come only with the features that need them.
//!
//! | builder call | type parameter | needs |
//! |--------------|----------------|-------|
//! | (none) | [`IgnoreTokens`], [`IgnoreHeaders`] | nothing: any request, any response |
//! | [`tokens`](crate::RateLimitBuilder::tokens) | [`CountTokens`] | [`RequestCost`] on the request, [`ResponseUsage`] on the response |
//! | [`adapt_to_headers`](crate::RateLimitBuilder::adapt_to_headers) | [`FollowHeaders`] | [`RateLimitHeaders`] on the response |
//!
//! The traits are sealed: these four types are the only readers.

use http::HeaderMap;
use tower_llm_core::{RateLimitHeaders, RequestCost, ResponseUsage, TokenCounting};

mod sealed {
    pub trait Sealed {}
}

/// How a limiter learns a call's tokens: not at all ([`IgnoreTokens`]) or from the request's
/// estimate and the response's usage ([`CountTokens`]).
pub trait TokenReader<Req, Res>: sealed::Sealed {
    /// The tokens to reserve for `request` before it is sent.
    fn estimate(request: &Req) -> u64;

    /// The tokens the call used, from its response, when reported.
    fn usage(response: &Res) -> Option<u64>;

    /// How the provider that answered counts tokens, when the response says.
    fn counting(response: &Res) -> Option<TokenCounting>;
}

/// How a limiter reads the provider's rate-limit headers: not at all ([`IgnoreHeaders`]) or
/// from the response ([`FollowHeaders`]).
pub trait HeaderReader<Res>: sealed::Sealed {
    /// The response's rate-limit headers, if it kept them.
    fn headers(response: &Res) -> Option<&HeaderMap>;
}

/// No tokens quota: nothing is read from requests or responses (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IgnoreTokens;

/// A tokens quota: requests' [`RequestCost`] are reserved, responses' [`ResponseUsage`]
/// reconciled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountTokens;

/// The provider's rate-limit headers are not read (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IgnoreHeaders;

/// The provider's rate-limit headers are read from each response ([`RateLimitHeaders`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowHeaders;

impl sealed::Sealed for IgnoreTokens {}
impl sealed::Sealed for CountTokens {}
impl sealed::Sealed for IgnoreHeaders {}
impl sealed::Sealed for FollowHeaders {}

impl<Req, Res> TokenReader<Req, Res> for IgnoreTokens {
    #[inline]
    fn estimate(_request: &Req) -> u64 {
        0
    }

    #[inline]
    fn usage(_response: &Res) -> Option<u64> {
        None
    }

    #[inline]
    fn counting(_response: &Res) -> Option<TokenCounting> {
        None
    }
}

impl<Req: RequestCost, Res: ResponseUsage> TokenReader<Req, Res> for CountTokens {
    #[inline]
    fn estimate(request: &Req) -> u64 {
        request.estimated_tokens()
    }

    #[inline]
    fn usage(response: &Res) -> Option<u64> {
        response.usage().map(|u| u.total())
    }

    #[inline]
    fn counting(response: &Res) -> Option<TokenCounting> {
        response.token_counting()
    }
}

impl<Res> HeaderReader<Res> for IgnoreHeaders {
    #[inline]
    fn headers(_response: &Res) -> Option<&HeaderMap> {
        None
    }
}

impl<Res: RateLimitHeaders> HeaderReader<Res> for FollowHeaders {
    #[inline]
    fn headers(response: &Res) -> Option<&HeaderMap> {
        response.rate_limit_headers()
    }
}
