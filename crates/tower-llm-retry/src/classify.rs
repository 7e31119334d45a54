//! A classifier for raw HTTP stacks that also reads a 429's body for an exhausted quota.

use tower_llm_core::{Classify, ClassifyError, DefaultClassifier, FailureKind, Outcome};

/// [`DefaultClassifier`], plus: a 429 whose body says the account's quota is spent is
/// [`FailureKind::QuotaExhausted`] (never retried) instead of a rate limit.
///
/// Core classifies an `http::Response` from its status and headers only, and a 429 looks the
/// same whether it means "slow down" or "your credit is gone". Provider services read the
/// body and return an `UpstreamError` of the right kind; a stack that sits directly on an
/// HTTP client (a gateway, a proxy) has only the response, so this classifier looks into the
/// body of a 429 (and of nothing else) for:
///
/// - OpenAI's `insufficient_quota` error type or code;
/// - Google's `RESOURCE_EXHAUSTED` with a per-day quota id (`...PerDay...`).
///
/// ```
/// use tower_llm_core::{BoxError, Classify, FailureKind};
/// use tower_llm_retry::QuotaAwareClassifier;
///
/// let spent = http::Response::builder()
///     .status(429)
///     .body(r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#)
///     .unwrap();
/// let outcome = QuotaAwareClassifier.classify(Ok::<_, &BoxError>(&spent));
/// assert_eq!(outcome.kind(), Some(FailureKind::QuotaExhausted));
///
/// let slow_down = http::Response::builder().status(429).body("").unwrap();
/// let outcome = QuotaAwareClassifier.classify(Ok::<_, &BoxError>(&slow_down));
/// assert_eq!(outcome.kind(), Some(FailureKind::RateLimited));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaAwareClassifier;

impl<B, E> Classify<http::Response<B>, E> for QuotaAwareClassifier
where
    B: AsRef<[u8]>,
    E: ClassifyError + ?Sized,
{
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        let outcome = DefaultClassifier.classify(result);
        match result {
            Ok(response)
                if outcome.kind() == Some(FailureKind::RateLimited)
                    && says_quota_exhausted(response.body().as_ref()) =>
            {
                Outcome::failure(FailureKind::QuotaExhausted)
            }
            _ => outcome,
        }
    }
}

fn says_quota_exhausted(body: &[u8]) -> bool {
    contains(body, b"insufficient_quota")
        || (contains(body, b"RESOURCE_EXHAUSTED") && contains(body, b"PerDay"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_llm_core::BoxError;

    fn classify(status: u16, body: &'static str) -> Option<FailureKind> {
        let response = http::Response::builder()
            .status(status)
            .body(body)
            .expect("valid response");
        QuotaAwareClassifier
            .classify(Ok::<_, &BoxError>(&response))
            .kind()
    }

    #[test]
    fn reads_quota_bodies_of_429_only() {
        let gemini_day = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}"#;
        let gemini_minute = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]}]}}"#;
        assert_eq!(classify(429, gemini_day), Some(FailureKind::QuotaExhausted));
        assert_eq!(classify(429, gemini_minute), Some(FailureKind::RateLimited));
        assert_eq!(
            classify(429, r#"{"error":{"code":"insufficient_quota"}}"#),
            Some(FailureKind::QuotaExhausted)
        );
        assert_eq!(
            classify(400, r#"{"error":{"code":"insufficient_quota"}}"#),
            Some(FailureKind::BadRequest)
        );
        assert_eq!(classify(200, "insufficient_quota"), None);
        assert_eq!(classify(429, ""), Some(FailureKind::RateLimited));
    }
}
