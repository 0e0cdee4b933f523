//! Replays every committed fuzz input through the checks the fuzz targets run: the minimized
//! corpora (`fuzz/corpus/<target>/`) and the inputs that once failed
//! (`fuzz/regressions/<target>/`). The fuzz crate needs nightly and cargo-fuzz; this runs the
//! same checks (its `src/lib.rs`, included here as a module) on stable, with the other tests,
//! so a change that breaks a property on a known input fails CI. docs/fuzzing.md says how to
//! fuzz for new inputs.

#[path = "../../../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

/// Runs `check` on every file under `fuzz/{corpus,regressions}/<target>/`; fails if the
/// corpus is missing or empty, so a renamed target cannot pass by checking nothing.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut seen = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its check", path.display());
            seen += 1;
        }
    }
    assert!(seen > 0, "no corpus for {target}");
}

#[test]
fn wire_head() {
    replay("wire_head", checks::wire_head);
}

#[test]
fn wire_chunked() {
    replay("wire_chunked", checks::wire_chunked);
}

#[test]
fn json_scan() {
    replay("json_scan", checks::json_scan);
}

#[test]
fn openai_request() {
    replay("openai_request", checks::openai_request);
}

#[test]
fn anthropic_request() {
    replay("anthropic_request", checks::anthropic_request);
}

#[test]
fn sse() {
    replay("sse", checks::sse);
}

#[test]
fn config() {
    replay("config", checks::config);
}

#[test]
fn catalog() {
    replay("catalog", checks::catalog);
}
