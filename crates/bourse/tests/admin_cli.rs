//! `bourse tenants` and `bourse keys` through the real binary, against a SQLite store.

use std::path::PathBuf;
use std::process::{Command, Output};

struct Setup {
    dir: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let dir =
            std::env::temp_dir().join(format!("bourse-admin-cli-{tag}-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("bourse.toml");
        let text = format!(
            "[storage]\nurl = \"sqlite:{}\"\n[policies.eu]\ndeny_hosting = [\"US\"]\n[routes.cheap]\nmin_quality = \"basic\"\n",
            dir.join("store.db").display()
        );
        std::fs::write(&config, text).unwrap();
        Setup { dir, config }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bourse"));
        c.args(args).arg("--config").arg(&self.config).env_remove("BOURSE_CONFIG").env("USER", "tester");
        c.current_dir(&self.dir).output().unwrap()
    }

    /// Runs and expects success; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stderr).unwrap()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn last_line(s: &str) -> &str {
    s.trim_end().lines().last().unwrap()
}

#[test]
fn tenants_and_keys_round_trip() {
    let s = Setup::new("round-trip");
    s.ok(&["tenants", "create", "acme", "--budget-day", "5", "--rpm", "60", "--policy", "eu"]);
    s.ok(&["tenants", "create", "beta", "--downgrade-below", "20%", "--downgrade-quality", "adequate"]);
    assert!(s.fails(&["tenants", "create", "acme"]).contains("already exists"));
    assert!(s.fails(&["tenants", "create", "x", "--policy", "nope"]).contains("--policy"));
    assert!(s.fails(&["tenants", "create", "x", "--budget-day", "-3"]).contains("--budget-day"));

    let list: serde_json::Value = serde_json::from_str(&s.ok(&["tenants", "list", "--format", "json"])).unwrap();
    assert_eq!(list["data"][0]["budget_day_usd"], "5.00");
    assert_eq!(list["data"][1]["downgrade"]["min_quality"], "adequate");
    s.ok(&["tenants", "set", "acme", "--budget-day", "none", "--tpm", "1000"]);
    let table = s.ok(&["tenants", "list"]);
    assert!(table.contains("acme") && table.contains("1000"), "{table}");

    let created = s.ok(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--name",
        "ci",
        "--budget-total",
        "0.45",
        "--routes",
        "cheap",
        "--expires",
        "30d",
    ]);
    let secret = last_line(&created).to_string();
    assert!(secret.starts_with("sk-bourse-") && secret.len() == 42, "{created}");
    let as_json: serde_json::Value =
        serde_json::from_str(&s.ok(&["keys", "create", "--tenant", "beta", "--format", "json"])).unwrap();
    assert!(as_json["key"].as_str().unwrap().starts_with("sk-bourse-"));
    let other = as_json["id"].as_str().unwrap().to_string();

    let listed = s.ok(&["keys", "list", "--format", "json"]);
    let table = s.ok(&["keys", "list"]);
    for out in [&listed, &table] {
        assert!(!out.contains(&secret) && !out.contains(&secret[10..]), "the secret leaked: {out}");
    }
    let keys: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let first = &keys["data"][0];
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!((first["state"].as_str(), first["budget_total_usd"].as_str()), (Some("active"), Some("0.45")));
    assert!(first.get("secret_sha256").is_none() && first.get("key").is_none());
    let only: serde_json::Value =
        serde_json::from_str(&s.ok(&["keys", "list", "--tenant", "beta", "--format", "json"])).unwrap();
    assert_eq!(only["data"].as_array().unwrap().len(), 1);

    let rotated = s.ok(&["keys", "rotate", &id]);
    let fresh = last_line(&rotated);
    assert!(fresh.starts_with("sk-bourse-") && fresh != secret, "{rotated}");
    s.ok(&["keys", "revoke", &id]);
    let keys: serde_json::Value =
        serde_json::from_str(&s.ok(&["keys", "list", "--tenant", "acme", "--format", "json"])).unwrap();
    assert_eq!(keys["data"][0]["state"], "revoked");
    assert!(s.fails(&["keys", "rotate", &id]).contains("revoked"));

    assert!(s.fails(&["tenants", "delete", "beta"]).contains("revoke"));
    s.ok(&["keys", "revoke", &other]);
    s.ok(&["tenants", "delete", "beta"]);
    assert!(s.fails(&["keys", "create", "--tenant", "beta"]).contains("no tenant"));
}

#[test]
fn a_config_without_a_store_is_refused() {
    let s = Setup::new("no-store");
    std::fs::write(&s.config, "[storage]\nledger = false\n").unwrap();
    assert!(s.fails(&["tenants", "list"]).contains("store is off"));
}
