//! The standalone `tower-llm-mock` binary and the example plan files.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use tower_llm_testkit::{FaultPlan, TestClient, anthropic_messages, openai_chat};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn plan_path(name: &str) -> String {
    format!("{}/plans/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_example_plan_parses() {
    let dir = format!("{}/plans", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        FaultPlan::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 2);
}

#[tokio::test]
async fn binary_serves_a_plan_file() {
    let child = Command::new(env!("CARGO_BIN_EXE_tower-llm-mock"))
        .args(["--port", "0", "--plan", &plan_path("outage.json")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let client = TestClient::new();
    let first = client.send(openai_chat(&base, "m", "x")).await.unwrap();
    assert_eq!(first.status(), 503, "the plan's script");
    assert_eq!(first.headers()["x-mock-server"], "outage");
    let second = client
        .send(anthropic_messages(&base, "m", "x"))
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
}

#[test]
fn binary_refuses_bad_arguments() {
    for args in [
        vec!["--port", "not-a-port"],
        vec!["--plan", "/nonexistent/plan.json"],
        vec!["--frobnicate"],
        vec!["--port"],
    ] {
        let status = Command::new(env!("CARGO_BIN_EXE_tower-llm-mock"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}
