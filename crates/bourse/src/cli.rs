//! Everything Bourse renders for a terminal: the catalog (`bourse catalog`), ledger reports
//! (`bourse report`), replays (`bourse replay`), quotes (`bourse quote`), quality evidence (`bourse evals`), tenants and
//! keys (`bourse tenants`, `bourse keys`) and the demo's banner, progress bar and report (`bourse demo`), as aligned tables,
//! JSON or CSV. The data comes from the catalog, the ledger's queries and the router; only
//! formatting lives here.

pub mod admin;
pub mod catalog;
pub mod demo;
pub mod evals;
pub mod quote;
pub mod replay;
pub mod report;

/// Output format of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
