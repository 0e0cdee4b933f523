//! `bourse tenants ...` and `bourse keys ...`: flags to [`crate::admin`] inputs, and tenants
//! and keys as tables or JSON. A new or rotated key's secret is printed alone on the last
//! line (so `| tail -1` captures it) and nowhere else; listings never show a secret or its hash.

use crate::admin::{self, parse_downgrade, quality_json, AdminError, LimitsPatch};
use crate::tenancy::{self, format_usd, Downgrade, Key, Tenant};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// The actor CLI changes are audited under: `cli:` + `$USER`, or `cli`.
pub fn actor() -> String {
    match std::env::var("USER") {
        Ok(u) if !u.is_empty() => format!("cli:{u}"),
        _ => "cli".into(),
    }
}

/// The limit flags as typed; `none` removes a limit (for `set`).
#[derive(Clone, Debug, Default)]
pub struct LimitFlags {
    pub budget_day: Option<String>,
    pub budget_month: Option<String>,
    pub budget_total: Option<String>,
    pub rpm: Option<String>,
    pub tpm: Option<String>,
    pub concurrency: Option<String>,
}

impl LimitFlags {
    pub fn patch(&self) -> Result<LimitsPatch, String> {
        fn budget(flag: &str, v: &Option<String>) -> Result<Option<Option<i64>>, String> {
            v.as_deref()
                .map(|s| match s {
                    "none" => Ok(None),
                    s => tenancy::parse_usd(s).map(Some).map_err(|m| format!("{flag}: {m}")),
                })
                .transpose()
        }
        fn count(flag: &str, v: &Option<String>) -> Result<Option<Option<u64>>, String> {
            v.as_deref()
                .map(|s| match s {
                    "none" => Ok(None),
                    s => s.parse().map(Some).map_err(|_| format!("{flag}: \"{s}\" is not a whole number or none")),
                })
                .transpose()
        }
        Ok(LimitsPatch {
            budget_day: budget("--budget-day", &self.budget_day)?,
            budget_month: budget("--budget-month", &self.budget_month)?,
            budget_total: budget("--budget-total", &self.budget_total)?,
            rpm: count("--rpm", &self.rpm)?,
            tpm: count("--tpm", &self.tpm)?,
            concurrency: count("--concurrency", &self.concurrency)?,
        })
    }
}

/// `--downgrade-below PCT --downgrade-quality Q` (both or neither; `--downgrade-below none`
/// clears it): `None` leaves it unchanged.
pub fn downgrade_flags(below: Option<&str>, quality: Option<&str>) -> Result<Option<Option<Downgrade>>, String> {
    match (below, quality) {
        (None, None) => Ok(None),
        (Some("none"), None) => Ok(Some(None)),
        (Some(b), Some(q)) => parse_downgrade(b, q).map(|d| Some(Some(d))).map_err(|e| error(&e)),
        _ => Err("--downgrade-below and --downgrade-quality go together".into()),
    }
}

/// An [`AdminError`] for a terminal, naming the flag where there is one.
pub fn error(e: &AdminError) -> String {
    match e {
        AdminError::Invalid(m, field) => {
            format!(
                "--{}: {m}",
                field
                    .replace("downgrade.below", "downgrade-below")
                    .replace("downgrade.min_quality", "downgrade-quality")
                    .replace("_usd", "")
                    .replace('_', "-")
            )
        }
        e => e.to_string(),
    }
}

fn opt_usd(v: Option<i64>) -> String {
    v.map_or("-".into(), format_usd)
}

fn opt_n(v: Option<u64>) -> String {
    v.map_or("-".into(), |n| n.to_string())
}

fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// `bourse tenants list`.
pub fn tenants(list: &[Tenant], json_out: bool) -> String {
    if json_out {
        let data: Vec<Value> = list.iter().map(admin::tenant_json).collect();
        return format!("{}\n", serde_json::to_string_pretty(&json!({ "data": data })).unwrap_or_default());
    }
    if list.is_empty() {
        return "(no tenants)\n".into();
    }
    let mut rows =
        vec![["name", "day_usd", "month_usd", "total_usd", "rpm", "tpm", "concurrency", "policy", "downgrade"]
            .map(String::from)
            .to_vec()];
    for t in list {
        let l = &t.limits;
        rows.push(vec![
            t.name.clone(),
            opt_usd(l.budget_day),
            opt_usd(l.budget_month),
            opt_usd(l.budget_total),
            opt_n(l.rpm),
            opt_n(l.tpm),
            opt_n(l.concurrency),
            t.policy.clone().unwrap_or("-".into()),
            t.downgrade.as_ref().map_or("-".into(), |d| {
                let q = quality_json(d.min_quality);
                format!("<{}% -> {}", d.below_percent, q.as_str().map_or(q.to_string(), str::to_string))
            }),
        ]);
    }
    table(rows)
}

/// `bourse keys list`: never the secret nor its hash.
pub fn keys(list: &[Key], now_ms: i64, json_out: bool) -> String {
    if json_out {
        let data: Vec<Value> = list.iter().map(|k| admin::key_json(k, now_ms)).collect();
        return format!("{}\n", serde_json::to_string_pretty(&json!({ "data": data })).unwrap_or_default());
    }
    if list.is_empty() {
        return "(no keys)\n".into();
    }
    let mut rows =
        vec![["id", "tenant", "name", "state", "day_usd", "month_usd", "total_usd", "rpm", "routes", "expires"]
            .map(String::from)
            .to_vec()];
    for k in list {
        let l = &k.limits;
        rows.push(vec![
            k.id.clone(),
            k.tenant.clone(),
            k.name.clone().unwrap_or("-".into()),
            admin::key_state(k, now_ms).into(),
            opt_usd(l.budget_day),
            opt_usd(l.budget_month),
            opt_usd(l.budget_total),
            opt_n(l.rpm),
            if k.routes.is_empty() { "*".into() } else { k.routes.join(",") },
            k.expires_ms.map_or("-".into(), crate::timespec::rfc3339),
        ]);
    }
    table(rows)
}

/// A created or rotated key: a summary, then the secret alone on the last line (or one JSON
/// object with the secret as `"key"`).
pub fn new_secret(what: &str, key: &Key, secret: &str, now_ms: i64, json_out: bool) -> String {
    if json_out {
        let mut v = admin::key_json(key, now_ms);
        if let Some(o) = v.as_object_mut() {
            o.insert("key".into(), json!(secret));
        }
        return format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let mut out = String::new();
    let _ = writeln!(out, "{what} key {} for tenant {}", key.id, key.tenant);
    if let Some(e) = key.expires_ms {
        let _ = writeln!(out, "expires {}", crate::timespec::rfc3339(e));
    }
    let _ = writeln!(out, "the secret below is shown once; only its SHA-256 is stored:");
    let _ = writeln!(out, "{secret}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_flags_parse_and_clear() {
        let f = LimitFlags { budget_day: Some("0.45".into()), rpm: Some("none".into()), ..LimitFlags::default() };
        let p = f.patch().unwrap();
        assert_eq!((p.budget_day, p.rpm, p.tpm), (Some(Some(450_000_000)), Some(None), None));
        assert!(LimitFlags { budget_month: Some("-1".into()), ..LimitFlags::default() }.patch().is_err());
        assert!(downgrade_flags(Some("20%"), None).is_err());
        assert_eq!(downgrade_flags(Some("none"), None), Ok(Some(None)));
        let d = downgrade_flags(Some("20%"), Some("strong")).unwrap().unwrap().unwrap();
        assert_eq!((d.below_percent, d.min_quality), (20, 1370));
        let e = error(&AdminError::Invalid("bad".into(), "budget_day_usd".into()));
        assert_eq!(e, "--budget-day: bad");
    }
}
