//! `tower-llm-gateway`: the gateway as a program.
//!
//! ```text
//! tower-llm-gateway [--config FILE] [--listen ADDR] [--check] [--log-format text|json]
//! ```
//!
//! Without `--config` (or `GATEWAY_CONFIG`) it runs on the built-in configuration: two
//! in-process mock upstreams, no key and no network needed. `--listen` overrides
//! `server.listen` (port 0 picks a free port); the bound address is printed on stdout as
//! `gateway: listening on http://ADDR`. `--check` validates the configuration (environment
//! variables included) and builds every stack as a start would, without serving or calling
//! anything, then exits: 0 when it is valid, 2 with the key at fault otherwise.
//!
//! Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default `info`: one access
//! line per request, breaker and limiter events), as text or, with `--log-format json`, one
//! JSON object per line. Built with the `otlp` feature, the configuration's `[telemetry]`
//! table exports the spans (and the metrics) over OTLP as well; they are flushed at shutdown.

#![forbid(unsafe_code)]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tower_llm_gateway::{Config, Gateway, serve, shutdown_signal};

mod log_format;
mod log_writer;

const USAGE: &str = "\
usage: tower-llm-gateway [--config FILE] [--listen ADDR] [--check] [--log-format text|json]

  --config FILE   the TOML configuration (default: $GATEWAY_CONFIG, else the built-in
                  mock configuration: in-process mock upstreams, no key needed)
  --listen ADDR   the address to listen on, overriding server.listen (port 0: any free port)
  --check         check the configuration and build its stacks (nothing is served or
                  called), print what is wrong, and exit
  --log-format F  logs on stderr as `text` (default) or `json` lines; RUST_LOG filters them
  --help          this text
  --version       the version";

struct Args {
    config: Option<String>,
    listen: Option<SocketAddr>,
    check: bool,
    json_logs: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        config: None,
        listen: None,
        check: false,
        json_logs: false,
    };
    let mut items = std::env::args().skip(1);
    while let Some(arg) = items.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| items.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--config" | "-c" => args.config = Some(value("--config")?),
            "--listen" | "-l" => {
                let text = value("--listen")?;
                args.listen = Some(text.parse().map_err(|_| {
                    format!("--listen: {text:?} is not an address like 127.0.0.1:8080")
                })?);
            }
            "--check" => args.check = true,
            "--log-format" => {
                args.json_logs = match value("--log-format")?.as_str() {
                    "text" => false,
                    "json" => true,
                    other => {
                        return Err(format!("--log-format: {other:?} is neither text nor json"));
                    }
                }
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--version" | "-V" => {
                println!("tower-llm-gateway {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.config.is_none() {
        args.config = std::env::var("GATEWAY_CONFIG")
            .ok()
            .filter(|p| !p.is_empty());
    }
    Ok(Some(args))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tower-llm-gateway: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let loaded = match &args.config {
        Some(path) => Config::from_file(path),
        None => Config::mock(),
    };
    let mut config = match loaded {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tower-llm-gateway: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = args.listen {
        config.set_listen(addr);
    }
    if args.check {
        // Every stack built as a start would build it, so that what a start refuses (a
        // provider without a key, ...) is refused here; nothing is served or called.
        if let Err(error) = Gateway::new(&config).await {
            eprintln!("tower-llm-gateway: {error}");
            return ExitCode::from(2);
        }
        println!(
            "tower-llm-gateway: configuration ok: models {}",
            config.model_names().join(", ")
        );
        return ExitCode::SUCCESS;
    }
    #[cfg(feature = "otlp")]
    let telemetry = match tower_llm_gateway::telemetry::Telemetry::start(&config) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("tower-llm-gateway: {error}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(feature = "otlp")]
    let logs = init_logs(args.json_logs, telemetry.tracing_layer());
    #[cfg(not(feature = "otlp"))]
    let logs = init_logs(args.json_logs, None::<tracing_subscriber::layer::Identity>);
    let outcome = run(config, args.config.as_deref()).await;
    // Writes the log lines still pending before anything below is printed.
    drop(logs);
    // Flushes the spans and metrics still buffered; it blocks, so not on a runtime worker.
    #[cfg(feature = "otlp")]
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tower-llm-gateway: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), and spans to `export` (the OTLP
/// layer) when there is one. A `RUST_LOG` that does not parse is reported and the default
/// used. Lines reach stderr from a thread of their own ([`log_writer`]); the guard returned
/// writes what is pending when dropped.
fn init_logs<L>(json: bool, export: Option<L>) -> Option<log_writer::LogGuard>
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync,
{
    use tracing_subscriber::filter::{EnvFilter, filter_fn};
    use tracing_subscriber::fmt::writer::EitherWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};
    let filter = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => EnvFilter::try_new(&text).unwrap_or_else(|e| {
            eprintln!("tower-llm-gateway: RUST_LOG={text:?} is not a filter ({e}); using info");
            EnvFilter::new("info")
        }),
        _ => EnvFilter::new("info"),
    };
    // A log line carries the gateway's request span (request id, tenant, model, provider) as
    // its context, which is all a reader needs to place it. The layers' own spans (a provider
    // call with its GenAI attributes, retry attempts) are for a tracing backend (`export`):
    // formatting their fields into every request's log state cost a tenth of the gateway's
    // CPU for context no log line shows. Without an exporter nobody wants them, so the filter
    // is global and their call sites are switched off (no span is made, no field recorded);
    // with one it filters the log lines only.
    fn logged(meta: &tracing::Metadata<'_>) -> bool {
        !meta.is_span() || meta.target().starts_with("tower_llm_gateway")
    }
    let (writer, guard) = match log_writer::spawn(std::io::stderr(), log_writer::DEFAULT_LIMIT) {
        Ok((writer, guard)) => (Some(writer), Some(guard)),
        Err(e) => {
            eprintln!("tower-llm-gateway: no log thread ({e}); logging from the request path");
            (None, None)
        }
    };
    let writer = move || match &writer {
        Some(writer) => EitherWriter::A(writer.clone()),
        None => EitherWriter::B(std::io::stderr()),
    };
    let logs = fmt::layer().with_writer(writer).with_ansi(false);
    let logs = if json {
        logs.json().flatten_event(true).boxed()
    } else {
        logs.fmt_fields(log_format::TextFields)
            .with_timer(log_format::UtcMicros)
            .boxed()
    };
    let global = export.is_none().then(|| filter_fn(logged));
    let installed = tracing_subscriber::registry()
        .with(export)
        .with(global)
        .with(logs.with_filter(filter_fn(logged)))
        .with(filter)
        .try_init();
    if let Err(e) = installed {
        eprintln!("tower-llm-gateway: logs not installed: {e}");
    }
    guard
}

async fn run(config: Config, path: Option<&str>) -> Result<(), tower_llm_core::BoxError> {
    let gateway = Gateway::new(&config).await?;
    let listener = TcpListener::bind(config.listen())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen()))?;
    let addr = listener.local_addr()?;
    match path {
        Some(path) => println!("gateway: config {path}"),
        None => println!("gateway: no config file, using the built-in mock upstreams"),
    }
    for (name, url) in gateway.mock_upstreams() {
        println!("gateway: mock upstream {name} at {url}");
    }
    println!("gateway: models {}", config.model_names().join(", "));
    if path.is_none() {
        println!(
            "gateway: try  curl -s http://{addr}/v1/chat/completions -H 'authorization: Bearer sk-gateway-demo' \
             -H 'content-type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}'"
        );
    }
    // Last, so that a script waiting for this line finds everything above it.
    println!("gateway: listening on http://{addr}");
    serve(
        listener,
        gateway.router(),
        async {
            shutdown_signal().await;
            println!("gateway: shutting down, letting requests in flight finish");
        },
        config.shutdown_grace(),
    )
    .await?;
    println!("gateway: stopped");
    Ok(())
}
