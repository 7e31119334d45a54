//! A throwaway `redis-server` for tests of the Redis backends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`RedisServer::start`] waits for the server to answer `PING`.
const STARTUP: Duration = Duration::from_secs(10);

/// What a test prints, or panics with under `CI`, when `redis-server` is missing.
pub const REDIS_MISSING: &str =
    "skipping: redis-server not found (install it with apt-get install redis-server)";

/// A `redis-server` process of a test's own, on a free loopback port, with persistence off.
/// Killed when dropped.
///
/// ```no_run
/// # fn main() {
/// let Some(redis) = tower_llm_testkit::RedisServer::start() else { return };
/// let url = redis.url(); // redis://127.0.0.1:PORT
/// # let _ = url;
/// # }
/// ```
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server, or returns `None` after printing [`REDIS_MISSING`] when
    /// `redis-server` is not on `PATH`, so the test can skip. When the environment variable
    /// `CI` is set a missing binary is a failure instead: this panics.
    ///
    /// # Panics
    ///
    /// When `CI` is set and `redis-server` is missing, or when it is found but does not
    /// start answering within 10 seconds.
    pub fn start() -> Option<RedisServer> {
        let Some(binary) = find_on_path("redis-server") else {
            if std::env::var_os("CI").is_some() {
                panic!("{REDIS_MISSING} (and CI is set, so this is a failure)");
            }
            println!("{REDIS_MISSING}");
            return None;
        };
        let mut server = RedisServer {
            binary,
            port: 0,
            child: None,
        };
        // The free port may be taken again before redis binds it: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(error) => last_error = error,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// The URL clients connect to: `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server now (for "Redis dies mid-run" tests). Its data is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the server is running (not [`kill`](Self::kill)ed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server again on the same port, empty, after a [`kill`](Self::kill); does
    /// nothing when it is running.
    ///
    /// # Panics
    ///
    /// When it does not start answering within 10 seconds (the port may have been taken
    /// meanwhile).
    pub fn restart(&mut self) {
        if self.child.is_none()
            && let Err(error) = self.spawn()
        {
            panic!("redis-server did not restart: {error}");
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            // Only our own process counts: when the port was taken meanwhile (by another
            // test's server), ours exits, and the PONG would come from that other server.
            if answers_as(self.port, pid) {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("it exited at once with {status}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!(
            "no answer to PING on port {} in {STARTUP:?}",
            self.port
        ))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A port that was free a moment ago: bind port 0, read the port, let it go.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or(6379)
}

/// Whether the server on `port` answers `PING` and is the process `pid`.
fn answers_as(port: u16, pid: u32) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\nINFO server\r\n").is_err() {
        return false;
    }
    let wanted = format!("\r\nprocess_id:{pid}\r\n");
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    // The INFO server section is about 1 KiB; stop reading well past that.
    while reply.len() < 64 * 1024 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buffer[..n]),
        }
        if !reply.starts_with(b"+PONG\r\n") && reply.len() >= 7 {
            return false;
        }
        if reply.windows(wanted.len()).any(|w| w == wanted.as_bytes()) {
            return true;
        }
    }
    false
}
