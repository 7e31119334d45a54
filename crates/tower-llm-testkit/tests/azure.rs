//! Azure OpenAI's deployment paths: answered as the OpenAI routes, keyed by `api-key`, and
//! refused without `api-version`, as Azure does.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use tower::ServiceExt;
use tower_llm_testkit::{FaultPlan, MockServer, Route, TestClient};

fn chat(url: String) -> http::Request<Bytes> {
    http::Request::post(url)
        .header("content-type", "application/json")
        .header("api-key", "azure-key")
        .body(Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"hello"}]}"#,
        ))
        .unwrap()
}

#[tokio::test]
async fn deployments_answer_like_openai_and_need_an_api_version() {
    let server = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let base = server.base_url();

    let ok = TestClient::new()
        .oneshot(chat(format!(
            "{base}/openai/deployments/prod/chat/completions?api-version=2024-10-21"
        )))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(ok.body()).unwrap();
    assert_eq!(body["model"], "prod");
    assert_eq!(body["choices"][0]["message"]["content"], "mock: hello");

    let refused = TestClient::new()
        .oneshot(chat(format!(
            "{base}/openai/deployments/prod/chat/completions"
        )))
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(refused.body()).unwrap();
    assert_eq!(body["error"]["code"], "MissingApiVersionParameter");

    let counters = server.counters();
    assert_eq!(counters.requests, 1);
    assert_eq!(counters.route(Route::OpenAiChat), 1);
    assert_eq!(counters.key("azure-key"), 1);
}
