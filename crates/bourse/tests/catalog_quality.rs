//! `bourse catalog` through the real binary: a shipped chat model the catalog leaves
//! unrated shows why in JSON, CSV and the table, and a user catalog file whose chat entry
//! has neither `quality` nor `quality_unrated` still loads (shown as plain "unrated").

use std::path::PathBuf;
use std::process::Command;

/// The binary, run where no `bourse.toml` and no `BOURSE_CONFIG` can change the catalog.
fn bourse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bourse"));
    c.env_remove("BOURSE_CONFIG").current_dir(std::env::temp_dir());
    c
}

fn run(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A file of its own under the temp dir, removed at the end.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let p = std::env::temp_dir().join(format!(
            "bourse-catalog-quality-{}-{}-{name}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&p, text).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn shipped_unrated_models_show_their_reason_in_every_format() {
    let json = run(bourse().args(["catalog", "--format", "json", "--search", "qianfan/ernie-5.0"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let m = &v["models"][0];
    assert_eq!(m["id"], "qianfan/ernie-5.0");
    assert_eq!((m["quality"].clone(), m["tier"].clone()), (serde_json::Value::Null, "unrated".into()));
    let why = m["quality_unrated"].as_str().unwrap();
    assert!(why.contains("no score") && why.contains("2026-07-20"), "{why}");

    let csv = run(bourse().args(["catalog", "--format", "csv", "--search", "qianfan/ernie-5.0"]));
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().contains(",tier,quality_unrated,"), "{csv}");
    let row = lines.next().unwrap();
    assert!(row.starts_with("qianfan/ernie-5.0,chat,") && row.contains(",unrated,\""), "{row}");

    let table = run(bourse().args(["catalog", "--search", "qianfan/ernie-5.0"]));
    let row = table.lines().find(|l| l.starts_with("qianfan/ernie-5.0 ")).unwrap();
    assert!(row.contains(" unrated* "), "{table}");
    assert!(table.contains(&format!("  qianfan/ernie-5.0: {why}\n")), "{table}");

    // A rated model carries no reason and no mark.
    let table = run(bourse().args(["catalog", "--search", "openai/gpt-5.5"]));
    assert!(!table.contains("unrated"), "{table}");
}

#[test]
fn a_user_catalog_file_without_ratings_still_loads() {
    let catalog = TempFile::new(
        "models.toml",
        "[meta]\nname = \"mine\"\ndate = \"2026-07-20\"\n\n[[model]]\nprovider = \"openai\"\nmodel = \"house\"\ninput = 1\noutput = 2\n",
    );
    let config = TempFile::new(
        "bourse.toml",
        &format!("[catalog]\nfile = {:?}\nreference = \"openai/house\"\n", catalog.0.display().to_string()),
    );
    let table = run(bourse().args(["catalog", "--config"]).arg(&config.0));
    let row = table.lines().find(|l| l.starts_with("openai/house ")).unwrap();
    assert!(row.contains(" unrated") && !row.contains("unrated*"), "{table}");
    assert!(!table.contains("with the catalog's reason"), "{table}");
}
