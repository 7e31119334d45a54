//! What the gateway's hygiene tests share: an upstream that echoes the key it was sent, and a
//! config that points the gateway at it with a client key and a provider key.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::json;
use tokio::net::TcpListener;

pub(crate) const CLIENT_KEY: &str = "sk-client-key-never-shown-7f3a";
pub(crate) const PROVIDER_KEY: &str = "sk-provider-key-never-shown-91c2";

/// An upstream that answers every chat with `status` and an error text quoting the key it
/// was sent, as some servers do ("Incorrect API key provided: sk-...").
pub(crate) async fn echoing_upstream(status: StatusCode) -> SocketAddr {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = json!({"error": {
                "message": format!("Upstream internal detail: you sent `{auth}` from tenant data"),
                "type": "invalid_request_error", "code": null}});
            (status, [("x-upstream", "yes")], body.to_string())
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

pub(crate) fn config_text(upstream: SocketAddr) -> String {
    format!(
        r#"
[[keys]]
key = "{CLIENT_KEY}"
tenant = "a"

[providers.echo]
kind = "openai"
base_url = "http://{upstream}/v1"
api_key = "{PROVIDER_KEY}"
models = ["m"]
"#
    )
}
