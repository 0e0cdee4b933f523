//! Canonical types at the centre of the request path.
//!
//! Each client dialect turns its request into a [`ChatRequest`] / [`EmbeddingsRequest`],
//! and everything between the edges (addressing, routing, metering) reads only these.
//! While clients and upstreams both speak the OpenAI dialect, the request keeps the
//! client's JSON object so every field it sent — including ones Bourse does not know —
//! reaches the provider untouched; only `model` (and, for streams, `stream_options`) is
//! rewritten. A translating dialect (Anthropic, Gemini) will build that object from its
//! own wire types at its edge.

use serde_json::{Map, Value};

/// A chat completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The model as the client named it: `provider/model`, a bare model, or a route.
    pub model: String,
    pub stream: bool,
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_output_tokens: Option<u64>,
    /// Capabilities the request needs from a model (for routing).
    pub needs: Needs,
    /// The OpenAI-dialect request object.
    pub body: Map<String, Value>,
}

/// What a request needs a model to support.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub tools: bool,
    pub json_schema: bool,
    pub vision: bool,
}

/// An embeddings request.
#[derive(Debug, Clone)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub body: Map<String, Value>,
}

/// Token usage in one normalized shape, whatever the dialect reported. The five counts
/// are disjoint: their sum is every token the provider billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub input_uncached: u64,
    pub input_cache_read: u64,
    pub input_cache_write: u64,
    /// Visible output (completion minus reasoning).
    pub output: u64,
    pub output_reasoning: u64,
}

impl Usage {
    pub fn input_total(&self) -> u64 {
        self.input_uncached + self.input_cache_read + self.input_cache_write
    }

    pub fn output_total(&self) -> u64 {
        self.output + self.output_reasoning
    }
}
