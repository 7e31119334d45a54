//! `tower-llm-mock`: the testkit's mock of the OpenAI, Anthropic and Gemini APIs as a
//! standalone server.
//!
//! ```text
//! tower-llm-mock [--port N] [--plan FILE]
//! ```
//!
//! Listens on `127.0.0.1:N` (default 0: a free port), prints `listening on http://...` and
//! serves until Ctrl-C. `--plan` reads a JSON [`FaultPlan`] (see `plans/` in the crate).

use std::net::SocketAddr;
use std::process::ExitCode;

use tower_llm_testkit::{FaultPlan, MockServer};

const USAGE: &str = "usage: tower-llm-mock [--port N] [--plan FILE]";

struct Args {
    port: u16,
    plan: FaultPlan,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut port = 0;
    let mut plan = FaultPlan::healthy();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or("--port needs a value")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port: not a port number: {value:?}"))?;
            }
            "--plan" => {
                let path = args.next().ok_or("--plan needs a file")?;
                plan = FaultPlan::from_file(&path).map_err(|e| format!("--plan {path}: {e}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args { port, plan })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let server = match MockServer::bind(addr, args.plan).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", server.base_url());
    if let Err(error) = tokio::signal::ctrl_c().await {
        eprintln!("cannot wait for Ctrl-C: {error}");
        return ExitCode::FAILURE;
    }
    let counters = server.counters();
    println!(
        "served {} requests ({} completed, {} cancelled)",
        counters.requests, counters.completed, counters.cancelled
    );
    ExitCode::SUCCESS
}
