//! [`EmbeddingsAdapter`]: OpenAI-style embeddings requests batched natively.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use tower_llm_core::{
    BoxError, Classify, DefaultClassifier, FailureKind, UpstreamError, estimate_text_tokens,
};

use crate::adapter::{Pack, Unpack};

/// Headers that differ per request without changing what is asked.
const PER_REQUEST_HEADERS: [&str; 4] = [
    "content-length",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// Batches OpenAI-style embeddings requests.
///
/// Embeddings APIs take an array of inputs and answer `data[i]` with `index: i` for each. The
/// adapter works on the JSON bodies of `http::Request<Bytes>` / `http::Response<Bytes>`, so it
/// fits over any HTTP client service speaking the OpenAI wire format (OpenAI, Azure, vLLM,
/// Ollama, llama.cpp, the testkit's mock):
///
/// - **Packing.** Each caller's `input` (a string, an array of strings, a token array or an
///   array of token arrays) is appended to one `input` array; the other body fields (`model`,
///   `dimensions`, `encoding_format`, ...) are kept as they are.
/// - **What may share a batch.** Requests share a batch only when their method, URI, headers
///   and every body field but `input` are equal, so that two models, two tenants or two API
///   keys are never mixed. `content-length` and per-request tracing headers (`x-request-id`,
///   `traceparent`, `tracestate`) are ignored for this and not sent on the batched call.
/// - **Splitting.** Entries are matched to callers by their `index`, not their position, and
///   renumbered from 0 in each caller's response; the other response fields are copied, and
///   `usage` is shared out in proportion to each caller's estimated input tokens, so the
///   callers' usage adds up to the batch's. An entry missing for one caller fails only that
///   caller (an [`UpstreamError`] of kind `ServerError`).
/// - **Failures.** A response the classifier (by default [`DefaultClassifier`]: the status and
///   retry headers) calls a failure is handed to every caller as it is, status, headers and
///   body included, so layers further out classify it the same way.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmbeddingsAdapter<C = DefaultClassifier> {
    classifier: C,
}

impl EmbeddingsAdapter {
    /// The adapter, judging responses with [`DefaultClassifier`].
    pub const fn new() -> Self {
        EmbeddingsAdapter {
            classifier: DefaultClassifier,
        }
    }

    /// The estimated tokens of a request's `input` (0 for a body that is not an embeddings
    /// request): a weight for [`BatchBuilder::max_weight`](crate::BatchBuilder::max_weight)
    /// that, unlike [`RequestCost`](tower_llm_core::RequestCost), does not add an output
    /// budget embeddings do not have.
    pub fn input_tokens(request: &http::Request<Bytes>) -> u64 {
        serde_json::from_slice::<Value>(request.body())
            .ok()
            .and_then(|body| body.get("input").map(input_tokens))
            .unwrap_or(0)
    }
}

impl<C> EmbeddingsAdapter<C> {
    /// Judges whether a batch response is a success to split or a failure to hand to every
    /// caller with `classifier` instead.
    pub fn with_classifier<C2>(self, classifier: C2) -> EmbeddingsAdapter<C2> {
        EmbeddingsAdapter { classifier }
    }
}

/// What embeddings requests must share to share a batch.
///
/// Its `Debug` shows header names only: the values include the API key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmbeddingsKey {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: Vec<(HeaderName, HeaderValue)>,
    params: String,
}

impl std::fmt::Debug for EmbeddingsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("EmbeddingsKey")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("version", &self.version)
            .field("headers", &names)
            .field("params", &self.params)
            .finish()
    }
}

/// One caller's inputs, waiting for their batch.
#[derive(Debug)]
pub struct EmbeddingsItem {
    params: Map<String, Value>,
    inputs: Vec<Value>,
    tokens: u64,
}

/// Where each caller's inputs sit in a batch: their count and estimated tokens, in order.
#[derive(Debug)]
pub struct EmbeddingsSplit {
    members: Vec<(usize, u64)>,
}

fn bad_request(message: impl Into<String>) -> BoxError {
    Box::new(UpstreamError::new(FailureKind::BadRequest, message))
}

fn input_tokens(input: &Value) -> u64 {
    match input {
        Value::String(text) => estimate_text_tokens(text),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(input_tokens).sum(),
        _ => 0,
    }
}

/// One caller's `input` as a list of separate inputs.
fn split_inputs(input: Value) -> Result<Vec<Value>, BoxError> {
    match input {
        Value::String(_) => Ok(vec![input]),
        Value::Array(items) if items.is_empty() => {
            Err(bad_request("embeddings request has an empty `input`"))
        }
        // One input given as token ids.
        Value::Array(items) if items.iter().all(Value::is_number) => Ok(vec![Value::Array(items)]),
        Value::Array(items) => {
            let valid = |item: &Value| match item {
                Value::String(_) => true,
                Value::Array(tokens) => tokens.iter().all(Value::is_number),
                _ => false,
            };
            if items.iter().all(valid) {
                Ok(items)
            } else {
                Err(bad_request(
                    "embeddings `input` must be a string, an array of strings, or token arrays",
                ))
            }
        }
        _ => Err(bad_request(
            "embeddings `input` must be a string, an array of strings, or token arrays",
        )),
    }
}

impl<C> Pack<http::Request<Bytes>> for EmbeddingsAdapter<C> {
    type Key = EmbeddingsKey;
    type Item = EmbeddingsItem;
    type Batch = http::Request<Bytes>;
    type Split = EmbeddingsSplit;

    fn prepare(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<(EmbeddingsKey, EmbeddingsItem), BoxError> {
        let (parts, body) = request.into_parts();
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| bad_request(format!("embeddings request body is not JSON: {e}")))?;
        let Value::Object(mut params) = body else {
            return Err(bad_request("embeddings request body is not a JSON object"));
        };
        let input = params
            .remove("input")
            .ok_or_else(|| bad_request("embeddings request has no `input`"))?;
        let tokens = input_tokens(&input);
        let inputs = split_inputs(input)?;
        let mut headers: Vec<(HeaderName, HeaderValue)> = parts
            .headers
            .iter()
            .filter(|(name, _)| !PER_REQUEST_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        headers.sort_by(|a, b| (a.0.as_str(), a.1.as_bytes()).cmp(&(b.0.as_str(), b.1.as_bytes())));
        // serde_json's map is ordered by key, so equal parameters serialize equally.
        let key = EmbeddingsKey {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers,
            params: Value::Object(params.clone()).to_string(),
        };
        Ok((
            key,
            EmbeddingsItem {
                params,
                inputs,
                tokens,
            },
        ))
    }

    fn pack(
        &self,
        key: EmbeddingsKey,
        items: Vec<EmbeddingsItem>,
    ) -> (http::Request<Bytes>, EmbeddingsSplit) {
        let mut members = Vec::with_capacity(items.len());
        let mut inputs = Vec::new();
        let mut params = None;
        for item in items {
            members.push((item.inputs.len(), item.tokens));
            inputs.extend(item.inputs);
            params.get_or_insert(item.params);
        }
        let mut body = params.unwrap_or_default();
        body.insert("input".to_owned(), Value::Array(inputs));
        let mut request = http::Request::new(Bytes::from(Value::Object(body).to_string()));
        *request.method_mut() = key.method;
        *request.uri_mut() = key.uri;
        *request.version_mut() = key.version;
        let headers = request.headers_mut();
        for (name, value) in key.headers {
            headers.append(name, value);
        }
        (request, EmbeddingsSplit { members })
    }
}

impl<C> Unpack<http::Request<Bytes>, http::Response<Bytes>> for EmbeddingsAdapter<C>
where
    C: Classify<http::Response<Bytes>, BoxError>,
{
    type Response = http::Response<Bytes>;

    fn unpack(
        &self,
        response: http::Response<Bytes>,
        split: EmbeddingsSplit,
    ) -> Vec<Result<http::Response<Bytes>, BoxError>> {
        let members = split.members;
        if !self.classifier.classify(Ok(&response)).is_success() {
            return members
                .iter()
                .map(|_| Ok(copy_response(&response, response.body().clone())))
                .collect();
        }
        let malformed = |why: &str| -> BoxError {
            Box::new(
                UpstreamError::new(
                    FailureKind::ServerError,
                    format!("malformed embeddings response: {why}"),
                )
                .with_status(response.status())
                .with_body(response.body().clone()),
            )
        };
        let body = match serde_json::from_slice::<Value>(response.body()) {
            Ok(Value::Object(body)) => body,
            Ok(_) => {
                return members
                    .iter()
                    .map(|_| Err(malformed("not an object")))
                    .collect();
            }
            Err(_) => return members.iter().map(|_| Err(malformed("not JSON"))).collect(),
        };
        let mut body = body;
        let Some(Value::Array(data)) = body.remove("data") else {
            return members
                .iter()
                .map(|_| Err(malformed("no `data` array")))
                .collect();
        };
        let usage = body.remove("usage");

        let total: usize = members.iter().map(|(count, _)| count).sum();
        let mut slots: Vec<Option<Value>> = vec![None; total];
        for (position, entry) in data.into_iter().enumerate() {
            let index = entry
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or(position);
            if let Some(slot @ None) = slots.get_mut(index) {
                *slot = Some(entry);
            }
        }
        let shares = share_usage(usage.as_ref(), &members);

        let mut results = Vec::with_capacity(members.len());
        let mut offset = 0;
        for (member, (count, _)) in members.iter().enumerate() {
            let mut entries = Vec::with_capacity(*count);
            let mut missing = None;
            for (own, slot) in slots[offset..offset + count].iter_mut().enumerate() {
                match slot.take() {
                    Some(mut entry) => {
                        if let Some(object) = entry.as_object_mut() {
                            object.insert("index".to_owned(), Value::from(own));
                        }
                        entries.push(entry);
                    }
                    None => {
                        missing = Some(own);
                        break;
                    }
                }
            }
            offset += count;
            if let Some(own) = missing {
                results.push(Err(Box::new(
                    UpstreamError::new(
                        FailureKind::ServerError,
                        format!("embeddings response has no entry for this request's input {own}"),
                    )
                    .with_status(response.status()),
                ) as BoxError));
                continue;
            }
            let mut own_body = body.clone();
            own_body.insert("data".to_owned(), Value::Array(entries));
            if let Some(usage) = shares.get(member).cloned().flatten() {
                own_body.insert("usage".to_owned(), usage);
            }
            let bytes = Bytes::from(Value::Object(own_body).to_string());
            results.push(Ok(copy_response(&response, bytes)));
        }
        results
    }
}

fn copy_response(response: &http::Response<Bytes>, body: Bytes) -> http::Response<Bytes> {
    let mut copy = http::Response::new(body);
    *copy.status_mut() = response.status();
    *copy.version_mut() = response.version();
    *copy.headers_mut() = response.headers().clone();
    copy.headers_mut().remove(CONTENT_LENGTH);
    copy
}

/// Each member's share of the batch's token counts, in proportion to its estimated input
/// tokens (equal shares when there is no estimate); the last member takes the rounding
/// remainder so the shares add up exactly.
fn share_usage(usage: Option<&Value>, members: &[(usize, u64)]) -> Vec<Option<Value>> {
    let Some(Value::Object(usage)) = usage else {
        return vec![None; members.len()];
    };
    let estimated: u64 = members.iter().map(|(_, tokens)| tokens).sum();
    let weight = |i: usize| -> (u128, u128) {
        if estimated == 0 {
            (1, members.len() as u128)
        } else {
            (u128::from(members[i].1), u128::from(estimated))
        }
    };
    let mut shares: Vec<Map<String, Value>> = vec![Map::new(); members.len()];
    for (field, value) in usage {
        let Some(total) = value.as_u64() else {
            continue;
        };
        let mut given = 0u64;
        for (i, share) in shares.iter_mut().enumerate() {
            let part = if i + 1 == members.len() {
                total - given
            } else {
                let (num, den) = weight(i);
                u64::try_from(u128::from(total) * num / den.max(1)).unwrap_or(0)
            };
            given = given.saturating_add(part);
            share.insert(field.clone(), Value::from(part));
        }
    }
    shares.into_iter().map(|s| Some(Value::Object(s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_does_not_print_the_api_key() {
        let request = http::Request::post("http://127.0.0.1/v1/embeddings")
            .header("authorization", "Bearer sk-secret-123")
            .header("x-api-key", "sk-other-456")
            .body(Bytes::from_static(br#"{"model":"m","input":"hi"}"#))
            .expect("valid request");
        let Ok((key, _)) = EmbeddingsAdapter::new().prepare(request) else {
            panic!("a valid embeddings request");
        };
        let printed = format!("{key:?}");
        assert!(!printed.contains("sk-secret-123"), "{printed}");
        assert!(!printed.contains("sk-other-456"), "{printed}");
        assert!(printed.contains("authorization"), "{printed}");
    }

    #[test]
    fn usage_shares_add_up() {
        let usage = serde_json::json!({"prompt_tokens": 101, "total_tokens": 101});
        let shares = share_usage(Some(&usage), &[(1, 10), (2, 30), (1, 0)]);
        let sum: u64 = shares
            .iter()
            .map(|s| {
                s.as_ref()
                    .and_then(|s| s["prompt_tokens"].as_u64())
                    .unwrap_or(0)
            })
            .sum();
        assert_eq!(sum, 101);
        assert_eq!(
            shares[0].as_ref().map(|s| s["prompt_tokens"].clone()),
            Some(25.into())
        );
    }

    fn request(body: Value, key: &str) -> http::Request<Bytes> {
        let mut request = http::Request::new(Bytes::from(body.to_string()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static("http://upstream/v1/embeddings");
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {key}")).expect("valid"),
        );
        request
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("per-request"));
        request
    }

    fn prepare(adapter: &EmbeddingsAdapter, input: Value) -> (EmbeddingsKey, EmbeddingsItem) {
        let body = serde_json::json!({"model": "m", "input": input});
        adapter.prepare(request(body, "k")).expect("valid")
    }

    #[test]
    fn packs_every_input_and_splits_by_index_not_position() {
        let adapter = EmbeddingsAdapter::new();
        let (key, one) = prepare(&adapter, serde_json::json!("a"));
        let (same_key, two) = prepare(&adapter, serde_json::json!(["b", "c"]));
        assert_eq!(key, same_key, "x-request-id does not split batches");
        let (request, split) = adapter.pack(key, vec![one, two]);
        let body: Value = serde_json::from_slice(request.body()).expect("JSON");
        assert_eq!(
            body,
            serde_json::json!({"model": "m", "input": ["a", "b", "c"]})
        );
        assert!(request.headers().get("x-request-id").is_none());
        assert_eq!(request.headers()["authorization"], "Bearer k");

        // The upstream answers out of order.
        let answer = serde_json::json!({
            "object": "list",
            "model": "m",
            "data": [
                {"index": 2, "embedding": [2.0]},
                {"index": 0, "embedding": [0.0]},
                {"index": 1, "embedding": [1.0]},
            ],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        });
        let response = http::Response::new(Bytes::from(answer.to_string()));
        let results = adapter.unpack(response, split);
        let bodies: Vec<Value> = results
            .into_iter()
            .map(|r| serde_json::from_slice(r.expect("answered").body()).expect("JSON"))
            .collect();
        assert_eq!(
            bodies[0]["data"],
            serde_json::json!([{"index": 0, "embedding": [0.0]}])
        );
        assert_eq!(
            bodies[1]["data"],
            serde_json::json!([{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [2.0]}])
        );
        assert_eq!(bodies[0]["model"], "m");
        let billed: u64 = bodies
            .iter()
            .map(|b| b["usage"]["prompt_tokens"].as_u64().expect("usage"))
            .sum();
        assert_eq!(billed, 3);
    }

    #[test]
    fn a_missing_entry_fails_only_its_caller() {
        let adapter = EmbeddingsAdapter::new();
        let (key, one) = prepare(&adapter, serde_json::json!("a"));
        let (_, two) = prepare(&adapter, serde_json::json!("b"));
        let (_, split) = adapter.pack(key, vec![one, two]);
        let answer = serde_json::json!({"data": [{"index": 0, "embedding": [0.0]}]});
        let results = adapter.unpack(http::Response::new(Bytes::from(answer.to_string())), split);
        assert!(results[0].is_ok());
        let error = results[1].as_ref().expect_err("missing");
        assert_eq!(
            tower_llm_core::classify_dyn_error(&**error).kind,
            FailureKind::ServerError
        );
    }

    #[test]
    fn tenants_and_parameters_get_different_keys() {
        let adapter = EmbeddingsAdapter::new();
        let key = |body: Value, tenant: &str| adapter.prepare(request(body, tenant)).expect("ok").0;
        let base = key(serde_json::json!({"model": "m", "input": "x"}), "a");
        assert_eq!(
            base,
            key(serde_json::json!({"input": "y", "model": "m"}), "a")
        );
        assert_ne!(
            base,
            key(serde_json::json!({"model": "m", "input": "x"}), "b")
        );
        assert_ne!(
            base,
            key(serde_json::json!({"model": "n", "input": "x"}), "a")
        );
        assert_ne!(
            base,
            key(
                serde_json::json!({"model": "m", "input": "x", "dimensions": 4}),
                "a"
            )
        );
    }

    #[test]
    fn inputs_split_per_shape() {
        let one = split_inputs(Value::from("hi")).expect("string");
        assert_eq!(one.len(), 1);
        let tokens = split_inputs(serde_json::json!([1, 2, 3])).expect("token array");
        assert_eq!(tokens.len(), 1);
        let many = split_inputs(serde_json::json!(["a", "b", [1, 2]])).expect("mixed");
        assert_eq!(many.len(), 3);
        assert!(split_inputs(serde_json::json!([])).is_err());
        assert!(split_inputs(serde_json::json!([{"x": 1}])).is_err());
        assert!(split_inputs(serde_json::json!(7)).is_err());
    }
}
