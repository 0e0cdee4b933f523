//! The translation matrix over real sockets: {OpenAI client, Anthropic client} ×
//! {OpenAI-dialect, Anthropic, Gemini upstream} × {stream, non-stream} × {plain text, tool
//! use round trip, JSON mode}. Each case checks the content, the ids, the finish/stop
//! reason and the metered usage (the ledger row and its exact cost).
//!
//! One upstream-sim speaks all three dialects on one port; three providers point at it,
//! one per dialect. The sim reports the same answer and the same usage in each dialect's
//! own accounting (Anthropic's `input_tokens` excludes cache reads; OpenAI's and Gemini's
//! prompt counts include them), so every path must meter the same normalized usage.

mod common;

use common::{client, gateway_with_ledger, price, sse_data, Failure, LedgerGateway, Sim, SimConfig};
use serde_json::{json, Value};

const PROMPT_TOKENS: u32 = 40;
const CACHED_TOKENS: u32 = 8;
const OUTPUT_TOKENS: u32 = 12;

#[derive(Clone, Copy, Debug, PartialEq)]
enum ClientDialect {
    OpenAi,
    Anthropic,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Upstream {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Upstream {
    const ALL: [Upstream; 3] = [Upstream::OpenAi, Upstream::Anthropic, Upstream::Gemini];

    fn provider(self) -> &'static str {
        match self {
            Upstream::OpenAi => "oa",
            Upstream::Anthropic => "an",
            Upstream::Gemini => "ge",
        }
    }

    /// The prefix of the answer ids this upstream's dialect uses in the sim.
    fn id_prefix(self) -> &'static str {
        match self {
            Upstream::OpenAi => "chatcmpl-sim-",
            Upstream::Anthropic => "msg_sim_",
            Upstream::Gemini => "sim-",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Plain,
    Tools,
    Json,
}

struct Matrix {
    sim: Sim,
    gw: LedgerGateway,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A scratch directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("bourse-{tag}-{}-{}", std::process::id(), fastrand::u64(..)));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn matrix() -> Matrix {
    let sim = Sim::start(SimConfig {
        prompt_tokens: Some(PROMPT_TOKENS),
        cached_tokens: CACHED_TOKENS,
        output_tokens: OUTPUT_TOKENS,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let root = format!("http://{}", sim.addr());
    let mut toml = format!(
        "[providers.oa]\nkind = \"openai-compatible\"\nbase_url = \"{root}/v1\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n\
         [providers.an]\nkind = \"anthropic-compatible\"\nbase_url = \"{root}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n\
         [providers.ge]\nkind = \"gemini\"\nbase_url = \"{root}/v1beta\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n"
    );
    for u in Upstream::ALL {
        toml.push_str(&price(&format!("{}/sim-small", u.provider()), 1.0, 2.0));
    }
    let dir = tempdir::Dir::new("dialects");
    let url = format!("sqlite://{}", dir.0.join("ledger.db").display());
    let gw = gateway_with_ledger(&toml, &url).await;
    Matrix { sim, gw, _dir: dir }
}

/// What any client saw, normalized.
#[derive(Debug, Default)]
struct Answer {
    id: String,
    text: String,
    /// (id, name, arguments)
    tool: Option<(String, String, Value)>,
    /// The dialect's own finish/stop reason string.
    stop: String,
    /// Usage as the client was told it (OpenAI: prompt/completion; Anthropic: input/output).
    usage: Value,
}

fn weather_tool_openai() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

fn weather_tool_anthropic() -> Value {
    json!([{"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
}

fn answer_schema() -> Value {
    json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]})
}

/// The first request of a scenario, in the client's dialect.
fn first_request(c: ClientDialect, u: Upstream, s: Scenario, stream: bool) -> Value {
    let model = format!("{}/sim-small", u.provider());
    let mut body = match c {
        ClientDialect::OpenAi => json!({"model": model, "stream": stream,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the weather in Paris?"}]}),
        ClientDialect::Anthropic => json!({"model": model, "stream": stream, "max_tokens": 256, "system": "Be brief.",
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}),
    };
    if stream && c == ClientDialect::OpenAi {
        body["stream_options"] = json!({"include_usage": true});
    }
    match (s, c) {
        (Scenario::Plain, _) => {}
        (Scenario::Tools, ClientDialect::OpenAi) => body["tools"] = weather_tool_openai(),
        (Scenario::Tools, ClientDialect::Anthropic) => body["tools"] = weather_tool_anthropic(),
        (Scenario::Json, ClientDialect::OpenAi) => {
            body["response_format"] =
                json!({"type": "json_schema", "json_schema": {"name": "reply", "schema": answer_schema()}})
        }
        (Scenario::Json, ClientDialect::Anthropic) => {
            body["output_config"] = json!({"format": {"type": "json_schema", "schema": answer_schema()}})
        }
    }
    body
}

/// The second request of the tool round trip: the call and its result sent back.
fn tool_result_request(c: ClientDialect, u: Upstream, stream: bool, call: &(String, String, Value)) -> Value {
    let mut body = first_request(c, u, Scenario::Tools, stream);
    let (id, name, args) = call;
    let msgs = body["messages"].as_array_mut().unwrap();
    match c {
        ClientDialect::OpenAi => {
            msgs.push(json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}}]}));
            msgs.push(json!({"role": "tool", "tool_call_id": id, "content": "18 degrees and sunny"}));
        }
        ClientDialect::Anthropic => {
            msgs.push(
                json!({"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": name, "input": args}]}),
            );
            msgs.push(json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": id, "content": "18 degrees and sunny"}]}));
        }
    }
    body
}

async fn send(m: &Matrix, c: ClientDialect, body: &Value, rid: &str) -> (u16, String) {
    let path = match c {
        ClientDialect::OpenAi => "/v1/chat/completions",
        ClientDialect::Anthropic => "/v1/messages",
    };
    let resp = client()
        .post(format!("{}{path}", m.gw.gateway.url))
        .header("x-request-id", rid)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn parse_openai(body: &str, stream: bool) -> Answer {
    if !stream {
        let v: Value = serde_json::from_str(body).unwrap();
        let msg = &v["choices"][0]["message"];
        let tool = msg["tool_calls"].as_array().and_then(|t| t.first()).map(|t| {
            let args = t["function"]["arguments"].as_str().unwrap();
            (
                t["id"].as_str().unwrap().to_string(),
                t["function"]["name"].as_str().unwrap().to_string(),
                serde_json::from_str(args).unwrap(),
            )
        });
        return Answer {
            id: v["id"].as_str().unwrap().to_string(),
            text: msg["content"].as_str().unwrap_or("").to_string(),
            tool,
            stop: v["choices"][0]["finish_reason"].as_str().unwrap().to_string(),
            usage: v["usage"].clone(),
        };
    }
    let mut a = Answer::default();
    let mut tool: Option<(String, String, String)> = None;
    let data = common::sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "stream must end with [DONE]: {body}");
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("bad chunk {d}: {e}"));
        assert_eq!(v["object"], "chat.completion.chunk", "{d}");
        if a.id.is_empty() {
            a.id = v["id"].as_str().unwrap().to_string();
        }
        assert_eq!(v["id"], a.id.as_str(), "every chunk carries the same id");
        if !v["usage"].is_null() {
            a.usage = v["usage"].clone();
        }
        let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) else { continue };
        if let Some(t) = choice["delta"]["content"].as_str() {
            a.text.push_str(t);
        }
        for tc in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let entry = tool.get_or_insert_with(Default::default);
            if let Some(id) = tc["id"].as_str() {
                entry.0 = id.to_string();
            }
            if let Some(n) = tc["function"]["name"].as_str() {
                entry.1 = n.to_string();
            }
            if let Some(args) = tc["function"]["arguments"].as_str() {
                entry.2.push_str(args);
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            a.stop = f.to_string();
        }
    }
    a.tool = tool.map(|(id, name, args)| (id, name, serde_json::from_str(&args).unwrap()));
    a
}

fn parse_anthropic(body: &str, stream: bool) -> Answer {
    if !stream {
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "message", "{v}");
        let mut a = Answer {
            id: v["id"].as_str().unwrap().to_string(),
            stop: v["stop_reason"].as_str().unwrap().to_string(),
            usage: v["usage"].clone(),
            ..Answer::default()
        };
        for b in v["content"].as_array().unwrap() {
            match b["type"].as_str().unwrap() {
                "text" => a.text.push_str(b["text"].as_str().unwrap()),
                "tool_use" => {
                    a.tool = Some((
                        b["id"].as_str().unwrap().to_string(),
                        b["name"].as_str().unwrap().to_string(),
                        b["input"].clone(),
                    ))
                }
                other => panic!("unexpected block {other}: {v}"),
            }
        }
        return a;
    }
    let mut a = Answer::default();
    let mut names = Vec::new();
    let mut tool: Option<(String, String, String)> = None;
    let mut open = false;
    for item in bourse::sse::parse_all(body.as_bytes()) {
        let bourse::sse::Item::Event(ev) = item else { continue };
        let name = ev.event.clone().unwrap_or_else(|| panic!("unnamed Anthropic event: {}", ev.data));
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(v["type"], name.as_str(), "event name matches its type");
        match name.as_str() {
            "message_start" => {
                a.id = v["message"]["id"].as_str().unwrap().to_string();
                a.usage = v["message"]["usage"].clone();
            }
            "content_block_start" => {
                assert!(!open, "a block starts while another is open: {body}");
                open = true;
                if v["content_block"]["type"] == "tool_use" {
                    let b = &v["content_block"];
                    tool = Some((b["id"].as_str().unwrap().into(), b["name"].as_str().unwrap().into(), String::new()));
                }
            }
            "content_block_delta" => {
                assert!(open, "a delta outside a block: {body}");
                let d = &v["delta"];
                match d["type"].as_str().unwrap() {
                    "text_delta" => a.text.push_str(d["text"].as_str().unwrap()),
                    "input_json_delta" => tool.as_mut().unwrap().2.push_str(d["partial_json"].as_str().unwrap()),
                    _ => {}
                }
            }
            "content_block_stop" => open = false,
            "message_delta" => {
                a.stop = v["delta"]["stop_reason"].as_str().unwrap().to_string();
                // Cumulative: merge what it carries over message_start's.
                for (k, x) in v["usage"].as_object().unwrap() {
                    a.usage[k] = x.clone();
                }
            }
            _ => {}
        }
        if name != "ping" {
            names.push(name);
        }
    }
    assert_eq!(names.first().map(String::as_str), Some("message_start"), "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("message_stop"), "{names:?}");
    assert_eq!(names[names.len() - 2], "message_delta", "{names:?}");
    a.tool = tool.map(|(id, name, args)| (id, name, serde_json::from_str(&args).unwrap()));
    a
}

/// Run one request and check what every case shares: 200, the dialect's shape, the id
/// carried over from the upstream, the usage the client was told, and the ledger row.
async fn exchange(m: &Matrix, c: ClientDialect, u: Upstream, body: &Value, stream: bool, case: &str) -> Answer {
    let rid = format!("req-{}", case.replace(' ', "-"));
    let (status, text) = send(m, c, body, &rid).await;
    assert_eq!(status, 200, "{case}: {text}");
    let a = match c {
        ClientDialect::OpenAi => parse_openai(&text, stream),
        ClientDialect::Anthropic => parse_anthropic(&text, stream),
    };
    assert!(a.id.starts_with(u.id_prefix()), "{case}: id {} is not the upstream's ({}…)", a.id, u.id_prefix());
    // What the client is told, in its dialect's accounting.
    match c {
        ClientDialect::OpenAi => {
            assert_eq!(a.usage["prompt_tokens"], PROMPT_TOKENS, "{case}: {}", a.usage);
            assert_eq!(a.usage["completion_tokens"], OUTPUT_TOKENS, "{case}: {}", a.usage);
            assert_eq!(a.usage["prompt_tokens_details"]["cached_tokens"], CACHED_TOKENS, "{case}: {}", a.usage);
        }
        ClientDialect::Anthropic => {
            assert_eq!(a.usage["input_tokens"], PROMPT_TOKENS - CACHED_TOKENS, "{case}: {}", a.usage);
            assert_eq!(a.usage["cache_read_input_tokens"], CACHED_TOKENS, "{case}: {}", a.usage);
            assert_eq!(a.usage["output_tokens"], OUTPUT_TOKENS, "{case}: {}", a.usage);
        }
    }
    // What the ledger metered: the same normalized usage on every path, priced exactly:
    // 32 uncached × $1/M + 8 cached × $0.10/M + 12 output × $2/M = $0.0000568.
    let row = m.gw.row(&rid).await;
    assert_eq!(row.provider, u.provider(), "{case}");
    let usage = row.usage;
    assert_eq!(
        (usage.input_uncached, usage.input_cache_read, usage.input_cache_write, usage.output_total()),
        (u64::from(PROMPT_TOKENS - CACHED_TOKENS), u64::from(CACHED_TOKENS), 0, u64::from(OUTPUT_TOKENS)),
        "{case}"
    );
    assert!(!row.estimated(), "{case}: usage was reported, not estimated");
    assert_eq!(row.cost_nanos, 56_800, "{case}");
    assert_eq!(row.status, 200, "{case}");
    a
}

fn stop_of(c: ClientDialect, tool: bool) -> &'static str {
    match (c, tool) {
        (ClientDialect::OpenAi, false) => "stop",
        (ClientDialect::OpenAi, true) => "tool_calls",
        (ClientDialect::Anthropic, false) => "end_turn",
        (ClientDialect::Anthropic, true) => "tool_use",
    }
}

fn cases() -> Vec<(ClientDialect, Upstream, bool)> {
    let mut v = Vec::new();
    for c in [ClientDialect::OpenAi, ClientDialect::Anthropic] {
        for u in Upstream::ALL {
            for stream in [false, true] {
                v.push((c, u, stream));
            }
        }
    }
    v
}

fn case_name(c: ClientDialect, u: Upstream, s: Scenario, stream: bool) -> String {
    format!("{c:?} client {u:?} upstream {s:?} {}", if stream { "stream" } else { "non-stream" })
}

#[tokio::test]
async fn plain_text_every_pair() {
    let m = matrix().await;
    let mut texts = Vec::new();
    for (c, u, stream) in cases() {
        let case = case_name(c, u, Scenario::Plain, stream);
        let a = exchange(&m, c, u, &first_request(c, u, Scenario::Plain, stream), stream, &case).await;
        assert!(a.tool.is_none(), "{case}");
        assert_eq!(a.stop, stop_of(c, false), "{case}");
        assert!(!a.text.is_empty(), "{case}");
        texts.push((case.clone(), a.text));
        // Translation must not leak one dialect's shape into another: the upstream got
        // its own dialect's request, with the system prompt where that dialect keeps it.
        let req = m.sim.last_request().unwrap();
        match u {
            Upstream::OpenAi => {
                assert!(req.path.ends_with("/chat/completions"), "{case}: {}", req.path);
                assert_eq!(req.body["messages"][0]["role"], "system", "{case}");
            }
            Upstream::Anthropic => {
                assert_eq!(req.path, "/v1/messages", "{case}");
                assert_eq!(req.header("x-api-key"), Some("sk-sim-secret"), "{case}");
                assert!(req.header("anthropic-version").is_some(), "{case}");
                let system = &req.body["system"];
                assert!(system == "Be brief." || system[0]["text"] == "Be brief.", "{case}: {system}");
                assert_eq!(req.body["messages"][0]["role"], "user", "{case}");
            }
            Upstream::Gemini => {
                let want = if stream { ":streamGenerateContent" } else { ":generateContent" };
                assert!(req.path.ends_with(&format!("/models/sim-small{want}")), "{case}: {}", req.path);
                assert_eq!(req.header("x-goog-api-key"), Some("sk-sim-secret"), "{case}");
                assert_eq!(req.body["systemInstruction"]["parts"][0]["text"], "Be brief.", "{case}");
            }
        }
    }
    // The sim says the same thing in every dialect, and every path delivers all of it.
    let (first_case, first) = &texts[0];
    for (case, text) in &texts {
        assert_eq!(text, first, "{case} vs {first_case}");
    }
}

#[tokio::test]
async fn tool_use_round_trip_every_pair() {
    let m = matrix().await;
    for (c, u, stream) in cases() {
        let case = case_name(c, u, Scenario::Tools, stream);
        let a = exchange(&m, c, u, &first_request(c, u, Scenario::Tools, stream), stream, &case).await;
        assert_eq!(a.stop, stop_of(c, true), "{case}");
        let call = a.tool.clone().unwrap_or_else(|| panic!("{case}: no tool call"));
        assert_eq!(call.1, "get_weather", "{case}");
        assert!(call.2["city"].is_string(), "{case}: arguments {}", call.2);
        assert!(!call.0.is_empty(), "{case}: tool call without id");
        if u == Upstream::OpenAi {
            assert!(call.0.starts_with("call_sim_"), "{case}: the upstream's call id is kept: {}", call.0);
        }
        if u == Upstream::Anthropic {
            assert!(call.0.starts_with("toolu_sim_"), "{case}: the upstream's call id is kept: {}", call.0);
        }
        // Send the result back: the upstream must see it tied to the same call id.
        let case2 = format!("{case} result");
        let b = exchange(&m, c, u, &tool_result_request(c, u, stream, &call), stream, &case2).await;
        assert_eq!(b.stop, stop_of(c, false), "{case2}");
        assert!(b.tool.is_none() && !b.text.is_empty(), "{case2}");
        let req = m.sim.last_request().unwrap();
        match u {
            Upstream::OpenAi => {
                let msgs = req.body["messages"].as_array().unwrap();
                let assistant = msgs.iter().find(|m| m["role"] == "assistant").unwrap();
                assert_eq!(assistant["tool_calls"][0]["id"], call.0.as_str(), "{case2}");
                let tool = msgs.iter().find(|m| m["role"] == "tool").unwrap_or_else(|| panic!("{case2}: {msgs:?}"));
                assert_eq!(tool["tool_call_id"], call.0.as_str(), "{case2}");
            }
            Upstream::Anthropic => {
                let msgs = req.body["messages"].as_array().unwrap();
                let blocks: Vec<&Value> =
                    msgs.iter().flat_map(|m| m["content"].as_array().into_iter().flatten()).collect();
                let used = blocks.iter().find(|b| b["type"] == "tool_use").unwrap();
                assert_eq!(used["id"], call.0.as_str(), "{case2}");
                let result = blocks.iter().find(|b| b["type"] == "tool_result").unwrap();
                assert_eq!(result["tool_use_id"], call.0.as_str(), "{case2}");
                assert_eq!(msgs.last().unwrap()["role"], "user", "{case2}");
            }
            Upstream::Gemini => {
                let parts: Vec<&Value> = req.body["contents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|c| c["parts"].as_array().into_iter().flatten())
                    .collect();
                let call_part = parts.iter().find(|p| p.get("functionCall").is_some()).unwrap();
                assert_eq!(call_part["functionCall"]["name"], "get_weather", "{case2}");
                let resp = parts.iter().find(|p| p.get("functionResponse").is_some()).unwrap();
                assert_eq!(resp["functionResponse"]["name"], "get_weather", "{case2}: name found from the call id");
                assert_eq!(resp["functionResponse"]["id"], call.0.as_str(), "{case2}");
            }
        }
    }
}

#[tokio::test]
async fn json_mode_every_pair() {
    let m = matrix().await;
    for (c, u, stream) in cases() {
        let case = case_name(c, u, Scenario::Json, stream);
        let a = exchange(&m, c, u, &first_request(c, u, Scenario::Json, stream), stream, &case).await;
        assert!(a.tool.is_none(), "{case}: JSON mode must answer in text, not a tool call");
        assert_eq!(a.stop, stop_of(c, false), "{case}");
        let parsed: Value =
            serde_json::from_str(&a.text).unwrap_or_else(|e| panic!("{case}: not JSON: {}: {e}", a.text));
        assert!(parsed["answer"].is_string(), "{case}: {parsed}");
        // The upstream was asked for JSON in its own dialect.
        let req = m.sim.last_request().unwrap();
        match u {
            Upstream::OpenAi => assert_eq!(req.body["response_format"]["type"], "json_schema", "{case}"),
            Upstream::Anthropic if c == ClientDialect::Anthropic => {
                assert_eq!(req.body["output_config"]["format"]["type"], "json_schema", "{case}: passed through")
            }
            Upstream::Anthropic => {
                assert_eq!(req.body["tool_choice"]["type"], "tool", "{case}");
                assert_eq!(req.body["tools"][0]["input_schema"], answer_schema(), "{case}");
            }
            Upstream::Gemini => {
                assert_eq!(req.body["generationConfig"]["responseMimeType"], "application/json", "{case}")
            }
        }
    }
}

/// A sim whose every model request fails with `status` (Anthropic/OpenAI-shaped body).
async fn failing_sim(status: u16) -> Sim {
    let failure =
        upstream_sim::Failure::Status { status, retry_after: None, error_type: None, code: None, message: None };
    Sim::start(SimConfig { failure, ..SimConfig::default() }).await.unwrap()
}

async fn post_messages(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut req = client().post(format!("{url}/v1/messages")).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.body(body.to_string()).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

fn assert_anthropic_error(v: &Value, kind: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// The Anthropic surface answers every error class in Anthropic's shape, accepts the key as
/// `x-api-key` or bearer, and any `anthropic-version`; and a route whose every candidate is
/// overloaded is a 529 `overloaded_error`.
#[tokio::test]
async fn anthropic_surface_errors_and_auth() {
    let bad = failing_sim(529).await;
    let also_bad = failing_sim(503).await;
    let toml = format!(
        "[server]\napi_keys = [\"env:GATEWAY_KEY\"]\n\
         [providers.an1]\nkind = \"anthropic-compatible\"\nbase_url = \"http://{}\"\nmodels = [\"sim-small\"]\n\
         [providers.oa2]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n\
         [models.\"an1/sim-small\"]\ninput = 1.0\noutput = 2.0\nquality = 1400\n\
         [models.\"oa2/sim-small\"]\ninput = 1.5\noutput = 2.0\nquality = 1400\n\
         [router]\nfailure_threshold = 100\n",
        bad.addr(),
        also_bad.base_url()
    );
    let gw = common::gateway(&toml).await;
    let version = ("anthropic-version", "2099-01-01");
    let ok_body = r#"{"model":"an1/sim-small","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;

    let (s, v) = post_messages(&gw.url, &[version], ok_body).await;
    assert_eq!(s, 401, "{v}");
    assert_anthropic_error(&v, "authentication_error");
    // Anthropic's SDKs read the request id from `request-id`.
    let resp = client()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-request-id", "req-anthropic-id")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["request-id"], "req-anthropic-id");
    assert_eq!(resp.headers()["x-request-id"], "req-anthropic-id");
    let (s, v) = post_messages(&gw.url, &[version, ("x-api-key", "wrong")], ok_body).await;
    assert_eq!(s, 401, "{v}");
    assert_anthropic_error(&v, "authentication_error");

    let key = ("x-api-key", "gw-secret");
    let (s, v) = post_messages(
        &gw.url,
        &[version, key],
        r#"{"model":"an1/sim-small","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_anthropic_error(&v, "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_tokens"), "{v}");
    let (s, v) = post_messages(&gw.url, &[version, key], "{not json").await;
    assert_eq!(s, 400, "{v}");
    assert_anthropic_error(&v, "invalid_request_error");
    let (s, v) = post_messages(
        &gw.url,
        &[version, key],
        r#"{"model":"nobody/nothing","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert_anthropic_error(&v, "not_found_error");

    // Explicit model, overloaded upstream (529 relayed as 529) — bearer works too.
    let (s, v) = post_messages(&gw.url, &[version, ("authorization", "Bearer gw-secret")], ok_body).await;
    assert_eq!(s, 529, "{v}");
    assert_anthropic_error(&v, "overloaded_error");
    // A route whose candidates are all overloaded (one 529 Anthropic, one 503 OpenAI).
    let auto = r#"{"model":"auto","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let (s, v) = post_messages(&gw.url, &[version, key], auto).await;
    assert_eq!(s, 529, "{v}");
    assert_anthropic_error(&v, "overloaded_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("every candidate"), "{v}");
    assert_eq!(bad.stats().requests + also_bad.stats().requests, 3, "both candidates were tried");

    // count_tokens: an estimate, larger for a longer prompt, no upstream call.
    let count =
        |text: &str| json!({"model": "an1/sim-small", "messages": [{"role": "user", "content": text}]}).to_string();
    let url = format!("{}/v1/messages/count_tokens", gw.url);
    let mut counts = Vec::new();
    for text in ["hi", "a considerably longer prompt about the weather in Paris and Lyon"] {
        let resp = client()
            .post(&url)
            .header("content-type", "application/json")
            .header("x-api-key", "gw-secret")
            .body(count(text))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        counts.push(v["input_tokens"].as_u64().unwrap());
    }
    assert!(counts[0] > 0 && counts[1] > counts[0], "{counts:?}");
    assert_eq!(bad.stats().requests + also_bad.stats().requests, 3, "counting calls no upstream");
    let resp = client()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-api-key", "gw-secret")
        .body(json!({"model": "nobody/nothing", "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_anthropic_error(&serde_json::from_str(&resp.text().await.unwrap()).unwrap(), "not_found_error");
}

/// Routing and fallbacks do not care which dialect the client speaks: an Anthropic client
/// asking for `auto` gets the cheapest candidate (an Anthropic upstream, overloaded), then
/// falls back to an OpenAI-dialect one and gets its answer translated; both attempts are
/// in the ledger.
#[tokio::test]
async fn anthropic_client_routes_and_falls_back_across_dialects() {
    let overloaded = failing_sim(529).await;
    let healthy =
        Sim::start(SimConfig { output_tokens: 5, prompt_tokens: Some(20), ..SimConfig::default() }).await.unwrap();
    let toml = format!(
        "[providers.cheap]\nkind = \"anthropic-compatible\"\nbase_url = \"http://{}\"\nmodels = [\"sim-small\"]\n\
         [providers.backup]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n\
         [models.\"cheap/sim-small\"]\ninput = 0.5\noutput = 1.0\nquality = 1400\n\
         [models.\"backup/sim-small\"]\ninput = 1.0\noutput = 2.0\nquality = 1400\n",
        overloaded.addr(),
        healthy.base_url()
    );
    let dir = tempdir::Dir::new("dialects-route");
    let gw = gateway_with_ledger(&toml, &format!("sqlite://{}", dir.0.join("l.db").display())).await;
    let body = json!({"model": "auto", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]});
    let resp = client()
        .post(format!("{}/v1/messages", gw.gateway.url))
        .header("content-type", "application/json")
        .header("x-request-id", "req-route-anthropic")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-bourse-provider"], "backup");
    assert!(resp.headers().contains_key("x-bourse-route-reason"));
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["stop_reason"], "end_turn", "{v}");
    assert_eq!(v["usage"]["output_tokens"], 5, "{v}");
    let rows = async {
        for _ in 0..200 {
            let rows = gw.ledger.rows("req-route-anthropic").await.unwrap();
            if rows.len() == 2 {
                return rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("expected two ledger rows");
    }
    .await;
    let mut rows = rows;
    rows.sort_by_key(|r| r.attempt);
    assert_eq!((rows[0].provider.as_str(), rows[0].status), ("cheap", 529));
    assert_eq!((rows[1].provider.as_str(), rows[1].status), ("backup", 200));
    assert_eq!(rows[1].usage.input_uncached, 20);
    assert_eq!(rows[1].usage.output, 5);
}

/// An Anthropic stream that breaks after `message_start` (which counts the input and one
/// output token) is metered with the input as the upstream counted it and the output
/// estimated from what was relayed, not with the start's provisional output.
#[tokio::test]
async fn an_anthropic_stream_cut_after_message_start_is_metered_from_what_was_relayed() {
    let sim = Sim::start(SimConfig {
        prompt_tokens: Some(PROMPT_TOKENS),
        output_tokens: 200,
        chunk_delay_ms: 2,
        failure: Failure::DropMidStream { after_chunks: 120 },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let toml = format!(
        "[providers.an]\nkind = \"anthropic-compatible\"\nbase_url = \"http://{}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n{}",
        sim.addr(),
        price("an/sim-small", 1.0, 2.0)
    );
    let dir = tempdir::Dir::new("cut-anthropic");
    let url = format!("sqlite://{}", dir.0.join("ledger.db").display());
    let gw = gateway_with_ledger(&toml, &url).await;
    let body = json!({"model": "an/sim-small", "max_tokens": 512, "stream": true,
        "messages": [{"role": "user", "content": "Say hello to the exchange."}]});
    let resp = client()
        .post(format!("{}/v1/messages", gw.gateway.url))
        .header("content-type", "application/json")
        .header("x-request-id", "rid-cut-anthropic")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let relayed: String = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert!(!relayed.is_empty(), "{text}");
    let row = gw.row("rid-cut-anthropic").await;
    assert_eq!(row.error_kind.as_deref(), Some("upstream_stream_broken"), "{row:?}");
    assert!(row.estimated(), "{row:?}");
    assert_eq!(row.usage.input_total(), u64::from(PROMPT_TOKENS), "the input as message_start counted it: {row:?}");
    assert_eq!(row.usage.output, bourse::meter::estimate::tokens(&relayed), "the output relayed: {row:?}");
}
