//! The Bedrock pieces end to end over real HTTP against the testkit's Bedrock routes: a
//! request encoded and SigV4-signed, sent with the crate's client, its answer, stream and
//! errors decoded.

#![cfg(feature = "bedrock")]
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use bytes::Bytes;
use http_body_util::BodyExt;
use tower_llm_core::{FailureKind, UpstreamError};
use tower_llm_providers::bedrock::eventstream::EventStreamDecoder;
use tower_llm_providers::bedrock::sign::{AwsCredentials, SigV4Signer};
use tower_llm_providers::bedrock::wire::{
    ConverseStreamDecoder, converse_path, decode_error, decode_response, encode_request,
};
use tower_llm_providers::{
    ChatAccumulator, ChatRequest, ChatResponse, FinishReason, HttpClient, HttpClientConfig,
    Message, RequestBody,
};
use tower_llm_testkit::{Fault, FaultPlan, MockServer, Route, StreamError};

const MODEL: &str = "amazon.nova-micro-v1:0";
const ACCESS_KEY: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn signer() -> SigV4Signer {
    SigV4Signer::new(AwsCredentials::new(ACCESS_KEY, SECRET), "us-east-1").unwrap()
}

/// The request a Bedrock provider sends: the Converse body, POSTed to the model's path,
/// signed last.
fn signed(
    server: &MockServer,
    signer: &SigV4Signer,
    request: &ChatRequest,
    stream: bool,
) -> http::Request<RequestBody> {
    let body = encode_request(request);
    let mut http = http::Request::post(server.url(&converse_path(&request.model, stream)))
        .header("content-type", "application/json")
        .header(
            "accept",
            if stream {
                "application/vnd.amazon.eventstream"
            } else {
                "application/json"
            },
        )
        .body(())
        .unwrap();
    signer.sign(&mut http, &body).unwrap();
    http.map(|()| RequestBody::new(Bytes::from(body)))
}

fn client() -> HttpClient {
    HttpClientConfig::default().build().unwrap()
}

fn hello() -> ChatRequest {
    ChatRequest::new(
        MODEL,
        vec![Message::system("Be brief."), Message::user("Hi there")],
    )
    .max_tokens(64)
}

/// Sends a non-streamed call and decodes its answer or error.
async fn converse(
    server: &MockServer,
    request: &ChatRequest,
) -> Result<ChatResponse, UpstreamError> {
    let response = client()
        .request(signed(server, &signer(), request, false))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    if parts.status.is_success() {
        decode_response(&body)
    } else {
        Err(decode_error(parts.status, &parts.headers, &body))
    }
}

/// Streams a call, feeding each network read to the framing decoder as it arrives; the
/// answer, or the first error (framing, exception, cut, incomplete stream).
async fn converse_stream(
    server: &MockServer,
    request: &ChatRequest,
) -> Result<ChatResponse, UpstreamError> {
    let response = client()
        .request(signed(server, &signer(), request, true))
        .await
        .unwrap();
    let (parts, mut body) = response.into_parts();
    if !parts.status.is_success() {
        let body = body.collect().await.unwrap().to_bytes();
        return Err(decode_error(parts.status, &parts.headers, &body));
    }
    assert_eq!(
        parts.headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let mut frames = EventStreamDecoder::new();
    let mut events = ConverseStreamDecoder::default();
    let mut chunks = VecDeque::new();
    let mut answer = ChatAccumulator::default();
    let framing = |e: tower_llm_providers::bedrock::eventstream::EventStreamError| {
        UpstreamError::new(FailureKind::ServerError, e.to_string())
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UpstreamError::new(FailureKind::Transport, e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let mut input = &data[..];
        while let Some(message) = frames.next_message(&mut input).map_err(framing)? {
            events.message(&message, &mut chunks)?;
            chunks.drain(..).for_each(|chunk| answer.push(&chunk));
        }
    }
    frames.finish().map_err(framing)?;
    events.finish()?;
    Ok(answer.finish())
}

#[tokio::test]
async fn a_signed_converse_call_is_answered_and_counted_by_access_key() {
    let server = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let answer = converse(&server, &hello()).await.unwrap();
    assert_eq!(answer.content, "mock: Hi there");
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert!(answer.usage.unwrap().input_tokens > 0);
    let counters = server.counters();
    assert_eq!(counters.route(Route::BedrockConverse), 1);
    assert_eq!(counters.key(ACCESS_KEY), 1);
    let received = &server.received()[0];
    assert_eq!(received.body, Bytes::from(encode_request(&hello())));
    let authorization = received.headers["authorization"].to_str().unwrap();
    assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
    assert!(authorization.contains("/us-east-1/bedrock/aws4_request, SignedHeaders="));
    assert!(received.headers.contains_key("x-amz-date"));
    assert!(!authorization.contains(SECRET));
}

#[tokio::test]
async fn a_session_token_is_sent_and_signed() {
    let server = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let signer = SigV4Signer::new(
        AwsCredentials::new(ACCESS_KEY, SECRET).session_token("FQoGZXIvYXdzEXAMPLETOKEN"),
        "us-east-1",
    )
    .unwrap();
    let response = client()
        .request(signed(&server, &signer, &hello(), false))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = &server.received()[0];
    assert_eq!(
        received.headers["x-amz-security-token"],
        "FQoGZXIvYXdzEXAMPLETOKEN"
    );
    assert!(
        received.headers["authorization"]
            .to_str()
            .unwrap()
            .contains("x-amz-security-token")
    );
}

#[tokio::test]
async fn a_stream_is_decoded_read_by_read() {
    let server = MockServer::start(FaultPlan::healthy().reply("one two three four five"))
        .await
        .unwrap();
    let answer = converse_stream(&server, &hello()).await.unwrap();
    assert_eq!(answer.content, "one two three four five");
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    let usage = answer.usage.unwrap();
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0);
    assert_eq!(server.counters().route(Route::BedrockConverseStream), 1);
}

#[tokio::test]
async fn errors_and_in_stream_exceptions_are_classified() {
    let plan = FaultPlan::healthy().script([
        Some(Fault::Status(429)),
        Some(Fault::Overloaded),
        Some(Fault::ContextLengthExceeded),
        Some(Fault::StreamErrorEvent {
            after_chunks: 1,
            error: StreamError::Overloaded,
        }),
    ]);
    let server = MockServer::start(plan).await.unwrap();
    let throttled = converse(&server, &hello()).await.unwrap_err();
    assert_eq!(throttled.kind(), FailureKind::RateLimited);
    assert_eq!(throttled.code(), Some("ThrottlingException"));
    assert!(throttled.request_id().unwrap().starts_with("req_mock"));
    let overloaded = converse(&server, &hello()).await.unwrap_err();
    assert_eq!(overloaded.kind(), FailureKind::Overloaded);
    let too_long = converse(&server, &hello()).await.unwrap_err();
    assert_eq!(too_long.kind(), FailureKind::ContextLengthExceeded);
    let in_stream = converse_stream(&server, &hello()).await.unwrap_err();
    assert_eq!(in_stream.kind(), FailureKind::Overloaded);
    assert_eq!(in_stream.code(), Some("serviceUnavailableException"));
}

#[tokio::test]
async fn a_refused_key_is_unauthorized() {
    let server = MockServer::start(FaultPlan::healthy().api_keys(["AKIDOTHER"]))
        .await
        .unwrap();
    let refused = converse(&server, &hello()).await.unwrap_err();
    assert_eq!(refused.kind(), FailureKind::Unauthorized);
    assert_eq!(refused.status(), Some(http::StatusCode::FORBIDDEN));
    assert_eq!(refused.code(), Some("UnrecognizedClientException"));
}

#[tokio::test]
async fn cut_and_garbled_streams_are_errors_never_short_answers() {
    let plan = FaultPlan::healthy().script([
        Some(Fault::CutStream { after_chunks: 1 }),
        Some(Fault::MalformedJson),
    ]);
    let server = MockServer::start(plan).await.unwrap();
    let cut = converse_stream(&server, &hello()).await.unwrap_err();
    assert_eq!(cut.kind(), FailureKind::Transport);
    let garbled = converse_stream(&server, &hello()).await.unwrap_err();
    assert_eq!(garbled.kind(), FailureKind::ServerError);
    assert!(garbled.message().contains("not valid JSON"));
}

// ---- the Bedrock provider service ------------------------------------------------------

mod service {
    use std::sync::{Arc, Mutex};

    use futures_util::StreamExt;
    use tower::ServiceExt;
    use tower_llm_core::{ClassifyResponse, FailureKind, StreamEnd};
    use tower_llm_providers::bedrock::{AwsCredentials, Bedrock};
    use tower_llm_providers::{ChatChunk, Dialect, FinishReason, HttpClient, TokenCounting};
    use tower_llm_testkit::{Fault, FaultPlan, MockServer, Route, StreamError};

    use super::{ACCESS_KEY, SECRET, client, hello};

    fn bedrock(server: &MockServer) -> Bedrock<HttpClient> {
        Bedrock::builder()
            .base_url(server.url(""))
            .region("us-east-1")
            .credentials(
                AwsCredentials::new(ACCESS_KEY, SECRET).session_token("FQoGZXIvYXdzEXAMPLE"),
            )
            .build_with(client())
            .unwrap()
    }

    #[tokio::test]
    async fn whole_answers_are_signed_decoded_and_carry_their_http_facts() {
        let server = MockServer::start(FaultPlan::healthy()).await.unwrap();
        let answer = bedrock(&server).oneshot(hello()).await.unwrap();
        assert_eq!(answer.content, "mock: Hi there");
        assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
        assert!(answer.usage.unwrap().output_tokens > 0);
        assert_eq!(answer.meta.dialect, Some(Dialect::Bedrock));
        assert_eq!(
            answer.meta.token_counting(),
            Some(TokenCounting::ReservedAtAdmission)
        );
        assert!(answer.meta.request_id.is_some());
        assert_eq!(server.counters().key(ACCESS_KEY), 1);
        let received = &server.received()[0];
        assert!(
            received.headers["authorization"]
                .to_str()
                .unwrap()
                .starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        );
        assert_eq!(
            received.headers["x-amz-security-token"],
            "FQoGZXIvYXdzEXAMPLE"
        );
    }

    #[tokio::test]
    async fn a_stream_ends_with_its_usage_and_its_end_signal() {
        let server = MockServer::start(FaultPlan::healthy()).await.unwrap();
        let service = bedrock(&server);
        let mut stream = service.clone().oneshot(hello().streaming()).await.unwrap();
        let ended = Arc::new(Mutex::new(None));
        let record = Arc::clone(&ended);
        stream
            .end_signal()
            .unwrap()
            .on_end(move |end| *record.lock().unwrap() = Some(end.clone()));
        let mut text = String::new();
        let mut finish = None;
        while let Some(chunk) = stream.next().await {
            match chunk.unwrap() {
                ChatChunk::Content(t) => text.push_str(&t),
                ChatChunk::Finish(reason) => finish = Some(reason),
                _ => {}
            }
        }
        assert_eq!(text, "mock: Hi there");
        assert_eq!(finish, Some(FinishReason::Stop));
        assert!(stream.usage().is_some());
        assert!(matches!(
            *ended.lock().unwrap(),
            Some(StreamEnd::Completed { usage: Some(_) })
        ));
        assert_eq!(server.counters().route(Route::BedrockConverseStream), 1);
        assert_eq!(
            server.received()[0].headers["accept"],
            "application/vnd.amazon.eventstream"
        );
    }

    #[tokio::test]
    async fn throttling_in_and_out_of_streams_and_cut_streams_are_classified() {
        let server = MockServer::start(FaultPlan::healthy().script([
            Some(Fault::RateLimited {
                retry_after: std::time::Duration::from_secs(2),
                form: Default::default(),
            }),
            Some(Fault::StreamErrorEvent {
                after_chunks: 1,
                error: StreamError::RateLimited,
            }),
            Some(Fault::CutStream { after_chunks: 1 }),
        ]))
        .await
        .unwrap();
        let service = bedrock(&server);
        let error = service.clone().oneshot(hello()).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::RateLimited);
        assert_eq!(error.retry_after(), Some(std::time::Duration::from_secs(2)));
        assert!(!format!("{error:?}").contains("FQoGZXIvYXdzEXAMPLE"));

        for expected in [FailureKind::RateLimited, FailureKind::Transport] {
            let stream = service.clone().oneshot(hello().streaming()).await.unwrap();
            let items: Vec<_> = stream.collect().await;
            let error = items.into_iter().find_map(Result::err).unwrap();
            assert_eq!(error.kind(), expected, "{error}");
        }
    }
}
