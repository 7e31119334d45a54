//! The floor under the gateway's overhead: an HTTP proxy that does nothing but forward.
//!
//! `cargo run --release -p example-loadgen --bin null_proxy -- UPSTREAM [LISTEN]` listens on `LISTEN`
//! (default `127.0.0.1:8090`) and forwards every `POST /v1/chat/completions` body, unparsed,
//! to `UPSTREAM/v1/chat/completions` (a loopback base URL, e.g. the gateway's mock upstream),
//! returning the status and body. No JSON, no layers: what is left is one HTTP server hop and
//! one HTTP client hop through hyper, which is what any gateway pays before doing any work.
//! Measuring it beside the gateway with `loadgen` tells how much of the gateway's added
//! latency is the hop itself. See `benches/README.md`.

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_llm_core::BoxError;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn forward(
    State((client, url)): State<(HttpClient, http::Uri)>,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let Ok(request) = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
    else {
        return (StatusCode::BAD_GATEWAY, Bytes::new());
    };
    let Ok(response) = client.request(request).await else {
        return (StatusCode::BAD_GATEWAY, Bytes::new());
    };
    let status = response.status();
    match response.into_body().collect().await {
        Ok(body) => (status, body.to_bytes()),
        Err(_) => (StatusCode::BAD_GATEWAY, Bytes::new()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let upstream = args
        .next()
        .ok_or("usage: null_proxy UPSTREAM_BASE_URL [LISTEN_ADDR]")?;
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8090".to_owned());
    let url: http::Uri =
        format!("{}/v1/chat/completions", upstream.trim_end_matches('/')).parse()?;
    let host = url.host().unwrap_or_default();
    if !(host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
    {
        return Err(format!("{upstream}: only a loopback upstream").into());
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let app = Router::new()
        .route("/v1/chat/completions", post(forward))
        .with_state((client, url));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("null_proxy: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
