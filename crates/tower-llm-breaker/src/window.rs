//! Sliding windows of call outcomes, made of atomics only so the closed path never locks.
//!
//! Recording is one or two atomic operations; reading a rate scans the window, which happens
//! only after a failure or a slow call (the only outcomes that can raise a rate) and for
//! stats. Scanning instead of keeping running totals means a racing writer can at worst be
//! off by the calls in flight, never drift for good.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Window;

/// Counts read from a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) calls: usize,
    pub(crate) failures: usize,
    pub(crate) slow: usize,
}

impl Tally {
    pub(crate) fn failure_rate_reached(&self, rate: f64, minimum_calls: usize) -> bool {
        self.calls >= minimum_calls && exact(self.failures) >= rate * exact(self.calls)
    }

    pub(crate) fn slow_rate_reached(&self, rate: f64, minimum_calls: usize) -> bool {
        self.calls >= minimum_calls && exact(self.slow) >= rate * exact(self.calls)
    }
}

/// A window count as an `f64`: at most 2^16 in a count window and 3600 * 65 535 in a time
/// window, so exact.
#[allow(clippy::cast_precision_loss)]
fn exact(count: usize) -> f64 {
    count as f64
}

#[derive(Debug)]
pub(crate) enum Outcomes {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Outcomes {
    pub(crate) fn new(window: Window) -> Self {
        match window {
            Window::Count { size } => Outcomes::Count(CountWindow::new(size)),
            Window::Time { length, buckets } => Outcomes::Time(TimeWindow::new(length, buckets)),
        }
    }

    /// `now` is nanoseconds since the breaker was made; only the time window reads it.
    pub(crate) fn record(&self, failure: bool, slow: bool, now: u64) {
        match self {
            Outcomes::Count(w) => w.record(failure, slow),
            Outcomes::Time(w) => w.record(failure, slow, now),
        }
    }

    pub(crate) fn tally(&self, now: u64) -> Tally {
        match self {
            Outcomes::Count(w) => w.tally(),
            Outcomes::Time(w) => w.tally(now),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Outcomes::Count(w) => w.reset(),
            Outcomes::Time(w) => w.reset(),
        }
    }
}

const RECORDED: u8 = 0b001;
const FAILED: u8 = 0b010;
const SLOW: u8 = 0b100;

/// The last `size` outcomes in a ring: a shared cursor hands each call its own slot.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    cursor: AtomicU64,
}

impl CountWindow {
    fn new(size: usize) -> Self {
        CountWindow {
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            cursor: AtomicU64::new(0),
        }
    }

    fn record(&self, failure: bool, slow: bool) {
        let at = self.cursor.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let mut bits = RECORDED;
        if failure {
            bits |= FAILED;
        }
        if slow {
            bits |= SLOW;
        }
        // `at` is below `slots.len()`, a `usize`.
        self.slots[at as usize].store(bits, Ordering::Relaxed);
    }

    fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for slot in self.slots.iter() {
            let bits = slot.load(Ordering::Relaxed);
            tally.calls += usize::from(bits & RECORDED);
            tally.failures += usize::from((bits & FAILED) >> 1);
            tally.slow += usize::from((bits & SLOW) >> 2);
        }
        tally
    }

    fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Relaxed);
        }
        self.cursor.store(0, Ordering::Relaxed);
    }
}

/// Time buckets, each one packed word: `stamp:16 | calls:16 | failures:16 | slow:16`.
///
/// The stamp is the bucket's index since the breaker was made (plus one, so zero means
/// empty), kept modulo 2^16. One word per bucket lets a bucket roll over to a new slice of
/// time with a single compare-and-swap, so no count is lost to a reset racing an increment.
/// The 16-bit stamp could mistake a bucket untouched for exactly a multiple of 65 536 bucket
/// widths for a fresh one; [`TimeWindow::record`] clears idle buckets as time moves on to
/// rule that out. Counts saturate at 65 535 calls per bucket (a bucket that full stops
/// counting, which keeps its rates).
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[AtomicU64]>,
    width: u64,
    /// The newest bucket index any call has recorded into, so idle buckets get cleared.
    head: AtomicU64,
}

const STAMP_BITS: u32 = 16;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;
const COUNT_MAX: u64 = 0xFFFF;

fn pack(stamp: u64, calls: u64, failures: u64, slow: u64) -> u64 {
    (stamp & STAMP_MASK) << 48 | calls << 32 | failures << 16 | slow
}

fn unpack(word: u64) -> (u64, u64, u64, u64) {
    (
        word >> 48,
        (word >> 32) & COUNT_MAX,
        (word >> 16) & COUNT_MAX,
        word & COUNT_MAX,
    )
}

impl TimeWindow {
    fn new(length: Duration, buckets: usize) -> Self {
        let length = u64::try_from(length.as_nanos()).unwrap_or(u64::MAX);
        TimeWindow {
            buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            width: (length / buckets as u64).max(1),
            head: AtomicU64::new(0),
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn stamp(index: u64) -> u64 {
        (index + 1) & STAMP_MASK
    }

    fn record(&self, failure: bool, slow: bool, now: u64) {
        let index = now / self.width;
        self.advance_head(index);
        let stamp = Self::stamp(index);
        let bucket = &self.buckets[(index % self.len()) as usize];
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let (old_stamp, calls, failures, slows) = unpack(current);
            let next = if old_stamp == stamp {
                if calls == COUNT_MAX {
                    return;
                }
                pack(
                    stamp,
                    calls + 1,
                    failures + u64::from(failure),
                    slows + u64::from(slow),
                )
            } else if old_stamp != 0 && is_newer(old_stamp, stamp) {
                // A caller with a later clock reading already moved this bucket on: our
                // slice of time has left the window.
                return;
            } else {
                pack(stamp, 1, u64::from(failure), u64::from(slow))
            };
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Moves `head` to `index`, and clears the buckets of the slices skipped on the way, so
    /// that no bucket keeps a stamp more than one lap old.
    fn advance_head(&self, index: u64) {
        let mut head = self.head.load(Ordering::Relaxed);
        while index > head {
            match self
                .head
                .compare_exchange_weak(head, index, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let skipped = (index - head - 1).min(self.len());
                    for i in index - skipped..index {
                        let bucket = &self.buckets[(i % self.len()) as usize];
                        // Anything here is from an earlier lap, or from a caller whose
                        // clock read fell between the old head and this one and raced us:
                        // losing those few calls is the price of never aliasing.
                        let word = bucket.load(Ordering::Relaxed);
                        if word != 0 {
                            let _ = bucket.compare_exchange(
                                word,
                                0,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                    }
                    return;
                }
                Err(actual) => head = actual,
            }
        }
    }

    fn tally(&self, now: u64) -> Tally {
        let index = now / self.width;
        let newest = Self::stamp(index);
        let mut tally = Tally::default();
        if index >= self.head.load(Ordering::Relaxed) + self.len() {
            // Nothing recorded within the window; this also keeps an idle window from
            // reading stamps a whole number of laps old as fresh.
            return tally;
        }
        for bucket in self.buckets.iter() {
            let (stamp, calls, failures, slow) = unpack(bucket.load(Ordering::Relaxed));
            if stamp == 0 {
                continue;
            }
            let age = newest.wrapping_sub(stamp) & STAMP_MASK;
            if age < self.len() {
                // Each count is below 2^16 and there are at most 3600 buckets.
                tally.calls += calls as usize;
                tally.failures += failures as usize;
                tally.slow += slow as usize;
            }
        }
        tally
    }

    fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Relaxed);
        }
    }
}

/// Whether stamp `a` is later than stamp `b`, modulo 2^16 (looking at most half a lap ahead).
fn is_newer(a: u64, b: u64) -> bool {
    let ahead = a.wrapping_sub(b) & STAMP_MASK;
    ahead != 0 && ahead < (1 << (STAMP_BITS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn count_window_keeps_the_last_n() {
        let w = CountWindow::new(3);
        w.record(true, false);
        w.record(true, true);
        assert_eq!(
            w.tally(),
            Tally {
                calls: 2,
                failures: 2,
                slow: 1
            }
        );
        w.record(false, false);
        w.record(false, false);
        assert_eq!(
            w.tally(),
            Tally {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.tally(), Tally::default());
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let w = TimeWindow::new(Duration::from_secs(10), 10);
        w.record(true, false, 0);
        w.record(false, false, SEC / 2);
        w.record(true, true, 5 * SEC);
        assert_eq!(
            w.tally(5 * SEC),
            Tally {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        // At 10 s the first bucket (0..1 s) has left the window.
        assert_eq!(
            w.tally(10 * SEC),
            Tally {
                calls: 1,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.tally(15 * SEC), Tally::default());
    }

    #[test]
    fn a_late_writer_does_not_reset_a_newer_bucket() {
        let w = TimeWindow::new(Duration::from_secs(10), 10);
        w.record(true, false, 12 * SEC);
        // A caller whose clock read 2 s lands on the same bucket, a lap behind.
        w.record(false, false, 2 * SEC);
        assert_eq!(w.tally(12 * SEC).calls, 1);
        assert_eq!(w.tally(12 * SEC).failures, 1);
    }

    #[test]
    fn stamps_do_not_alias_after_a_long_idle_time() {
        let w = TimeWindow::new(Duration::from_secs(4), 4);
        w.record(true, false, 0);
        w.record(true, false, SEC);
        // Exactly 2^16 bucket widths later the stamps of buckets 0 and 1 would match again;
        // moving the head must have cleared them.
        let later = (1 << 16) * SEC;
        w.record(false, false, later + 2 * SEC);
        assert_eq!(
            w.tally(later + 2 * SEC),
            Tally {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn rates() {
        let t = Tally {
            calls: 10,
            failures: 5,
            slow: 2,
        };
        assert!(t.failure_rate_reached(0.5, 10));
        assert!(!t.failure_rate_reached(0.5, 11));
        assert!(!t.failure_rate_reached(0.6, 10));
        assert!(t.slow_rate_reached(0.2, 1));
    }
}
