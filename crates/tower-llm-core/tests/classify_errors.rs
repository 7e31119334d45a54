//! The default classifier on errors produced by real tower and tokio machinery, not hand-built
//! values: a tower `Timeout` that fires, a refused TCP connection, and errors boxed by layers.

use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::{
    BoxError, CircuitOpen, Classify, DefaultClassifier, FailureKind, UpstreamError,
    classify_dyn_error,
};

#[tokio::test(start_paused = true)]
async fn a_tower_timeout_is_a_timeout() {
    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .service(service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, BoxError>("late")
        }));
    let err = svc
        .ready()
        .await
        .expect("ready")
        .call(())
        .await
        .expect_err("times out");
    let outcome = DefaultClassifier.classify(Err::<&&str, _>(&err));
    assert_eq!(outcome.kind(), Some(FailureKind::Timeout));
    assert!(outcome.kind().is_some_and(FailureKind::is_retryable));
}

#[tokio::test]
async fn a_refused_connection_is_transport() {
    // Bind then drop a listener: its port is free and nothing accepts on it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let err = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect_err("nothing listens");
    assert_eq!(classify_dyn_error(&err).kind, FailureKind::Transport);

    // Wrapped the way an HTTP client wraps it, it still classifies.
    let wrapped = std::io::Error::other(
        UpstreamError::new(FailureKind::Transport, "connect").with_source(err),
    );
    assert_eq!(classify_dyn_error(&wrapped).kind, FailureKind::Transport);
}

#[tokio::test]
async fn errors_boxed_by_layers_keep_their_class() {
    // A service that fails the way a breaker does, boxed by `map_err` as a layer would.
    let svc =
        service_fn(|_: ()| async { Err::<(), _>(CircuitOpen::new(Duration::from_millis(250))) })
            .map_err(BoxError::from);
    let err = svc.oneshot(()).await.expect_err("open");
    let failure = classify_dyn_error(&*err);
    assert_eq!(failure.kind, FailureKind::CircuitOpen);
    assert_eq!(failure.retry_after, Some(Duration::from_millis(250)));
}

/// A service that is never ready, as a saturated upstream pool would be.
#[derive(Clone)]
struct NeverReady;

impl Service<()> for NeverReady {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn a_shed_load_is_overloaded() {
    let svc = ServiceBuilder::new().load_shed().service(NeverReady);
    let err = svc.oneshot(()).await.expect_err("shed");
    assert_eq!(classify_dyn_error(&*err).kind, FailureKind::Overloaded);
}

#[test]
fn unknown_errors_are_other_and_never_retried() {
    #[derive(Debug)]
    struct Mystery;
    impl std::fmt::Display for Mystery {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("mystery")
        }
    }
    impl std::error::Error for Mystery {}
    let err: BoxError = Box::new(Mystery);
    let failure = classify_dyn_error(&*err);
    assert_eq!(failure.kind, FailureKind::Other);
    assert!(!failure.kind.is_retryable());
    assert!(!failure.kind.is_upstream_unhealthy());
}
