//! `loadgen`: parses arguments and runs `orderhub_loadgen::cli`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use clap::{Parser, Subcommand};
use orderhub_loadgen::cli::{ReplayArgs, RunArgs, SinksArgs};
use orderhub_loadgen::closed::LifecycleArgs;

/// mimalloc: far cheaper than glibc malloc for the engine's many small, cross-thread
/// allocations (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Capacity-test orderhub: open-model load, sink simulators, end-to-end verification"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send traffic to an engine, verify the outcome, write a report; exits 1 on any loss or
    /// failed threshold.
    Run(Box<RunArgs>),
    /// Run the downstream simulators (ERP, WMS, courier, notifications) on one port.
    Sinks(SinksArgs),
    /// Send an `orderhub export` file again at N times its pace (last night's traffic as
    /// tonight's rehearsal); exits 1 on refused events or a missed --max-p99.
    Replay(ReplayArgs),
    /// Closed-loop benchmark: orders run paid → delivered as canonical events, each order's
    /// events in sequence; reports events/s, ack latency, and the engine's CPU and disk bytes
    /// per event; exits 1 on refused events, lost syncs, wrong states or a missed threshold.
    Lifecycle(Box<LifecycleArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The senders run on one thread: a request's wake-ups then stay on it, where a
    // multi-threaded runtime parked and woke worker threads around every request (perf: most
    // of loadgen's kernel time below ~5,000 requests/s). One thread sends well past 20,000
    // requests/s. The simulators serve many connections at once and keep every core.
    let runtime = match cli.command {
        Command::Sinks(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()?;
    runtime.block_on(command(cli))
}

async fn command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let path = args.report.clone();
            let report = orderhub_loadgen::cli::run(*args).await?;
            print!("{}", report.summary());
            println!("report written to {}", path.display());
            if !report.failures.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Replay(args) => {
            let path = args.report.clone();
            let report = orderhub_loadgen::cli::replay(args).await?;
            print!("{}", report.summary());
            println!("report written to {}", path.display());
            if !report.failures.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Lifecycle(args) => {
            let path = args.report.clone();
            let report = orderhub_loadgen::closed::lifecycle(*args).await?;
            print!("{}", report.summary());
            println!("report written to {}", path.display());
            if !report.failures.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Sinks(args) => {
            let behaviour = args.behaviour()?;
            orderhub_loadgen::sinks::run(args.listen, behaviour).await
        }
    }
}
