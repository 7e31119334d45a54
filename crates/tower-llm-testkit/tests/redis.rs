//! The `RedisServer` fixture (skips with a printed reason where `redis-server` is absent).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;

use tower_llm_testkit::RedisServer;

fn command(port: u16, command: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    stream.write_all(command.as_bytes())?;
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
}

#[test]
fn redis_starts_answers_dies_and_restarts() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(command(port, "PING\r\n").unwrap(), "+PONG\r\n");
    assert_eq!(command(port, "SET k v\r\n").unwrap(), "+OK\r\n");
    assert_eq!(command(port, "GET k\r\n").unwrap(), "$1\r\nv\r\n");

    redis.kill();
    assert!(!redis.is_running());
    assert!(command(port, "PING\r\n").is_err(), "dead after kill");

    redis.restart();
    assert!(redis.is_running());
    assert_eq!(command(port, "PING\r\n").unwrap(), "+PONG\r\n");
    assert_eq!(
        command(port, "GET k\r\n").unwrap(),
        "$-1\r\n",
        "starts empty"
    );

    drop(redis);
    assert!(command(port, "PING\r\n").is_err(), "killed on drop");
}

#[test]
fn two_servers_get_different_ports() {
    let (Some(a), Some(b)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    assert_ne!(a.port(), b.port());
}

/// Run by [`absence_skips_or_fails_under_ci`] in a child process whose `PATH` has no
/// `redis-server`.
#[test]
#[ignore = "run as a child process by absence_skips_or_fails_under_ci"]
fn probe_without_redis() {
    if std::env::var_os("TESTKIT_REDIS_PROBE").is_none() {
        return;
    }
    assert!(RedisServer::start().is_none());
}

#[test]
fn absence_skips_or_fails_under_ci() {
    let run = |ci: bool| {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", "probe_without_redis", "--ignored", "--nocapture"])
            .env("PATH", "/nonexistent")
            .env("TESTKIT_REDIS_PROBE", "1")
            .env_remove("CI");
        if ci {
            child.env("CI", "true");
        }
        child.output().unwrap()
    };
    let skipped = run(false);
    let stdout = String::from_utf8_lossy(&skipped.stdout);
    assert!(skipped.status.success(), "{stdout}");
    assert!(
        stdout.contains(tower_llm_testkit::REDIS_MISSING),
        "{stdout}"
    );

    let failed = run(true);
    assert!(!failed.status.success(), "CI set: absence is a failure");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(output.contains("redis-server not found"), "{output}");
}

/// Kills a process the test started itself, even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn restart_onto_a_port_taken_meanwhile_fails_instead_of_using_the_other_server() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let port = redis.port();
    redis.kill();
    // Another server takes the port before the restart (as a parallel test's could).
    let other = KillOnDrop(
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while command(port, "PING\r\n").ok().as_deref() != Some("+PONG\r\n") {
        assert!(
            std::time::Instant::now() < deadline,
            "the other server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| redis.restart()));
    assert!(
        restarted.is_err(),
        "restart reported success while the port answered for another process"
    );
    assert!(!redis.is_running());
    drop(other);
}
