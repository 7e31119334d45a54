//! A request and response with costs, usages and outcomes chosen by the test.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::service_fn;
use tower_llm_core::{
    BoxError, ClassifyResponse, FailureKind, Outcome, RequestCost, ResponseUsage, Usage,
};
use tower_llm_ratelimit::RateLimitHeaders;

#[derive(Clone, Debug)]
pub struct Req {
    pub id: u32,
    pub key: &'static str,
    pub cost: u64,
    /// Tokens the response will report, if any.
    pub actual: Option<u64>,
    /// Answer 429 with this retry hint.
    pub limited: Option<Option<Duration>>,
    pub headers: Vec<(&'static str, String)>,
    /// How long the call takes.
    pub latency: Duration,
}

impl Req {
    pub fn new(id: u32) -> Self {
        Req {
            id,
            key: "a",
            cost: 1,
            actual: None,
            limited: None,
            headers: Vec::new(),
            latency: Duration::ZERO,
        }
    }

    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    pub fn key(mut self, key: &'static str) -> Self {
        self.key = key;
        self
    }

    pub fn actual(mut self, actual: u64) -> Self {
        self.actual = Some(actual);
        self
    }

    pub fn limited(mut self, retry_after: Option<Duration>) -> Self {
        self.limited = Some(retry_after);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
}

impl RequestCost for Req {
    fn estimated_tokens(&self) -> u64 {
        self.cost
    }
}

#[derive(Debug)]
pub struct Res {
    pub id: u32,
    pub usage: Option<u64>,
    pub limited: Option<Option<Duration>>,
    pub headers: http::HeaderMap,
}

impl ResponseUsage for Res {
    fn usage(&self) -> Option<Usage> {
        self.usage.map(|total| Usage::new(total, 0))
    }
}

impl ClassifyResponse for Res {
    fn classify_response(&self) -> Outcome {
        match self.limited {
            Some(after) => Outcome::Failure(
                tower_llm_core::Failure::new(FailureKind::RateLimited).with_retry_after(after),
            ),
            None => Outcome::Success,
        }
    }
}

impl RateLimitHeaders for Res {
    fn rate_limit_headers(&self) -> Option<&http::HeaderMap> {
        Some(&self.headers)
    }
}

/// One arrival at the inner service: request id, key, time since the start.
pub type Arrival = (u32, &'static str, Duration);

/// When each request id reached the inner service, in order, with its key.
#[derive(Clone, Debug, Default)]
pub struct Log(pub Arc<Mutex<Vec<Arrival>>>);

impl Log {
    pub fn ids(&self) -> Vec<u32> {
        self.0.lock().expect("log").iter().map(|e| e.0).collect()
    }

    pub fn times(&self) -> Vec<Duration> {
        self.0.lock().expect("log").iter().map(|e| e.2).collect()
    }

    pub fn entries(&self) -> Vec<Arrival> {
        self.0.lock().expect("log").clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("log").len()
    }
}

/// An inner service that logs arrivals (time since `start`) and answers as the request says.
pub fn inner(
    start: Instant,
    log: Log,
) -> impl tower::Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone + Send {
    service_fn(move |req: Req| {
        let log = log.clone();
        async move {
            log.0
                .lock()
                .expect("log")
                .push((req.id, req.key, start.elapsed()));
            if !req.latency.is_zero() {
                tokio::time::sleep(req.latency).await;
            }
            let mut headers = http::HeaderMap::new();
            for (name, value) in &req.headers {
                headers.insert(*name, value.parse().expect("header value"));
            }
            Ok::<_, BoxError>(Res {
                id: req.id,
                usage: req.actual,
                limited: req.limited,
                headers,
            })
        }
    })
}
