//! Everything Bourse renders for a terminal: the catalog (`bourse catalog`), ledger reports
//! (`bourse report`), quotes (`bourse quote`) and tenants and keys (`bourse tenants`, `bourse keys`), as aligned tables, JSON or CSV. The data
//! comes from the catalog, the ledger's queries and the router; only formatting lives here.

pub mod admin;
pub mod catalog;
pub mod quote;
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
