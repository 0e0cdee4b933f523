//! `bourse replay` (`replay.rs`) on both stores: a seeded ledger replayed under a policy that
//! denies CN hosting, under another catalog and through another route, each against sums
//! computed here from the catalog's prices and the seeded token counts (integer pico-USD per
//! token, rounded half up once per request: the rule `meter.rs` states), never by the code
//! under test. Then the command line through the real binary: JSON, the progress line when
//! stderr is not a terminal, and errors that name the problem.

#[macro_use]
#[path = "common/stores.rs"]
mod stores;
#[allow(dead_code)]
#[path = "common/bin.rs"]
mod bin;

use bourse::canonical::Usage;
use bourse::config::Config;
use bourse::ledger::{Estimate, Ledger, LedgerEntry};
use bourse::replay::{self, Money, Scenario, Summary};
use std::collections::BTreeMap;
use std::path::PathBuf;

both_stores!(
    no_cn_hosting_changes_spend_to_the_nano_dollar_and_counts_refusals,
    another_catalog_reprices_and_reroutes,
    another_route_takes_every_request
);

/// Prices in pico-USD per token: input, cached input (None: the input price), output.
#[derive(Clone, Copy)]
struct Price {
    input: u128,
    cached: Option<u128>,
    output: u128,
}

/// One catalog model: id, price, quality, origin, hosting, context, capabilities.
struct M {
    id: &'static str,
    price: Price,
    quality: u32,
    origin: &'static str,
    hosting: &'static str,
    context: u64,
    caps: &'static str,
}

const fn p(input: u128, cached: Option<u128>, output: u128) -> Price {
    Price { input, cached, output }
}

/// Catalog A, the config's. cn/cheap is the cheapest strong model (and the only one with
/// vision), cn/long the only one whose context holds 150k tokens; host/open (CN-made, US-hosted)
/// is the cheapest strong model that is not CN-hosted, host/tiny the cheapest of all but
/// below "strong". No model but cn/cheap sees images.
fn catalog_a() -> Vec<M> {
    vec![
        M {
            id: "cn/cheap",
            price: p(100_000, Some(27_500), 300_000),
            quality: 1400,
            origin: "CN",
            hosting: "CN",
            context: 64_000,
            caps: r#""tools", "json_schema", "vision", "streaming""#,
        },
        M {
            id: "cn/long",
            price: p(500_000, None, 1_000_000),
            quality: 1400,
            origin: "CN",
            hosting: "CN",
            context: 1_000_000,
            caps: r#""tools", "streaming""#,
        },
        M {
            id: "host/open",
            price: p(123_400, None, 567_800),
            quality: 1390,
            origin: "CN",
            hosting: "US",
            context: 32_000,
            caps: r#""tools", "streaming""#,
        },
        M {
            id: "host/tiny",
            price: p(20_000, None, 50_000),
            quality: 1250,
            origin: "US",
            hosting: "US",
            context: 16_000,
            caps: r#""streaming""#,
        },
        M {
            id: "us/mid",
            price: p(1_000_000, Some(250_000), 4_000_000),
            quality: 1380,
            origin: "US",
            hosting: "US",
            context: 128_000,
            caps: r#""tools", "json_schema", "streaming""#,
        },
        M {
            id: "us/premium",
            price: p(5_000_000, Some(1_250_000), 20_000_000),
            quality: 1450,
            origin: "US",
            hosting: "US",
            context: 128_000,
            caps: r#""tools", "json_schema", "reasoning", "streaming""#,
        },
    ]
}

/// Catalog B: the same models at new prices (odd fractions of a nano-dollar per token), and
/// host/open now the cheapest strong model.
fn catalog_b() -> Vec<M> {
    let mut c = catalog_a();
    let new = [
        p(200_200, Some(55_100), 600_600),
        p(1_000_300, None, 2_000_700),
        p(50_050, None, 100_100),
        p(40_000, None, 100_000),
        p(2_000_000, Some(500_500), 8_000_000),
        p(10_000_000, Some(2_500_000), 40_000_300),
    ];
    for (m, price) in c.iter_mut().zip(new) {
        m.price = price;
    }
    c
}

fn price_of(catalog: &[M], id: &str) -> Price {
    catalog.iter().find(|m| m.id == id).unwrap_or_else(|| panic!("{id} not in the test catalog")).price
}

/// The cost of `u` at `p`, in nano-USD: cache writes at the input price, reasoning at the
/// output price (none of these models has its own), rounded half up once.
fn cost(p: Price, u: &Usage) -> i64 {
    let pico = u128::from(u.input_uncached) * p.input
        + u128::from(u.input_cache_read) * p.cached.unwrap_or(p.input)
        + u128::from(u.input_cache_write) * p.input
        + u128::from(u.output + u.output_reasoning) * p.output;
    ((pico + 500) / 1000) as i64
}

/// USD per million tokens as the catalog file writes it (pico per token / 1e6, exact).
fn usd(pico: u128) -> String {
    format!("{}.{:06}", pico / 1_000_000, pico % 1_000_000)
}

fn catalog_toml(models: &[M]) -> String {
    let mut t = String::from("[meta]\nname = \"replay-test\"\ndate = \"2026-12-01\"\n");
    for m in models {
        let (provider, model) = m.id.split_once('/').unwrap();
        t.push_str(&format!(
            "\n[[model]]\nprovider = \"{provider}\"\nmodel = \"{model}\"\ninput = {}\noutput = {}\n{}quality = {}\norigin = \"{}\"\nhosting = \"{}\"\ncontext = {}\ncapabilities = [{}]\n",
            usd(m.price.input),
            usd(m.price.output),
            m.price.cached.map(|c| format!("cached_input = {}\n", usd(c))).unwrap_or_default(),
            m.quality,
            m.origin,
            m.hosting,
            m.context,
            m.caps,
        ));
    }
    t
}

/// A temp dir with the config (its catalog: A) and catalog B, removed when dropped.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str) -> Files {
        let dir =
            std::env::temp_dir().join(format!("bourse-replay-{}-{tag}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.toml"), catalog_toml(&catalog_a())).unwrap();
        std::fs::write(dir.join("b.toml"), catalog_toml(&catalog_b())).unwrap();
        let mut cfg = String::new();
        for p in ["cn", "host", "us"] {
            cfg.push_str(&format!(
                "[providers.{p}]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9/v1\"\n"
            ));
        }
        cfg.push_str(&format!(
            "[catalog]\nfile = \"{}\"\nreference = \"us/premium\"\n\
             [storage]\nurl = \"sqlite:{}\"\n\
             [policies.no_cn]\ndeny_hosting = [\"CN\"]\n\
             [routes.auto]\nmin_quality = \"strong\"\n\
             [routes.cheap]\nmin_quality = \"basic\"\n\
             [routes.premium]\nmin_quality = \"frontier\"\n",
            dir.join("a.toml").display(),
            dir.join("ledger.db").display(),
        ));
        std::fs::write(dir.join("bourse.toml"), cfg).unwrap();
        Files { dir }
    }

    fn config(&self) -> Config {
        Config::load(Some(&self.dir.join("bourse.toml"))).expect("the test config loads")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn usage(input: u64, cache_read: u64, output: u64) -> Usage {
    Usage { input_uncached: input, input_cache_read: cache_read, output, ..Usage::default() }
}

/// A row as the gateway writes it; its recorded cost and reference cost from catalog A.
fn row(id: &str, attempt: u32, route: Option<&str>, model: &str, needs: u8, u: Usage, ago_min: i64) -> LedgerEntry {
    let (provider, name) = model.split_once('/').unwrap();
    let a = catalog_a();
    LedgerEntry {
        request_id: id.into(),
        attempt,
        ts_ms: bourse::timespec::now_ms() - ago_min * 60_000,
        key_id: None,
        tenant_id: None,
        provider: provider.into(),
        model: name.into(),
        route_reason: route.map(|r| {
            format!("route={r} chose {model} (expected $0.000100000); 3 feasible; runner-up x/y (expected $0.1)")
        }),
        usage: u,
        cost_nanos: cost(price_of(&a, model), &u),
        reference_cost_nanos: cost(price_of(&a, "us/premium"), &u),
        catalog_version: "replay-test@2026-12-01#0".into(),
        ttfb_ms: Some(100),
        latency_ms: 900,
        status: 200,
        error_kind: None,
        estimate: None,
        stream: false,
        checks: None,
        needs,
        cache_hit: false,
        cache_saved_nanos: 0,
        energy_uwh: None,
        co2e_ug: None,
    }
}

/// The seeded requests, by name: what each one is is said beside it.
struct Seeded {
    rows: Vec<LedgerEntry>,
}

impl Seeded {
    fn new() -> Seeded {
        let mut rows = vec![
            // r1: auto, nothing needed, answered by cn/cheap.
            row("r1", 1, Some("auto"), "cn/cheap", 0, usage(1_000, 0, 200), 10),
            // r2: auto, needs vision: only cn/cheap sees images.
            row("r2", 1, Some("auto"), "cn/cheap", 4, usage(500, 0, 50), 20),
            // r3: auto, a 150k-token prompt only cn/long's context holds.
            row("r3", 1, Some("auto"), "cn/long", 0, usage(150_000, 0, 100), 30),
            // r4: named us/mid, with cache reads.
            row("r4", 1, None, "us/mid", 0, usage(2_000, 1_000, 300), 40),
            // r5: named cn/cheap.
            row("r5", 1, None, "cn/cheap", 0, usage(700, 0, 90), 50),
        ];
        // r6: auto, tools, streamed: the first attempt failed, the fallback on host/open answered.
        let mut failed = row("r6", 1, Some("auto"), "cn/cheap", 1, Usage::default(), 60);
        failed.error_kind = Some("upstream_5xx".into());
        failed.status = 502;
        failed.stream = true;
        let mut answered = row("r6", 2, Some("auto"), "host/open", 1, usage(800, 0, 120), 59);
        answered.stream = true;
        rows.extend([failed, answered]);
        // r7: a judge's side call.
        rows.push(row("r7", 0, None, "us/mid", 0, usage(1_000, 0, 10), 70));
        // r8: a cascade: cn/cheap's answer failed its JSON schema, us/mid's passed.
        let mut first = row("r8", 1, Some("auto"), "cn/cheap", 2, usage(600, 0, 80), 80);
        first.checks = Some("json_schema:fail".into());
        let mut second = row("r8", 2, Some("auto"), "us/mid", 2, usage(600, 0, 90), 79);
        second.checks = Some("json_schema:pass".into());
        second.route_reason =
            Some("route=auto chose us/mid (expected $0.1); 2 feasible; attempt 2 (escalated: json_schema failed on cn/cheap)".into());
        rows.extend([first, second]);
        // r9: a cache hit.
        let mut hit = row("r9", 1, Some("auto"), "cn/cheap", 0, usage(1_000, 0, 200), 90);
        hit.cache_hit = true;
        hit.cost_nanos = 0;
        rows.push(hit);
        // r10: auto, usage estimated by the gateway.
        let mut estimated = row("r10", 1, Some("auto"), "cn/cheap", 0, usage(3_000, 0, 1_000), 100);
        estimated.estimate = Some(Estimate::Heuristic);
        rows.push(estimated);
        // r11: the cheap route, answered by host/tiny.
        rows.push(row("r11", 1, Some("cheap"), "host/tiny", 0, usage(400, 0, 60), 110));
        // r12: a route no longer configured.
        rows.push(row("r12", 1, Some("gone"), "cn/cheap", 0, usage(300, 0, 30), 120));
        // Before the window: never read.
        let mut old = row("old", 1, Some("auto"), "cn/cheap", 4, usage(9_000_000, 0, 9_000_000), 40 * 24 * 60);
        old.cost_nanos = 1_000_000_000_000;
        rows.push(old);
        Seeded { rows }
    }

    /// The replayed row of request `id` (its answering attempt).
    fn answer(&self, id: &str) -> &LedgerEntry {
        self.rows
            .iter()
            .filter(|r| r.request_id == id && r.attempt >= 1 && r.error_kind.is_none())
            .max_by_key(|r| r.attempt)
            .unwrap()
    }

    /// What the replayed requests cost as recorded.
    fn before(&self, ids: &[&str]) -> Money {
        let mut m = Money::default();
        for id in ids {
            let r = self.answer(id);
            m.requests += 1;
            m.cost_nanos += r.cost_nanos;
            m.reference_cost_nanos += r.reference_cost_nanos;
        }
        m
    }
}

/// Every answered request in the window.
const REPLAYED: [&str; 10] = ["r1", "r2", "r3", "r4", "r5", "r6", "r8", "r10", "r11", "r12"];

async fn seeded(url: &str) -> (Ledger, Seeded) {
    let ledger = Ledger::open(url).await.unwrap();
    let s = Seeded::new();
    ledger.append(s.rows.clone()).await.unwrap();
    (ledger, s)
}

async fn replay_30d(ledger: &Ledger, cfg: &Config, scenario: &Scenario) -> Summary {
    let now = bourse::timespec::now_ms();
    let mut calls = 0;
    let s = replay::run(ledger, cfg, scenario, Some(now - 30 * 86_400_000), None, |_| calls += 1).await.unwrap();
    assert!(calls >= 1, "progress is reported");
    s
}

/// Expected after-side sums: each (request, model it goes to) priced on `catalog`, with the
/// reference (us/premium) on the same catalog.
fn after(seeded: &Seeded, catalog: &[M], chosen: &[(&str, &str)]) -> (Money, BTreeMap<String, (u64, i64)>) {
    let mut m = Money::default();
    let mut mix: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for (id, model) in chosen {
        let u = seeded.answer(id).usage;
        let c = cost(price_of(catalog, model), &u);
        m.requests += 1;
        m.cost_nanos += c;
        m.reference_cost_nanos += cost(price_of(catalog, "us/premium"), &u);
        let e = mix.entry(model.to_string()).or_default();
        e.0 += 1;
        e.1 += c;
    }
    (m, mix)
}

fn after_mix(s: &Summary) -> BTreeMap<String, (u64, i64)> {
    s.models
        .iter()
        .filter(|(_, m)| m.after_requests > 0)
        .map(|(k, m)| (k.clone(), (m.after_requests, m.after_cost_nanos)))
        .collect()
}

fn refused(s: &Summary) -> BTreeMap<String, u64> {
    s.infeasible.iter().map(|(k, m)| (k.clone(), m.requests)).collect()
}

fn reasons(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
    list.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// Under `--policy no_cn` each request keeps its route: auto's go to host/open (the cheapest
/// strong model not hosted in CN) or, needing JSON schemas, us/mid; cheap's stays on host/tiny;
/// a named us/mid stays. The vision request, the 150k-token one, the named cn/cheap one and
/// the one whose route is gone would have been refused.
async fn no_cn_hosting_changes_spend_to_the_nano_dollar_and_counts_refusals(url: &str) {
    let files = Files::new("policy");
    let cfg = files.config();
    let (ledger, seeded) = seeded(url).await;
    let scenario = Scenario { policy: Some("no_cn".into()), ..Scenario::default() };
    let s = replay_30d(&ledger, &cfg, &scenario).await;

    let a = catalog_a();
    let chosen = [
        ("r1", "host/open"),
        ("r4", "us/mid"),
        ("r6", "host/open"),
        ("r8", "us/mid"),
        ("r10", "host/open"),
        ("r11", "host/tiny"),
    ];
    let (want_after, want_mix) = after(&seeded, &a, &chosen);
    let before = seeded.before(&REPLAYED);
    assert_eq!(s.before, before);
    assert_eq!(s.after, want_after);
    assert_eq!(s.change_nanos(), want_after.cost_nanos - before.cost_nanos, "the spend difference, to the nano-dollar");
    assert_eq!(s.kept_before, seeded.before(&["r1", "r4", "r6", "r8", "r10", "r11"]));
    assert_eq!(after_mix(&s), want_mix);
    // r1 and r10 moved from cn/cheap to host/open; r6 (already on host/open), r8 (on us/mid),
    // r4 and r11 stayed.
    assert_eq!(s.moved, 2);
    assert_eq!(s.estimated, 1);
    assert_eq!(
        refused(&s),
        reasons(&[
            ("no feasible model: deny_hosting, vision", 1),
            ("no feasible model: deny_hosting, context", 1),
            ("named model denied by the policy: deny_hosting", 1),
            ("route 'gone' is not configured", 1),
        ])
    );
    assert_eq!(s.infeasible["no feasible model: deny_hosting, vision"].cost_nanos, seeded.answer("r2").cost_nanos);
    // Not replayed: the failed first attempt of r6, the judge, the escalated-past answer, the hit.
    assert_eq!(
        [
            s.skipped.failed.requests,
            s.skipped.side_calls.requests,
            s.skipped.escalated.requests,
            s.skipped.cache_hits.requests
        ],
        [1, 1, 1, 1]
    );
    assert_eq!(s.skipped.side_calls.cost_nanos, seeded.rows.iter().find(|r| r.request_id == "r7").unwrap().cost_nanos);
    assert_eq!(s.skipped.escalated.cost_nanos, seeded.rows.iter().find(|r| r.request_id == "r8").unwrap().cost_nanos);
    // The window's totals from the aggregates agree with the rows read.
    assert_eq!((s.ledger_rows, s.rows), (14, 14));
    let in_window: i64 = seeded.rows.iter().filter(|r| r.request_id != "old").map(|r| r.cost_nanos).sum();
    assert_eq!(s.ledger_cost_nanos, in_window);
    let k = &s.skipped;
    let not_replayed = k.failed.cost_nanos + k.side_calls.cost_nanos + k.escalated.cost_nanos + k.cache_hits.cost_nanos;
    assert_eq!(s.before.cost_nanos + not_replayed, in_window);

    // With nothing changed every request stays where it was, but for two: every candidate is
    // healthy in a replay, so r6 (which fell back from cn/cheap) and r8 (escalated past it)
    // go to cn/cheap, the route's first choice; r12's route is still gone.
    let same = replay_30d(&ledger, &cfg, &Scenario::default()).await;
    let chosen = [
        ("r1", "cn/cheap"),
        ("r2", "cn/cheap"),
        ("r3", "cn/long"),
        ("r4", "us/mid"),
        ("r5", "cn/cheap"),
        ("r6", "cn/cheap"),
        ("r8", "cn/cheap"),
        ("r10", "cn/cheap"),
        ("r11", "host/tiny"),
    ];
    assert_eq!(same.after, after(&seeded, &a, &chosen).0);
    assert_eq!(same.moved, 2);
    assert_eq!(refused(&same), reasons(&[("route 'gone' is not configured", 1)]));
}

/// `--catalog b.toml`: the same models at new prices. Every request is priced by B; auto's
/// requests that host/open can serve move to it (now the cheapest strong model), the vision
/// request stays on cn/cheap, the long one on cn/long, named models stay named.
async fn another_catalog_reprices_and_reroutes(url: &str) {
    let files = Files::new("catalog");
    let cfg = files.config();
    let (ledger, seeded) = seeded(url).await;
    let catalog = replay::load_catalog(&cfg, &files.path("b.toml")).unwrap();
    let scenario = Scenario { catalog: Some(catalog), ..Scenario::default() };
    let s = replay_30d(&ledger, &cfg, &scenario).await;
    let b = catalog_b();
    let chosen = [
        ("r1", "host/open"),
        ("r2", "cn/cheap"),
        ("r3", "cn/long"),
        ("r4", "us/mid"),
        ("r5", "cn/cheap"),
        ("r6", "host/open"),
        // JSON schemas: cn/cheap is the cheapest that has them (the cascade's check is not
        // replayed: see replay.rs).
        ("r8", "cn/cheap"),
        ("r10", "host/open"),
        ("r11", "host/tiny"),
    ];
    let (want_after, want_mix) = after(&seeded, &b, &chosen);
    assert_eq!(s.before, seeded.before(&REPLAYED));
    assert_eq!(s.after, want_after, "priced by catalog B to the nano-dollar");
    assert_eq!(after_mix(&s), want_mix);
    assert_eq!(refused(&s), reasons(&[("route 'gone' is not configured", 1)]));
    assert!(s.catalog.starts_with("replay-test@2026-12-01#"), "{}", s.catalog);

    // Without us/mid, the request that named it would have been refused; nothing else moves.
    let without_mid: Vec<M> = catalog_b().into_iter().filter(|m| m.id != "us/mid").collect();
    std::fs::write(files.path("c.toml"), catalog_toml(&without_mid)).unwrap();
    let catalog = replay::load_catalog(&cfg, &files.path("c.toml")).unwrap();
    let c = replay_30d(&ledger, &cfg, &Scenario { catalog: Some(catalog), ..Scenario::default() }).await;
    let kept: Vec<(&str, &str)> = chosen.iter().copied().filter(|(id, _)| *id != "r4").collect();
    assert_eq!(c.after, after(&seeded, &b, &kept).0);
    assert_eq!(refused(&c), reasons(&[("route 'gone' is not configured", 1), ("named model not in the catalog", 1)]));

    // A catalog that cannot be used says why, naming the file.
    let missing = files.path("nope.toml");
    let e = replay::load_catalog(&cfg, &missing).unwrap_err();
    assert!(e.contains("cannot read") && e.contains("nope.toml"), "{e}");
    std::fs::write(files.path("bad.toml"), "[meta]\nname = 1\n").unwrap();
    let e = replay::load_catalog(&cfg, &files.path("bad.toml")).unwrap_err();
    assert!(e.contains("bad.toml"), "{e}");
    let without_reference: Vec<M> = catalog_a().into_iter().filter(|m| m.id != "us/premium").collect();
    std::fs::write(files.path("noref.toml"), catalog_toml(&without_reference)).unwrap();
    let e = replay::load_catalog(&cfg, &files.path("noref.toml")).unwrap_err();
    assert!(e.contains("reference model us/premium is not in it"), "{e}");
}

/// `--route premium`: every request, named ones included and the one whose route is gone, as
/// if it had asked for the frontier floor: all on us/premium (the reference: nothing saved),
/// except the vision request and the 150k-token one, which no frontier model can serve.
async fn another_route_takes_every_request(url: &str) {
    let files = Files::new("route");
    let cfg = files.config();
    let (ledger, seeded) = seeded(url).await;
    let scenario = Scenario { route: Some("premium".into()), ..Scenario::default() };
    let s = replay_30d(&ledger, &cfg, &scenario).await;
    let a = catalog_a();
    let served = ["r1", "r4", "r5", "r6", "r8", "r10", "r11", "r12"];
    let chosen: Vec<(&str, &str)> = served.iter().map(|id| (*id, "us/premium")).collect();
    let (want_after, want_mix) = after(&seeded, &a, &chosen);
    assert_eq!(s.after, want_after);
    assert_eq!(s.after.saved_nanos(), 0);
    assert_eq!(after_mix(&s), want_mix);
    assert_eq!(
        refused(&s),
        reasons(&[("no feasible model: vision, min_quality", 1), ("no feasible model: context, min_quality", 1)])
    );

    // Unknown routes and policies are refused before anything is read, naming what exists.
    let e = replay::Replayer::new(&cfg, &Scenario { route: Some("nope".into()), ..Scenario::default() }, vec![])
        .err()
        .unwrap();
    assert_eq!(e, "--route: unknown route 'nope'; configured: auto, cheap, premium");
    let e = replay::Replayer::new(&cfg, &Scenario { policy: Some("nope".into()), ..Scenario::default() }, vec![])
        .err()
        .unwrap();
    assert!(e.starts_with("--policy: unknown policy 'nope'; configured: ") && e.contains("no_cn"), "{e}");
}

/// Runs `bourse` with `args` to the end: (exit code, stdout, stderr).
async fn bourse(args: &[&str]) -> (i32, String, String) {
    let out = bin::command().args(args).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The binary: JSON on stdout with the same numbers, one plain progress line on stderr (not a
/// terminal: no bar), the table form, and errors that name the flag and the problem.
#[tokio::test]
async fn the_command_line_prints_json_and_tables_and_names_bad_input() {
    let files = Files::new("cli");
    let cfg = files.config();
    let ledger_url = format!("sqlite:{}", files.path("ledger.db").display());
    let (_ledger, seeded) = seeded(&ledger_url).await;
    let config = files.path("bourse.toml");
    let config = config.to_str().unwrap();
    let (code, out, err) = bourse(&["replay", "--config", config, "--policy", "no_cn", "--format", "json"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains('\r') && err.starts_with("replay: 14 rows in "), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let lib = replay_30d(
        &Ledger::open(&ledger_url).await.unwrap(),
        &cfg,
        &Scenario { policy: Some("no_cn".into()), ..Scenario::default() },
    )
    .await;
    assert_eq!(j["change_nanos"], lib.change_nanos());
    assert_eq!(j["before"]["cost_nanos"], seeded.before(&REPLAYED).cost_nanos);
    assert_eq!(j["after"]["cost_usd"], bourse::meter::Cost(lib.after.cost_nanos).usd());
    assert_eq!(j["infeasible_requests"], 4);
    assert_eq!(j["not_replayed"]["cache_hits"]["requests"], 1);
    let (code, table, _) = bourse(&["replay", "--config", config, "--policy", "no_cn"]).await;
    assert_eq!(code, 0);
    for needle in [
        "spend $",
        "model mix",
        "host/open",
        "would have been refused: 4 requests",
        "no feasible model: deny_hosting, vision",
    ] {
        assert!(table.contains(needle), "{needle}: {table}");
    }
    for (args, want) in [
        (vec!["--since", "sometime"], "--since: "),
        (vec!["--route", "nope"], "--route: unknown route 'nope'; configured: auto, cheap, premium"),
        (vec!["--policy", "nope"], "--policy: unknown policy 'nope'"),
        (vec!["--catalog", "/nonexistent/catalog.toml"], "--catalog: cannot read /nonexistent/catalog.toml"),
    ] {
        let mut all = vec!["replay", "--config", config];
        all.extend(args);
        let (code, out, err) = bourse(&all).await;
        assert_eq!(code, 1, "{all:?}: {out}");
        assert!(err.starts_with("bourse: ") && err.contains(want), "{all:?}: {err}");
    }
}
