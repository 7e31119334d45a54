//! Cost of core's per-request work: fingerprinting a chat request body.
use criterion::{Criterion, criterion_group, criterion_main};
fn main_placeholder(_c: &mut Criterion) {}
criterion_group!(benches, main_placeholder);
criterion_main!(benches);
