//! An in-process upstream whose answer the test switches, counting the calls it gets.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tower::{Service, ServiceExt, service_fn};
use tower_llm_core::{BoxError, CircuitOpen};

/// Status 0 stands for a transport error (connection reset).
#[derive(Clone, Default)]
pub struct Upstream {
    status: Arc<AtomicU16>,
    latency_ms: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
}

pub type Reply = http::Response<()>;

impl Upstream {
    pub fn new(status: u16) -> Self {
        let upstream = Upstream::default();
        upstream.set(status);
        upstream
    }

    pub fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn service(
        &self,
    ) -> impl Service<u8, Response = Reply, Error = BoxError, Future: Send> + Clone + Send + use<>
    {
        let this = self.clone();
        service_fn(move |_req: u8| {
            this.calls.fetch_add(1, Ordering::SeqCst);
            let status = this.status.load(Ordering::SeqCst);
            let latency = Duration::from_millis(this.latency_ms.load(Ordering::SeqCst));
            async move {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                if status == 0 {
                    return Err(BoxError::from(std::io::Error::from(
                        std::io::ErrorKind::ConnectionReset,
                    )));
                }
                Ok(http::Response::builder()
                    .status(status)
                    .body(())
                    .expect("valid status"))
            }
        })
    }
}

pub async fn call<S>(svc: &mut S, req: u8) -> Result<Reply, BoxError>
where
    S: Service<u8, Response = Reply, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

/// The rejection, if the call was refused by a breaker.
pub fn circuit_open(result: &Result<Reply, BoxError>) -> Option<CircuitOpen> {
    match result {
        Err(err) => err.downcast_ref::<CircuitOpen>().cloned(),
        Ok(_) => None,
    }
}

/// Runs one call on its own task.
pub fn spawn_call<S>(mut svc: S) -> tokio::task::JoinHandle<Result<Reply, BoxError>>
where
    S: Service<u8, Response = Reply, Error = BoxError> + Send + 'static,
    S::Future: Send,
{
    tokio::spawn(async move { call(&mut svc, 0).await })
}
