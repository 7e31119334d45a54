//! OTLP export of the gateway's traces and metrics (cargo feature `otlp`), as the
//! configuration's `[telemetry]` table asks.
//!
//! [`Telemetry::start`] starts the exporters: OTLP over HTTP/protobuf to the collector's
//! `endpoint` (`/v1/traces`, `/v1/metrics`), sent by the providers' own hyper client on a
//! small runtime of its own, so that an export never waits on the application's runtime and
//! shutting down flushes from anywhere.
//!
//! - **Traces**: [`Telemetry::tracing_layer`] is the `tracing-opentelemetry` layer to add to
//!   the subscriber (the binary does). Every span the crates open is exported: the
//!   gateway's `gateway.request`, the providers' GenAI client spans (`chat {model}`, with
//!   `gen_ai.operation.name`, `gen_ai.request.model`, usage, ...), the layers' spans. A
//!   client's `traceparent` makes `gateway.request` its child, and the upstream gets the
//!   gateway's own context (the provider span's id), so one trace runs from the client
//!   through the gateway to the provider.
//! - **Metrics**: the crates record through the `metrics` facade; while export is on, the
//!   gateway's recorder forwards every counter, gauge and histogram to an OpenTelemetry
//!   meter as well as to the Prometheus `/metrics` page (instruments made once per metric
//!   name, labels as attributes, descriptions and units from the `describe_*` calls). The
//!   GenAI client metrics take their semantic-convention names and attribute names
//!   (`gen_ai.client.operation.duration`, `gen_ai.client.token.usage`,
//!   `gen_ai.client.operation.time_to_first_chunk`; `gen_ai.request.model`, `error.type`,
//!   ...) with the conventions' bucket boundaries; every other series keeps its Prometheus
//!   name. Start telemetry before the first [`Gateway::new`](crate::Gateway::new): the
//!   process's recorder is installed then, and the layers register their series when built.
//!
//! # Example
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//! use tower_llm_gateway::{Config, Gateway, telemetry::Telemetry};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower_llm_core::BoxError> {
//! let config = Config::from_file("gateway.toml")?;
//! let telemetry = Telemetry::start(&config)?;
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer())
//!     .with(telemetry.tracing_layer())
//!     .init();
//! let gateway = Gateway::new(&config).await?;
//! // ... serve gateway.router() ...
//! telemetry.shutdown(); // flushes what is left
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{KeyValue, StringValue};
use opentelemetry_http::{HttpClient as OtlpHttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tower_llm_core::BoxError;
use tower_llm_providers::{HttpClient, HttpClientConfig, RequestBody};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt as _};

use crate::config::{Config, TelemetryConfig};
use crate::trace_context::TraceContext;

/// Whether spans are exported: only then does the gateway's span become the client's child
/// and the upstream's parent.
static TRACES_ON: AtomicBool = AtomicBool::new(false);

/// The meter the gateway's metrics recorder forwards to, set by [`Telemetry::start`].
static METER: OnceLock<Meter> = OnceLock::new();

/// The OTLP exporters of one gateway process. See the [module docs](self).
///
/// Dropping it shuts the exporters down as [`Telemetry::shutdown`] does. `Debug` shows the
/// endpoint and what is exported, never the collector headers.
pub struct Telemetry {
    endpoint: String,
    tracer: Option<(SdkTracerProvider, SdkTracer)>,
    meters: Option<SdkMeterProvider>,
    export_timeout: Duration,
    /// Ends the exporters' runtime thread when dropped.
    _runtime: Option<tokio::sync::oneshot::Sender<()>>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("endpoint", &self.endpoint)
            .field("traces", &self.tracer.is_some())
            .field("metrics", &self.meters.is_some())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts what `config`'s `[telemetry]` asks for (nothing without the table). Call it
    /// once per process, before the first [`Gateway::new`](crate::Gateway::new) when
    /// metrics are exported.
    pub fn start(config: &Config) -> Result<Telemetry, BoxError> {
        let Some(t) = &config.telemetry else {
            return Ok(Telemetry::inert());
        };
        if !t.traces && !t.metrics {
            return Ok(Telemetry::inert());
        }
        if t.metrics && crate::app::prometheus_installed() {
            return Err(
                "telemetry: start it before the first Gateway::new: the metrics \
                        recorder is already installed, without OTLP export"
                    .into(),
            );
        }
        if t.metrics && METER.get().is_some() {
            return Err("telemetry: metrics export is already started in this process".into());
        }
        let (handle, stop) = export_runtime()?;
        let client = ExportClient {
            client: HttpClientConfig::default().build()?,
            runtime: handle,
            timeout: t.export_timeout,
        };
        let resource = Resource::builder()
            .with_service_name(t.service_name.clone())
            .build();
        let headers: HashMap<String, String> = t
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.expose().to_owned()))
            .collect();

        let tracer = if t.traces {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client.clone())
                .with_endpoint(format!("{}/v1/traces", t.endpoint))
                .with_timeout(t.export_timeout)
                .with_headers(headers.clone())
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_batch_exporter(exporter)
                .build();
            let tracer = provider.tracer("tower-llm-gateway");
            Some((provider, tracer))
        } else {
            None
        };
        let meters = if t.metrics {
            Some(start_metrics(t, client, resource, headers)?)
        } else {
            None
        };
        // Only once everything started: a failed start leaves the gateway as it was.
        TRACES_ON.store(tracer.is_some(), Ordering::Release);
        Ok(Telemetry {
            endpoint: t.endpoint.clone(),
            tracer,
            meters,
            export_timeout: t.export_timeout,
            _runtime: Some(stop),
        })
    }

    fn inert() -> Telemetry {
        Telemetry {
            endpoint: String::new(),
            tracer: None,
            meters: None,
            export_timeout: Duration::ZERO,
            _runtime: None,
        }
    }

    /// The `tracing` layer that exports spans, `None` when traces are not exported (an
    /// `Option` of a layer is a layer: add it as it is).
    pub fn tracing_layer<S>(&self) -> Option<OpenTelemetryLayer<S, SdkTracer>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        self.tracer
            .as_ref()
            .map(|(_, tracer)| tracing_opentelemetry::layer().with_tracer(tracer.clone()))
    }

    /// Exports what is left and stops the exporters (blocks for at most about twice the
    /// export timeout).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some((provider, _)) = self.tracer.take() {
            TRACES_ON.store(false, Ordering::Release);
            if let Err(e) = provider.shutdown_with_timeout(self.export_timeout) {
                tracing::warn!(error = %e, "telemetry: the last spans were not all exported");
            }
        }
        if let Some(provider) = self.meters.take()
            && let Err(e) = provider.shutdown_with_timeout(self.export_timeout)
        {
            tracing::warn!(error = %e, "telemetry: the last metrics were not exported");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A current-thread runtime on a thread of its own for the exports; it ends when the sender
/// is dropped.
fn export_runtime() -> std::io::Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
    Ok((handle, stop))
}

fn start_metrics(
    t: &TelemetryConfig,
    client: ExportClient,
    resource: Resource,
    headers: HashMap<String, String>,
) -> Result<SdkMeterProvider, BoxError> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(format!("{}/v1/metrics", t.endpoint))
        .with_timeout(t.export_timeout)
        .with_headers(headers)
        .build()?;
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
        .with_interval(t.export_interval)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .build();
    METER
        .set(provider.meter("tower-llm-gateway"))
        .map_err(|_| "telemetry: metrics export is already started in this process")?;
    Ok(provider)
}

/// The OTLP exporters' HTTP client: the providers' hyper client, driven on the exporters'
/// own runtime (the SDK exports from threads of its own, outside any runtime).
#[derive(Clone)]
struct ExportClient {
    client: HttpClient,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportClient").finish_non_exhaustive()
    }
}

/// The most of a collector's answer read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

impl ExportClient {
    async fn send(
        client: HttpClient,
        timeout: Duration,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let request = request.map(RequestBody::new);
        let exchange = async move {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await?;
            Ok::<_, HttpError>(http::Response::from_parts(parts, body.to_bytes()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::from("the collector did not answer in time"))?
    }
}

impl OtlpHttpClient for ExportClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let task = self.runtime.spawn(ExportClient::send(
            self.client.clone(),
            self.timeout,
            request,
        ));
        Box::pin(async move {
            task.await
                .map_err(|_| HttpError::from("the export runtime is gone"))?
        })
    }
}

/// Makes `span` (the gateway's request span) a child of the client's context, when spans
/// are exported.
pub(crate) fn set_parent(span: &tracing::Span, client: &TraceContext) {
    if !TRACES_ON.load(Ordering::Acquire) || span.is_disabled() {
        return;
    }
    let Some(remote) = span_context(client) else {
        return;
    };
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The client's context as OpenTelemetry's.
fn span_context(client: &TraceContext) -> Option<SpanContext> {
    let text = client.traceparent().to_str().ok()?;
    let mut fields = text.split('-').skip(1);
    let trace_id = TraceId::from_hex(fields.next()?).ok()?;
    let span_id = SpanId::from_hex(fields.next()?).ok()?;
    let flags = u8::from_str_radix(fields.next()?, 16).ok()?;
    let state = client
        .tracestate()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

/// Writes the current span's context on an upstream request, when spans are exported and
/// the span has one; `false` otherwise (then the client's is passed on as it came).
pub(crate) fn write_span_context(headers: &mut HeaderMap) -> bool {
    if !TRACES_ON.load(Ordering::Acquire) {
        return false;
    }
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return false;
    }
    TraceContextPropagator::new()
        .inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers));
    // The propagator writes `tracestate` even when there is none; an empty one is noise.
    if headers
        .get(http::header::HeaderName::from_static("tracestate"))
        .is_some_and(|v| v.is_empty())
    {
        headers.remove("tracestate");
    }
    true
}

/// The meter metrics are forwarded to, once [`Telemetry::start`] has started metrics export.
pub(crate) fn meter() -> Option<Meter> {
    METER.get().cloned()
}

/// A `metrics` recorder that forwards everything to `inner` (the Prometheus recorder) and to
/// an OpenTelemetry meter.
///
/// Counters and gauges are atomics read by observable instruments at each export (nothing
/// but an atomic add per update); histograms record into the meter's histogram. Handles are
/// kept per key (metric name and labels), so a `metrics::counter!` call costs one map read.
pub(crate) struct OtelRecorder<R> {
    inner: R,
    meter: Meter,
    state: RwLock<State>,
}

impl<R> fmt::Debug for OtelRecorder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelRecorder").finish_non_exhaustive()
    }
}

/// The series of one observable instrument: each one's attributes and value.
type Series<V> = Arc<RwLock<Vec<(Vec<KeyValue>, Arc<V>)>>>;

/// Where `State` keeps one kind of handle: read, then written.
type Slot<H> = (
    fn(&State) -> &HashMap<Key, H>,
    fn(&mut State) -> &mut HashMap<Key, H>,
);

#[derive(Default)]
struct State {
    descriptions: HashMap<String, (Option<Unit>, SharedString)>,
    counters: HashMap<Key, Counter>,
    gauges: HashMap<Key, Gauge>,
    histograms: HashMap<Key, Histogram>,
    counter_series: HashMap<String, Series<AtomicU64>>,
    gauge_series: HashMap<String, Series<AtomicU64>>,
    otel_histograms: HashMap<String, opentelemetry::metrics::Histogram<f64>>,
}

/// The GenAI client metrics under their semantic-convention names, with their units and
/// bucket boundaries.
fn genai(name: &str) -> Option<(&'static str, &'static str, &'static [f64])> {
    use tower_llm_providers::{
        DURATION_BUCKETS, METRIC_OPERATION_DURATION, METRIC_TIME_TO_FIRST_CHUNK,
        METRIC_TOKEN_USAGE, TOKEN_BUCKETS,
    };
    if name == METRIC_OPERATION_DURATION {
        Some(("gen_ai.client.operation.duration", "s", DURATION_BUCKETS))
    } else if name == METRIC_TOKEN_USAGE {
        Some(("gen_ai.client.token.usage", "{token}", TOKEN_BUCKETS))
    } else if name == METRIC_TIME_TO_FIRST_CHUNK {
        Some((
            "gen_ai.client.operation.time_to_first_chunk",
            "s",
            DURATION_BUCKETS,
        ))
    } else {
        None
    }
}

/// A label's attribute name: the conventions' dotted names for the GenAI labels.
fn attribute_name(label: &str) -> String {
    match label {
        "gen_ai_operation_name" => "gen_ai.operation.name".to_owned(),
        "gen_ai_provider_name" => "gen_ai.provider.name".to_owned(),
        "gen_ai_request_model" => "gen_ai.request.model".to_owned(),
        "gen_ai_response_model" => "gen_ai.response.model".to_owned(),
        "gen_ai_token_type" => "gen_ai.token.type".to_owned(),
        "error_type" => "error.type".to_owned(),
        other => other.to_owned(),
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|label| {
            KeyValue::new(
                attribute_name(label.key()),
                StringValue::from(label.value().to_owned()),
            )
        })
        .collect()
}

fn ucum(unit: Unit) -> &'static str {
    match unit {
        Unit::Count => "1",
        Unit::Percent => "%",
        Unit::Seconds => "s",
        Unit::Milliseconds => "ms",
        Unit::Microseconds => "us",
        Unit::Nanoseconds => "ns",
        Unit::Tebibytes => "TiBy",
        Unit::Gibibytes => "GiBy",
        Unit::Mebibytes => "MiBy",
        Unit::Kibibytes => "KiBy",
        Unit::Bytes => "By",
        Unit::TerabitsPerSecond => "Tbit/s",
        Unit::GigabitsPerSecond => "Gbit/s",
        Unit::MegabitsPerSecond => "Mbit/s",
        Unit::KilobitsPerSecond => "kbit/s",
        Unit::BitsPerSecond => "bit/s",
        Unit::CountPerSecond => "1/s",
    }
}

impl<R: Recorder> OtelRecorder<R> {
    pub(crate) fn new(inner: R, meter: Meter) -> Self {
        OtelRecorder {
            inner,
            meter,
            state: RwLock::new(State::default()),
        }
    }

    /// The name, description and unit an instrument for `name` is made with.
    fn shape(state: &State, name: &str) -> (String, Option<String>, Option<&'static str>) {
        let described = state.descriptions.get(name);
        let description = described.map(|(_, d)| d.to_string());
        let unit = described.and_then(|(u, _)| *u).map(ucum);
        match genai(name) {
            Some((otel, unit, _)) => (otel.to_owned(), description, Some(unit)),
            None => (name.to_owned(), description, unit),
        }
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if let Ok(mut state) = self.state.write() {
            state
                .descriptions
                .entry(key.as_str().to_owned())
                .or_insert((unit, description));
        }
    }

    /// The handle registered for `key` in the map `slot` picks, made by `build` the first time
    /// (under the write lock, checked again there so that two racing callers share one).
    /// When the lock is poisoned, the Prometheus side alone (`fallback`).
    fn handle<H: Clone>(
        &self,
        key: &Key,
        (seen, slot): Slot<H>,
        fallback: impl FnOnce() -> H,
        build: impl FnOnce(&mut State) -> H,
    ) -> H {
        // Most calls find it: `metrics::counter!` at a call site registers on every call.
        if let Some(handle) = self
            .state
            .read()
            .ok()
            .and_then(|s| seen(&s).get(key).cloned())
        {
            return handle;
        }
        let Ok(mut state) = self.state.write() else {
            return fallback();
        };
        if let Some(handle) = slot(&mut state).get(key) {
            return handle.clone();
        }
        let handle = build(&mut state);
        slot(&mut state).insert(key.clone(), handle.clone());
        handle
    }

    fn observable(&self, state: &mut State, key: &Key, counter: bool) -> Arc<AtomicU64> {
        let name = key.name();
        let series = if counter {
            state.counter_series.get(name).cloned()
        } else {
            state.gauge_series.get(name).cloned()
        };
        let series = match series {
            Some(series) => series,
            None => {
                let series: Series<AtomicU64> = Arc::default();
                let (otel_name, description, unit) = Self::shape(state, name);
                let read = series.clone();
                if counter {
                    let mut builder = self.meter.u64_observable_counter(otel_name);
                    if let Some(d) = description {
                        builder = builder.with_description(d);
                    }
                    if let Some(u) = unit {
                        builder = builder.with_unit(u);
                    }
                    builder
                        .with_callback(move |observer| {
                            if let Ok(series) = read.read() {
                                for (attributes, value) in series.iter() {
                                    observer.observe(value.load(Ordering::Relaxed), attributes);
                                }
                            }
                        })
                        .build();
                    state.counter_series.insert(name.to_owned(), series.clone());
                } else {
                    let mut builder = self.meter.f64_observable_gauge(otel_name);
                    if let Some(d) = description {
                        builder = builder.with_description(d);
                    }
                    if let Some(u) = unit {
                        builder = builder.with_unit(u);
                    }
                    builder
                        .with_callback(move |observer| {
                            if let Ok(series) = read.read() {
                                for (attributes, value) in series.iter() {
                                    let value = f64::from_bits(value.load(Ordering::Relaxed));
                                    observer.observe(value, attributes);
                                }
                            }
                        })
                        .build();
                    state.gauge_series.insert(name.to_owned(), series.clone());
                }
                series
            }
        };
        let value = Arc::new(AtomicU64::new(if counter { 0 } else { 0f64.to_bits() }));
        if let Ok(mut series) = series.write() {
            series.push((attributes(key), value.clone()));
        }
        value
    }

    fn histogram(&self, state: &mut State, key: &Key) -> opentelemetry::metrics::Histogram<f64> {
        let name = key.name();
        if let Some(histogram) = state.otel_histograms.get(name) {
            return histogram.clone();
        }
        let (otel_name, description, unit) = Self::shape(state, name);
        let mut builder = self.meter.f64_histogram(otel_name);
        if let Some(d) = description {
            builder = builder.with_description(d);
        }
        if let Some(u) = unit {
            builder = builder.with_unit(u);
        }
        if let Some((_, _, buckets)) = genai(name) {
            builder = builder.with_boundaries(buckets.to_vec());
        }
        let histogram = builder.build();
        state
            .otel_histograms
            .insert(name.to_owned(), histogram.clone());
        histogram
    }
}

struct BothCounter {
    inner: Counter,
    value: Arc<AtomicU64>,
}

impl CounterFn for BothCounter {
    fn increment(&self, value: u64) {
        self.inner.increment(value);
        self.value.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.inner.absolute(value);
        self.value.fetch_max(value, Ordering::Relaxed);
    }
}

struct BothGauge {
    inner: Gauge,
    value: Arc<AtomicU64>,
}

impl BothGauge {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(f(f64::from_bits(bits)).to_bits())
            });
    }
}

impl GaugeFn for BothGauge {
    fn increment(&self, value: f64) {
        self.inner.increment(value);
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.inner.decrement(value);
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.inner.set(value);
        self.value.store(value.to_bits(), Ordering::Relaxed);
    }
}

struct BothHistogram {
    inner: Histogram,
    otel: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl HistogramFn for BothHistogram {
    fn record(&self, value: f64) {
        self.inner.record(value);
        self.otel.record(value, &self.attributes);
    }
}

impl<R: Recorder> Recorder for OtelRecorder<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key.clone(), unit, description.clone());
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key.clone(), unit, description.clone());
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key.clone(), unit, description.clone());
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.handle(
            key,
            (|state| &state.counters, |state| &mut state.counters),
            || self.inner.register_counter(key, metadata),
            |state| {
                let value = self.observable(state, key, true);
                Counter::from_arc(Arc::new(BothCounter {
                    inner: self.inner.register_counter(key, metadata),
                    value,
                }))
            },
        )
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.handle(
            key,
            (|state| &state.gauges, |state| &mut state.gauges),
            || self.inner.register_gauge(key, metadata),
            |state| {
                let value = self.observable(state, key, false);
                Gauge::from_arc(Arc::new(BothGauge {
                    inner: self.inner.register_gauge(key, metadata),
                    value,
                }))
            },
        )
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.handle(
            key,
            (|state| &state.histograms, |state| &mut state.histograms),
            || self.inner.register_histogram(key, metadata),
            |state| {
                let otel = self.histogram(state, key);
                Histogram::from_arc(Arc::new(BothHistogram {
                    inner: self.inner.register_histogram(key, metadata),
                    otel,
                    attributes: attributes(key),
                }))
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
    use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
    use opentelemetry_sdk::metrics::{PeriodicReader, Temporality};

    use super::*;

    /// One exported data point: metric name, unit, attributes and value (a histogram's sum,
    /// with its count).
    type Point = (String, String, Vec<(String, String)>, f64, u64);

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Point>>>);

    impl PushMetricExporter for Capture {
        async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
            let mut points = self.0.lock().unwrap();
            points.clear();
            for metric in metrics.scope_metrics().flat_map(|s| s.metrics()) {
                let mut push = |attributes: Vec<(String, String)>, value: f64, count: u64| {
                    points.push((
                        metric.name().to_owned(),
                        metric.unit().to_owned(),
                        attributes,
                        value,
                        count,
                    ));
                };
                let pairs = |kvs: &mut dyn Iterator<Item = &KeyValue>| {
                    let mut pairs: Vec<(String, String)> = kvs
                        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                        .collect();
                    pairs.sort();
                    pairs
                };
                match metric.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        for p in sum.data_points() {
                            push(pairs(&mut p.attributes()), p.value() as f64, 0);
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Gauge(gauge)) => {
                        for p in gauge.data_points() {
                            push(pairs(&mut p.attributes()), p.value(), 0);
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                        for p in histogram.data_points() {
                            push(pairs(&mut p.attributes()), p.sum(), p.count());
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        }

        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }

        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    #[test]
    fn the_recorder_forwards_counters_gauges_and_histograms_with_the_genai_names() {
        let capture = Capture::default();
        let reader = PeriodicReader::builder(capture.clone())
            .with_interval(Duration::from_secs(3600))
            .build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        let recorder = OtelRecorder::new(metrics::NoopRecorder, provider.meter("test"));
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_counter!("requests_total", Unit::Count, "requests answered");
            metrics::counter!("requests_total", "route" => "/x").increment(2);
            metrics::counter!("requests_total", "route" => "/x").increment(3);
            // `absolute` never takes a cumulative sum back.
            metrics::counter!("requests_total", "route" => "/x").absolute(4);
            metrics::counter!("requests_total", "route" => "/y").absolute(7);
            metrics::gauge!("in_flight").increment(2.0);
            metrics::gauge!("in_flight").decrement(0.5);
            metrics::histogram!(
                tower_llm_providers::METRIC_OPERATION_DURATION,
                "gen_ai_request_model" => "m",
                "error_type" => "timeout"
            )
            .record(0.25);
        });
        provider.force_flush().unwrap();
        let points = capture.0.lock().unwrap().clone();
        let find = |name: &str, attributes: &[(&str, &str)]| {
            let attributes: Vec<(String, String)> = attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            points
                .iter()
                .find(|p| p.0 == name && p.2 == attributes)
                .unwrap_or_else(|| panic!("no {name} {attributes:?} in {points:?}"))
                .clone()
        };
        assert_eq!(find("requests_total", &[("route", "/x")]).3, 5.0);
        assert_eq!(find("requests_total", &[("route", "/y")]).3, 7.0);
        assert_eq!(find("requests_total", &[("route", "/x")]).1, "1");
        assert_eq!(find("in_flight", &[]).3, 1.5);
        let duration = find(
            "gen_ai.client.operation.duration",
            &[("error.type", "timeout"), ("gen_ai.request.model", "m")],
        );
        assert_eq!(
            (duration.1.as_str(), duration.3, duration.4),
            ("s", 0.25, 1)
        );
        provider.shutdown().unwrap();
    }
}
