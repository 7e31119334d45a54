//! The key never shows in `Debug`, `Display` or error output, whatever goes wrong.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Piece, Reply, call, drain, mock};
use tower_llm_providers::{Anthropic, ApiKey, ChatRequest, Gemini, Message, OpenAi};

const KEY: &str = "sk-SECRET-4f9a1c";

fn assert_clean(text: &str) {
    assert!(!text.contains(KEY), "key leaked into: {text}");
    assert!(!text.contains("SECRET"), "key leaked into: {text}");
}

fn full_error_text(error: &tower_llm_core::UpstreamError) -> String {
    let mut text = format!("{error} {error:?} {error:#?}");
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    if let Some(body) = error.body() {
        text.push_str(&String::from_utf8_lossy(body));
    }
    text
}

#[tokio::test]
async fn no_output_shows_the_key() {
    let key = ApiKey::new(KEY);
    assert_clean(&format!("{key} {key:?} {key:#?}"));

    let replies = [
        Reply::json(
            401,
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        ),
        Reply::json(500, "<html>oops</html>"),
        Reply::json(200, "{not json"),
        Reply {
            status: 200,
            headers: vec![],
            pieces: vec![Piece::Data("{\"id\":".into()), Piece::Fail],
        },
        Reply::sse(vec![Piece::Data(
            "data: {\"error\":{\"message\":\"x\"}}\n\n".into(),
        )]),
    ];
    for reply in replies {
        let (client, sent) = mock(reply.clone());
        let mut openai = OpenAi::builder()
            .api_key(KEY)
            .organization("org")
            .build_with(client)
            .unwrap();
        assert_clean(&format!("{openai:?}"));
        let request = ChatRequest::new("m", vec![Message::user("hi")]);
        if let Err(error) = call(&mut openai, request.clone()).await {
            assert_clean(&full_error_text(&error));
        }
        match call(&mut openai, request.clone().streaming()).await {
            Err(error) => assert_clean(&full_error_text(&error)),
            Ok(stream) => {
                assert_clean(&format!("{stream:?}"));
                for item in drain(stream).await {
                    if let Err(error) = item {
                        assert_clean(&full_error_text(&error));
                    }
                }
            }
        }
        // The request did carry it, in a header marked sensitive.
        {
            let sent = sent.lock().unwrap();
            let header = &sent[0].headers["authorization"];
            assert!(header.is_sensitive());
            assert_clean(&format!("{header:?} {:?}", sent[0].headers));
        }

        let (client, _) = mock(reply.clone());
        let mut anthropic = Anthropic::builder()
            .api_key(KEY)
            .build_with(client)
            .unwrap();
        assert_clean(&format!("{anthropic:?}"));
        if let Err(error) = call(&mut anthropic, request.clone()).await {
            assert_clean(&full_error_text(&error));
        }
        let (client, _) = mock(reply.clone());
        let mut gemini = Gemini::builder().api_key(KEY).build_with(client).unwrap();
        assert_clean(&format!("{gemini:?}"));
        if let Err(error) = call(&mut gemini, request).await {
            assert_clean(&full_error_text(&error));
        }
    }
    let (client, _) = mock(Reply::json(200, "{}"));
    let builder = OpenAi::azure("https://x.openai.azure.com", "d", "2024-10-21").api_key(KEY);
    assert_clean(&format!("{builder:?}"));
    assert_clean(&format!("{:?}", builder.build_with(client).unwrap()));
}

/// A key shaped like OpenAI's project keys, long enough to be echoed masked.
const LONG_KEY: &str = "sk-proj-Zq81fT0pLm4Nx7Rv2Kc9Yb3Hd6wXyZ";

/// Every form of `LONG_KEY` an upstream may repeat: whole, and masked as OpenAI and the
/// testkit write it (first eight and last four characters).
fn assert_no_key_form(text: &str) {
    assert!(!text.contains(LONG_KEY), "whole key leaked into: {text}");
    assert!(!text.contains("Zq81fT0p"), "key start leaked into: {text}");
    assert!(
        !text.contains("sk-proj-*"),
        "masked key leaked into: {text}"
    );
    assert!(!text.contains("wXyZ"), "key end leaked into: {text}");
}

#[tokio::test]
async fn keys_echoed_by_the_upstream_are_scrubbed_from_errors() {
    use tower_llm_testkit::{FaultPlan, KeyEcho, MockServer};

    for echo in [KeyEcho::Whole, KeyEcho::Masked] {
        // The server knows another key: ours is refused with a 401 that repeats it.
        let plan = FaultPlan::healthy()
            .api_keys(["sk-the-right-one"])
            .echo_api_key(echo);
        let server = MockServer::start(plan).await.unwrap();
        let base = server.base_url();
        let request = ChatRequest::new("m", vec![Message::user("hi")]);
        let mut errors = Vec::new();

        let mut openai = OpenAi::compatible(format!("{base}/v1"))
            .api_key(LONG_KEY)
            .build_with(
                tower_llm_providers::HttpClientConfig::default()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        errors.push(call(&mut openai, request.clone()).await.unwrap_err());
        errors.push(
            call(&mut openai, request.clone().streaming())
                .await
                .unwrap_err(),
        );
        let mut anthropic = Anthropic::builder()
            .base_url(format!("{base}/v1"))
            .api_key(LONG_KEY)
            .build()
            .unwrap();
        errors.push(call(&mut anthropic, request.clone()).await.unwrap_err());
        let mut gemini = Gemini::builder()
            .base_url(format!("{base}/v1beta"))
            .api_key(LONG_KEY)
            .build()
            .unwrap();
        errors.push(call(&mut gemini, request.clone()).await.unwrap_err());

        for error in errors {
            assert_eq!(error.status().map(|s| s.as_u16()), Some(401));
            // The rest of the upstream's message is kept: only the key is taken out.
            assert!(
                error.message().contains("[redacted key]"),
                "{echo:?}: {}",
                error.message()
            );
            assert_no_key_form(&full_error_text(&error));
        }
    }
}

#[tokio::test]
async fn a_key_in_an_error_event_is_scrubbed() {
    let events = format!(
        "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"api_error\",\"message\":\"bad key {LONG_KEY}\"}}}}\n\n"
    );
    let (client, _) = mock(Reply::sse(vec![Piece::Data(events.into())]));
    let mut anthropic = Anthropic::builder()
        .api_key(LONG_KEY)
        .build_with(client)
        .unwrap();
    let request = ChatRequest::new("m", vec![Message::user("hi")]).streaming();
    let items = drain(call(&mut anthropic, request).await.unwrap()).await;
    let error = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(error.message(), "bad key [redacted key]");
    assert_no_key_form(&full_error_text(error));
}
