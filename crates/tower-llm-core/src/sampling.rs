//! Whether a request asks for a reproducible answer.
//!
//! A cache may only serve a stored answer when the caller could not have told it apart from a
//! fresh one. A generation request that samples (temperature above zero, no seed) asks for a
//! *new* draw each time, so a cache serving it would change behaviour; dedup still coalesces
//! such requests while they are in flight (concurrent callers get one draw), but does not keep
//! the answer by default.

/// A request that can say whether the same request always deserves the same answer.
pub trait Deterministic {
    /// Whether a stored answer is as good as a fresh one.
    fn is_deterministic(&self) -> bool;
}

/// The rule for a JSON request body in any provider's spelling:
///
/// - a `seed` (OpenAI top level, Gemini `generationConfig.seed`) makes it deterministic;
/// - else a `temperature` (top level, or Gemini `generationConfig.temperature`) decides: zero is
///   deterministic, anything above is not;
/// - else a generation request (`messages`, `contents` or `prompt`) samples at the provider's
///   default temperature, which is above zero for OpenAI, Anthropic and Gemini: not
///   deterministic;
/// - anything else (embeddings, moderation, ...) is deterministic.
///
/// ```
/// use serde_json::json;
/// use tower_llm_core::is_deterministic_json;
///
/// assert!(is_deterministic_json(&json!({"messages": [], "temperature": 0})));
/// assert!(is_deterministic_json(&json!({"messages": [], "temperature": 0.9, "seed": 7})));
/// assert!(!is_deterministic_json(&json!({"messages": [], "temperature": 0.7})));
/// assert!(!is_deterministic_json(&json!({"messages": []})));
/// assert!(is_deterministic_json(&json!({"input": ["a", "b"], "model": "text-embedding-3-small"})));
/// ```
pub fn is_deterministic_json(body: &serde_json::Value) -> bool {
    let config = body.get("generationConfig");
    let field = |name: &str| {
        body.get(name)
            .or_else(|| config.and_then(|c| c.get(name)))
            .filter(|v| !v.is_null())
    };
    if field("seed").is_some() {
        return true;
    }
    if let Some(temperature) = field("temperature") {
        return temperature.as_f64() == Some(0.0);
    }
    !["messages", "contents", "prompt"]
        .iter()
        .any(|name| body.get(name).is_some())
}

impl<B: AsRef<[u8]>> Deterministic for http::Request<B> {
    /// A JSON body follows [`is_deterministic_json`]; a body that is not JSON is assumed
    /// deterministic (it is not a sampling request this crate knows of).
    fn is_deterministic(&self) -> bool {
        match serde_json::from_slice::<serde_json::Value>(self.body().as_ref()) {
            Ok(body) => is_deterministic_json(&body),
            Err(_) => true,
        }
    }
}

impl Deterministic for str {
    fn is_deterministic(&self) -> bool {
        true
    }
}

impl Deterministic for String {
    fn is_deterministic(&self) -> bool {
        true
    }
}

impl<T: Deterministic + ?Sized> Deterministic for &T {
    fn is_deterministic(&self) -> bool {
        (**self).is_deterministic()
    }
}

impl<T: Deterministic + ?Sized> Deterministic for std::sync::Arc<T> {
    fn is_deterministic(&self) -> bool {
        (**self).is_deterministic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gemini_generation_config() {
        assert!(is_deterministic_json(
            &json!({"contents": [], "generationConfig": {"temperature": 0.0}})
        ));
        assert!(!is_deterministic_json(
            &json!({"contents": [], "generationConfig": {"temperature": 1.0}})
        ));
        assert!(is_deterministic_json(
            &json!({"contents": [], "generationConfig": {"temperature": 1.0, "seed": 3}})
        ));
    }

    #[test]
    fn http_requests() {
        let sampled = http::Request::post("http://x/")
            .body(r#"{"messages":[{"role":"user","content":"hi"}]}"#)
            .expect("valid");
        assert!(!sampled.is_deterministic());
        let greedy = http::Request::post("http://x/")
            .body(r#"{"messages":[],"temperature":0}"#)
            .expect("valid");
        assert!(greedy.is_deterministic());
        let null_seed = http::Request::post("http://x/")
            .body(r#"{"messages":[],"seed":null}"#)
            .expect("valid");
        assert!(!null_seed.is_deterministic());
    }
}
