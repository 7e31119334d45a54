//! The HTTP side: routes, client authentication, body limits, error mapping, metrics and
//! graceful shutdown.

// Handlers' helpers return the ready response as their error, axum's idiom; its size does
// not matter next to a network round trip.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_llm_core::{BoxError, FailureKind, RateLimited, UpstreamError, classify_dyn_error};
use tower_llm_race::AllFailed;
use tower_llm_testkit::MockServer;

use crate::config::Config;
use crate::stack::{self, ModelStacks};
use crate::wire;

/// Requests answered, by route and status.
pub(crate) const METRIC_REQUESTS: &str = "tower_llm_gateway_requests_total";
/// Time to the response head, by route.
pub(crate) const METRIC_DURATION: &str = "tower_llm_gateway_request_duration_seconds";
/// Requests being handled now (a stream counts until its head is sent).
pub(crate) const METRIC_IN_FLIGHT: &str = "tower_llm_gateway_in_flight_requests";
/// Streams whose body is still being sent.
pub(crate) const METRIC_OPEN_STREAMS: &str = "tower_llm_gateway_open_streams";
/// Requests refused for a missing or unknown key.
pub(crate) const METRIC_AUTH_FAILURES: &str = "tower_llm_gateway_auth_failures_total";
/// Answers by model, provider and call (`chat`, `stream`, `embeddings`).
pub(crate) const METRIC_UPSTREAM_ANSWERS: &str = "tower_llm_gateway_answers_total";

/// The process-wide Prometheus recorder, installed on first use. Install it before any
/// layer is built: layers register their metric handles when they are built.
pub(crate) fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder already installed (a test harness): ours then renders only
            // what it sees, which is nothing; say so once rather than fail.
            if metrics::set_global_recorder(recorder).is_err() {
                eprintln!(
                    "gateway: a metrics recorder was already installed; /metrics stays empty"
                );
            }
            handle
        })
        .clone()
}

/// The running gateway's shared state.
#[derive(Debug)]
pub(crate) struct Gateway {
    keys: HashMap<String, String>,
    models: BTreeMap<String, ModelStacks>,
    max_body_bytes: usize,
    metrics: PrometheusHandle,
    /// The mock upstreams of `kind = "mock"` providers, by provider name.
    pub(crate) mocks: Vec<(String, MockServer)>,
}

impl Gateway {
    /// Builds every stack of `config` (starting its mock upstreams).
    pub(crate) async fn new(config: &Config) -> Result<Arc<Gateway>, BoxError> {
        let metrics = prometheus();
        let keys = config.client_keys()?;
        let built = stack::build(config).await?;
        Ok(Arc::new(Gateway {
            keys,
            models: built.models,
            max_body_bytes: config.server.max_body_bytes,
            metrics,
            mocks: built.mocks,
        }))
    }

    /// The router over this state.
    pub(crate) fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/metrics", get(render_metrics))
            .route_layer(middleware::from_fn(track))
            .with_state(self.clone())
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets
/// requests in flight (streams included) finish for up to `grace`, cuts what is left (a
/// request still waiting gets 503, a stream still running is broken off) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    // axum runs each connection on its own task, which outlives this future: the cut has to
    // reach into the requests themselves.
    let router = router.layer(middleware::from_fn_with_state(cut_rx, cut_at_grace_end));
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    // Answers are written whole; Nagle's algorithm would only hold back the tail of one
    // behind an unacknowledged segment.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = signalled_tx.send(());
    });
    let server = std::pin::pin!(server.into_future());
    let grace_over = async move {
        if signalled_rx.await.is_err() {
            // The server ended without a signal: nothing to wait for.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result,
        () = grace_over => {
            eprintln!("gateway: grace period of {grace:?} over, cutting the requests still running");
            let _ = cut_tx.send(true);
            Ok(())
        }
    }
}

/// Resolves once the grace period is over; never if the server ended before.
async fn grace_ended(mut cut: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *cut.borrow_and_update() {
            return;
        }
        if cut.changed().await.is_err() {
            if *cut.borrow() {
                return;
            }
            std::future::pending::<()>().await;
        }
    }
}

async fn cut_at_grace_end(
    State(cut): State<tokio::sync::watch::Receiver<bool>>,
    request: Request,
    next: Next,
) -> Response {
    let response = tokio::select! {
        response = next.run(request) => response,
        () = grace_ended(cut.clone()) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway shut down before this request finished",
                "server_error",
                Some("shutting_down"),
            );
        }
    };
    // Whole answers are in memory and written at once; only streams can run on.
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streaming {
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = futures_util::stream::unfold(
        (body.into_data_stream(), cut, false),
        |(mut data, cut, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                biased;
                item = data.next() => item.map(|item| (item, (data, cut, false))),
                () = grace_ended(cut.clone()) => {
                    let error = axum::Error::new("the gateway shut down: grace period over");
                    Some((Err(error), (data, cut, true)))
                }
            }
        },
    );
    Response::from_parts(parts, Body::from_stream(body))
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    // A guard, so that a request whose client went away (its future dropped) is not counted
    // in flight forever.
    let in_flight = InFlight::new();
    let response = next.run(request).await;
    drop(in_flight);
    metrics::histogram!(METRIC_DURATION, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(METRIC_REQUESTS, "route" => route, "status" => response.status().as_str().to_owned())
        .increment(1);
    response
}

struct InFlight;

impl InFlight {
    fn new() -> Self {
        metrics::gauge!(METRIC_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(METRIC_IN_FLIGHT).decrement(1.0);
    }
}

fn error_response(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        wire::error_json(message, kind, code).to_string(),
    )
        .into_response()
}

/// The tenant of the request's bearer key, or the 401 to answer.
fn authenticate(gateway: &Gateway, headers: &HeaderMap) -> Result<String, Response> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let refuse = |message: &str| {
        metrics::counter!(METRIC_AUTH_FAILURES).increment(1);
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            message,
            "invalid_request_error",
            Some("invalid_api_key"),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    };
    match key {
        None => Err(refuse(
            "missing API key: send `Authorization: Bearer <gateway key>`",
        )),
        Some(key) => gateway
            .keys
            .get(key)
            .cloned()
            .ok_or_else(|| refuse("unknown API key")),
    }
}

/// Reads the body within the size limit and parses it as JSON.
async fn read_json(gateway: &Gateway, headers: &HeaderMap, body: Body) -> Result<Value, Response> {
    let limit = gateway.max_body_bytes;
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body larger than the gateway's limit of {limit} bytes"),
            "invalid_request_error",
            Some("request_too_large"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                &format!("could not read the request body: {e}"),
                "invalid_request_error",
                None,
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            &format!("request body is not valid JSON: {e}"),
            "invalid_request_error",
            Some("invalid_json"),
        )
    })
}

fn bad_request(message: String) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        &message,
        "invalid_request_error",
        None,
    )
}

fn unknown_model(model: &str, what: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("The model `{model}` does not exist or does not support {what} on this gateway"),
        "invalid_request_error",
        Some("model_not_found"),
    )
}

/// The provider's own account of the failure: the first `UpstreamError` of kind `kind` in
/// the error's chain, looking into each provider's error when a strategy lists them all.
fn find_upstream<'a>(
    error: &'a (dyn std::error::Error + 'static),
    kind: FailureKind,
) -> Option<&'a UpstreamError> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(all) = e.downcast_ref::<AllFailed>() {
            // The summary carries no status; the providers' own errors do.
            return all
                .failures()
                .iter()
                .filter(|f| f.failure().kind == kind)
                .find_map(|f| {
                    let inner: &'a (dyn std::error::Error + 'static) = f.error()?;
                    find_upstream(inner, kind)
                });
        }
        if let Some(upstream) = e.downcast_ref::<UpstreamError>() {
            return Some(upstream);
        }
        current = e.source();
    }
    None
}

fn is_local_rate_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<RateLimited>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Maps a failed call to the status an OpenAI client expects, with the retry hint.
pub(crate) fn upstream_error_response(error: &BoxError) -> Response {
    let error: &(dyn std::error::Error + 'static) = error.as_ref();
    let failure = classify_dyn_error(error);
    let upstream = find_upstream(error, failure.kind);
    let upstream_status = upstream.and_then(UpstreamError::status);
    let (status, kind, code) = match failure.kind {
        FailureKind::RateLimited if is_local_rate_limit(error) && upstream.is_none() => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "tenant_rate_limited",
        ),
        FailureKind::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "rate_limit_exceeded",
        ),
        FailureKind::QuotaExhausted => (
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
        ),
        FailureKind::Overloaded => (
            upstream_status
                .filter(|s| s.is_server_error())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "server_error",
            "overloaded",
        ),
        FailureKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "server_error", "timeout"),
        FailureKind::Transport => (
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_unreachable",
        ),
        FailureKind::ServerError => (
            upstream_status
                .filter(|s| s.is_server_error())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            "server_error",
            "upstream_error",
        ),
        FailureKind::BadRequest => (
            upstream_status
                .filter(|s| s.is_client_error())
                .unwrap_or(StatusCode::BAD_REQUEST),
            "invalid_request_error",
            "bad_request",
        ),
        // The provider refused the gateway's own key: not the client's fault.
        FailureKind::Unauthorized => (
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_unauthorized",
        ),
        FailureKind::Forbidden => (StatusCode::FORBIDDEN, "invalid_request_error", "forbidden"),
        FailureKind::NotFound => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
        ),
        FailureKind::ContextLengthExceeded => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        FailureKind::ContentFiltered => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "content_filter",
        ),
        FailureKind::CircuitOpen => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "circuit_open",
        ),
        FailureKind::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "cancelled"),
        _ => (
            upstream_status
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            "server_error",
            "upstream_error",
        ),
    };
    let mut response = error_response(status, &error.to_string(), kind, Some(code));
    if let Some(after) = failure.retry_after {
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if let Ok(value) = HeaderValue::from_str(&after.as_millis().to_string()) {
            response.headers_mut().insert("retry-after-ms", value);
        }
    }
    response
}

fn count_answer(model: &str, provider: &str, call: &'static str) {
    metrics::counter!(METRIC_UPSTREAM_ANSWERS,
        "model" => model.to_owned(), "provider" => provider.to_owned(), "call" => call)
    .increment(1);
}

async fn chat(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, body: Body) -> Response {
    let tenant = match authenticate(&gateway, &headers) {
        Ok(tenant) => tenant,
        Err(response) => return response,
    };
    let json = match read_json(&gateway, &headers, body).await {
        Ok(json) => json,
        Err(response) => return response,
    };
    let parsed = match wire::parse_chat(json, &tenant) {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(message),
    };
    let model = parsed.request.model.clone();
    let Some(stacks) = gateway.models.get(&model) else {
        return unknown_model(&model, "chat completions");
    };
    if parsed.stream {
        let Some(service) = stacks.stream.clone() else {
            return unknown_model(&model, "streaming");
        };
        match service.oneshot(parsed.request.streaming()).await {
            Ok(reply) => {
                count_answer(&model, &reply.provider, "stream");
                let mut response = sse_response(reply.value, model, parsed.include_usage);
                if let Ok(value) = HeaderValue::from_str(&reply.provider) {
                    response.headers_mut().insert("x-gateway-provider", value);
                }
                response
            }
            Err(error) => upstream_error_response(&error),
        }
    } else {
        let Some(service) = stacks.chat.clone() else {
            return unknown_model(&model, "chat completions");
        };
        match service.oneshot(parsed.request).await {
            Ok(reply) => {
                count_answer(&model, &reply.provider, "chat");
                let body = wire::chat_response_json(&reply.value, &model);
                json_response(&body, &reply.provider)
            }
            Err(error) => upstream_error_response(&error),
        }
    }
}

fn json_response(body: &impl serde::Serialize, provider: &str) -> Response {
    let body = match serde_json::to_vec(body) {
        Ok(body) => body,
        Err(e) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("could not encode the answer: {e}"),
                "server_error",
                None,
            );
        }
    };
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(provider) {
        response.headers_mut().insert("x-gateway-provider", value);
    }
    response
}

/// Decrements the open-streams gauge when the body is done or dropped.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        metrics::gauge!(METRIC_OPEN_STREAMS).increment(1.0);
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(METRIC_OPEN_STREAMS).decrement(1.0);
    }
}

fn sse_response(stream: stack::LiveStream, model: String, include_usage: bool) -> Response {
    static STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("chatcmpl-gw{:x}-{serial}", wire::unix_now());
    let writer = wire::ChunkWriter::new(id, model, include_usage);
    let state = SseState {
        chunks: stream.0,
        writer,
        done: false,
        _open: OpenStream::new(),
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            match state.chunks.next().await {
                Some(Ok(chunk)) => {
                    if let Some(event) = state.writer.event(&chunk) {
                        return Some((Bytes::from(event), state));
                    }
                }
                Some(Err(error)) => {
                    // The head (200) is sent: the failure can only be told in the stream.
                    let kind = classify_dyn_error(error.as_ref()).kind;
                    let body =
                        wire::error_json(&error.to_string(), "server_error", Some(kind.as_str()));
                    state.done = true;
                    return Some((
                        Bytes::from(format!("data: {body}\n\ndata: [DONE]\n\n")),
                        state,
                    ));
                }
                None => {
                    state.done = true;
                    return Some((Bytes::from_static(b"data: [DONE]\n\n"), state));
                }
            }
        }
    });
    let body = Body::from_stream(events.map(Ok::<_, Infallible>));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

struct SseState {
    chunks: std::pin::Pin<
        Box<
            dyn futures_util::Stream<Item = Result<tower_llm_providers::ChatChunk, BoxError>>
                + Send,
        >,
    >,
    writer: wire::ChunkWriter,
    done: bool,
    _open: OpenStream,
}

async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tenant = match authenticate(&gateway, &headers) {
        Ok(tenant) => tenant,
        Err(response) => return response,
    };
    let json = match read_json(&gateway, &headers, body).await {
        Ok(json) => json,
        Err(response) => return response,
    };
    let request = match wire::parse_embeddings(json, &tenant) {
        Ok(request) => request,
        Err(message) => return bad_request(message),
    };
    let model = request.model.clone();
    let Some(service) = gateway
        .models
        .get(&model)
        .and_then(|s| s.embeddings.clone())
    else {
        return unknown_model(&model, "embeddings");
    };
    match service.oneshot(request).await {
        Ok(reply) => {
            count_answer(&model, &reply.provider, "embeddings");
            json_response(
                &wire::embeddings_json(&reply.value, &model),
                &reply.provider,
            )
        }
        Err(error) => upstream_error_response(&error),
    }
}

async fn models(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(response) = authenticate(&gateway, &headers) {
        return response;
    }
    let created = wire::unix_now();
    let data: Vec<Value> = gateway
        .models
        .iter()
        .map(|(name, stacks)| {
            json!({"id": name, "object": "model", "created": created,
                   "owned_by": stacks.providers.join(",")})
        })
        .collect();
    json_response(&json!({"object": "list", "data": data}), "gateway")
}

async fn health() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

async fn render_metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics.render(),
    )
        .into_response()
}
