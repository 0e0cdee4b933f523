//! What is left after an admitted decision, assembled the same way for both backends from
//! each scope's counters after counting the ask (so the two report identical headers).

use super::{window_end, BudgetLeft, Limits, Nanos, RateLeft, Remaining, ScopeKind, Window, MINUTE_MS};

/// One scope's counters right after an admitted ask was counted.
#[derive(Clone, Debug, Default)]
pub(super) struct After {
    pub day: Nanos,
    pub month: Nanos,
    pub total: Nanos,
    /// Requests in the minute window and the newest one's timestamp (None: empty).
    pub requests: u64,
    pub requests_newest: Option<i64>,
    /// Tokens in the minute window and the newest entry's timestamp (None: empty).
    pub tokens: u64,
    pub tokens_newest: Option<i64>,
}

/// The tightest budget and rates over `scopes` (in order; the first wins a tie).
pub(super) fn remaining<'a>(
    scopes: impl IntoIterator<Item = (ScopeKind, &'a Limits, After)>,
    now_ms: i64,
) -> Remaining {
    let mut out = Tightest::default();
    for (kind, limits, after) in scopes {
        out.add(kind, limits, after, now_ms);
    }
    out.finish()
}

/// [`remaining`] one scope at a time, as a decision counts them.
#[derive(Default)]
pub(super) struct Tightest(Remaining);

impl Tightest {
    pub(super) fn add(&mut self, kind: ScopeKind, limits: &Limits, after: After, now_ms: i64) {
        let out = &mut self.0;
        for (window, limit, used) in [
            (Window::Day, limits.budget_day, after.day),
            (Window::Month, limits.budget_month, after.month),
            (Window::Total, limits.budget_total, after.total),
        ] {
            let Some(limit) = limit else { continue };
            let left = limit.saturating_sub(used).max(0);
            if out.budget.as_ref().is_none_or(|b| left < b.left) {
                out.budget =
                    Some(BudgetLeft { scope: kind, window, limit, left, resets_at_ms: window_end(window, now_ms) });
            }
        }
        if let Some(limit) = limits.rpm {
            tighter(&mut out.requests, limit, after.requests, after.requests_newest, now_ms);
        }
        if let Some(limit) = limits.tpm {
            tighter(&mut out.tokens, limit, after.tokens, after.tokens_newest, now_ms);
        }
    }

    pub(super) fn finish(self) -> Remaining {
        self.0
    }
}

fn tighter(slot: &mut Option<RateLeft>, limit: u64, used: u64, newest: Option<i64>, now_ms: i64) {
    let left = limit.saturating_sub(used);
    if slot.as_ref().is_none_or(|r| left < r.left) {
        let resets_at_ms = newest.map_or(now_ms, |ts| ts + MINUTE_MS);
        *slot = Some(RateLeft { limit, left, resets_at_ms });
    }
}

/// Whether a budget of `limit` refuses an ask of `cost` on top of `used`: when it would go
/// over, and a zero-cost ask once nothing is left.
pub(super) fn over_budget(used: Nanos, cost: Nanos, limit: Nanos) -> bool {
    if cost == 0 {
        used >= limit
    } else {
        cost > limit.saturating_sub(used)
    }
}
