//! Providers and requests: the real OpenAI provider pointed at the mock, the mock's plans,
//! and the generator of the request mixes.

use std::time::Duration;

use tower::ServiceBuilder;
use tower::util::BoxCloneService;
use tower_llm_core::BoxError;
use tower_llm_providers::{ChatRequest, ChatResponse, HttpClient, Message, OpenAi};
use tower_llm_race::Answer;
use tower_llm_testkit::{FaultPlan, Latency, MockServer};

use crate::{DUMMY_KEY, MODEL};

/// The real OpenAI provider, pointed at the mock.
pub(super) fn openai(server: &MockServer) -> Result<OpenAi<HttpClient>, BoxError> {
    Ok(OpenAi::builder()
        .api_key(DUMMY_KEY)
        .base_url(format!("{}/v1", server.base_url()))
        .build()?)
}

pub(super) fn openai_with(
    server: &MockServer,
    client: HttpClient,
) -> Result<OpenAi<HttpClient>, BoxError> {
    Ok(OpenAi::builder()
        .api_key(DUMMY_KEY)
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(client)?)
}

/// Several providers behind one strategy need one type, and race, vote and route mark which
/// one answered: box them, with the answer wrapped.
pub(super) type Provider = BoxCloneService<ChatRequest, Answer<ChatResponse>, BoxError>;

pub(super) fn provider(server: &MockServer) -> Result<Provider, BoxError> {
    let service = ServiceBuilder::new()
        .map_response(Answer::new)
        .map_err(BoxError::from)
        .service(openai(server)?);
    Ok(BoxCloneService::new(service))
}

/// [`provider`] over `client`: a runtime of its own (a paused clock) needs its own pool.
pub(super) fn provider_with(
    server: &MockServer,
    client: &HttpClient,
) -> Result<Provider, BoxError> {
    let service = ServiceBuilder::new()
        .map_response(Answer::new)
        .map_err(BoxError::from)
        .service(openai_with(server, client.clone())?);
    Ok(BoxCloneService::new(service))
}

pub(super) fn chat(prompt: &str) -> ChatRequest {
    ChatRequest::new(MODEL, vec![Message::user(prompt)])
}

/// A healthy upstream whose latency looks like an LLM API's, 50 times faster: median 20 ms,
/// 99th percentile 80 ms.
pub(super) fn typical(name: &str) -> FaultPlan {
    FaultPlan::healthy()
        .name(name)
        .seed(1)
        .latency(Latency::LongTail {
            median: Duration::from_millis(20),
            p99: Duration::from_millis(80),
        })
}

pub(super) fn every(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// A small deterministic generator for the scenarios' request mixes.
#[derive(Debug)]
pub(super) struct SplitMix(pub(super) u64);

impl SplitMix {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
