//! An OpenAI-compatible gateway built only from the tower-llm crates.
//!
//! `cargo run --release --example gateway [-- CONFIG.toml]`
//!
//! Without a file it starts the testkit's mock upstreams in-process (the sample
//! `examples/gateway/mock.toml`), so it runs on a fresh machine with no key and no network.
//! `examples/gateway/openai.toml` is the sample for real OpenAI, Anthropic and Gemini keys.
//! Routes: `POST /v1/chat/completions` (plain and `stream: true`), `POST /v1/embeddings`,
//! `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus). See `docs/gateway.md`.

mod app;
mod config;
mod stack;
mod wire;

use tokio::net::TcpListener;
use tower_llm_core::BoxError;

use crate::app::Gateway;
use crate::config::Config;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let path = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("GATEWAY_CONFIG").ok());
    let config = match &path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config {path}: {e}"))?;
            Config::from_toml(&text)?
        }
        None => Config::from_toml(config::MOCK_CONFIG)?,
    };
    let gateway = Gateway::new(&config).await?;
    // The exporter keeps histogram samples until they are drained; without a scraper they
    // would pile up.
    let metrics = app::prometheus();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            metrics.run_upkeep();
        }
    });
    let listener = TcpListener::bind(&config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = listener.local_addr()?;
    match &path {
        Some(path) => println!("gateway: config {path}"),
        None => println!("gateway: no config file, using the built-in mock upstreams"),
    }
    for (name, mock) in &gateway.mocks {
        println!("gateway: mock upstream {name} at {}", mock.base_url());
    }
    println!("gateway: listening on http://{addr}");
    println!("gateway: models {}", config.model_names().join(", "));
    if path.is_none() {
        println!(
            "gateway: try  curl -s http://{addr}/v1/chat/completions -H 'authorization: Bearer sk-gateway-demo' \
             -H 'content-type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}'"
        );
    }
    app::serve(
        listener,
        gateway.router(),
        async {
            app::shutdown_signal().await;
            println!("gateway: shutting down, letting requests in flight finish");
        },
        config.server.shutdown_grace,
    )
    .await?;
    println!("gateway: stopped");
    Ok(())
}
