//! Every provider over real HTTP (the default hyper-util + rustls client, plain `http://` on
//! loopback) against the testkit's mock server: normal and streamed answers, streams
//! re-cut into awkward pieces by a layer under the provider, every fault the mock scripts.
//!
//! These run on the real clock (a paused clock would jump past the connect timeout while the
//! runtime waits on sockets); nothing here asserts a duration.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use http_body::{Body, Frame};
use tower::{Service, ServiceExt};
use tower_llm_core::{FailureKind, UpstreamError};
use tower_llm_providers::{
    Anthropic, ChatAccumulator, ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest,
    FinishReason, Gemini, HttpClient, HttpClientConfig, Message, OpenAi, RequestBody,
    StreamTimeouts, Streaming,
};
use tower_llm_testkit::{
    BareError, Fault, FaultPlan, MockServer, RetryAfterForm, StreamError, embedding_for,
};

const REPLY: &str = "Hello from the mock, with ünïcode 日本語 and more words.";

/// A layer under the provider that re-cuts every body into pieces of 1, 2, 3, 5, 7 and 11
/// bytes, so frames and UTF-8 characters are split everywhere.
#[derive(Clone)]
struct Rechunk<S>(S);

struct RechunkBody<B> {
    inner: B,
    pending: Bytes,
    turn: usize,
}

impl<B> Body for RechunkBody<B>
where
    B: Body + Unpin,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        const SIZES: [usize; 6] = [1, 2, 3, 5, 7, 11];
        loop {
            if !self.pending.is_empty() {
                let size = SIZES[self.turn % SIZES.len()].min(self.pending.len());
                self.turn += 1;
                let piece = self.pending.split_to(size);
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => self.pending = data.copy_to_bytes(data.remaining()),
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S, B> Service<http::Request<RequestBody>> for Rechunk<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    type Response = http::Response<RechunkBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let future = self.0.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|inner| RechunkBody {
                inner,
                pending: Bytes::new(),
                turn: 0,
            }))
        })
    }
}

fn client() -> HttpClient {
    HttpClientConfig::default().build().unwrap()
}

async fn server(plan: FaultPlan) -> MockServer {
    MockServer::start(plan.reply(REPLY)).await.unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Which {
    OpenAi,
    Anthropic,
    Gemini,
}

const ALL: [Which; 3] = [Which::OpenAi, Which::Anthropic, Which::Gemini];

/// One provider of each kind, over the given client, pointed at `server`.
#[derive(Clone)]
enum Any<S> {
    OpenAi(OpenAi<S>),
    Anthropic(Anthropic<S>),
    Gemini(Gemini<S>),
}

fn provider<S>(which: Which, server: &MockServer, client: S, timeouts: StreamTimeouts) -> Any<S> {
    let base = server.base_url();
    match which {
        Which::OpenAi => Any::OpenAi(
            OpenAi::compatible(format!("{base}/v1"))
                .api_key("sk-openai-test")
                .stream_timeouts(timeouts)
                .build_with(client)
                .unwrap(),
        ),
        Which::Anthropic => Any::Anthropic(
            Anthropic::builder()
                .base_url(format!("{base}/v1"))
                .api_key("sk-ant-test")
                .stream_timeouts(timeouts)
                .build_with(client)
                .unwrap(),
        ),
        Which::Gemini => Any::Gemini(
            Gemini::builder()
                .base_url(format!("{base}/v1beta"))
                .api_key("AIza-test")
                .stream_timeouts(timeouts)
                .build_with(client)
                .unwrap(),
        ),
    }
}

fn request(which: Which) -> ChatRequest {
    let model = match which {
        Which::OpenAi => "gpt-4o-mini",
        Which::Anthropic => "claude-sonnet-4-5",
        Which::Gemini => "gemini-2.5-flash",
    };
    ChatRequest::new(
        model,
        vec![Message::system("Be brief."), Message::user("Say hello")],
    )
    .max_tokens(64)
}

impl<S, B> Any<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<B>> + Clone,
    S::Error: Into<tower_llm_core::BoxError>,
    B: Body,
    B::Error: Into<tower_llm_core::BoxError>,
{
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, UpstreamError> {
        match self.clone() {
            Any::OpenAi(s) => s.oneshot(request).await,
            Any::Anthropic(s) => s.oneshot(request).await,
            Any::Gemini(s) => s.oneshot(request).await,
        }
    }

    /// The stream's items, or the error that came before any stream.
    async fn stream(
        &self,
        request: ChatRequest,
    ) -> Result<Vec<Result<ChatChunk, UpstreamError>>, UpstreamError> {
        let request = Streaming(request);
        let stream = match self.clone() {
            Any::OpenAi(s) => s.oneshot(request).await?,
            Any::Anthropic(s) => s.oneshot(request).await?,
            Any::Gemini(s) => s.oneshot(request).await?,
        };
        Ok(stream.collect().await)
    }
}

#[tokio::test]
async fn normal_answers() {
    let server = server(FaultPlan::healthy()).await;
    for which in ALL {
        let service = provider(which, &server, client(), StreamTimeouts::none());
        let answer = service.chat(request(which)).await.unwrap();
        assert_eq!(answer.content, REPLY, "{which:?}");
        assert_eq!(answer.finish_reason, Some(FinishReason::Stop), "{which:?}");
        let usage = answer.usage.unwrap();
        assert!(
            usage.input_tokens > 0 && usage.output_tokens > 0,
            "{which:?}: {usage:?}"
        );
    }
    let counters = server.counters();
    assert_eq!(counters.requests, 3);
    assert_eq!(counters.key("sk-openai-test"), 1);
    assert_eq!(counters.key("sk-ant-test"), 1);
    assert_eq!(counters.key("AIza-test"), 1);
}

#[tokio::test]
async fn streams_recut_at_awkward_boundaries() {
    let server = server(FaultPlan::healthy()).await;
    for which in ALL {
        for service in [provider(
            which,
            &server,
            Rechunk(client()),
            StreamTimeouts::none(),
        )] {
            let items = service.stream(request(which)).await.unwrap();
            assert!(items.len() > 3, "{which:?}: several chunks, got {items:?}");
            let mut acc = ChatAccumulator::default();
            for item in &items {
                acc.push(item.as_ref().unwrap());
            }
            let answer = acc.finish();
            assert_eq!(answer.content, REPLY, "{which:?}");
            assert_eq!(answer.finish_reason, Some(FinishReason::Stop), "{which:?}");
            assert!(answer.usage.is_some(), "{which:?}");
        }
        // And the plain client, unsplit.
        let items = provider(which, &server, client(), StreamTimeouts::none())
            .stream(request(which))
            .await
            .unwrap();
        assert!(items.iter().all(Result::is_ok), "{which:?}");
    }
}

#[tokio::test]
async fn each_error_status() {
    let cases = [
        (400, FailureKind::BadRequest),
        (401, FailureKind::Unauthorized),
        (403, FailureKind::Forbidden),
        (404, FailureKind::NotFound),
        (429, FailureKind::RateLimited),
        (500, FailureKind::ServerError),
        (503, FailureKind::Overloaded),
        (529, FailureKind::Overloaded),
    ];
    let server = server(FaultPlan::healthy()).await;
    for which in ALL {
        let service = provider(which, &server, client(), StreamTimeouts::none());
        for (status, kind) in cases {
            server.set_plan(
                FaultPlan::healthy()
                    .reply(REPLY)
                    .script([Some(Fault::Status(status)), Some(Fault::Status(status))]),
            );
            let error = service.chat(request(which)).await.unwrap_err();
            assert_eq!(error.kind(), kind, "{which:?} {status}: {error}");
            assert_eq!(
                error.status().map(|s| s.as_u16()),
                Some(status),
                "{which:?}"
            );
            assert!(error.body().is_some(), "{which:?} {status}: raw body kept");
            let error = service.stream(request(which)).await.unwrap_err();
            assert_eq!(error.kind(), kind, "{which:?} {status} streaming");
        }
    }
}

#[tokio::test]
async fn retry_after_in_each_form() {
    let server = server(FaultPlan::healthy()).await;
    let forms = [
        RetryAfterForm::Seconds,
        RetryAfterForm::HttpDate,
        RetryAfterForm::Millis,
        RetryAfterForm::MsMillis,
    ];
    for which in ALL {
        let service = provider(which, &server, client(), StreamTimeouts::none());
        for form in forms {
            server.set_plan(FaultPlan::healthy().script([Some(Fault::RateLimited {
                retry_after: Duration::from_millis(2500),
                form,
            })]));
            let error = service.chat(request(which)).await.unwrap_err();
            assert_eq!(error.kind(), FailureKind::RateLimited, "{which:?} {form:?}");
            let after = error
                .retry_after()
                .unwrap_or_else(|| panic!("{which:?} {form:?}: no retry-after in {error}"));
            assert!(
                after <= Duration::from_secs(4) && after >= Duration::from_secs(1),
                "{which:?} {form:?}: {after:?}"
            );
        }
    }
}

#[tokio::test]
async fn quota_exhausted_and_overloaded() {
    let server = server(FaultPlan::healthy()).await;
    for which in ALL {
        let service = provider(which, &server, client(), StreamTimeouts::none());
        server.set_plan(FaultPlan::healthy().script([Some(Fault::QuotaExhausted)]));
        let error = service.chat(request(which)).await.unwrap_err();
        assert_eq!(
            error.kind(),
            FailureKind::QuotaExhausted,
            "{which:?}: {error}"
        );
        assert!(!error.kind().is_retryable() && error.kind().is_worth_trying_elsewhere());
        server.set_plan(FaultPlan::healthy().script([Some(Fault::Overloaded)]));
        let error = service.chat(request(which)).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::Overloaded, "{which:?}: {error}");
    }
}

#[tokio::test]
async fn in_stream_error_event() {
    let server = server(FaultPlan::healthy()).await;
    for which in ALL {
        server.set_plan(FaultPlan::healthy().reply(REPLY).script([Some(
            Fault::StreamErrorEvent {
                after_chunks: 2,
                error: StreamError::Overloaded,
            },
        )]));
        let items = provider(which, &server, Rechunk(client()), StreamTimeouts::none())
            .stream(request(which))
            .await
            .unwrap();
        let (last, chunks) = items.split_last().unwrap();
        assert!(chunks.iter().all(Result::is_ok), "{which:?}: {items:?}");
        assert!(
            chunks
                .iter()
                .any(|c| matches!(c, Ok(ChatChunk::Content(_)))),
            "{which:?}: content before the error"
        );
        let error = last.as_ref().unwrap_err();
        assert!(error.kind().is_retryable(), "{which:?}: {error}");
        assert!(error.status().is_none(), "{which:?}: came inside a 200");
    }
}

/// An error without the provider's error object, followed by the clean end (what proxies
/// and OpenAI-compatible servers send): an error, never a short answer taken for whole.
#[tokio::test]
async fn bare_in_stream_errors_followed_by_a_clean_end() {
    let server = server(FaultPlan::healthy()).await;
    for which in ALL {
        for shape in [
            BareError::Message,
            BareError::TypedMessage,
            BareError::ObjectError,
            BareError::Text,
        ] {
            server.set_plan(FaultPlan::healthy().reply(REPLY).script([Some(
                Fault::StreamBareError {
                    after_chunks: 2,
                    shape,
                },
            )]));
            let items = provider(which, &server, Rechunk(client()), StreamTimeouts::none())
                .stream(request(which))
                .await
                .unwrap();
            let (last, chunks) = items.split_last().unwrap();
            assert!(
                chunks.iter().all(Result::is_ok),
                "{which:?} {shape:?}: {items:?}"
            );
            assert!(
                !chunks.iter().any(|c| matches!(c, Ok(ChatChunk::Finish(_)))),
                "{which:?} {shape:?}: no clean finish: {items:?}"
            );
            let error = last
                .as_ref()
                .expect_err(&format!("{which:?} {shape:?} ended as a success"));
            assert!(
                error.message().contains("upstream failed mid-stream"),
                "{which:?} {shape:?}: {error}"
            );
            assert!(error.status().is_none(), "{which:?}: came inside a 200");
        }
    }
}

#[tokio::test]
async fn cut_stream_and_dropped_connection() {
    let server = server(FaultPlan::healthy()).await;
    for which in ALL {
        let service = provider(which, &server, client(), StreamTimeouts::none());
        server.set_plan(
            FaultPlan::healthy()
                .reply(REPLY)
                .script([Some(Fault::CutStream { after_chunks: 2 })]),
        );
        let items = service.stream(request(which)).await.unwrap();
        let error = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!(error.kind(), FailureKind::Transport, "{which:?}: {error}");

        server.set_plan(FaultPlan::healthy().script([Some(Fault::DropConnection)]));
        let error = service.chat(request(which)).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::Transport, "{which:?}: {error}");
        assert!(
            std::error::Error::source(&error).is_some(),
            "{which:?}: the hyper error is kept"
        );
    }
}

#[tokio::test]
async fn malformed_and_html_bodies() {
    let server = server(FaultPlan::healthy()).await;
    for which in ALL {
        let service = provider(which, &server, client(), StreamTimeouts::none());
        server.set_plan(FaultPlan::healthy().script([Some(Fault::MalformedJson)]));
        let error = service.chat(request(which)).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::ServerError, "{which:?}: {error}");
        assert!(
            error.message().contains("not valid JSON"),
            "{which:?}: {error}"
        );

        server.set_plan(FaultPlan::healthy().script([Some(Fault::MalformedJson)]));
        let items = service.stream(request(which)).await.unwrap();
        let error = items.last().unwrap().as_ref().unwrap_err();
        assert!(
            error.message().contains("not valid JSON"),
            "{which:?}: {error}"
        );

        server.set_plan(
            FaultPlan::healthy().script([Some(Fault::HtmlError), Some(Fault::HtmlError)]),
        );
        let error = service.chat(request(which)).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::ServerError, "{which:?}");
        assert!(
            error.message().starts_with("HTML error page"),
            "{which:?}: {error}"
        );
        let error = service.stream(request(which)).await.unwrap_err();
        assert!(
            error.message().starts_with("HTML error page"),
            "{which:?}: {error}"
        );
    }
}

#[tokio::test]
async fn stalled_stream_times_out() {
    let server = server(FaultPlan::healthy()).await;
    for which in ALL {
        server.set_plan(
            FaultPlan::healthy()
                .reply(REPLY)
                .script([Some(Fault::StallStream { after_chunks: 1 })]),
        );
        let timeouts = StreamTimeouts::none().between_chunks(Duration::from_millis(300));
        let items = provider(which, &server, client(), timeouts)
            .stream(request(which))
            .await
            .unwrap();
        let error = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!(error.kind(), FailureKind::Timeout, "{which:?}: {error}");
    }
}

#[tokio::test]
async fn embeddings_over_http() {
    let server = server(FaultPlan::healthy()).await;
    let service = OpenAi::compatible(format!("{}/v1", server.base_url()))
        .build_with(client())
        .unwrap();
    let request = EmbeddingRequest {
        dimensions: Some(8),
        ..EmbeddingRequest::new(
            "text-embedding-3-small",
            vec!["alpha".into(), "beta".into()],
        )
    };
    let answer = service.oneshot(request).await.unwrap();
    assert_eq!(answer.embeddings.len(), 2);
    assert_eq!(
        answer.embeddings[0],
        embedding_for("alpha", answer.embeddings[0].len())
    );
    assert_eq!(
        answer.embeddings[1],
        embedding_for("beta", answer.embeddings[1].len())
    );
}

#[tokio::test]
async fn connection_refused_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let service = OpenAi::compatible(format!("http://127.0.0.1:{port}/v1"))
        .build_with(client())
        .unwrap();
    let error = service.oneshot(request(Which::OpenAi)).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Transport, "{error}");
}
