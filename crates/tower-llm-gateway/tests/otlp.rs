//! OTLP export (feature `otlp`) to a collector on loopback: spans with the GenAI attributes,
//! one trace from the client through the gateway to the upstream, and the metrics.
//!
//! One test in this binary: the tracing subscriber and the metrics recorder are global.

#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use tower_llm_gateway::telemetry::Telemetry;
use tower_llm_gateway::{Config, Gateway, serve};
use tower_llm_testkit::{FaultPlan, MockServer, TestClient, openai_chat, with_api_key};
use tracing_subscriber::layer::SubscriberExt;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00f067aa0ba902b7";
const COLLECTOR_KEY: &str = "Bearer collector-secret-51ac";

/// What the loopback collector received, per path.
#[derive(Clone, Default)]
struct Received {
    traces: Arc<Mutex<Vec<Bytes>>>,
    metrics: Arc<Mutex<Vec<Bytes>>>,
    authorization: Arc<Mutex<Vec<String>>>,
}

async fn collector() -> (String, Received) {
    let received = Received::default();
    let keep = |into: fn(&Received) -> &Arc<Mutex<Vec<Bytes>>>| {
        let received = received.clone();
        post(move |headers: HeaderMap, body: Bytes| async move {
            if let Some(auth) = headers.get("authorization") {
                received
                    .authorization
                    .lock()
                    .unwrap()
                    .push(auth.to_str().unwrap().to_owned());
            }
            into(&received).lock().unwrap().push(body);
            ""
        })
    };
    let app = Router::new()
        .route("/v1/traces", keep(|r| &r.traces))
        .route("/v1/metrics", keep(|r| &r.metrics));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string(value: Option<&AnyValue>) -> Option<&str> {
    match value {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_the_collector_as_one_trace_with_the_upstream() {
    let (endpoint, received) = collector().await;
    let upstream = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let config = Config::from_toml(&format!(
        r#"
[[keys]]
key = "sk-otlp"
tenant = "a"

[providers.mock]
kind = "openai"
base_url = "{base}/v1"
models = ["m"]

[telemetry]
endpoint = "{endpoint}"
service_name = "gateway-under-test"
export_interval = "100ms"
headers = {{ authorization = "{COLLECTOR_KEY}" }}
"#,
        base = upstream.base_url()
    ))
    .unwrap();
    assert!(
        !format!("{config:?}").contains("collector-secret"),
        "collector headers are secrets"
    );

    let telemetry = Telemetry::start(&config).unwrap();
    assert!(!format!("{telemetry:?}").contains("collector-secret"));
    let subscriber = tracing_subscriber::registry().with(telemetry.tracing_layer());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let gateway = Gateway::new(&config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        gateway.router(),
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let mut request = with_api_key(openai_chat(&format!("http://{addr}"), "m", "hi"), "sk-otlp");
    request.headers_mut().insert(
        "traceparent",
        format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01")
            .parse()
            .unwrap(),
    );
    let response = TestClient::new()
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The upstream is in the client's trace, under the gateway's span, not the client's.
    let received_upstream = upstream.received();
    let sent = received_upstream[0].headers["traceparent"]
        .to_str()
        .unwrap();
    let fields: Vec<&str> = sent.split('-').collect();
    assert_eq!(fields[1], CLIENT_TRACE, "{sent}");
    assert_ne!(
        fields[2], CLIENT_PARENT,
        "the gateway's span is the parent: {sent}"
    );
    let upstream_parent = fields[2].to_owned();

    // Let a metrics export or two run, then flush everything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();

    let spans: Vec<Span> = received
        .traces
        .lock()
        .unwrap()
        .iter()
        .flat_map(|body| {
            ExportTraceServiceRequest::decode(body.as_ref())
                .unwrap()
                .resource_spans
        })
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect();
    let chat = spans
        .iter()
        .find(|s| string(attribute(s, "gen_ai.operation.name")) == Some("chat"))
        .unwrap_or_else(|| {
            panic!(
                "no GenAI chat span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(chat.name, "chat m");
    assert_eq!(string(attribute(chat, "gen_ai.request.model")), Some("m"));
    assert_eq!(
        string(attribute(chat, "gen_ai.provider.name")),
        Some("openai")
    );
    assert_eq!(hex(&chat.trace_id), CLIENT_TRACE);
    assert_eq!(
        hex(&chat.span_id),
        upstream_parent,
        "the upstream's parent is the provider span"
    );
    let request = spans
        .iter()
        .find(|s| s.name == "gateway.request")
        .expect("the gateway's request span");
    assert_eq!(hex(&request.trace_id), CLIENT_TRACE);
    assert_eq!(
        hex(&request.parent_span_id),
        CLIENT_PARENT,
        "a child of the client's span"
    );
    assert_eq!(
        string(attribute(request, "gen_ai.request.model")),
        Some("m")
    );

    let metric_names: Vec<String> = received
        .metrics
        .lock()
        .unwrap()
        .iter()
        .flat_map(|body| {
            ExportMetricsServiceRequest::decode(body.as_ref())
                .unwrap()
                .resource_metrics
        })
        .flat_map(|r| r.scope_metrics)
        .flat_map(|s| s.metrics)
        .map(|m| m.name)
        .collect();
    for name in [
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "tower_llm_gateway_requests_total",
        "tower_llm_gateway_in_flight_requests",
    ] {
        assert!(
            metric_names.iter().any(|n| n == name),
            "{name} not exported: {metric_names:?}"
        );
    }
    // The Prometheus page goes on as before, beside the export.
    let page = TestClient::new()
        .ready()
        .await
        .unwrap()
        .call(
            http::Request::get(format!("http://{addr}/metrics"))
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let page = String::from_utf8_lossy(page.body()).into_owned();
    assert!(
        page.contains("gen_ai_client_operation_duration_seconds"),
        "{page}"
    );

    let auth = received.authorization.lock().unwrap();
    assert!(!auth.is_empty() && auth.iter().all(|a| a == COLLECTOR_KEY));
}
