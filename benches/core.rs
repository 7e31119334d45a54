//! What core's per-request work costs: fingerprinting a request (the dedup key), reading a
//! retry-after hint, classifying a response.
//!
//! `cargo bench -p tower-llm-benches --bench core`

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tower_llm_core::{BoxError, Classify, DefaultClassifier, FingerprintKey, retry_after};

/// An OpenAI chat body whose prompt makes it about `size` bytes long.
fn chat_body(size: usize) -> String {
    let prompt = "lorem ipsum dolor sit amet ".repeat(size / 27 + 1);
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": &prompt[..size.saturating_sub(120)]},
        ],
    });
    body.to_string()
}

fn fingerprint(c: &mut Criterion) {
    let key = FingerprintKey::random();
    let mut group = c.benchmark_group("fingerprint");
    for size in [1024usize, 16 * 1024] {
        let body = chat_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        let request = http::Request::post("https://api.openai.com/v1/chat/completions")
            .header("authorization", "Bearer sk-test")
            .body(body.clone())
            .expect("valid request");
        group.bench_with_input(BenchmarkId::new("http_json", size), &request, |b, r| {
            b.iter(|| key.fingerprint(black_box(r)))
        });
        group.bench_with_input(BenchmarkId::new("raw_str", size), &body, |b, s| {
            b.iter(|| key.fingerprint(black_box(s.as_str())))
        });
    }
    group.finish();
}

fn headers_and_outcomes(c: &mut Criterion) {
    let response = http::Response::builder()
        .status(429)
        .header("retry-after", "7")
        .header("x-ratelimit-remaining-requests", "0")
        .body(())
        .expect("valid response");
    c.bench_function("retry_after/seconds", |b| {
        b.iter(|| retry_after(black_box(response.headers())))
    });
    c.bench_function("classify/http_429", |b| {
        b.iter(|| DefaultClassifier.classify(Ok::<_, &BoxError>(black_box(&response))))
    });
}

criterion_group!(benches, fingerprint, headers_and_outcomes);
criterion_main!(benches);
