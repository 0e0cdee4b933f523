//! The demo's workload: a fixed mix of chat requests drawn from a seed, sent through the
//! gateway over HTTP by concurrent clients, with what each answer said it cost.
//!
//! The mix stands for an application's traffic: mostly `auto`, some on a route that denies
//! CN hosting, some needing a frontier model, some content with an adequate one, a few naming
//! a model outright; short tasks (a review to classify, a ticket to extract as JSON, an email
//! to title) and long documents (a contract, a week of tickets) of 1,500 to 6,000 tokens;
//! OpenAI and Anthropic clients; streamed and whole answers. The same seed gives the same
//! requests, so two runs differ only in the order concurrency gives them.
//!
//! Costs are read from the answers themselves (`x-bourse-cost-usd`, or a stream's closing
//! comment) as integer nano-USD, so the report can say whether what clients were told adds up
//! to what the ledger holds.

use crate::cli::demo::Progress;
use crate::provider::http::Client;
use axum::http::{HeaderMap, HeaderValue, Uri};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The workload's seed: every run sends the same requests.
pub const SEED: u64 = 0x5EED_B0B5;
/// Longest a request may take before it counts as failed (the simulators answer in well
/// under a second).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read (a stream of a few hundred tokens is a few tens of KB).
const BODY_LIMIT: usize = 16 << 20;
/// Failure messages kept for the report; the rest are counted.
const SAMPLES: usize = 3;

/// One request of the workload.
#[derive(Debug, Clone)]
pub struct Call {
    /// `/v1/chat/completions` or `/v1/messages`.
    pub path: &'static str,
    pub body: Vec<u8>,
    pub stream: bool,
}

/// Models named outright by a tenth of the requests: the reference itself, and two cheaper
/// premium models, one of them across dialects.
const NAMED: [&str; 3] = ["openai-sim/gpt-4o", "anthropic-sim/claude-haiku-4-5", "mistral-sim/mistral-medium-2508"];

const REVIEWS: [&str; 8] = [
    "The checkout kept timing out and support took three days to answer.",
    "Setup took five minutes and the reports are exactly what our finance team wanted.",
    "Good value, but the mobile app logs me out every morning.",
    "The new pricing page is clear; the invoice still shows the old plan.",
    "Shipping was fast, though one of the two adapters arrived cracked.",
    "I asked for a refund twice and nobody replied. Very disappointed.",
    "Works as advertised. The API docs could use more examples.",
    "Our whole team switched last month and nobody wants to go back.",
];

const CLAUSES: [&str; 10] = [
    "The Supplier shall deliver the Services in accordance with the Service Levels set out in Schedule 2.",
    "The Customer shall pay each undisputed invoice within thirty days of its receipt.",
    "Either party may terminate this Agreement on ninety days' written notice to the other.",
    "Neither party's liability under this Agreement shall exceed the fees paid in the preceding twelve months.",
    "The Supplier shall keep all Customer Data confidential and process it only on documented instructions.",
    "Any change to the scope of the Services shall be agreed in writing through the change control procedure.",
    "The Supplier warrants that the Services will be performed with reasonable skill and care.",
    "Personal data shall not be transferred outside the agreed jurisdictions without prior written consent.",
    "Each party shall maintain insurance cover adequate for its obligations under this Agreement.",
    "Disputes shall first be escalated to the parties' relationship managers before any formal proceedings.",
];

/// `n` requests drawn from `seed`.
pub fn plan(n: usize, seed: u64) -> Vec<Call> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| call(&mut rng)).collect()
}

fn call(rng: &mut fastrand::Rng) -> Call {
    let model = match rng.u32(0..100) {
        0..50 => "auto",
        50..70 => "strong-not-cn",
        70..80 => "frontier",
        80..90 => "cheap",
        _ => NAMED[rng.usize(0..NAMED.len())],
    };
    let anthropic = rng.u32(0..100) < 20;
    let stream = rng.u32(0..100) < 40;
    let long = rng.u32(0..100) < 35;
    let (text, json_mode) = if long { (long_prompt(rng), false) } else { short_prompt(rng) };
    let max_tokens = if long { 1200 } else { 400 };
    let body = if anthropic {
        json!({"model": model, "max_tokens": max_tokens, "stream": stream,
               "messages": [{"role": "user", "content": text}]})
    } else {
        let mut b = json!({"model": model, "max_tokens": max_tokens, "stream": stream,
                           "messages": [{"role": "system", "content": "You are Acme's assistant. Be brief."},
                                        {"role": "user", "content": text}]});
        if json_mode {
            b["response_format"] = json!({"type": "json_object"});
        }
        b
    };
    Call {
        path: if anthropic { "/v1/messages" } else { "/v1/chat/completions" },
        body: body.to_string().into_bytes(),
        stream,
    }
}

fn pick<'a>(rng: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
    from[rng.usize(0..from.len())]
}

/// A short task; the second value says whether it asks for JSON (sent in JSON mode by
/// OpenAI clients).
fn short_prompt(rng: &mut fastrand::Rng) -> (String, bool) {
    let review = pick(rng, &REVIEWS);
    match rng.u32(0..5) {
        0 => (
            format!("Classify the sentiment of this review as positive, negative or mixed, in one word.\n\n{review}"),
            false,
        ),
        1 => (format!("Write a subject line of at most eight words for this email:\n\n{}", pick(rng, &CLAUSES)), false),
        2 => (format!("Translate into French, keeping the tone: {review}"), false),
        3 => (
            format!(
                "Return a JSON object with the fields product, issue and urgency (low, medium or high) for this \
                 support ticket:\n\n{review}"
            ),
            true,
        ),
        _ => (format!("Draft a short, friendly reply to this customer:\n\n{review}"), false),
    }
}

/// A long document, 1,500 to 6,000 tokens (about four characters each).
fn long_prompt(rng: &mut fastrand::Rng) -> String {
    let target = 4 * rng.usize(1500..=6000);
    let mut text = String::with_capacity(target + 200);
    if rng.bool() {
        text.push_str("Summarise each party's obligations in this agreement as five bullet points for a manager.\n\n");
        let mut clause = 1;
        while text.len() < target {
            text.push_str(&format!("{clause}. {}\n", pick(rng, &CLAUSES)));
            clause += 1;
        }
    } else {
        text.push_str("Here is a week of support tickets. Group them by root cause and say which to fix first.\n\n");
        let mut ticket = 4100;
        while text.len() < target {
            text.push_str(&format!("Ticket #{ticket}: {}\n", pick(rng, &REVIEWS)));
            ticket += 1;
        }
    }
    text
}

/// Live counts, for the progress bar.
#[derive(Debug, Default)]
pub struct Tally {
    done: AtomicU64,
    failed: AtomicU64,
    cost_nanos: AtomicI64,
}

impl Tally {
    /// A moment's reading, for the progress bar.
    pub fn snapshot(&self) -> Progress {
        Progress {
            done: self.done.load(Relaxed),
            failed: self.failed.load(Relaxed),
            cost_nanos: self.cost_nanos.load(Relaxed),
        }
    }
}

/// What the workload did, as its clients saw it.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sent: u64,
    /// Requests that got no successful answer.
    pub failed: u64,
    /// The first few failures, as `status: message`.
    pub failures: Vec<String>,
    /// The sum of every answer's stated cost.
    pub cost_nanos: i64,
    /// Successful answers that stated no cost.
    pub unpriced: u64,
}

/// Sends `calls` to the gateway at `addr`, `concurrency` at a time.
pub async fn run(addr: SocketAddr, calls: Vec<Call>, concurrency: usize, tally: Arc<Tally>) -> Outcome {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("user-agent", HeaderValue::from_static("bourse-demo"));
    let base: Uri = match format!("http://{addr}").parse() {
        Ok(u) => u,
        Err(e) => return failed_outright(calls.len(), format!("bad gateway address {addr}: {e}")),
    };
    let client = match Client::new(&base, &headers, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => return failed_outright(calls.len(), e),
    };
    let calls = Arc::new(calls);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, calls, next, tally) = (client.clone(), calls.clone(), next.clone(), tally.clone());
            tokio::spawn(async move {
                let mut out = Outcome::default();
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    let Some(call) = calls.get(i) else { break };
                    out.sent += 1;
                    match tokio::time::timeout(REQUEST_TIMEOUT, send(&client, call)).await {
                        Ok(Ok(Some(cost))) => {
                            out.cost_nanos += cost;
                            tally.cost_nanos.fetch_add(cost, Relaxed);
                        }
                        Ok(Ok(None)) => out.unpriced += 1,
                        Ok(Err(e)) => out.fail(e, &tally),
                        Err(_) => out.fail(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()), &tally),
                    }
                    tally.done.fetch_add(1, Relaxed);
                }
                out
            })
        })
        .collect();
    let mut total = Outcome::default();
    for w in workers {
        match w.await {
            Ok(o) => total.absorb(o),
            Err(e) => total.failures.push(format!("a client task failed: {e}")),
        }
    }
    total
}

fn failed_outright(n: usize, why: String) -> Outcome {
    Outcome { sent: 0, failed: n as u64, failures: vec![why], ..Outcome::default() }
}

impl Outcome {
    fn fail(&mut self, why: String, tally: &Tally) {
        self.failed += 1;
        tally.failed.fetch_add(1, Relaxed);
        if self.failures.len() < SAMPLES {
            self.failures.push(why);
        }
    }

    fn absorb(&mut self, o: Outcome) {
        self.sent += o.sent;
        self.failed += o.failed;
        self.cost_nanos += o.cost_nanos;
        self.unpriced += o.unpriced;
        for f in o.failures {
            if self.failures.len() < SAMPLES {
                self.failures.push(f);
            }
        }
    }
}

/// One request, read to its end; its stated cost in nano-USD, if it stated one.
async fn send(client: &Client, call: &Call) -> Result<Option<i64>, String> {
    let resp = client.post(call.path, None, &call.body).await.map_err(|e| e.to_string())?;
    let status = resp.status;
    let header = resp.header("x-bourse-cost-usd").map(str::to_string);
    let body = resp.body.bytes(BODY_LIMIT).await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!("{}: {}", status.as_u16(), text.chars().take(200).collect::<String>()));
    }
    let stated = match header {
        Some(h) => Some(h),
        None if call.stream => stream_cost(&body).map(str::to_string),
        None => None,
    };
    stated.map(|s| crate::tenancy::parse_usd(&s).map_err(|e| format!("x-bourse-cost-usd: {e}"))).transpose()
}

/// The cost a stream states in its closing comment (`: x-bourse-cost-usd=0.000012345 ...`).
fn stream_cost(body: &[u8]) -> Option<&str> {
    const MARK: &[u8] = b": x-bourse-cost-usd=";
    let at = body.windows(MARK.len()).rposition(|w| w == MARK)? + MARK.len();
    let rest = &body[at..];
    let end = rest.iter().position(|b| !(b.is_ascii_digit() || *b == b'.')).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_requests() {
        let (a, b) = (plan(50, SEED), plan(50, SEED));
        assert!(a.iter().zip(&b).all(|(x, y)| x.body == y.body && x.path == y.path && x.stream == y.stream));
        assert!(plan(50, SEED + 1).iter().zip(&a).any(|(x, y)| x.body != y.body));
    }

    #[test]
    fn the_mix_has_every_kind_of_request() {
        let calls = plan(400, SEED);
        let bodies: Vec<serde_json::Value> = calls.iter().map(|c| serde_json::from_slice(&c.body).unwrap()).collect();
        let count =
            |f: &dyn Fn(&Call, &serde_json::Value) -> bool| calls.iter().zip(&bodies).filter(|(c, b)| f(c, b)).count();
        let model = |m: &'static str| move |_: &Call, b: &serde_json::Value| b["model"] == m;
        // Each share within a few points of what `call` draws (400 draws).
        assert!((170..=230).contains(&count(&model("auto"))), "{}", count(&model("auto")));
        let not_cn = count(&model("strong-not-cn"));
        assert!((60..=100).contains(&not_cn), "{not_cn}");
        for route in ["frontier", "cheap"] {
            assert!((25..=60).contains(&count(&model(route))), "{route}");
        }
        for m in NAMED {
            assert!(count(&model(m)) > 3, "{m}");
        }
        let anthropic = count(&|c, _| c.path == "/v1/messages");
        assert!((55..=110).contains(&anthropic), "{anthropic}");
        let streams = count(&|c, b| c.stream && b["stream"] == true);
        assert!((130..=190).contains(&streams), "{streams}");
        assert!(count(&|_, b| b.get("response_format").is_some()) > 10);
        let len = |b: &serde_json::Value| {
            b["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().len()
        };
        let long = bodies.iter().filter(|b| len(b) >= 6000).count();
        assert!((110..=170).contains(&long), "{long}");
        assert!(bodies.iter().all(|b| len(b) <= 4 * 6000 + 200));
    }

    #[test]
    fn a_streams_cost_is_read_from_its_closing_comment() {
        let body = b"data: {\"x\":1}\n\ndata: [DONE]\n\n: x-bourse-cost-usd=0.000012345 x-bourse-reference-cost-usd=0.1 x-bourse-saved-usd=0.09\n\n";
        assert_eq!(stream_cost(body), Some("0.000012345"));
        assert_eq!(stream_cost(b"data: [DONE]\n\n"), None);
    }
}
