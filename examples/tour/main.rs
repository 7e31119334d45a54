//! The tower-llm tour: the README's first command.
//!
//! ```text
//! cargo run --release --example tour
//! ```
//!
//! Starts the testkit's mock LLM API in-process (no key, no network) and plays seven
//! scenarios, each without and with the layer that addresses it, then all the layers together
//! (the stack `docs/composing.md` explains), then what the layers do together under one
//! deadline, one attempt budget and an adaptive concurrency limit (`resilience.rs`,
//! `docs/resilience.md`), over real HTTP on loopback
//! through the real OpenAI provider service ([`OpenAi`] pointed at the mock with a dummy key).
//! Every number in the final table is measured while it runs: upstream calls are what the mock
//! counted, latencies are timed around each call.
//!
//! Latencies are scaled down about 50 times (a typical 1 s answer takes 20 ms) so that the tour
//! takes seconds. The quota scenario cannot be scaled that way: the mock, like the providers,
//! counts its quota over a sliding 60 s window. It runs instead on tokio's paused clock (the
//! mock's latencies and quota window, and the limiter, all follow tokio time), so three minutes
//! of quota pass in a fraction of a second, over the same real sockets.
//!
//! Each scenario is a small function in `scenarios.rs` that builds its stacks with
//! `ServiceBuilder` the way a program would; read them top to bottom. `upstream.rs` points the
//! OpenAI provider at the mock, `measure.rs` drives the stacks and prints the table,
//! `progress.rs` draws the progress bar.

mod measure;
mod progress;
mod resilience;
mod scenarios;
mod upstream;

use tower_llm_core::BoxError;

use measure::Table;
use progress::Progress;
use scenarios::{
    duplicate_flood, embeddings, outage, quota, routing, transient_failures, two_providers,
    whole_stack,
};

/// The flat price the table charges per upstream call. Providers bill tokens, not calls;
/// read the money column as "calls saved × this price".
const PRICE_PER_CALL: f64 = 0.002;
/// A key the mock accepts and no provider would.
const DUMMY_KEY: &str = "sk-tour-not-a-real-key";
const MODEL: &str = "gpt-4o-mini";

const FLOOD_REQUESTS: usize = 300;
const OUTAGE_REQUESTS: usize = 80;
const FLAKY_REQUESTS: usize = 300;
const BUDGET_REQUESTS: usize = 100;
const TWO_PROVIDER_REQUESTS: usize = 100;
const QUOTA_MINUTES: u64 = 3;
const QUOTA_OFFERED_PER_SECOND: u64 = 3;
const QUOTA_REQUESTS: usize = (QUOTA_MINUTES * 60 * QUOTA_OFFERED_PER_SECOND) as usize;
const EMBEDDING_REQUESTS: usize = 24;
const ROUTED_REQUESTS: usize = 60;
const STACK_REQUESTS: usize = 300;
const DEADLINE_REQUESTS: usize = 40;
const BUDGET_OUTAGE_REQUESTS: usize = 100;
const ADAPTIVE_REQUESTS: usize = 600;

const TOTAL_REQUESTS: usize = 2 * FLOOD_REQUESTS
    + 2 * OUTAGE_REQUESTS
    + 2 * FLAKY_REQUESTS
    + 2 * BUDGET_REQUESTS
    + 5 * TWO_PROVIDER_REQUESTS
    + 2 * QUOTA_REQUESTS
    + 2 * EMBEDDING_REQUESTS
    + 2 * ROUTED_REQUESTS
    + 2 * STACK_REQUESTS
    + 2 * DEADLINE_REQUESTS
    + 2 * BUDGET_OUTAGE_REQUESTS
    + 3 * ADAPTIVE_REQUESTS;

fn main() -> Result<(), BoxError> {
    let wall = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut table = Table::default();
    println!(
        "tower-llm tour: an in-process mock of the OpenAI API on loopback, called through the \
         OpenAI provider with a dummy key;\n{TOTAL_REQUESTS} requests in seven scenarios, each \
         without and with the layer for it, then the whole stack, then resilience across layers.\n"
    );
    let progress = Progress::start(TOTAL_REQUESTS as u64);

    runtime.block_on(duplicate_flood(&progress, &mut table))?;
    runtime.block_on(outage(&progress, &mut table))?;
    runtime.block_on(transient_failures(&progress, &mut table))?;
    runtime.block_on(two_providers(&progress, &mut table))?;
    quota(&progress, &mut table)?;
    runtime.block_on(embeddings(&progress, &mut table))?;
    runtime.block_on(routing(&progress, &mut table))?;
    runtime.block_on(whole_stack(&progress, &mut table))?;
    resilience::deadline(&progress, &mut table)?;
    resilience::shared_budget(&progress, &mut table)?;
    resilience::adaptive(&progress, &mut table)?;

    progress.finish();
    table.print();
    println!(
        "\nThe whole tour took {:.1} s of wall time. Latencies are about 1/50 of real ones.",
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}
