//! A mock provider for strategy tests: fixed latency on tokio's clock, a scripted reply, and
//! counters of calls started, finished and dropped unfinished.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    missing_debug_implementations
)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;
use tower_llm_core::{BoxError, FailureKind, UpstreamError};

pub type Reply = http::Response<String>;

#[derive(Clone, Debug)]
pub enum Outcome {
    /// 200 with this body.
    Ok(&'static str),
    /// An HTTP error status.
    Status(u16),
    /// An error of this kind.
    Err(FailureKind),
}

#[derive(Debug)]
pub struct Stats {
    pub calls: AtomicUsize,
    pub completed: AtomicUsize,
    pub dropped: AtomicUsize,
    pub call_times: Mutex<Vec<Duration>>,
    origin: Instant,
}

impl Stats {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
    /// When each call started, measured from the mock's creation.
    pub fn call_times(&self) -> Vec<Duration> {
        self.call_times.lock().expect("not poisoned").clone()
    }
}

#[derive(Clone, Debug)]
pub struct Mock {
    latency: Duration,
    outcome: Outcome,
    pub stats: Arc<Stats>,
    /// Ready only once this is set (if given).
    gate: Option<Arc<AtomicBool>>,
}

impl Mock {
    pub fn new(latency: Duration, outcome: Outcome) -> Self {
        Mock {
            latency,
            outcome,
            stats: Arc::new(Stats {
                calls: AtomicUsize::new(0),
                completed: AtomicUsize::new(0),
                dropped: AtomicUsize::new(0),
                call_times: Mutex::new(Vec::new()),
                origin: Instant::now(),
            }),
            gate: None,
        }
    }

    pub fn ok(latency_ms: u64, body: &'static str) -> Self {
        Mock::new(Duration::from_millis(latency_ms), Outcome::Ok(body))
    }

    pub fn status(latency_ms: u64, status: u16) -> Self {
        Mock::new(Duration::from_millis(latency_ms), Outcome::Status(status))
    }

    pub fn err(latency_ms: u64, kind: FailureKind) -> Self {
        Mock::new(Duration::from_millis(latency_ms), Outcome::Err(kind))
    }

    /// Never ready (this mock returns `Pending` from `poll_ready` and never wakes).
    pub fn never_ready(mut self) -> Self {
        self.gate = Some(Arc::new(AtomicBool::new(false)));
        self
    }
}

struct Guard {
    stats: Arc<Stats>,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.stats.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Service<String> for Mock {
    type Response = Reply;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &self.gate {
            Some(gate) if !gate.load(Ordering::SeqCst) => Poll::Pending,
            _ => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, prompt: String) -> Self::Future {
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        self.stats
            .call_times
            .lock()
            .expect("not poisoned")
            .push(self.stats.origin.elapsed());
        let latency = self.latency;
        let outcome = self.outcome.clone();
        let stats = Arc::clone(&self.stats);
        Box::pin(async move {
            let mut guard = Guard { stats, done: false };
            tokio::time::sleep(latency).await;
            guard.done = true;
            guard.stats.completed.fetch_add(1, Ordering::SeqCst);
            match outcome {
                Outcome::Ok(body) => Ok(http::Response::new(format!("{body}: {prompt}"))),
                Outcome::Status(status) => Ok(http::Response::builder()
                    .status(status)
                    .body(String::new())
                    .expect("valid status")),
                Outcome::Err(kind) => Err(UpstreamError::new(kind, "mock failure").into()),
            }
        })
    }
}

pub fn body(reply: &Reply) -> &str {
    reply.body()
}
