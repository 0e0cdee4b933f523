//! The `soak` binary: runs `soak::run` in hold or churn mode against a chat
//! completions endpoint and prints the report as one JSON object on stdout
//! (progress lines go to stderr). See `bench/soak.sh` for how it is driven.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use soak::{Mode, Options};

#[derive(Parser)]
#[command(name = "soak", version, about = "Open-stream SSE soak load generator")]
struct Cli {
    #[command(subcommand)]
    mode: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open N streams (ramped), hold them all until they finish.
    Hold {
        /// Streams to open.
        #[arg(long)]
        streams: u64,
        /// Streams started per second while ramping up (0: all at once).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds from the start after which streams still open count as timeouts.
        #[arg(long, default_value_t = 300.0)]
        deadline_secs: f64,
        #[command(flatten)]
        common: Common,
    },
    /// C workers sending streaming requests back to back on keep-alive connections.
    Churn {
        #[arg(long, default_value_t = 16)]
        workers: u64,
        #[arg(long, default_value_t = 32.0)]
        seconds: f64,
        /// Seconds after which one request counts as a timeout.
        #[arg(long, default_value_t = 30.0)]
        request_timeout_secs: f64,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// Address of the server (HOST:PORT, an IP address).
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Model name for the request body.
    #[arg(long, default_value = "sim-small")]
    model: String,
    #[arg(long, default_value = "Say hello in one short sentence.")]
    prompt: String,
    /// Do not ask for the usage chunk (no stream_options.include_usage).
    #[arg(long)]
    no_usage: bool,
    #[arg(long)]
    max_tokens: Option<u32>,
    /// The upstream's pacing between tokens (ms), subtracted from the measured gaps.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 5.0)]
    progress_secs: f64,
    /// Milliseconds between /proc samples of the watched processes.
    #[arg(long, default_value_t = 500)]
    sample_ms: u64,
    /// A process to sample from /proc, as NAME=PID (repeatable).
    #[arg(long, value_parser = parse_watch)]
    watch: Vec<(String, String)>,
    /// Clock ticks per second of /proc CPU times (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Runtime threads; 1 runs everything on the current thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn parse_watch(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, pid)) if !name.is_empty() && pid.parse::<u32>().is_ok() => Ok((name.to_owned(), pid.to_owned())),
        _ => Err(format!("expected NAME=PID, got {s:?}")),
    }
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (mode, common) = match cli.mode {
        Command::Hold { streams, rate, deadline_secs, common } => {
            (Mode::Hold { streams, rate, deadline: seconds(deadline_secs) }, common)
        }
        Command::Churn { workers, seconds: secs, request_timeout_secs, common } => {
            (Mode::Churn { workers, duration: seconds(secs), request_timeout: seconds(request_timeout_secs) }, common)
        }
    };
    let mut opts = Options::new(mode, common.target, &common.model);
    opts.path = common.path;
    opts.prompt = common.prompt;
    opts.include_usage = !common.no_usage;
    opts.max_tokens = common.max_tokens;
    opts.interval_ms = common.interval_ms;
    opts.progress = (common.progress_secs > 0.0).then(|| seconds(common.progress_secs));
    opts.sample_every = Duration::from_millis(common.sample_ms.max(10));
    opts.watch = common.watch;
    opts.clk_tck = common.clk_tck;

    let runtime = if common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(common.threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("soak: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(soak::run(opts));
    println!("{report}");
    ExitCode::SUCCESS
}
