//! The routes of each API and the handler every route shares: read the request, ask the
//! state for a decision, answer.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::post;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use serde_json::json;
use tower_llm_core::estimate_body_tokens;

use super::answer::{
    Answer, answer, decorate, error_response, json_response, set_header, stream_body,
};
use super::state::{InFlight, Shared};
use super::{DropConnection, MAX_BODY};
use crate::counters::ReceivedRequest;
use crate::plan::Route;
use crate::responses::{ErrorCase, Provider};

pub(super) fn router(shared: Arc<Shared>) -> Router {
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
        .route("/model/{model}/{action}", post(bedrock))
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

/// Bedrock: the model id (percent-decoded) in the path, the action after it.
async fn bedrock(
    State(shared): State<Arc<Shared>>,
    Path((model, action)): Path<(String, String)>,
    request: Request<Body>,
) -> Response<Body> {
    let route = match action.as_str() {
        "converse" => Some(Route::BedrockConverse),
        "converse-stream" => Some(Route::BedrockConverseStream),
        _ => None,
    };
    handle(shared, route, Some(model), request).await
}

/// The access key id of a SigV4 `Authorization` header
/// (`AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/bedrock/aws4_request, ...`).
fn sigv4_access_key(authorization: &str) -> Option<&str> {
    let rest = authorization.strip_prefix("AWS4-HMAC-SHA256")?;
    let credential = rest
        .split(',')
        .find_map(|part| part.trim().strip_prefix("Credential="))?;
    credential.split('/').next()
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
        if let Some(access_key) = sigv4_access_key(auth) {
            return access_key.to_owned();
        }
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
            let response = error_response(
                route.map_or(Provider::OpenAi, Route::provider),
                ErrorCase::Status(StatusCode::BAD_REQUEST),
            );
            return finish(&shared, in_flight, response);
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
        let provider = if parts.uri.path().starts_with("/model/") {
            Provider::Bedrock
        } else if url_model.is_some() {
            Provider::Gemini
        } else {
            Provider::OpenAi
        };
        let response = error_response(provider, ErrorCase::Status(StatusCode::NOT_FOUND));
        return finish(&shared, in_flight, response);
    };
    let cost = estimate_body_tokens(&body);
    let decision = shared.decide(route, &key, cost);
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
    let (answer, used) = answer(&call, &decision);
    // A provider counts the tokens a call really used: what its reply used beyond the cost
    // it was admitted at (a long reply to a request that named no output budget) counts in
    // the quota window too, when it is answered. A client learns it only from the usage the
    // answer reports.
    if let Some(extra) = used
        .and_then(|used| used.checked_sub(cost))
        .filter(|&n| n > 0)
    {
        shared.charge(route, extra);
    }
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

pub(super) fn finish(
    shared: &Shared,
    in_flight: InFlight,
    response: Response<Body>,
) -> Response<Body> {
    shared.answered(response.status());
    in_flight.finish();
    response
}

/// A request, read.
#[derive(Debug)]
pub(super) struct Call {
    pub(super) route: Route,
    pub(super) provider: Provider,
    pub(super) url_model: Option<String>,
    pub(super) sse: bool,
    pub(super) body: Bytes,
}
