//! HTTP handlers, one module per client-facing surface.

pub mod openai;
pub mod usage;
