//! Bourse: an inference exchange. One OpenAI-compatible endpoint in front of every LLM
//! provider.
//!
//! The request path runs edge → dialect in → resolve/route → attempt → response; see
//! `server` for the layer order and `api` for the handlers. `main.rs` only parses the
//! command line and calls [`server::run`].

pub mod api;
pub mod canonical;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod dialect;
pub mod error;
pub mod exchange;
mod fnv;
pub mod heap;
pub mod ledger;
pub mod meter;
pub mod preset;
pub mod provider;
pub mod relay;
pub mod route;
pub mod server;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod timespec;
pub mod vendor;
