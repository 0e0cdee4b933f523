//! Quality evidence: how well each model does on each route's task, from imports, offline
//! evals and live answer checks (the rows of `ledger::evidence`), as the planner reads it.
//!
//! A model's evidence on a route pools its sources: passes = Σ score × n, samples = Σ n. The
//! planner ranks on the **lower bound** of the Wilson score interval at 95% confidence, not
//! on the observed share, so ten lucky answers (10/10: lower bound 0.72) do not beat a
//! thousand good ones (950/1000: 0.935). Scores are kept as parts per million, integers the
//! planner compares without floats.
//!
//! [`Evidence`] is the live side: a snapshot the planner reads on every routed request
//! (one lock read and a reference count), live check outcomes counted in memory until the
//! server flushes them to the store, and a reload from the store that replaces the snapshot.

use crate::ledger::{EvidenceDelta, EvidenceRow, Ledger, LedgerError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

/// One million: a score of 1.0 in parts per million.
pub const PPM: u32 = 1_000_000;

/// z for a two-sided 95% interval.
const Z: f64 = 1.959_963_984_540_054;

/// One model's pooled evidence on one route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quality {
    /// Observed share of passes, ppm.
    pub mean_ppm: u32,
    /// Wilson 95% lower bound, ppm: what the planner compares.
    pub lower_ppm: u32,
    pub n: u64,
}

impl Quality {
    /// From pooled passes (may be fractional: imported scores times their n) and samples.
    pub fn of(passes: f64, n: u64) -> Option<Quality> {
        if n == 0 {
            return None;
        }
        let nf = n as f64;
        let p = (passes / nf).clamp(0.0, 1.0);
        Some(Quality { mean_ppm: to_ppm(p), lower_ppm: to_ppm(wilson_lower(p, nf)), n })
    }
}

/// The Wilson score interval's lower bound for share `p` over `n` samples.
pub fn wilson_lower(p: f64, n: f64) -> f64 {
    if n <= 0.0 {
        return 0.0;
    }
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let margin = Z * ((p * (1.0 - p) + z2 / (4.0 * n)) / n).sqrt();
    ((centre - margin) / (1.0 + z2 / n)).clamp(0.0, 1.0)
}

fn to_ppm(x: f64) -> u32 {
    // Rounded down: a bound is never reported higher than it is.
    (x.clamp(0.0, 1.0) * f64::from(PPM)).floor() as u32
}

/// `ppm` as a decimal share with three places (`0.912`), for reasons and tables.
pub fn share(ppm: u32) -> String {
    format!("{}.{:03}", ppm / PPM, (ppm % PPM) / 1000)
}

/// Every route's evidence by the router's entry index (see `Router::entries`).
#[derive(Debug, Default)]
pub struct Table {
    routes: HashMap<String, RouteTable>,
}

/// One route's evidence: by entry index, and per model (including models no configured
/// provider serves, for `quote` and reports) the sources it pools.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_entry: Vec<Option<Quality>>,
    /// Every model's pooled evidence by `provider/model` (relative floors name a reference
    /// that need not be routable).
    by_model: HashMap<String, Quality>,
    /// `provider/model` → [(source, score, n)], in source order.
    pub sources: BTreeMap<String, Vec<(String, f64, u64)>>,
}

impl RouteTable {
    /// The evidence for entry `i`, if any.
    #[inline]
    pub fn get(&self, i: usize) -> Option<Quality> {
        self.by_entry.get(i).copied().flatten()
    }

    /// The evidence for a model by `provider/model`, routable or not.
    pub fn model(&self, key: &str) -> Option<Quality> {
        self.by_model.get(key).copied()
    }
}

impl Table {
    /// Pools `rows` plus live outcomes not yet stored (`pending`) per route and model, for
    /// entries keyed `provider/model` in `entry_keys` order.
    pub fn build<'a>(
        rows: &[EvidenceRow],
        pending: impl IntoIterator<Item = (&'a PendingKey, &'a (u64, u64))>,
        entry_keys: &HashMap<String, usize>,
    ) -> Table {
        let entries = entry_keys.len();
        let mut pooled: HashMap<(&str, &str), (f64, u64)> = HashMap::new();
        let mut out = Table::default();
        for r in rows {
            let p = pooled.entry((r.route.as_str(), r.model.as_str())).or_default();
            p.0 += r.score * r.n as f64;
            p.1 += r.n;
            let route = out.routes.entry(r.route.clone()).or_default();
            route.sources.entry(r.model.clone()).or_default().push((r.source.clone(), r.score, r.n));
        }
        for (k, &(passed, n)) in pending {
            let p = pooled.entry((k.route.as_str(), k.model.as_str())).or_default();
            p.0 += passed as f64;
            p.1 += n;
            let route = out.routes.entry(k.route.clone()).or_default();
            let sources = route.sources.entry(k.model.clone()).or_default();
            let source = format!("check:{} (not yet stored)", k.check);
            sources.push((source, passed as f64 / n.max(1) as f64, n));
        }
        for ((route, model), (passes, n)) in pooled {
            let Some(q) = Quality::of(passes, n) else { continue };
            let table = out.routes.get_mut(route).expect("every pooled route has a table");
            table.by_model.insert(model.to_string(), q);
            let Some(&i) = entry_keys.get(model) else { continue };
            if table.by_entry.len() < entries {
                table.by_entry.resize(entries, None);
            }
            table.by_entry[i] = Some(q);
        }
        out
    }

    pub fn route(&self, name: &str) -> Option<&RouteTable> {
        self.routes.get(name)
    }
}

/// Where live outcomes are counted before they are stored.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PendingKey {
    pub route: String,
    pub model: String,
    /// The check's name (`complete`, `json_schema`, `agree`, …): the row's source is
    /// `check:NAME`.
    pub check: String,
}

/// The router's evidence: the snapshot the planner reads, and live outcomes not yet stored.
#[derive(Debug)]
pub struct Evidence {
    snapshot: RwLock<Arc<Table>>,
    /// The stored rows the snapshot was built from.
    rows: Mutex<Vec<EvidenceRow>>,
    /// (passed, samples) per key, since the last flush.
    pending: Mutex<BTreeMap<PendingKey, (u64, u64)>>,
    entry_keys: HashMap<String, usize>,
}

impl Evidence {
    /// No evidence yet, for entries keyed `provider/model` in this order.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Evidence {
        let entry_keys: HashMap<String, usize> =
            keys.into_iter().enumerate().map(|(i, k)| (k.to_string(), i)).collect();
        Evidence { snapshot: RwLock::default(), rows: Mutex::default(), pending: Mutex::default(), entry_keys }
    }

    /// What the planner reads.
    pub fn snapshot(&self) -> Arc<Table> {
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the stored rows (a load from the store) and rebuilds the snapshot.
    pub fn set_rows(&self, rows: Vec<EvidenceRow>) {
        *self.rows.lock().unwrap_or_else(PoisonError::into_inner) = rows;
        self.rebuild();
    }

    /// Counts one live check outcome. The planner sees it from the next [`Evidence::rebuild`]
    /// (the server's evidence loop, every few seconds): rebuilding per outcome would cost
    /// every checked request a pass over the whole table.
    pub fn record(&self, route: &str, model: &str, check: &str, passed: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let key = PendingKey { route: route.to_string(), model: model.to_string(), check: check.to_string() };
        let e = pending.entry(key).or_default();
        e.0 += u64::from(passed);
        e.1 += 1;
    }

    /// Takes the outcomes not yet stored, for the store (give them back with
    /// [`Evidence::restore`] if it fails).
    pub fn take_pending(&self) -> Vec<EvidenceDelta> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        pending
            .into_iter()
            .map(|(k, (passed, n))| EvidenceDelta {
                route: k.route,
                model: k.model,
                source: format!("check:{}", k.check),
                passed,
                n,
            })
            .collect()
    }

    /// Puts outcomes back that could not be stored.
    pub fn restore(&self, deltas: Vec<EvidenceDelta>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for d in deltas {
            let check = d.source.strip_prefix("check:").unwrap_or(&d.source).to_string();
            let e = pending.entry(PendingKey { route: d.route, model: d.model, check }).or_default();
            e.0 += d.passed;
            e.1 += d.n;
        }
    }

    /// Rebuilds the snapshot from the stored rows and the outcomes not yet stored.
    pub fn rebuild(&self) {
        let rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let table = Table::build(&rows, pending.iter(), &self.entry_keys);
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }
}

/// How often a serving gateway stores the live outcomes it counted and reloads every row
/// (other replicas' outcomes, imports and evals included).
pub const SYNC_EVERY: Duration = Duration::from_secs(5);

impl Evidence {
    /// Stores the outcomes counted since the last sync (giving them back if the store fails),
    /// then reloads every row and rebuilds the snapshot. Without a store, only rebuilds.
    pub async fn sync(&self, ledger: Option<&Ledger>) -> Result<(), LedgerError> {
        let Some(ledger) = ledger else {
            self.rebuild();
            return Ok(());
        };
        let deltas = self.take_pending();
        if let Err(e) = ledger.add_evidence(deltas.clone(), crate::timespec::now_ms()).await {
            self.restore(deltas);
            return Err(e);
        }
        self.set_rows(ledger.evidence().await?);
        Ok(())
    }

    /// [`Evidence::sync`] every `every`, for as long as the gateway serves.
    pub fn spawn_sync(self: Arc<Self>, ledger: Option<Ledger>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = self.sync(ledger.as_ref()).await {
                    tracing::warn!(error = %e, "evidence: sync with the store failed; kept in memory for the next one");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(route: &str, model: &str, source: &str, score: f64, n: u64) -> EvidenceRow {
        EvidenceRow { route: route.into(), model: model.into(), source: source.into(), score, n, updated_ms: 0 }
    }

    #[test]
    fn wilson_lower_bounds_match_hand_computed_values() {
        // Expected values from the same formula evaluated separately (Python): 10/10 → 0.72247,
        // 950/1000 → 0.93469, 50/100 → 0.40383.
        let ten = Quality::of(10.0, 10).unwrap();
        assert_eq!((ten.mean_ppm, ten.lower_ppm / 100), (PPM, 7224));
        let many = Quality::of(950.0, 1000).unwrap();
        assert_eq!(many.lower_ppm / 100, 9346);
        assert!(many.lower_ppm > ten.lower_ppm, "a thousand good answers beat ten lucky ones");
        let half = Quality::of(50.0, 100).unwrap();
        assert_eq!((half.mean_ppm, half.lower_ppm / 100), (500_000, 4038));
        assert_eq!(Quality::of(0.0, 0), None);
        assert_eq!(Quality::of(0.0, 5).unwrap().lower_ppm, 0);
        assert_eq!(share(912_345), "0.912");
        assert_eq!(share(PPM), "1.000");
    }

    #[test]
    fn sources_pool_and_live_outcomes_count_at_once() {
        let ev = Evidence::new(["a/x", "b/y", "c/z"]);
        ev.set_rows(vec![
            row("tax", "a/x", "import", 0.9, 100),
            row("tax", "a/x", "evals:set", 0.5, 100),
            row("tax", "b/y", "import", 1.0, 3),
            row("tax", "nowhere/m", "import", 1.0, 3),
            row("sum", "c/z", "import", 0.8, 50),
        ]);
        let t = ev.snapshot();
        let tax = t.route("tax").unwrap();
        let ax = tax.get(0).unwrap();
        assert_eq!((ax.mean_ppm, ax.n), (700_000, 200));
        assert_eq!(tax.get(1).unwrap().n, 3);
        assert_eq!(tax.get(2), None, "c/z has evidence on another route only");
        assert_eq!(tax.sources["nowhere/m"].len(), 1, "unserved models stay visible");
        assert_eq!(tax.model("nowhere/m").map(|q| q.n), Some(3));
        assert!(t.route("other").is_none());
        ev.record("tax", "c/z", "complete", true);
        ev.record("tax", "c/z", "complete", false);
        assert_eq!(ev.snapshot().route("tax").unwrap().get(2), None, "seen from the next rebuild");
        ev.rebuild();
        let z = ev.snapshot().route("tax").unwrap().get(2).unwrap();
        assert_eq!((z.mean_ppm, z.n), (500_000, 2));
        let taken = ev.take_pending();
        assert_eq!(
            taken,
            vec![EvidenceDelta {
                route: "tax".into(),
                model: "c/z".into(),
                source: "check:complete".into(),
                passed: 1,
                n: 2
            }]
        );
        ev.restore(taken.clone());
        assert_eq!(ev.take_pending(), taken);
    }
}
