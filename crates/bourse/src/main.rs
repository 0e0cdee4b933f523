//! The `bourse` command line. Parsing only; the work lives in the library.

use bourse::config::Config;
use bourse::server::{self, ServeOptions};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Bourse: an inference exchange. One OpenAI-compatible endpoint in front of every LLM provider.
#[derive(Parser)]
#[command(name = "bourse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (TOML). Default: $BOURSE_CONFIG, else ./bourse.toml, else providers
        /// enabled from their key variables (OPENAI_API_KEY, DEEPSEEK_API_KEY, ...).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides server.listen; default 127.0.0.1:4545).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Allow listening on a non-loopback address without gateway keys.
        #[arg(long)]
        insecure_no_auth: bool,
    },
    /// Validate a config file and print the providers it defines.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    bourse::telemetry::init();
    let result = match cli.command {
        Command::Serve { config, listen, insecure_no_auth } => {
            Config::load(config.as_deref()).map_err(|e| format!("config error: {e}")).and_then(|cfg| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start runtime: {e}"))?;
                rt.block_on(server::run(cfg, ServeOptions { listen, insecure_no_auth }))
            })
        }
        Command::Check { config } => {
            Config::load(config.as_deref()).map_err(|e| format!("config error: {e}")).map(|cfg| {
                println!("config ok ({:?})", cfg.source);
                for p in &cfg.providers {
                    println!("  {:<16} {:<18} {}", p.id, p.preset.name, p.base_url);
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bourse: {e}");
            ExitCode::FAILURE
        }
    }
}
