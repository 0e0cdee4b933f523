//! Canonical types at the centre of the request path.
//!
//! Each client dialect turns its request into a [`ChatRequest`] / [`EmbeddingsRequest`],
//! and everything between the edges (addressing, routing, metering) reads only these.
//! A request keeps the client's JSON object and the dialect it is in: when the upstream
//! speaks the same dialect, every field the client sent — including ones Bourse does not
//! know — reaches the provider untouched (only `model`, and for OpenAI streams
//! `stream_options`, is rewritten). When the dialects differ, the edge converts the body
//! into a [`Conversation`] and renders that in the upstream's dialect; responses come back
//! as a [`Reply`] (or a stream of [`Delta`]s) and are rendered in the client's dialect.
//!
//! The conversation model follows the richest of the dialects (Anthropic's content
//! blocks): system text apart from the turns, user/assistant turns made of parts, tool
//! results as parts of a user turn, thinking with its signature. OpenAI's `tool` role
//! messages become tool-result parts of a user turn; Gemini's `model` role is the
//! assistant.

use serde_json::{Map, Value};

/// The wire formats Bourse speaks, with clients (OpenAI, Anthropic) and upstreams (all three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
        }
    }
}

/// A chat request (`/v1/chat/completions` or `/v1/messages`).
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The dialect `body` is in: the client's.
    pub dialect: Dialect,
    /// The model as the client named it: `provider/model`, a bare model, or a route.
    pub model: String,
    pub stream: bool,
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_output_tokens: Option<u64>,
    /// Capabilities the request needs from a model (for routing).
    pub needs: Needs,
    /// The client's request object, in `dialect`.
    body: RequestBody,
}

/// A request's JSON object: parsed at the edge, or kept as the client's bytes ([`RawBody`])
/// and parsed on first use, which a same-dialect pass-through never needs.
#[derive(Debug, Clone, Default)]
pub struct RequestBody {
    map: std::sync::OnceLock<Map<String, Value>>,
    raw: Option<RawBody>,
}

impl RequestBody {
    /// A body that was parsed (or built) as a map.
    pub fn from_map(map: Map<String, Value>) -> RequestBody {
        RequestBody { map: map.into(), raw: None }
    }

    /// The client's bytes, if the body was kept as sent.
    pub fn raw_bytes(&self) -> Option<&[u8]> {
        self.raw.as_ref().map(|r| &r.bytes[..])
    }

    /// The body in memory of its own: a small body is a slice of the buffer the client's
    /// connection reads into, and a stream that kept it for its whole life would keep that
    /// buffer from being reused (the connection would take a new one for its next read).
    pub fn detached(mut self) -> RequestBody {
        if let Some(raw) = &mut self.raw {
            raw.bytes = bytes::Bytes::copy_from_slice(&raw.bytes);
        }
        self
    }

    /// About how many bytes the body holds (its size as sent; a nominal size for one held
    /// only as a map), for memory budgets.
    pub fn byte_len(&self) -> usize {
        self.raw.as_ref().map_or(4096, |r| r.bytes.len())
    }

    /// The object as a map.
    pub fn map(&self) -> &Map<String, Value> {
        self.map.get_or_init(|| {
            // The bytes were validated as a JSON object before the request was built.
            let bytes = self.raw.as_ref().map(|r| &r.bytes[..]).unwrap_or(b"{}");
            serde_json::from_slice(bytes).unwrap_or_default()
        })
    }
}

/// A request body as the client sent it, with what a pass-through needs to know to send it
/// on by splicing instead of re-serializing: where the top-level `model` value is, and
/// what `stream_options` says.
#[derive(Debug, Clone)]
pub struct RawBody {
    pub bytes: bytes::Bytes,
    /// Byte range of the top-level `model` value (quotes included).
    pub model: std::ops::Range<usize>,
    pub stream_options: StreamOptions,
}

/// The top-level `stream_options` of a raw OpenAI body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOptions {
    Absent,
    /// Present, with `include_usage: true`.
    IncludesUsage,
    /// Present, without `include_usage: true` (splicing would have to edit inside it).
    Other,
}

impl ChatRequest {
    /// A request; `raw` when it was validated from its bytes (its map is then parsed only if
    /// something asks for it), else give it its map with [`ChatRequest::with_body`].
    pub fn new(
        dialect: Dialect,
        model: String,
        stream: bool,
        include_usage: bool,
        max_output_tokens: Option<u64>,
        needs: Needs,
        raw: Option<RawBody>,
    ) -> ChatRequest {
        let body = RequestBody { map: std::sync::OnceLock::new(), raw };
        ChatRequest { dialect, model, stream, include_usage, max_output_tokens, needs, body }
    }

    /// The request with its body parsed into a map at the edge.
    pub fn with_body(self, map: Map<String, Value>) -> ChatRequest {
        ChatRequest { body: RequestBody::from_map(map), ..self }
    }

    /// The client's request object.
    pub fn body(&self) -> &Map<String, Value> {
        self.body.map()
    }

    pub fn body_mut(&mut self) -> &mut Map<String, Value> {
        self.body.map();
        // The map is about to change: the bytes no longer describe the request.
        self.body.raw = None;
        self.body.map.get_mut().expect("initialised just above")
    }

    /// Moves the body out, for work after the request has gone upstream (a usage estimate),
    /// without copying or parsing it; this request is left with an empty one.
    pub fn take_body(&mut self) -> RequestBody {
        std::mem::take(&mut self.body)
    }

    /// The body as sent, if the request was validated from its bytes and not changed since.
    pub fn raw_body(&self) -> Option<&RawBody> {
        self.body.raw.as_ref()
    }
}

/// What a request needs a model to support.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub tools: bool,
    pub json_schema: bool,
    pub vision: bool,
}

impl Needs {
    /// As stored in a ledger row: tools 1, json_schema 2, vision 4.
    pub fn bits(self) -> u8 {
        u8::from(self.tools) | u8::from(self.json_schema) << 1 | u8::from(self.vision) << 2
    }

    /// The inverse of [`Needs::bits`] (unknown bits are ignored).
    pub fn from_bits(b: u8) -> Needs {
        Needs { tools: b & 1 != 0, json_schema: b & 2 != 0, vision: b & 4 != 0 }
    }
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
    /// Saturating, as are all sums of counts an upstream reported: a hostile or broken
    /// upstream's figures must not overflow.
    pub fn input_total(&self) -> u64 {
        self.input_uncached.saturating_add(self.input_cache_read).saturating_add(self.input_cache_write)
    }

    pub fn output_total(&self) -> u64 {
        self.output.saturating_add(self.output_reasoning)
    }
}

// ------------------------------------------------------------------ conversation

/// A chat request in dialect-neutral form: what translation reads and writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    /// System instructions, in order (OpenAI `system`/`developer` messages, Anthropic
    /// `system`, Gemini `systemInstruction`).
    pub system: Vec<Text>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: ResponseFormat,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<String>,
    pub thinking: Option<Thinking>,
    /// End-user id (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
}

/// A piece of system text. `cache_control` is Anthropic's prompt-caching marker, kept so
/// it reaches an Anthropic upstream; other dialects drop it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Text {
    pub text: String,
    pub cache_control: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One turn. Consecutive turns of the same role are allowed (dialects that forbid them
/// merge them when rendering).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(Text),
    Image {
        source: ImageSource,
        cache_control: Option<Value>,
    },
    /// The assistant calls a tool. `arguments` is the parsed JSON input (an object).
    ToolCall {
        id: String,
        name: String,
        arguments: Value,
    },
    /// The result of a tool call, sent back in a user turn. `content` holds text and
    /// image parts only.
    ToolResult {
        call_id: String,
        content: Vec<Part>,
        is_error: bool,
        cache_control: Option<Value>,
    },
    /// Visible reasoning; the signature must travel back unchanged in tool loops.
    Thinking {
        text: String,
        signature: Option<String>,
    },
    /// Anthropic's encrypted reasoning; only an Anthropic upstream can use it.
    RedactedThinking {
        data: String,
    },
}

/// Where an image is. Edges build it with [`ImageSource::from_url`], so a `data:` URL is
/// always `Base64` here and renderers never parse URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An `http(s):` URL (or anything else that is not a `data:` URL).
    Url(String),
    Base64 {
        media_type: String,
        data: String,
    },
}

impl ImageSource {
    /// A client's image URL: `data:[<mime>][;params][;base64],<data>` becomes `Base64` (data
    /// that is not base64 is percent-decoded and encoded; no MIME type means JPEG, this being
    /// an image), anything else stays a URL.
    pub fn from_url(url: &str) -> ImageSource {
        let parsed = url.get(..5).filter(|s| s.eq_ignore_ascii_case("data:")).and_then(|_| url[5..].split_once(','));
        let Some((meta, data)) = parsed else { return ImageSource::Url(url.to_string()) };
        let mut params = meta.split(';');
        let mime = params.next().unwrap_or("").trim();
        let media_type = if mime.is_empty() { "image/jpeg" } else { mime }.to_string();
        let data = if params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
            data.to_string()
        } else {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .encode(percent_encoding::percent_decode_str(data).collect::<Vec<u8>>())
        };
        ImageSource::Base64 { media_type, data }
    }
}

/// A function the model may call. `parameters` is a JSON Schema object.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
    pub cache_control: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    /// The model must call some tool (OpenAI `required`, Anthropic `any`, Gemini `ANY`).
    Any,
    None,
    /// This tool, by name.
    Tool(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: Option<bool>,
    },
}

impl ResponseFormat {
    pub fn is_json(&self) -> bool {
        !matches!(self, ResponseFormat::Text)
    }
}

/// Extended thinking: on with a token budget (Anthropic `budget_tokens`, Gemini
/// `thinkingBudget`), on with the vendor's adaptive default, or an effort level
/// (OpenAI `reasoning_effort`: minimal, low, medium, high).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Thinking {
    Budget(u64),
    Adaptive,
    Effort(String),
    Disabled,
}

/// The name of the tool Bourse adds to get JSON mode out of a dialect that only has
/// tools (Anthropic): the model is made to call it, and its input is returned as the
/// answer's text.
pub const JSON_TOOL: &str = "json_response";

// ------------------------------------------------------------------ responses

/// Why generation stopped, across dialects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Natural end (OpenAI `stop`, Anthropic `end_turn`, Gemini `STOP`).
    EndTurn,
    /// Output limit (OpenAI `length`, Anthropic `max_tokens`, Gemini `MAX_TOKENS`).
    MaxTokens,
    /// A stop sequence matched; which one, when the upstream says.
    StopSequence(Option<String>),
    /// The model called tools.
    ToolUse,
    /// Withheld by a safety or policy filter (OpenAI `content_filter`, Anthropic
    /// `refusal`, Gemini `SAFETY`, `RECITATION`, ...).
    ContentFilter,
}

/// A complete (non-streaming) answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub id: String,
    /// The model as the upstream named it.
    pub model: String,
    /// Text, Thinking, RedactedThinking and ToolCall parts, in order.
    pub parts: Vec<Part>,
    pub stop: StopReason,
    /// None when the upstream reported none (metering then estimates).
    pub usage: Option<Usage>,
}

/// One step of a streamed answer. Decoders turn upstream events into these; encoders turn
/// them into the client's events.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// The answer begins. `usage` is what is known so far (Anthropic reports input here).
    Start {
        id: String,
        model: String,
        usage: Option<Usage>,
    },
    Text(String),
    Thinking(String),
    ThinkingSignature(String),
    RedactedThinking(String),
    /// A tool call begins; `index` counts tool calls within this answer from 0.
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    /// More of the JSON arguments of tool call `index`.
    ToolCallArgs {
        index: u32,
        json: String,
    },
    Stop(StopReason),
    /// Usage so far; cumulative, so the last one wins.
    Usage(Usage),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_totals_saturate_instead_of_overflowing() {
        let u = Usage {
            input_uncached: u64::MAX,
            input_cache_read: 1,
            input_cache_write: 1,
            output: u64::MAX,
            output_reasoning: 1,
        };
        assert_eq!((u.input_total(), u.output_total()), (u64::MAX, u64::MAX));
        let small =
            Usage { input_uncached: 1, input_cache_read: 2, input_cache_write: 3, output: 4, output_reasoning: 5 };
        assert_eq!((small.input_total(), small.output_total()), (6, 9));
    }

    #[test]
    fn needs_round_trip_through_their_bits() {
        for b in 0..8u8 {
            assert_eq!(Needs::from_bits(b).bits(), b);
        }
        assert_eq!(Needs { tools: true, json_schema: false, vision: true }.bits(), 5);
        assert_eq!(Needs::from_bits(0xF8), Needs::default());
    }

    fn b64(media_type: &str, data: &str) -> ImageSource {
        ImageSource::Base64 { media_type: media_type.into(), data: data.into() }
    }

    #[test]
    fn data_urls_become_base64_once_at_the_edge() {
        assert_eq!(ImageSource::from_url("data:image/png;base64,iVBORw0KGgo="), b64("image/png", "iVBORw0KGgo="));
        assert_eq!(ImageSource::from_url("data:image/svg+xml,%3Csvg%2F%3E"), b64("image/svg+xml", "PHN2Zy8+"));
        assert_eq!(ImageSource::from_url("DATA:;base64,QUJD"), b64("image/jpeg", "QUJD"));
        // Not a well-formed data URL, or not a data URL: kept as a URL.
        assert_eq!(ImageSource::from_url("data:image/png;base64"), ImageSource::Url("data:image/png;base64".into()));
        assert_eq!(ImageSource::from_url("https://x/y.png"), ImageSource::Url("https://x/y.png".into()));
        // Invalid escapes stay as written.
        assert_eq!(ImageSource::from_url("data:text/plain,100%25 %zz%4"), b64("text/plain", "MTAwJSAlenolNA=="));
    }
}
