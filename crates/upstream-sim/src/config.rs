//! What a simulated provider should do: latency, response size, usage
//! accounting quirks, injected failures and scripted task answers.
//!
//! The same `SimConfig` is accepted from Rust (`Sim::start`, `Sim::set_config`),
//! from the command line (`--config-json`) and over HTTP (`PUT /sim/config`), so
//! it is plain serde data with a default for every field: a JSON object only has
//! to name what it changes, and a misspelt field is an error rather than a
//! silently ignored knob.

use serde::{Deserialize, Serialize};

/// Behaviour of one simulated provider. Every field has a default, so
/// `SimConfig { ttft_ms: 50, ..Default::default() }` and `{"ttft_ms": 50}` both work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Delay before the first chunk of a stream (headers go out at once), or
    /// before the whole response when not streaming.
    pub ttft_ms: u64,
    /// Delay between consecutive streamed delta chunks.
    pub chunk_delay_ms: u64,
    /// Answer length in tokens; streaming sends one content chunk per token.
    pub output_tokens: u32,
    /// Fixed prompt token count; `None` derives it from the request text
    /// (characters / 4, rounded up, at least 1).
    pub prompt_tokens: Option<u32>,
    /// Reported as `prompt_tokens_details.cached_tokens` (clamped to the prompt).
    pub cached_tokens: u32,
    /// Reasoning tokens, added to `completion_tokens` and emitted as
    /// DeepSeek-style `reasoning_content`.
    pub reasoning_tokens: u32,
    /// Which vendor's usage object to imitate.
    pub usage_style: UsageStyle,
    /// Shape of the `choices` field in the final usage chunk of a stream.
    pub usage_chunk_choices: UsageChunkChoices,
    /// SSE comment lines (streaming) or blank lines (non-streaming) sent
    /// before the payload, as DeepSeek does while a request waits for capacity.
    pub keepalive_comments: u32,
    /// MiniMax style: the content opens with `<think>...</think>`.
    pub think_tags: bool,
    /// Model ids served by `GET /v1/models`.
    pub models: Vec<String>,
    /// Length of embedding vectors unless the request asks for `dimensions`.
    pub embedding_dims: u32,
    /// Failure to inject on model endpoints (chat completions, embeddings).
    pub failure: Failure,
    /// `None`: every model request fails with `failure`. `Some(n)`: only the
    /// first `n` model requests after this config was set fail, then all succeed.
    pub fail_first_n: Option<u32>,
    /// OpenAI chat streams: every chunk gets a top-level `"sim_sent_us"` member,
    /// the Unix time in microseconds (system clock) at which the chunk was handed
    /// to the connection, so a client on the same machine can measure each
    /// token's transit time through a proxy.
    pub stamp_chunks: bool,
    /// Injected failures quote the credentials the request carried (its `authorization`,
    /// `x-api-key` and `x-goog-api-key` headers): `status` in its error message, as some
    /// providers do with a rejected key, and `malformed_json` in its broken payload (the body,
    /// or the stream's broken event): for tests that a gateway never passes a key on.
    pub echo_credentials: bool,
    /// How requests that carry a task marker are answered: per model and task, how
    /// often correctly and what a wrong answer looks like. The first script whose
    /// `model`, `task` and `judge` fit the request decides; a marked request that no
    /// script fits is answered correctly. Requests without a marker ignore this.
    ///
    /// **Marker.** Anywhere in the request's message text (system prompt or any
    /// message, any dialect; the first marker counts):
    /// `[task:NAME item:ID answer:ANSWER]`, or `[task:NAME item:ID answer:ANSWER tool:FUNC]`
    /// when the answer should come as a call of tool `FUNC`. Values have no spaces
    /// and no `]`; `task:` comes first, the rest in any order. A marker that opens
    /// (`[task:`) but is malformed is answered with the dialect's 400, naming the problem.
    ///
    /// **Outcome.** The model answers correctly iff a hash of (`task_seed`, model,
    /// task, item) mapped to [0, 1) is below `p_correct`: deterministic, the same on
    /// every platform, so over many items the correct share approaches `p_correct`.
    ///
    /// **Answers.** Correct, as plain text: `Final answer: ANSWER`. When JSON was
    /// asked for (OpenAI `response_format` `json_object`/`json_schema`, Anthropic
    /// `output_config.format`/`output_format`, Gemini `responseMimeType:
    /// application/json`): the text `{"answer":"ANSWER"}`. When the request forces a
    /// tool (OpenAI `tool_choice` `required` or a named function, Anthropic `any` or
    /// `tool`, as Bourse asks for JSON; Gemini mode `ANY`), or the marker names a
    /// declared tool with `tool:FUNC`: a call with arguments `{"answer":"ANSWER"}`
    /// (a forced `any` calls the first tool). `ANSWER` is a JSON number instead of a
    /// string where the schema types `properties.answer` as `integer` or `number`
    /// and it parses as one. No tool is called when tool calls are off or the last
    /// turn is a tool result. Wrong answers: see [`WrongStyle`].
    ///
    /// **Judge.** A request whose text also contains `[judge]` is a judge request,
    /// matched against scripts with `judge: true`, and answered with exactly
    /// `VERDICT: PASS` or `VERDICT: FAIL` as plain text (whatever JSON or tools it
    /// asks for). The true verdict is PASS iff the text after the last `ANSWER TO
    /// GRADE:` (to the end of that message, with any `[task:...]` and `[judge]`
    /// removed) contains ANSWER as a whole word (case-sensitive, not continued by a
    /// letter, digit or `_`); the judge gives the other verdict when its hash says it
    /// errs (`p_correct` is its accuracy; its `wrong` is not used).
    pub tasks: Vec<TaskScript>,
    /// Seed of the task hash: the same seed gives the same outcomes, another seed
    /// different ones.
    pub task_seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            ttft_ms: 0,
            chunk_delay_ms: 0,
            output_tokens: 12,
            prompt_tokens: None,
            cached_tokens: 0,
            reasoning_tokens: 0,
            usage_style: UsageStyle::default(),
            usage_chunk_choices: UsageChunkChoices::default(),
            keepalive_comments: 0,
            think_tags: false,
            models: vec!["sim-small".to_owned(), "sim-large".to_owned()],
            embedding_dims: 8,
            failure: Failure::None,
            fail_first_n: None,
            stamp_chunks: false,
            echo_credentials: false,
            tasks: Vec::new(),
            task_seed: 0,
        }
    }
}

/// How one model answers (or judges) one task. Serialized as e.g.
/// `{"model":"sim-small","task":"arith","p_correct":0.7,"wrong":"truncated"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskScript {
    /// The requested model name as the simulator sees it (OpenAI and Anthropic:
    /// the body's `model`; Gemini: the path's); `"*"` (the default) for any.
    #[serde(default = "any")]
    pub model: String,
    /// The marker's task name; `"*"` (the default) for any.
    #[serde(default = "any")]
    pub task: String,
    /// Probability of a correct answer (of a correct verdict, for a judge), in
    /// [0, 1]; required. JSON outside that range is rejected; from Rust, above 1
    /// acts as 1 and below 0 (or NaN) as 0.
    #[serde(deserialize_with = "probability")]
    pub p_correct: f64,
    /// What an incorrect answer looks like.
    #[serde(default)]
    pub wrong: WrongStyle,
    /// This script is for judge requests (text containing `[judge]`), not answers.
    #[serde(default)]
    pub judge: bool,
}

impl TaskScript {
    /// `model` answers `task` correctly with probability `p_correct`, wrong
    /// answers being plausible but wrong ([`WrongStyle::Answer`]).
    pub fn new(model: &str, task: &str, p_correct: f64) -> TaskScript {
        TaskScript {
            model: model.to_owned(),
            task: task.to_owned(),
            p_correct,
            wrong: WrongStyle::default(),
            judge: false,
        }
    }

    /// Judge `model` gives the true verdict on `task` with probability `p_correct`.
    pub fn judge(model: &str, task: &str, p_correct: f64) -> TaskScript {
        TaskScript { judge: true, ..TaskScript::new(model, task, p_correct) }
    }

    /// The same script with wrong answers of this style.
    pub fn wrong(self, wrong: WrongStyle) -> TaskScript {
        TaskScript { wrong, ..self }
    }
}

fn any() -> String {
    "*".to_owned()
}

fn probability<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let p = f64::deserialize(deserializer)?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(serde::de::Error::custom(format_args!("p_correct must be between 0 and 1, got {p}")))
    }
}

/// How an incorrect scripted answer looks. Where a form does not apply, the
/// nearest one does, as listed; all are deterministic, and so is the wrong value
/// (from the hash with the model name: two models usually give different wrong
/// answers, one model always the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WrongStyle {
    /// A plausible but wrong value in the usual form: `Final answer: WRONG`, or
    /// `{"answer":"WRONG"}`, or a forced tool's call with that input. An integer
    /// ANSWER gives an integer off by 1 to 999 (not negative unless ANSWER is),
    /// anything else a word with three digits (`garnet417`); the reply never
    /// contains ANSWER as a whole word (unless ANSWER is `Final` or `answer`). For a
    /// tool named by the marker's `tool:`, the arguments break its schema instead:
    /// `answer` gets the other JSON type (a number such as `{"answer":52817}`, or a
    /// string where the schema asks for a number).
    #[default]
    Answer,
    /// Empty text content (no tool call), finishing normally.
    Empty,
    /// The correct reply cut to its first half, finishing for length (OpenAI
    /// `length`, Anthropic `max_tokens`, Gemini `MAX_TOKENS`). A cut tool call has
    /// half its arguments text (OpenAI) or the arguments `{}` (Anthropic and
    /// Gemini, whose arguments are an object).
    Truncated,
    /// When JSON or a tool call is asked for: unparseable JSON with a wrong value,
    /// `{'answer': 'WRONG'}`, as text or as OpenAI tool arguments (Anthropic and
    /// Gemini answer it as text, as their tool arguments must be an object). For a
    /// plain-text answer, same as [`WrongStyle::Answer`].
    InvalidJson,
    /// The text `I can't help with that.` (no tool call), finishing normally.
    Refusal,
}

/// How the usage object reports prompt caching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageStyle {
    /// `prompt_tokens_details.cached_tokens`.
    #[default]
    #[serde(rename = "openai")]
    OpenAi,
    /// `prompt_cache_hit_tokens` + `prompt_cache_miss_tokens`, no `prompt_tokens_details`.
    #[serde(rename = "deepseek")]
    DeepSeek,
    /// No usage at all: a completion without `usage`, a stream without the usage chunk
    /// (some self-hosted servers), so the gateway has to estimate.
    #[serde(rename = "omitted")]
    Omitted,
}

/// The `choices` field of the trailing usage chunk; vendors disagree on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageChunkChoices {
    /// `"choices": []` (OpenAI).
    #[default]
    Empty,
    /// `"choices": null`.
    Null,
    /// No `choices` key at all.
    Absent,
}

/// An injected failure. Serialized with a `kind` tag, e.g.
/// `{"kind":"status","status":429,"retry_after":2}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Failure {
    /// Behave normally.
    #[default]
    None,
    /// Reply with an HTTP error status and an OpenAI-shaped error body.
    Status {
        status: u16,
        /// Seconds for the `Retry-After` header.
        #[serde(default)]
        retry_after: Option<u64>,
        /// `error.type`; defaults to a sensible value for the status.
        #[serde(default)]
        error_type: Option<String>,
        /// `error.code`; defaults to null.
        #[serde(default)]
        code: Option<String>,
        /// `error.message`; defaults to "simulated failure".
        #[serde(default)]
        message: Option<String>,
    },
    /// Read the request, then close the connection without answering.
    Close,
    /// Read the request and never answer, until the client gives up.
    Stall,
    /// Streaming: send this many delta chunks, then abort the connection
    /// (no finish chunk, no usage, no `[DONE]`). Non-streaming: send the
    /// headers and part of the body, then abort.
    DropMidStream {
        #[serde(default)]
        after_chunks: u32,
    },
    /// Non-streaming: a 200 whose body is not valid JSON. Streaming: one
    /// chunk whose data is not valid JSON, then the normal stream.
    MalformedJson,
    /// Streaming: send this many delta chunks, then nothing more, holding the
    /// connection open until the client gives up. Non-streaming: send the
    /// headers and part of the body, then nothing more.
    StallMidStream {
        #[serde(default)]
        after_chunks: u32,
    },
    /// Streaming: send this many delta chunks (and with `mid_event`, the first
    /// half of the next event), then end the body cleanly: no finish, no usage,
    /// no `[DONE]` or `message_stop`. Non-streaming: part of the body, then a
    /// clean end.
    Truncate {
        #[serde(default)]
        after_chunks: u32,
        #[serde(default)]
        mid_event: bool,
    },
    /// A 200 `text/html` page instead of the API's answer, as a proxy, a
    /// captive portal or a wrong base URL serves.
    WrongContentType,
    /// A 200 carrying the dialect's error object for an overloaded server.
    /// Non-streaming: the error body. Streaming: an error event after this
    /// many delta chunks (0: as the stream's first event), then the end of
    /// the body.
    OkWithError {
        #[serde(default)]
        after_chunks: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_json_fills_defaults() {
        let c: SimConfig = serde_json::from_str(r#"{"ttft_ms":5,"usage_style":"deepseek"}"#).unwrap();
        assert_eq!(c.ttft_ms, 5);
        assert_eq!(c.usage_style, UsageStyle::DeepSeek);
        assert_eq!(c.output_tokens, 12);
        assert_eq!(c.models, ["sim-small", "sim-large"]);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<SimConfig>(r#"{"ttft":5}"#).is_err());
        assert!(serde_json::from_str::<SimConfig>(r#"{"failure":{"kind":"status","status":500,"bogus":1}}"#).is_err());
        assert!(serde_json::from_str::<SimConfig>(r#"{"task_sed":1}"#).is_err());
        assert!(serde_json::from_str::<SimConfig>(r#"{"tasks":[{"p_corect":0.5}]}"#).is_err());
        assert!(serde_json::from_str::<SimConfig>(r#"{"tasks":[{"p_correct":0.5,"wrong":"wrong"}]}"#).is_err());
    }

    #[test]
    fn task_scripts() {
        let c: SimConfig = serde_json::from_str(
            r#"{"task_seed":7,"tasks":[
                {"model":"sim-small","task":"arith","p_correct":0.7,"wrong":"invalid_json"},
                {"p_correct":0.9,"judge":true}]}"#,
        )
        .unwrap();
        assert_eq!(c.task_seed, 7);
        assert_eq!(
            c.tasks,
            [
                TaskScript::new("sim-small", "arith", 0.7).wrong(WrongStyle::InvalidJson),
                TaskScript::judge("*", "*", 0.9),
            ]
        );
        // p_correct is required and a probability.
        for bad in [r#"{}"#, r#"{"p_correct":1.5}"#, r#"{"p_correct":-0.1}"#, r#"{"p_correct":"0.5"}"#] {
            assert!(serde_json::from_str::<TaskScript>(bad).is_err(), "{bad}");
        }
        for (json, style) in [
            ("answer", WrongStyle::Answer),
            ("empty", WrongStyle::Empty),
            ("truncated", WrongStyle::Truncated),
            ("invalid_json", WrongStyle::InvalidJson),
            ("refusal", WrongStyle::Refusal),
        ] {
            assert_eq!(serde_json::from_value::<WrongStyle>(serde_json::json!(json)).unwrap(), style);
        }
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<SimConfig>(&json).unwrap(), c);
    }

    #[test]
    fn failure_tags() {
        let f: Failure = serde_json::from_str(r#"{"kind":"status","status":429,"retry_after":3}"#).unwrap();
        assert_eq!(
            f,
            Failure::Status { status: 429, retry_after: Some(3), error_type: None, code: None, message: None }
        );
        let f: Failure = serde_json::from_str(r#"{"kind":"drop_mid_stream","after_chunks":2}"#).unwrap();
        assert_eq!(f, Failure::DropMidStream { after_chunks: 2 });
        for (json, want) in [
            (r#"{"kind":"none"}"#, Failure::None),
            (r#"{"kind":"close"}"#, Failure::Close),
            (r#"{"kind":"stall"}"#, Failure::Stall),
            (r#"{"kind":"malformed_json"}"#, Failure::MalformedJson),
            (r#"{"kind":"wrong_content_type"}"#, Failure::WrongContentType),
            (r#"{"kind":"ok_with_error"}"#, Failure::OkWithError { after_chunks: 0 }),
            (r#"{"kind":"stall_mid_stream","after_chunks":2}"#, Failure::StallMidStream { after_chunks: 2 }),
            (r#"{"kind":"truncate","after_chunks":1}"#, Failure::Truncate { after_chunks: 1, mid_event: false }),
        ] {
            assert_eq!(serde_json::from_str::<Failure>(json).unwrap(), want);
        }
        let c: SimConfig = serde_json::from_str(r#"{"usage_chunk_choices":"absent","fail_first_n":2}"#).unwrap();
        assert_eq!(c.usage_chunk_choices, UsageChunkChoices::Absent);
        assert_eq!(c.fail_first_n, Some(2));
    }

    #[test]
    fn round_trips() {
        let c = SimConfig {
            failure: Failure::DropMidStream { after_chunks: 3 },
            usage_style: UsageStyle::DeepSeek,
            ..SimConfig::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<SimConfig>(&json).unwrap(), c);
    }
}
