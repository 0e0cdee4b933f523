//! The `upstream-sim` binary: one simulated provider on a fixed port, for
//! benchmarks and manual testing. It is controlled over HTTP at `/sim/stats`,
//! `/sim/last-request` and `/sim/config` (GET, or PUT a JSON `SimConfig`).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use upstream_sim::{Sim, SimConfig};

#[derive(Parser)]
#[command(name = "upstream-sim", version, about = "Fake OpenAI-compatible provider with latency and failure injection")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Full config as JSON (a SimConfig object); the flags below override it.
    #[arg(long)]
    config_json: Option<String>,
    /// Delay before the first chunk (or the whole non-streaming response).
    #[arg(long)]
    ttft_ms: Option<u64>,
    /// Delay between streamed chunks.
    #[arg(long)]
    chunk_delay_ms: Option<u64>,
    /// Tokens per answer.
    #[arg(long)]
    output_tokens: Option<u32>,
    /// Tokio worker threads. One leaves the other cores to the gateway under test.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match &args.config_json {
        Some(json) => match serde_json::from_str::<SimConfig>(json) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("upstream-sim: invalid --config-json: {e}");
                return ExitCode::from(2);
            }
        },
        None => SimConfig::default(),
    };
    if let Some(ms) = args.ttft_ms {
        config.ttft_ms = ms;
    }
    if let Some(ms) = args.chunk_delay_ms {
        config.chunk_delay_ms = ms;
    }
    if let Some(n) = args.output_tokens {
        config.output_tokens = n;
    }

    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("upstream-sim: cannot start runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    runtime.block_on(run(args.listen, config))
}

async fn run(listen: SocketAddr, config: SimConfig) -> ExitCode {
    let sim = match Sim::bind(listen, config).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("upstream-sim: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Scripts wait for this exact line before sending traffic.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "upstream-sim listening on {}", sim.addr());
    let _ = stdout.flush();
    drop(stdout);

    wait_for_signal().await;
    sim.shutdown();
    ExitCode::SUCCESS
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
