//! What a call costs in tokens: an estimate before it is sent, the actual usage after.
//!
//! A tokens-per-minute limiter reserves [`RequestCost::estimated_tokens`] before the call and
//! reconciles with [`ResponseUsage::usage`] when the answer arrives, refunding or charging the
//! difference. Estimates need no tokenizer: [`estimate_text_tokens`] counts roughly four ASCII
//! characters per token and one token per other character, which errs on the high side for
//! English and is close for most other scripts; the output side counts the request's
//! `max_tokens` in full, since that is what the provider's own limiter reserves.

use std::sync::Arc;

/// Token usage reported by a provider for one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Tokens in the prompt, cached ones included.
    pub input_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache (a subset of `input_tokens`).
    pub cached_input_tokens: u64,
}

impl Usage {
    /// Input plus output tokens: what a tokens-per-minute quota counts.
    pub const fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// A request whose token cost can be estimated before it is sent.
pub trait RequestCost {
    /// The tokens this request may consume: prompt size plus the most it may generate.
    fn estimated_tokens(&self) -> u64;
}

/// A response that reports the tokens its call actually consumed.
pub trait ResponseUsage {
    /// The usage, if the response carries it.
    fn usage(&self) -> Option<Usage>;
}

/// A rough token count for `text` (see the module docs for the rule).
///
/// ```
/// assert_eq!(tower_llm_core::estimate_text_tokens("Hello, world!"), 4);
/// assert_eq!(tower_llm_core::estimate_text_tokens(""), 0);
/// ```
pub fn estimate_text_tokens(text: &str) -> u64 {
    let ascii = text.bytes().filter(u8::is_ascii).count() as u64;
    let other = text.chars().filter(|c| !c.is_ascii()).count() as u64;
    ascii.div_ceil(4) + other
}

/// The output budget a JSON request body asks for, in any provider's spelling: `max_tokens`
/// (OpenAI legacy, Anthropic), `max_completion_tokens` (OpenAI), `max_output_tokens` (OpenAI
/// Responses) or `generationConfig.maxOutputTokens` (Gemini).
pub fn requested_output_tokens(body: &serde_json::Value) -> Option<u64> {
    ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|field| body.get(field)?.as_u64())
        .or_else(|| {
            body.get("generationConfig")?
                .get("maxOutputTokens")?
                .as_u64()
        })
}

/// The usage in a JSON response body, in any provider's spelling: OpenAI `usage.prompt_tokens`
/// / `completion_tokens` / `prompt_tokens_details.cached_tokens`, Anthropic
/// `usage.input_tokens` / `output_tokens` / `cache_read_input_tokens`, Gemini
/// `usageMetadata.promptTokenCount` / `candidatesTokenCount` / `cachedContentTokenCount`.
pub fn usage_from_json(body: &serde_json::Value) -> Option<Usage> {
    let field = |v: &serde_json::Value, name: &str| v.get(name).and_then(serde_json::Value::as_u64);
    if let Some(u) = body.get("usage") {
        if let (Some(input), Some(output)) =
            (field(u, "prompt_tokens"), field(u, "completion_tokens"))
        {
            let cached = u
                .get("prompt_tokens_details")
                .and_then(|d| field(d, "cached_tokens"))
                .unwrap_or(0);
            return Some(Usage {
                input_tokens: input,
                output_tokens: output,
                cached_input_tokens: cached,
            });
        }
        if let (Some(input), Some(output)) = (field(u, "input_tokens"), field(u, "output_tokens")) {
            // Anthropic counts cache reads and writes outside `input_tokens`.
            let read = field(u, "cache_read_input_tokens").unwrap_or(0);
            let written = field(u, "cache_creation_input_tokens").unwrap_or(0);
            return Some(Usage {
                input_tokens: input + read + written,
                output_tokens: output,
                cached_input_tokens: read,
            });
        }
        if let Some(input) = field(u, "prompt_tokens") {
            // Embeddings report prompt tokens only.
            return Some(Usage {
                input_tokens: input,
                output_tokens: 0,
                cached_input_tokens: 0,
            });
        }
    }
    let u = body.get("usageMetadata")?;
    Some(Usage {
        input_tokens: field(u, "promptTokenCount").unwrap_or(0),
        output_tokens: field(u, "candidatesTokenCount").unwrap_or(0)
            + field(u, "thoughtsTokenCount").unwrap_or(0),
        cached_input_tokens: field(u, "cachedContentTokenCount").unwrap_or(0),
    })
}

fn json_text_tokens(value: &serde_json::Value) -> u64 {
    use serde_json::Value;
    match value {
        Value::String(s) => estimate_text_tokens(s),
        Value::Array(items) => items.iter().map(json_text_tokens).sum(),
        Value::Object(map) => map.values().map(json_text_tokens).sum(),
        _ => 0,
    }
}

/// Output budget assumed for a JSON request that names none.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 1024;

/// Estimates a JSON request body: the text of every string in it plus its output budget
/// ([`DEFAULT_OUTPUT_TOKENS`] when it names none). A body that is not JSON counts one token
/// per four bytes.
pub fn estimate_body_tokens(body: &[u8]) -> u64 {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => {
            json_text_tokens(&value)
                + requested_output_tokens(&value).unwrap_or(DEFAULT_OUTPUT_TOKENS)
        }
        Err(_) => (body.len() as u64).div_ceil(4),
    }
}

impl<B: AsRef<[u8]>> RequestCost for http::Request<B> {
    fn estimated_tokens(&self) -> u64 {
        estimate_body_tokens(self.body().as_ref())
    }
}

impl RequestCost for str {
    fn estimated_tokens(&self) -> u64 {
        estimate_text_tokens(self)
    }
}

impl RequestCost for String {
    fn estimated_tokens(&self) -> u64 {
        estimate_text_tokens(self)
    }
}

impl<T: RequestCost + ?Sized> RequestCost for &T {
    fn estimated_tokens(&self) -> u64 {
        (**self).estimated_tokens()
    }
}

impl<T: RequestCost + ?Sized> RequestCost for Arc<T> {
    fn estimated_tokens(&self) -> u64 {
        (**self).estimated_tokens()
    }
}

impl<B: AsRef<[u8]>> ResponseUsage for http::Response<B> {
    /// A [`Usage`] in the response's extensions (where a provider service may put it) wins;
    /// otherwise the JSON body is read.
    fn usage(&self) -> Option<Usage> {
        if let Some(usage) = self.extensions().get::<Usage>() {
            return Some(*usage);
        }
        let body: serde_json::Value = serde_json::from_slice(self.body().as_ref()).ok()?;
        usage_from_json(&body)
    }
}

impl<T: ResponseUsage + ?Sized> ResponseUsage for &T {
    fn usage(&self) -> Option<Usage> {
        (**self).usage()
    }
}

impl<T: ResponseUsage + ?Sized> ResponseUsage for Arc<T> {
    fn usage(&self) -> Option<Usage> {
        (**self).usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimates_text_and_output_budget() {
        let body = json!({
            "model": "gpt-4o",
            "max_completion_tokens": 100,
            "messages": [{"role": "user", "content": "x".repeat(400)}],
        });
        let request = http::Request::post("http://x/")
            .body(body.to_string())
            .expect("valid");
        // 400 chars of prompt = 100 tokens, "gpt-4o" 2, "user" 1, budget 100.
        assert_eq!(request.estimated_tokens(), 100 + 2 + 1 + 100);
    }

    #[test]
    fn gemini_budget_and_default() {
        let gemini = json!({"generationConfig": {"maxOutputTokens": 64}});
        assert_eq!(requested_output_tokens(&gemini), Some(64));
        assert_eq!(
            estimate_body_tokens(br#"{"messages":[]}"#),
            DEFAULT_OUTPUT_TOKENS
        );
        assert_eq!(estimate_body_tokens(b"not json at all!"), 4);
    }

    #[test]
    fn non_ascii_counts_per_char() {
        assert_eq!(estimate_text_tokens("日本語"), 3);
    }

    #[test]
    fn usage_in_each_provider_spelling() {
        let openai = json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5,
            "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 4}}});
        assert_eq!(
            usage_from_json(&openai),
            Some(Usage {
                input_tokens: 10,
                output_tokens: 5,
                cached_input_tokens: 4
            })
        );
        let anthropic = json!({"usage": {"input_tokens": 10, "output_tokens": 5,
            "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}});
        assert_eq!(
            usage_from_json(&anthropic),
            Some(Usage {
                input_tokens: 15,
                output_tokens: 5,
                cached_input_tokens: 3
            })
        );
        let gemini = json!({"usageMetadata": {"promptTokenCount": 7,
            "candidatesTokenCount": 3, "totalTokenCount": 10}});
        assert_eq!(usage_from_json(&gemini).map(|u| u.total()), Some(10));
        let embeddings = json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}});
        assert_eq!(usage_from_json(&embeddings).map(|u| u.total()), Some(8));
        assert_eq!(usage_from_json(&json!({"id": "x"})), None);
    }

    #[test]
    fn response_extension_wins() {
        let usage = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cached_input_tokens: 0,
        };
        let mut response =
            http::Response::new(br#"{"usage":{"input_tokens":9,"output_tokens":9}}"#.to_vec());
        assert_eq!(response.usage().map(|u| u.total()), Some(18));
        response.extensions_mut().insert(usage);
        assert_eq!(response.usage(), Some(usage));
        let garbage = http::Response::new(b"<html>".to_vec());
        assert_eq!(garbage.usage(), None);
    }
}
