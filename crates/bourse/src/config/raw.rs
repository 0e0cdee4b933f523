//! The TOML config file exactly as written: serde types that reject unknown keys.
//!
//! Nothing here is trusted yet; `config::Config::from_raw` validates it once at start-up.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub catalog: RawCatalogSection,
    /// Price and fact overrides or additions, keyed by `provider/model`.
    #[serde(default)]
    pub models: BTreeMap<String, crate::catalog::RawModel>,
    #[serde(default)]
    pub storage: RawStorage,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalogSection {
    /// A catalog file that replaces the shipped one.
    pub file: Option<String>,
    /// The premium model savings are measured against.
    pub reference: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// `sqlite:PATH` or `postgres://...`; default `sqlite:bourse.db` next to the config file.
    pub url: Option<String>,
    /// Set false to run without a ledger (benchmarks, stateless edge nodes).
    pub ledger: Option<bool>,
    /// Rows the background writer may hold before the full-queue policy applies.
    pub queue: Option<usize>,
    /// "block" (wait briefly, then drop and count) or "drop" (drop and count at once).
    pub on_full: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: Option<u64>,
    /// How long in-flight requests may run after SIGTERM, e.g. "30s".
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    pub api_key: Option<String>,
    pub base_url: Option<String>,
    pub models: Option<Vec<String>>,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub total_timeout: Option<String>,
}
