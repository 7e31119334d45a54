//! The mock server: an axum router behind a hand-written accept loop, so that a fault can
//! close a connection without answering.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::post;
use bytes::Bytes;
use futures_util::stream;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tower_llm_core::estimate_body_tokens;

use crate::counters::{Counters, ReceivedRequest};
use crate::duration_format;
use crate::plan::{
    Fault, FaultPlan, KeyEcho, Latency, Quota, RetryAfterForm, Route, WeightedFault,
};
use crate::quota::{LimitState, QuotaCheck, QuotaWindow, RateLimitState};
use crate::responses::{self, ErrorCase, Event, Prompt, Provider, Reply, StreamAnswer};

/// How many received requests [`MockServer::received`] keeps.
pub const RECEIVED_CAPACITY: usize = 1000;

/// The largest request body the mock reads.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// How long a stalled answer stalls before its connection is cut: "forever" for a test.
const STALL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A mock of the OpenAI, Anthropic and Gemini HTTP APIs on a loopback port, answering as its
/// [`FaultPlan`] says. See the [crate docs](crate) for the routes and an example.
///
/// The server runs on the tokio runtime that started it, and its latencies, stalls and quota
/// windows use tokio's clock, so under `#[tokio::test(start_paused = true)]` they pass in
/// virtual time. Dropping the server stops it and closes its connections.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl MockServer {
    /// Starts a server on `127.0.0.1` on a free port.
    pub async fn start(plan: FaultPlan) -> io::Result<MockServer> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), plan).await
    }

    /// Starts a server on `addr` (port 0 picks a free one).
    pub async fn bind(addr: SocketAddr, plan: FaultPlan) -> io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(ServerState {
                plans: ActivePlans::new(&plan),
                counters: Counters::default(),
                received: VecDeque::new(),
                next_id: 0,
            }),
            changed: watch::Sender::new(0),
        });
        let router = router(shared.clone());
        let accept = tokio::spawn(accept_loop(listener, router));
        Ok(MockServer {
            addr,
            shared,
            accept,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL followed by `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Replaces the plan for the requests that arrive from now on (an outage, then a
    /// recovery). The new plan starts afresh: its own seed, script and an empty quota window.
    /// Requests already being answered finish under the plan they started with.
    pub fn set_plan(&self, plan: FaultPlan) {
        self.shared.lock().plans = ActivePlans::new(&plan);
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }

    /// Zeroes the counters, except `in_flight`; `max_concurrent` restarts from it. Requests
    /// in flight still count as completed or cancelled when they end.
    pub fn reset_counters(&self) {
        let mut state = self.shared.lock();
        let in_flight = state.counters.in_flight;
        state.counters = Counters {
            in_flight,
            max_concurrent: in_flight,
            ..Counters::default()
        };
    }

    /// The last [`RECEIVED_CAPACITY`] requests received, oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().received.iter().cloned().collect()
    }

    /// Forgets the received requests.
    pub fn clear_received(&self) {
        self.shared.lock().received.clear();
    }

    /// Waits until the counters satisfy `done`, and returns them. Counters change as the
    /// server works, so this is how a test waits for "two requests in flight" or "the
    /// server saw the cancellation" without sleeping.
    pub async fn wait_until(&self, mut done: impl FnMut(&Counters) -> bool) -> Counters {
        let mut changed = self.shared.changed.subscribe();
        loop {
            let counters = self.counters();
            if done(&counters) {
                return counters;
            }
            if changed.changed().await.is_err() {
                return self.counters();
            }
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // The accept task owns every connection task: aborting it closes them all.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, router.clone()));
                }
                // Out of file descriptors and the like: let connections finish, then retry.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Marks an answer that must be replaced by closing the connection.
#[derive(Clone, Copy, Debug)]
struct DropConnection;

async fn serve_connection(stream: TcpStream, router: Router) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let mut router = router.clone();
        async move {
            let response = tower_service::Service::call(&mut router, request.map(Body::new)).await;
            let response = match response {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.extensions().get::<DropConnection>().is_some() {
                // hyper closes the connection, unanswered, when the service fails.
                return Err(io::Error::other("mock: dropping the connection"));
            }
            Ok::<_, io::Error>(response)
        }
    });
    // HTTP/1 with hyper's default `half_close(false)`: when the client closes its side
    // mid-request, hyper drops the handler future, which is how `cancelled` is counted.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(
                |State(s): State<Arc<Shared>>, request: Request<Body>| async move {
                    handle(s, Some(Route::OpenAiChat), None, request).await
                },
            ),
        )
        .route(
            "/v1/embeddings",
            post(
                |State(s): State<Arc<Shared>>, request: Request<Body>| async move {
                    handle(s, Some(Route::OpenAiEmbeddings), None, request).await
                },
            ),
        )
        .route(
            "/v1/messages",
            post(
                |State(s): State<Arc<Shared>>, request: Request<Body>| async move {
                    handle(s, Some(Route::AnthropicMessages), None, request).await
                },
            ),
        )
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(
                |State(s): State<Arc<Shared>>,
                 Path(deployment): Path<String>,
                 request: Request<Body>| async move {
                    azure(s, Route::OpenAiChat, deployment, request).await
                },
            ),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(
                |State(s): State<Arc<Shared>>,
                 Path(deployment): Path<String>,
                 request: Request<Body>| async move {
                    azure(s, Route::OpenAiEmbeddings, deployment, request).await
                },
            ),
        )
        .route("/v1beta/models/{model}", post(gemini))
        .route("/v1/models/{model}", post(gemini))
        .fallback(
            |State(s): State<Arc<Shared>>, request: Request<Body>| async move {
                handle(s, None, None, request).await
            },
        )
        .with_state(shared)
}

/// Azure OpenAI: the OpenAI routes under a deployment, which names the model, and an
/// `api-version` query parameter that Azure requires (refused, uncounted, when missing).
async fn azure(
    shared: Arc<Shared>,
    route: Route,
    deployment: String,
    request: Request<Body>,
) -> Response<Body> {
    let has_version = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("api-version=")));
    if !has_version {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {
                "code": "MissingApiVersionParameter",
                "message": "The api-version query parameter (?api-version=) is required for all requests.",
            }}),
        );
    }
    handle(shared, Some(route), Some(deployment), request).await
}

async fn gemini(State(shared): State<Arc<Shared>>, request: Request<Body>) -> Response<Body> {
    let last = request.uri().path().rsplit('/').next().unwrap_or_default();
    let (model, route) = match last.rsplit_once(':') {
        Some((model, "generateContent")) => (model.to_owned(), Some(Route::GeminiGenerate)),
        Some((model, "streamGenerateContent")) => (model.to_owned(), Some(Route::GeminiStream)),
        _ => (String::new(), None),
    };
    handle(shared, route, Some(model), request).await
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<ServerState>,
    /// Bumped on every counter change, for [`MockServer::wait_until`].
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct ServerState {
    plans: ActivePlans,
    counters: Counters,
    received: VecDeque<ReceivedRequest>,
    next_id: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        // A panic elsewhere must not take the mock down with it: the state stays usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    fn arrive(self: &Arc<Self>, route: Option<Route>, key: &str) -> InFlight {
        {
            let mut state = self.lock();
            let counters = &mut state.counters;
            counters.requests += 1;
            counters.in_flight += 1;
            counters.max_concurrent = counters.max_concurrent.max(counters.in_flight);
            if let Some(route) = route {
                *counters.by_route.entry(route).or_default() += 1;
            }
            *counters.by_key.entry(key.to_owned()).or_default() += 1;
        }
        self.notify();
        InFlight {
            shared: self.clone(),
            finished: false,
        }
    }

    fn answered(&self, status: StatusCode) {
        *self
            .lock()
            .counters
            .by_status
            .entry(status.as_u16())
            .or_default() += 1;
        self.notify();
    }

    fn record(&self, request: ReceivedRequest) {
        let mut state = self.lock();
        if state.received.len() == RECEIVED_CAPACITY {
            state.received.pop_front();
        }
        state.received.push_back(request);
    }

    fn decide(&self, route: Route, key: &str, cost: u64) -> Decision {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        state
            .plans
            .for_route(route)
            .decide(id, key, cost, Instant::now())
    }
}

/// One request being answered. Dropped unfinished means the client went away.
#[derive(Debug)]
struct InFlight {
    shared: Arc<Shared>,
    finished: bool,
}

impl InFlight {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            let counters = &mut state.counters;
            counters.in_flight = counters.in_flight.saturating_sub(1);
            if self.finished {
                counters.completed += 1;
            } else {
                counters.cancelled += 1;
            }
        }
        self.shared.notify();
    }
}

#[derive(Debug)]
struct ActivePlans {
    global: PlanRuntime,
    routes: BTreeMap<Route, PlanRuntime>,
}

impl ActivePlans {
    fn new(plan: &FaultPlan) -> Self {
        ActivePlans {
            global: PlanRuntime::new(plan),
            routes: plan
                .parts()
                .routes
                .iter()
                .map(|(route, plan)| (*route, PlanRuntime::new(plan)))
                .collect(),
        }
    }

    fn for_route(&mut self, route: Route) -> &mut PlanRuntime {
        self.routes.get_mut(&route).unwrap_or(&mut self.global)
    }
}

/// A plan being carried out: its RNG, what is left of its script, its quota window.
#[derive(Debug)]
struct PlanRuntime {
    rng: StdRng,
    latency: Latency,
    faults: Vec<WeightedFault>,
    script: VecDeque<Option<Fault>>,
    quota: Option<(Quota, QuotaWindow)>,
    name: String,
    reply: Option<String>,
    chunk_delay: Duration,
    context_window: Option<u64>,
    api_keys: Vec<String>,
    echo_api_key: KeyEcho,
}

impl PlanRuntime {
    fn new(plan: &FaultPlan) -> Self {
        let parts = plan.parts();
        PlanRuntime {
            rng: StdRng::seed_from_u64(parts.seed),
            latency: *parts.latency,
            faults: parts.faults.to_vec(),
            script: parts.script.iter().cloned().collect(),
            quota: parts.quota.map(|q| (q, QuotaWindow::new(q))),
            name: parts.name.to_owned(),
            reply: parts.reply.map(str::to_owned),
            chunk_delay: parts.stream_chunk_delay,
            context_window: parts.context_window,
            api_keys: parts.api_keys.to_vec(),
            echo_api_key: parts.echo_api_key,
        }
    }

    fn decide(&mut self, id: u64, key: &str, cost: u64, now: Instant) -> Decision {
        let latency = self.latency.sample(&mut self.rng);
        let mut decision = Decision {
            id,
            verdict: Verdict::Normal,
            latency,
            limits: RateLimitState::default(),
            name: self.name.clone(),
            reply: self.reply.clone(),
            chunk_delay: self.chunk_delay,
            requests_limit: self.requests_limit(),
            context_window: self.context_window,
        };
        if !self.api_keys.is_empty() && !self.api_keys.iter().any(|k| k == key) {
            decision.verdict = Verdict::Unauthorized(self.echo_api_key.text(key));
            return decision;
        }
        let scripted = self.script.pop_front();
        if let Some(Some(fault)) = scripted {
            decision.verdict = Verdict::Fault(fault);
            return decision;
        }
        if let Some((_, window)) = &mut self.quota {
            match window.check(now, cost) {
                QuotaCheck::Admitted(limits) => decision.limits = limits,
                QuotaCheck::Refused { retry_after, state } => {
                    decision.limits = state;
                    decision.verdict = Verdict::OverQuota(retry_after);
                    return decision;
                }
            }
        }
        if scripted.is_none() && !self.faults.is_empty() {
            let draw: f64 = self.rng.random();
            let mut cumulative = 0.0;
            for weighted in &self.faults {
                let p = weighted.probability;
                cumulative += if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
                if draw < cumulative {
                    decision.verdict = Verdict::Fault(weighted.fault.clone());
                    break;
                }
            }
        }
        decision
    }

    /// The requests limit a 429 reports when no quota window says otherwise.
    fn requests_limit(&self) -> u64 {
        self.quota
            .as_ref()
            .map(|(q, _)| q.requests_per_minute)
            .filter(|&l| l != u64::MAX)
            .unwrap_or(60)
    }
}

#[derive(Clone, Debug)]
enum Verdict {
    Normal,
    Fault(Fault),
    OverQuota(Duration),
    /// With the refused key as the message repeats it, if it does.
    Unauthorized(Option<String>),
}

#[derive(Clone, Debug)]
struct Decision {
    id: u64,
    verdict: Verdict,
    latency: Duration,
    limits: RateLimitState,
    name: String,
    reply: Option<String>,
    chunk_delay: Duration,
    requests_limit: u64,
    context_window: Option<u64>,
}

fn api_key(parts: &http::request::Parts) -> String {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(auth) = header("authorization") {
        return auth
            .strip_prefix("Bearer ")
            .unwrap_or(auth)
            .trim()
            .to_owned();
    }
    if let Some(key) = header("x-api-key")
        .or_else(|| header("x-goog-api-key"))
        .or_else(|| header("api-key"))
    {
        return key.to_owned();
    }
    parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("key=")))
        .unwrap_or_default()
        .to_owned()
}

async fn handle(
    shared: Arc<Shared>,
    route: Option<Route>,
    url_model: Option<String>,
    request: Request<Body>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let key = api_key(&parts);
    let in_flight = shared.arrive(route, &key);
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            let (status, error) = responses::error_body(
                route.map_or(Provider::OpenAi, Route::provider),
                ErrorCase::Status(StatusCode::BAD_REQUEST),
            );
            return finish(&shared, in_flight, json_response(status, &error));
        }
    };
    shared.record(ReceivedRequest {
        route,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        api_key: key.clone(),
        body: body.clone(),
    });
    let Some(route) = route else {
        let provider = if url_model.is_some() {
            Provider::Gemini
        } else {
            Provider::OpenAi
        };
        let (status, error) =
            responses::error_body(provider, ErrorCase::Status(StatusCode::NOT_FOUND));
        return finish(&shared, in_flight, json_response(status, &error));
    };
    let decision = shared.decide(route, &key, estimate_body_tokens(&body));
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    let sse = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair == "alt=sse"));
    let call = Call {
        route,
        provider: route.provider(),
        url_model,
        sse,
        body,
    };
    let answer = answer(&call, &decision);
    let mut response = match answer {
        Answer::Full(response) => finish(&shared, in_flight, response),
        Answer::Drop => {
            shared.lock().counters.dropped += 1;
            in_flight.finish();
            let mut response = Response::new(Body::empty());
            response.extensions_mut().insert(DropConnection);
            return response;
        }
        Answer::Stream {
            status,
            content_type,
            events,
            end,
        } => {
            shared.answered(status);
            let body = stream_body(events, end, decision.chunk_delay, in_flight);
            let mut response = Response::new(body);
            *response.status_mut() = status;
            set_header(&mut response, CONTENT_TYPE, content_type);
            if content_type == "text/event-stream" {
                set_header(&mut response, http::header::CACHE_CONTROL, "no-cache");
            }
            response
        }
    };
    decorate(&mut response, &call, &decision);
    response
}

fn finish(shared: &Shared, in_flight: InFlight, response: Response<Body>) -> Response<Body> {
    shared.answered(response.status());
    in_flight.finish();
    response
}

/// A request, read.
#[derive(Debug)]
struct Call {
    route: Route,
    provider: Provider,
    url_model: Option<String>,
    sse: bool,
    body: Bytes,
}

enum Answer {
    Full(Response<Body>),
    Stream {
        status: StatusCode,
        content_type: &'static str,
        events: Vec<Bytes>,
        end: StreamEnd,
    },
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamEnd {
    Finish,
    Stall,
    Cut,
}

fn answer(call: &Call, decision: &Decision) -> Answer {
    let fault = match &decision.verdict {
        Verdict::Normal => None,
        Verdict::Unauthorized(echo) => {
            let (status, mut body) =
                responses::error_body(call.provider, ErrorCase::Status(StatusCode::UNAUTHORIZED));
            if let Some(echo) = echo
                && let Some(Value::String(message)) = body.pointer_mut("/error/message")
            {
                message.push_str(&format!(" Key provided: {echo}."));
            }
            return Answer::Full(json_response(status, &body));
        }
        Verdict::OverQuota(retry_after) => {
            let mut response = error_response(
                call.provider,
                ErrorCase::RateLimited {
                    retry_after: Some(*retry_after),
                },
            );
            retry_header(&mut response, *retry_after, RetryAfterForm::Seconds);
            return Answer::Full(response);
        }
        Verdict::Fault(fault) => Some(fault),
    };
    let json: Value = match serde_json::from_slice(&call.body) {
        Ok(json) => json,
        Err(_) => {
            return Answer::Full(error_response(
                call.provider,
                ErrorCase::Status(StatusCode::BAD_REQUEST),
            ));
        }
    };
    match fault {
        None => normal(call, decision, &json, None),
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(*code)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let case = if status == StatusCode::TOO_MANY_REQUESTS {
                ErrorCase::RateLimited { retry_after: None }
            } else {
                ErrorCase::Status(status)
            };
            Answer::Full(error_response(call.provider, case))
        }
        Some(Fault::RateLimited { retry_after, form }) => {
            let mut response = error_response(
                call.provider,
                ErrorCase::RateLimited {
                    retry_after: Some(*retry_after),
                },
            );
            retry_header(&mut response, *retry_after, *form);
            Answer::Full(response)
        }
        Some(Fault::QuotaExhausted) => {
            Answer::Full(error_response(call.provider, ErrorCase::QuotaExhausted))
        }
        Some(Fault::Overloaded) => {
            Answer::Full(error_response(call.provider, ErrorCase::Overloaded))
        }
        Some(Fault::DropConnection) => Answer::Drop,
        Some(Fault::HtmlError) => {
            let mut response = Response::new(Body::from(responses::HTML_ERROR_PAGE));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            set_header(&mut response, CONTENT_TYPE, "text/html");
            set_header(&mut response, http::header::SERVER, "nginx");
            Answer::Full(response)
        }
        Some(fault) => normal(call, decision, &json, Some(fault)),
    }
}

/// The normal answer, or one spoilt by a body fault (malformed JSON, stall, cut, in-stream
/// error).
fn normal(call: &Call, decision: &Decision, json: &Value, fault: Option<&Fault>) -> Answer {
    if call.route == Route::OpenAiEmbeddings {
        return match responses::openai_embeddings(json, decision.id) {
            Ok(body) if fault == Some(&Fault::ContextLengthExceeded) => {
                let tokens = body["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
                let case = ErrorCase::ContextLengthExceeded {
                    tokens,
                    limit: tokens.saturating_sub(1),
                };
                Answer::Full(error_response(call.provider, case))
            }
            Ok(body) => spoil_full(body, fault, call.provider),
            Err(message) => {
                let error = json!({"error": {"message": message,
                    "type": "invalid_request_error", "param": "input", "code": null}});
                Answer::Full(json_response(StatusCode::BAD_REQUEST, &error))
            }
        };
    }
    let prompt = Prompt::read(call.route, json, call.url_model.as_deref());
    let too_long = decision
        .context_window
        .is_some_and(|window| prompt.prompt_tokens > window);
    if fault == Some(&Fault::ContextLengthExceeded) || (fault.is_none() && too_long) {
        let tokens = prompt.prompt_tokens;
        let limit = decision
            .context_window
            .unwrap_or_else(|| tokens.saturating_sub(1));
        let case = ErrorCase::ContextLengthExceeded { tokens, limit };
        return Answer::Full(error_response(call.provider, case));
    }
    let text = decision
        .reply
        .clone()
        .unwrap_or_else(|| format!("{}: {}", decision.name, prompt.last_user));
    let reply = Reply::new(decision.id, &prompt, text);
    if !prompt.stream {
        let body = match call.provider {
            Provider::OpenAi => responses::openai_chat(&reply),
            Provider::Anthropic => responses::anthropic_message(&reply),
            Provider::Gemini => responses::gemini_generate(&reply),
        };
        return spoil_full(body, fault, call.provider);
    }
    let stream = match call.provider {
        Provider::OpenAi => responses::openai_chat_stream(&reply, prompt.include_usage),
        Provider::Anthropic => responses::anthropic_stream(&reply),
        Provider::Gemini => responses::gemini_stream(&reply, call.sse),
    };
    let content_type = if call.provider == Provider::Gemini && !call.sse {
        "application/json"
    } else {
        "text/event-stream"
    };
    let (events, end) = stream_events(stream, fault);
    Answer::Stream {
        status: StatusCode::OK,
        content_type,
        events,
        end,
    }
}

/// A whole JSON answer, as the fault leaves it.
fn spoil_full(body: Value, fault: Option<&Fault>, provider: Provider) -> Answer {
    let text = body.to_string();
    let (events, end) = match fault {
        Some(Fault::MalformedJson) => {
            let mut response = Response::new(Body::from(responses::truncate_json(&text)));
            set_header(&mut response, CONTENT_TYPE, "application/json");
            return Answer::Full(response);
        }
        Some(Fault::StallStream { .. }) => (responses::truncate_json(&text), StreamEnd::Stall),
        Some(Fault::CutStream { .. }) => (responses::truncate_json(&text), StreamEnd::Cut),
        Some(Fault::StreamErrorEvent { .. }) => {
            return Answer::Full(error_response(provider, ErrorCase::Overloaded));
        }
        _ => return Answer::Full(json_response(StatusCode::OK, &body)),
    };
    Answer::Stream {
        status: StatusCode::OK,
        content_type: "application/json",
        events: vec![Bytes::from(events)],
        end,
    }
}

fn stream_events(stream: StreamAnswer, fault: Option<&Fault>) -> (Vec<Bytes>, StreamEnd) {
    let StreamAnswer {
        framing,
        opening,
        mut chunks,
        closing,
        trailer,
        error,
    } = stream;
    let mut events: Vec<Event> = opening;
    let mut end = StreamEnd::Finish;
    let mut complete = false;
    match fault {
        Some(Fault::StallStream { after_chunks }) => {
            chunks.truncate(*after_chunks);
            events.extend(chunks);
            end = StreamEnd::Stall;
        }
        Some(Fault::CutStream { after_chunks }) => {
            chunks.truncate(*after_chunks);
            events.extend(chunks);
            end = StreamEnd::Cut;
        }
        Some(Fault::StreamErrorEvent { after_chunks }) => {
            chunks.truncate(*after_chunks);
            events.extend(chunks);
            events.push(error);
        }
        Some(Fault::MalformedJson) => {
            if let Some(first) = chunks.first_mut() {
                *first = first.garbled();
            }
            events.extend(chunks);
            events.extend(closing);
            complete = true;
        }
        _ => {
            events.extend(chunks);
            events.extend(closing);
            complete = true;
        }
    }
    let mut bytes: Vec<Bytes> = events
        .iter()
        .enumerate()
        .map(|(i, event)| event.encode(framing, i))
        .collect();
    if let Some(trailer) = trailer
        && (complete || end == StreamEnd::Finish)
    {
        bytes.push(Bytes::from_static(trailer.as_bytes()));
    }
    (bytes, end)
}

/// A body that sends `events` with `delay` between them, then ends as `end` says. It holds
/// the request's [`InFlight`] until it is over, so a client that leaves mid-stream counts as
/// cancelled.
fn stream_body(events: Vec<Bytes>, end: StreamEnd, delay: Duration, in_flight: InFlight) -> Body {
    struct Progress {
        events: std::vec::IntoIter<Bytes>,
        sent: usize,
        delay: Duration,
        end: StreamEnd,
        in_flight: Option<InFlight>,
    }
    let progress = Progress {
        events: events.into_iter(),
        sent: 0,
        delay,
        end,
        in_flight: Some(in_flight),
    };
    Body::from_stream(stream::unfold(progress, |mut p| async move {
        if let Some(event) = p.events.next() {
            if p.sent > 0 && !p.delay.is_zero() {
                tokio::time::sleep(p.delay).await;
            }
            p.sent += 1;
            return Some((Ok(event), p));
        }
        let in_flight = p.in_flight.take()?;
        match p.end {
            StreamEnd::Finish => {
                in_flight.finish();
                None
            }
            StreamEnd::Stall | StreamEnd::Cut => {
                if p.end == StreamEnd::Stall {
                    tokio::time::sleep(STALL).await;
                }
                // hyper writes what it has buffered when the body is pending; without this the
                // error would abort the connection before the chunks (or the head) went out.
                tokio::task::yield_now().await;
                in_flight.finish();
                // An error from the body makes hyper abort the connection mid-answer.
                Some((Err(io::Error::other("mock: stream cut")), p))
            }
        }
    }))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    set_header(&mut response, CONTENT_TYPE, "application/json");
    response
}

fn error_response(provider: Provider, case: ErrorCase) -> Response<Body> {
    let (status, body) = responses::error_body(provider, case);
    json_response(status, &body)
}

fn set_header(response: &mut Response<Body>, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn retry_header(response: &mut Response<Body>, after: Duration, form: RetryAfterForm) {
    let whole_seconds = duration_format::whole_seconds(after);
    let (name, value) = match form {
        RetryAfterForm::Seconds => (http::header::RETRY_AFTER, whole_seconds.to_string()),
        RetryAfterForm::HttpDate => {
            // A second more, as the date drops the current second's fraction.
            // An HTTP date ends with year 9999 (and `httpdate` panics past it).
            let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
            let at = SystemTime::now()
                .checked_add(Duration::from_secs(whole_seconds.saturating_add(1)))
                .map_or(latest, |at| at.min(latest));
            (http::header::RETRY_AFTER, httpdate::fmt_http_date(at))
        }
        RetryAfterForm::Millis => (
            HeaderName::from_static("retry-after-ms"),
            after.as_millis().to_string(),
        ),
        RetryAfterForm::MsMillis => (
            HeaderName::from_static("x-ms-retry-after-ms"),
            after.as_millis().to_string(),
        ),
    };
    set_header(response, name, &value);
}

/// Headers every answer carries: who answered, and the provider's rate-limit headers.
fn decorate(response: &mut Response<Body>, call: &Call, decision: &Decision) {
    set_header(
        response,
        HeaderName::from_static("x-mock-server"),
        &decision.name,
    );
    let id = format!("req_mock{}", decision.id);
    // OpenAI and Gemini's proxies say `x-request-id`; Anthropic says `request-id`.
    let id_header = match call.provider {
        Provider::Anthropic => "request-id",
        _ => "x-request-id",
    };
    set_header(response, HeaderName::from_static(id_header), &id);
    let mut limits = decision.limits;
    if response.status() == StatusCode::TOO_MANY_REQUESTS && limits.requests.is_none() {
        let reset = tower_llm_core::retry_after(response.headers()).unwrap_or_default();
        limits.requests = Some(LimitState {
            limit: decision.requests_limit,
            remaining: 0,
            reset,
        });
    }
    let now = SystemTime::now();
    let headers = response.headers_mut();
    let mut put = |name: String, value: String| {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    };
    for (what, limit) in [("requests", limits.requests), ("tokens", limits.tokens)] {
        let Some(limit) = limit else { continue };
        match call.provider {
            Provider::OpenAi => {
                put(format!("x-ratelimit-limit-{what}"), limit.limit.to_string());
                put(
                    format!("x-ratelimit-remaining-{what}"),
                    limit.remaining.to_string(),
                );
                put(
                    format!("x-ratelimit-reset-{what}"),
                    duration_format::openai(limit.reset),
                );
            }
            Provider::Anthropic => {
                put(
                    format!("anthropic-ratelimit-{what}-limit"),
                    limit.limit.to_string(),
                );
                put(
                    format!("anthropic-ratelimit-{what}-remaining"),
                    limit.remaining.to_string(),
                );
                // Whole seconds, rounded up: a reset written down is never earlier than
                // the real one, or a client that waits for it gets the 429.
                let reset_at = now.checked_add(limit.reset).unwrap_or(now);
                let fraction = reset_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let reset_at = if fraction == 0 {
                    reset_at
                } else {
                    reset_at
                        .checked_add(Duration::from_nanos(u64::from(1_000_000_000 - fraction)))
                        .unwrap_or(reset_at)
                };
                put(
                    format!("anthropic-ratelimit-{what}-reset"),
                    duration_format::rfc3339(reset_at),
                );
            }
            Provider::Gemini => {}
        }
    }
}
