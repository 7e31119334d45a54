//! The typed providers pointed at the testkit's mock, for the tests that drive them.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use tower_llm_providers::{Anthropic, HttpClientConfig, OpenAi};
use tower_llm_testkit::MockServer;

/// OpenAI's service over `server`, with a client of this runtime.
pub fn openai(server: &MockServer) -> OpenAi {
    OpenAi::builder()
        .api_key("sk-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(HttpClientConfig::default().build().unwrap())
        .unwrap()
}

/// Anthropic's service over `server`, with a client of this runtime.
pub fn anthropic(server: &MockServer) -> Anthropic {
    Anthropic::builder()
        .api_key("sk-ant-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(HttpClientConfig::default().build().unwrap())
        .unwrap()
}
