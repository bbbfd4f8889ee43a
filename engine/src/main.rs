//! `orderhub`: parses arguments and runs the engine (see the `orderhub_engine` crate).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderhub_engine::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;

/// mimalloc: far cheaper than glibc malloc for the engine's many small, cross-thread
/// allocations (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "orderhub",
    version,
    about = "The order hub between sales channels and fulfilment systems"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine (with no --config, the embedded default).
    Serve {
        /// A TOML file layered over the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the journal lives (overrides server.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Write the journal's events received between two times as gzip'd JSON lines (for
    /// `loadgen replay` or inspection with `zcat | jq`).
    Export {
        /// Start: a day (`2026-11-28`, from 00:00 UTC) or an RFC 3339 time.
        #[arg(long)]
        from: String,
        /// End: a day (through its end, UTC) or an RFC 3339 time (exclusive).
        #[arg(long)]
        to: String,
        /// The file to write (`.jsonl.gz`).
        #[arg(long)]
        out: PathBuf,
        /// The configuration whose `server.data_dir` holds the journal.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data directory (overrides the configuration's).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Archive and remove, once, the finished orders older than `journal.retain` (the engine
    /// does this every `journal.compact_every`; run this with the engine stopped), and print
    /// what was archived, removed and reclaimed.
    Compact {
        /// The configuration (its `[journal]` retention keys and `server.data_dir`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data directory (overrides the configuration's).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print one day's reconciliation (calendar day in `[reports] timezone`): per channel, orders
    /// by state, each system's last statuses and amounts, and every order where systems
    /// disagree or a sync was not delivered. Reads the journal; the engine may be running.
    Reconcile {
        /// The day, `YYYY-MM-DD`.
        #[arg(long)]
        date: String,
        /// `json` (the report) or `csv` (one line per order of the day).
        #[arg(long, default_value = "json")]
        format: String,
        /// The configuration (`[reports] timezone`, the rules the orders are folded with, and
        /// `server.data_dir`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data directory (overrides the configuration's).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validate a configuration file; exits non-zero naming the key and line at fault.
    CheckConfig {
        /// Print the effective configuration (the default with FILE merged in) when it is valid.
        #[arg(long)]
        print: bool,
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Export {
            from,
            to,
            out,
            config,
            data_dir,
        } => {
            let (config, data_dir) = configured(config, data_dir)?;
            let archive_dir = (!config.journal.archive_dir.is_empty())
                .then(|| data_dir.join(&config.journal.archive_dir));
            let (from_ms, to_ms) = (instant(&from, false)?, instant(&to, true)?);
            let written = orderhub_engine::journal::export::export(
                &data_dir,
                archive_dir.as_deref(),
                from_ms,
                to_ms,
                &out,
            )
            .with_context(|| format!("cannot export the journal in {}", data_dir.display()))?;
            println!("{written} events written to {}", out.display());
            Ok(())
        }
        Command::Compact { config, data_dir } => {
            let (config, data_dir) = configured(config, data_dir)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let started = std::time::Instant::now();
            let (done, converted) =
                orderhub_engine::journal::retention::compact_offline(&config, &data_dir, now)
                    .with_context(|| {
                        format!("cannot compact the journal in {}", data_dir.display())
                    })?;
            if converted {
                println!(
                    "converted the journal to incremental vacuum (freed space now goes back to the file system)"
                );
            }
            if done.undone_bytes > 0 {
                println!(
                    "undid an interrupted compaction's batch: {} bytes cut from its archive file (its orders were still in the journal)",
                    done.undone_bytes
                );
            }
            let files: Vec<String> = done.files.iter().map(|f| f.display().to_string()).collect();
            match (done.orders, files.is_empty()) {
                (0, _) => println!(
                    "nothing to archive: no finished order's last event is older than journal.retain ({})",
                    humantime::format_duration(config.journal.retain.0)
                ),
                (orders, false) => {
                    println!("archived {orders} finished orders to {}", files.join(", "))
                }
                (orders, true) => println!(
                    "journal.archive_dir is empty: {orders} finished orders removed without archiving"
                ),
            }
            println!(
                "removed {} orders, {} events and {} syncs from the journal",
                done.orders, done.events, done.syncs
            );
            if done.parked > 0 {
                println!(
                    "archived and removed {} courier scans parked longer than journal.retain for a waybill no order reported",
                    done.parked
                );
            }
            if done.records_dropped > 0 {
                println!(
                    "dropped the records of {} orders archived more than {} ago (their GET answers 404 now, not 410)",
                    done.records_dropped,
                    humantime::format_duration(
                        orderhub_engine::journal::retention::ARCHIVED_RECORDS_KEPT
                    )
                );
            }
            println!(
                "journal {} -> {} bytes on disk: {} bytes reclaimed, in {:.1} s",
                done.disk_before,
                done.disk_after,
                done.reclaimed(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Reconcile {
            date,
            format,
            config,
            data_dir,
        } => {
            let (config, data_dir) = configured(config, data_dir)?;
            let csv = match format.as_str() {
                "json" => false,
                "csv" => true,
                other => anyhow::bail!("--format {other:?}: json or csv"),
            };
            let day =
                orderhub_engine::journal::reconcile::Day::parse(&date, &config.reports.timezone)
                    .map_err(anyhow::Error::msg)?;
            let report = orderhub_engine::journal::reconcile::reconcile_dir(
                &data_dir,
                &config.policy(),
                day,
            )
            .with_context(|| format!("cannot read the journal in {}", data_dir.display()))?;
            if csv {
                print!("{}", report.csv());
            } else {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(())
        }
        Command::CheckConfig { print, file } => match Config::load(&file)
            .and_then(|config| orderhub_engine::ingest::Sources::configure(&config).map(|_| config))
        {
            Ok(config) if print => {
                print!("{}", config.effective_toml());
                Ok(())
            }
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(())
            }
            Err(err) => {
                eprintln!("error: {err}");
                std::process::exit(1);
            }
        },
        Command::Serve {
            config,
            data_dir,
            listen,
        } => {
            orderhub_engine::telemetry::init_logging();
            let mut config = match config {
                Some(path) => Config::load(&path),
                None => Config::embedded(),
            }
            .context("invalid configuration")?;
            if let Some(dir) = data_dir {
                config.server.data_dir = dir;
            }
            if let Some(addr) = listen {
                config.server.listen = addr;
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(serve(config))
        }
    }
}

/// The configuration (the embedded default, or FILE over it) and the data directory
/// (`--data-dir`, else the configuration's).
fn configured(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<(Config, PathBuf)> {
    let config = match config {
        Some(path) => Config::load(&path),
        None => Config::embedded(),
    }
    .context("invalid configuration")?;
    let data_dir = data_dir.unwrap_or_else(|| config.server.data_dir.clone());
    Ok((config, data_dir))
}

/// Milliseconds since the epoch of a day (`YYYY-MM-DD`, UTC: its start, or its end when
/// `end_of_day`) or of an RFC 3339 time.
fn instant(text: &str, end_of_day: bool) -> anyhow::Result<i64> {
    let day = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, day) {
        let date = if end_of_day {
            date.next_day().context("date out of range")?
        } else {
            date
        };
        let at = date.midnight().assume_utc();
        return Ok((at.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{text:?} is neither YYYY-MM-DD nor an RFC 3339 time"))?;
    Ok((at.unix_timestamp_nanos() / 1_000_000) as i64)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.server.listen;
    let listener =
        orderhub_engine::listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
    orderhub_engine::run(
        config,
        listener,
        orderhub_engine::env_secrets(),
        shutdown_signal(),
    )
    .await
    .context("engine failed")
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
