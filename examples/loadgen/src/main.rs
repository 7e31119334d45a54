//! A load generator for OpenAI-compatible chat endpoints on this machine: the gateway, the
//! testkit mock, or any server speaking the API on loopback.
//!
//! ```text
//! cargo run --release -p example-loadgen --bin loadgen -- [OPTIONS]
//!
//!   --target URL        base URL (http://127.0.0.1:8080) or the full chat completions URL;
//!                       repeat it to measure several targets in the same run, the first
//!                       being the baseline the others are compared with. Without one, the
//!                       testkit mock is started in-process and measured.
//!   --rate R            open loop: R requests per second, whatever the answers do (default 100)
//!   --connections N     closed loop instead: N connections, each sending its next request
//!                       as soon as the previous answer is in
//!   --duration D        how long each measurement runs (default 10s; at most 1h)
//!   --requests N        stop after N requests instead (at most 10,000,000)
//!   --warmup D          load sent and not measured before each measurement (default 1s)
//!   --rounds K          measure the targets K times in turn (A B A B ...) and merge (default 1)
//!   --key KEY           sent as `Authorization: Bearer KEY` (default: env LOADGEN_API_KEY)
//!   --model NAME        the request's model (default gpt-4o-mini)
//!   --max-tokens N      the request's max_tokens (default 16)
//!   --same-prompt       send one prompt every time (default: each prompt is unique, so that
//!                       a dedup layer in the target cannot answer from its cache)
//!   --timeout D         per request (default 30s)
//!   --max-in-flight N   open loop: requests outstanding at most (default 4096)
//!   --mock-latency D    latency of the in-process mock when no target is given (default 0ms)
//! ```
//!
//! Durations are `250ms`, `10s`, `2m` or a plain number of seconds. Only loopback targets are
//! accepted (`127.0.0.0/8`, `::1`, `localhost`): this is a tool for measuring a stack on one
//! machine, not for loading someone else's server.
//!
//! # What it reports
//!
//! For each target: requests sent, answered and failed, the throughput of successful answers
//! (2xx answers divided by the time from the first send to the last answer), the latency of
//! successful answers at p50, p90, p99, p99.9 and max (an hdrhistogram with 3 significant
//! digits, microsecond resolution), failures by HTTP status (and `timeout`, `transport`),
//! and, in open loop, how late the generator itself dispatched requests. With several
//! targets, each is compared with the first: the latency added at each percentile and its
//! throughput as a share of the baseline's. `benches/README.md` shows the gateway measured
//! against its mock upstream this way.
//!
//! # Coordinated omission
//!
//! A generator that waits for an answer before sending the next request stops sending
//! exactly when the server is slow, so the slow period is under-sampled and the percentiles
//! look better than what a client at a fixed rate would see. The open loop here avoids that
//! by *intended-time scheduling*: request `i` is due at `start + i / rate`, a dedicated
//! thread dispatches it at that instant whatever the earlier requests are doing, and its
//! latency is measured **from the intended instant**, not from when it was actually sent. So
//! if the generator falls behind (the machine is busy, or `--max-in-flight` requests are
//! outstanding and it has to wait for one to finish), that delay is charged to the request,
//! as a real client at that rate would have felt it. This is exact for an open loop, so
//! hdrhistogram's `record_correct` (which synthesises the samples a closed loop missed,
//! assuming a known expected interval) is not needed and not used: it would double-count.
//! The dispatch lag (actual send minus intended instant) is reported on its own so that a
//! saturated generator is visible rather than silently blamed on the target.
//!
//! The closed loop measures throughput: each of its N connections records the latency of
//! its own requests from their actual send (the next request is not "due" before the
//! previous answer, so there is no omission to correct there); its percentiles describe the
//! service time at that concurrency, not what a client at a fixed rate would see.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, mpsc};
use tower_llm_core::BoxError;
use tower_llm_testkit::{FaultPlan, Latency, MockServer};

/// Highest latency the histograms hold: one hour in microseconds (later answers saturate).
const HIGHEST_MICROS: u64 = 3_600_000_000;
const MAX_DURATION: Duration = Duration::from_secs(3600);
const MAX_REQUESTS: u64 = 10_000_000;
const MAX_RATE: f64 = 200_000.0;
const MAX_CONNECTIONS: usize = 4096;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Requests per second.
    Open(f64),
    /// Connections.
    Closed(usize),
}

#[derive(Debug)]
struct Options {
    targets: Vec<String>,
    mode: Mode,
    duration: Option<Duration>,
    requests: Option<u64>,
    warmup: Duration,
    rounds: u32,
    key: Option<String>,
    model: String,
    max_tokens: u32,
    same_prompt: bool,
    timeout: Duration,
    max_in_flight: usize,
    mock_latency: Duration,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            targets: Vec::new(),
            mode: Mode::Open(100.0),
            duration: None,
            requests: None,
            warmup: Duration::from_secs(1),
            rounds: 1,
            key: std::env::var("LOADGEN_API_KEY").ok(),
            model: "gpt-4o-mini".to_owned(),
            max_tokens: 16,
            same_prompt: false,
            timeout: Duration::from_secs(30),
            max_in_flight: 4096,
            mock_latency: Duration::ZERO,
        };
        let mut rate = None;
        let mut connections = None;
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--target" => options.targets.push(value()?),
                "--rate" => rate = Some(number::<f64>(&flag, &value()?)?),
                "--connections" => connections = Some(number::<usize>(&flag, &value()?)?),
                "--duration" => options.duration = Some(duration(&flag, &value()?)?),
                "--requests" => options.requests = Some(number(&flag, &value()?)?),
                "--warmup" => options.warmup = duration(&flag, &value()?)?,
                "--rounds" => options.rounds = number(&flag, &value()?)?,
                "--key" => options.key = Some(value()?),
                "--model" => options.model = value()?,
                "--max-tokens" => options.max_tokens = number(&flag, &value()?)?,
                "--same-prompt" => options.same_prompt = true,
                "--timeout" => options.timeout = duration(&flag, &value()?)?,
                "--max-in-flight" => options.max_in_flight = number(&flag, &value()?)?,
                "--mock-latency" => options.mock_latency = duration(&flag, &value()?)?,
                other => return Err(format!("unknown option {other}\n\n{}", usage())),
            }
        }
        options.mode = match (rate, connections) {
            (Some(_), Some(_)) => return Err("give --rate or --connections, not both".into()),
            (Some(rate), None) if rate > 0.0 && rate <= MAX_RATE => Mode::Open(rate),
            (Some(rate), None) => {
                return Err(format!(
                    "--rate {rate}: must be above 0 and at most {MAX_RATE}"
                ));
            }
            (None, Some(n)) if (1..=MAX_CONNECTIONS).contains(&n) => Mode::Closed(n),
            (None, Some(n)) => {
                return Err(format!(
                    "--connections {n}: must be between 1 and {MAX_CONNECTIONS}"
                ));
            }
            (None, None) => Mode::Open(100.0),
        };
        if options.requests.is_some_and(|n| n == 0 || n > MAX_REQUESTS) {
            return Err(format!("--requests: must be between 1 and {MAX_REQUESTS}"));
        }
        if options
            .duration
            .is_some_and(|d| d.is_zero() || d > MAX_DURATION)
        {
            return Err("--duration: must be above 0 and at most 1h".into());
        }
        if options.warmup > MAX_DURATION {
            return Err("--warmup: at most 1h".into());
        }
        if options.rounds == 0 || options.rounds > 100 {
            return Err("--rounds: between 1 and 100".into());
        }
        if options.max_in_flight == 0 {
            return Err("--max-in-flight: at least 1".into());
        }
        if options.timeout.is_zero() {
            return Err("--timeout: above 0".into());
        }
        Ok(options)
    }

    /// How long a measurement may last: the given duration, 10 s when neither bound is
    /// given, the 1 h ceiling when only a request count is.
    fn measure_for(&self) -> Duration {
        match (self.duration, self.requests) {
            (Some(duration), _) => duration,
            (None, None) => Duration::from_secs(10),
            (None, Some(_)) => MAX_DURATION,
        }
    }
}

fn usage() -> String {
    "usage: cargo run --release -p example-loadgen --bin loadgen -- [--target URL]... \
     [--rate R | --connections N] [--duration D | --requests N] [--warmup D] [--rounds K] \
     [--key KEY] [--model NAME] [--max-tokens N] [--same-prompt] [--timeout D] \
     [--max-in-flight N] [--mock-latency D]\n(see the top of examples/loadgen/src/main.rs)"
        .to_owned()
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} {value}: not a valid number"))
}

/// A duration as every tool of the family writes one (core's humantime parser: `250ms`,
/// `10s`, `1m 30s`; a bare number is refused), at most [`MAX_DURATION`].
fn duration(flag: &str, value: &str) -> Result<Duration, String> {
    let parsed = tower_llm_core::parse_duration("loadgen", flag.to_owned(), value)
        .map_err(|e| e.to_string())?;
    if parsed > MAX_DURATION {
        return Err(format!("{flag} {value}: at most {MAX_DURATION:?}"));
    }
    Ok(parsed)
}

/// Accepts a loopback target only, and appends the chat completions path to a base URL.
fn chat_url(target: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = target
        .parse()
        .map_err(|e| format!("--target {target}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "--target {target}: only http:// targets on loopback"
        ));
    }
    let host = uri.host().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(format!(
            "--target {target}: {host} is not a loopback address; loadgen only measures \
             servers on this machine (127.0.0.1, ::1, localhost)"
        ));
    }
    let path = uri.path().trim_end_matches('/');
    let full = if path.ends_with("/chat/completions") {
        target.to_owned()
    } else if path.ends_with("/v1") {
        format!("{}{path}/chat/completions", origin(&uri))
    } else {
        format!("{}{path}/v1/chat/completions", origin(&uri))
    };
    full.parse().map_err(|e| format!("--target {target}: {e}"))
}

fn origin(uri: &http::Uri) -> String {
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    format!("http://{authority}")
}

/// What one request came to.
#[derive(Debug)]
enum Outcome {
    Status(u16),
    Timeout,
    Transport,
}

#[derive(Debug)]
struct Sample {
    outcome: Outcome,
    /// From the intended send instant (open loop) or the actual send (closed loop) to the
    /// last byte of the answer.
    latency: Duration,
    /// Actual send minus intended send (open loop only).
    lag: Duration,
}

/// One target's figures, merged over rounds.
#[derive(Debug)]
struct Report {
    url: String,
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
}

impl Report {
    fn new(url: String) -> Result<Report, BoxError> {
        Ok(Report {
            url,
            latency: histogram()?,
            lag: histogram()?,
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
        })
    }

    fn record(&mut self, sample: Sample) {
        self.sent += 1;
        self.lag.saturating_record(micros(sample.lag));
        match sample.outcome {
            Outcome::Status(status) if (200..300).contains(&status) => {
                self.ok += 1;
                self.latency.saturating_record(micros(sample.latency));
            }
            Outcome::Status(status) => *self.errors.entry(status.to_string()).or_default() += 1,
            Outcome::Timeout => *self.errors.entry("timeout".into()).or_default() += 1,
            Outcome::Transport => *self.errors.entry("transport".into()).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Report) -> Result<(), BoxError> {
        self.latency.add(&other.latency)?;
        self.lag.add(&other.lag)?;
        self.sent += other.sent;
        self.ok += other.ok;
        for (status, count) in other.errors {
            *self.errors.entry(status).or_default() += count;
        }
        self.elapsed += other.elapsed;
        Ok(())
    }

    fn throughput(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ok as f64 / seconds
        } else {
            0.0
        }
    }

    fn millis_at(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn print(&self, mode: Mode) {
        println!("{}", self.url);
        println!(
            "  sent {}  ok {}  failed {}  throughput {:.1} ok/s over {:.2}s",
            self.sent,
            self.ok,
            self.sent - self.ok,
            self.throughput(),
            self.elapsed.as_secs_f64()
        );
        if self.ok > 0 {
            let from = match mode {
                Mode::Open(_) => "from intended send",
                Mode::Closed(_) => "from actual send",
            };
            println!(
                "  latency ms ({from}): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                self.millis_at(0.50),
                self.millis_at(0.90),
                self.millis_at(0.99),
                self.millis_at(0.999),
                self.latency.max() as f64 / 1000.0
            );
        }
        if !self.errors.is_empty() {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(status, count)| format!("{status} x{count}"))
                .collect();
            println!("  failures by status: {}", errors.join(", "));
        }
        if let Mode::Open(_) = mode {
            println!(
                "  generator dispatch lag ms: p99 {:.3}  max {:.3}",
                self.lag.value_at_quantile(0.99) as f64 / 1000.0,
                self.lag.max() as f64 / 1000.0
            );
        }
    }
}

fn histogram() -> Result<Histogram<u64>, BoxError> {
    Ok(Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)?)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Builds request bodies; prompts are unique per process run unless `--same-prompt`.
#[derive(Debug)]
struct Bodies {
    model: String,
    max_tokens: u32,
    same_prompt: bool,
    run: u128,
    next: AtomicU64,
}

impl Bodies {
    fn next(&self) -> Bytes {
        let prompt = if self.same_prompt {
            "Say hello in five words.".to_owned()
        } else {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            format!(
                "loadgen run {:x} request {n}: say hello in five words.",
                self.run
            )
        };
        let body = serde_json::json!({
            "model": self.model,
            "messages": [{ "role": "user", "content": prompt }],
            "max_tokens": self.max_tokens,
        });
        Bytes::from(body.to_string())
    }
}

/// Everything a request needs, shared by every task of a run.
#[derive(Debug)]
struct Shot {
    client: HttpClient,
    url: http::Uri,
    authorization: Option<http::HeaderValue>,
    bodies: Bodies,
    timeout: Duration,
}

impl Shot {
    /// Sends one request and reads the whole answer.
    async fn fire(&self) -> Outcome {
        let mut request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.bodies.next()));
        if let (Ok(request), Some(auth)) = (&mut request, &self.authorization) {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, auth.clone());
        }
        let Ok(request) = request else {
            return Outcome::Transport;
        };
        let exchange = async {
            let response = self.client.request(request).await.ok()?;
            let status = response.status().as_u16();
            response.into_body().collect().await.ok()?;
            Some(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Some(status)) => Outcome::Status(status),
            Ok(None) => Outcome::Transport,
            Err(_) => Outcome::Timeout,
        }
    }
}

/// Open loop: request `i` is due at `start + i / rate`; a dedicated thread dispatches each at
/// its instant (a std sleep is precise to tens of microseconds, where tokio's timer ticks by
/// the millisecond) and each request's latency counts from that instant.
async fn open_loop(
    shot: Arc<Shot>,
    rate: f64,
    measure_for: Duration,
    requests: Option<u64>,
    max_in_flight: usize,
    report: &mut Report,
) -> Result<(), BoxError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let runtime = tokio::runtime::Handle::current();
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(5);
    let total = requests.unwrap_or(u64::MAX);
    let dispatcher = std::thread::spawn(move || {
        let mut i: u64 = 0;
        while i < total {
            let due = start + interval.mul_f64(i as f64);
            if due.duration_since(start) >= measure_for {
                break;
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // Waiting here for a free slot is charged to the request (its clock started at
            // `due`): the omission is corrected, not hidden.
            let Ok(permit) = runtime.block_on(in_flight.clone().acquire_owned()) else {
                break;
            };
            let shot = shot.clone();
            let tx = tx.clone();
            runtime.spawn(async move {
                let lag = Instant::now().saturating_duration_since(due);
                let outcome = shot.fire().await;
                let latency = Instant::now().saturating_duration_since(due);
                drop(permit);
                let _ = tx.send(Sample {
                    outcome,
                    latency,
                    lag,
                });
            });
            i += 1;
        }
    });
    let mut last = start;
    while let Some(sample) = rx.recv().await {
        report.record(sample);
        last = Instant::now();
    }
    dispatcher
        .join()
        .map_err(|_| "the dispatcher thread panicked")?;
    report.elapsed += last.saturating_duration_since(start);
    Ok(())
}

/// Closed loop: `connections` workers, each sending its next request when its previous
/// answer is in, until the time or the request count runs out.
async fn closed_loop(
    shot: Arc<Shot>,
    connections: usize,
    measure_for: Duration,
    requests: Option<u64>,
    report: &mut Report,
) -> Result<(), BoxError> {
    let start = Instant::now();
    let deadline = start + measure_for;
    let budget = Arc::new(AtomicU64::new(requests.unwrap_or(u64::MAX)));
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let shot = shot.clone();
        let budget = budget.clone();
        let mut mine = Report::new(String::new())?;
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                let sent = Instant::now();
                let outcome = shot.fire().await;
                mine.record(Sample {
                    outcome,
                    latency: sent.elapsed(),
                    lag: Duration::ZERO,
                });
            }
            mine
        }));
    }
    for worker in workers {
        let mut mine = worker.await?;
        mine.elapsed = Duration::ZERO;
        report.merge(mine)?;
    }
    report.elapsed += start.elapsed();
    Ok(())
}

async fn run(
    options: &Options,
    client: &HttpClient,
    url: &http::Uri,
    bodies_run: u128,
    measure_for: Duration,
    requests: Option<u64>,
    report: &mut Report,
) -> Result<(), BoxError> {
    let authorization = options
        .key
        .as_deref()
        .map(|key| http::HeaderValue::from_str(&format!("Bearer {key}")))
        .transpose()
        .map_err(|_| "--key: not a valid header value")?;
    let shot = Arc::new(Shot {
        client: client.clone(),
        url: url.clone(),
        authorization,
        bodies: Bodies {
            model: options.model.clone(),
            max_tokens: options.max_tokens,
            same_prompt: options.same_prompt,
            run: bodies_run,
            next: AtomicU64::new(0),
        },
        timeout: options.timeout,
    });
    match options.mode {
        Mode::Open(rate) => {
            open_loop(
                shot,
                rate,
                measure_for,
                requests,
                options.max_in_flight,
                report,
            )
            .await
        }
        Mode::Closed(connections) => {
            closed_loop(shot, connections, measure_for, requests, report).await
        }
    }
}

fn compare(baseline: &Report, other: &Report) {
    let delta = |q: f64| other.millis_at(q) - baseline.millis_at(q);
    let share = if baseline.throughput() > 0.0 {
        100.0 * other.throughput() / baseline.throughput()
    } else {
        0.0
    };
    println!("{}", other.url);
    println!("  vs {}", baseline.url);
    println!(
        "  added latency ms: p50 {:+.3}  p90 {:+.3}  p99 {:+.3}  p99.9 {:+.3}   throughput {share:.0}% of baseline",
        delta(0.50),
        delta(0.90),
        delta(0.99),
        delta(0.999)
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|arg| arg == "-h" || arg == "--help") {
        println!("{}", usage());
        return;
    }
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if let Err(error) = measure(options).await {
        eprintln!("loadgen: {error}");
        std::process::exit(1);
    }
}

async fn measure(mut options: Options) -> Result<(), BoxError> {
    // Kept alive for the whole run when no target is given.
    let mut _mock = None;
    if options.targets.is_empty() {
        let plan = FaultPlan::healthy()
            .name("mock")
            .latency(Latency::Fixed(options.mock_latency));
        let server = MockServer::start(plan).await?;
        println!(
            "loadgen: no --target, measuring the in-process testkit mock at {} (latency {:?})",
            server.base_url(),
            options.mock_latency
        );
        options.targets.push(server.base_url());
        _mock = Some(server);
    }
    let urls = options
        .targets
        .iter()
        .map(|target| chat_url(target))
        .collect::<Result<Vec<_>, _>>()?;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let idle = match options.mode {
        Mode::Open(_) => options.max_in_flight,
        Mode::Closed(n) => n,
    };
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build(connector);

    let measure_for = options.measure_for();
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
        ^ u128::from(std::process::id());
    match options.mode {
        Mode::Open(rate) => println!("loadgen: open loop at {rate} requests/s"),
        Mode::Closed(n) => println!("loadgen: closed loop with {n} connections"),
    }
    match options.requests {
        Some(n) => println!("loadgen: {n} requests per target and round (at most {measure_for:?})"),
        None => println!("loadgen: {measure_for:?} per target and round"),
    }
    println!(
        "loadgen: warmup {:?}, {} round(s), {} target(s)\n",
        options.warmup,
        options.rounds,
        urls.len()
    );

    let mut reports = urls
        .iter()
        .map(|url| Report::new(url.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut run_no: u128 = 0;
    for round in 0..options.rounds {
        for (url, report) in urls.iter().zip(&mut reports) {
            run_no += 1;
            if !options.warmup.is_zero() {
                let mut discarded = Report::new(String::new())?;
                let id = run_id.wrapping_add(run_no << 64);
                run(
                    &options,
                    &client,
                    url,
                    id,
                    options.warmup,
                    None,
                    &mut discarded,
                )
                .await?;
            }
            run_no += 1;
            let mut measured = Report::new(String::new())?;
            let id = run_id.wrapping_add(run_no << 64);
            run(
                &options,
                &client,
                url,
                id,
                measure_for,
                options.requests,
                &mut measured,
            )
            .await?;
            if options.rounds > 1 {
                eprintln!(
                    "loadgen: round {} {url}: {:.1} ok/s, p50 {:.3} ms, p99 {:.3} ms",
                    round + 1,
                    measured.throughput(),
                    measured.millis_at(0.5),
                    measured.millis_at(0.99)
                );
            }
            report.merge(measured)?;
        }
    }

    for report in &reports {
        report.print(options.mode);
    }
    if let Some((baseline, others)) = reports.split_first() {
        if !others.is_empty() {
            println!();
        }
        for other in others {
            compare(baseline, other);
        }
    }
    Ok(())
}
