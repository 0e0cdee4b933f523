//! Replays every committed fuzz input through the checks the fuzz targets run: the minimized
//! corpora (`fuzz/corpus/<target>/`) and the inputs that once failed
//! (`fuzz/regressions/<target>/`). The fuzz crate needs nightly and cargo-fuzz; this runs the
//! same checks (its `src/lib.rs`, included here as a module) on stable, with the other tests,
//! so a change that breaks a property on a known input fails CI. docs/fuzzing.md says how to
//! fuzz for new inputs.

#[path = "../../../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

/// Every file under `fuzz/{corpus,regressions}/<target>/`, with its path.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            out.push((path, data));
        }
    }
    out
}

/// Runs `check` on every input of `target`; fails if there is none, so a renamed target
/// cannot pass by checking nothing.
fn replay(target: &str, check: fn(&[u8])) {
    let all = inputs(target);
    assert!(!all.is_empty(), "no corpus for {target}");
    for (path, data) in all {
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
    }
}

/// The differential targets' corpora reach every verdict of both sides, so what the checks
/// compare is not only refusals (or only acceptances).
#[test]
fn corpora_reach_every_verdict() {
    use bourse::provider::http::wire::{parse_head, Parsed};
    let heads: Vec<_> = inputs("wire_head").into_iter().map(|(_, d)| parse_head(&d)).collect();
    assert!(heads.iter().any(|h| matches!(h, Ok(Parsed::Head(_)))), "no head");
    assert!(heads.iter().any(|h| matches!(h, Ok(Parsed::Interim(_)))), "no interim head");
    assert!(heads.iter().any(|h| matches!(h, Ok(Parsed::Partial))), "no partial head");
    assert!(heads.iter().any(|h| h.is_err()), "no refused head");

    let bodies: Vec<_> = inputs("wire_chunked")
        .into_iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(_, d)| checks::reference_chunked(&d[1..]))
        .collect();
    for (name, reached) in [
        ("done", bodies.iter().any(|r| matches!(r, checks::Reference::Done { .. }))),
        ("partial", bodies.iter().any(|r| matches!(r, checks::Reference::Partial))),
        ("invalid", bodies.iter().any(|r| matches!(r, checks::Reference::Invalid))),
    ] {
        assert!(reached, "no chunked body the reference finds {name}");
    }

    let scanned: Vec<bool> = inputs("json_scan")
        .into_iter()
        .map(|(_, d)| std::str::from_utf8(&d).is_ok_and(|t| bourse::dialect::scan::members(t, |_, _| {}).is_ok()))
        .collect();
    assert!(scanned.contains(&true) && scanned.contains(&false), "the scanner accepts all or nothing");

    let requests: Vec<_> = inputs("openai_request")
        .into_iter()
        .map(|(_, d)| bourse::dialect::openai::parse_chat_request(&d.into()).map(|r| r.raw_body().is_some()))
        .collect();
    assert!(requests.iter().any(|r| matches!(r, Ok(true))), "no request on the fast path");
    assert!(requests.iter().any(|r| matches!(r, Ok(false))), "no request on the map walk");
    assert!(requests.iter().any(|r| r.is_err()), "no refused request");
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
