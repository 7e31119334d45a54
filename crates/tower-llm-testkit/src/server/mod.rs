//! The mock server: an axum router behind a hand-written accept loop, so that a fault can
//! close a connection without answering.
//!
//! By kind: [`routes`] reads a request and picks the answer, [`state`] holds the plans,
//! counters and quota windows it answers from, [`answer`] writes the answer as the plan says
//! (faults included).

mod answer;
mod routes;
mod state;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::counters::{Counters, ReceivedRequest};
use crate::plan::FaultPlan;
use routes::router;
use state::{ActivePlans, ServerState, Shared};

/// How many received requests [`MockServer::received`] keeps.
pub const RECEIVED_CAPACITY: usize = 1000;

/// The largest request body the mock reads.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// How long a stalled answer stalls before its connection is cut: "forever" for a test.
const STALL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A mock of the OpenAI, Anthropic and Gemini HTTP APIs on a loopback port, answering as its
/// [`FaultPlan`] says. See the [crate docs](crate) for the routes and an example.
///
/// The server runs on the tokio runtime that started it, and its latencies, stalls and quota
/// windows use tokio's clock, so under `#[tokio::test(start_paused = true)]` they pass in
/// virtual time. Dropping the server stops it and closes its connections.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl MockServer {
    /// Starts a server on `127.0.0.1` on a free port.
    pub async fn start(plan: FaultPlan) -> io::Result<MockServer> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), plan).await
    }

    /// Starts a server on `addr` (port 0 picks a free one).
    pub async fn bind(addr: SocketAddr, plan: FaultPlan) -> io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(ServerState {
                plans: ActivePlans::new(&plan),
                counters: Counters::default(),
                received: VecDeque::new(),
                next_id: 0,
            }),
            changed: watch::Sender::new(0),
        });
        let router = router(shared.clone());
        let accept = tokio::spawn(accept_loop(listener, router));
        Ok(MockServer {
            addr,
            shared,
            accept,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL followed by `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Replaces the plan for the requests that arrive from now on (an outage, then a
    /// recovery). The new plan starts afresh: its own seed, script and an empty quota window.
    /// Requests already being answered finish under the plan they started with.
    pub fn set_plan(&self, plan: FaultPlan) {
        self.shared.lock().plans = ActivePlans::new(&plan);
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }

    /// Zeroes the counters, except `in_flight`; `max_concurrent` restarts from it. Requests
    /// in flight still count as completed or cancelled when they end.
    pub fn reset_counters(&self) {
        let mut state = self.shared.lock();
        let in_flight = state.counters.in_flight;
        state.counters = Counters {
            in_flight,
            max_concurrent: in_flight,
            ..Counters::default()
        };
    }

    /// The last [`RECEIVED_CAPACITY`] requests received, oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().received.iter().cloned().collect()
    }

    /// Forgets the received requests.
    pub fn clear_received(&self) {
        self.shared.lock().received.clear();
    }

    /// Waits until the counters satisfy `done`, and returns them. Counters change as the
    /// server works, so this is how a test waits for "two requests in flight" or "the
    /// server saw the cancellation" without sleeping.
    pub async fn wait_until(&self, mut done: impl FnMut(&Counters) -> bool) -> Counters {
        let mut changed = self.shared.changed.subscribe();
        loop {
            let counters = self.counters();
            if done(&counters) {
                return counters;
            }
            if changed.changed().await.is_err() {
                return self.counters();
            }
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // The accept task owns every connection task: aborting it closes them all.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, router.clone()));
                }
                // Out of file descriptors and the like: let connections finish, then retry.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Marks an answer that must be replaced by closing the connection.
#[derive(Clone, Copy, Debug)]
struct DropConnection;

async fn serve_connection(stream: TcpStream, router: Router) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let mut router = router.clone();
        async move {
            let response = tower_service::Service::call(&mut router, request.map(Body::new)).await;
            let response = match response {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.extensions().get::<DropConnection>().is_some() {
                // hyper closes the connection, unanswered, when the service fails.
                return Err(io::Error::other("mock: dropping the connection"));
            }
            Ok::<_, io::Error>(response)
        }
    });
    // HTTP/1 with hyper's default `half_close(false)`: when the client closes its side
    // mid-request, hyper drops the handler future, which is how `cancelled` is counted.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
