//! HTTP handlers, one module per client-facing surface.

pub mod anthropic;
pub mod chat;
pub mod openai;
pub mod quote;
pub mod usage;
