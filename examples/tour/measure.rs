//! Measuring: driving a stack open loop, and the final table.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_llm_testkit::MockServer;

use crate::PRICE_PER_CALL;
use crate::progress::Progress;

/// What one run measured on the caller's side.
#[derive(Debug, Default)]
pub(super) struct Sample {
    pub(super) latencies: Vec<Duration>,
    pub(super) ok: usize,
}

/// Sends `requests` open loop, one every `gap` (a gap of zero sends them all at once), each on
/// its own task, and times each call from its scheduled start.
pub(super) async fn drive<S, Req>(
    service: S,
    requests: Vec<Req>,
    gap: Duration,
    progress: &Progress,
) -> Sample
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Send,
    Req: Send + 'static,
{
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for (i, request) in requests.into_iter().enumerate() {
        let at = start + gap * i as u32;
        tokio::time::sleep_until(at).await;
        let service = service.clone();
        let progress = progress.clone();
        calls.spawn(async move {
            let result = service.oneshot(request).await;
            progress.advance();
            (at.elapsed(), result.is_ok())
        });
    }
    let mut sample = Sample::default();
    while let Some(joined) = calls.join_next().await {
        if let Ok((latency, ok)) = joined {
            sample.latencies.push(latency);
            sample.ok += usize::from(ok);
        }
    }
    sample.latencies.sort();
    sample
}

/// The final table.
#[derive(Debug, Default)]
pub(super) struct Table {
    pub(super) rows: Vec<Row>,
    pub(super) notes: Vec<String>,
}

#[derive(Debug)]
pub(super) struct Row {
    pub(super) scenario: &'static str,
    pub(super) variant: &'static str,
    pub(super) requests: usize,
    pub(super) upstream: u64,
    pub(super) p50: Duration,
    pub(super) p99: Duration,
    pub(super) success: f64,
    pub(super) rate_limited: u64,
    pub(super) baseline: Option<u64>,
}

impl Table {
    /// Adds a row with what `servers` received since the last row, and resets their counters.
    /// Returns the upstream calls, the baseline of the rows that follow.
    pub(super) fn row(
        &mut self,
        scenario: &'static str,
        variant: &'static str,
        sample: Sample,
        servers: &[&MockServer],
        baseline: Option<u64>,
    ) -> u64 {
        let (mut upstream, mut rate_limited) = (0, 0);
        for server in servers {
            let counters = server.counters();
            server.reset_counters();
            upstream += counters.requests;
            rate_limited += counters.status(429);
        }
        self.push(scenario, variant, sample, upstream, rate_limited, baseline)
    }

    pub(super) fn push(
        &mut self,
        scenario: &'static str,
        variant: &'static str,
        sample: Sample,
        upstream: u64,
        rate_limited: u64,
        baseline: Option<u64>,
    ) -> u64 {
        let requests = sample.latencies.len();
        self.rows.push(Row {
            scenario,
            variant,
            requests,
            upstream,
            p50: percentile(&sample.latencies, 0.50),
            p99: percentile(&sample.latencies, 0.99),
            success: sample.ok as f64 / requests.max(1) as f64,
            rate_limited,
            baseline,
        });
        upstream
    }

    pub(super) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub(super) fn print(&self) {
        println!(
            "\n{:<18} {:<17} {:>5} {:>9} {:>9} {:>9} {:>8} {:>5} {:>13}",
            "scenario", "variant", "reqs", "upstream", "p50", "p99", "success", "429s", "saved"
        );
        println!("{}", "-".repeat(102));
        for row in &self.rows {
            let saved = row.baseline.map_or(String::new(), |baseline| {
                let calls = baseline as f64 - row.upstream as f64;
                format!(
                    "{}${:.3}",
                    if calls < 0.0 { "-" } else { "" },
                    calls.abs() * PRICE_PER_CALL
                )
            });
            println!(
                "{:<18} {:<17} {:>5} {:>9} {:>9} {:>9} {:>7.1}% {:>5} {:>13}",
                row.scenario,
                row.variant,
                row.requests,
                row.upstream,
                millis(row.p50),
                millis(row.p99),
                row.success * 100.0,
                row.rate_limited,
                saved,
            );
        }
        println!(
            "\nupstream: calls the mock received; p50/p99: time to answer (or fail) per request; \
             429s: rate-limit refusals from the upstream;\nsaved: upstream calls avoided against \
             the first row of the scenario, at ${PRICE_PER_CALL} per call (a stated flat \
             price; negative: extra calls bought)."
        );
        for note in &self.notes {
            println!("- {note}");
        }
    }
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(super) fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}
