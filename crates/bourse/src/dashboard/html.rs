//! HTML text: escaping, number and money formats, tables and the page shell every dashboard
//! page shares.
//!
//! Every string that did not come from this module's own literals goes through [`esc`]
//! (model and provider names, tenant and key ids, route names, policy names, error kinds):
//! they come from the ledger, the catalog and the config, and a model name can be anything a
//! client or an operator typed. `esc` covers text and quoted attribute values alike.
//! Money is shown from integer nano-USD exactly ([`usd`]); charts may place it with floats,
//! but every figure a reader can copy is exact.

use crate::meter::Cost;
use std::fmt::{self, Write as _};

/// HTML-escaped text: `& < > " '` become entities, so the value is inert in text and in
/// attribute values quoted with either quote.
pub struct Esc<'a>(pub &'a str);

pub fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, b) in self.0.bytes().enumerate() {
            let rep = match b {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(rep)?;
            last = i + 1;
        }
        f.write_str(&self.0[last..])
    }
}

/// USD from nano-USD, exactly: the nine-decimal figure with trailing zeros dropped down to
/// two decimals (`$1234.50`, `$0.000012345`), with a thousands separator.
pub fn usd(nanos: i64) -> String {
    let exact = Cost(nanos).usd();
    let (sign, digits) = match exact.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", exact.as_str()),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "000000000"));
    let trimmed = frac.trim_end_matches('0');
    let frac = if trimmed.len() >= 2 { trimmed } else { frac.get(..2).unwrap_or("00") };
    format!("{sign}${}.{frac}", thousands_str(int))
}

/// USD from nano-USD rounded half up to the cent, for headline figures (`$1,234.57`); the
/// exact figure goes beside it ([`usd`]).
pub fn usd_cents(nanos: i64) -> String {
    let cents = (i128::from(nanos) + if nanos < 0 { -5_000_000 } else { 5_000_000 }) / 10_000_000;
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}${}.{:02}", thousands_str(&(cents / 100).to_string()), cents % 100)
}

/// An integer with thousands separators.
pub fn count(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    format!("{}{}", if n < 0 { "-" } else { "" }, thousands_str(&s))
}

fn thousands_str(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `part / whole` as a percentage with one decimal, from integers (`—` when `whole` is 0).
pub fn percent(part: i64, whole: i64) -> String {
    if whole == 0 {
        return "—".into();
    }
    let tenths = (i128::from(part) * 1000 + i128::from(whole) / 2) / i128::from(whole);
    format!("{}.{}%", tenths / 10, (tenths % 10).abs())
}

/// A UTC time as `YYYY-MM-DD HH:MM`.
pub fn utc(ms: i64) -> String {
    let t = crate::timespec::rfc3339(ms - ms.rem_euclid(60_000));
    t.get(..16).map(|s| s.replace('T', " ")).unwrap_or(t)
}

/// A table: a caption, a header row, then rows of already-escaped cells; cells whose text
/// starts with a digit, `$`, `-` or `—` are right-aligned (class `num`).
pub fn table(out: &mut String, caption: &str, head: &[&str], rows: &[Vec<String>]) {
    let _ = write!(out, "<table><caption>{}</caption><thead><tr>", esc(caption));
    for h in head {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(out, "<tr><td colspan=\"{}\" class=\"empty\">No rows in this window.</td></tr>", head.len());
    }
    for r in rows {
        out.push_str("<tr>");
        for cell in r {
            let numeric = cell.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '$' | '-' | '—'));
            out.push_str(if numeric { "<td class=\"num\">" } else { "<td>" });
            out.push_str(cell);
            out.push_str("</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

/// A chart and the table behind it: the chart, then the table in a `<details>` a reader
/// opens to see (and copy) every figure.
pub fn figure(
    out: &mut String,
    title: &str,
    note: &str,
    chart: &str,
    caption: &str,
    head: &[&str],
    rows: &[Vec<String>],
) {
    let _ = write!(out, "<figure><figcaption><h2>{}</h2>", esc(title));
    if !note.is_empty() {
        let _ = write!(out, "<p class=\"note\">{}</p>", esc(note));
    }
    out.push_str("</figcaption>");
    out.push_str(chart);
    out.push_str("<details><summary>Table</summary>");
    table(out, caption, head, rows);
    out.push_str("</details></figure>");
}

/// The dashboard's pages, in navigation order: (path segment, title).
pub const PAGES: [(&str, &str); 5] = [
    ("overview", "Overview"),
    ("models", "Models and providers"),
    ("tenants", "Tenants and keys"),
    ("market", "Market"),
    ("routing", "Routing"),
];

/// What the shell needs to know besides the body.
pub struct Shell<'a> {
    /// Path segment of the page (one of [`PAGES`]).
    pub page: &'a str,
    pub title: &'a str,
    /// The window's name (`24h`) and the choices, for the selector.
    pub window: &'a str,
    pub windows: &'a [&'a str],
    /// Query parameters to keep when the window changes (already URL-safe: `policy=...`).
    pub keep: &'a str,
    pub refresh_secs: u64,
    pub generated_ms: i64,
}

/// A whole page around `body`: navigation, window selector, theme toggle, log-out form.
/// The page reloads itself every `refresh_secs` (same URL, so the window stays).
pub fn page(s: &Shell<'_>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    head(&mut out, s.title, Some(s.refresh_secs));
    out.push_str("<body><header><a class=\"brand\" href=\"/dashboard/overview\">Bourse</a><nav aria-label=\"Pages\">");
    for (seg, title) in PAGES {
        let current = if seg == s.page { " aria-current=\"page\"" } else { "" };
        let _ = write!(out, "<a href=\"/dashboard/{seg}?window={}\"{current}>{title}</a>", esc(s.window));
    }
    out.push_str("</nav><nav class=\"windows\" aria-label=\"Window\">");
    for w in s.windows {
        let current = if *w == s.window { " aria-current=\"true\"" } else { "" };
        let amp = if s.keep.is_empty() { "" } else { "&amp;" };
        let _ = write!(
            out,
            "<a href=\"/dashboard/{}?window={}{amp}{}\"{current}>{}</a>",
            s.page,
            esc(w),
            esc(s.keep),
            esc(w)
        );
    }
    out.push_str(
        "</nav><button type=\"button\" id=\"theme\" title=\"Switch between light and dark\">Theme</button>\
         <form method=\"post\" action=\"/dashboard/logout\"><button type=\"submit\">Log out</button></form></header><main>",
    );
    let _ = write!(out, "<h1>{}</h1>", esc(s.title));
    out.push_str(body);
    let _ = write!(
        out,
        "</main><footer>Generated {} UTC · window {} · reloads every {} s · all times UTC</footer></body></html>",
        utc(s.generated_ms),
        esc(s.window),
        s.refresh_secs
    );
    out
}

/// `<!doctype>` through `</head>`. The stylesheet and the theme script are the dashboard's
/// own files (`/dashboard/static/`): nothing is fetched from anywhere else, and the icon is
/// an empty data URL so the browser asks for no `/favicon.ico` either.
pub fn head(out: &mut String, title: &str, refresh_secs: Option<u64>) {
    out.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    if let Some(r) = refresh_secs {
        let _ = write!(out, "<meta http-equiv=\"refresh\" content=\"{r}\">");
    }
    let _ = write!(out, "<title>Bourse · {}</title>", esc(title));
    out.push_str("<link rel=\"icon\" href=\"data:,\">");
    out.push_str("<link rel=\"stylesheet\" href=\"/dashboard/static/app.css\">");
    out.push_str("<script src=\"/dashboard/static/app.js\"></script></head>");
}

/// A page without navigation (login, disabled, errors).
pub fn bare(title: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    head(&mut out, title, None);
    let _ = write!(out, "<body class=\"bare\"><main><h1>{}</h1>", esc(title));
    out.push_str(body);
    out.push_str("</main></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_text_and_both_quotes() {
        assert_eq!(
            esc("<script>alert('x') & \"y\"</script>").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        assert_eq!(esc("plain/model-1.5").to_string(), "plain/model-1.5");
        assert_eq!(esc("").to_string(), "");
        assert_eq!(esc("ü<").to_string(), "ü&lt;");
    }

    #[test]
    fn money_is_exact() {
        assert_eq!(usd(0), "$0.00");
        assert_eq!(usd(1), "$0.000000001");
        assert_eq!(usd(12_345), "$0.000012345");
        assert_eq!(usd(1_500_000_000), "$1.50");
        assert_eq!(usd(1_234_567_000_000), "$1,234.567");
        assert_eq!(usd(-2_000_000_000), "-$2.00");
        assert_eq!(usd(100_000_000), "$0.10");
        assert_eq!(usd_cents(3_290_231_548), "$3.29");
        assert_eq!(usd_cents(1_234_565_000_000), "$1,234.57");
        assert_eq!(usd_cents(4_999_999), "$0.00");
        assert_eq!(usd_cents(-15_000_000), "-$0.02");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(-12), "-12");
        assert_eq!(count(999), "999");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(2, 3), "66.7%");
        assert_eq!(percent(0, 0), "—");
        assert_eq!(utc(1_772_323_200_000 + 61_000), "2026-03-01 00:01");
    }
}
