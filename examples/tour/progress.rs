//! The progress bar: a thread that redraws one line on stderr, so it keeps moving whatever
//! the runtimes are doing (including the paused one).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub(super) struct Progress {
    pub(super) shared: Arc<ProgressState>,
    pub(super) drawer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

#[derive(Debug)]
pub(super) struct ProgressState {
    pub(super) done: AtomicU64,
    pub(super) total: u64,
    pub(super) scenario: Mutex<&'static str>,
    pub(super) finished: AtomicBool,
    pub(super) terminal: bool,
    pub(super) started: std::time::Instant,
}

impl Progress {
    pub(super) fn start(total: u64) -> Progress {
        let shared = Arc::new(ProgressState {
            done: AtomicU64::new(0),
            total,
            scenario: Mutex::new(""),
            finished: AtomicBool::new(false),
            terminal: std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
        });
        let drawer = shared.terminal.then(|| {
            let state = shared.clone();
            std::thread::spawn(move || {
                while !state.finished.load(Ordering::Acquire) {
                    state.draw();
                    std::thread::sleep(Duration::from_millis(80));
                }
            })
        });
        Progress {
            shared,
            drawer: Arc::new(Mutex::new(drawer)),
        }
    }

    pub(super) fn scenario(&self, name: &'static str) {
        if let Ok(mut scenario) = self.shared.scenario.lock() {
            *scenario = name;
        }
        if !self.shared.terminal {
            eprintln!("tour: {name}...");
        }
    }

    pub(super) fn advance(&self) {
        self.shared.done.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn finish(&self) {
        self.shared.finished.store(true, Ordering::Release);
        // The last line is drawn once the drawer has stopped, so the table starts below it.
        if let Some(drawer) = self.drawer.lock().ok().and_then(|mut d| d.take()) {
            let _ = drawer.join();
        }
        if self.shared.terminal {
            self.shared.draw();
            eprintln!();
        }
    }
}

impl ProgressState {
    pub(super) fn draw(&self) {
        const WIDTH: u64 = 32;
        let done = self.done.load(Ordering::Relaxed).min(self.total);
        let filled = (done * WIDTH / self.total.max(1)) as usize;
        let scenario = self.scenario.lock().map_or("", |s| *s);
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[2K[{}{}] {done:>4}/{} requests  {:>4.1} s  {scenario}",
            "#".repeat(filled),
            "-".repeat(WIDTH as usize - filled),
            self.total,
            self.started.elapsed().as_secs_f64(),
        );
        let _ = stderr.flush();
    }
}
