//! Unmodelled fields remember their dialect: an OpenAI body's `frequency_penalty` reaches an
//! OpenAI-compatible provider, and is left out (or, in strict mode, refused) by Anthropic and
//! Gemini, which answer 400 to a field they do not know. Fields with no dialect go anywhere.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Piece, Reply, call, drain, mock};
use serde_json::json;
use tower_llm_core::{FailureKind, FingerprintKey};
use tower_llm_providers::{
    Anthropic, ChatRequest, Dialect, Gemini, Message, OpenAi, ResponseFormat, Streaming,
};

const OPENAI: &str = include_str!("fixtures/openai_chat.json");
const ANTHROPIC: &str = include_str!("fixtures/anthropic_message.json");
const ANTHROPIC_STREAM: &str = include_str!("fixtures/anthropic_stream.sse");
const GEMINI: &str = include_str!("fixtures/gemini_generate.json");

/// A request as an OpenAI-compatible gateway parses it: two fields the chat types do not
/// model, written for OpenAI.
fn from_openai() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("Hi")])
        .extra("frequency_penalty", json!(0.5))
        .extra("logprobs", json!(true))
        .extra_from(Dialect::OpenAi)
}

fn sent_keys(sent: &common::Sent) -> Vec<String> {
    sent.body.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn the_dialect_they_were_written_for_gets_them() {
    let (client, sent) = mock(Reply::json(200, OPENAI));
    let mut openai = OpenAi::builder()
        .api_key("sk-test")
        .strict_fields(true)
        .build_with(client)
        .unwrap();
    call(&mut openai, from_openai()).await.unwrap();
    let body = &sent.lock().unwrap()[0].body;
    assert_eq!(body["frequency_penalty"], json!(0.5));
    assert_eq!(body["logprobs"], json!(true));
}

#[tokio::test]
async fn another_dialect_leaves_them_out() {
    // Counted: the test runtime is this thread's, where the capture's recorder is installed.
    let capture = tower_llm_testkit::observe::Capture::install();
    let (client, sent) = mock(Reply::json(200, ANTHROPIC));
    let mut anthropic = Anthropic::builder()
        .api_key("sk-ant")
        .build_with(client)
        .unwrap();
    call(&mut anthropic, from_openai()).await.unwrap();

    let (client, gemini_sent) = mock(Reply::json(200, GEMINI));
    let mut gemini = Gemini::builder()
        .api_key("AIza")
        .build_with(client)
        .unwrap();
    call(&mut gemini, from_openai()).await.unwrap();

    for sent in [&sent, &gemini_sent] {
        let sent = sent.lock().unwrap();
        let keys = sent_keys(&sent[0]);
        assert!(!keys.contains(&"frequency_penalty".to_owned()), "{keys:?}");
        assert!(!keys.contains(&"logprobs".to_owned()), "{keys:?}");
    }
    // Streamed the same.
    let (client, sent) = mock(Reply::sse(vec![Piece::Data(ANTHROPIC_STREAM.into())]));
    let mut anthropic = Anthropic::builder()
        .api_key("sk-ant")
        .build_with(client)
        .unwrap();
    let stream = call(&mut anthropic, Streaming(from_openai()))
        .await
        .unwrap();
    assert!(drain(stream).await.iter().all(Result::is_ok));
    assert!(!sent_keys(&sent.lock().unwrap()[0]).contains(&"frequency_penalty".to_owned()));

    let metrics = capture.metrics();
    let dropped = |to: &str| {
        metrics.counter(
            "tower_llm_providers_fields_dropped_total",
            &[("from", "openai"), ("to", to)],
        )
    };
    // Two fields a call: the whole and the streamed Anthropic calls, the Gemini call.
    assert_eq!((dropped("anthropic"), dropped("gemini")), (4, 2));
}

#[tokio::test]
async fn strict_mode_refuses_them_before_any_call() {
    let (client, sent) = mock(Reply::json(200, ANTHROPIC));
    let mut anthropic = Anthropic::builder()
        .api_key("sk-ant")
        .strict_fields(true)
        .build_with(client)
        .unwrap();
    let error = call(&mut anthropic, from_openai()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::BadRequest);
    let message = error.to_string();
    assert!(message.contains("\"frequency_penalty\""), "{message}");
    assert!(
        message.contains("openai") && message.contains("anthropic"),
        "{message}"
    );
    let error = call(&mut anthropic, Streaming(from_openai()))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), FailureKind::BadRequest);

    let (client, gemini_sent) = mock(Reply::json(200, GEMINI));
    let mut gemini = Gemini::builder()
        .api_key("AIza")
        .strict_fields(true)
        .build_with(client)
        .unwrap();
    let error = call(&mut gemini, from_openai()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::BadRequest);
    assert!(sent.lock().unwrap().is_empty());
    assert!(gemini_sent.lock().unwrap().is_empty());

    // A strict provider still takes fields of its own dialect, and fields with no dialect.
    let own = ChatRequest::new("m", vec![Message::user("Hi")])
        .extra("top_k", json!(5))
        .extra_from(Dialect::Anthropic);
    call(&mut anthropic, own).await.unwrap();
    let untagged = ChatRequest::new("m", vec![Message::user("Hi")]).extra("top_k", json!(5));
    call(&mut anthropic, untagged).await.unwrap();
    let sent = sent.lock().unwrap();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|s| s.body["top_k"] == json!(5)));
}

#[tokio::test]
async fn a_strict_refusal_names_a_bounded_list() {
    let mut request = ChatRequest::new("m", vec![Message::user("Hi")]).extra_from(Dialect::OpenAi);
    for i in 0..50 {
        request = request.extra(format!("field_{i:02}_{}", "x".repeat(500)), json!(i));
    }
    let (client, _) = mock(Reply::json(200, ANTHROPIC));
    let mut anthropic = Anthropic::builder()
        .api_key("sk-ant")
        .strict_fields(true)
        .build_with(client)
        .unwrap();
    let message = call(&mut anthropic, request).await.unwrap_err().to_string();
    assert!(message.contains("and 42 more"), "{message}");
    assert!(message.len() < 2_000, "{} bytes", message.len());
}

/// A request setting every modelled field that some API lacks.
fn with_every_field() -> ChatRequest {
    let mut request = ChatRequest::new("m", vec![Message::user("Hi")]);
    request.seed = Some(7);
    request.response_format = Some(ResponseFormat::JsonObject);
    request.user = Some("user-1".into());
    request.metadata.insert("trace".into(), json!("t-1"));
    request
}

#[tokio::test]
async fn modelled_fields_an_api_lacks_are_left_out_and_counted() {
    let capture = tower_llm_testkit::observe::Capture::install();
    let (client, sent) = mock(Reply::json(200, ANTHROPIC));
    let mut anthropic = Anthropic::builder()
        .api_key("sk-ant")
        .build_with(client)
        .unwrap();
    call(&mut anthropic, with_every_field()).await.unwrap();
    let (client, gemini_sent) = mock(Reply::json(200, GEMINI));
    let mut gemini = Gemini::builder()
        .api_key("AIza")
        .build_with(client)
        .unwrap();
    call(&mut gemini, with_every_field()).await.unwrap();
    let (client, openai_sent) = mock(Reply::json(200, OPENAI));
    let mut openai = OpenAi::builder()
        .api_key("sk-test")
        .strict_fields(true)
        .build_with(client)
        .unwrap();
    call(&mut openai, with_every_field()).await.unwrap();

    // Anthropic: `user` as `metadata.user_id`, the rest left out.
    let body = sent.lock().unwrap()[0].body.clone();
    assert_eq!(body["metadata"], json!({"user_id": "user-1"}));
    assert!(body.get("seed").is_none() && body.get("response_format").is_none());
    // Gemini: the seed and the JSON answer in `generationConfig`, no user or metadata.
    let body = gemini_sent.lock().unwrap()[0].body.clone();
    assert_eq!(body["generationConfig"]["seed"], json!(7));
    assert_eq!(
        body["generationConfig"]["responseMimeType"],
        json!("application/json")
    );
    let keys = sent_keys(&gemini_sent.lock().unwrap()[0]);
    assert!(
        !keys.iter().any(|k| k == "user" || k == "metadata"),
        "{keys:?}"
    );
    // OpenAI takes them all, even strict (which would have refused one it left out).
    let body = openai_sent.lock().unwrap()[0].body.clone();
    assert_eq!(
        (&body["seed"], &body["user"], &body["metadata"]["trace"]),
        (&json!(7), &json!("user-1"), &json!("t-1"))
    );

    let metrics = capture.metrics();
    let dropped = |to: &str| {
        metrics.counter(
            "tower_llm_providers_fields_dropped_total",
            &[("from", "common"), ("to", to)],
        )
    };
    // Anthropic: seed, response_format, metadata; Gemini: user, metadata.
    assert_eq!((dropped("anthropic"), dropped("gemini")), (3, 2));

    // A plain-text format and an empty metadata ask for nothing: nothing to count.
    let mut plain = ChatRequest::new("m", vec![Message::user("Hi")]);
    plain.response_format = Some(ResponseFormat::Text);
    call(&mut anthropic, plain).await.unwrap();
    assert_eq!(
        capture.metrics().counter(
            "tower_llm_providers_fields_dropped_total",
            &[("from", "common"), ("to", "anthropic")],
        ),
        3
    );
}

#[tokio::test]
async fn strict_mode_refuses_modelled_fields_an_api_lacks() {
    let (client, sent) = mock(Reply::json(200, ANTHROPIC));
    let mut anthropic = Anthropic::builder()
        .api_key("sk-ant")
        .strict_fields(true)
        .build_with(client)
        .unwrap();
    let error = call(&mut anthropic, with_every_field()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::BadRequest);
    let message = error.to_string();
    assert!(
        message.contains("anthropic has no equivalent for seed, response_format, metadata"),
        "{message}"
    );
    let error = call(&mut anthropic, Streaming(with_every_field()))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), FailureKind::BadRequest);
    // Both kinds at once are named in one message.
    let mut both = from_openai();
    both.seed = Some(1);
    let message = call(&mut anthropic, both).await.unwrap_err().to_string();
    assert!(
        message.contains("seed") && message.contains("\"frequency_penalty\""),
        "{message}"
    );
    assert!(sent.lock().unwrap().is_empty(), "nothing was sent");
    // `user` alone has an Anthropic equivalent: sent.
    let mut user = ChatRequest::new("m", vec![Message::user("Hi")]);
    user.user = Some("u".into());
    call(&mut anthropic, user).await.unwrap();
    assert_eq!(sent.lock().unwrap().len(), 1);
}

#[test]
fn the_dialect_is_part_of_the_key_only_when_it_changes_a_body() {
    let key = FingerprintKey::from_secret(b"test");
    let plain = ChatRequest::new("m", vec![Message::user("Hi")]);
    let fields = plain.clone().extra("frequency_penalty", json!(0.5));
    // No fields: the dialect changes nothing, nor the key.
    assert_eq!(
        key.fingerprint(&plain),
        key.fingerprint(&plain.clone().extra_from(Dialect::OpenAi))
    );
    // Fields: an OpenAI-only field and an untagged one are different requests to Anthropic.
    assert_ne!(
        key.fingerprint(&fields),
        key.fingerprint(&fields.clone().extra_from(Dialect::OpenAi))
    );
}
