//! A PostgreSQL server for tests, and a fresh database per test so tests run in parallel.
//!
//! If `BOURSE_TEST_PG_URL` is set (any database on a server where that user may
//! `CREATE DATABASE`), it is used. Otherwise each test binary starts one throwaway cluster
//! on first use (a `OnceLock`): `initdb` into a temp dir (as user `postgres` via `runuser`
//! when running as root, since initdb refuses root), then `pg_ctl start` on a free
//! 127.0.0.1 port with its Unix socket in that dir, fsync off (test data is disposable).
//! Rust runs no destructors for statics at exit, so stopping is left to a tiny watchdog
//! shell started alongside: it polls the test process and, once it is gone (however it
//! ended, even SIGKILL), runs `pg_ctl stop -m immediate` and removes the temp dir.
//! Only binaries from `/usr/lib/postgresql/*/bin` are used (what Debian's package installs;
//! `scripts/pg` installs it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use tokio_postgres::NoTls;

const MISSING: &str =
    "PostgreSQL is not installed: run ./scripts/test (it installs postgresql) or set BOURSE_TEST_PG_URL";

/// A database created for one test.
pub struct Database {
    pub url: String,
    name: String,
    admin_url: String,
}

impl Database {
    /// Creates an empty database whose name includes `tag` (the test's name).
    pub async fn create(tag: &str) -> Database {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let admin_url = tokio::task::spawn_blocking(admin_url).await.unwrap();
        let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(32).collect();
        let name = format!("bourse_test_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), tag)
            .to_ascii_lowercase();
        let client = connect(&admin_url).await;
        // Identifiers cannot be bound parameters; the name is built above from [a-z0-9_].
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        Database { url: with_database(&admin_url, &name), name, admin_url }
    }

    /// Drops the database (call after everything using it is dropped). A failed test
    /// skips this; its database goes with the throwaway cluster, or stays on a
    /// `BOURSE_TEST_PG_URL` server for inspection.
    pub async fn drop(self) {
        let client = connect(&self.admin_url).await;
        // WITH (FORCE) ends connections a just-dropped client has not closed yet (PG 13+).
        if client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await.is_err() {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {}", self.name)).await;
        }
    }

    /// A raw connection to this database, for tests that tamper with the store.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("cannot connect to test PostgreSQL: {e}"));
    tokio::spawn(conn);
    client
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").expect("BOURSE_TEST_PG_URL must be a postgres:// URL") + 3;
    let authority_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The URL of a database we may create databases from (blocking: may start a cluster).
fn admin_url() -> String {
    static SERVER: OnceLock<String> = OnceLock::new();
    SERVER
        .get_or_init(|| match std::env::var("BOURSE_TEST_PG_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => start_cluster(),
        })
        .clone()
}

fn start_cluster() -> String {
    let bin = find_bin().unwrap_or_else(|| panic!("{MISSING}"));
    let root = is_root();
    // As root the cluster runs as `postgres`, which must reach the dir: /tmp always can,
    // a TMPDIR under /root could not.
    let base = if root { PathBuf::from("/tmp") } else { std::env::temp_dir() };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let dir = base.join(format!("bourse-pg-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    if root {
        run(Command::new("chown").arg("postgres:postgres").arg(&dir), "chown");
    }
    let data = dir.join("data");
    run(
        pg(root, &bin.join("initdb"), &dir).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]),
        "initdb",
    );
    watchdog(root, &bin.join("pg_ctl"), &data, &dir);
    let log = dir.join("server.log");
    // The port is free when probed but could be taken before postgres binds it: retry.
    for _ in 0..5 {
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            dir.display()
        );
        let status = pg(root, &bin.join("pg_ctl"), &dir)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        if status.success() {
            eprintln!("test PostgreSQL on 127.0.0.1:{port} in {}", dir.display());
            return format!("postgres://postgres@127.0.0.1:{port}/postgres");
        }
    }
    panic!("pg_ctl start failed; server log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding initdb and pg_ctl.
fn find_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, bin)| bin)
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A PostgreSQL tool, run as `postgres` when we are root, from a dir it can read.
fn pg(root: bool, program: &Path, cwd: &Path) -> Command {
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir(cwd).stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Stops the cluster and removes its dir once this process has exited. Detached, with no
/// inherited stdio, so it never holds a pipe open for whoever ran the tests.
// Never waited on by design: it must outlive this process (and so cannot become our zombie).
#[allow(clippy::zombie_processes)]
fn watchdog(root: bool, pg_ctl: &Path, data: &Path, dir: &Path) {
    const SCRIPT: &str = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
        if [ "$5" = 1 ]; then
            runuser -u postgres -- "$2" -D "$3" -m immediate stop
        else
            "$2" -D "$3" -m immediate stop
        fi
        rm -rf "$4"
    "#;
    Command::new("sh")
        .args(["-c", SCRIPT, "bourse-pg-watchdog"])
        .arg(std::process::id().to_string())
        .arg(pg_ctl)
        .arg(data)
        .arg(dir)
        .arg(if root { "1" } else { "0" })
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
}
