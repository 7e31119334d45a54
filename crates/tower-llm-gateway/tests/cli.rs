//! The `tower-llm-gateway` binary: `--check`, `--listen` with port 0, the built-in config.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tower::ServiceExt;
use tower_llm_testkit::{TestClient, openai_chat, with_api_key};

const BIN: &str = env!("CARGO_BIN_EXE_tower-llm-gateway");

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tower-llm-gateway-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn check_accepts_a_good_config_and_names_the_key_of_a_bad_one() {
    let ok = Command::new(BIN).arg("--check").output().await.unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration ok"));

    let bad = write_config(
        "bad",
        "[[keys]]\nkey = \"k\"\ntenant = \"t\"\n[providers.p]\nkind = \"mock\"\nmodels = [\"m\"]\n\
         [models.m]\ntimeout = \"0s\"\n",
    );
    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`models.m.timeout` must be more than zero"),
        "{stderr}"
    );

    // The sample for real providers, with its environment variables set (and one missing).
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/config/openai.toml");
    let vars = [
        ("OPENAI_API_KEY", "sk-o"),
        ("ANTHROPIC_API_KEY", "sk-a"),
        ("GEMINI_API_KEY", "g"),
        ("GATEWAY_KEY_TEAM_A", "team-a-key"),
    ];
    let out = Command::new(BIN)
        .args(["--check", "--config", sample])
        .envs(vars)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["--check", "--config", sample])
        .envs(vars)
        .env_remove("GEMINI_API_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("providers.gemini.api_key_env"), "{stderr}");
    assert!(!stderr.contains("sk-o"), "no key in the error: {stderr}");

    let missing = Command::new(BIN)
        .args(["--check", "--config", "/nonexistent/gateway.toml"])
        .output()
        .await
        .unwrap();
    assert!(!missing.status.success());
}

/// Starts the binary with `args` and waits for the address it prints.
async fn start(args: &[&std::ffi::OsStr]) -> (tokio::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("gateway: listening on ") {
                return url.to_owned();
            }
        }
        panic!("the gateway exited without listening");
    })
    .await
    .expect("the gateway starts");
    assert!(
        !url.ends_with(":0"),
        "the bound port is printed, not 0: {url}"
    );
    (child, url)
}

#[tokio::test]
async fn listen_on_port_zero_prints_the_bound_address_and_serves() {
    let (mut child, url) = start(&["--listen".as_ref(), "127.0.0.1:0".as_ref()]).await;

    let health = TestClient::new()
        .oneshot(
            http::Request::get(format!("{url}/health"))
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let chat = TestClient::new()
        .oneshot(with_api_key(
            openai_chat(&url, "gpt-4o-mini", "hi"),
            "sk-gateway-demo",
        ))
        .await
        .unwrap();
    assert_eq!(chat.status(), 200, "the built-in mock upstreams answer");

    // A second copy on port 0 does not collide with the first.
    let second = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--check"])
        .output()
        .await
        .unwrap();
    assert!(second.status.success());
    child.kill().await.unwrap();
}

/// The other way to listen anywhere: `server.listen` with port 0 in the file, no `--listen`.
#[tokio::test]
async fn a_config_listening_on_port_zero_prints_the_bound_address_and_serves() {
    let path = write_config(
        "listen-zero",
        "[server]\nlisten = \"127.0.0.1:0\"\n[[keys]]\nkey = \"k-listen\"\ntenant = \"t\"\n\
         [providers.p]\nkind = \"mock\"\nmodels = [\"m\"]\n",
    );
    let (mut child, url) = start(&["--config".as_ref(), path.as_os_str()]).await;
    let chat = TestClient::new()
        .oneshot(with_api_key(openai_chat(&url, "m", "hi"), "k-listen"))
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    child.kill().await.unwrap();
}

/// `--check` refuses what a start would refuse, not only what the file's own rules catch: a
/// provider whose key is neither given nor in its environment variable, a retry backoff
/// longer than the retry layer's cap.
#[tokio::test]
async fn check_refuses_what_a_start_would_refuse() {
    const BASE: &str = "[[keys]]\nkey = \"k\"\ntenant = \"t\"\n";
    for (name, text, key) in [
        (
            "no-provider-key",
            "[providers.claude]\nkind = \"anthropic\"\nmodels = [\"m\"]\n",
            "`providers.claude.api_key_env`",
        ),
        (
            "retry-backoff",
            "[providers.p]\nkind = \"mock\"\nmodels = [\"m\"]\n\
             [models.m]\nretry = { max_attempts = 2, backoff = \"1m\" }\n",
            "`models.m.retry.backoff`",
        ),
    ] {
        let path = write_config(name, &format!("{BASE}{text}"));
        let check = Command::new(BIN)
            .args(["--check", "--config"])
            .arg(&path)
            .env_remove("ANTHROPIC_API_KEY")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(key), "{name}: {stderr}");
    }
}

#[tokio::test]
async fn check_names_a_bad_telemetry_key_and_never_prints_a_collector_header() {
    const BASE: &str =
        "[[keys]]\nkey = \"k\"\ntenant = \"t\"\n[providers.p]\nkind = \"mock\"\nmodels = [\"m\"]\n";
    let check = |name: &'static str, telemetry: &'static str| async move {
        let path = write_config(name, &format!("{BASE}[telemetry]\n{telemetry}"));
        let out = Command::new(BIN)
            .args(["--check", "--config"])
            .arg(&path)
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (name, telemetry, key) in [
        (
            "otlp-endpoint",
            "endpoint = \"collector:4318\"\n",
            "telemetry.endpoint",
        ),
        (
            "otlp-protocol",
            "protocol = \"grpc\"\n",
            "telemetry.protocol",
        ),
        (
            "otlp-interval",
            "export_interval = \"0s\"\n",
            "telemetry.export_interval",
        ),
        (
            "otlp-header",
            "headers = { \"bad header\" = \"Bearer hdr-secret-93e1\" }\n",
            "telemetry.headers.bad header",
        ),
        (
            "otlp-header-value",
            "headers = { authorization = \"hdr-secret-93e1\\n\" }\n",
            "telemetry.headers.authorization",
        ),
        ("otlp-unknown", "endpiont = \"http://c:4318\"\n", "endpiont"),
    ] {
        let (ok, stderr) = check(name, telemetry).await;
        assert!(!ok, "{name} accepted");
        assert!(stderr.contains(key), "{name}: {stderr}");
        assert!(!stderr.contains("hdr-secret-93e1"), "{name}: {stderr}");
    }
    // Valid: accepted with the `otlp` feature, refused with a clear message without it.
    let (ok, stderr) = check(
        "otlp-good",
        "endpoint = \"http://127.0.0.1:4318\"\nheaders = { authorization = \"Bearer hdr-secret-93e1\" }\n",
    )
    .await;
    assert!(!stderr.contains("hdr-secret-93e1"), "{stderr}");
    if cfg!(feature = "otlp") {
        assert!(ok, "{stderr}");
    } else {
        assert!(!ok);
        assert!(stderr.contains("`otlp` cargo feature"), "{stderr}");
    }
    // Export switched off needs no feature.
    let (ok, stderr) = check("otlp-off", "traces = false\nmetrics = false\n").await;
    assert!(ok, "{stderr}");
}
