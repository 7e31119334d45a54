//! One capture of what a crate's observability funnel emits, for its tests: every `tracing`
//! event and span close as JSON, every `metrics` series with its labels, unit, description
//! and value, and checks that no secret (a prompt, an answer, a key) reached either.
//!
//! [`Capture::install`] sets a JSON `tracing_subscriber::fmt` subscriber at `TRACE` (with span
//! close events and the current span on each line) and a capturing `metrics` recorder as this
//! thread's defaults until the [`Capture`] is dropped; run the calls under test on a
//! current-thread tokio runtime on the same thread, then read [`Capture::events`] and
//! [`Capture::metrics`].
//!
//! **One test per test binary.** `tracing` caches each callsite's interest process-wide, the
//! first time it is hit: a callsite first hit by a test running beside this one, on another
//! thread with no subscriber, stays disabled for this one too. Give each observe test a
//! binary of its own (`tests/observe.rs` with one `#[test]`).
//!
//! Metrics follow the `metrics` facade's rule: a handle is bound to the recorder installed
//! when it was registered, so build the layer or provider under test after
//! [`Capture::install`].
//!
//! Behind the `observe` feature (it brings `tracing-subscriber` and `metrics-util`).
//!
//! # Example
//!
//! ```
//! use tower_llm_testkit::observe::Capture;
//!
//! let capture = Capture::install();
//! tracing::warn!(name = "breaker", from = "closed", "breaker: opened");
//! metrics::counter!("tower_llm_breaker_rejected_total", "name" => "breaker").increment(2);
//!
//! let opened = capture.find_named("breaker: opened", "breaker");
//! assert_eq!(opened.len(), 1);
//! assert_eq!(opened[0]["level"], "WARN");
//! assert_eq!(opened[0]["fields"]["from"], "closed");
//!
//! let metrics = capture.metrics();
//! assert_eq!(metrics.counter("tower_llm_breaker_rejected_total", &[("name", "breaker")]), 2);
//! capture.assert_absent(&["sk-secret"]);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
pub use metrics_util::MetricKind;
use metrics_util::registry::{AtomicStorage, Registry};
use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

/// What the funnel emitted while installed: the log lines and the metric series.
///
/// Dropping it restores the thread's previous subscriber and recorder.
pub struct Capture {
    logs: Logs,
    recorder: CaptureRecorder,
    _metrics: metrics::LocalRecorderGuard<'static>,
    _tracing: tracing::subscriber::DefaultGuard,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Capture {
    /// Starts capturing on this thread: a JSON subscriber at `TRACE` and a recorder, the
    /// thread's defaults until the capture is dropped.
    ///
    /// The recorder is leaked (a few hundred bytes plus what it records), because the
    /// `metrics` facade holds the thread's recorder by a reference that must outlive the
    /// guard; a test binary installs one.
    pub fn install() -> Capture {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(FmtSpan::CLOSE)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(logs.clone())
            .finish();
        let recorder = CaptureRecorder::default();
        let installed: &'static CaptureRecorder = Box::leak(Box::new(recorder.clone()));
        Capture {
            logs,
            recorder,
            _metrics: metrics::set_default_local_recorder(installed),
            _tracing: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Every line written so far (events and span closes), as the JSON formatter wrote it.
    pub fn text(&self) -> String {
        self.logs.text()
    }

    /// Every line written so far, parsed: `level`, `target`, `fields` (with `message`), and
    /// `span` when it was written inside one.
    ///
    /// # Panics
    ///
    /// If a line is not JSON (the subscriber writes one object per line).
    pub fn events(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// The events with this message.
    pub fn find(&self, message: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["fields"]["message"] == message)
            .collect()
    }

    /// The events with this message and this `name` field (the name of the layer or provider
    /// that emitted them).
    pub fn find_named(&self, message: &str, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["fields"]["message"] == message && e["fields"]["name"] == name)
            .collect()
    }

    /// The fields of the span called `span` whose `name` field is `name`, as last recorded,
    /// read from its close event; `None` while it is open.
    ///
    /// The JSON formatter writes a span's own name after its fields, under the same key as a
    /// `name` field, so the field is matched in the raw line.
    pub fn closed_span(&self, span: &str, name: &str) -> Option<Value> {
        let field = format!(r#""name":{}"#, Value::from(name));
        self.text().lines().find_map(|raw| {
            let line: Value = serde_json::from_str(raw).ok()?;
            let closed = line["fields"]["message"] == "close"
                && line["span"]["name"] == span
                && raw.contains(&field);
            closed.then(|| line["span"].clone())
        })
    }

    /// Every metric series recorded so far, in the order they were registered. Reading does
    /// not reset anything: call it as often as you like.
    pub fn metrics(&self) -> Metrics {
        self.recorder.snapshot()
    }

    /// Asserts that none of `secrets` appears in a log line, a metric's name, a label or a
    /// description.
    ///
    /// # Panics
    ///
    /// On the first secret found, saying where.
    pub fn assert_absent(&self, secrets: &[&str]) {
        let text = self.text();
        let metrics = self.metrics();
        for secret in secrets {
            if let Some(line) = text.lines().find(|line| line.contains(secret)) {
                panic!("{secret:?} was logged: {line}");
            }
            for metric in metrics.iter() {
                let found = metric.name.contains(secret)
                    || metric
                        .labels
                        .iter()
                        .any(|(k, v)| k.contains(secret) || v.contains(secret))
                    || metric
                        .description
                        .as_deref()
                        .is_some_and(|d| d.contains(secret));
                assert!(!found, "{secret:?} is in a metric: {metric:?}");
            }
        }
    }
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }
}

impl io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// A recorder that keeps every series and reads them without resetting them (metrics-util's
/// `DebuggingRecorder` resets counters and gauges and drains histograms on each snapshot).
#[derive(Clone, Default)]
struct CaptureRecorder {
    inner: Arc<RecorderInner>,
}

/// What a metric name of a kind was described with: its unit and its description.
type Descriptions = HashMap<(MetricKind, String), (Option<Unit>, SharedString)>;

struct RecorderInner {
    registry: Registry<Key, AtomicStorage>,
    /// Series in the order they were registered.
    seen: Mutex<Vec<(MetricKind, Key)>>,
    described: Mutex<Descriptions>,
}

impl Default for RecorderInner {
    fn default() -> Self {
        RecorderInner {
            registry: Registry::atomic(),
            seen: Mutex::default(),
            described: Mutex::default(),
        }
    }
}

impl CaptureRecorder {
    fn describe(&self, kind: MetricKind, key: KeyName, unit: Option<Unit>, text: SharedString) {
        let mut described = self
            .inner
            .described
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = described
            .entry((kind, key.as_str().to_owned()))
            .or_insert((None, text.clone()));
        if unit.is_some() {
            entry.0 = unit;
        }
        entry.1 = text;
    }

    fn track(&self, kind: MetricKind, key: &Key) {
        let mut seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !seen.iter().any(|(k, known)| *k == kind && known == key) {
            seen.push((kind, key.clone()));
        }
    }

    fn snapshot(&self) -> Metrics {
        let seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let described = self
            .inner
            .described
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let registry = &self.inner.registry;
        let series = seen
            .into_iter()
            .filter_map(|(kind, key)| {
                let value = match kind {
                    MetricKind::Counter => {
                        MetricValue::Counter(registry.get_counter(&key)?.load(Ordering::SeqCst))
                    }
                    MetricKind::Gauge => MetricValue::Gauge(f64::from_bits(
                        registry.get_gauge(&key)?.load(Ordering::SeqCst),
                    )),
                    MetricKind::Histogram => {
                        MetricValue::Histogram(registry.get_histogram(&key)?.data())
                    }
                };
                let (unit, description) = described
                    .get(&(kind, key.name().to_owned()))
                    .map_or((None, None), |(unit, text)| (*unit, Some(text.to_string())));
                Some(Metric {
                    name: key.name().to_owned(),
                    kind,
                    labels: key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect(),
                    unit,
                    description,
                    value,
                })
            })
            .collect();
        Metrics(series)
    }
}

impl Recorder for CaptureRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(MetricKind::Counter, key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(MetricKind::Gauge, key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(MetricKind::Histogram, key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.track(MetricKind::Counter, key);
        self.inner
            .registry
            .get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.track(MetricKind::Gauge, key);
        self.inner
            .registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.track(MetricKind::Histogram, key);
        self.inner
            .registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(Arc::clone(h)))
    }
}

/// A metric's value when it was read.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricValue {
    /// A counter's total.
    Counter(u64),
    /// A gauge's last value.
    Gauge(f64),
    /// Every sample a histogram received, in order.
    Histogram(Vec<f64>),
}

/// One series: a metric name and a label set.
#[derive(Clone, Debug)]
pub struct Metric {
    /// The metric's name.
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The labels, in the order they were given.
    pub labels: Vec<(String, String)>,
    /// The unit it was described with.
    pub unit: Option<Unit>,
    /// The description it was described with.
    pub description: Option<String>,
    /// Its value.
    pub value: MetricValue,
}

impl Metric {
    /// The value of the label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every `(key, value)` of `want` is among its labels.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(v))
    }

    /// Its labels are exactly `want`, in any order.
    pub fn has_exactly(&self, want: &[(&str, &str)]) -> bool {
        self.labels.len() == want.len() && self.has_labels(want)
    }

    /// A counter's total.
    ///
    /// # Panics
    ///
    /// If it is not a counter.
    pub fn counter(&self) -> u64 {
        match self.value {
            MetricValue::Counter(n) => n,
            ref other => panic!("{} is not a counter: {other:?}", self.name),
        }
    }

    /// A gauge's value.
    ///
    /// # Panics
    ///
    /// If it is not a gauge.
    pub fn gauge(&self) -> f64 {
        match self.value {
            MetricValue::Gauge(v) => v,
            ref other => panic!("{} is not a gauge: {other:?}", self.name),
        }
    }

    /// A histogram's samples.
    ///
    /// # Panics
    ///
    /// If it is not a histogram.
    pub fn histogram(&self) -> &[f64] {
        match &self.value {
            MetricValue::Histogram(samples) => samples,
            other => panic!("{} is not a histogram: {other:?}", self.name),
        }
    }

    /// Asserts that it was described with `unit` and a description, and returns it.
    ///
    /// # Panics
    ///
    /// If the unit differs or the description is missing or empty.
    #[track_caller]
    pub fn assert_described(&self, unit: Unit) -> &Self {
        assert_eq!(self.unit, Some(unit), "{}: unit", self.name);
        assert!(
            self.description.as_deref().is_some_and(|d| !d.is_empty()),
            "{}: no description",
            self.name
        );
        self
    }
}

/// Every series recorded, in the order they were registered.
#[derive(Clone, Debug)]
pub struct Metrics(Vec<Metric>);

impl Metrics {
    /// The series.
    pub fn iter(&self) -> std::slice::Iter<'_, Metric> {
        self.0.iter()
    }

    /// The first series of `name` whose labels include every pair of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Metric> {
        self.iter().find(|m| m.name == name && m.has_labels(labels))
    }

    /// Like [`find`](Self::find), but the series must be there.
    ///
    /// # Panics
    ///
    /// If it is not, listing what was recorded.
    #[track_caller]
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> &Metric {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no {name} with {labels:?} in {:#?}", self.0))
    }

    /// The one series of `name` of this kind whose labels are exactly `labels`.
    ///
    /// # Panics
    ///
    /// If there is none or more than one, listing what was recorded.
    #[track_caller]
    pub fn exact(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> &Metric {
        let mut found = self
            .iter()
            .filter(|m| m.kind == kind && m.name == name && m.has_exactly(labels));
        match (found.next(), found.next()) {
            (Some(one), None) => one,
            _ => panic!(
                "not one {kind:?} {name} with exactly {labels:?} in {:#?}",
                self.0
            ),
        }
    }

    /// The total of the counter [`get`](Self::get) finds.
    ///
    /// # Panics
    ///
    /// If there is no such series or it is not a counter.
    #[track_caller]
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels).counter()
    }

    /// The value of the gauge [`get`](Self::get) finds.
    ///
    /// # Panics
    ///
    /// If there is no such series or it is not a gauge.
    #[track_caller]
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).gauge()
    }

    /// The samples of the histogram [`get`](Self::get) finds.
    ///
    /// # Panics
    ///
    /// If there is no such series or it is not a histogram.
    #[track_caller]
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.get(name, labels).histogram().to_vec()
    }
}

impl<'a> IntoIterator for &'a Metrics {
    type Item = &'a Metric;
    type IntoIter = std::slice::Iter<'a, Metric>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_do_not_reset_and_secrets_are_found() {
        let capture = Capture::install();
        metrics::describe_counter!("calls_total", Unit::Count, "Calls");
        let calls = metrics::counter!("calls_total", "name" => "a");
        calls.increment(2);
        metrics::gauge!("depth", "name" => "a").set(3.0);
        metrics::histogram!("wait_seconds", "name" => "a").record(0.5);
        tracing::info!(name = "a", size = 3, "flushed");

        for _ in 0..2 {
            let metrics = capture.metrics();
            assert_eq!(
                metrics
                    .get("calls_total", &[("name", "a")])
                    .assert_described(Unit::Count)
                    .counter(),
                2
            );
            assert_eq!(metrics.gauge("depth", &[]), 3.0);
            assert_eq!(
                metrics
                    .exact(MetricKind::Histogram, "wait_seconds", &[("name", "a")])
                    .histogram(),
                [0.5]
            );
        }
        calls.increment(1);
        assert_eq!(capture.metrics().counter("calls_total", &[]), 3);
        let flushed = capture.find_named("flushed", "a");
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0]["level"], "INFO");
        assert_eq!(flushed[0]["fields"]["size"], 3);
        capture.assert_absent(&["secret"]);

        let leaked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            metrics::counter!("x", "key" => "a secret").increment(1);
            capture.assert_absent(&["secret"]);
        }));
        assert!(leaked.is_err(), "a secret in a label is found");
    }
}
