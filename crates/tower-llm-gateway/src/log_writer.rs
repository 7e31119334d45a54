//! The binary's log output: lines handed to a writer thread, never written on a request's
//! path.
//!
//! Writing each access line to stderr from the task that answered the request costs one
//! system call per request on a runtime worker (about 4% of the gateway's CPU under load), and
//! a slow reader on the other end of stderr (a full pipe, a stalled log shipper) would stall
//! every worker in turn. Here a line is copied into a shared buffer under a short lock; a
//! writer thread takes the whole buffer at once and writes it with one call, so under load
//! many lines leave in one system call and a slow stderr slows only that thread.
//!
//! Memory is bounded: lines that would take the pending buffer past its limit are dropped
//! and counted, and the writer reports the count in a line of its own once it catches up.
//! Dropping the [`LogGuard`] (at the end of `main`) writes what is pending and stops the
//! thread.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Pending bytes above which new lines are dropped (counted) rather than kept.
pub(crate) const DEFAULT_LIMIT: usize = 4 << 20;

/// After each write the thread lets lines gather for this long, so that a steady trickle
/// of requests also shares system calls; it bounds how late a line can appear.
const GATHER: Duration = Duration::from_millis(5);

struct Pending {
    bytes: Vec<u8>,
    dropped: u64,
    /// The writer thread is waiting for a line (only then does a line wake it).
    idle: bool,
    closing: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    limit: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves only bytes behind; keep logging them.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer the fmt layer writes each line to: clones share one buffer and one thread.
#[derive(Clone)]
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written every pending line.
pub(crate) struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `out` and returns the writer for the fmt layer with the
/// guard that flushes it.
pub(crate) fn spawn<W>(out: W, limit: usize) -> io::Result<(LogWriter, LogGuard)>
where
    W: Write + Send + 'static,
{
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            bytes: Vec::with_capacity(64 << 10),
            dropped: 0,
            idle: false,
            closing: false,
        }),
        wake: Condvar::new(),
        limit,
    });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("gateway-logs".into())
            .spawn(move || run(&shared, out))?
    };
    Ok((
        LogWriter {
            shared: Arc::clone(&shared),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn run<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::with_capacity(64 << 10);
    loop {
        let (dropped, closing) = {
            let mut pending = shared.lock();
            while pending.bytes.is_empty() && pending.dropped == 0 && !pending.closing {
                pending.idle = true;
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.idle = false;
            std::mem::swap(&mut pending.bytes, &mut batch);
            (std::mem::take(&mut pending.dropped), pending.closing)
        };
        if dropped > 0 {
            let note = format!(
                "gateway: {dropped} log line(s) dropped: stderr was slower than the traffic\n"
            );
            batch.extend_from_slice(note.as_bytes());
        }
        // A failing stderr has nowhere to report to; the lines are lost, the gateway goes on.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if closing {
            let pending = shared.lock();
            if pending.bytes.is_empty() && pending.dropped == 0 {
                return;
            }
        }
        if !closing {
            std::thread::sleep(GATHER);
        }
    }
}

impl LogWriter {
    fn push(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        if pending.bytes.len() + line.len() > self.shared.limit {
            pending.dropped += 1;
        } else {
            pending.bytes.extend_from_slice(line);
        }
        // A dropped line wakes the thread too, to report it, even when the line alone was
        // over the limit and nothing else is pending.
        if pending.idle {
            pending.idle = false;
            drop(pending);
            self.shared.wake.notify_one();
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An output that keeps what it is given, and can be held up to act as a slow stderr.
    #[derive(Clone, Default)]
    struct Captured {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _held = self.gate.lock().unwrap();
            *self.writes.lock().unwrap() += 1;
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn every_line_arrives_in_order_by_the_time_the_guard_is_dropped() {
        let out = Captured::default();
        let (writer, guard) = spawn(out.clone(), DEFAULT_LIMIT).unwrap();
        for i in 0..1000 {
            let mut w = writer.clone();
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(*line, format!("line {i}"));
        }
        // Lines written faster than the thread writes share system calls.
        assert!(*out.writes.lock().unwrap() < 1000);
    }

    #[test]
    fn a_stalled_stderr_drops_lines_beyond_the_limit_and_says_how_many() {
        let out = Captured::default();
        let gate = out.gate.lock().unwrap();
        let (writer, guard) = spawn(out.clone(), 100).unwrap();
        let mut w = writer.clone();
        // The first line may already be in the thread's hands (blocked on the gate); of the
        // rest, ten fit in 100 bytes (with the newline, 10 bytes each) and the others drop.
        w.write_all(b"first\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..50 {
            w.write_all(b"xxxxxxxxx\n").unwrap();
        }
        let pending = writer.shared.lock().bytes.len();
        assert!(
            pending <= 100,
            "{pending} bytes pending over a limit of 100"
        );
        drop(gate);
        drop(guard);
        let text = out.text();
        assert!(text.starts_with("first\n"), "{text}");
        let kept = text.lines().filter(|l| *l == "xxxxxxxxx").count();
        assert!((1..=10).contains(&kept), "{kept} lines kept: {text}");
        assert!(text.contains("log line(s) dropped"), "{text}");
    }

    #[test]
    fn a_line_over_the_limit_alone_is_reported_without_waiting_for_another() {
        let out = Captured::default();
        let (writer, guard) = spawn(out.clone(), 16).unwrap();
        writer.clone().write_all(&[b'y'; 64]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !out.text().contains("1 log line(s) dropped") {
            assert!(std::time::Instant::now() < deadline, "never reported");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(guard);
        assert!(!out.text().contains("yyyy"));
    }
}
