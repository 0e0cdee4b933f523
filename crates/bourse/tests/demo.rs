//! `bourse demo` through the real binary: a short workload runs end to end, the report it
//! prints equals its ledger's rows to the nano-dollar, every block says "simulated", the
//! "no CN hosting" route kept off CN hosts, nothing listens beyond 127.0.0.1 (and no request
//! goes to a proxy the environment names), and the gateway serves, dashboard included, until
//! SIGINT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The binary, with a proxy in the environment that refuses every connection: a simulated
/// request sent to it would fail, so a clean run shows the demo's traffic stayed on loopback.
fn bourse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bourse"));
    for var in ["NO_PROXY", "no_proxy", "http_proxy", "https_proxy", "all_proxy", "BOURSE_CONFIG"] {
        c.env_remove(var);
    }
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        c.env(var, "http://127.0.0.1:9");
    }
    c.current_dir(std::env::temp_dir());
    c.env("RUST_LOG", "bourse=info").kill_on_drop(true);
    c
}

/// A directory of its own for one test's ledger, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("bourse-demo-test-{name}-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos(usd: &str) -> i64 {
    bourse::tenancy::parse_usd(usd.trim_start_matches('$')).unwrap_or_else(|e| panic!("{usd}: {e}"))
}

/// One row of a `bourse report` table as the demo prints it.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    attempts: i64,
    input: i64,
    output: i64,
    cost: i64,
    reference: i64,
    saved: i64,
    errors: i64,
}

/// The rows of the table under the line starting with `title`, by group (TOTAL included).
fn table(out: &str, title: &str) -> BTreeMap<String, Row> {
    let mut lines = out.lines().skip_while(|l| !l.starts_with(title)).skip(1);
    let header: Vec<&str> =
        lines.next().unwrap_or_else(|| panic!("no table '{title}' in:\n{out}")).split_whitespace().collect();
    assert_eq!(header[0], "group", "{out}");
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}"));
    let mut rows = BTreeMap::new();
    for line in lines.take_while(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), header.len(), "{line}");
        let int = |name: &str| f[col(name)].parse::<i64>().unwrap();
        rows.insert(
            f[0].to_string(),
            Row {
                attempts: int("attempts"),
                input: int("input"),
                output: int("output"),
                cost: nanos(f[col("cost_usd")]),
                reference: nanos(f[col("reference_usd")]),
                saved: nanos(f[col("saved_usd")]),
                errors: int("errors"),
            },
        );
    }
    rows
}

/// The value after `label` on the report's summary line that starts with it.
fn summary<'a>(out: &'a str, label: &str) -> &'a str {
    let line =
        out.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no '{label}' in:\n{out}"));
    line.trim_start()[label.len()..].split_whitespace().next().unwrap()
}

/// The same rows, added up from the ledger file's raw rows.
fn ledger_rows(path: &Path) -> BTreeMap<String, Row> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT provider || '/' || model, COUNT(*), SUM(input_uncached), SUM(output), SUM(cost_nanos), \
             SUM(reference_cost_nanos), COUNT(error_kind) FROM ledger GROUP BY 1",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let (cost, reference): (i64, i64) = (r.get(4)?, r.get(5)?);
            Ok((
                r.get::<_, String>(0)?,
                Row {
                    attempts: r.get(1)?,
                    input: r.get(2)?,
                    output: r.get(3)?,
                    cost,
                    reference,
                    saved: reference - cost,
                    errors: r.get(6)?,
                },
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn scalar(path: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn a_short_demo_reports_exactly_what_its_ledger_holds() {
    let dir = TempDir::new("report");
    let db = dir.0.join("ledger.db");
    let run = bourse()
        .args(["demo", "--requests", "120", "--no-serve", "--listen", "127.0.0.1:0", "--ledger"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await.expect("the demo finished").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("simulated workload: 120 of 120 requests answered"), "{stderr}");

    // Labelled: the banner, the report and each table, and every provider it names.
    assert!(stdout.starts_with("bourse demo: SIMULATED providers, no API key"), "{stdout}");
    assert!(stdout.contains("bourse demo report (SIMULATED providers"), "{stdout}");
    let by_model = table(&stdout, "model mix (simulated");
    let by_provider = table(&stdout, "by provider (simulated");

    // The model mix equals the ledger's rows, model by model, to the nano-dollar.
    let ledger = ledger_rows(&db);
    assert!(ledger.len() >= 4, "a mix of models: {ledger:?}");
    for group in ledger.keys() {
        let provider = group.split('/').next().unwrap();
        assert!(provider.ends_with("-sim"), "{group}");
        assert!(by_provider.contains_key(provider), "{provider}");
    }
    let printed_total = by_model.get("TOTAL").map(|r| (r.attempts, r.cost, r.reference, r.errors));
    let mut printed = by_model;
    printed.remove("TOTAL");
    assert_eq!(printed, ledger, "the report's model mix against the ledger's rows");

    // And so do its totals.
    let sum = |f: fn(&Row) -> i64| ledger.values().map(f).sum::<i64>();
    let (cost, reference) = (sum(|r| r.cost), sum(|r| r.reference));
    assert!(cost > 0 && reference > cost, "cost {cost}, reference {reference}");
    assert_eq!(printed_total, Some((sum(|r| r.attempts), cost, reference, sum(|r| r.errors))));
    assert_eq!(nanos(summary(&stdout, "spend")), cost);
    assert_eq!(nanos(summary(&stdout, "reference")), reference);
    assert_eq!(nanos(summary(&stdout, "saved")), reference - cost);
    assert_eq!(scalar(&db, "SELECT COUNT(DISTINCT request_id) FROM ledger"), 120);
    assert!(stdout.contains("requests   120 sent, 120 in the ledger"), "{stdout}");
    // What the answers told their clients adds up to the same.
    let answers = stdout.lines().find(|l| l.trim_start().starts_with("answers")).unwrap();
    assert!(answers.contains(&format!("${}: the ledger's spend", bourse::meter::Cost(cost).usd())), "{answers}");

    // deepseek-sim's first two answers are 429s: two attempts failed, and their requests
    // were answered by the next candidate.
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM ledger WHERE error_kind IS NOT NULL"), 2);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM ledger WHERE status = 429 AND provider = 'deepseek-sim'"), 2);
    assert_eq!(
        scalar(&db, "SELECT COUNT(DISTINCT request_id) FROM ledger WHERE error_kind IS NULL AND status = 200"),
        120
    );
    // The route that denies CN hosting never reached a CN-hosted simulator; auto did.
    let not_cn = "FROM ledger WHERE route_reason LIKE 'route=strong-not-cn %'";
    assert!(scalar(&db, &format!("SELECT COUNT(*) {not_cn}")) > 5);
    assert_eq!(scalar(&db, &format!("SELECT COUNT(*) {not_cn} AND provider IN ('deepseek-sim', 'zhipu-sim')")), 0);
    assert!(
        scalar(&db, "SELECT COUNT(*) FROM ledger WHERE route_reason LIKE 'route=auto %' AND provider = 'deepseek-sim'")
            > 0
    );

    // `bourse report --ledger` reads the same file and says the same.
    let report = bourse()
        .args(["report", "--since", "1d", "--by", "none", "--format", "json", "--ledger"])
        .arg(&db)
        .output()
        .await
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(nanos(json["total"]["cost_usd"].as_str().unwrap()), cost, "{json}");
    assert_eq!(nanos(json["total"]["reference_cost_usd"].as_str().unwrap()), reference, "{json}");
}

/// Local addresses of the TCP sockets `pid` is listening on, from /proc.
fn listening(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, rem_address, st (0A: LISTEN), ..., inode (the tenth field).
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let (ip, port) = f[1].split_once(':').unwrap();
                let port = u16::from_str_radix(port, 16).unwrap();
                let ip = if v6 {
                    format!("[{ip}]")
                } else {
                    let n = u32::from_str_radix(ip, 16).unwrap();
                    std::net::Ipv4Addr::from(n.swap_bytes()).to_string()
                };
                out.push(format!("{ip}:{port}"));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_demo_serves_on_loopback_with_its_admin_key_and_dashboard_until_interrupted() {
    let dir = TempDir::new("serve");
    let mut child = bourse()
        .args(["demo", "--requests", "30", "--listen", "127.0.0.1:0", "--ledger"])
        .arg(dir.0.join("ledger.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut gateway, mut key, mut seen) = (String::new(), String::new(), String::new());
    tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["gateway", url, ..] => gateway = url.trim_end_matches("/v1").to_string(),
                ["admin", "key", k, ..] => key = k.to_string(),
                _ => {}
            }
            if !gateway.is_empty() && !key.is_empty() {
                return;
            }
        }
        panic!("the demo stopped before saying where it serves");
    })
    .await
    .expect("the demo served within 90 s");
    assert!(seen.contains("\nserving until Ctrl-C (SIMULATED providers stay up):\n"), "{seen}");
    assert!(seen.contains(&format!("dashboard  {gateway}/dashboard")), "{seen}");
    assert!(seen.contains(&format!("metrics    {gateway}/metrics")), "{seen}");
    assert!(gateway.starts_with("http://127.0.0.1:"), "{gateway}");
    assert!(key.starts_with("bourse-demo-admin-") && key.len() == "bourse-demo-admin-".len() + 32, "{key}");

    // Twelve simulators and the gateway, all on 127.0.0.1.
    if std::path::Path::new("/proc/net/tcp").exists() {
        let addrs = listening(pid);
        assert!(addrs.len() >= 13, "{addrs:?}");
        assert!(addrs.iter().all(|a| a.starts_with("127.0.0.1:")), "{addrs:?}");
        assert!(addrs.contains(&gateway["http://".len()..].to_string()), "{gateway} not in {addrs:?}");
    } else {
        eprintln!("skipped: the listening-socket check needs Linux's /proc/net/tcp");
    }

    // It serves: health, the admin API with the printed key (and not without), a request.
    let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    assert_eq!(http.get(format!("{gateway}/healthz")).send().await.unwrap().status(), 200);
    let admin = format!("{gateway}/admin/v1/tenants");
    assert_eq!(http.get(&admin).bearer_auth(&key).send().await.unwrap().status(), 200);
    assert_eq!(http.get(&admin).bearer_auth("bourse-demo-admin-wrong").send().await.unwrap().status(), 401);
    let resp = http
        .post(format!("{gateway}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model": "strong-not-cn", "messages": [{"role": "user", "content": "hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let provider = resp.headers()["x-bourse-provider"].to_str().unwrap().to_string();
    assert!(provider.ends_with("-sim") && provider != "deepseek-sim" && provider != "zhipu-sim", "{provider}");

    // /metrics counts the workload's 30 requests and this one, and their cost as the ledger
    // holds it (checked once the ledger is flushed, below).
    let metrics = http.get(format!("{gateway}/metrics")).send().await.unwrap().text().await.unwrap();
    let sum = |name: &str, with: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(with))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(sum("bourse_requests_total", ""), 31.0, "{metrics}");
    assert_eq!(sum("bourse_requests_total", r#"status_class="2xx""#), 31.0, "{metrics}");
    let metered_usd = sum("bourse_cost_usd_total", "");

    // The dashboard opens with the printed key and shows the workload's data.
    let login = http
        .post(format!("{gateway}/dashboard/login"))
        .header("origin", gateway.as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let page =
        http.get(format!("{gateway}/dashboard/models?window=1h")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("deepinfra-sim/openai/gpt-oss-120b") && html.contains("deepseek-sim/deepseek-chat"),
        "{html}"
    );

    // Ctrl-C stops it cleanly.
    let mut stderr = child.stderr.take().unwrap();
    assert!(std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("stopped on SIGINT").unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err).await.unwrap();
    assert!(status.success(), "{status:?}\n{err}");
    assert!(err.contains("ledger flushed") && err.contains("stopped"), "{err}");
    let cost = scalar(&dir.0.join("ledger.db"), "SELECT SUM(cost_nanos) FROM ledger");
    assert!(
        cost > 0 && (metered_usd * 1e9 - cost as f64).abs() < 1.0,
        "metrics {metered_usd} USD, ledger {cost} nano-USD"
    );
}
