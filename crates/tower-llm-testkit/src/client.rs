//! A plain HTTP client as a tower `Service`, and builders for the requests the mock speaks.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower_llm_core::{BoxError, FailureKind, UpstreamError};

/// An HTTP/1 client over real sockets (hyper-util's pooled client) as a
/// `tower::Service<http::Request<Bytes>>`: the innermost service of a stack under test.
///
/// - Any status comes back as `Ok(response)` with the body collected, so error statuses are
///   judged by [`DefaultClassifier`](tower_llm_core::DefaultClassifier) from the status and
///   retry headers, as a real stack would see them.
/// - A failure to connect, a connection closed before or during the answer and a body cut
///   mid-way come back as an [`UpstreamError`] of kind [`FailureKind::Transport`]; the
///   optional [`timeout`](Self::timeout) as one of kind [`FailureKind::Timeout`]. The
///   underlying error is the source.
///
/// Clones share one connection pool. Dropping a response future drops the request, and
/// hyper closes its connection: the mock counts it as cancelled.
#[derive(Clone)]
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Option<Duration>,
}

impl fmt::Debug for TestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClient {
    /// A client with no timeout.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        TestClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: None,
        }
    }

    /// Fails a call that has not got its whole answer within `timeout` (tokio time) with a
    /// [`FailureKind::Timeout`] error.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends `request` and collects the whole answer (what [`Service::call`] does).
    ///
    /// [`Service::call`]: tower_service::Service::call
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, BoxError> {
        let client = self.client.clone();
        let exchange = async move {
            let response = client
                .request(request.map(Full::new))
                .await
                .map_err(transport)?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(transport)?.to_bytes();
            Ok(http::Response::from_parts(parts, body))
        };
        match self.timeout {
            None => exchange.await,
            Some(limit) => match tokio::time::timeout(limit, exchange).await {
                Ok(result) => result,
                Err(elapsed) => Err(Box::new(
                    UpstreamError::new(FailureKind::Timeout, "no complete answer in time")
                        .with_provider("mock")
                        .with_source(elapsed),
                )),
            },
        }
    }

    /// Sends `request` and returns as soon as the head arrives, with the body still
    /// streaming: for tests that read a stream chunk by chunk (see
    /// [`next_chunk`](Self::next_chunk)). The [`timeout`](Self::timeout) is not applied.
    pub async fn send_streaming(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Incoming>, BoxError> {
        self.client
            .request(request.map(Full::new))
            .await
            .map_err(transport)
    }

    /// The next data chunk of a streaming body: `Ok(None)` at its end, a
    /// [`FailureKind::Transport`] error when it is cut.
    pub async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>, BoxError> {
        loop {
            match body.frame().await {
                None => return Ok(None),
                Some(Err(error)) => return Err(transport(error)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

fn transport(error: impl std::error::Error + Send + Sync + 'static) -> BoxError {
    Box::new(
        UpstreamError::new(FailureKind::Transport, error.to_string())
            .with_provider("mock")
            .with_source(error),
    )
}

impl tower_service::Service<http::Request<Bytes>> for TestClient {
    type Response = http::Response<Bytes>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool opens connections on demand: always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Bytes>) -> Self::Future {
        let client = self.clone();
        ResponseFuture {
            inner: Box::pin(async move { client.send(request).await }),
        }
    }
}

/// The future of a [`TestClient`] call.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, BoxError>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Bytes>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// A `POST` of `body` as JSON to `url`.
pub fn post_json(url: &str, body: &Value) -> http::Request<Bytes> {
    let mut request = http::Request::new(Bytes::from(body.to_string()));
    *request.method_mut() = http::Method::POST;
    match url.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        // An unparsable URL becomes a request no server answers, failing in the client
        // with a clear error instead of panicking in a builder.
        Err(_) => *request.uri_mut() = http::Uri::from_static("http://invalid.invalid/"),
    }
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    request
}

/// Adds `key` to `request` the way its provider expects it: `x-api-key` for Anthropic
/// (`/v1/messages`), `x-goog-api-key` for Gemini (`/models/...`), for Bedrock
/// (`/model/...`) a SigV4-shaped `Authorization` with `key` as the access key id (the mock
/// reads the id and checks no signature), `Authorization: Bearer` otherwise. The mock
/// counts requests per key ([`Counters::by_key`]).
///
/// [`Counters::by_key`]: crate::Counters::by_key
pub fn with_api_key(mut request: http::Request<Bytes>, key: &str) -> http::Request<Bytes> {
    let path = request.uri().path().to_owned();
    let (name, value) = if path.ends_with("/v1/messages") {
        ("x-api-key", key.to_owned())
    } else if path.starts_with("/model/") {
        (AUTHORIZATION.as_str(), sigv4_authorization(key))
    } else if path.contains("/models/") {
        ("x-goog-api-key", key.to_owned())
    } else {
        (AUTHORIZATION.as_str(), format!("Bearer {key}"))
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        request.headers_mut().insert(name, value);
    }
    request
}

fn openai_chat_body(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

/// An OpenAI chat completion request: `POST {base_url}/v1/chat/completions` with one user
/// message. The mock replies `"{name}: {prompt}"`.
pub fn openai_chat(base_url: &str, model: &str, prompt: &str) -> http::Request<Bytes> {
    post_json(
        &format!("{base_url}/v1/chat/completions"),
        &openai_chat_body(model, prompt),
    )
}

/// [`openai_chat`] sent with API key `key` (`Authorization: Bearer`).
pub fn openai_chat_with_key(
    base_url: &str,
    model: &str,
    prompt: &str,
    key: &str,
) -> http::Request<Bytes> {
    with_api_key(openai_chat(base_url, model, prompt), key)
}

/// [`openai_chat`] streamed: `"stream": true` with `stream_options.include_usage`.
pub fn openai_chat_stream(base_url: &str, model: &str, prompt: &str) -> http::Request<Bytes> {
    let mut body = openai_chat_body(model, prompt);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    post_json(&format!("{base_url}/v1/chat/completions"), &body)
}

/// An OpenAI embeddings request for `inputs`: `POST {base_url}/v1/embeddings`. The mock
/// answers [`embedding_for`](crate::embedding_for) each input, in order.
pub fn openai_embeddings<S: AsRef<str>>(base_url: &str, inputs: &[S]) -> http::Request<Bytes> {
    let inputs: Vec<&str> = inputs.iter().map(AsRef::as_ref).collect();
    post_json(
        &format!("{base_url}/v1/embeddings"),
        &json!({"model": "text-embedding-3-small", "input": inputs}),
    )
}

/// A stand-in SigV4 `Authorization` for access key `key`: the shape AWS reads, with a
/// signature of zeros.
fn sigv4_authorization(key: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={key}/20250101/us-east-1/bedrock/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date, Signature={}",
        "0".repeat(64)
    )
}

fn bedrock_request(
    base_url: &str,
    model: &str,
    prompt: &str,
    action: &str,
) -> http::Request<Bytes> {
    // Model ids have colons, which Bedrock's clients percent-encode in the path.
    let model = model.replace(':', "%3A").replace('/', "%2F");
    post_json(
        &format!("{base_url}/model/{model}/{action}"),
        &json!({
            "messages": [{"role": "user", "content": [{"text": prompt}]}],
            "inferenceConfig": {"maxTokens": 256},
        }),
    )
}

/// A Bedrock Converse request: `POST {base_url}/model/{model}/converse` with one user
/// message and `inferenceConfig.maxTokens` 256 (unsigned: add a key with
/// [`with_api_key`]).
pub fn bedrock_converse(base_url: &str, model: &str, prompt: &str) -> http::Request<Bytes> {
    bedrock_request(base_url, model, prompt, "converse")
}

/// [`bedrock_converse`] streamed: `POST {base_url}/model/{model}/converse-stream`, answered
/// in the binary event-stream framing.
pub fn bedrock_converse_stream(base_url: &str, model: &str, prompt: &str) -> http::Request<Bytes> {
    bedrock_request(base_url, model, prompt, "converse-stream")
}

fn anthropic_body(model: &str, prompt: &str, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": prompt}],
    });
    if stream {
        body["stream"] = json!(true);
    }
    body
}

fn anthropic_request(base_url: &str, body: &Value) -> http::Request<Bytes> {
    let mut request = post_json(&format!("{base_url}/v1/messages"), body);
    request
        .headers_mut()
        .insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    request
}

/// An Anthropic messages request: `POST {base_url}/v1/messages` with one user message,
/// `max_tokens` 256 and `anthropic-version`.
pub fn anthropic_messages(base_url: &str, model: &str, prompt: &str) -> http::Request<Bytes> {
    anthropic_request(base_url, &anthropic_body(model, prompt, false))
}

/// [`anthropic_messages`] streamed (`"stream": true`).
pub fn anthropic_messages_stream(
    base_url: &str,
    model: &str,
    prompt: &str,
) -> http::Request<Bytes> {
    anthropic_request(base_url, &anthropic_body(model, prompt, true))
}

fn gemini_body(prompt: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]})
}

/// A Gemini request: `POST {base_url}/v1beta/models/{model}:generateContent`.
pub fn gemini_generate(base_url: &str, model: &str, prompt: &str) -> http::Request<Bytes> {
    post_json(
        &format!("{base_url}/v1beta/models/{model}:generateContent"),
        &gemini_body(prompt),
    )
}

/// A streamed Gemini request: `POST
/// {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse`.
pub fn gemini_stream(base_url: &str, model: &str, prompt: &str) -> http::Request<Bytes> {
    post_json(
        &format!("{base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse"),
        &gemini_body(prompt),
    )
}
