//! Recipe: a tonic gRPC service calling a stacked provider.
//!
//! `cargo run -p example-tonic-service` starts the testkit mock (no key, no network), serves
//! the gRPC service of `examples/tonic_service/proto/chat.proto` (`recipe.chat.v1.Chat/Ask`) on a free
//! loopback port, calls it twice with a tonic client, prints both answers and the number of
//! upstream calls (one: the second answer came from the dedup cache), and exits.
//! `-- --serve` keeps serving and prints a `grpcurl` command instead.
//!
//! The stack is the one of `examples/axum_handler.rs`: dedup, retry, circuit breaker, then
//! the OpenAI provider (pointed at the mock; `OpenAi::from_env()?` for the real one), built
//! once and shared by every call. Failures become gRPC statuses through core's classifier:
//! `RESOURCE_EXHAUSTED` for rate limits, `UNAVAILABLE` for an open breaker or an overloaded
//! upstream, `DEADLINE_EXCEEDED`, `INVALID_ARGUMENT` for the client's own mistakes; the retry
//! hint travels in the `retry-after` metadata (seconds).
//!
//! # No protoc needed
//!
//! The message types below are written by hand with prost's derive to match
//! `examples/tonic_service/proto/chat.proto`, and the server is tonic's codegen-free API
//! (`tonic::server::Grpc::unary` with a `tower::service_fn`), dispatching on the method path
//! as generated code does. So building this example needs no `protoc` and no build script:
//! `cargo test --workspace` compiles it on a machine with only the Rust toolchain. That is
//! the robust choice for a one-method recipe; a real service with many messages would run
//! `tonic-prost-build` from a build script (and need `protoc`, e.g. from the
//! `protoc-bin-vendored` crate) and replace the hand-written part with the generated one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_breaker::CircuitBreakerLayer;
use tower_llm_core::{BoxError, FailureKind, classify_dyn_error};
use tower_llm_dedup::DedupLayer;
use tower_llm_providers::{ChatRequest, ChatResponse, Message, OpenAi};
use tower_llm_retry::{Backoff, RetryLayer, StatsOnly};
use tower_llm_testkit::{FaultPlan, Latency, MockServer, Route};

/// `message AskRequest` of `examples/tonic_service/proto/chat.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct AskRequest {
    #[prost(string, tag = "1")]
    prompt: String,
    #[prost(string, tag = "2")]
    model: String,
}

/// `message AskReply` of `examples/tonic_service/proto/chat.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct AskReply {
    #[prost(string, tag = "1")]
    answer: String,
    #[prost(string, tag = "2")]
    model: String,
    #[prost(uint64, tag = "3")]
    input_tokens: u64,
    #[prost(uint64, tag = "4")]
    output_tokens: u64,
}

const SERVICE: &str = "recipe.chat.v1.Chat";
const ASK: &str = "/recipe.chat.v1.Chat/Ask";
const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// The provider behind its layers, shared by every call.
type Llm = BoxCloneSyncService<ChatRequest, ChatResponse, BoxError>;

fn stack(openai_base_url: String) -> Result<Llm, BoxError> {
    let provider = OpenAi::compatible(openai_base_url)
        .api_key("sk-mock")
        .build()?;
    // Keyed by core's fingerprint of the typed request (model, messages, sampling, tenant).
    let dedup = DedupLayer::<ChatResponse>::builder()
        .ttl(Duration::from_secs(300))
        .build()?;
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(200)))
        .deadline(Duration::from_secs(30))
        .record_attempts(StatsOnly)
        .build()?;
    // The default policy: open when half of the last 100 calls failed, once 40 are in.
    let breaker = CircuitBreakerLayer::builder()
        .name("openai")
        .cooldown(Duration::from_secs(30))
        .build()?;
    let service = ServiceBuilder::new()
        .layer(dedup)
        .layer(retry)
        .layer(breaker)
        .timeout(Duration::from_secs(60))
        .service(provider);
    Ok(BoxCloneSyncService::new(service))
}

fn status_of(error: &BoxError) -> Status {
    let failure = classify_dyn_error(&**error);
    let code = match failure.kind {
        FailureKind::RateLimited | FailureKind::QuotaExhausted => Code::ResourceExhausted,
        FailureKind::CircuitOpen | FailureKind::Overloaded => Code::Unavailable,
        FailureKind::Timeout => Code::DeadlineExceeded,
        kind if kind.is_client_error() => Code::InvalidArgument,
        _ => Code::Unavailable,
    };
    let mut status = Status::new(code, error.to_string());
    if let Some(wait) = failure.retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        status
            .metadata_mut()
            .insert("retry-after", MetadataValue::from(seconds));
    }
    status
}

/// What generated server code would be: one arm per method, each a codec plus a unary
/// handler.
#[derive(Clone)]
struct ChatServer {
    llm: Llm,
}

impl NamedService for ChatServer {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<Body>> for ChatServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != ASK {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let llm = self.llm.clone();
        let ask = service_fn(move |request: tonic::Request<AskRequest>| {
            let llm = llm.clone();
            async move {
                let ask = request.into_inner();
                let model = if ask.model.is_empty() {
                    DEFAULT_MODEL.to_owned()
                } else {
                    ask.model
                };
                // temperature 0: a deterministic request, so its answer may be cached.
                let chat =
                    ChatRequest::new(model, vec![Message::user(ask.prompt)]).temperature(0.0);
                let answer = llm.oneshot(chat).await.map_err(|e| status_of(&e))?;
                let usage = answer.usage.unwrap_or_default();
                Ok::<_, Status>(tonic::Response::new(AskReply {
                    answer: answer.content,
                    model: answer.model,
                    input_tokens: usage.input_tokens,
                    output_tokens: usage.output_tokens,
                }))
            }
        });
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<AskReply, AskRequest>::default());
            Ok(grpc.unary(ask, request).await)
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let serve_forever = std::env::args().any(|arg| arg == "--serve");
    let mock = MockServer::start(
        FaultPlan::healthy()
            .name("mock")
            .latency(Latency::Fixed(Duration::from_millis(50))),
    )
    .await?;
    let server = ChatServer {
        llm: stack(format!("{}/v1", mock.base_url()))?,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            server,
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        ),
    );

    if serve_forever {
        println!("serving {SERVICE} on {addr} (Ctrl-C to stop); try");
        println!(
            "  grpcurl -plaintext -proto examples/tonic_service/proto/chat.proto -d '{{\"prompt\":\"Hi\"}}' \
             {addr} {SERVICE}/Ask"
        );
        tokio::signal::ctrl_c().await?;
        let _ = stop.send(());
        serving.await??;
        return Ok(());
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = tonic::client::Grpc::new(channel);
    for attempt in 1..=2 {
        client.ready().await?;
        let request = tonic::Request::new(AskRequest {
            prompt: "What is the capital of France?".into(),
            model: String::new(),
        });
        let reply = client
            .unary(
                request,
                PathAndQuery::from_static(ASK),
                ProstCodec::<AskRequest, AskReply>::default(),
            )
            .await?
            .into_inner();
        println!(
            "call {attempt}: {:?} from {} ({} tokens in, {} out)",
            reply.answer, reply.model, reply.input_tokens, reply.output_tokens
        );
    }
    println!(
        "upstream calls: {} (the second answer came from the dedup cache)",
        mock.counters().route(Route::OpenAiChat)
    );
    let _ = stop.send(());
    serving.await??;
    Ok(())
}
