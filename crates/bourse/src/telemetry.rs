//! Logging. Structured `tracing` output to stderr; `RUST_LOG` overrides the default
//! filter. Prompts, completions and keys are never logged; per-request access lines are
//! at `debug` so the default hot path does no log I/O.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("bourse=info,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
