//! `bourse demo`: the exchange at work with no API key and no network.
//!
//! It starts simulated providers ([`upstream_sim`]) on 127.0.0.1, one per vendor: US
//! (OpenAI, Anthropic, Gemini), Chinese (DeepSeek, Zhipu, Moonshot, DashScope), European
//! (Mistral) and open-weight hosts (DeepInfra, Together, Groq, Fireworks). Each is configured
//! as that vendor's preset with its base URL pointed at its simulator, so the catalog prices
//! its models and the router sees their real quality, maker and hosting; every provider id
//! ends in `-sim`, and every block of output says "simulated". A config built in memory
//! ([`config_toml`]: routes with quality floors, a policy that denies CN hosting, a generated
//! admin key, a ledger in a fresh temp dir) starts the gateway as `bourse serve` does
//! ([`server::start`]). A fixed, seeded workload ([`workload`]) goes through it over HTTP, the
//! report is read back from the ledger (the queries behind `bourse report`), and the gateway
//! then serves until Ctrl-C, dashboard included (it is on whenever an admin key is set).
//!
//! `--config FILE` layers a file over the built config ([`merge`]): any table but
//! `[providers]`, which would send requests off the machine.

pub mod workload;

use crate::cli;
use crate::config::{Config, DEFAULT_LISTEN};
use crate::ledger::{GroupBy, ReportQuery, ReportRow};
use crate::server::{self, ServeOptions};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use upstream_sim::{Failure, Sim, SimConfig, UsageStyle};

/// What `bourse demo` was asked for on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// A TOML file layered over the demo's config (any table but `[providers]`).
    pub config: Option<PathBuf>,
    /// The ledger: a path (SQLite) or a `sqlite:` / `postgres://` URL; default a temp dir.
    pub ledger: Option<String>,
    /// Where the gateway listens; default 127.0.0.1:4545, or a free port if that is taken.
    pub listen: Option<SocketAddr>,
    /// Requests in the workload.
    pub requests: usize,
    /// Keep serving after the report, until Ctrl-C.
    pub serve: bool,
}

/// The environment variable the demo's config names for the generated admin key; it is
/// resolved from memory, never from (or into) the process environment.
const ADMIN_KEY_VAR: &str = "BOURSE_DEMO_ADMIN_KEY";
/// The same for the simulated providers' key (the presets require one; the simulators
/// ignore it).
const SIM_KEY_VAR: &str = "BOURSE_DEMO_SIM_KEY";
/// Requests in flight at once: enough to keep every simulator busy, few enough that a
/// 2-core machine runs the default workload in seconds.
const CONCURRENCY: usize = 16;
/// How long the demo waits for the ledger's writer to commit the workload's last rows.
const LEDGER_WAIT: Duration = Duration::from_secs(10);

/// One simulated provider: a real vendor's preset, and how its simulator behaves.
/// Latencies are a few hundred milliseconds at most, so the default workload takes seconds.
struct SimSpec {
    id: &'static str,
    /// The preset (`kind`), whose catalog entries price the provider's models.
    kind: &'static str,
    /// Appended to the simulator's root for the preset's base URL.
    base_path: &'static str,
    /// What kind of vendor it stands for, for the banner.
    what: &'static str,
    ttft_ms: u64,
    chunk_delay_ms: u64,
    output_tokens: u32,
    usage_style: UsageStyle,
    /// The first answers are 429s, as a busy vendor gives: routed requests fall back.
    rate_limited_first: Option<u32>,
}

const fn sim(id: &'static str, kind: &'static str, what: &'static str, ttft_ms: u64, output_tokens: u32) -> SimSpec {
    SimSpec {
        id,
        kind,
        base_path: "/v1",
        what,
        ttft_ms,
        chunk_delay_ms: 1,
        output_tokens,
        usage_style: UsageStyle::OpenAi,
        rate_limited_first: None,
    }
}

const SIMS: &[SimSpec] = &[
    sim("openai-sim", "openai", "US", 220, 260),
    SimSpec { base_path: "", ..sim("anthropic-sim", "anthropic", "US, Messages API", 260, 300) },
    SimSpec { base_path: "/v1beta", ..sim("gemini-sim", "gemini", "US, Gemini API", 180, 280) },
    SimSpec {
        usage_style: UsageStyle::DeepSeek,
        rate_limited_first: Some(2),
        ..sim("deepseek-sim", "deepseek", "CN", 300, 240)
    },
    sim("zhipu-sim", "zhipu", "CN", 260, 240),
    sim("moonshot-sim", "moonshot", "CN maker, SG hosting", 240, 260),
    sim("dashscope-sim", "dashscope", "CN maker, SG hosting", 200, 220),
    sim("mistral-sim", "mistral", "EU", 200, 220),
    sim("deepinfra-sim", "deepinfra", "US host, open weights", 160, 240),
    sim("together-sim", "together", "US host, open weights", 170, 240),
    SimSpec { chunk_delay_ms: 0, ..sim("groq-sim", "groq", "US host, open weights", 60, 240) },
    sim("fireworks-sim", "fireworks", "US host, open weights", 150, 240),
];

/// A simulator running for one [`SimSpec`].
struct Simulated {
    spec: &'static SimSpec,
    sim: Sim,
}

impl Simulated {
    fn base_url(&self) -> String {
        format!("http://{}{}", self.sim.addr(), self.spec.base_path)
    }
}

async fn start_sims() -> Result<Vec<Simulated>, String> {
    let mut out = Vec::with_capacity(SIMS.len());
    for spec in SIMS {
        let failure = match spec.rate_limited_first {
            Some(_) => Failure::Status {
                status: 429,
                retry_after: Some(1),
                error_type: Some("rate_limit_error".into()),
                code: None,
                message: Some("simulated: rate limited".into()),
            },
            None => Failure::None,
        };
        let config = SimConfig {
            ttft_ms: spec.ttft_ms,
            chunk_delay_ms: spec.chunk_delay_ms,
            output_tokens: spec.output_tokens,
            usage_style: spec.usage_style,
            failure,
            fail_first_n: spec.rate_limited_first,
            ..SimConfig::default()
        };
        let sim = Sim::start(config).await.map_err(|e| format!("cannot start the simulated {}: {e}", spec.id))?;
        out.push(Simulated { spec, sim });
    }
    Ok(out)
}

/// The demo's config as TOML: the simulated providers, routes with quality floors and a
/// "no CN hosting" policy, the admin key (by reference) and the ledger.
fn config_toml(sims: &[Simulated], ledger_url: &str) -> String {
    let mut t = format!(
        "[server]\nlisten = \"{DEFAULT_LISTEN}\"\nadmin_keys = [\"env:{ADMIN_KEY_VAR}\"]\n\n\
         [storage]\nurl = \"{ledger_url}\"\n\n\
         # Fallbacks and circuits on a demo's time scale: a provider that failed is tried\n\
         # again after two seconds.\n\
         [router]\ncooldown = \"2s\"\n\n\
         [routes.auto]\nmin_quality = \"strong\"\n\n\
         [routes.strong-not-cn]\nmin_quality = \"strong\"\npolicy = \"no_cn_hosting\"\n\n\
         [routes.frontier]\nmin_quality = \"frontier\"\n\n\
         [routes.cheap]\nmin_quality = \"adequate\"\n\n\
         [policies.no_cn_hosting]\ndeny_hosting = [\"CN\"]\n"
    );
    for s in sims {
        t.push_str(&format!(
            "\n[providers.{}]\nkind = \"{}\"\nbase_url = \"{}\"\napi_key = \"env:{SIM_KEY_VAR}\"\n",
            s.spec.id,
            s.spec.kind,
            s.base_url()
        ));
    }
    t
}

/// Lays `over` on `base`: tables merge key by key, any other value replaces the base's.
/// `[providers]` is refused: the demo's providers are the simulated ones, and a real one
/// would take requests off the machine.
pub fn merge(base: &mut toml::Table, over: toml::Table) -> Result<(), String> {
    if over.contains_key("providers") {
        return Err("providers: the demo's providers are the simulated ones; run `bourse serve --config FILE` \
                    for real providers"
            .into());
    }
    merge_tables(base, over);
    Ok(())
}

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The built config, with `file` layered over it, validated as any config is.
fn build_config(toml_text: &str, file: Option<&Path>, admin_key: &str) -> Result<Config, String> {
    let mut table: toml::Table = toml_text.parse().map_err(|e| format!("the demo's own config: {e}"))?;
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let over: toml::Table = text.parse().map_err(|e| format!("{}: {e}", f.display()))?;
        merge(&mut table, over).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    let text = toml::to_string(&table).map_err(|e| format!("the demo's config: {e}"))?;
    let env = |name: &str| match name {
        ADMIN_KEY_VAR => Some(admin_key.to_string()),
        SIM_KEY_VAR => Some("sk-simulated".to_string()),
        _ => std::env::var(name).ok(),
    };
    let cfg = Config::from_toml(&text, &env).map_err(|e| match file {
        Some(f) => format!("config error (the demo's config with {} over it): {e}", f.display()),
        None => format!("config error: {e}"),
    })?;
    if cfg.storage.url.is_none() {
        return Err("the demo reports from its ledger: [storage] ledger = false cannot be used here".into());
    }
    Ok(cfg)
}

/// The demo's requests stay on 127.0.0.1: with a proxy set in the environment (`HTTP_PROXY`
/// and the like), loopback is added to `NO_PROXY`, so neither the gateway nor the demo's
/// clients send a simulated request to the proxy. Call it before any thread starts: the
/// process environment is not synchronised.
pub fn keep_off_proxies() {
    const PROXIES: [&str; 6] = ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
    if !PROXIES.iter().any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty())) {
        return;
    }
    for var in ["NO_PROXY", "no_proxy"] {
        let list = match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => format!("{v},127.0.0.1,localhost"),
            _ => "127.0.0.1,localhost".to_string(),
        };
        std::env::set_var(var, list);
    }
}

/// A new directory's path for the ledger, kept after the demo so the ledger can be read again.
fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("bourse-demo-{}-{}", crate::timespec::now_ms(), std::process::id()))
}

/// The admin key for this run: 32 base62 characters from the operating system's generator.
fn admin_key() -> Result<String, String> {
    let secret = crate::tenancy::new_secret().map_err(|e| e.to_string())?;
    Ok(format!("bourse-demo-admin-{}", &secret[crate::tenancy::SECRET_PREFIX.len()..]))
}

/// The address to listen on: the one asked for, else the config's; the default port, when
/// it is taken (a gateway already running, say), gives way to a free one.
fn listen_addr(asked: Option<SocketAddr>, cfg: &Config) -> (SocketAddr, Option<String>) {
    if let Some(a) = asked {
        return (a, None);
    }
    let configured = cfg.server.listen;
    if configured.to_string() == DEFAULT_LISTEN && std::net::TcpListener::bind(configured).is_err() {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        return (any, Some(format!("{configured} is in use: the demo listens on a free port instead")));
    }
    (configured, None)
}

/// Runs the demo: simulators, gateway, workload, report, then (with `serve`) the gateway
/// until Ctrl-C. A request of the workload that failed makes it an error, after the report
/// and without serving: every simulated request should be answered.
pub async fn run(opts: Options) -> Result<(), String> {
    if opts.requests == 0 {
        return Err("--requests must be at least 1".into());
    }
    let since_ms = crate::timespec::now_ms();
    let sims = start_sims().await?;
    let admin_key = admin_key()?;
    // A fresh temp dir unless a ledger is given; created only if the config keeps it.
    let (url, default_ledger) = match &opts.ledger {
        Some(given) => (crate::config::storage_url(given), None),
        None => {
            let path = temp_dir().join("ledger.db");
            (format!("sqlite:{}", path.display()), Some(path))
        }
    };
    let cfg = build_config(&config_toml(&sims, &url), opts.config.as_deref(), &admin_key)?;
    let default_ledger = default_ledger.filter(|_| cfg.storage.url.as_deref() == Some(url.as_str()));
    if let Some(dir) = default_ledger.as_deref().and_then(Path::parent) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let (listen, note) = listen_addr(opts.listen, &cfg);
    let ledger_shown = cfg.storage.url.as_deref().map(server::redact_url).unwrap_or_default();

    let providers: Vec<cli::demo::SimLine> = sims
        .iter()
        .map(|s| cli::demo::SimLine { id: s.spec.id, kind: s.spec.kind, what: s.spec.what, url: s.base_url() })
        .collect();
    let routes: Vec<cli::demo::RouteLine> = cfg
        .routing
        .routes
        .values()
        .map(|r| cli::demo::RouteLine { name: r.name.clone(), min_quality: r.min_quality, policy: r.policy.clone() })
        .collect();
    print!("{}", cli::demo::banner(&providers, &routes, &cfg.catalog.version, &cfg.reference, &ledger_shown));
    if let Some(n) = note {
        println!("note: {n}");
    }

    let running = server::start(&cfg, ServeOptions { listen: Some(listen), insecure_no_auth: false }).await?;
    let calls = workload::plan(opts.requests, workload::SEED);
    let tally = Arc::new(workload::Tally::default());
    let progress = tokio::spawn(progress(tally.clone(), calls.len()));
    let started = Instant::now();
    let outcome = workload::run(running.addr, calls, CONCURRENCY, tally.clone()).await;
    progress.abort();
    let _ = progress.await;
    let terminal = std::io::stderr().is_terminal();
    eprint!("{}", cli::demo::progress_end(&tally.snapshot(), opts.requests, started.elapsed(), terminal));

    let mut result = report(&running, since_ms, &outcome).await;
    if result.is_ok() && outcome.failed > 0 {
        // Every simulated request should be answered: a failure means something is broken.
        result = Err(format!("{} of {} requests failed (see the report)", outcome.failed, opts.requests));
    }
    if result.is_ok() && opts.serve {
        // Installed before the banner says how to stop: Ctrl-C from then on stops gracefully.
        let signalled = server::shutdown_signal();
        print!(
            "{}",
            cli::demo::serving(
                running.addr,
                &admin_key,
                &ledger_shown,
                default_ledger.as_deref(),
                running.state.telemetry.metrics.is_some(),
            )
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        signalled.await;
    }
    running.stop().await;
    drop(sims);
    result
}

/// Redraws the progress bar on stderr about ten times a second, when stderr is a terminal.
async fn progress(tally: Arc<workload::Tally>, total: usize) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let started = Instant::now();
    loop {
        eprint!("\r{}", cli::demo::progress_line(&tally.snapshot(), total, started.elapsed(), 30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the ledger's writer to commit what the workload recorded, then prints the
/// report: the totals, the model mix and the providers, from the ledger's own queries.
async fn report(running: &server::Running, since_ms: i64, outcome: &workload::Outcome) -> Result<(), String> {
    let state = &running.state;
    let (Some(writer), Some(ledger)) = (&state.ledger, &state.reports) else {
        return Err("the ledger is off: the demo has nothing to report".into());
    };
    let deadline = Instant::now() + LEDGER_WAIT;
    while writer.stats().queued > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = writer.stats();
    let query = |by| ReportQuery { since_ms: Some(since_ms), until_ms: None, by, key: None };
    let read = |e: crate::ledger::LedgerError| format!("cannot read the ledger: {e}");
    let all = ledger.report(&query(GroupBy::None)).await.map_err(read)?;
    let by_model = ledger.report(&query(GroupBy::Model)).await.map_err(read)?;
    let by_provider = ledger.report(&query(GroupBy::Provider)).await.map_err(read)?;
    let total = all.into_iter().next().unwrap_or_else(|| ReportRow { group: "(all)".into(), ..ReportRow::default() });
    let reference = state.meter.reference().map_or("", |m| m.id.as_str());
    let facts = cli::demo::Facts {
        sent: outcome.sent,
        failed: outcome.failed,
        failures: &outcome.failures,
        client_cost_nanos: outcome.cost_nanos,
        unpriced: outcome.unpriced,
        unwritten: stats.queued,
        dropped: stats.dropped,
    };
    print!("{}", cli::demo::report(&total, &by_model, &by_provider, reference, &facts));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn a_file_merges_over_the_built_config_table_by_table() {
        let mut base = table("[routes.auto]\nmin_quality = \"strong\"\n[routes.cheap]\nmin_quality = \"adequate\"\n");
        merge(&mut base, table("[routes.auto]\nmin_quality = \"frontier\"\npolicy = \"p\"\n[policies.p]\n")).unwrap();
        assert_eq!(base["routes"]["auto"]["min_quality"].as_str(), Some("frontier"));
        assert_eq!(base["routes"]["auto"]["policy"].as_str(), Some("p"));
        assert_eq!(base["routes"]["cheap"]["min_quality"].as_str(), Some("adequate"));
        assert!(base["policies"]["p"].is_table());
    }

    #[test]
    fn a_file_cannot_add_providers() {
        let mut base = table("");
        let e = merge(&mut base, table("[providers.openai]\nkind = \"openai\"\n")).unwrap_err();
        assert!(e.starts_with("providers:") && e.contains("bourse serve"), "{e}");
    }

    #[tokio::test]
    async fn the_built_config_is_valid_and_every_provider_is_simulated_on_loopback() {
        let sims = start_sims().await.unwrap();
        let cfg =
            build_config(&config_toml(&sims, "sqlite:/nonexistent/ledger.db"), None, "bourse-demo-admin-x").unwrap();
        assert_eq!(cfg.providers.len(), SIMS.len());
        for p in &cfg.providers {
            assert!(p.id.ends_with("-sim"), "{}", p.id);
            assert!(p.base_url.starts_with("http://127.0.0.1:"), "{}: {}", p.id, p.base_url);
        }
        let kind = |id: &str| cfg.providers.iter().find(|p| p.id == id).map(|p| p.preset.name);
        assert_eq!(kind("deepseek-sim"), Some("deepseek"));
        assert_eq!(kind("anthropic-sim"), Some("anthropic"));
        assert_eq!(cfg.server.admin_keys.len(), 1);
        assert_eq!(cfg.server.admin_keys[0].expose(), "bourse-demo-admin-x");
        assert!(cfg.server.api_keys.is_empty());
        assert_eq!(cfg.routing.routes["strong-not-cn"].policy, "no_cn_hosting");
        assert_eq!(cfg.routing.policies["no_cn_hosting"].deny_hosting, ["CN"]);
        assert_eq!(cfg.routing.routes["frontier"].min_quality, 1420);
        assert_eq!(cfg.routing.routes["cheap"].min_quality, 1300);
        assert_eq!(cfg.storage.url.as_deref(), Some("sqlite:/nonexistent/ledger.db"));
    }

    #[test]
    fn admin_keys_are_random() {
        let (a, b) = (admin_key().unwrap(), admin_key().unwrap());
        assert!(a.starts_with("bourse-demo-admin-") && a.len() == "bourse-demo-admin-".len() + 32, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn a_file_that_turns_the_ledger_off_is_refused() {
        let dir = std::env::temp_dir().join(format!("bourse-demo-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("over.toml");
        std::fs::write(&f, "[storage]\nledger = false\n").unwrap();
        let e = build_config(&config_toml(&[], "sqlite:x.db"), Some(&f), "k").unwrap_err();
        assert!(e.contains("ledger = false"), "{e}");
        std::fs::write(&f, "[routes.auto]\nmin_quality = \"superb\"\n").unwrap();
        let e = build_config(&config_toml(&[], "sqlite:x.db"), Some(&f), "k").unwrap_err();
        assert!(e.contains("routes.auto.min_quality"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
