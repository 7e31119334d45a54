//! An OpenAI- and Anthropic-compatible LLM gateway built from the tower-llm layers.
//!
//! Clients speak OpenAI's API (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`) or
//! Anthropic's (`/v1/messages`); behind them, each model has a stack of tower-llm layers
//! (dedup, per-tenant rate limit, retry, a fallback / race / hedge strategy over per-provider
//! circuit breakers) in front of OpenAI, Anthropic, Gemini or any OpenAI-compatible server.
//! A TOML [`Config`] describes it all; [`Gateway::new`] builds the stacks, and
//! [`Gateway::router`] gives the axum `Router`, to serve as it is ([`serve`], or the
//! `tower-llm-gateway` binary) or to mount inside an application.
//!
//! # Example
//!
//! The built-in configuration runs on in-process mock upstreams; here the gateway is nested
//! under `/llm` in an application's own router:
//!
//! ```
//! use axum::Router;
//! use axum::routing::get;
//! use tower_llm_gateway::{Config, Gateway};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_llm_core::BoxError> {
//! let config = Config::mock()?; // or Config::from_file("gateway.toml")?
//! let gateway = Gateway::new(&config).await?;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "my application" }))
//!     .nest("/llm", gateway.router());
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let server = tokio::spawn(async move { axum::serve(listener, app).await });
//! // Clients now use http://{addr}/llm/v1 as their OpenAI base URL.
//! # let _ = addr;
//! # server.abort();
//! # Ok(())
//! # }
//! ```
//!
//! Configuration errors name the key at fault, and `Debug` of a [`Config`] or a [`Gateway`]
//! shows no key: client keys are kept as keyed digests and compared in constant time. Errors
//! sent to clients are written by the gateway from the classified failure (with the request
//! id, also in `x-request-id`), never copied from an upstream. See `docs/gateway.md` in the
//! repository for the routes, the configuration, the stack and the error table.

#![forbid(unsafe_code)]

mod app;
mod config;
mod deadline;
mod error;
mod keys;
mod messages;
mod request_id;
mod stack;
#[cfg(feature = "otlp")]
pub mod telemetry;
mod trace_context;
mod wire;

pub use app::{Gateway, serve, shutdown_signal};
pub use config::{Config, ConfigError, MOCK_CONFIG};
