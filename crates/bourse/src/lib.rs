//! Bourse: an inference exchange. One OpenAI- and Anthropic-compatible endpoint in front of
//! every LLM provider.
//!
//! A request runs [`server`] (the edge: limits, request id, gateway key, route table) →
//! [`api`] (a thin handler: read the body, parse it with [`dialect`] into a
//! [`canonical`] request) → [`exchange`] (plan with [`route`], attempt through [`provider`],
//! relay or translate the answer, price it with [`meter`], record it in [`ledger`]) → the
//! response in the client's dialect. Data flows one way: no module imports one that comes
//! before it on this path (`tests/layering.rs` fails on any import circle). `main.rs` only
//! parses the command line and calls into the library; [`cli`] renders for a terminal;
//! [`demo`] runs the whole of it against simulated providers.

pub mod admin;
pub mod api;
pub mod cache;
pub mod canonical;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod dialect;
pub mod error;
pub mod evals;
pub mod exchange;
mod fnv;
pub mod heap;
pub mod ledger;
pub mod limit;
pub mod meter;
pub mod preset;
pub mod provider;
pub mod relay;
pub mod replay;
pub mod route;
pub mod server;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod tenancy;
pub mod timespec;
pub mod vendor;
