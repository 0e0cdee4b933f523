//! The layering check: no import circles between the crate's modules.
//!
//! Reads every source file under `src/` (test code left out: `tests.rs` files and everything
//! from a file's first `#[cfg(test)]` on, where this crate keeps its test modules), finds
//! each path into the crate (`crate::a::b`, in `use` lines and in code), and draws an edge
//! from the file's top-level module to the top-level module the path enters (`src/x.rs` and
//! everything under `src/x/` are module `x`). Any cycle fails the test, named module by
//! module: data flows one way (edge → dialect → canonical → exchange → provider → meter →
//! ledger), and a lower module never imports a higher one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/a.rs` and `src/a/...` -> `a`; `lib.rs` and `main.rs` -> "".
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let first = rel.iter().next().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    if matches!(first.as_str(), "lib" | "main") {
        return String::new();
    }
    first
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
}

/// The code of a file before its test modules, without comments.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
    before_tests
        .lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::x::y::...` path in `code`, as its segments (braces and globs stop it).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let boundary = rest[..at].chars().last().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = &rest[at + "crate::".len()..];
        if !boundary {
            continue;
        }
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
        let segments: Vec<String> = rest[..end].split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
        if !segments.is_empty() {
            out.push(segments);
        }
        // `crate::a::{b, c::d}`: each item in the braces is a path under `a`.
        if rest[end..].starts_with('{') {
            let close = rest[end..].find('}').map_or(rest.len(), |c| end + c);
            let prefix: Vec<String> = rest[..end].split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
            for item in rest[end + 1..close].split(',') {
                let item = item.trim().split(" as ").next().unwrap_or("").trim();
                let mut path = prefix.clone();
                path.extend(item.split("::").filter(|s| !s.is_empty() && *s != "self").map(str::to_string));
                out.push(path);
            }
        }
    }
    out
}

/// The module graph: top-level module -> the other top-level modules it reaches into.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut list = Vec::new();
    files(&src, &mut list);
    let modules: BTreeSet<String> = list.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &list {
        let from = module_of(&src, file);
        if from.is_empty() {
            // The crate root and the binary declare or call everything.
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&code(&text)) {
            let target = &path[0];
            if target == &from || !modules.contains(target) {
                continue;
            }
            edges.entry(from.clone()).or_default().insert(target.clone());
        }
    }
    edges
}

/// A cycle through `start`, if there is one.
fn cycle_from(start: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn walk(
        at: &str,
        start: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in edges.get(at).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(next, start, edges, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    walk(start, start, edges, &mut path, &mut seen).then_some(path)
}

#[test]
fn no_import_circles_between_modules() {
    let edges = graph();
    assert!(edges.len() > 10, "the module graph looks empty: {edges:?}");
    let mut cycles = BTreeSet::new();
    for start in edges.keys() {
        if let Some(mut c) = cycle_from(start, &edges) {
            // One spelling per cycle: rotated to start at its smallest module.
            let min = c.iter().enumerate().min_by_key(|(_, m)| (*m).clone()).map_or(0, |(i, _)| i);
            c.rotate_left(min);
            cycles.insert(c.join(" -> "));
        }
    }
    assert!(cycles.is_empty(), "import circles (each closes back on its first module):\n{}", {
        let v: Vec<String> = cycles.into_iter().collect();
        v.join("\n")
    });
}

#[test]
fn the_check_sees_paths_in_braces_and_code() {
    let paths = crate_paths("use crate::a::{b::C, d};\nlet x = crate::e::f(1); notcrate::g;");
    assert_eq!(paths, [vec!["a"], vec!["a", "b", "C"], vec!["a", "d"], vec!["e", "f"]]);
    assert_eq!(code("use crate::x; // crate::y\n#[cfg(test)]\nuse crate::z;"), "use crate::x; ");
}
