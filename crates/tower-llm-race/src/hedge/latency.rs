//! A lock-free latency histogram over a sliding window, for the hedge delay percentile.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Values below this many microseconds get a bucket each; above, each power of two is split
/// into this many buckets, so a bucket's width is at most 1/8 of its value.
const SUB: u64 = 8;
const SUB_BITS: u32 = 3;
/// Latencies are clamped at 2^41 us (about 25 days).
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;

fn bucket(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let micros = micros.min((1 << (MAX_EXP + 1)) - 1);
    let exp = 63 - micros.leading_zeros();
    let sub = (micros >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(exp - SUB_BITS) * SUB + sub) as usize
}

/// The largest value that falls in `bucket`.
fn upper_bound(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < SUB {
        return bucket;
    }
    let above = bucket - SUB;
    let exp = above / SUB + u64::from(SUB_BITS);
    let sub = above % SUB;
    ((SUB + sub + 1) << (exp - u64::from(SUB_BITS))) - 1
}

/// Two generations of bucket counts: samples go to the current one; every `window` the
/// older one is cleared and becomes current, so a percentile covers between one and two
/// windows of history. Recording is one relaxed `fetch_add`; a sample that races a rotation
/// may be lost, which a percentile over many samples does not notice.
pub(crate) struct LatencyHistogram {
    generations: [Box<[AtomicU64]>; 2],
    current: AtomicUsize,
    origin: Instant,
    rotated_at: AtomicU64,
    window: u64,
}

impl LatencyHistogram {
    pub(crate) fn new(window: Duration) -> Self {
        let generation = || (0..BUCKETS).map(|_| AtomicU64::new(0)).collect();
        LatencyHistogram {
            generations: [generation(), generation()],
            current: AtomicUsize::new(0),
            origin: Instant::now(),
            rotated_at: AtomicU64::new(0),
            window: micros(window).max(1),
        }
    }

    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        self.rotate(now);
        let current = self.current.load(Ordering::Acquire) & 1;
        self.generations[current][bucket(micros(latency))].fetch_add(1, Ordering::Relaxed);
    }

    fn rotate(&self, now: Instant) {
        let now = micros(now.saturating_duration_since(self.origin));
        let last = self.rotated_at.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(last);
        if elapsed < self.window
            || self
                .rotated_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let current = self.current.load(Ordering::Acquire) & 1;
        let older = 1 - current;
        clear(&self.generations[older]);
        if elapsed >= 2 * self.window {
            // Both generations are out of the window.
            clear(&self.generations[current]);
        }
        self.current.store(older, Ordering::Release);
    }

    /// The `percentile` (0..=1) of the samples in the window, rounded up to its bucket's
    /// upper bound, or `None` with fewer than `min_samples` samples.
    pub(crate) fn percentile(
        &self,
        percentile: f64,
        min_samples: u64,
        now: Instant,
    ) -> Option<Duration> {
        self.rotate(now);
        let mut counts = [0u64; BUCKETS];
        let mut total = 0u64;
        for generation in &self.generations {
            for (count, slot) in counts.iter_mut().zip(generation.iter()) {
                let n = slot.load(Ordering::Relaxed);
                *count += n;
                total += n;
            }
        }
        if total == 0 || total < min_samples {
            return None;
        }
        let rank = ((percentile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(upper_bound(index)));
            }
        }
        None
    }
}

fn clear(generation: &[AtomicU64]) {
    for slot in generation {
        slot.store(0, Ordering::Relaxed);
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_value_lies_in_its_bucket_within_an_eighth(micros in 0u64..(1 << 41)) {
            let b = bucket(micros);
            prop_assert!(b < BUCKETS);
            let upper = upper_bound(b);
            prop_assert!(upper >= micros);
            prop_assert!(upper - micros <= micros / 8);
            if b > 0 {
                prop_assert!(upper_bound(b - 1) < micros);
            }
        }

        #[test]
        fn percentile_is_close_to_the_exact_one(
            mut samples in proptest::collection::vec(1u64..10_000_000, 1..200),
            p in 0.01f64..1.0,
        ) {
            let histogram = LatencyHistogram::new(Duration::from_secs(3600));
            let now = Instant::now();
            for &s in &samples {
                histogram.record(Duration::from_micros(s), now);
            }
            samples.sort_unstable();
            let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            let exact = samples[rank - 1];
            let estimate = histogram.percentile(p, 1, now).expect("has samples");
            let estimate = micros(estimate);
            prop_assert!(estimate >= exact);
            prop_assert!(estimate - exact <= exact / 8);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_leave_the_window() {
        let window = Duration::from_secs(10);
        let histogram = LatencyHistogram::new(window);
        for _ in 0..50 {
            histogram.record(Duration::from_secs(5), Instant::now());
        }
        let p50 = histogram.percentile(0.5, 10, Instant::now());
        assert!(p50.is_some_and(|d| d >= Duration::from_secs(5)));
        tokio::time::advance(window).await;
        for _ in 0..50 {
            histogram.record(Duration::from_millis(100), Instant::now());
        }
        // One window later, both generations count.
        let p90 = histogram
            .percentile(0.9, 10, Instant::now())
            .expect("samples");
        assert!(p90 >= Duration::from_secs(5));
        tokio::time::advance(window).await;
        for _ in 0..50 {
            histogram.record(Duration::from_millis(100), Instant::now());
        }
        let p90 = histogram
            .percentile(0.9, 10, Instant::now())
            .expect("samples");
        assert!(p90 < Duration::from_millis(120), "{p90:?}");
        tokio::time::advance(window * 3).await;
        assert_eq!(histogram.percentile(0.9, 1, Instant::now()), None);
    }
}
