//! The report benchmark's two halves (bench/reports.sh drives them):
//!
//! - `generate --url URL [--rows N] [--days D]` writes a synthetic ledger of N rows (default
//!   10,000,000) spread over the D days (default 30) before now, through `Ledger::append` —
//!   the code that writes a gateway's batches and their aggregates — in batches of 20,000.
//! - `count --url URL` prints how many rows the ledger holds; `analyze --url URL` has
//!   PostgreSQL vacuum and analyze every table (what autovacuum does to tables that grew).
//! - `replay-config --dir DIR --url URL` writes a config and two catalogs describing the
//!   generated ledger's models and routes, for `bourse replay` (bench/replay.sh).
//! - `query --url URL [--runs R] [--verify]` times every report grouping over three windows,
//!   a key's own report, and the series, latency histograms and routing summaries the
//!   dashboard's pages ask for (for each of its windows), and
//!   prints the median of R runs as a markdown table. `--verify` also checks, over the raw
//!   rows, that the aggregates' totals equal them to the nano-dollar and that `requests`
//!   equals the number of distinct request ids, and times that raw scan for comparison.
//!
//! The workload: 24 models of 8 providers, 300 virtual keys of 30 tenants chosen by a Zipf
//! law (a tenth of the traffic under config keys), 60% of requests routed by one of four
//! routes, 4% of attempts failing (a routed one falls back once), a token mix from tens to
//! thousands, TTFB and latency spread over four orders of magnitude, a request in five needing
//! tools, JSON schemas or vision (what `bourse replay` re-plans by; bench/replay.sh). Deterministic
//! (seeded).

use bourse::canonical::Usage;
use bourse::ledger::{Estimate, GroupBy, Ledger, LedgerEntry, ReportQuery, SeriesBy, SeriesQuery};
use clap::{Parser, Subcommand};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Generate {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long, default_value_t = 16)]
        seed: u64,
    },
    Count {
        #[arg(long)]
        url: String,
    },
    Analyze {
        #[arg(long)]
        url: String,
    },
    /// Writes DIR/bourse.toml (the generated ledger's providers and routes, its storage.url
    /// `URL`), DIR/catalog.toml (its models, with quality, origin, hosting, context and
    /// capabilities) and DIR/catalog-next.toml (the same models at other prices), for
    /// `bourse replay` (bench/replay.sh).
    ReplayConfig {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        url: String,
    },
    Query {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long)]
        verify: bool,
    },
}

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
const BATCH: usize = 20_000;

fn main() -> Result<(), String> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    match cli.command {
        Command::Generate { url, rows, days, seed } => rt.block_on(generate(&url, rows, days, seed)),
        Command::Query { url, runs, verify } => rt.block_on(query(&url, runs, verify)),
        Command::Count { url } => rt.block_on(async {
            let ledger = Ledger::open(&url).await.map_err(|e| format!("cannot open {url}: {e}"))?;
            println!("{}", ledger.count().await.map_err(|e| e.to_string())?);
            Ok(())
        }),
        Command::Analyze { url } => rt.block_on(analyze(&url)),
        Command::ReplayConfig { dir, url } => replay_config(&dir, &url),
    }
}

async fn analyze(url: &str) -> Result<(), String> {
    if url.starts_with("sqlite:") {
        return Ok(());
    }
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let t = Instant::now();
    client.batch_execute("VACUUM ANALYZE").await.map_err(|e| e.to_string())?;
    eprintln!("VACUUM ANALYZE: {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// A model: provider, name, integer pico-USD per input and output token.
struct Model {
    provider: &'static str,
    name: &'static str,
    input: i64,
    output: i64,
}

const PROVIDERS: [&str; 8] =
    ["openai", "anthropic", "deepseek", "dashscope", "mistral", "deepinfra", "together", "groq"];
const ROUTES: [&str; 4] = ["auto", "cheap", "strong-not-cn", "code"];
const ERRORS: [&str; 5] =
    ["upstream_5xx", "upstream_timeout", "upstream_rate_limited", "upstream_unreachable", "client_disconnected"];

fn models() -> Vec<Model> {
    let names = ["large", "medium", "small"];
    let mut out = Vec::new();
    for (p, provider) in PROVIDERS.iter().enumerate() {
        for (m, name) in names.iter().enumerate() {
            // Prices from 0.05 to 15 USD per million tokens, pico-USD per token.
            let scale = [40, 8, 1][m] * (1 + p as i64 % 3);
            out.push(Model { provider, name, input: 50_000 * scale, output: 200_000 * scale });
        }
    }
    out
}

/// The generated ledger's world as a config and two catalogs (see `Command::ReplayConfig`):
/// US makers hosted in the US, Chinese ones in China, Mistral in France, and the open-weight
/// hosts serving Chinese-made models (medium) in the US; larger models are better, see more
/// and hold more. The next catalog makes the Chinese vendors 30% cheaper and OpenAI 20% dearer.
fn replay_config(dir: &std::path::Path, url: &str) -> Result<(), String> {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let catalog = |next: bool| {
        let mut t = String::from("[meta]\nname = \"ledger-bench\"\ndate = \"2026-01-01\"\n");
        for (i, m) in models().iter().enumerate() {
            let p = PROVIDERS.iter().position(|p| *p == m.provider).unwrap_or(0);
            let size = i % 3;
            let factor = match (next, m.provider) {
                (true, "deepseek" | "dashscope") => 0.7,
                (true, "openai") => 1.2,
                _ => 1.0,
            };
            let (origin, hosting) = match m.provider {
                "openai" | "anthropic" => ("US", "US"),
                "deepseek" | "dashscope" => ("CN", "CN"),
                "mistral" => ("FR", "FR"),
                _ if size == 1 => ("CN", "US"),
                _ => ("US", "US"),
            };
            let caps = match size {
                0 if p < 4 => r#""tools", "json_schema", "vision", "streaming""#,
                0 | 1 => r#""tools", "json_schema", "streaming""#,
                _ => r#""tools", "streaming""#,
            };
            t.push_str(&format!(
                "\n[[model]]\nprovider = \"{}\"\nmodel = \"{}\"\ninput = {:.6}\noutput = {:.6}\nquality = {}\norigin = \"{origin}\"\nhosting = \"{hosting}\"\ncontext = {}\ncapabilities = [{caps}]\n",
                m.provider,
                m.name,
                m.input as f64 / 1e6 * factor,
                m.output as f64 / 1e6 * factor,
                [1440, 1390, 1320][size] + (p as u32 % 4) * 5,
                [200_000, 128_000, 32_000][size],
            ));
        }
        t
    };
    write("catalog.toml", catalog(false))?;
    write("catalog-next.toml", catalog(true))?;
    let mut cfg = String::new();
    for p in PROVIDERS {
        cfg.push_str(&format!(
            "[providers.{p}]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [\"large\", \"medium\", \"small\"]\n\n"
        ));
    }
    cfg.push_str(&format!(
        "[catalog]\nfile = \"{}\"\nreference = \"openai/large\"\n\n[storage]\nurl = \"{url}\"\n\n\
         [policies.no_cn]\ndeny_hosting = [\"CN\"]\n\n\
         [routes.auto]\nmin_quality = \"strong\"\n[routes.cheap]\nmin_quality = \"adequate\"\n\
         [routes.strong-not-cn]\nmin_quality = \"strong\"\npolicy = \"no_cn\"\n[routes.code]\nmin_quality = 1400\n",
        dir.join("catalog.toml").display()
    ));
    write("bourse.toml", cfg)?;
    println!("wrote {}", dir.join("bourse.toml").display());
    Ok(())
}

/// An index in 0..n drawn from a Zipf-like law (weight 1/(i+1)), by inverting its CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|i| {
                acc += 1.0 / (i as f64 + 1.0);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        let x = rng.f64();
        self.cdf.partition_point(|c| *c < x).min(self.cdf.len() - 1)
    }
}

/// A value spread log-uniformly over [lo, hi).
fn log_uniform(rng: &mut fastrand::Rng, lo: f64, hi: f64) -> u64 {
    (lo * (hi / lo).powf(rng.f64())) as u64
}

struct Gen {
    rng: fastrand::Rng,
    models: Vec<Model>,
    keys: Zipf,
    model_pick: Zipf,
    keys_n: usize,
    tenants_n: usize,
    next_request: u64,
}

impl Gen {
    /// The rows of one request starting at `ts`: one, or two when a routed attempt fails.
    fn request(&mut self, ts: i64, out: &mut Vec<LedgerEntry>) {
        let rng = &mut self.rng;
        self.next_request += 1;
        let request_id = format!("bench-{:012}", self.next_request);
        let key = (rng.u32(..10) != 0).then(|| self.keys.pick(rng) % self.keys_n);
        let key_id = key.map(|k| format!("key_{k:016x}"));
        let tenant_id = key.map(|k| format!("tenant-{}", k % self.tenants_n));
        let route = (rng.u32(..10) < 6).then(|| ROUTES[rng.usize(..ROUTES.len())]);
        let stream = rng.bool();
        let input = log_uniform(rng, 40.0, 12_000.0);
        let cached = if rng.u32(..4) == 0 { input / 2 } else { 0 };
        let output = log_uniform(rng, 5.0, 3_000.0);
        // What the request needed (tools 1, json_schema 2, vision 4), for `bourse replay`: from
        // the request number, not the generator, so the rest of the data stays as it was.
        let needs = match self.next_request % 20 {
            0 | 1 => 1,
            2 => 2,
            3 => 4,
            4 => 3,
            _ => 0,
        };
        let mut attempt = 1;
        let mut ts = ts;
        loop {
            // A route chooses among six models (its own slice of the list); a named model is
            // any model, the popular ones more often.
            let m = match route {
                Some(r) => {
                    let base = ROUTES.iter().position(|x| *x == r).unwrap_or(0) * 5;
                    (base + rng.usize(..6) + attempt - 1) % self.models.len()
                }
                None => self.model_pick.pick(rng),
            };
            let model = &self.models[m];
            let failed = rng.u32(..100) < 4;
            let ttfb = log_uniform(rng, 30.0, 8_000.0) as u32;
            let (usage, cost, reference, error, status, ttfb_ms, latency) = if failed {
                let kind = ERRORS[rng.usize(..ERRORS.len())];
                let latency = if kind == "upstream_timeout" { 30_000 } else { ttfb / 2 + 1 };
                (Usage::default(), 0, 0, Some(kind.to_string()), 502, None, latency)
            } else {
                let usage = Usage {
                    input_uncached: input - cached,
                    input_cache_read: cached,
                    input_cache_write: 0,
                    output,
                    output_reasoning: if model.name == "large" { output / 3 } else { 0 },
                };
                let tokens_in = (input - cached) as i64;
                let pico = tokens_in * model.input + cached as i64 * model.input / 10 + output as i64 * model.output;
                // The reference: 2.50 / 10.00 USD per million tokens.
                let reference_pico = input as i64 * 2_500_000 + output as i64 * 10_000_000;
                let latency = ttfb + (output as u32) * rng.u32(5..25);
                (usage, (pico + 500) / 1_000, (reference_pico + 500) / 1_000, None, 200, Some(ttfb), latency)
            };
            let route_reason = route.map(|r| {
                format!(
                    "route={r} chose {}/{} (expected $0.000100000); {} feasible; runner-up x/y (expected $0.000200000){}",
                    model.provider,
                    model.name,
                    rng.u32(2..15),
                    if attempt > 1 { "; attempt 2 (fallback)" } else { "" }
                )
            });
            out.push(LedgerEntry {
                request_id: request_id.clone(),
                attempt: attempt as u32,
                ts_ms: ts,
                key_id: key_id.as_deref().map(Into::into),
                tenant_id: tenant_id.as_deref().map(Into::into),
                provider: model.provider.to_string(),
                model: model.name.to_string(),
                route_reason,
                usage,
                cost_nanos: cost,
                reference_cost_nanos: reference,
                catalog_version: "bench@2026-01-01#0000".to_string(),
                ttfb_ms,
                latency_ms: latency,
                status,
                error_kind: error,
                estimate: (rng.u32(..100) == 0).then_some(Estimate::Tokenizer),
                stream,
                checks: None,
                needs,
                cache_hit: false,
                cache_saved_nanos: 0,
                energy_uwh: None,
                co2e_ug: None,
            });
            if !(failed && route.is_some() && attempt == 1) {
                return;
            }
            attempt += 1;
            ts += i64::from(latency) + 50;
        }
    }
}

async fn generate(url: &str, rows: u64, days: i64, seed: u64) -> Result<(), String> {
    let ledger = Ledger::open(url).await.map_err(|e| format!("cannot open {url}: {e}"))?;
    let stored = ledger.count().await.map_err(|e| e.to_string())?;
    if stored > 0 {
        return Err(format!("the ledger already holds {stored} rows: generate into an empty one"));
    }
    let end = bourse::timespec::now_ms();
    let start = end - days * DAY;
    let span = (end - start) as f64;
    let mut g = Gen {
        rng: fastrand::Rng::with_seed(seed),
        models: models(),
        keys: Zipf::new(300),
        model_pick: Zipf::new(24),
        keys_n: 300,
        tenants_n: 30,
        next_request: 0,
    };
    let began = Instant::now();
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(BATCH + 2);
    // Requests in time order (as a gateway writes them), about `rows` rows in all.
    let requests = rows as f64 / 1.024;
    let mut i = 0f64;
    while written < rows {
        let ts = start + (span * i / requests) as i64;
        i += 1.0;
        g.request(ts.min(end - 1), &mut batch);
        if batch.len() >= BATCH || written + batch.len() as u64 >= rows {
            let n = batch.len() as u64;
            ledger
                .append(std::mem::replace(&mut batch, Vec::with_capacity(BATCH + 2)))
                .await
                .map_err(|e| e.to_string())?;
            written += n;
            if written % 1_000_000 < n {
                let secs = began.elapsed().as_secs_f64();
                eprintln!("{written} rows in {secs:.0} s ({:.0} rows/s)", written as f64 / secs);
            }
        }
    }
    let secs = began.elapsed().as_secs_f64();
    println!("generated {written} rows over {days} days in {secs:.1} s ({:.0} rows/s)", written as f64 / secs);
    Ok(())
}

/// One timed query: what it is and how long its runs took.
struct Timed {
    name: String,
    rows: usize,
    times: Vec<Duration>,
}

async fn time<F, Fut, T>(runs: usize, name: String, f: F) -> Result<Timed, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, bourse::ledger::LedgerError>>,
{
    let mut times = Vec::with_capacity(runs);
    let mut rows = 0;
    for _ in 0..runs {
        let t = Instant::now();
        rows = f().await.map_err(|e| format!("{name}: {e}"))?.len();
        times.push(t.elapsed());
    }
    times.sort();
    Ok(Timed { name, rows, times })
}

async fn query(url: &str, runs: usize, verify: bool) -> Result<(), String> {
    let ledger = Ledger::open(url).await.map_err(|e| format!("cannot open {url}: {e}"))?;
    let count = ledger.count().await.map_err(|e| e.to_string())?;
    let now = bourse::timespec::now_ms();
    // Unaligned bounds, as `--since 24h` gives: raw rows at both edges.
    let windows = [("24h", Some(now - DAY)), ("7d", Some(now - 7 * DAY)), ("all", None)];
    let mut out = Vec::new();
    for (label, since_ms) in windows {
        for by in GroupBy::ALL {
            let q = ReportQuery { since_ms, until_ms: Some(now), by, key: None };
            out.push(time(runs, format!("report --by {by} --since {label}"), || ledger.report(&q)).await?);
        }
    }
    // A virtual key reading its own usage (`/v1/bourse/usage` with a key), by model, 30 days.
    let key = ReportQuery {
        since_ms: Some(now - 30 * DAY),
        until_ms: Some(now),
        by: GroupBy::Model,
        key: Some("key_0000000000000000".into()),
    };
    out.push(time(runs, "report of one key, --by model --since 30d".into(), || ledger.report(&key)).await?);
    // The dashboard's queries, for its windows as it cuts them (a whole number of buckets
    // ending with the one holding now): 1h by the minute, 24h by the half hour, 7d by three
    // hours, 30d by the day.
    for (label, buckets, bucket_ms) in
        [("1h", 60, 60_000), ("24h", 48, 1_800_000), ("7d", 56, 3 * HOUR), ("30d", 30, DAY)]
    {
        let until_ms = (now.div_euclid(bucket_ms) + 1) * bucket_ms;
        let since_ms = until_ms - buckets * bucket_ms;
        for by in [SeriesBy::Total, SeriesBy::Provider, SeriesBy::Model, SeriesBy::Tenant, SeriesBy::Key] {
            let q = SeriesQuery { since_ms, until_ms, bucket_ms, by };
            out.push(time(runs, format!("series {label} by {by:?}"), || ledger.series(&q)).await?);
        }
        let q = SeriesQuery { since_ms, until_ms, bucket_ms, by: SeriesBy::Total };
        out.push(time(runs, format!("latency series {label}"), || ledger.latency_series(&q)).await?);
        out.push(time(runs, format!("route groups {label}"), || ledger.route_groups(since_ms, until_ms)).await?);
        out.push(time(runs, format!("error groups {label}"), || ledger.error_groups(since_ms, until_ms)).await?);
    }
    println!("{count} rows; median (and slowest) of {runs} runs\n");
    println!("| query | rows out | median ms | slowest ms |");
    println!("|---|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut worst = Duration::ZERO;
    for t in &out {
        let median = t.times[t.times.len() / 2];
        let slowest = t.times[t.times.len() - 1];
        worst = worst.max(slowest);
        println!("| {} | {} | {:.1} | {:.1} |", t.name, t.rows, ms(median), ms(slowest));
    }
    println!("\nslowest of all: {:.1} ms", ms(worst));
    if verify {
        verify_raw(url, &ledger).await?;
    }
    Ok(())
}

/// The whole ledger's totals from the aggregates against a scan of the raw rows.
async fn verify_raw(url: &str, ledger: &Ledger) -> Result<(), String> {
    let agg = ledger.report(&ReportQuery::default()).await.map_err(|e| e.to_string())?;
    let a = agg.first().ok_or("empty ledger")?;
    let sql = "SELECT COUNT(DISTINCT request_id), CAST(COUNT(*) AS BIGINT), CAST(SUM(cost_nanos) AS BIGINT), \
               CAST(SUM(reference_cost_nanos) AS BIGINT), CAST(SUM(input_uncached + input_cache_read + output) AS BIGINT) \
               FROM ledger";
    let t = Instant::now();
    let raw: [i64; 5] = if let Some(path) = url.strip_prefix("sqlite:") {
        let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
        conn.query_row(sql, [], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]))
            .map_err(|e| e.to_string())?
    } else {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let r = client.query_one(sql, &[]).await.map_err(|e| e.to_string())?;
        [r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)]
    };
    let scan = t.elapsed();
    let from_agg = [
        a.requests,
        a.attempts,
        a.cost_nanos,
        a.reference_cost_nanos,
        a.input_uncached + a.input_cache_read + a.output,
    ];
    println!(
        "\nraw scan of every row (distinct request ids, rows, cost, reference, tokens): {:.0} ms",
        scan.as_secs_f64() * 1e3
    );
    println!("raw:        {raw:?}\naggregates: {from_agg:?}");
    if raw != from_agg {
        return Err("the aggregates differ from the raw rows".into());
    }
    println!("equal: requests (first attempts) = distinct request ids, and every sum to the nano-dollar");
    Ok(())
}
