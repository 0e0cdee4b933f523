//! The `bourse` command line. Parsing only; the work lives in the library.

use bourse::catalog::{self, Kind};
use bourse::cli::catalog::{Filter, SortKey};
use bourse::cli::{self, Format};
use bourse::config::{Config, LogFormat};
use bourse::ledger::{GroupBy, Ledger, ReportQuery};
use bourse::server::{self, ServeOptions};
use bourse::timespec;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// mimalloc, through bourse::heap (why, and why not the `mimalloc` crate's wrapper: there).
#[global_allocator]
static GLOBAL: bourse::heap::MiMalloc = bourse::heap::MiMalloc;

/// Bourse: an inference exchange. One OpenAI-compatible endpoint in front of every LLM provider.
#[derive(Parser)]
#[command(name = "bourse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// Config file (TOML). Default: $BOURSE_CONFIG, else ./bourse.toml, else providers
    /// enabled from their key variables (OPENAI_API_KEY, DEEPSEEK_API_KEY, ...).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// [`ConfigArg`] for commands with subcommands: accepted after the subcommand too
/// (`bourse keys list --config x.toml`).
#[derive(Args, Clone)]
struct GlobalConfigArg {
    /// Config file (TOML); as for `serve`: its storage.url is the store changed.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Address to listen on (overrides server.listen; default 127.0.0.1:4545).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Allow listening on a non-loopback address without gateway keys.
        #[arg(long)]
        insecure_no_auth: bool,
        /// Log lines as text or JSON (overrides telemetry.log_format; default text).
        #[arg(long, value_enum)]
        log_format: Option<LogFmt>,
        /// One info line per request (overrides telemetry.access_log).
        #[arg(long)]
        access_log: bool,
    },
    /// Validate a config file and print the providers it defines.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the price catalog (prices per 1M tokens, quality, origin, hosting), or import one.
    #[command(args_conflicts_with_subcommands = true)]
    Catalog {
        #[command(subcommand)]
        action: Option<CatalogAction>,
        #[command(flatten)]
        list: CatalogList,
    },
    /// Rank the feasible models for a chat request, with min/expected/max cost and every
    /// excluded model's reason — without calling any upstream.
    Quote {
        #[command(flatten)]
        config: ConfigArg,
        /// Route to plan on (default: the request's model if it names a route, else auto).
        #[arg(long)]
        route: Option<String>,
        /// Set the request's max_tokens.
        #[arg(long)]
        max_tokens: Option<u64>,
        #[arg(long, value_enum, default_value_t = QuoteFmt::Table)]
        format: QuoteFmt,
        /// A chat completion request (JSON), or - for standard input.
        input: String,
    },
    /// Spend and savings from the ledger.
    Report {
        #[command(flatten)]
        config: ConfigArg,
        /// Read this ledger instead of the config's storage.url: a SQLite file's path, or a
        /// sqlite: or postgres:// URL (e.g. the one `bourse demo` prints).
        #[arg(long, conflicts_with = "config")]
        ledger: Option<String>,
        /// Start of the period: 7d, 24h, 2w, a date (2026-11-01) or unix ms.
        #[arg(long, default_value = "7d")]
        since: String,
        /// End of the period (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Group rows by.
        #[arg(long, value_enum, default_value_t = By::Model)]
        by: By,
        #[arg(long, value_enum, default_value_t = Fmt::Table)]
        format: Fmt,
    },
    /// Re-plan and re-price the ledger's past requests under another route, policy or
    /// catalog, and print the difference: spend, savings, model mix, and the requests that
    /// would have been refused and why (see README, "Replay").
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// Read this ledger instead of the config's storage.url (a SQLite file's path, or a
        /// sqlite: or postgres:// URL); routes, policies and prices still come from the config.
        #[arg(long)]
        ledger: Option<String>,
        /// Start of the period: 30d, 24h, 2w, a date (2026-11-01) or unix ms.
        #[arg(long, default_value = "30d")]
        since: String,
        /// End of the period (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Replay every request as if it had asked for this route.
        #[arg(long)]
        route: Option<String>,
        /// Keep each request's route but plan it under this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Price with this catalog file (the config's [models] tables still apply over it).
        #[arg(long)]
        catalog: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = QuoteFmt::Table)]
        format: QuoteFmt,
    },
    /// Tenants (teams, customers): create, list, change, delete. Changes go to the store
    /// (storage.url) and are audited.
    Tenants {
        #[command(flatten)]
        config: GlobalConfigArg,
        #[command(subcommand)]
        action: TenantsAction,
    },
    /// Virtual keys: create, list, revoke, rotate. A new secret is printed once, alone on
    /// the last line.
    Keys {
        #[command(flatten)]
        config: GlobalConfigArg,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Quality evidence per route (task): import scores from a CSV file, list what is stored,
    /// or run a labelled dataset against candidate models and store their scores.
    /// The router ranks a route's models on it (see README, "Routing on evidence").
    Evals {
        #[command(flatten)]
        config: GlobalConfigArg,
        #[command(subcommand)]
        action: EvalsAction,
    },
    /// See it work with no API key and no network: simulated providers, a workload through
    /// `auto` and other routes, the report, then the gateway and its dashboard until Ctrl-C.
    #[command(long_about = DEMO_ABOUT)]
    Demo {
        /// A config file layered over the demo's own, table by table (routes, policies,
        /// [models] prices, [catalog], [storage], [server]; not [providers]).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The ledger: a SQLite file's path, or a sqlite: or postgres:// URL (default: a new
        /// temp directory, kept after the demo).
        #[arg(long)]
        ledger: Option<String>,
        /// Address to listen on (default 127.0.0.1:4545, or a free port if that is taken).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Requests in the workload.
        #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        requests: u32,
        /// Exit after the report instead of serving until Ctrl-C.
        #[arg(long)]
        no_serve: bool,
    },
}

const DEMO_ABOUT: &str = "\
See Bourse work with no API key and no network.

Starts simulated providers (upstream-sim) on 127.0.0.1, one per vendor: US (openai-sim,
anthropic-sim, gemini-sim), Chinese (deepseek-sim, zhipu-sim, moonshot-sim, dashscope-sim),
European (mistral-sim) and open-weight hosts (deepinfra-sim, together-sim, groq-sim,
fireworks-sim). Each is configured as the real vendor's preset, so the shipped catalog prices
its models and the router knows their quality, maker and hosting. The config is built in
memory: routes auto (strong floor), strong-not-cn (strong, no CN hosting), frontier and cheap
(adequate floor); a generated admin key; a ledger in a new temp directory.

Then it sends a fixed, seeded mix of requests (short tasks and long documents, streamed and
not, OpenAI and Anthropic clients, mostly through auto; deepseek-sim answers its first two
with 429s, so two fall back) with a progress bar on stderr, and prints the report from the
ledger: spend, savings against the reference model, model and provider mix, and whether the
costs stated to clients add up to the ledger's. The gateway then serves until Ctrl-C, with
its dashboard at /dashboard (log in with the admin key printed) and the same /v1 endpoints
as `bourse serve`; --no-serve exits after the report instead. Every output block says
SIMULATED.";

// Limits shared by tenants and keys; `none` removes one (for `set`). A plain comment: a doc
// comment here would become the help text of every subcommand that flattens these.
#[derive(Args, Clone, Default)]
struct LimitArgs {
    /// Daily budget in USD, e.g. 5 or 0.45.
    #[arg(long, allow_hyphen_values = true)]
    budget_day: Option<String>,
    /// Monthly budget in USD.
    #[arg(long, allow_hyphen_values = true)]
    budget_month: Option<String>,
    /// Lifetime budget in USD.
    #[arg(long, allow_hyphen_values = true)]
    budget_total: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<String>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<String>,
    /// Requests in flight at once.
    #[arg(long)]
    concurrency: Option<String>,
}

impl LimitArgs {
    fn flags(&self) -> cli::admin::LimitFlags {
        cli::admin::LimitFlags {
            budget_day: self.budget_day.clone(),
            budget_month: self.budget_month.clone(),
            budget_total: self.budget_total.clone(),
            rpm: self.rpm.clone(),
            tpm: self.tpm.clone(),
            concurrency: self.concurrency.clone(),
        }
    }
}

#[derive(Args, Clone, Default)]
struct TenantArgs {
    #[command(flatten)]
    limits: LimitArgs,
    /// A [policies.X] name every request of the tenant obeys (`none` to clear).
    #[arg(long)]
    policy: Option<String>,
    /// Downgrade when the tightest budget has less than this left, e.g. 20% (`none` to clear).
    #[arg(long)]
    downgrade_below: Option<String>,
    /// The quality floor when downgraded: frontier, strong, adequate, basic or a number.
    #[arg(long)]
    downgrade_quality: Option<String>,
}

#[derive(Subcommand)]
enum EvalsAction {
    /// Store scores from a CSV file with the columns route,model,score,n,source (a row
    /// replaces the stored one with the same route, model and source; all rows or none).
    Import {
        /// The CSV file.
        file: PathBuf,
    },
    /// Show the stored evidence: per route and model, the pooled score, its 95% lower bound,
    /// the samples and each source.
    List {
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
    },
    /// Send a labelled dataset (JSONL: id, messages, expected text|regex|schema) to each
    /// model, print accuracy, cost and latency per model with the price–quality frontier, and
    /// store the scores as the route's evidence (source evals:<file stem>). Shows a cost
    /// estimate and asks before sending anything.
    Run {
        /// The route the evidence is for.
        #[arg(long)]
        route: String,
        /// The dataset: one JSON object per line (see README, "Routing on evidence").
        #[arg(long)]
        dataset: PathBuf,
        /// Models to evaluate, as provider/model, comma-separated (default: the route's
        /// feasible models for every item).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Requests in flight at once, over all models.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
        concurrency: u32,
        /// Skip the confirmation (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
        /// Print the results without storing them as evidence.
        #[arg(long)]
        no_store: bool,
        #[arg(long, value_enum, default_value_t = QuoteFmt::Table)]
        format: QuoteFmt,
    },
}

#[derive(Subcommand)]
enum TenantsAction {
    /// Create a tenant with its limits, policy and downgrade.
    Create {
        name: String,
        #[command(flatten)]
        args: TenantArgs,
    },
    /// List tenants and their limits.
    List {
        #[arg(long, value_enum, default_value_t = QuoteFmt::Table)]
        format: QuoteFmt,
    },
    /// Change a tenant's limits, policy or downgrade (`none` removes a setting).
    Set {
        name: String,
        #[command(flatten)]
        args: TenantArgs,
    },
    /// Refused while the tenant has keys that are not revoked.
    Delete { name: String },
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; its secret is printed once, alone on the last line.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Routes the key may use (globs allowed), comma-separated.
        #[arg(long, value_delimiter = ',')]
        routes: Vec<String>,
        /// Models the key may name (provider/model or bare globs), comma-separated.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[arg(long)]
        policy: Option<String>,
        /// The route a request naming no model goes to.
        #[arg(long)]
        default_route: Option<String>,
        /// Validity from now: 30d, 12h, 90m.
        #[arg(long)]
        expires: Option<String>,
        #[arg(long, value_enum, default_value_t = QuoteFmt::Table)]
        format: QuoteFmt,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t = QuoteFmt::Table)]
        format: QuoteFmt,
    },
    /// Revoke a key: every replica refuses it within a second.
    Revoke { id: String },
    /// A new secret for the same key; the old one stops working.
    Rotate {
        id: String,
        #[arg(long, value_enum, default_value_t = QuoteFmt::Table)]
        format: QuoteFmt,
    },
}

#[derive(Subcommand)]
enum CatalogAction {
    /// Convert LiteLLM's model_prices_and_context_window.json into Bourse's catalog format;
    /// the rejected entries and why go to stderr.
    ImportLitellm {
        file: PathBuf,
        /// Write the catalog here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Price date to record (the file's snapshot date).
        #[arg(long, default_value = "unknown")]
        date: String,
    },
}

#[derive(Args)]
struct CatalogList {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long, value_enum, default_value_t = Sort::Blended)]
    sort: Sort,
    /// Sort descending.
    #[arg(long)]
    desc: bool,
    #[arg(long)]
    provider: Option<String>,
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// Model maker's country, e.g. CN.
    #[arg(long)]
    origin: Option<String>,
    /// Where the provider processes requests, e.g. US.
    #[arg(long)]
    hosting: Option<String>,
    #[arg(long)]
    open_weights: bool,
    #[arg(long)]
    min_quality: Option<u32>,
    /// Maximum blended (3:1) USD per 1M tokens.
    #[arg(long)]
    max_price: Option<f64>,
    /// Substring of the id.
    #[arg(long)]
    search: Option<String>,
    #[arg(long, value_enum, default_value_t = Fmt::Table)]
    format: Fmt,
}

#[derive(Clone, Copy, ValueEnum)]
enum Fmt {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFmt {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum QuoteFmt {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Sort {
    Blended,
    Input,
    Output,
    Quality,
    Name,
    Ratio,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Chat,
    Embedding,
}

#[derive(Clone, Copy, ValueEnum)]
enum By {
    Model,
    Provider,
    Key,
    Tenant,
    Day,
    Route,
    Error,
    None,
}

fn load(c: &ConfigArg) -> Result<Config, String> {
    Config::load(c.config.as_deref()).map_err(|e| format!("config error: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("cannot start runtime: {e}"))
}

fn catalog_list(a: &CatalogList) -> Result<(), String> {
    let cfg = load(&a.config)?;
    let filter = Filter {
        provider: a.provider.clone(),
        kind: a.kind.map(|k| match k {
            KindArg::Chat => Kind::Chat,
            KindArg::Embedding => Kind::Embedding,
        }),
        origin: a.origin.clone(),
        hosting: a.hosting.clone(),
        open_weights_only: a.open_weights,
        min_quality: a.min_quality,
        max_blended: a.max_price,
        search: a.search.clone(),
    };
    let sort = match a.sort {
        Sort::Blended => SortKey::Blended,
        Sort::Input => SortKey::Input,
        Sort::Output => SortKey::Output,
        Sort::Quality => SortKey::Quality,
        Sort::Name => SortKey::Name,
        Sort::Ratio => SortKey::Ratio,
    };
    let format = match a.format {
        Fmt::Table => Format::Table,
        Fmt::Json => Format::Json,
        Fmt::Csv => Format::Csv,
    };
    print!("{}", cli::catalog::render(&cfg.catalog, &cfg.reference, &filter, sort, a.desc, format)?);
    Ok(())
}

fn import_litellm(file: &PathBuf, out: Option<&PathBuf>, date: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let imp = catalog::litellm::import(&text, date)?;
    for (key, why) in &imp.rejected {
        eprintln!("rejected {key}: {why}");
    }
    eprintln!("imported {} entries, rejected {}", imp.accepted, imp.rejected.len());
    match out {
        Some(p) => std::fs::write(p, &imp.toml).map_err(|e| format!("cannot write {}: {e}", p.display())),
        None => {
            print!("{}", imp.toml);
            Ok(())
        }
    }
}

fn run_quote(
    c: &ConfigArg,
    route: Option<&str>,
    max_tokens: Option<u64>,
    format: QuoteFmt,
    input: &str,
) -> Result<(), String> {
    use std::io::Read as _;
    let cfg = load(c)?;
    let mut text = String::new();
    if input == "-" {
        std::io::stdin().read_to_string(&mut text).map_err(|e| format!("cannot read standard input: {e}"))?;
    } else {
        text = std::fs::read_to_string(input).map_err(|e| format!("cannot read {input}: {e}"))?;
    }
    let mut body: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{input}: not JSON: {e}"))?;
    if let Some(obj) = body.as_object_mut() {
        obj.entry("model").or_insert_with(|| serde_json::Value::String("auto".into()));
        if let Some(m) = max_tokens {
            obj.insert("max_tokens".into(), m.into());
        }
    }
    let req = bourse::dialect::openai::parse_chat_request(&body.to_string().into()).map_err(|e| e.message)?;
    let state = bourse::state::AppState::from_config(&cfg)?;
    let router = &state.router;
    // The route's evidence, when the store exists (a quote never creates one).
    let stored = cfg.storage.url_explicit || Path::new(bourse::config::DEFAULT_LEDGER_FILE).exists();
    if let Some(url) = cfg.storage.url.as_deref().filter(|_| stored) {
        let rows = runtime()?.block_on(async {
            let ledger = Ledger::open(url).await.map_err(|e| format!("cannot open the store: {e}"))?;
            ledger.evidence().await.map_err(|e| format!("cannot read quality evidence: {e}"))
        })?;
        router.evidence.set_rows(rows);
    }
    let overrides = bourse::route::Overrides { route: route.map(str::to_string), ..Default::default() };
    let chosen = match router.route_for(&req.model, &overrides).map_err(|e| e.message)? {
        Some(r) => r,
        None => router.route("auto").ok_or("no route named auto")?,
    };
    let routed = router.plan(chosen, &overrides, &req, std::time::Instant::now()).map_err(|e| e.message)?;
    match format {
        QuoteFmt::Table => print!("{}", cli::quote::table(router, &routed)),
        QuoteFmt::Json => println!("{}", serde_json::to_string_pretty(&router.quote_json(&routed)).unwrap_or_default()),
    }
    Ok(())
}

fn run_report(
    c: &ConfigArg,
    ledger: Option<&str>,
    since: &str,
    until: Option<&str>,
    by: By,
    format: Fmt,
) -> Result<(), String> {
    let url = match ledger {
        Some(l) => bourse::config::storage_url(l),
        None => load(c)?.storage.url.ok_or("the ledger is off in this config ([storage] ledger = false)")?,
    };
    let now = timespec::now_ms();
    let q = ReportQuery {
        since_ms: Some(timespec::parse(since, now).map_err(|e| format!("--since: {e}"))?),
        until_ms: until.map(|u| timespec::parse(u, now)).transpose().map_err(|e| format!("--until: {e}"))?,
        by: match by {
            By::Model => GroupBy::Model,
            By::Provider => GroupBy::Provider,
            By::Key => GroupBy::Key,
            By::Tenant => GroupBy::Tenant,
            By::Day => GroupBy::Day,
            By::Route => GroupBy::Route,
            By::Error => GroupBy::Error,
            By::None => GroupBy::None,
        },
        key: None,
    };
    let (rows, budgets, checked) = runtime()?.block_on(async {
        let ledger = Ledger::open(&url).await.map_err(|e| format!("cannot open the ledger: {e}"))?;
        // A large ledger takes a moment to aggregate: show that it is working.
        let spinner = std::io::stderr().is_terminal().then(|| {
            tokio::spawn(async {
                let start = std::time::Instant::now();
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    eprint!("\rscanning the ledger… {:.1}s", start.elapsed().as_secs_f64());
                }
            })
        });
        let rows = ledger.report(&q).await.map_err(|e| format!("report failed: {e}"));
        // By tenant or key: each one's budgets, their use now and their runway.
        let budgets = match q.by {
            GroupBy::Tenant | GroupBy::Key => {
                Some(bourse::admin::budget_use(&ledger, q.by, now).await.map_err(|e| format!("report failed: {e}"))?)
            }
            _ => None,
        };
        // By route: the routes' cascades, from their checked attempts.
        let checked = match q.by {
            GroupBy::Route => {
                Some(ledger.checked(q.since_ms, q.until_ms).await.map_err(|e| format!("report failed: {e}"))?)
            }
            _ => None,
        };
        if let Some(s) = spinner {
            s.abort();
            eprint!("\r\x1b[2K");
        }
        Ok::<_, String>((rows?, budgets, checked))
    })?;
    let format = match format {
        Fmt::Table => Format::Table,
        Fmt::Json => Format::Json,
        Fmt::Csv => Format::Csv,
    };
    let table = cli::report::render(&rows, format);
    // A cascade's counterfactual prices each request at its final model, from the catalog.
    let cascades = match checked {
        Some(checked) => {
            let catalog = load(c)?.catalog;
            let price = |model: &str, usage: &bourse::canonical::Usage| {
                catalog.get(model).map(|m| bourse::meter::cost(usage, m).0)
            };
            bourse::ledger::cascades(&checked, price)
        }
        None => Vec::new(),
    };
    match (format, budgets) {
        (Format::Json, None) if !cascades.is_empty() => {
            let mut report: serde_json::Value = serde_json::from_str(&table).map_err(|e| e.to_string())?;
            let mut extra: serde_json::Value =
                serde_json::from_str(&cli::report::cascades(&cascades, format)).map_err(|e| e.to_string())?;
            report["cascades"] = extra["cascades"].take();
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        }
        (Format::Table, None) if !cascades.is_empty() => {
            print!("{table}{}", cli::report::cascades(&cascades, format))
        }
        (Format::Json, Some(b)) => {
            let mut report: serde_json::Value = serde_json::from_str(&table).map_err(|e| e.to_string())?;
            let mut extra: serde_json::Value =
                serde_json::from_str(&cli::report::budgets(&b, format)).map_err(|e| e.to_string())?;
            report["budgets"] = extra["budgets"].take();
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        }
        // CSV stays one table (the rows); the budgets are in the table and JSON forms.
        (Format::Table, Some(b)) => print!("{table}{}", cli::report::budgets(&b, format)),
        _ => print!("{table}"),
    }
    Ok(())
}

/// `bourse replay`'s options.
struct ReplayOpts<'a> {
    ledger: Option<&'a str>,
    since: &'a str,
    until: Option<&'a str>,
    route: Option<&'a str>,
    policy: Option<&'a str>,
    catalog: Option<&'a Path>,
    json: bool,
}

/// Everything is checked (the period, the route, the policy, the catalog) before the ledger
/// is read; the progress bar goes to stderr on a terminal only.
fn run_replay(c: &ConfigArg, o: &ReplayOpts<'_>) -> Result<(), String> {
    use bourse::replay;
    let cfg = load(c)?;
    let now = timespec::now_ms();
    let since = timespec::parse(o.since, now).map_err(|e| format!("--since: {e}"))?;
    let until = o.until.map(|u| timespec::parse(u, now)).transpose().map_err(|e| format!("--until: {e}"))?;
    let catalog =
        o.catalog.map(|f| replay::load_catalog(&cfg, f)).transpose().map_err(|e| format!("--catalog: {e}"))?;
    let scenario =
        replay::Scenario { route: o.route.map(str::to_string), policy: o.policy.map(str::to_string), catalog };
    // The route and policy are checked against the config before the store is opened.
    replay::Replayer::new(&cfg, &scenario, Vec::new())?;
    let url = match o.ledger {
        Some(l) => bourse::config::storage_url(l),
        None => cfg.storage.url.clone().ok_or("the ledger is off in this config ([storage] ledger = false)")?,
    };
    let terminal = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last = replay::Progress::default();
    let summary = runtime()?.block_on(async {
        let ledger = Ledger::open(&url).await.map_err(|e| format!("cannot open the ledger: {e}"))?;
        replay::run(&ledger, &cfg, &scenario, Some(since), until, |p| {
            last = *p;
            if terminal {
                eprint!("\r{}", cli::replay::progress_line(p, started.elapsed(), 30));
            }
        })
        .await
    })?;
    eprint!("{}", cli::replay::progress_end(&last, started.elapsed(), terminal));
    match o.json {
        true => println!("{}", cli::replay::json(&summary)),
        false => print!("{}", cli::replay::render(&summary)),
    }
    Ok(())
}

/// Runs one tenancy command against the configured store.
fn with_admin<F, Fut>(c: &GlobalConfigArg, f: F) -> Result<(), String>
where
    F: FnOnce(bourse::admin::Admin) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let cfg = load(&ConfigArg { config: c.config.clone() })?;
    let url = cfg
        .storage
        .url
        .clone()
        .ok_or("the store is off in this config ([storage] ledger = false): tenants and keys live in it")?;
    let out = runtime()?.block_on(async {
        let ledger = Ledger::open(&url).await.map_err(|e| format!("cannot open the store: {e}"))?;
        f(bourse::admin::Admin::new(ledger, cfg.routing.clone())).await
    })?;
    print!("{out}");
    Ok(())
}

fn tenant_patch(a: &TenantArgs) -> Result<bourse::admin::TenantPatch, String> {
    Ok(bourse::admin::TenantPatch {
        limits: a.limits.flags().patch()?,
        policy: a.policy.as_deref().map(|p| (p != "none").then(|| p.to_string())),
        downgrade: cli::admin::downgrade_flags(a.downgrade_below.as_deref(), a.downgrade_quality.as_deref())?,
        metadata: None,
    })
}

fn run_evals(c: &GlobalConfigArg, action: &EvalsAction) -> Result<(), String> {
    let cfg = load(&ConfigArg { config: c.config.clone() })?;
    // Borrowed by the closures below (an `async move` would otherwise move out of `cfg`).
    let cfg = &cfg;
    match action {
        EvalsAction::Import { file } => with_evidence(cfg, |ledger| async move {
            let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let routes = cfg.routing.routes.keys().cloned().collect();
            let rows = cli::evals::parse_import(&text, &routes, &cfg.catalog, timespec::now_ms())
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let n = rows.len();
            ledger.put_evidence(rows).await.map_err(|e| format!("cannot store the evidence: {e}"))?;
            let all = ledger.evidence().await.map_err(|e| format!("cannot read the evidence back: {e}"))?;
            Ok(format!("imported {n} rows from {}\n\n{}", file.display(), cli::evals::table(&all, None)))
        }),
        EvalsAction::List { route } => with_evidence(cfg, |ledger| async move {
            let all = ledger.evidence().await.map_err(|e| format!("cannot read the evidence: {e}"))?;
            Ok(cli::evals::table(&all, route.as_deref()))
        }),
        EvalsAction::Run { route, dataset, models, concurrency, yes, no_store, format } => {
            let opts = EvalsRun {
                route,
                dataset,
                models,
                concurrency: *concurrency as usize,
                yes: *yes,
                store: !no_store,
                json: matches!(format, QuoteFmt::Json),
            };
            run_evals_run(cfg, &opts)
        }
    }
}

/// Runs one evidence command against the configured store and prints what it returns.
fn with_evidence<F, Fut>(cfg: &Config, f: F) -> Result<(), String>
where
    F: FnOnce(Ledger) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let url = cfg
        .storage
        .url
        .clone()
        .ok_or("the store is off in this config ([storage] ledger = false): evidence lives in it")?;
    let out = runtime()?.block_on(async {
        let ledger = Ledger::open(&url).await.map_err(|e| format!("cannot open the store: {e}"))?;
        f(ledger).await
    })?;
    print!("{out}");
    Ok(())
}

/// `bourse evals run`'s options.
struct EvalsRun<'a> {
    route: &'a str,
    dataset: &'a Path,
    models: &'a [String],
    concurrency: usize,
    yes: bool,
    store: bool,
    json: bool,
}

/// Everything is checked (route, dataset, models, the store) and the estimate shown and
/// agreed to before the first request leaves.
fn run_evals_run(cfg: &Config, o: &EvalsRun<'_>) -> Result<(), String> {
    use bourse::evals;
    let expected_output = evals::route_expected_output(cfg, o.route)?;
    let text = std::fs::read_to_string(o.dataset).map_err(|e| format!("cannot read {}: {e}", o.dataset.display()))?;
    let items = evals::parse_dataset(&text).map_err(|e| format!("{}: {e}", o.dataset.display()))?;
    let url = match (o.store, &cfg.storage.url) {
        (true, None) => {
            return Err("the store is off in this config ([storage] ledger = false): pass --no-store to run without storing the evidence".into())
        }
        (true, Some(u)) => Some(u.clone()),
        (false, _) => None,
    };
    let state = bourse::state::AppState::from_config(cfg)?;
    let rt = runtime()?;
    let ledger = match &url {
        Some(u) => {
            let ledger = rt.block_on(Ledger::open(u)).map_err(|e| format!("cannot open the store: {e}"))?;
            // The route's evidence decides which models its min_score admits (the default models).
            let rows = rt.block_on(ledger.evidence()).map_err(|e| format!("cannot read quality evidence: {e}"))?;
            state.router.evidence.set_rows(rows);
            Some(ledger)
        }
        None => None,
    };
    let models = match o.models.is_empty() {
        true => evals::route_models(&state, o.route, &items)?,
        false => evals::resolve_models(&state, o.models)?,
    };
    let source = evals::source(o.dataset);
    let kinds = evals::kinds(&items);
    let dataset = o.dataset.display().to_string();
    let facts =
        cli::evals::RunFacts { route: o.route, dataset: &dataset, items: items.len(), kinds: &kinds, source: &source };
    let estimates = evals::estimate(&items, &models, expected_output);
    eprint!("{}", cli::evals::estimate_table(&facts, &estimates, o.concurrency));
    if !o.yes {
        confirm(items.len() * models.len())?;
    }
    let terminal = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last = evals::Progress::default();
    let calls = rt.block_on(evals::run(&state, &items, &models, o.concurrency, |p| {
        last = *p;
        if terminal {
            eprint!("\r{}", cli::evals::progress_line(p, started.elapsed(), 30));
        }
    }));
    eprint!("{}", cli::evals::progress_end(&last, started.elapsed(), terminal));
    let scores = evals::scores(&calls, &items, &models);
    let frontier = evals::frontier(&scores);
    if let Some(ledger) = &ledger {
        let rows = evals::evidence_rows(o.route, &source, &scores, timespec::now_ms());
        rt.block_on(ledger.put_evidence(rows)).map_err(|e| format!("cannot store the evidence: {e}"))?;
    }
    match o.json {
        true => println!(
            "{}",
            serde_json::to_string_pretty(&cli::evals::results_json(&facts, &scores, &frontier, ledger.is_some()))
                .unwrap_or_default()
        ),
        false => print!("{}", cli::evals::results_table(&facts, &scores, &frontier, ledger.is_some())),
    }
    Ok(())
}

/// Asks on the terminal before `requests` are sent; refuses without one (`--yes` skips this).
fn confirm(requests: usize) -> Result<(), String> {
    use std::io::Write as _;
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "not sending {requests} requests without confirmation: standard input is not a terminal (pass --yes after reading the estimate)"
        ));
    }
    eprint!("Proceed? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).map_err(|e| format!("cannot read the answer: {e}"))?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err("cancelled: nothing was sent".into()),
    }
}

fn run_tenants(c: &GlobalConfigArg, action: &TenantsAction) -> Result<(), String> {
    use cli::admin::{actor, error};
    with_admin(c, |admin| async move {
        match action {
            TenantsAction::Create { name, args } => {
                let p = tenant_patch(args)?;
                let input = bourse::admin::TenantInput {
                    name: name.clone(),
                    limits: p.limits.to_limits(),
                    policy: p.policy.flatten(),
                    downgrade: p.downgrade.flatten(),
                    metadata: Default::default(),
                };
                let t = admin.create_tenant(&actor(), input).await.map_err(|e| error(&e))?;
                Ok(format!("created tenant {}\n", t.name))
            }
            TenantsAction::List { format } => {
                let list = admin.list_tenants().await.map_err(|e| error(&e))?;
                Ok(cli::admin::tenants(&list, matches!(format, QuoteFmt::Json)))
            }
            TenantsAction::Set { name, args } => {
                let t = admin.set_tenant(&actor(), name, tenant_patch(args)?).await.map_err(|e| error(&e))?;
                Ok(format!("updated tenant {}\n", t.name))
            }
            TenantsAction::Delete { name } => {
                admin.delete_tenant(&actor(), name).await.map_err(|e| error(&e))?;
                Ok(format!("deleted tenant {name}\n"))
            }
        }
    })
}

fn run_keys(c: &GlobalConfigArg, action: &KeysAction) -> Result<(), String> {
    use cli::admin::{actor, error};
    with_admin(c, |admin| async move {
        let now = timespec::now_ms();
        match action {
            KeysAction::Create { tenant, name, limits, routes, models, policy, default_route, expires, format } => {
                let expires_ms = match expires {
                    Some(e) => Some(now + bourse::tenancy::parse_period_ms(e).map_err(|m| format!("--expires: {m}"))?),
                    None => None,
                };
                let input = bourse::admin::KeyInput {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    limits: limits.flags().patch()?.to_limits(),
                    routes: routes.clone(),
                    models: models.clone(),
                    policy: policy.clone(),
                    default_route: default_route.clone(),
                    cache: None,
                    metadata: Default::default(),
                    expires_ms,
                };
                let (key, secret) = admin.create_key(&actor(), input).await.map_err(|e| error(&e))?;
                Ok(cli::admin::new_secret("created", &key, &secret, now, matches!(format, QuoteFmt::Json)))
            }
            KeysAction::List { tenant, format } => {
                let list = admin.list_keys(tenant.as_deref()).await.map_err(|e| error(&e))?;
                Ok(cli::admin::keys(&list, now, matches!(format, QuoteFmt::Json)))
            }
            KeysAction::Revoke { id } => {
                let key = admin.revoke_key(&actor(), id).await.map_err(|e| error(&e))?;
                Ok(format!("revoked key {} (tenant {})\n", key.id, key.tenant))
            }
            KeysAction::Rotate { id, format } => {
                let (key, secret) = admin.rotate_key(&actor(), id).await.map_err(|e| error(&e))?;
                Ok(cli::admin::new_secret("rotated", &key, &secret, now, matches!(format, QuoteFmt::Json)))
            }
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` logs in the format its config asks for: it starts logging once that is read.
    let _logs = (!matches!(cli.command, Command::Serve { .. })).then(|| bourse::telemetry::init(LogFormat::Text));
    let result = match &cli.command {
        Command::Serve { config, listen, insecure_no_auth, log_format, access_log } => {
            load(config).and_then(|mut cfg| {
                if let Some(f) = log_format {
                    cfg.telemetry.log_format = match f {
                        LogFmt::Text => LogFormat::Text,
                        LogFmt::Json => LogFormat::Json,
                    };
                }
                cfg.telemetry.access_log |= *access_log;
                let _logs = bourse::telemetry::init(cfg.telemetry.log_format);
                let opts = ServeOptions { listen: *listen, insecure_no_auth: *insecure_no_auth };
                runtime()?.block_on(server::run(cfg, opts))
            })
        }
        Command::Check { config } => load(config).map(|cfg| {
            println!("config ok ({:?}); catalog {}; reference {}", cfg.source, cfg.catalog.version, cfg.reference);
            for p in &cfg.providers {
                println!("  {:<16} {:<18} {}", p.id, p.preset.name, p.base_url);
            }
        }),
        Command::Catalog { action: Some(CatalogAction::ImportLitellm { file, out, date }), .. } => {
            import_litellm(file, out.as_ref(), date)
        }
        Command::Catalog { action: None, list } => catalog_list(list),
        Command::Quote { config, route, max_tokens, format, input } => {
            run_quote(config, route.as_deref(), *max_tokens, *format, input)
        }
        Command::Report { config, ledger, since, until, by, format } => {
            run_report(config, ledger.as_deref(), since, until.as_deref(), *by, *format)
        }
        Command::Replay { config, ledger, since, until, route, policy, catalog, format } => {
            let opts = ReplayOpts {
                ledger: ledger.as_deref(),
                since,
                until: until.as_deref(),
                route: route.as_deref(),
                policy: policy.as_deref(),
                catalog: catalog.as_deref(),
                json: matches!(format, QuoteFmt::Json),
            };
            run_replay(config, &opts)
        }
        Command::Tenants { config, action } => run_tenants(config, action),
        Command::Evals { config, action } => run_evals(config, action),
        Command::Keys { config, action } => run_keys(config, action),
        Command::Demo { config, ledger, listen, requests, no_serve } => {
            // Before the runtime's threads exist: it may set NO_PROXY.
            bourse::demo::keep_off_proxies();
            let opts = bourse::demo::Options {
                config: config.clone(),
                ledger: ledger.clone(),
                listen: *listen,
                requests: *requests as usize,
                serve: !no_serve,
            };
            runtime().and_then(|rt| rt.block_on(bourse::demo::run(opts)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bourse: {e}");
            ExitCode::FAILURE
        }
    }
}
