//! Tells the tests what sits beside the repository and on this machine:
//! - `shared_data`: the team's shared data (`../shared/`, with recorded provider streams and
//!   LiteLLM's price file). Tests that read it are marked
//!   `#[cfg_attr(not(shared_data), ignore = "...")]`.
//! - `chromium`: a Chromium for the dashboard tests (`BOURSE_CHROMIUM`, else Debian's
//!   `/usr/bin/chromium`, which `scripts/chromium` installs), marked the same way.
//!
//! A fresh clone without them reports those tests as ignored, with the reason, instead of
//! passing them without checking anything.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(shared_data)");
    println!("cargo::rustc-check-cfg=cfg(chromium)");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let shared = Path::new(&manifest).join("../../../shared");
    if shared.join("fixtures").is_dir() && shared.join("catalog").is_dir() {
        println!("cargo::rustc-cfg=shared_data");
    }
    // Re-run when the directory appears or goes away.
    println!("cargo::rerun-if-changed={}", shared.display());
    let chromium = std::env::var_os("BOURSE_CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into());
    if Path::new(&chromium).is_file() {
        println!("cargo::rustc-cfg=chromium");
        println!("cargo::rerun-if-changed={}", Path::new(&chromium).display());
    } else if let Some(dir) = Path::new(&chromium).parent().filter(|d| d.is_dir()) {
        // Its directory changes when it is installed.
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    println!("cargo::rerun-if-env-changed=BOURSE_CHROMIUM");
    println!("cargo::rerun-if-changed=build.rs");
}
