//! The HTTP side: routes, client authentication, body limits, metrics and graceful shutdown.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
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
use tower_llm_core::BoxError;
use tower_llm_providers::ChatChunk;
use tower_llm_testkit::MockServer;

use crate::config::Config;
use crate::deadline;
use crate::error::{ApiError, Dialect};
use crate::keys::ClientKeys;
use crate::messages;
use crate::request_id::{self, RequestId};
use crate::stack::{self, ModelStacks, UpstreamRequestId};
use crate::trace_context::TraceContext;
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

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether the process's metrics recorder is installed (by the first gateway).
#[cfg(feature = "otlp")]
pub(crate) fn prometheus_installed() -> bool {
    PROMETHEUS.get().is_some()
}

/// The process-wide Prometheus recorder, installed on first use (forwarding to the OTLP
/// meter as well when telemetry's metrics export was started first). Install it before any
/// layer is built: layers register their metric handles when they are built.
pub(crate) fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            // Refused only for an empty bucket list, which these are not.
            let builder = genai_buckets().unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            #[cfg(feature = "otlp")]
            let installed = match crate::telemetry::meter() {
                Some(meter) => metrics::set_global_recorder(crate::telemetry::OtelRecorder::new(
                    recorder, meter,
                ))
                .is_ok(),
                None => metrics::set_global_recorder(recorder).is_ok(),
            };
            #[cfg(not(feature = "otlp"))]
            let installed = metrics::set_global_recorder(recorder).is_ok();
            // Another recorder already installed (a test harness): ours then renders only
            // what it sees, which is nothing; say so once rather than fail.
            if !installed {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            handle
        })
        .clone()
}

/// The bucket boundaries the OpenTelemetry GenAI conventions recommend, for the providers'
/// GenAI histograms (the `metrics` facade carries none; without them the exporter renders
/// summaries).
fn genai_buckets() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    use metrics_exporter_prometheus::Matcher;
    use tower_llm_providers::{
        DURATION_BUCKETS, METRIC_OPERATION_DURATION, METRIC_TIME_TO_FIRST_CHUNK,
        METRIC_TOKEN_USAGE, TOKEN_BUCKETS,
    };
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(METRIC_OPERATION_DURATION.to_owned()),
            DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(METRIC_TIME_TO_FIRST_CHUNK.to_owned()),
            DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(METRIC_TOKEN_USAGE.to_owned()), TOKEN_BUCKETS)
}

/// A running gateway: the stacks of every model, the client keys and the routes over them.
///
/// Cheap to clone (one `Arc`); [`Gateway::router`] gives the axum `Router` to serve or to
/// mount in an application. `Debug` shows the models, tenants and counts, never a key.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: ClientKeys,
    models: BTreeMap<String, ModelStacks>,
    max_body_bytes: usize,
    /// `server.request_timeout`: every call's deadline, and the cap on a client's.
    request_timeout: Option<Duration>,
    metrics: PrometheusHandle,
    /// The mock upstreams of `kind = "mock"` providers, by provider name.
    mocks: Vec<(String, MockServer)>,
    answers: AnswerCounters,
    requests: RequestMetrics,
}

impl Gateway {
    /// Builds every stack of `config`, starting its mock upstreams (`kind = "mock"`) on the
    /// current tokio runtime.
    ///
    /// The first gateway of the process installs the Prometheus recorder that `/metrics`
    /// renders (if the application installed its own `metrics` recorder first, `/metrics`
    /// stays empty and the application's recorder gets the metrics).
    pub async fn new(config: &Config) -> Result<Gateway, BoxError> {
        let metrics = prometheus();
        let built = stack::build(config).await?;
        let answers = AnswerCounters::new(&built.models);
        let inner = Arc::new(Inner {
            keys: config.keys.clone(),
            models: built.models,
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout,
            metrics,
            mocks: built.mocks,
            answers,
            requests: RequestMetrics::new(),
        });
        // The exporter keeps histogram samples until they are drained; without a scraper
        // they would pile up. The task ends with the gateway.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                match weak.upgrade() {
                    Some(inner) => inner.metrics.run_upkeep(),
                    None => return,
                }
            }
        });
        Ok(Gateway { inner })
    }

    /// The routes: `POST /v1/chat/completions`, `POST /v1/embeddings`, `POST /v1/messages`,
    /// `GET /v1/models`, `GET /health`, `GET /metrics`. Every answer carries `x-request-id`;
    /// an unknown path (404) or method (405) is answered with an error body in the route's
    /// dialect, as a client's error handling expects.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/messages", post(messages_route))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/metrics", get(render_metrics))
            .route_layer(middleware::from_fn_with_state(self.inner.clone(), track))
            .fallback(no_such_route)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn(request_id::assign))
            .with_state(self.inner.clone())
    }

    /// The in-process mock upstreams started for `kind = "mock"` providers: each provider's
    /// name and base URL.
    pub fn mock_upstreams(&self) -> impl Iterator<Item = (&str, String)> {
        self.inner
            .mocks
            .iter()
            .map(|(name, server)| (name.as_str(), server.base_url()))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets
/// requests in flight (streams included) finish for up to `grace`, cuts what is left (a
/// request still waiting gets 503, a stream still running is broken off) and returns.
pub async fn serve(
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
            tracing::warn!(
                grace = %tower_llm_core::format_duration(grace),
                "grace period over, cutting the requests still running"
            );
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
    let dialect = dialect_of(request.uri().path());
    let response = tokio::select! {
        response = next.run(request) => response,
        () = grace_ended(cut.clone()) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("shutting_down"),
                "the gateway shut down before this request finished",
            )
            .into_response(dialect, &RequestId::generate());
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
pub async fn shutdown_signal() {
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

/// Metrics and the access log of one request. The span carries what later code learns
/// (the tenant, the model, the provider that answered); the event at the end is the access
/// log line. Neither ever holds a key, a prompt or an answer.
async fn track(State(gateway): State<Arc<Inner>>, request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("other", MatchedPath::as_str);
    let span = tracing::info_span!(
        "gateway.request",
        http.request.method = %request.method(),
        http.route = %route,
        request_id = request.extensions().get::<RequestId>().map(RequestId::as_str),
        upstream_request_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
        gen_ai.request.model = tracing::field::Empty,
        gen_ai.provider.name = tracing::field::Empty,
    );
    let trace = TraceContext::from_headers(request.headers());
    #[cfg(feature = "otlp")]
    if let Some(trace) = &trace {
        crate::telemetry::set_parent(&span, trace);
    }
    let started = Instant::now();
    // A guard, so that a request whose client went away (its future dropped) is not counted
    // in flight forever.
    let in_flight = InFlight::new(gateway.requests.in_flight());
    let run = tracing::Instrument::instrument(next.run(request), span.clone());
    let response = match trace {
        Some(trace) => trace.scope(run).await,
        None => run.await,
    };
    drop(in_flight);
    let elapsed = started.elapsed();
    let status = response.status();
    span.in_scope(|| {
        let millis = elapsed.as_secs_f64() * 1e3;
        if status.is_server_error() {
            tracing::warn!(
                http.response.status_code = status.as_u16(),
                duration_ms = millis,
                "answered"
            );
        } else {
            tracing::info!(
                http.response.status_code = status.as_u16(),
                duration_ms = millis,
                "answered"
            );
        }
    });
    gateway.requests.answered(route, status, elapsed);
    response
}

/// The routes whose request metrics keep their handles (the router's; a route matched under
/// another path, in an application that nests the router, is registered on every request).
const ROUTES: [&str; 6] = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/models",
    "/health",
    "/metrics",
];

/// The handles of the requests metrics, registered with the recorder on first use (as the
/// macros would: a series appears once it has a value) and kept, by route and status:
/// registering builds, hashes and looks up the key and copies its labels, which would
/// otherwise happen on every request.
struct RequestMetrics {
    in_flight: OnceLock<metrics::Gauge>,
    routes: [(&'static str, RouteSeries); ROUTES.len()],
}

#[derive(Default)]
struct RouteSeries {
    duration: OnceLock<metrics::Histogram>,
    /// At most one entry per HTTP status.
    answered: RwLock<Vec<(StatusCode, metrics::Counter)>>,
}

impl RequestMetrics {
    fn new() -> Self {
        RequestMetrics {
            in_flight: OnceLock::new(),
            routes: ROUTES.map(|route| (route, RouteSeries::default())),
        }
    }

    fn in_flight(&self) -> &metrics::Gauge {
        self.in_flight
            .get_or_init(|| metrics::gauge!(METRIC_IN_FLIGHT))
    }

    /// Counts a request to `route` answered with `status` after `elapsed`.
    fn answered(&self, route: &str, status: StatusCode, elapsed: Duration) {
        let duration = || metrics::histogram!(METRIC_DURATION, "route" => route.to_owned());
        let counter = || {
            metrics::counter!(METRIC_REQUESTS,
                "route" => route.to_owned(), "status" => status.as_str().to_owned())
        };
        let Some((_, series)) = self.routes.iter().find(|(known, _)| *known == route) else {
            duration().record(elapsed.as_secs_f64());
            counter().increment(1);
            return;
        };
        series
            .duration
            .get_or_init(duration)
            .record(elapsed.as_secs_f64());
        // Counted under the read lock, without a clone of the handle; the write lock only
        // for a status not seen yet. Never poisoned in a way that matters: the lists are only
        // ever pushed to.
        let seen = |answered: &[(StatusCode, metrics::Counter)]| {
            answered
                .iter()
                .find(|(known, _)| *known == status)
                .map(|(_, counter)| counter.increment(1))
                .is_some()
        };
        if seen(
            &series
                .answered
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        ) {
            return;
        }
        let mut answered = series
            .answered
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !seen(&answered) {
            let registered = counter();
            registered.increment(1);
            answered.push((status, registered));
        }
    }
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").finish_non_exhaustive()
    }
}

/// Counts a request in flight until dropped (answered, or its client went away).
struct InFlight(metrics::Gauge);

impl InFlight {
    fn new(gauge: &metrics::Gauge) -> Self {
        gauge.increment(1.0);
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A path the gateway does not serve: 404 with an error body, rather than an empty one that
/// an SDK reports as an undecodable answer.
async fn no_such_route(Extension(id): Extension<RequestId>, uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        "no such route: the gateway serves POST /v1/chat/completions, POST /v1/embeddings, \
         POST /v1/messages and GET /v1/models",
    )
    .into_response(dialect_of(uri.path()), &id)
}

/// A route called with another method: 405 with an error body (axum keeps its `allow`).
async fn method_not_allowed(
    Extension(id): Extension<RequestId>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        Some("method_not_allowed"),
        format!("{method} is not allowed on this route"),
    )
    .into_response(dialect_of(uri.path()), &id)
}

/// The error shape of a route: Anthropic's for `/v1/messages`, OpenAI's elsewhere.
fn dialect_of(path: &str) -> Dialect {
    if path.starts_with("/v1/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

/// The tenant of the request's key (`Authorization: Bearer KEY`, or `x-api-key: KEY` as
/// Anthropic's clients send it), or the 401 to answer.
fn authenticate(gateway: &Inner, headers: &HeaderMap) -> Result<Arc<str>, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let key = bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim);
    let refuse = |message: &str| {
        metrics::counter!(METRIC_AUTH_FAILURES).increment(1);
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
    };
    match key {
        None | Some("") => Err(refuse(
            "missing API key: send `Authorization: Bearer <gateway key>`",
        )),
        Some(key) => gateway
            .keys
            .tenant(key)
            .ok_or_else(|| refuse("unknown API key")),
    }
}

/// A refusal with `www-authenticate` when it is a 401.
fn refusal(error: ApiError, dialect: Dialect, id: &RequestId) -> Response {
    let unauthorized = error.status == StatusCode::UNAUTHORIZED;
    let mut response = error.into_response(dialect, id);
    if unauthorized {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Reads the body within the size limit and parses it as JSON.
async fn read_json(gateway: &Inner, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let limit = gateway.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            format!("request body larger than the gateway's limit of {limit} bytes"),
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
        Err(_) => {
            return Err(ApiError::bad_request(
                "could not read the request body: the connection failed",
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        let mut error = ApiError::bad_request(format!(
            "request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ));
        error.code = Some("invalid_json");
        error
    })
}

/// Authenticates and reads the JSON body and the deadline: the tenant, the body and the
/// deadline, or the refusal.
async fn admit(
    gateway: &Inner,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Arc<str>, Value, Option<tower_llm_core::Deadline>), ApiError> {
    let tenant = authenticate(gateway, headers)?;
    tracing::Span::current().record("tenant", &*tenant);
    let deadline = deadline::from_headers(headers, gateway.request_timeout)?;
    let json = read_json(gateway, headers, body).await?;
    Ok((tenant, json, deadline))
}

/// What a provider answered: the `call` label of [`METRIC_UPSTREAM_ANSWERS`].
#[derive(Clone, Copy, Debug)]
enum Call {
    Chat,
    Stream,
    Embeddings,
}

impl Call {
    fn as_str(self) -> &'static str {
        match self {
            Call::Chat => "chat",
            Call::Stream => "stream",
            Call::Embeddings => "embeddings",
        }
    }
}

/// The answers counter of each model, provider and call, registered with the recorder on
/// first use: registering builds, hashes and looks up the key and copies its labels, which
/// would otherwise happen on every answer. Only the series answered are registered (and so
/// rendered), as before.
struct AnswerCounters {
    /// By model, then by provider.
    series: BTreeMap<String, Vec<(String, CallCounters)>>,
}

/// One slot per [`Call`].
type CallCounters = [OnceLock<metrics::Counter>; 3];

impl AnswerCounters {
    fn new(models: &BTreeMap<String, ModelStacks>) -> Self {
        let series = models
            .iter()
            .map(|(model, stacks)| {
                let providers = stacks
                    .providers
                    .iter()
                    .map(|provider| (provider.clone(), Default::default()))
                    .collect();
                (model.clone(), providers)
            })
            .collect();
        AnswerCounters { series }
    }

    fn count(&self, model: &str, provider: &str, call: Call) {
        let register = || {
            metrics::counter!(METRIC_UPSTREAM_ANSWERS,
                "model" => model.to_owned(), "provider" => provider.to_owned(),
                "call" => call.as_str())
        };
        let slot = self
            .series
            .get(model)
            .and_then(|providers| providers.iter().find(|(name, _)| name == provider))
            .map(|(_, slots)| &slots[call as usize]);
        match slot {
            Some(slot) => slot.get_or_init(register).increment(1),
            // Not a provider of the model (the stacks make that impossible): registered
            // each time.
            None => register().increment(1),
        }
    }
}

impl std::fmt::Debug for AnswerCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCounters")
            .field("models", &self.series.len())
            .finish()
    }
}

fn count_answer(gateway: &Inner, model: &str, provider: &str, call: Call) {
    let span = tracing::Span::current();
    span.record("gen_ai.request.model", model);
    span.record("gen_ai.provider.name", provider);
    gateway.answers.count(model, provider, call);
}

async fn chat(
    State(gateway): State<Arc<Inner>>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let dialect = Dialect::OpenAi;
    let (tenant, json, deadline) = match admit(&gateway, &headers, body).await {
        Ok(admitted) => admitted,
        Err(error) => return refusal(error, dialect, &id),
    };
    let parsed = match wire::parse_chat(json, &tenant) {
        Ok(parsed) => parsed,
        Err(message) => return ApiError::bad_request(message).into_response(dialect, &id),
    };
    let model = parsed.request.model.clone();
    let Some(stacks) = gateway.models.get(&model) else {
        return ApiError::unknown_model(&model, "chat completions").into_response(dialect, &id);
    };
    if parsed.stream {
        let Some(service) = stacks.stream.clone() else {
            return ApiError::unknown_model(&model, "streaming").into_response(dialect, &id);
        };
        match deadline::within(deadline, service.oneshot(parsed.request.streaming())).await {
            Ok(reply) => {
                count_answer(&gateway, &model, &reply.provider, Call::Stream);
                let id = id.answered_by(reply.upstream_request_id());
                let writer =
                    wire::ChunkWriter::new(wire::completion_id(), model, parsed.include_usage);
                let events = sse_events(reply.value, writer, id.clone(), deadline);
                sse_response(events, &reply.provider, &id)
            }
            Err(error) => deadline::failure(error.as_ref(), deadline).into_response(dialect, &id),
        }
    } else {
        let Some(service) = stacks.chat.clone() else {
            return ApiError::unknown_model(&model, "chat completions").into_response(dialect, &id);
        };
        match deadline::within(deadline, service.oneshot(parsed.request)).await {
            Ok(reply) => {
                count_answer(&gateway, &model, &reply.provider, Call::Chat);
                let id = id.answered_by(reply.upstream_request_id());
                let body = wire::chat_response_json(&reply.value, &model);
                json_response(&body, &reply.provider, dialect, &id)
            }
            Err(error) => deadline::failure(error.as_ref(), deadline).into_response(dialect, &id),
        }
    }
}

/// `POST /v1/messages`: Anthropic's Messages API, served by any provider of the model.
async fn messages_route(
    State(gateway): State<Arc<Inner>>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let dialect = Dialect::Anthropic;
    let (tenant, json, deadline) = match admit(&gateway, &headers, body).await {
        Ok(admitted) => admitted,
        Err(error) => return refusal(error, dialect, &id),
    };
    let parsed = match messages::parse(json, &tenant) {
        Ok(parsed) => parsed,
        Err(message) => return ApiError::bad_request(message).into_response(dialect, &id),
    };
    let model = parsed.request.model.clone();
    let Some(stacks) = gateway.models.get(&model) else {
        return ApiError::unknown_model(&model, "messages").into_response(dialect, &id);
    };
    if parsed.stream {
        let Some(service) = stacks.stream.clone() else {
            return ApiError::unknown_model(&model, "streaming").into_response(dialect, &id);
        };
        match deadline::within(deadline, service.oneshot(parsed.request.streaming())).await {
            Ok(reply) => {
                count_answer(&gateway, &model, &reply.provider, Call::Stream);
                let id = id.answered_by(reply.upstream_request_id());
                let writer = messages::EventSequence::new(model);
                let events = sse_events(reply.value, writer, id.clone(), deadline);
                sse_response(events, &reply.provider, &id)
            }
            Err(error) => deadline::failure(error.as_ref(), deadline).into_response(dialect, &id),
        }
    } else {
        let Some(service) = stacks.chat.clone() else {
            return ApiError::unknown_model(&model, "messages").into_response(dialect, &id);
        };
        match deadline::within(deadline, service.oneshot(parsed.request)).await {
            Ok(reply) => {
                count_answer(&gateway, &model, &reply.provider, Call::Chat);
                let id = id.answered_by(reply.upstream_request_id());
                let body = messages::response_json(&reply.value, &model);
                json_response(&body, &reply.provider, dialect, &id)
            }
            Err(error) => deadline::failure(error.as_ref(), deadline).into_response(dialect, &id),
        }
    }
}

fn json_response(
    body: &impl serde::Serialize,
    provider: &str,
    dialect: Dialect,
    id: &RequestId,
) -> Response {
    // Room for a typical answer up front, rather than growing from nothing a few bytes at a
    // time.
    let mut bytes = Vec::with_capacity(1024);
    let body = match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => bytes,
        Err(_) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "could not encode the answer",
            )
            .into_response(dialect, id);
        }
    };
    answered(Body::from(body), "application/json", provider, id)
}

/// `x-gateway-provider`: the provider that answered.
static X_GATEWAY_PROVIDER: HeaderName = HeaderName::from_static("x-gateway-provider");

/// A 200 with `body` of `content_type`, naming the provider that answered and carrying the
/// request id. Built by hand: the tuple form parses and validates each header's name and
/// value on every answer.
fn answered(body: Body, content_type: &'static str, provider: &str, id: &RequestId) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(provider) {
        headers.insert(X_GATEWAY_PROVIDER.clone(), value);
    }
    id.set_on(response.headers_mut());
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

/// What turns a provider's chunks into one dialect's server-sent events.
pub(crate) trait EventWriter: Send + 'static {
    /// The events for `chunk` (none, one or several), appended to `out`.
    fn chunk(&mut self, chunk: &ChatChunk, out: &mut String);
    /// The events that end a stream that ended well.
    fn finish(&mut self, out: &mut String);
    /// The events that end a stream cut by `error` (the head, a 200, is already sent).
    fn fail(&mut self, error: ApiError, id: &RequestId, out: &mut String);
}

struct SseState<W> {
    chunks: stack::ChunkStream,
    writer: W,
    id: RequestId,
    deadline: Option<tower_llm_core::Deadline>,
    /// Fires at `deadline`: this client's own, even when dedup has it share a stream another
    /// client started under another deadline (or none).
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    _open: OpenStream,
}

/// The body of a streamed answer: each chunk as `writer` writes it, then its ending (an
/// error event with `id`, `deadline_exceeded` when the stream was cut at `deadline`).
pub(crate) fn sse_events<W: EventWriter>(
    stream: stack::ChunkStream,
    writer: W,
    id: RequestId,
    deadline: Option<tower_llm_core::Deadline>,
) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    let state = SseState {
        chunks: stream,
        writer,
        id,
        deadline,
        timer: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.instant()))),
        done: false,
        _open: OpenStream::new(),
    };
    futures_util::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        let mut out = String::new();
        loop {
            let next = match state.timer.as_mut() {
                Some(timer) => tokio::select! {
                    biased;
                    next = state.chunks.next() => next,
                    () = timer.as_mut() => {
                        state.writer.fail(ApiError::deadline_exceeded(), &state.id, &mut out);
                        state.done = true;
                        return Some((Bytes::from(out), state));
                    }
                },
                None => state.chunks.next().await,
            };
            match next {
                Some(Ok(chunk)) => {
                    state.writer.chunk(&chunk, &mut out);
                    if !out.is_empty() {
                        return Some((Bytes::from(out), state));
                    }
                }
                Some(Err(error)) => {
                    let error = deadline::failure(error.as_ref(), state.deadline);
                    state.writer.fail(error, &state.id, &mut out);
                    state.done = true;
                    return Some((Bytes::from(out), state));
                }
                None => {
                    state.writer.finish(&mut out);
                    state.done = true;
                    return Some((Bytes::from(out), state));
                }
            }
        }
    })
}

pub(crate) fn sse_response(
    events: impl futures_util::Stream<Item = Bytes> + Send + 'static,
    provider: &str,
    id: &RequestId,
) -> Response {
    let body = Body::from_stream(events.map(Ok::<_, Infallible>));
    let mut response = answered(body, "text/event-stream", provider, id);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn embeddings(
    State(gateway): State<Arc<Inner>>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let dialect = Dialect::OpenAi;
    let (tenant, json, deadline) = match admit(&gateway, &headers, body).await {
        Ok(admitted) => admitted,
        Err(error) => return refusal(error, dialect, &id),
    };
    let (request, encoding) = match wire::parse_embeddings(json, &tenant) {
        Ok(parsed) => parsed,
        Err(message) => return ApiError::bad_request(message).into_response(dialect, &id),
    };
    let model = request.model.clone();
    let Some(service) = gateway
        .models
        .get(&model)
        .and_then(|s| s.embeddings.clone())
    else {
        return ApiError::unknown_model(&model, "embeddings").into_response(dialect, &id);
    };
    match deadline::within(deadline, service.oneshot(request)).await {
        Ok(reply) => {
            count_answer(&gateway, &model, &reply.provider, Call::Embeddings);
            let id = id.answered_by(reply.upstream_request_id());
            json_response(
                &wire::embeddings_json(&reply.value, &model, encoding),
                &reply.provider,
                dialect,
                &id,
            )
        }
        Err(error) => deadline::failure(error.as_ref(), deadline).into_response(dialect, &id),
    }
}

async fn models(
    State(gateway): State<Arc<Inner>>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = authenticate(&gateway, &headers) {
        return refusal(error, Dialect::OpenAi, &id);
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
    json_response(
        &json!({"object": "list", "data": data}),
        "gateway",
        Dialect::OpenAi,
        &id,
    )
}

async fn health() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

async fn render_metrics(State(gateway): State<Arc<Inner>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` against a recorder of its own and returns what it rendered while what `f`
    /// returned was still alive.
    fn rendered<T>(f: impl FnOnce() -> T) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let alive = metrics::with_local_recorder(&recorder, f);
        let text = handle.render();
        drop(alive);
        text
    }

    #[test]
    fn request_metrics_count_every_request_under_its_route_and_status() {
        let text = rendered(|| {
            let requests = RequestMetrics::new();
            let ms = Duration::from_millis(3);
            requests.answered("/v1/chat/completions", StatusCode::OK, ms);
            requests.answered("/v1/chat/completions", StatusCode::OK, ms);
            requests.answered("/v1/chat/completions", StatusCode::UNAUTHORIZED, ms);
            requests.answered("/v1/embeddings", StatusCode::OK, ms);
            // A route under another path (a nested router) is counted all the same.
            requests.answered("/api/v1/chat/completions", StatusCode::OK, ms);
            requests.answered("/api/v1/chat/completions", StatusCode::OK, ms);
            let first = InFlight::new(requests.in_flight());
            let second = InFlight::new(requests.in_flight());
            drop(first);
            second
        });
        for line in [
            r#"tower_llm_gateway_requests_total{route="/v1/chat/completions",status="200"} 2"#,
            r#"tower_llm_gateway_requests_total{route="/v1/chat/completions",status="401"} 1"#,
            r#"tower_llm_gateway_requests_total{route="/v1/embeddings",status="200"} 1"#,
            r#"tower_llm_gateway_requests_total{route="/api/v1/chat/completions",status="200"} 2"#,
            r#"tower_llm_gateway_request_duration_seconds_count{route="/v1/chat/completions"} 3"#,
            "tower_llm_gateway_in_flight_requests 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        assert!(
            !text.contains(r#"route="/v1/messages""#),
            "unused routes stay unregistered"
        );
    }

    #[test]
    fn answer_counters_count_each_model_provider_and_call() {
        let slots = || (String::from("mock"), CallCounters::default());
        let answers = AnswerCounters {
            series: BTreeMap::from([(String::from("gpt-4o-mini"), vec![slots()])]),
        };
        let text = rendered(|| {
            answers.count("gpt-4o-mini", "mock", Call::Chat);
            answers.count("gpt-4o-mini", "mock", Call::Chat);
            answers.count("gpt-4o-mini", "mock", Call::Stream);
            answers.count("gpt-4o-mini", "elsewhere", Call::Chat);
        });
        for line in [
            r#"tower_llm_gateway_answers_total{model="gpt-4o-mini",provider="mock",call="chat"} 2"#,
            r#"tower_llm_gateway_answers_total{model="gpt-4o-mini",provider="mock",call="stream"} 1"#,
            r#"tower_llm_gateway_answers_total{model="gpt-4o-mini",provider="elsewhere",call="chat"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        assert!(!text.contains(r#"call="embeddings""#));
    }
}
