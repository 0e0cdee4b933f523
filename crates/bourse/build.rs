//! Tells the tests whether the team's shared data sits beside the repository
//! (`../shared/`, with recorded provider streams and LiteLLM's price file). Tests that read it
//! are marked `#[cfg_attr(not(shared_data), ignore = "...")]`, so a fresh clone without it
//! reports them as ignored, with the reason, instead of passing them without checking anything.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(shared_data)");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let shared = Path::new(&manifest).join("../../../shared");
    if shared.join("fixtures").is_dir() && shared.join("catalog").is_dir() {
        println!("cargo::rustc-cfg=shared_data");
    }
    // Re-run when the directory appears or goes away.
    println!("cargo::rerun-if-changed={}", shared.display());
    println!("cargo::rerun-if-changed=build.rs");
}
