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
