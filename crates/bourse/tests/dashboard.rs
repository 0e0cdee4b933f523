//! `/dashboard` end to end: a gateway whose ledger is seeded through the ledger API (requests
//! with fallbacks and errors, three providers, tenants and keys with budgets, model names that
//! are markup), then
//! - in a real headless Chromium (`common/chromium.rs`): log in through the form (a client key
//!   and a virtual key are refused, the admin key is taken), load every page, check that every
//!   chart draws as many points as it says and that their figures are the ledger's to the
//!   nano-dollar, that nothing logs an error in the console, that no request leaves
//!   127.0.0.1, that the session cookie is HttpOnly and SameSite=Strict, that the theme
//!   follows the system and the toggle, and log out; screenshots of every page (light and
//!   dark) go to `target/dashboard-screenshots/` for review;
//! - over plain HTTP on both stores: every page and window renders with the same figures, and
//!   the edges (disabled without admin keys, cross-site posts, bad windows, wrong methods,
//!   escaping) answer as documented.

#[path = "common/chromium.rs"]
mod chromium;
mod common;
#[path = "common/pg.rs"]
mod pg;

use bourse::admin::{KeyInput, TenantInput};
use bourse::canonical::Usage;
use bourse::ledger::LedgerEntry;
use bourse::limit::Limits;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

const ADMIN: &str = "gw-other"; // GATEWAY_KEY_2 in test_env
const CLIENT: &str = "gw-secret"; // GATEWAY_KEY

/// Model names that would run or fetch something if any page let them through unescaped.
const XSS_MODEL: &str = "<script>window.__xss=1</script>";
const IMG_MODEL: &str = "<img src=x onerror=window.__xss=3>";
const XSS_POLICY: &str = "<script>window.__xss=2</script>";

const PAGES: [&str; 5] = ["overview", "models", "tenants", "market", "routing"];

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("bourse-dash-{}-{tag}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(storage: &str, admin: bool) -> String {
    let admin = if admin { "admin_keys = [\"env:GATEWAY_KEY_2\"]" } else { "" };
    format!(
        "[server]\napi_keys = [\"env:GATEWAY_KEY\"]\n{admin}\n[storage]\nurl = \"{storage}\"\n\
         [dashboard]\nrefresh = \"10m\"\n\
         [providers.alpha]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [\"small\", \"large\"]\n\
         {}{}\
         [policies.eu_only]\ndeny_hosting = [\"US\", \"CN\", \"SG\"]\n\
         [policies.\"{XSS_POLICY}\"]\ndeny_origin = [\"CN\"]\n",
        price("alpha/small", 0.5, 1.5),
        price("alpha/large", 3.0, 12.0),
    )
}

struct Seeded {
    run: Running,
    rows: Vec<LedgerEntry>,
    /// A virtual key's secret (a client key: refused by the dashboard).
    virtual_secret: String,
    budgets: usize,
}

/// A route reason as `Router::reason` writes it.
fn reason(route: &str, chose: &str, feasible: u32, attempt: u32) -> String {
    let mut s = format!("route={route} chose {chose} (expected $0.000012345); {feasible} feasible");
    if attempt > 1 {
        s.push_str(&format!("; attempt {attempt} (fallback)"));
    }
    s
}

/// Tenants `acme` (daily budget, two keys, one with a monthly budget) and `zeta` (all-time
/// budget), then 300 requests over the last 20 hours, a few with fallbacks.
async fn seed(storage: &str) -> Seeded {
    let run = start(&config(storage, true)).await;
    let admin = run.state.admin.as_ref().unwrap();
    let usd = |v: i64| Some(v * 1_000_000_000);
    let tenant = |name: &str, limits: Limits| TenantInput { name: name.into(), limits, ..TenantInput::default() };
    admin.create_tenant("test", tenant("acme", Limits { budget_day: usd(2), ..Limits::default() })).await.unwrap();
    admin.create_tenant("test", tenant("zeta", Limits { budget_total: usd(5), ..Limits::default() })).await.unwrap();
    let key = |t: &str, limits: Limits| KeyInput { tenant: t.into(), limits, ..KeyInput::default() };
    let (a1, virtual_secret) =
        admin.create_key("test", key("acme", Limits { budget_month: usd(3), ..Limits::default() })).await.unwrap();
    let (a2, _) = admin.create_key("test", key("acme", Limits::default())).await.unwrap();
    let (z1, _) = admin.create_key("test", key("zeta", Limits::default())).await.unwrap();
    run.state.directory.as_ref().unwrap().refresh().await.unwrap();
    let callers: [(Option<&str>, Option<&str>); 4] = [
        (Some(&a1.id), Some("acme")),
        (Some(&a2.id), Some("acme")),
        (Some(&z1.id), Some("zeta")),
        (Some("key_cfg"), None),
    ];
    let models = [("alpha", "small"), ("alpha", "large"), ("beta", XSS_MODEL), ("gamma", IMG_MODEL)];
    let errors = ["upstream_5xx", "upstream_timeout", "upstream_rate_limited"];
    let mut rng = fastrand::Rng::with_seed(16);
    let minute_now = bourse::timespec::now_ms() / 60_000 * 60_000;
    let mut rows = Vec::new();
    for i in 0..300 {
        let ts = minute_now - rng.i64(0..20 * 60) * 60_000;
        let (key_id, tenant_id) = callers[rng.usize(..callers.len())];
        let routed = rng.u8(..4) != 0;
        let route = ["auto", "cheap"][rng.usize(..2)];
        let feasible = rng.u32(2..9);
        let attempts = if rng.u8(..8) == 0 { 2 } else { 1 };
        for a in 1..=attempts {
            let (provider, model) = models[rng.usize(..models.len())];
            let last = a == attempts;
            let error = (!last || rng.u8(..12) == 0).then(|| errors[rng.usize(..errors.len())]);
            let cost = rng.i64(1_000..20_000_000);
            rows.push(LedgerEntry {
                request_id: format!("req-dash-{i}"),
                attempt: a,
                ts_ms: ts + i64::from(a) * 100,
                key_id: key_id.map(Into::into),
                tenant_id: tenant_id.map(Into::into),
                provider: provider.into(),
                model: model.into(),
                route_reason: routed.then(|| reason(route, &format!("{provider}/{model}"), feasible, a)),
                usage: Usage { input_uncached: 100, output: 40, ..Usage::default() },
                cost_nanos: cost,
                reference_cost_nanos: cost * 3,
                catalog_version: "test".into(),
                ttfb_ms: Some(rng.u32(20..900)),
                latency_ms: rng.u32(100..4_000),
                status: if error.is_some() { 502 } else { 200 },
                error_kind: error.map(str::to_string),
                estimate: None,
                stream: true,
                checks: None,
                needs: 0,
                cache_hit: false,
                cache_saved_nanos: 0,
                energy_uwh: None,
                co2e_ug: None,
            });
        }
    }
    run.state.reports.as_ref().unwrap().append(rows.clone()).await.unwrap();
    // acme's daily, a1's monthly, zeta's all-time.
    Seeded { run, rows, virtual_secret, budgets: 3 }
}

/// What one chart drew: (series, x, y) per point, and what it declared.
#[derive(Debug, Default)]
struct Drawn {
    declared: usize,
    points: Vec<(String, String, i64)>,
}

impl Drawn {
    fn sum(&self) -> i64 {
        self.points.iter().map(|p| p.2).sum()
    }

    fn series_sums(&self) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for (s, _, y) in &self.points {
            *m.entry(s.clone()).or_default() += y;
        }
        m
    }

    /// The first bucket's start (the window's since).
    fn since(&self) -> i64 {
        self.points.iter().filter_map(|p| p.1.parse::<i64>().ok()).min().expect("time points")
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// The charts of an HTML page, read from the markup (`data-chart`, `data-point`).
fn charts_in_html(html: &str) -> BTreeMap<String, Drawn> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(unescape(&tag[at..at + tag[at..].find('"')?]))
    };
    let mut out = BTreeMap::new();
    for svg in html.split("<svg ").skip(1) {
        let head = &svg[..svg.find('>').unwrap()];
        let id = attr(head, "data-chart").unwrap();
        let mut d = Drawn { declared: attr(head, "data-points").unwrap().parse().unwrap(), points: Vec::new() };
        let body = &svg[..svg.find("</svg>").unwrap()];
        for el in body.split('<').filter(|e| e.contains(" data-point=\"\"")) {
            d.points.push((
                attr(el, "data-series").unwrap(),
                attr(el, "data-x").unwrap(),
                attr(el, "data-y").unwrap().parse().unwrap(),
            ));
        }
        out.insert(id, d);
    }
    out
}

/// The charts of the page loaded in the browser, read from its DOM.
fn charts_in_browser(b: &mut chromium::Browser, session: &str) -> BTreeMap<String, Drawn> {
    let v = b.eval(
        session,
        "JSON.stringify([...document.querySelectorAll('svg[data-chart]')].map(s => ({id: s.dataset.chart, \
         declared: +s.dataset.points, points: [...s.querySelectorAll('[data-point]')].map(p => [p.dataset.series, \
         p.dataset.x, p.dataset.y])})))",
    );
    let list: Vec<Value> = serde_json::from_str(v.as_str().unwrap()).unwrap();
    list.into_iter()
        .map(|c| {
            let points = c["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap().into(),
                        p[1].as_str().unwrap().into(),
                        p[2].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect();
            (
                c["id"].as_str().unwrap().to_string(),
                Drawn { declared: c["declared"].as_u64().unwrap() as usize, points },
            )
        })
        .collect()
}

/// Whether a row's request has a next attempt.
fn fell_back(rows: &[LedgerEntry], r: &LedgerEntry) -> bool {
    rows.iter().any(|n| n.request_id == r.request_id && n.attempt == r.attempt + 1)
}

/// Catalog chat models the market can place (rated, priced), and those no CN hosting removes
/// (hosted in CN, or hosted nobody knows where).
fn market_counts() -> (usize, usize) {
    let c = bourse::catalog::Catalog::shipped().unwrap();
    let placed: Vec<&bourse::catalog::Model> = c
        .models()
        .iter()
        .filter(|m| {
            m.kind == bourse::catalog::Kind::Chat && m.quality.is_some() && 3 * m.rates.input.0 + m.rates.output.0 > 0
        })
        .collect();
    let removed = placed
        .iter()
        .filter(|m| {
            let hosting = m.hosting.as_deref().or(bourse::preset::find(&m.provider).and_then(|p| p.hosting));
            hosting.is_none_or(|h| h.eq_ignore_ascii_case("CN"))
        })
        .count();
    (placed.len(), removed)
}

/// Every page's charts against the seeded rows: the points each chart declares are drawn,
/// and their figures are the rows' sums over the chart's own window.
fn check_pages(pages: &BTreeMap<&str, BTreeMap<String, Drawn>>, rows: &[LedgerEntry], budgets: usize) {
    for (page, charts) in pages {
        assert!(!charts.is_empty(), "{page}: no charts");
        for (id, d) in charts {
            assert_eq!(d.declared, d.points.len(), "{page}/{id}: declared vs drawn");
        }
    }
    let overview = &pages["overview"];
    let spend = &overview["spend-by-provider"];
    let since = spend.since();
    let seen: Vec<&LedgerEntry> = rows.iter().filter(|r| r.ts_ms >= since).collect();
    assert!(seen.len() > 10, "the window holds seeded rows");
    let mut by_provider: BTreeMap<String, i64> = BTreeMap::new();
    for r in &seen {
        *by_provider.entry(r.provider.clone()).or_default() += r.cost_nanos;
    }
    assert_eq!(spend.series_sums(), by_provider, "spend by provider, to the nano-dollar");
    let buckets = spend.points.iter().map(|p| &p.1).collect::<BTreeSet<_>>().len();
    assert_eq!(spend.points.len(), buckets * by_provider.len(), "a point per provider and bucket");
    let saved: i64 = seen.iter().map(|r| r.reference_cost_nanos - r.cost_nanos).sum();
    let savings = &overview["savings"];
    let last_saved = savings.points.iter().filter(|p| p.0.starts_with("saved")).map(|p| p.2).max().unwrap();
    assert_eq!(last_saved, saved, "cumulative savings end at the window's total");
    // A request counts where its first attempt is.
    let requests = seen.iter().filter(|r| r.attempt == 1).count() as i64;
    assert_eq!(overview["requests"].sum(), requests, "answered + failed = requests");
    let failed = seen.iter().filter(|r| r.error_kind.is_some() && !fell_back(rows, r)).count() as i64;
    assert_eq!(overview["requests"].series_sums()["failed"], failed);
    assert!(!overview["ttfb"].points.is_empty() && !overview["latency"].points.is_empty());

    let models = &pages["models"];
    // Every model with an attempt in the window, with the requests that started there.
    let mut per_model: BTreeMap<String, i64> = BTreeMap::new();
    for r in &seen {
        *per_model.entry(format!("{}/{}", r.provider, r.model)).or_default() += i64::from(r.attempt == 1);
    }
    let mix: BTreeMap<String, i64> = models["mix"].points.iter().map(|p| (p.1.clone(), p.2)).collect();
    assert_eq!(mix, per_model);
    assert!(mix.contains_key(&format!("beta/{XSS_MODEL}")), "the markup model is a bar, by its real name");
    assert_eq!(models["cost-share"].sum(), by_provider.values().sum::<i64>());
    assert_eq!(models["providers"].points.len(), by_provider.len());
    let fallbacks = seen.iter().filter(|r| r.error_kind.is_some() && fell_back(rows, r)).count() as i64;
    assert_eq!(models["fallbacks-by-model"].sum(), fallbacks);
    assert_eq!(models["spend-by-model"].sum(), by_provider.values().sum::<i64>());

    let tenants = &pages["tenants"];
    let mut by_tenant: BTreeMap<String, i64> = BTreeMap::new();
    for r in &seen {
        *by_tenant.entry(r.tenant_id.as_deref().unwrap_or("(none)").to_string()).or_default() += r.cost_nanos;
    }
    let drawn: BTreeMap<String, i64> = tenants["spend-by-tenant"].points.iter().map(|p| (p.1.clone(), p.2)).collect();
    assert_eq!(drawn, by_tenant);
    assert_eq!(tenants.keys().filter(|k| k.starts_with("burndown-")).count(), budgets, "a burn-down per budget");
    for (id, d) in tenants.iter().filter(|(k, _)| k.starts_with("burndown-")) {
        assert!(!d.points.is_empty(), "{id}");
    }

    let (placed, _) = market_counts();
    let market = &pages["market"];
    assert_eq!(market["market"].points.len(), placed, "every rated, priced catalog chat model");

    let routing = &pages["routing"];
    let routes: BTreeMap<String, i64> = routing["routes"].points.iter().map(|p| (p.1.clone(), p.2)).collect();
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for r in seen.iter().filter(|r| r.attempt == 1) {
        let route = r
            .route_reason
            .as_ref()
            .map_or("(named model)".to_string(), |s| s[6..s.find(" chose").unwrap()].to_string());
        *want.entry(route).or_default() += 1;
    }
    assert_eq!(routes, want);
    let routed = seen.iter().filter(|r| r.attempt == 1 && r.route_reason.is_some()).count() as i64;
    assert_eq!(routing["feasible"].sum(), routed);
    assert_eq!(routing["fallback-causes"].sum(), fallbacks);
    assert_eq!(routing["fallbacks"].sum(), seen.iter().filter(|r| r.attempt > 1).count() as i64);
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Fills the login form with `key` and submits it; returns the page's path afterwards.
fn submit_login(b: &mut chromium::Browser, s: &str, key: &str) -> String {
    b.eval_and_wait_load(
        s,
        &format!(
            "document.getElementById('key').value = {}; document.querySelector('form.login').submit()",
            json!(key)
        ),
    );
    b.eval(s, "location.pathname").as_str().unwrap().to_string()
}

#[cfg_attr(
    not(chromium),
    ignore = "needs Chromium: run scripts/chromium (./scripts/test does), or set BOURSE_CHROMIUM"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_in_chromium() {
    let dir = TempDir::new("chromium");
    let seeded = seed(&format!("sqlite:{}", dir.0.join("ledger.db").display())).await;
    let base = seeded.run.url.clone();
    let rows = seeded.rows.clone();
    let virtual_secret = seeded.virtual_secret.clone();
    let budgets = seeded.budgets;
    let shots = screenshots_dir();
    // The browser is driven from a blocking thread; the gateway keeps serving on the runtime.
    let log = tokio::task::spawn_blocking(move || {
        let mut b = chromium::Browser::launch();
        let s = b.page();
        b.navigate(&s, &format!("{base}/dashboard/overview"));
        assert_eq!(b.eval(&s, "location.pathname + location.search"), "/dashboard/login?next=overview", "login first");
        std::fs::write(shots.join("login.png"), b.screenshot(&s)).unwrap();
        for refused in [CLIENT, virtual_secret.as_str(), "not-a-key"] {
            assert_eq!(submit_login(&mut b, &s, refused), "/dashboard/login", "{refused} refused");
            let error = b.eval(&s, "document.querySelector('.error').textContent");
            assert!(error.as_str().unwrap().contains("not an admin key"), "{error}");
        }
        assert_eq!(submit_login(&mut b, &s, ADMIN), "/dashboard/overview", "the admin key opens it");
        assert_eq!(b.eval(&s, "document.cookie"), "", "the session cookie is invisible to scripts");
        let cookies = b.call(Some(&s), "Network.getCookies", json!({"urls": [format!("{base}/dashboard/overview")]}));
        let c = &cookies["cookies"][0];
        assert_eq!((c["name"].as_str(), c["httpOnly"].as_bool(), c["sameSite"].as_str(), c["path"].as_str()),
            (Some("bourse_session"), Some(true), Some("Strict"), Some("/dashboard")), "{cookies}");

        let mut pages = BTreeMap::new();
        for page in PAGES {
            b.navigate(&s, &format!("{base}/dashboard/{page}?window=24h"));
            assert_eq!(b.eval(&s, "location.pathname"), format!("/dashboard/{page}"));
            assert_eq!(b.eval(&s, "document.querySelector('meta[http-equiv=refresh]').content"), "600", "reloads itself");
            assert_eq!(b.eval(&s, "document.querySelector('nav.windows [aria-current]').textContent"), "24h");
            assert_eq!(b.eval(&s, "document.scripts.length"), 1, "{page}: only the dashboard's own script");
            assert_eq!(b.eval(&s, "typeof window.__xss"), "undefined", "{page}: markup from the ledger stayed text");
            pages.insert(page, charts_in_browser(&mut b, &s));
            std::fs::write(shots.join(format!("{page}.png")), b.screenshot(&s)).unwrap();
        }
        check_pages(&pages, &rows, budgets);
        // The markup model's name is shown as text, whole.
        b.navigate(&s, &format!("{base}/dashboard/models?window=24h"));
        let shown = b.eval(&s, "[...document.querySelectorAll('td')].some(td => td.textContent === 'beta/' + '<script>window.__xss=1</script>')");
        assert_eq!(shown, true);

        // Another window keeps its choice in the links and still draws the ledger's rows.
        b.navigate(&s, &format!("{base}/dashboard/overview?window=1h"));
        assert_eq!(b.eval(&s, "document.querySelector('nav.windows [aria-current]').textContent"), "1h");
        let hour = charts_in_browser(&mut b, &s);
        let since = hour["spend-by-provider"].since();
        let want: i64 = rows.iter().filter(|r| r.ts_ms >= since).map(|r| r.cost_nanos).sum();
        assert_eq!(hour["spend-by-provider"].sum(), want);
        assert_eq!(hour["spend-by-provider"].points.iter().map(|p| &p.1).collect::<BTreeSet<_>>().len(), 60);

        // The market under a configured policy, chosen by its (markup) name.
        b.navigate(&s, &format!("{base}/dashboard/market?window=24h"));
        let href = b.eval(&s, "[...document.querySelectorAll('nav.policies a')].find(a => a.textContent.startsWith('eu_only')).href");
        b.navigate(&s, href.as_str().unwrap());
        let eu = charts_in_browser(&mut b, &s);
        let removed = b.eval(&s, "document.querySelectorAll('svg[data-chart=market] [data-removed]').length").as_u64().unwrap();
        assert!(removed > 0 && (removed as usize) < eu["market"].points.len());
        let href = b.eval(&s, "[...document.querySelectorAll('nav.policies a')].find(a => a.textContent.includes('__xss')).href");
        b.navigate(&s, href.as_str().unwrap());
        assert_eq!(b.eval(&s, "typeof window.__xss"), "undefined");
        assert_eq!(b.eval(&s, "document.querySelector('nav.policies [aria-current]').textContent"), XSS_POLICY);
        b.navigate(&s, &format!("{base}/dashboard/market"));
        let (_, cn_removed) = market_counts();
        let removed = b.eval(&s, "document.querySelectorAll('svg[data-chart=market] [data-removed]').length");
        assert_eq!(removed.as_u64().unwrap() as usize, cn_removed, "no CN hosting removes what is hosted in China");
        let headline = b.eval(&s, "document.querySelector('.headline').textContent");
        assert!(headline.as_str().unwrap().starts_with("no CN hosting costs "), "{headline}");

        // Light by default, dark when the system asks, and the toggle wins over both.
        let bg = "getComputedStyle(document.documentElement).backgroundColor";
        assert_eq!(b.eval(&s, bg), "rgb(251, 251, 250)");
        b.call(Some(&s), "Emulation.setEmulatedMedia", json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}));
        for page in ["overview", "market", "tenants"] {
            b.navigate(&s, &format!("{base}/dashboard/{page}"));
            assert_eq!(b.eval(&s, bg), "rgb(20, 22, 26)", "{page} follows the system");
            std::fs::write(shots.join(format!("{page}-dark.png")), b.screenshot(&s)).unwrap();
        }
        b.eval(&s, "document.getElementById('theme').click()");
        assert_eq!(b.eval(&s, bg), "rgb(251, 251, 250)", "the toggle switches to light");
        b.navigate(&s, &format!("{base}/dashboard/overview"));
        assert_eq!(b.eval(&s, bg), "rgb(251, 251, 250)", "and the choice is remembered");

        // Logging out ends the session.
        b.eval_and_wait_load(&s, "document.querySelector('form[action=\"/dashboard/logout\"]').submit()");
        assert_eq!(b.eval(&s, "location.pathname"), "/dashboard/login");
        b.navigate(&s, &format!("{base}/dashboard/tenants"));
        assert_eq!(b.eval(&s, "location.pathname"), "/dashboard/login", "logged out");
        b.events(Duration::from_millis(300)).to_vec()
    })
    .await
    .unwrap();

    assert_eq!(seeded.run.state.dashboard.sessions(), 0, "the session ended with the log-out");
    let origin = format!("{}/", seeded.run.url);
    let mut requests = 0;
    let mut refused_logins = 0;
    for e in &log {
        match e["method"].as_str().unwrap_or("") {
            "Network.requestWillBeSent" => {
                let url = e["params"]["request"]["url"].as_str().unwrap();
                assert!(
                    url.starts_with(&origin) || url.starts_with("data:") || url == "about:blank",
                    "left 127.0.0.1: {url}"
                );
                requests += 1;
            }
            "Runtime.exceptionThrown" => panic!("script error: {e}"),
            "Runtime.consoleAPICalled" if matches!(e["params"]["type"].as_str(), Some("error" | "assert")) => {
                panic!("console error: {e}")
            }
            "Log.entryAdded" if e["params"]["entry"]["level"] == "error" => {
                // The refused logins answer 401, which the browser reports; nothing else may.
                let entry = &e["params"]["entry"];
                let expected = entry["source"] == "network"
                    && entry["url"].as_str() == Some(&format!("{origin}dashboard/login"))
                    && entry["text"].as_str().is_some_and(|t| t.contains("401"));
                assert!(expected, "console error: {e}");
                refused_logins += 1;
            }
            _ => {}
        }
    }
    assert!(requests > 20, "the browser's requests were seen ({requests})");
    assert_eq!(refused_logins, 3, "one 401 per refused login");
}

/// Every page and window renders from either store, with the ledger's figures.
async fn pages_render_from(storage: &str) {
    let seeded = seed(storage).await;
    let http = http();
    let base = &seeded.run.url;
    let login = http
        .post(format!("{base}/dashboard/login"))
        .header("origin", base.as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let mut pages = BTreeMap::new();
    for window in ["1h", "24h", "7d", "30d"] {
        for page in PAGES {
            let started = std::time::Instant::now();
            let resp = http
                .get(format!("{base}/dashboard/{page}?window={window}"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{page} {window}");
            let h = resp.headers();
            assert_eq!(h["content-type"], "text/html; charset=utf-8");
            assert_eq!(h["cache-control"], "no-store");
            assert!(h["content-security-policy"].to_str().unwrap().starts_with("default-src 'none'"));
            let html = resp.text().await.unwrap();
            assert!(
                !html.contains(XSS_MODEL) && !html.contains(IMG_MODEL) && !html.contains(XSS_POLICY),
                "{page}: escaped"
            );
            assert!(!html.contains("http://") && !html.contains("https://"), "{page}: no absolute URL to fetch from");
            let _ = started;
            let charts = charts_in_html(&html);
            if window == "24h" {
                pages.insert(page, charts);
            }
        }
    }
    assert!(pages["overview"]["spend-by-provider"].points.len() >= 48);
    check_pages(&pages, &seeded.rows, seeded.budgets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_from_sqlite() {
    let dir = TempDir::new("sqlite");
    pages_render_from(&format!("sqlite:{}", dir.0.join("ledger.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_from_postgres() {
    let db = pg::Database::create("dashboard_pages").await;
    pages_render_from(&db.url).await;
    db.drop().await;
}

/// A client that shows redirects instead of following them.
fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn form(http: &reqwest::Client, base: &str, key: &str) -> reqwest::RequestBuilder {
    http.post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={key}&next=market"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_sessions_and_edges() {
    let dir = TempDir::new("edges");
    let run = start(&config(&format!("sqlite:{}", dir.0.join("ledger.db").display()), true)).await;
    let http = http();
    let base = run.url.as_str();

    let r = http.get(format!("{base}/dashboard/routing")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.headers()["location"].to_str().unwrap()),
        (303, "/dashboard/login?next=routing")
    );
    let r = http.get(format!("{base}/dashboard")).send().await.unwrap();
    assert_eq!(r.headers()["location"], "/dashboard/login");
    let login = http.get(format!("{base}/dashboard/login")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    assert!(login.text().await.unwrap().contains("name=\"key\" type=\"password\""));
    for (asset, ty) in [("app.css", "text/css; charset=utf-8"), ("app.js", "text/javascript; charset=utf-8")] {
        let r = http.get(format!("{base}/dashboard/static/{asset}")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["content-type"].to_str().unwrap()), (200, ty), "no login needed");
    }

    // Cross-site and header-less posts are refused before the key is even looked at.
    for (name, value) in [("origin", "http://evil.example"), ("sec-fetch-site", "cross-site"), ("origin", "null")] {
        let r = form(&http, base, ADMIN).header(name, value).send().await.unwrap();
        assert_eq!(r.status(), 403, "{name}: {value}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    assert_eq!(form(&http, base, ADMIN).send().await.unwrap().status(), 403, "neither Origin nor Sec-Fetch-Site");
    let r = http
        .post(format!("{base}/dashboard/login"))
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = form(&http, base, &"k".repeat(10_000)).header("sec-fetch-site", "same-origin").send().await.unwrap();
    assert_eq!(r.status(), 413);
    for key in [CLIENT, "", "gw-other-but-longer"] {
        let r = form(&http, base, key).header("sec-fetch-site", "same-origin").send().await.unwrap();
        assert_eq!(r.status(), 401, "{key:?}");
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.text().await.unwrap().contains("not an admin key"));
    }
    assert_eq!(run.state.dashboard.sessions(), 0);

    let r = form(&http, base, ADMIN).header("origin", base).header("x-forwarded-proto", "https").send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.headers()["location"].to_str().unwrap()),
        (303, "/dashboard/market"),
        "to the page asked for"
    );
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.starts_with("bourse_session=") && set.len() > 64, "{set}");
    for attr in ["; Path=/dashboard", "; HttpOnly", "; SameSite=Strict", "; Max-Age=43200", "; Secure"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let get = |path: &str| http.get(format!("{base}{path}")).header("cookie", &cookie).send();
    assert_eq!(get("/dashboard/overview").await.unwrap().status(), 200, "an empty ledger renders");
    assert_eq!(get("/dashboard/login").await.unwrap().headers()["location"], "/dashboard/overview");
    let r = get("/dashboard/overview?window=2h").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("1h, 24h, 7d, 30d"));
    let r = get("/dashboard/market?policy=nope").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(get("/dashboard/nope").await.unwrap().status(), 404);
    let r = http.post(format!("{base}/dashboard/overview")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["allow"].to_str().unwrap()), (405, "GET, HEAD"));
    let r = http.head(format!("{base}/dashboard/market")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A client key is no way in, however it is presented.
    let r = http.get(format!("{base}/dashboard/overview")).bearer_auth(CLIENT).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let r = http.get(format!("{base}/dashboard/overview")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 303, "not even the admin key outside the form");

    assert_eq!(
        http.post(format!("{base}/dashboard/logout")).header("cookie", &cookie).send().await.unwrap().status(),
        403,
        "log-out is a same-origin post too"
    );
    let r = http
        .post(format!("{base}/dashboard/logout"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(get("/dashboard/overview").await.unwrap().status(), 303, "the old cookie is dead");
    assert_eq!(run.state.dashboard.sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_keys_the_dashboard_is_off() {
    let dir = TempDir::new("off");
    let run = start(&config(&format!("sqlite:{}", dir.0.join("ledger.db").display()), false)).await;
    let http = http();
    for path in ["/dashboard", "/dashboard/overview", "/dashboard/login"] {
        let r = http.get(format!("{}{path}", run.url)).send().await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert!(r.text().await.unwrap().contains("set server.admin_keys"), "{path}");
    }
    let r = form(&http, &run.url, CLIENT).header("sec-fetch-site", "same-origin").send().await.unwrap();
    assert_eq!(r.status(), 403);
    // The gateway's own routes are as they were.
    assert_eq!(http.get(format!("{}/healthz", run.url)).send().await.unwrap().status(), 200);
}
