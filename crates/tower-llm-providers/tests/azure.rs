//! Azure OpenAI over real HTTP against the testkit mock, which serves Azure's deployment paths
//! and, like Azure, refuses a request without `api-version`: plain and streamed chat,
//! embeddings, the `api-key` header, and an error status classified.

#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use tower::ServiceExt;
use tower_llm_core::FailureKind;
use tower_llm_providers::{
    ChatChunk, ChatRequest, EmbeddingRequest, HttpClientConfig, Message, OpenAi, Streaming,
};
use tower_llm_testkit::{Fault, FaultPlan, MockServer, Route, embedding_for};

fn azure(server: &MockServer) -> OpenAi<tower_llm_providers::HttpClient> {
    OpenAi::azure(server.base_url(), "gpt4o-prod", "2024-10-21")
        .api_key("azure-test-key")
        .build_with(HttpClientConfig::default().build().unwrap())
        .unwrap()
}

fn request() -> ChatRequest {
    ChatRequest::new("ignored-by-azure", vec![Message::user("Hi from Azure")])
}

#[tokio::test]
async fn chat_stream_and_embeddings_reach_the_deployment() {
    let server = MockServer::start(FaultPlan::healthy().name("azure"))
        .await
        .unwrap();
    let service = azure(&server);

    let answer = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(answer.content, "azure: Hi from Azure");
    // Azure names the model by deployment; the mock echoes it.
    assert_eq!(answer.model, "gpt4o-prod");

    let chunks: Vec<_> = service
        .clone()
        .oneshot(Streaming(request()))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(chunks.iter().all(Result::is_ok), "{chunks:?}");
    let text: String = chunks
        .into_iter()
        .filter_map(|chunk| match chunk {
            Ok(ChatChunk::Content(text)) => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(text, "azure: Hi from Azure");

    let embedded = service
        .clone()
        .oneshot(EmbeddingRequest::new(
            "ignored",
            vec!["one".to_owned(), "two".to_owned()],
        ))
        .await
        .unwrap();
    assert_eq!(embedded.embeddings[0], embedding_for("one", 8));
    assert_eq!(embedded.embeddings[1], embedding_for("two", 8));

    let counters = server.counters();
    assert_eq!(counters.key("azure-test-key"), 3);
    assert_eq!(counters.route(Route::OpenAiChat), 2);
    assert_eq!(counters.route(Route::OpenAiEmbeddings), 1);
    for received in server.received() {
        let query = received.uri.query().unwrap_or_default();
        assert!(query.contains("api-version=2024-10-21"), "{}", received.uri);
        assert!(
            received
                .uri
                .path()
                .starts_with("/openai/deployments/gpt4o-prod/")
        );
        assert!(received.headers.get("authorization").is_none());
    }
}

#[tokio::test]
async fn an_azure_429_is_classified() {
    let plan = FaultPlan::healthy().script([Some(Fault::Status(429))]);
    let server = MockServer::start(plan).await.unwrap();
    let error = azure(&server).oneshot(request()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::RateLimited);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(429));
}
