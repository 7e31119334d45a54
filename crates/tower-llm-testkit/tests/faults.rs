//! Each fault of a plan, seen from a client over real HTTP.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::Value;
use tower_llm_core::{BoxError, Classify, DefaultClassifier, FailureKind, Outcome};
use tower_llm_testkit::{
    BareError, Fault, FaultPlan, MockServer, Quota, RetryAfterForm, Route, StreamError, TestClient,
    anthropic_messages, anthropic_messages_stream, gemini_generate, gemini_stream, openai_chat,
    openai_chat_stream, openai_embeddings,
};

fn json_of(response: &http::Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).expect("JSON body")
}

fn classify(result: &Result<http::Response<Bytes>, BoxError>) -> Outcome {
    DefaultClassifier.classify(result.as_ref())
}

async fn always(fault: Fault) -> MockServer {
    MockServer::start(FaultPlan::healthy().fault(fault, 1.0))
        .await
        .unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Api {
    OpenAi,
    Anthropic,
    Gemini,
}

fn request(api: Api, base: &str) -> http::Request<Bytes> {
    match api {
        Api::OpenAi => openai_chat(base, "gpt", "hi"),
        Api::Anthropic => anthropic_messages(base, "claude", "hi"),
        Api::Gemini => gemini_generate(base, "gemini", "hi"),
    }
}

#[tokio::test]
async fn statuses_answer_with_each_providers_error_body() {
    let client = TestClient::new();
    for (status, kind) in [
        (400, FailureKind::BadRequest),
        (401, FailureKind::Unauthorized),
        (404, FailureKind::NotFound),
        (429, FailureKind::RateLimited),
        (500, FailureKind::ServerError),
        (503, FailureKind::Overloaded),
        (529, FailureKind::Overloaded),
    ] {
        let server = always(Fault::Status(status)).await;
        for api in [Api::OpenAi, Api::Anthropic, Api::Gemini] {
            let result = client.send(request(api, &server.base_url())).await;
            assert_eq!(classify(&result).kind(), Some(kind), "{status} {api:?}");
            let response = result.unwrap();
            assert_eq!(response.status(), status, "{api:?}");
            assert_eq!(response.headers()["content-type"], "application/json");
            let body = json_of(&response);
            match api {
                Api::OpenAi => {
                    let error = &body["error"];
                    assert!(error["message"].is_string());
                    assert!(error.get("param").is_some() && error.get("code").is_some());
                    let expected = match status {
                        400 | 401 | 404 => "invalid_request_error",
                        429 => "requests",
                        _ => "server_error",
                    };
                    assert_eq!(error["type"], expected, "{status}");
                }
                Api::Anthropic => {
                    assert_eq!(body["type"], "error");
                    let expected = match status {
                        400 => "invalid_request_error",
                        401 => "authentication_error",
                        404 => "not_found_error",
                        429 => "rate_limit_error",
                        503 | 529 => "overloaded_error",
                        _ => "api_error",
                    };
                    assert_eq!(body["error"]["type"], expected, "{status}");
                }
                Api::Gemini => {
                    assert_eq!(body["error"]["code"], status);
                    let expected = match status {
                        400 => "INVALID_ARGUMENT",
                        401 => "UNAUTHENTICATED",
                        404 => "NOT_FOUND",
                        429 => "RESOURCE_EXHAUSTED",
                        503 | 529 => "UNAVAILABLE",
                        _ => "INTERNAL",
                    };
                    assert_eq!(body["error"]["status"], expected, "{status}");
                }
            }
        }
    }
}

#[tokio::test]
async fn rate_limited_sends_the_hint_in_each_form() {
    let client = TestClient::new();
    let after = Duration::from_millis(2500);
    for form in [
        RetryAfterForm::Seconds,
        RetryAfterForm::HttpDate,
        RetryAfterForm::Millis,
        RetryAfterForm::MsMillis,
    ] {
        let server = always(Fault::RateLimited {
            retry_after: after,
            form,
        })
        .await;
        let result = client.send(openai_chat(&server.base_url(), "m", "x")).await;
        let outcome = classify(&result);
        assert_eq!(outcome.kind(), Some(FailureKind::RateLimited));
        let hint = outcome.retry_after().unwrap();
        let response = result.unwrap();
        let headers = response.headers();
        match form {
            RetryAfterForm::Seconds => {
                assert_eq!(headers["retry-after"], "3");
                assert_eq!(hint, Duration::from_secs(3));
            }
            RetryAfterForm::HttpDate => {
                let date = headers["retry-after"].to_str().unwrap();
                assert!(date.ends_with(" GMT"), "{date}");
                assert!(hint >= Duration::from_secs(2) && hint <= Duration::from_secs(5));
            }
            RetryAfterForm::Millis => {
                assert_eq!(headers["retry-after-ms"], "2500");
                assert!(headers.get("retry-after").is_none());
                assert_eq!(hint, after);
            }
            RetryAfterForm::MsMillis => {
                assert_eq!(headers["x-ms-retry-after-ms"], "2500");
                assert_eq!(hint, after);
            }
        }
        assert_eq!(json_of(&response)["error"]["code"], "rate_limit_exceeded");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
        assert!(headers.contains_key("x-ratelimit-limit-requests"));
        assert!(headers.contains_key("x-ratelimit-reset-requests"));
    }
}

#[tokio::test]
async fn rate_limited_on_anthropic_and_gemini() {
    let client = TestClient::new();
    let server = always(Fault::RateLimited {
        retry_after: Duration::from_secs(7),
        form: RetryAfterForm::Seconds,
    })
    .await;
    let response = client
        .send(anthropic_messages(&server.base_url(), "c", "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(json_of(&response)["error"]["type"], "rate_limit_error");
    assert_eq!(
        response.headers()["anthropic-ratelimit-requests-remaining"],
        "0"
    );
    let reset = response.headers()["anthropic-ratelimit-requests-reset"]
        .to_str()
        .unwrap();
    assert!(
        reset.len() == 20 && reset.ends_with('Z') && reset.contains('T'),
        "{reset}"
    );

    let response = client
        .send(gemini_generate(&server.base_url(), "g", "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let error = &json_of(&response)["error"];
    assert_eq!(error["status"], "RESOURCE_EXHAUSTED");
    let retry_info = error["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .unwrap();
    assert_eq!(retry_info["retryDelay"], "7s");
}

#[tokio::test]
async fn quota_exhausted_and_overloaded_per_provider() {
    let client = TestClient::new();
    let server = always(Fault::QuotaExhausted).await;
    let openai = client
        .send(openai_chat(&server.base_url(), "m", "x"))
        .await
        .unwrap();
    assert_eq!(openai.status(), 429);
    assert!(openai.headers().get("retry-after").is_none());
    assert_eq!(json_of(&openai)["error"]["type"], "insufficient_quota");
    assert_eq!(json_of(&openai)["error"]["code"], "insufficient_quota");
    let gemini = client
        .send(gemini_generate(&server.base_url(), "g", "x"))
        .await
        .unwrap();
    assert_eq!(gemini.status(), 429);
    let details = json_of(&gemini)["error"]["details"].to_string();
    assert!(
        details.contains("QuotaFailure") && details.contains("PerDay"),
        "{details}"
    );
    let anthropic = client
        .send(anthropic_messages(&server.base_url(), "c", "x"))
        .await
        .unwrap();
    assert_eq!(anthropic.status(), 400);
    assert!(
        json_of(&anthropic)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("credit balance")
    );

    let server = always(Fault::Overloaded).await;
    let anthropic = client
        .send(anthropic_messages(&server.base_url(), "c", "x"))
        .await;
    assert_eq!(classify(&anthropic).kind(), Some(FailureKind::Overloaded));
    let anthropic = anthropic.unwrap();
    assert_eq!(anthropic.status(), 529);
    assert_eq!(json_of(&anthropic)["error"]["type"], "overloaded_error");
    let openai = client
        .send(openai_chat(&server.base_url(), "m", "x"))
        .await
        .unwrap();
    assert_eq!(openai.status(), 503);
    let gemini = client
        .send(gemini_generate(&server.base_url(), "g", "x"))
        .await
        .unwrap();
    assert_eq!(gemini.status(), 503);
    assert_eq!(json_of(&gemini)["error"]["status"], "UNAVAILABLE");
}

#[tokio::test]
async fn dropped_connection_is_a_transport_error() {
    let server = always(Fault::DropConnection).await;
    let client = TestClient::new();
    for _ in 0..2 {
        let result = client.send(openai_chat(&server.base_url(), "m", "x")).await;
        assert_eq!(classify(&result).kind(), Some(FailureKind::Transport));
        let error = result.unwrap_err();
        let upstream = error
            .downcast_ref::<tower_llm_core::UpstreamError>()
            .unwrap();
        assert!(std::error::Error::source(upstream).is_some());
    }
    let counters = server.counters();
    assert_eq!(counters.dropped, 2);
    assert_eq!(counters.requests, 2);
    assert!(counters.by_status.is_empty());
}

#[tokio::test]
async fn html_error_page_and_malformed_json() {
    let client = TestClient::new();
    let server = always(Fault::HtmlError).await;
    let result = client.send(openai_chat(&server.base_url(), "m", "x")).await;
    assert_eq!(classify(&result).kind(), Some(FailureKind::ServerError));
    let response = result.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["content-type"], "text/html");
    let page = String::from_utf8(response.body().to_vec()).unwrap();
    assert!(page.contains("<h1>502 Bad Gateway</h1>") && page.contains("nginx"));

    let server = always(Fault::MalformedJson).await;
    for request in [
        openai_chat(&server.base_url(), "m", "x"),
        anthropic_messages(&server.base_url(), "m", "x"),
        gemini_generate(&server.base_url(), "m", "x"),
        openai_embeddings(&server.base_url(), &["x"]),
    ] {
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(!response.body().is_empty());
        assert!(serde_json::from_slice::<Value>(response.body()).is_err());
    }
    let response = client
        .send(openai_chat_stream(&server.base_url(), "m", "x y"))
        .await
        .unwrap();
    let text = String::from_utf8(response.body().to_vec()).unwrap();
    let broken = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter(|d| serde_json::from_str::<Value>(d).is_err())
        .count();
    assert_eq!(broken, 1, "{text}");
}

#[tokio::test]
async fn cut_stream_ends_in_a_transport_error_after_its_chunks() {
    let server = always(Fault::CutStream { after_chunks: 2 }).await;
    let client = TestClient::new();
    let result = client
        .send(openai_chat_stream(&server.base_url(), "m", "a b c d e"))
        .await;
    assert_eq!(classify(&result).kind(), Some(FailureKind::Transport));

    let response = client
        .send_streaming(anthropic_messages_stream(
            &server.base_url(),
            "c",
            "a b c d e",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = String::new();
    let end = loop {
        match TestClient::next_chunk(&mut body).await {
            Ok(Some(chunk)) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    let error = end.unwrap_err();
    assert_eq!(
        tower_llm_core::classify_dyn_error(&*error).kind,
        FailureKind::Transport
    );
    assert_eq!(text.matches("event: content_block_delta").count(), 2);
    assert!(text.contains("event: message_start"));
    assert!(!text.contains("message_stop"));
}

#[tokio::test]
async fn stream_error_event_after_chunks() {
    let server = always(Fault::StreamErrorEvent {
        after_chunks: 1,
        error: StreamError::Overloaded,
    })
    .await;
    let client = TestClient::new();
    let text = |r: http::Response<Bytes>| String::from_utf8(r.body().to_vec()).unwrap();

    let openai = text(
        client
            .send(openai_chat_stream(&server.base_url(), "m", "a b c"))
            .await
            .unwrap(),
    );
    let last = openai.trim_end().rsplit("\n\n").next().unwrap();
    let error: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert!(!openai.contains("[DONE]"));
    assert_eq!(
        openai.matches("\"content\":\"").count(),
        2,
        "role chunk + 1 word"
    );

    let anthropic = text(
        client
            .send(anthropic_messages_stream(&server.base_url(), "c", "a b c"))
            .await
            .unwrap(),
    );
    assert!(anthropic.contains("event: error\ndata: {"));
    assert!(anthropic.contains("overloaded_error"));
    assert!(!anthropic.contains("message_stop"));

    let gemini = text(
        client
            .send(gemini_stream(&server.base_url(), "g", "a b c"))
            .await
            .unwrap(),
    );
    assert!(gemini.contains("\"UNAVAILABLE\""));
    assert!(!gemini.contains("STOP"));

    // Not streamed: answered like an overloaded provider.
    let plain = client
        .send(anthropic_messages(&server.base_url(), "c", "x"))
        .await
        .unwrap();
    assert_eq!(plain.status(), 529);
}

/// The last event of each provider's stream under `fault`, as JSON: what a client's decoder
/// reads as the stream's error.
async fn last_events(fault: Fault) -> [Value; 3] {
    let server = always(fault).await;
    let client = TestClient::new();
    let base = server.base_url();
    let mut last = Vec::new();
    for request in [
        openai_chat_stream(&base, "m", "a b c"),
        anthropic_messages_stream(&base, "c", "a b c"),
        gemini_stream(&base, "g", "a b c"),
    ] {
        let body = client.send(request).await.unwrap().into_body();
        let text = String::from_utf8(body.to_vec()).unwrap();
        // The last `data:` payload (Gemini's SSE ends its lines with CRLF).
        let data = text.rsplit("data: ").next().unwrap();
        last.push(serde_json::from_str(data.trim_end()).unwrap());
    }
    last.try_into().unwrap()
}

#[tokio::test]
async fn stream_error_events_are_named_in_each_providers_words() {
    for (error, openai, anthropic, gemini) in [
        (
            StreamError::Overloaded,
            "server_error",
            "overloaded_error",
            "UNAVAILABLE",
        ),
        (
            StreamError::RateLimited,
            "requests",
            "rate_limit_error",
            "RESOURCE_EXHAUSTED",
        ),
        (
            StreamError::ServerError,
            "server_error",
            "api_error",
            "INTERNAL",
        ),
        (
            StreamError::InvalidRequest,
            "invalid_request_error",
            "invalid_request_error",
            "INVALID_ARGUMENT",
        ),
    ] {
        let fault = Fault::StreamErrorEvent {
            after_chunks: 1,
            error,
        };
        let [o, a, g] = last_events(fault).await;
        assert_eq!(o["error"]["type"], openai, "{error:?}: {o}");
        assert_eq!(a["type"], "error", "{error:?}: {a}");
        assert_eq!(a["error"]["type"], anthropic, "{error:?}: {a}");
        assert_eq!(g["error"]["status"], gemini, "{error:?}: {g}");
    }
    let [o, ..] = last_events(Fault::StreamErrorEvent {
        after_chunks: 1,
        error: StreamError::RateLimited,
    })
    .await;
    assert_eq!(o["error"]["code"], "rate_limit_exceeded");

    // In a plan file the error is named in snake case, and defaults to an overload.
    let plan = FaultPlan::from_json(
        r#"{"script": [{"stream_error_event": {"after_chunks": 2, "error": "rate_limited"}},
                       {"stream_error_event": {"after_chunks": 0}}]}"#,
    )
    .unwrap();
    let same = FaultPlan::healthy().script([
        Some(Fault::StreamErrorEvent {
            after_chunks: 2,
            error: StreamError::RateLimited,
        }),
        Some(Fault::StreamErrorEvent {
            after_chunks: 0,
            error: StreamError::Overloaded,
        }),
    ]);
    assert_eq!(plan, same);
}

#[tokio::test]
async fn a_bare_stream_error_is_followed_by_a_clean_end() {
    let text = |r: http::Response<Bytes>| String::from_utf8(r.body().to_vec()).unwrap();
    for (shape, written) in [
        (
            BareError::Message,
            "event: error\ndata: {\"message\":\"upstream failed mid-stream\"}",
        ),
        (
            BareError::TypedMessage,
            "data: {\"message\":\"upstream failed mid-stream\",\"type\":\"error\"}",
        ),
        (BareError::ObjectError, "\"object\":\"error\""),
        (
            BareError::Text,
            "event: error\ndata: upstream failed mid-stream",
        ),
    ] {
        let server = always(Fault::StreamBareError {
            after_chunks: 1,
            shape,
        })
        .await;
        let client = TestClient::new();
        let base = server.base_url();
        let openai = text(
            client
                .send(openai_chat_stream(&base, "m", "a b c"))
                .await
                .unwrap(),
        );
        let anthropic = text(
            client
                .send(anthropic_messages_stream(&base, "c", "a b c"))
                .await
                .unwrap(),
        );
        let gemini = text(
            client
                .send(gemini_stream(&base, "g", "a b c"))
                .await
                .unwrap(),
        )
        .replace("\r\n", "\n");
        for (name, body, end) in [
            ("openai", &openai, "data: [DONE]"),
            ("anthropic", &anthropic, "event: message_stop"),
            ("gemini", &gemini, "\"finishReason\":\"STOP\""),
        ] {
            let error = body
                .find(written)
                .unwrap_or_else(|| panic!("{shape:?} {name}: {body}"));
            let clean_end = body.rfind(end).unwrap_or_else(|| panic!("{name}: {body}"));
            assert!(
                error < clean_end,
                "{shape:?} {name}: the end follows: {body}"
            );
            assert!(!body[error..].contains("\"error\":{"), "{name}: {body}");
        }
        assert_eq!(
            openai.matches("\"content\":\"").count(),
            2,
            "role chunk + 1 word: {openai}"
        );
    }
    let plan = FaultPlan::from_json(
        r#"{"script": [{"stream_bare_error": {"after_chunks": 2, "shape": "object_error"}},
                       {"stream_bare_error": {"after_chunks": 0}}]}"#,
    )
    .unwrap();
    let same = FaultPlan::healthy().script([
        Some(Fault::StreamBareError {
            after_chunks: 2,
            shape: BareError::ObjectError,
        }),
        Some(Fault::StreamBareError {
            after_chunks: 0,
            shape: BareError::Message,
        }),
    ]);
    assert_eq!(plan, same);
}

#[tokio::test]
async fn a_stream_without_usage_ends_whole_with_no_usage() {
    let server = always(Fault::StreamWithoutUsage).await;
    let client = TestClient::new();
    let base = server.base_url();
    let text = |r: http::Response<Bytes>| String::from_utf8(r.body().to_vec()).unwrap();

    // OpenAI: asked for its usage chunk (stream_options.include_usage), sends none.
    let openai = text(
        client
            .send(openai_chat_stream(&base, "m", "a b c"))
            .await
            .unwrap(),
    );
    assert!(openai.trim_end().ends_with("data: [DONE]"), "{openai}");
    assert!(openai.contains("\"finish_reason\":\"stop\""), "{openai}");
    assert!(!openai.contains("\"usage\""), "{openai}");

    let anthropic = text(
        client
            .send(anthropic_messages_stream(&base, "c", "a b c"))
            .await
            .unwrap(),
    );
    assert!(anthropic.contains("event: message_stop"), "{anthropic}");
    assert!(
        anthropic.contains("\"stop_reason\":\"end_turn\""),
        "{anthropic}"
    );
    assert!(!anthropic.contains("usage"), "{anthropic}");

    let gemini = text(
        client
            .send(gemini_stream(&base, "g", "a b c"))
            .await
            .unwrap(),
    );
    assert!(gemini.contains("\"finishReason\":\"STOP\""), "{gemini}");
    assert!(!gemini.contains("usageMetadata"), "{gemini}");

    // Not streamed: answered normally, usage included.
    let plain = client.send(openai_chat(&base, "m", "x")).await.unwrap();
    let body: Value = serde_json::from_slice(plain.body()).unwrap();
    assert!(
        body["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );
    assert_eq!(
        FaultPlan::from_json(r#"{"script": ["stream_without_usage"]}"#).unwrap(),
        FaultPlan::healthy().script([Some(Fault::StreamWithoutUsage)])
    );
}

#[tokio::test(start_paused = true)]
async fn stalled_stream_stalls_in_virtual_time() {
    let server = always(Fault::StallStream { after_chunks: 2 }).await;
    let client = TestClient::new();
    let response = client
        .send_streaming(openai_chat_stream(&server.base_url(), "m", "a b c d"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut text = String::new();
    // The role chunk and two words arrive.
    while text.matches("data: ").count() < 3 {
        let chunk = TestClient::next_chunk(&mut body).await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let start = tokio::time::Instant::now();
    let next =
        tokio::time::timeout(Duration::from_secs(3600), TestClient::next_chunk(&mut body)).await;
    assert!(next.is_err(), "nothing more for an hour");
    assert!(start.elapsed() >= Duration::from_secs(3600));
    assert_eq!(text.matches("data: ").count(), 3);
    assert_eq!(server.counters().in_flight, 1);
    drop(body);
    let counters = server.wait_until(|c| c.in_flight == 0).await;
    assert_eq!(counters.cancelled, 1);
    assert_eq!(counters.completed, 0);
}

#[tokio::test(start_paused = true)]
async fn stalled_whole_body_times_out_in_the_client() {
    let server = always(Fault::StallStream { after_chunks: 0 }).await;
    let client = TestClient::new().timeout(Duration::from_secs(30));
    let start = tokio::time::Instant::now();
    let result = client
        .send(gemini_generate(&server.base_url(), "g", "x"))
        .await;
    assert_eq!(classify(&result).kind(), Some(FailureKind::Timeout));
    assert!(start.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn quota_refuses_past_the_limit_and_recovers_after_the_window() {
    let plan = FaultPlan::healthy().quota(Quota {
        requests_per_minute: 2,
        ..Quota::default()
    });
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    let base = server.base_url();

    let first = client.send(openai_chat(&base, "m", "1")).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(first.headers()["x-ratelimit-reset-requests"], "1m0s");

    tokio::time::sleep(Duration::from_secs(20)).await;
    let second = client.send(openai_chat(&base, "m", "2")).await.unwrap();
    assert_eq!(second.headers()["x-ratelimit-remaining-requests"], "0");

    let refused = client.send(openai_chat(&base, "m", "3")).await;
    let outcome = classify(&refused);
    assert_eq!(outcome.kind(), Some(FailureKind::RateLimited));
    // The first request leaves the window 40 s from now.
    assert_eq!(outcome.retry_after(), Some(Duration::from_secs(40)));
    let refused = refused.unwrap();
    assert_eq!(json_of(&refused)["error"]["code"], "rate_limit_exceeded");
    assert_eq!(refused.headers()["x-ratelimit-remaining-requests"], "0");

    tokio::time::sleep(Duration::from_secs(40)).await;
    let after = client.send(openai_chat(&base, "m", "4")).await.unwrap();
    assert_eq!(after.status(), 200);
    let counters = server.counters();
    assert_eq!((counters.status(200), counters.status(429)), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn token_quota_uses_cores_estimate() {
    let probe = openai_chat("http://x", "m", "a prompt of some length");
    let cost = tower_llm_core::estimate_body_tokens(probe.body());
    let plan = FaultPlan::healthy().quota(Quota {
        tokens_per_minute: cost * 2 + cost / 2,
        ..Quota::default()
    });
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    let request = || openai_chat(&server.base_url(), "m", "a prompt of some length");
    for expected_left in [cost + cost / 2, cost / 2] {
        let response = client.send(request()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-ratelimit-remaining-tokens"],
            expected_left.to_string().as_str()
        );
    }
    let refused = client.send(request()).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "60");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(client.send(request()).await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn anthropic_quota_headers_and_gemini_retry_delay() {
    let plan = FaultPlan::healthy().quota(Quota::new(1, 1_000_000));
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    let ok = client
        .send(anthropic_messages(&server.base_url(), "c", "x"))
        .await
        .unwrap();
    assert_eq!(ok.headers()["anthropic-ratelimit-requests-limit"], "1");
    assert_eq!(ok.headers()["anthropic-ratelimit-requests-remaining"], "0");
    assert_eq!(ok.headers()["anthropic-ratelimit-tokens-limit"], "1000000");
    let reset = ok.headers()["anthropic-ratelimit-requests-reset"]
        .to_str()
        .unwrap()
        .to_owned();
    let expected = SystemTime::now() + Duration::from_secs(60);
    let expected = httpdate::fmt_http_date(expected);
    assert!(reset.ends_with('Z'), "{reset} vs about {expected}");

    let refused = client
        .send(gemini_generate(&server.base_url(), "g", "x"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "60");
    let details = json_of(&refused)["error"]["details"].to_string();
    assert!(details.contains("\"retryDelay\":\"60s\""), "{details}");
}

#[tokio::test]
async fn same_seed_same_faults() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let plan = FaultPlan::healthy()
            .seed(seed)
            .fault(Fault::Status(500), 0.3)
            .fault(Fault::Status(503), 0.3);
        let server = MockServer::start(plan).await.unwrap();
        let client = TestClient::new();
        let mut statuses = Vec::new();
        for _ in 0..40 {
            let response = client
                .send(openai_chat(&server.base_url(), "m", "x"))
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        statuses
    }
    let a = statuses(42).await;
    assert_eq!(a, statuses(42).await);
    assert_ne!(a, statuses(43).await);
    // Both faults and normal answers occur at about their rates.
    for status in [200, 500, 503] {
        let n = a.iter().filter(|&&s| s == status).count();
        assert!((4..=24).contains(&n), "{status}: {n} of 40");
    }
}

#[tokio::test]
async fn script_comes_first_then_random_faults() {
    let plan = FaultPlan::healthy().fault(Fault::Status(500), 1.0).script([
        Some(Fault::Status(503)),
        None,
        Some(Fault::Status(400)),
    ]);
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = client
            .send(openai_chat(&server.base_url(), "m", "x"))
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [503, 200, 400, 500, 500]);
}

#[tokio::test]
async fn route_overrides_and_set_plan() {
    let plan = FaultPlan::healthy().fault(Fault::Status(500), 1.0).route(
        Route::AnthropicMessages,
        FaultPlan::healthy().name("claude-mock"),
    );
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    let base = server.base_url();
    let openai = client.send(openai_chat(&base, "m", "x")).await.unwrap();
    assert_eq!(openai.status(), 500);
    let anthropic = client
        .send(anthropic_messages(&base, "c", "x"))
        .await
        .unwrap();
    assert_eq!(anthropic.status(), 200);
    assert_eq!(json_of(&anthropic)["content"][0]["text"], "claude-mock: x");
    assert_eq!(anthropic.headers()["x-mock-server"], "claude-mock");

    // An outage, then recovery.
    server.set_plan(FaultPlan::healthy().fault(Fault::Overloaded, 1.0));
    let anthropic = client
        .send(anthropic_messages(&base, "c", "x"))
        .await
        .unwrap();
    assert_eq!(anthropic.status(), 529);
    server.set_plan(FaultPlan::healthy());
    let openai = client.send(openai_chat(&base, "m", "x")).await.unwrap();
    assert_eq!(openai.status(), 200);
}

#[tokio::test]
async fn context_length_by_fault_and_by_window() {
    let client = TestClient::new();
    let server = always(Fault::ContextLengthExceeded).await;
    let openai = client
        .send(openai_chat(&server.base_url(), "m", "x"))
        .await
        .unwrap();
    assert_eq!(openai.status(), 400);
    assert_eq!(json_of(&openai)["error"]["code"], "context_length_exceeded");
    let anthropic = client
        .send(anthropic_messages(&server.base_url(), "c", "x"))
        .await
        .unwrap();
    assert_eq!(anthropic.status(), 400);
    let message = json_of(&anthropic)["error"]["message"].to_string();
    assert!(message.contains("prompt is too long"), "{message}");
    let gemini = client
        .send(gemini_generate(&server.base_url(), "g", "x"))
        .await
        .unwrap();
    assert_eq!(json_of(&gemini)["error"]["status"], "INVALID_ARGUMENT");
    let embeddings = client
        .send(openai_embeddings(&server.base_url(), &["x"]))
        .await
        .unwrap();
    assert_eq!(
        json_of(&embeddings)["error"]["code"],
        "context_length_exceeded"
    );

    // A small-context model refuses long prompts only.
    let server = MockServer::start(FaultPlan::healthy().context_window(10))
        .await
        .unwrap();
    let short = client
        .send(openai_chat(&server.base_url(), "m", "short"))
        .await
        .unwrap();
    assert_eq!(short.status(), 200);
    let long = client
        .send(openai_chat(&server.base_url(), "m", &"word ".repeat(20)))
        .await
        .unwrap();
    assert_eq!(long.status(), 400);
    let message = json_of(&long)["error"]["message"].to_string();
    assert!(
        message.contains("maximum context length is 10 tokens"),
        "{message}"
    );
    assert!(message.contains("resulted in 25 tokens"), "{message}");
}

#[tokio::test]
async fn absurd_plan_values_do_not_panic_the_server() {
    let client = TestClient::new();
    // Past what `SystemTime` holds, and within it but past year 9999 (an HTTP date's limit).
    for huge in [Duration::from_secs(u64::MAX), Duration::from_secs(1 << 40)] {
        for form in [
            RetryAfterForm::Seconds,
            RetryAfterForm::HttpDate,
            RetryAfterForm::Millis,
            RetryAfterForm::MsMillis,
        ] {
            let server = always(Fault::RateLimited {
                retry_after: huge,
                form,
            })
            .await;
            for request in [
                openai_chat(&server.base_url(), "m", "x"),
                anthropic_messages(&server.base_url(), "c", "x"),
                gemini_generate(&server.base_url(), "g", "x"),
            ] {
                let response = client.send(request).await.unwrap();
                assert_eq!(response.status(), 429, "{huge:?} {form:?}");
            }
        }
    }
    let server = MockServer::start(
        FaultPlan::healthy()
            .fault(Fault::Status(7), 0.5)
            .fault(Fault::Status(200), f64::NAN)
            .fault(Fault::Status(503), f64::INFINITY),
    )
    .await
    .unwrap();
    for _ in 0..5 {
        let status = client
            .send(openai_chat(&server.base_url(), "m", "x"))
            .await
            .unwrap()
            .status();
        assert!(status == 500 || status == 503, "{status}");
    }
}

#[tokio::test]
async fn only_the_plans_api_keys_are_accepted() {
    use tower_llm_testkit::with_api_key;
    let plan = FaultPlan::healthy()
        .api_keys(["sk-good"])
        .script([Some(Fault::Status(500))]);
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    let base = server.base_url();
    for request in [
        openai_chat(&base, "m", "x"),
        with_api_key(openai_chat(&base, "m", "x"), "sk-bad"),
        with_api_key(anthropic_messages(&base, "c", "x"), "sk-bad"),
    ] {
        let result = client.send(request).await;
        assert_eq!(classify(&result).kind(), Some(FailureKind::Unauthorized));
    }
    // Refused requests do not consume the script.
    let good = |r| with_api_key(r, "sk-good");
    let first = client
        .send(good(openai_chat(&base, "m", "x")))
        .await
        .unwrap();
    assert_eq!(first.status(), 500);
    let anthropic = client
        .send(good(anthropic_messages(&base, "c", "x")))
        .await
        .unwrap();
    assert_eq!(anthropic.status(), 200);
    let gemini = client
        .send(good(gemini_generate(&base, "g", "x")))
        .await
        .unwrap();
    assert_eq!(gemini.status(), 200);
    assert_eq!(server.counters().status(401), 3);
}

#[tokio::test(start_paused = true)]
async fn routes_share_the_plans_quota_unless_overridden() {
    let one = Quota {
        requests_per_minute: 1,
        ..Quota::default()
    };
    let plan = FaultPlan::healthy()
        .quota(one)
        .route(Route::GeminiGenerate, FaultPlan::healthy().quota(one));
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    let base = server.base_url();
    let status = |r: http::Response<Bytes>| r.status().as_u16();
    assert_eq!(
        status(client.send(openai_chat(&base, "m", "x")).await.unwrap()),
        200
    );
    assert_eq!(
        status(
            client
                .send(anthropic_messages(&base, "c", "x"))
                .await
                .unwrap()
        ),
        429,
        "one window for the plan's routes"
    );
    assert_eq!(
        status(client.send(gemini_generate(&base, "g", "x")).await.unwrap()),
        200
    );
    assert_eq!(
        status(client.send(gemini_generate(&base, "g", "x")).await.unwrap()),
        429
    );
}
