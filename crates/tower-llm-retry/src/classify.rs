//! A classifier for raw HTTP stacks that also reads an error response's JSON body.

use tower_llm_core::{
    Classify, ClassifyError, DefaultClassifier, ErrorBody, Failure, Outcome, read_error_body,
};

/// [`DefaultClassifier`], plus what a failed response's JSON body says, read by core's
/// [`read_error_body`] in whichever provider dialect (OpenAI, Anthropic, Gemini) the body's
/// shape shows.
///
/// Core classifies an `http::Response` from its status and headers only, and a 429 looks the
/// same whether it means "slow down" or "your credit is gone". Provider services read the
/// body and return an `UpstreamError` of the right kind; a stack that sits directly on an
/// HTTP client (a gateway, a proxy) has only the response, so this classifier reads the body
/// of a failed response (never of a success) and lets it refine the status where it says
/// more than a status can ([`ErrorBody::refines_status`]):
///
/// - an exhausted quota or spend cap on a 429 (OpenAI `insufficient_quota` and its billing
///   codes, Anthropic's spend limit, Google's per-day quota) is
///   [`QuotaExhausted`](tower_llm_core::FailureKind::QuotaExhausted), never retried;
/// - a prompt too long on a 400 is
///   [`ContextLengthExceeded`](tower_llm_core::FailureKind::ContextLengthExceeded);
/// - a content filter, an overload or a bad key keep their kinds;
/// - a retry hint in the body (Gemini's `RetryInfo`) is used when no header gave one.
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
        let (Ok(response), Some(failure)) = (result, outcome.as_failure()) else {
            return outcome;
        };
        let Some(body) = read_error_body(None, response.body().as_ref()) else {
            return outcome;
        };
        let kind = body
            .kind
            .filter(|kind| ErrorBody::refines_status(*kind))
            .unwrap_or(failure.kind);
        Outcome::Failure(
            Failure::new(kind).with_retry_after(failure.retry_after.or(body.retry_after)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_llm_core::{BoxError, FailureKind};

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
    fn reads_quota_bodies_of_failures_only() {
        let gemini_day = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}"#;
        let gemini_minute = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]}]}}"#;
        assert_eq!(classify(429, gemini_day), Some(FailureKind::QuotaExhausted));
        assert_eq!(classify(429, gemini_minute), Some(FailureKind::RateLimited));
        assert_eq!(
            classify(429, r#"{"error":{"code":"insufficient_quota"}}"#),
            Some(FailureKind::QuotaExhausted)
        );
        // As provider services read it: the body's kind says more than a 400.
        assert_eq!(
            classify(400, r#"{"error":{"code":"insufficient_quota"}}"#),
            Some(FailureKind::QuotaExhausted)
        );
        assert_eq!(classify(200, "insufficient_quota"), None);
        assert_eq!(classify(429, ""), Some(FailureKind::RateLimited));
    }

    #[test]
    fn reads_every_dialect_and_keeps_what_the_status_says_better() {
        let anthropic_cap = r#"{"type":"error","error":{"type":"rate_limit_error","message":"m","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        assert_eq!(
            classify(429, anthropic_cap),
            Some(FailureKind::QuotaExhausted)
        );
        let anthropic_slow =
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"m"}}"#;
        assert_eq!(
            classify(429, anthropic_slow),
            Some(FailureKind::RateLimited)
        );
        let too_long = r#"{"error":{"message":"m","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert_eq!(
            classify(400, too_long),
            Some(FailureKind::ContextLengthExceeded)
        );
        // A body's generic type does not hide the status: a 401 stays a 401.
        let generic = r#"{"error":{"message":"m","type":"invalid_request_error"}}"#;
        assert_eq!(classify(401, generic), Some(FailureKind::Unauthorized));
        assert_eq!(
            classify(503, "<html>busy</html>"),
            Some(FailureKind::Overloaded)
        );
    }

    #[test]
    fn a_body_hint_fills_in_for_a_missing_header() {
        let gemini = r#"{"error":{"code":429,"message":"m","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"7s"}]}}"#;
        let response = http::Response::builder()
            .status(429)
            .body(gemini)
            .expect("valid response");
        let failure = QuotaAwareClassifier
            .classify(Ok::<_, &BoxError>(&response))
            .as_failure()
            .expect("a failure");
        assert_eq!(failure.kind, FailureKind::RateLimited);
        assert_eq!(failure.retry_after, Some(std::time::Duration::from_secs(7)));
        let with_header = http::Response::builder()
            .status(429)
            .header("retry-after", "3")
            .body(gemini)
            .expect("valid response");
        let failure = QuotaAwareClassifier
            .classify(Ok::<_, &BoxError>(&with_header))
            .as_failure()
            .expect("a failure");
        assert_eq!(failure.retry_after, Some(std::time::Duration::from_secs(3)));
    }
}
