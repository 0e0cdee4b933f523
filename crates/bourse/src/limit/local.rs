//! The in-process counters: one mutex-guarded map of scopes. The default without
//! `[shared] redis_url`, and the fallback `on_shared_failure = "open"` serves on.
//! Rebuilt at start-up from the ledger ([`LocalCounters::seed`]).
//!
//! State, all behind one `std::sync::Mutex` held only for the arithmetic of one call:
//! - per scope, found by (kind, id) so a key and a tenant with the same id stay apart: spend
//!   counters for the last few UTC days and months and in total, the cost still reserved by
//!   its outstanding holds, the requests- and tokens-per-minute windows (sorted by time,
//!   kept only where the scope sets that limit) and its live leases (taken only where it
//!   sets a concurrency limit);
//! - every outstanding hold (cost, scopes, day, month, expiry), and a time before which none
//!   of them expires: a lower bound, lowered by each new hold and recomputed by the sweep
//!   that passes it. Holds are settled within a request's lifetime and live an hour, so the
//!   sweep scans them about once an hour rather than keeping an expiry index per hold.
//!
//! Invariants: a spend counter is settled spend plus the cost of outstanding holds made in
//! its window; no counter is ever negative; a hold's reservation is removed exactly once,
//! by its settle or, after the hold TTL, by the sweep that every reserve and usage read runs
//! first (a settle arriving after that sweep adds what was spent and removes nothing).
//! A refused decision changes nothing but that sweep and the pruning of expired window
//! entries.

use super::remaining::{over_budget, After, Tightest};
use super::{
    day_of, month_of, window_end, Ask, Hold, Lease, LimitError, Nanos, Rate, Refusal, Remaining, ScopeKind, Spent,
    Usage, Window, HOLD_TTL_MS, MINUTE_MS,
};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Day counters kept per scope (today and the two before: holds of yesterday still settle).
const DAYS_KEPT: usize = 3;
/// Month counters kept per scope.
const MONTHS_KEPT: usize = 2;
/// How long a concurrency refusal suggests waiting.
const CONCURRENCY_RETRY_MS: i64 = 1000;

#[derive(Clone, Debug)]
pub struct LocalCounters {
    state: Arc<Mutex<State>>,
    hold_ttl_ms: i64,
}

impl Default for LocalCounters {
    fn default() -> LocalCounters {
        LocalCounters { state: Arc::default(), hold_ttl_ms: HOLD_TTL_MS }
    }
}

/// FNV-1a rather than SipHash: scope ids are key ids and tenant names set by administrators
/// and hold ids are a counter, so no client chooses what lands in these maps.
type Fnv = std::hash::BuildHasherDefault<crate::fnv::Fnv1a>;

#[derive(Debug, Default)]
struct State {
    /// Every scope's counters, in the order they were first used (a scope is never removed).
    slots: Vec<ScopeState>,
    /// Per scope kind (`ScopeKind::Key`, `ScopeKind::Tenant`), by id: the scope's index in
    /// `slots`. A call looks each of its scopes up once and then works on the index; ids are
    /// looked up by `&str` without building an owned key.
    index: [HashMap<Arc<str>, usize, Fnv>; 2],
    holds: HashMap<u64, HoldRecord, Fnv>,
    /// No outstanding hold expires before this (None: no hold since the last sweep).
    sweep_at: Option<i64>,
}

#[derive(Debug)]
struct HoldRecord {
    /// Its scopes' indices in `State::slots`, in the order of the hold's scopes (slots are
    /// never removed, so the settle and the sweep need no lookup by id).
    slots: Slots,
    day: i64,
    month: i64,
    cost: Nanos,
    expires_ms: i64,
}

#[derive(Debug, Default)]
struct ScopeState {
    /// (day, spend), oldest first, at most DAYS_KEPT.
    days: VecDeque<(i64, Nanos)>,
    /// (month, spend), oldest first, at most MONTHS_KEPT.
    months: VecDeque<(i64, Nanos)>,
    total: Nanos,
    /// Cost of this scope's outstanding holds.
    reserved: Nanos,
    /// Admitted requests of the last minute, per millisecond: (timestamp, count), oldest
    /// first. Timestamps are whole milliseconds, so one entry per millisecond loses nothing
    /// and bounds a busy key's window at 60,000 entries (one per request would be 1.7 million
    /// at 28,000 requests/s; `docs/decisions.md`).
    requests: VecDeque<(i64, u64)>,
    /// The sum of `requests`' counts.
    requests_count: u64,
    /// Tokens reserved (or, once settled, used) in the last minute, per millisecond:
    /// (timestamp, tokens), oldest first.
    tokens: VecDeque<(i64, u64)>,
    /// The sum of `tokens`' counts, kept as entries come, settle and go: a decision reads it
    /// instead of walking a window that holds every request of the last minute.
    tokens_sum: u64,
    /// (lease id, expiry).
    leases: Vec<(u64, i64)>,
}

/// Adds `delta` to the counter of `window` (creating it; dropping the oldest beyond `keep`),
/// never below 0.
fn add_windowed(list: &mut VecDeque<(i64, Nanos)>, window: i64, delta: Nanos, keep: usize) {
    match list.iter_mut().find(|(w, _)| *w == window) {
        Some((_, v)) => add_clamped(v, delta),
        None => {
            let at = list.partition_point(|(w, _)| *w < window);
            list.insert(at, (window, delta.max(0)));
            while list.len() > keep {
                list.pop_front();
            }
        }
    }
}

fn read_windowed(list: &VecDeque<(i64, Nanos)>, window: i64) -> Nanos {
    list.iter().find(|(w, _)| *w == window).map_or(0, |(_, v)| *v)
}

fn set_windowed(list: &mut VecDeque<(i64, Nanos)>, window: i64, value: Nanos, keep: usize) {
    match list.iter_mut().find(|(w, _)| *w == window) {
        Some((_, v)) => *v = value,
        None => add_windowed(list, window, value, keep),
    }
}

fn add_clamped(v: &mut Nanos, delta: Nanos) {
    let new = v.saturating_add(delta);
    debug_assert!(new >= 0, "a counter would go negative: {v} + {delta}");
    *v = new.max(0);
}

/// Adds `n` to the bucket of millisecond `ts`, keeping `list` sorted by time (the bucket is
/// the newest one in the usual in-order case).
fn bump(list: &mut VecDeque<(i64, u64)>, ts: i64, n: u64) {
    match list.back_mut() {
        Some(last) if last.0 == ts => last.1 += n,
        Some(last) if last.0 < ts => list.push_back((ts, n)),
        None => list.push_back((ts, n)),
        Some(_) => {
            let at = list.partition_point(|e| e.0 < ts);
            match list.get_mut(at) {
                Some(e) if e.0 == ts => e.1 += n,
                _ => list.insert(at, (ts, n)),
            }
        }
    }
}

/// The low bits of a local hold id: which of its first eight scopes took a tokens entry (so
/// the settle adjusts only those, even if a limit was set in between).
const TPM_BITS: u32 = 8;

impl ScopeState {
    /// Drops what left the minute windows and the expired leases.
    fn prune(&mut self, now_ms: i64) {
        let cutoff = now_ms - MINUTE_MS;
        while let Some(&(ts, n)) = self.requests.front() {
            if ts > cutoff {
                break;
            }
            self.requests_count -= n;
            self.requests.pop_front();
        }
        while let Some(&(ts, t)) = self.tokens.front() {
            if ts > cutoff {
                break;
            }
            self.tokens_sum -= t;
            self.tokens.pop_front();
        }
        self.leases.retain(|(_, expiry)| *expiry > now_ms);
    }

    /// Applies `delta` to the spend of `day`, `month` and in total, and takes a hold's `cost`
    /// off the reserved sum.
    fn unreserve(&mut self, day: i64, month: i64, delta: Nanos, cost: Nanos) {
        add_windowed(&mut self.days, day, delta, DAYS_KEPT);
        add_windowed(&mut self.months, month, delta, MONTHS_KEPT);
        add_clamped(&mut self.total, delta);
        add_clamped(&mut self.reserved, -cost);
    }

    fn tokens_used(&self) -> u64 {
        debug_assert_eq!(self.tokens_sum, self.tokens.iter().map(|e| e.1).sum::<u64>());
        self.tokens_sum
    }

    /// Whether this scope refuses `ask`, made on `day` and in `month` (nothing is changed).
    fn refusal(
        &self,
        kind: ScopeKind,
        id: &Arc<str>,
        limits: &super::Limits,
        ask: &Ask<'_>,
        (day, month): (i64, i64),
    ) -> Option<Refusal> {
        let now = ask.now_ms;
        for (window, limit, used) in [
            (Window::Day, limits.budget_day, read_windowed(&self.days, day)),
            (Window::Month, limits.budget_month, read_windowed(&self.months, month)),
            (Window::Total, limits.budget_total, self.total),
        ] {
            if let Some(limit) = limit {
                if over_budget(used, ask.cost, limit) {
                    let resets_at_ms = window_end(window, now);
                    return Some(Refusal::Budget { scope: kind, id: id.clone(), window, limit, used, resets_at_ms });
                }
            }
        }
        let rate = |rate, limit, retry_after_ms: i64| {
            Some(Refusal::Rate { scope: kind, id: id.clone(), rate, limit, retry_after_ms: retry_after_ms.max(1) })
        };
        if let (Some(limit), true) = (limits.rpm, ask.request) {
            if self.requests_count >= limit {
                // One more fits once enough of the oldest have left the minute.
                let mut left = self.requests_count;
                let mut retry = MINUTE_MS;
                for (ts, n) in &self.requests {
                    left -= n;
                    if left < limit {
                        retry = ts + MINUTE_MS - now;
                        break;
                    }
                }
                return rate(Rate::Requests, limit, retry);
            }
        }
        if let Some(limit) = limits.tpm {
            let used = self.tokens_used();
            if ask.tokens > limit {
                return rate(Rate::Tokens, limit, MINUTE_MS);
            }
            if used.saturating_add(ask.tokens) > limit {
                let mut left = used;
                let mut retry = MINUTE_MS;
                for (ts, t) in &self.tokens {
                    left -= t;
                    if left + ask.tokens <= limit {
                        retry = ts + MINUTE_MS - now;
                        break;
                    }
                }
                return rate(Rate::Tokens, limit, retry);
            }
        }
        if let (Some(limit), true) = (limits.concurrency, ask.request) {
            if self.leases.len() as u64 >= limit {
                return rate(Rate::Concurrency, limit, CONCURRENCY_RETRY_MS);
            }
        }
        None
    }
}

fn kind_index(kind: ScopeKind) -> usize {
    match kind {
        ScopeKind::Key => 0,
        ScopeKind::Tenant => 1,
    }
}

impl State {
    fn scope(&self, kind: ScopeKind, id: &str) -> Option<&ScopeState> {
        self.index[kind_index(kind)].get(id).map(|&i| &self.slots[i])
    }

    fn scope_mut(&mut self, kind: ScopeKind, id: &str) -> Option<&mut ScopeState> {
        self.index[kind_index(kind)].get(id).map(|&i| &mut self.slots[i])
    }

    /// The scope's index in `slots`, its state created empty on first use.
    fn slot(&mut self, kind: ScopeKind, id: &Arc<str>) -> usize {
        let map = &mut self.index[kind_index(kind)];
        if let Some(&i) = map.get(&**id) {
            return i;
        }
        self.slots.push(ScopeState::default());
        map.insert(id.clone(), self.slots.len() - 1);
        self.slots.len() - 1
    }

    /// The scope's state, created empty on first use.
    fn scope_entry(&mut self, kind: ScopeKind, id: &Arc<str>) -> &mut ScopeState {
        let i = self.slot(kind, id);
        &mut self.slots[i]
    }

    /// Removes the reservations of holds expired at `now_ms`.
    fn sweep(&mut self, now_ms: i64) {
        if self.sweep_at.is_none_or(|t| t > now_ms) {
            return;
        }
        // In order of expiry, then id.
        let mut expired: Vec<(i64, u64)> =
            self.holds.iter().filter(|(_, h)| h.expires_ms <= now_ms).map(|(&id, h)| (h.expires_ms, id)).collect();
        expired.sort_unstable();
        for (_, id) in expired {
            if let Some(hold) = self.holds.remove(&id) {
                self.unreserve(&hold, -hold.cost);
            }
        }
        self.sweep_at = self.holds.values().map(|h| h.expires_ms).min();
    }

    /// Applies `delta` to the day, month and total of every scope of `hold`, and removes its
    /// cost from their reserved sums.
    fn unreserve(&mut self, hold: &HoldRecord, delta: Nanos) {
        for &i in hold.slots.as_slice() {
            self.slots[i].unreserve(hold.day, hold.month, delta, hold.cost);
        }
    }

    fn release(&mut self, lease: &Lease) {
        for scope in &lease.scopes {
            if let Some(s) = self.scope_mut(scope.0, &scope.1) {
                s.leases.retain(|(id, _)| *id != lease.id);
            }
        }
    }
}

/// The slots of one call's scopes, each looked up once: on the stack for up to four (a
/// request has two: its key and its tenant).
#[derive(Debug, Default)]
struct Slots {
    inline: [usize; 4],
    len: usize,
    more: Vec<usize>,
}

impl Slots {
    fn push(&mut self, slot: usize) {
        match self.inline.get_mut(self.len) {
            Some(free) if self.more.is_empty() => {
                *free = slot;
                self.len += 1;
            }
            _ => {
                if self.more.is_empty() {
                    self.more.extend_from_slice(&self.inline);
                }
                self.more.push(slot);
            }
        }
    }

    fn as_slice(&self) -> &[usize] {
        if self.more.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.more
        }
    }
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl LocalCounters {
    pub fn new() -> LocalCounters {
        LocalCounters::default()
    }

    /// The same counters with holds and leases expiring after `ms` instead of
    /// [`HOLD_TTL_MS`] (tests).
    pub fn with_hold_ttl(mut self, ms: i64) -> LocalCounters {
        self.hold_ttl_ms = ms;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied decision that matters
        // more than refusing every later request would: keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set a scope's settled spend for the day and month holding `now_ms`, and in total (at
    /// start-up, from the ledger, before any reserve on that scope).
    pub fn seed(&self, kind: ScopeKind, id: &str, now_ms: i64, day: i64, month: i64, total: i64) {
        let mut state = self.lock();
        let s = state.scope_entry(kind, &Arc::from(id));
        set_windowed(&mut s.days, day_of(now_ms), day.max(0), DAYS_KEPT);
        set_windowed(&mut s.months, month_of(now_ms), month.max(0), MONTHS_KEPT);
        s.total = total.max(0);
    }

    pub fn reserve(&self, ask: &Ask<'_>) -> Result<(Hold, Remaining), LimitError> {
        let now = ask.now_ms;
        let cost = ask.cost.max(0);
        let (day, month) = (day_of(now), month_of(now));
        let mut slots = Slots::default();
        let mut state = self.lock();
        let state = &mut *state;
        state.sweep(now);
        for scope in ask.scopes.iter() {
            let i = state.slot(scope.kind, &scope.id);
            let s = &mut state.slots[i];
            s.prune(now);
            if let Some(refusal) = s.refusal(scope.kind, &scope.id, &scope.limits, ask, (day, month)) {
                return Err(LimitError::Refused(refusal));
            }
            slots.push(i);
        }
        let mut flags = 0;
        for (i, scope) in ask.scopes.iter().enumerate().take(TPM_BITS as usize) {
            if scope.limits.tpm.is_some() {
                flags |= 1 << i;
            }
        }
        let id = (next_id() << TPM_BITS) | flags;
        let expires_ms = now.saturating_add(self.hold_ttl_ms);
        let mut left = Tightest::default();
        for (scope, &i) in ask.scopes.iter().zip(slots.as_slice()) {
            let s = &mut state.slots[i];
            add_windowed(&mut s.days, day, cost, DAYS_KEPT);
            add_windowed(&mut s.months, month, cost, MONTHS_KEPT);
            s.total = s.total.saturating_add(cost);
            s.reserved = s.reserved.saturating_add(cost);
            if ask.request && scope.limits.rpm.is_some() {
                bump(&mut s.requests, now, 1);
                s.requests_count += 1;
            }
            if ask.request && scope.limits.concurrency.is_some() {
                s.leases.push((id, expires_ms));
            }
            if scope.limits.tpm.is_some() {
                bump(&mut s.tokens, now, ask.tokens);
                s.tokens_sum += ask.tokens;
            }
            let after = After {
                day: read_windowed(&s.days, day),
                month: read_windowed(&s.months, month),
                total: s.total,
                requests: s.requests_count,
                requests_newest: s.requests.back().map(|e| e.0),
                tokens: s.tokens_used(),
                tokens_newest: s.tokens.back().map(|e| e.0),
            };
            left.add(scope.kind, &scope.limits, after, now);
        }
        state.holds.insert(id, HoldRecord { slots, day, month, cost, expires_ms });
        state.sweep_at = Some(state.sweep_at.map_or(expires_ms, |t| t.min(expires_ms)));
        let left = left.finish();
        let lease = Lease::for_ask(id, ask, true);
        let (scopes, group) = (ask.scopes.clone(), ask.group.clone());
        let hold = Hold { id, scopes, group, at_ms: now, cost, tokens: ask.tokens, local: true, lease };
        Ok((hold, left))
    }

    pub fn settle(&self, hold: Hold, spent: Spent, release: Option<Lease>) {
        let mut state = self.lock();
        let state = &mut *state;
        let (delta, reserved, day, month, slots) = match state.holds.remove(&hold.id) {
            Some(r) => (spent.cost - r.cost, r.cost, r.day, r.month, r.slots),
            // Swept: its reservation is gone already.
            None => {
                let mut slots = Slots::default();
                for scope in hold.scopes.iter() {
                    slots.push(state.slot(scope.kind, &scope.id));
                }
                (spent.cost, 0, day_of(hold.at_ms), month_of(hold.at_ms), slots)
            }
        };
        for (i, &slot) in slots.as_slice().iter().enumerate() {
            let s = &mut state.slots[slot];
            s.unreserve(day, month, delta, reserved);
            // Only scopes that took a tokens entry (recorded in the hold id's low bits).
            if i < TPM_BITS as usize && hold.id & (1 << i) == 0 {
                continue;
            }
            // Its tokens are in the bucket of its millisecond, if still in the minute.
            let at = s.tokens.partition_point(|e| e.0 < hold.at_ms);
            if let Some(bucket) = s.tokens.get_mut(at).filter(|e| e.0 == hold.at_ms) {
                debug_assert!(bucket.1 >= hold.tokens, "the bucket holds this hold's reservation");
                let kept = bucket.1.saturating_sub(hold.tokens);
                bucket.1 = kept + spent.tokens;
                s.tokens_sum = s.tokens_sum - hold.tokens.min(s.tokens_sum) + spent.tokens;
            }
        }
        if let Some(lease) = release {
            state.release(&lease);
        }
    }

    pub fn release(&self, lease: Lease) {
        self.lock().release(&lease);
    }

    pub fn usage(&self, kind: ScopeKind, id: &str, now_ms: i64) -> Usage {
        let mut state = self.lock();
        state.sweep(now_ms);
        let Some(s) = state.scope(kind, id) else { return Usage::default() };
        Usage {
            day: read_windowed(&s.days, day_of(now_ms)),
            month: read_windowed(&s.months, month_of(now_ms)),
            total: s.total,
            reserved: s.reserved,
            in_flight: s.leases.iter().filter(|(_, expiry)| *expiry > now_ms).count() as u64,
        }
    }

    /// Holds not yet settled nor expired-and-swept.
    pub fn outstanding(&self) -> usize {
        self.lock().holds.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Limits, RateLeft, Scope};
    use super::*;

    /// 2026-03-01T00:00:00Z.
    const T0: i64 = 1_772_323_200_000;
    const USD: Nanos = 1_000_000_000;

    fn scope(kind: ScopeKind, id: &str, limits: Limits) -> Scope {
        Scope { kind, id: Arc::from(id), limits }
    }

    static GROUP: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("g"));

    fn ask<'a>(scopes: &'a Arc<[Scope]>, now_ms: i64, request: bool, tokens: u64, cost: Nanos) -> Ask<'a> {
        Ask { scopes, group: &GROUP, now_ms, request, tokens, cost }
    }

    fn refused(r: Result<(Hold, Remaining), LimitError>) -> Refusal {
        match r {
            Err(LimitError::Refused(r)) => r,
            Err(e) => panic!("unexpected error {e}"),
            Ok((h, _)) => panic!("admitted {h:?}"),
        }
    }

    fn admitted(r: Result<(Hold, Remaining), LimitError>) -> (Hold, Remaining) {
        r.unwrap_or_else(|e| panic!("refused: {e}"))
    }

    #[test]
    fn budgets_are_all_or_nothing_across_scopes() {
        let c = LocalCounters::new();
        let scopes: Arc<[Scope]> = Arc::new([
            scope(ScopeKind::Key, "k", Limits { budget_day: Some(10 * USD), ..Limits::default() }),
            scope(ScopeKind::Tenant, "t", Limits { budget_total: Some(3 * USD), ..Limits::default() }),
        ]);
        let (h, left) = admitted(c.reserve(&ask(&scopes, T0, true, 0, 2 * USD)));
        let b = left.budget.unwrap();
        assert_eq!((b.scope, b.window, b.left, b.resets_at_ms), (ScopeKind::Tenant, Window::Total, USD, None));
        // The tenant refuses the next $2: the key counts nothing either.
        let r = refused(c.reserve(&ask(&scopes, T0 + 1, false, 0, 2 * USD)));
        assert_eq!(
            r,
            Refusal::Budget {
                scope: ScopeKind::Tenant,
                id: Arc::from("t"),
                window: Window::Total,
                limit: 3 * USD,
                used: 2 * USD,
                resets_at_ms: None
            }
        );
        assert_eq!(c.usage(ScopeKind::Key, "k", T0 + 1).day, 2 * USD);
        assert_eq!(c.usage(ScopeKind::Key, "k", T0 + 1).reserved, 2 * USD);
        c.settle(h, Spent { cost: USD / 2, tokens: 0 }, None);
        let u = c.usage(ScopeKind::Tenant, "t", T0 + 2);
        // No concurrency limit anywhere: no lease is held.
        assert_eq!((u.day, u.month, u.total, u.reserved, u.in_flight), (USD / 2, USD / 2, USD / 2, 0, 0));
        // A key and a tenant sharing an id are different scopes.
        assert_eq!(c.usage(ScopeKind::Tenant, "k", T0 + 2), Usage::default());
    }

    #[test]
    fn a_zero_cost_ask_is_refused_once_nothing_is_left() {
        let c = LocalCounters::new();
        let scopes: Arc<[Scope]> =
            Arc::new([scope(ScopeKind::Key, "k", Limits { budget_day: Some(USD), ..Limits::default() })]);
        let (h, _) = admitted(c.reserve(&ask(&scopes, T0, false, 0, USD)));
        let r = refused(c.reserve(&ask(&scopes, T0, false, 0, 0)));
        assert!(
            matches!(r, Refusal::Budget { used, resets_at_ms: Some(end), .. } if used == USD && end == T0 + 86_400_000)
        );
        c.settle(h, Spent { cost: USD - 1, tokens: 0 }, None);
        let (h, left) = admitted(c.reserve(&ask(&scopes, T0, false, 0, 0)));
        assert_eq!(left.budget.unwrap().left, 1);
        c.settle(h, Spent::default(), None);
    }

    #[test]
    fn a_hold_settles_into_the_day_it_was_made() {
        let c = LocalCounters::new();
        let scopes: Arc<[Scope]> =
            Arc::new([scope(ScopeKind::Key, "k", Limits { budget_day: Some(5 * USD), ..Limits::default() })]);
        let before_midnight = T0 - 1; // 2026-02-28T23:59:59.999Z
        let (h, _) = admitted(c.reserve(&ask(&scopes, before_midnight, false, 0, 4 * USD)));
        // After midnight the new day (and month) starts empty; the hold is yesterday's.
        let (h2, _) = admitted(c.reserve(&ask(&scopes, T0, false, 0, 4 * USD)));
        c.settle(h, Spent { cost: USD, tokens: 0 }, None);
        let u = c.usage(ScopeKind::Key, "k", T0);
        assert_eq!((u.day, u.month, u.total, u.reserved), (4 * USD, 4 * USD, 5 * USD, 4 * USD));
        assert_eq!(c.usage(ScopeKind::Key, "k", before_midnight).day, USD);
        c.settle(h2, Spent { cost: 3 * USD, tokens: 0 }, None);
        let u = c.usage(ScopeKind::Key, "k", T0);
        assert_eq!((u.day, u.month, u.total, u.reserved), (3 * USD, 3 * USD, 4 * USD, 0));
    }

    #[test]
    fn requests_per_minute_is_an_exact_sliding_window() {
        let c = LocalCounters::new();
        let scopes: Arc<[Scope]> = Arc::new([scope(ScopeKind::Key, "k", Limits { rpm: Some(3), ..Limits::default() })]);
        let mut admitted_at = Vec::new();
        // One ask every 7 s for 5 minutes.
        for i in 0..43 {
            let now = T0 + i * 7_000;
            match c.reserve(&ask(&scopes, now, true, 0, 0)) {
                Ok((mut h, left)) => {
                    let r = left.requests.unwrap();
                    assert_eq!((r.limit, r.resets_at_ms), (3, now + MINUTE_MS));
                    admitted_at.push((now, r.left));
                    let lease = h.take_lease();
                    c.settle(h, Spent::default(), lease);
                }
                Err(LimitError::Refused(Refusal::Rate { rate: Rate::Requests, retry_after_ms, .. })) => {
                    // The oldest in the window leaves exactly then.
                    let in_window: Vec<i64> =
                        admitted_at.iter().map(|a| a.0).filter(|ts| *ts > now - MINUTE_MS).collect();
                    assert_eq!(in_window.len(), 3);
                    assert_eq!(retry_after_ms, in_window[0] + MINUTE_MS - now);
                }
                Err(e) => panic!("{e}"),
            }
        }
        // At most 3 in any 60 s, and as many as that allows.
        for (i, (ts, _)) in admitted_at.iter().enumerate() {
            let in_minute = admitted_at[i..].iter().take_while(|(t, _)| *t < ts + MINUTE_MS).count();
            assert!(in_minute <= 3, "{in_minute} requests in the minute from {ts}");
        }
        assert_eq!(admitted_at[..3].iter().map(|a| a.1).collect::<Vec<_>>(), [2, 1, 0]);
        assert_eq!(admitted_at.len(), 15); // 0, 7, 14, 63, 70, 77, 126, ... s: 3 every 63 s
                                           // Asks that are not a request's first attempt count no request.
        assert!(c.reserve(&ask(&scopes, T0 + 300_000, false, 0, 0)).is_ok_and(|(h, _)| {
            c.settle(h, Spent::default(), None);
            true
        }));
    }

    #[test]
    fn tokens_per_minute_reserve_then_settle() {
        let c = LocalCounters::new();
        let scopes: Arc<[Scope]> =
            Arc::new([scope(ScopeKind::Key, "k", Limits { tpm: Some(1000), ..Limits::default() })]);
        let (h1, left) = admitted(c.reserve(&ask(&scopes, T0, true, 600, 0)));
        assert_eq!(left.tokens.unwrap().left, 400);
        let r = refused(c.reserve(&ask(&scopes, T0 + 10_000, true, 500, 0)));
        assert_eq!(
            r,
            Refusal::Rate {
                scope: ScopeKind::Key,
                id: Arc::from("k"),
                rate: Rate::Tokens,
                limit: 1000,
                retry_after_ms: 50_000
            }
        );
        // The attempt used only 100: 900 fit now.
        c.settle(h1, Spent { cost: 0, tokens: 100 }, None);
        let (h2, left) = admitted(c.reserve(&ask(&scopes, T0 + 10_000, false, 900, 0)));
        assert_eq!(left.tokens.unwrap(), RateLeft { limit: 1000, left: 0, resets_at_ms: T0 + 70_000 });
        // The first entry leaves at T0 + 60 s: 100 fit then, not before.
        assert!(c.reserve(&ask(&scopes, T0 + 59_999, false, 100, 0)).is_err());
        let (h3, _) = admitted(c.reserve(&ask(&scopes, T0 + 60_000, false, 100, 0)));
        c.settle(h2, Spent::default(), None);
        c.settle(h3, Spent::default(), None);
        // More than the limit can never fit.
        let r = refused(c.reserve(&ask(&scopes, T0 + 200_000, false, 1001, 0)));
        assert!(matches!(r, Refusal::Rate { retry_after_ms: MINUTE_MS, .. }));
    }

    #[test]
    fn concurrency_leases_are_released_or_expire() {
        let c = LocalCounters::new().with_hold_ttl(10_000);
        let scopes: Arc<[Scope]> = Arc::new([
            scope(ScopeKind::Key, "k", Limits::default()),
            scope(ScopeKind::Tenant, "t", Limits { concurrency: Some(2), ..Limits::default() }),
        ]);
        let (mut a, _) = admitted(c.reserve(&ask(&scopes, T0, true, 0, 0)));
        let (mut b, _) = admitted(c.reserve(&ask(&scopes, T0, true, 0, 0)));
        assert_eq!(c.usage(ScopeKind::Tenant, "t", T0).in_flight, 2);
        // The key sets no concurrency limit: it holds no lease.
        assert_eq!(c.usage(ScopeKind::Key, "k", T0).in_flight, 0);
        let r = refused(c.reserve(&ask(&scopes, T0, true, 0, 0)));
        assert!(matches!(r, Refusal::Rate { rate: Rate::Concurrency, retry_after_ms: 1000, limit: 2, .. }));
        // A retry (not a request's first attempt) takes no lease.
        let (retry, _) = admitted(c.reserve(&ask(&scopes, T0, false, 0, 0)));
        assert!(retry.lease.is_none());
        c.settle(retry, Spent::default(), None);
        // Settling without the lease keeps the slot; releasing gives it back (twice is harmless).
        let lease_a = a.take_lease().unwrap();
        c.settle(a, Spent::default(), None);
        assert_eq!(c.usage(ScopeKind::Tenant, "t", T0).in_flight, 2);
        c.release(lease_a);
        assert_eq!(c.usage(ScopeKind::Tenant, "t", T0).in_flight, 1);
        let (mut d, _) = admitted(c.reserve(&ask(&scopes, T0 + 1, true, 0, 0)));
        assert!(c.reserve(&ask(&scopes, T0 + 1, true, 0, 0)).is_err());
        // b's lease expires at T0 + 10 s even though b is never settled.
        let (e, _) = admitted(c.reserve(&ask(&scopes, T0 + 10_000, true, 0, 0)));
        assert_eq!(c.usage(ScopeKind::Tenant, "t", T0 + 10_000).in_flight, 2);
        let lease_d = d.take_lease();
        c.settle(d, Spent::default(), lease_d);
        let _ = b.take_lease();
        c.settle(b, Spent::default(), None);
        let mut e = e;
        let lease_e = e.take_lease();
        c.settle(e, Spent::default(), lease_e);
        assert_eq!(c.usage(ScopeKind::Tenant, "t", T0 + 10_001).in_flight, 0);
    }

    #[test]
    fn an_unsettled_hold_expires_and_a_late_settle_adds_only_its_spend() {
        let c = LocalCounters::new().with_hold_ttl(5_000);
        let scopes: Arc<[Scope]> =
            Arc::new([scope(ScopeKind::Key, "k", Limits { budget_total: Some(10 * USD), ..Limits::default() })]);
        let (h, _) = admitted(c.reserve(&ask(&scopes, T0, false, 0, 8 * USD)));
        assert!(c.reserve(&ask(&scopes, T0 + 4_999, false, 0, 3 * USD)).is_err());
        assert_eq!(c.usage(ScopeKind::Key, "k", T0 + 4_999).reserved, 8 * USD);
        // Expired: swept by the next decision (or read).
        let (h2, _) = admitted(c.reserve(&ask(&scopes, T0 + 5_000, false, 0, 3 * USD)));
        let u = c.usage(ScopeKind::Key, "k", T0 + 5_000);
        assert_eq!((u.total, u.reserved), (3 * USD, 3 * USD));
        assert_eq!(c.outstanding(), 1);
        // The late settle adds what was spent and subtracts nothing more.
        c.settle(h, Spent { cost: 2 * USD, tokens: 0 }, None);
        c.settle(h2, Spent { cost: USD, tokens: 0 }, None);
        let u = c.usage(ScopeKind::Key, "k", T0 + 6_000);
        assert_eq!((u.total, u.reserved), (3 * USD, 0));
        assert_eq!(c.outstanding(), 0);
    }

    #[test]
    fn seeded_spend_counts_and_past_days_read_as_zero() {
        let c = LocalCounters::new();
        c.seed(ScopeKind::Key, "k", T0, 2 * USD, 7 * USD, 30 * USD);
        let u = c.usage(ScopeKind::Key, "k", T0 + 1000);
        assert_eq!((u.day, u.month, u.total, u.reserved, u.in_flight), (2 * USD, 7 * USD, 30 * USD, 0, 0));
        let tomorrow = T0 + 86_400_000;
        let u = c.usage(ScopeKind::Key, "k", tomorrow);
        assert_eq!((u.day, u.month, u.total), (0, 7 * USD, 30 * USD));
        let scopes: Arc<[Scope]> = Arc::new([scope(
            ScopeKind::Key,
            "k",
            Limits { budget_day: Some(5 * USD), budget_month: Some(8 * USD), ..Limits::default() },
        )]);
        let r = refused(c.reserve(&ask(&scopes, T0 + 1000, false, 0, 2 * USD)));
        assert!(matches!(r, Refusal::Budget { window: Window::Month, used, .. } if used == 7 * USD));
        let (h, left) = admitted(c.reserve(&ask(&scopes, T0 + 1000, false, 0, USD)));
        assert_eq!(left.budget.unwrap().left, 0);
        c.settle(h, Spent { cost: USD, tokens: 0 }, None);
        assert_eq!(c.usage(ScopeKind::Key, "k", T0 + 2000).total, 31 * USD);
    }
}

#[cfg(test)]
mod props {
    use super::super::{Limits, Scope};
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_772_323_200_000;

    #[derive(Clone, Debug)]
    enum Op {
        /// Which scopes (bit 0: key, bit 1: tenant), cost, first attempt or not.
        Reserve {
            which: u8,
            cost: Nanos,
            request: bool,
        },
        /// Settle the n-th outstanding hold (mod their count) at this cost, releasing its lease.
        Settle {
            nth: usize,
            spent: Nanos,
            release: bool,
        },
        Release {
            nth: usize,
        },
        Wait {
            ms: i64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..4, 0i64..400, any::<bool>()).prop_map(|(which, cost, request)| Op::Reserve { which, cost, request }),
            3 => (any::<usize>(), 0i64..400, any::<bool>()).prop_map(|(nth, spent, release)| Op::Settle { nth, spent, release }),
            1 => any::<usize>().prop_map(|nth| Op::Release { nth }),
            1 => (0i64..5_000).prop_map(|ms| Op::Wait { ms }),
        ]
    }

    /// The reference: a scope's total is what was settled plus what is outstanding.
    #[derive(Default)]
    struct Model {
        settled: [Nanos; 2],
        outstanding: Vec<(Hold, [bool; 2])>,
    }

    impl Model {
        fn total(&self, i: usize) -> Nanos {
            self.settled[i] + self.outstanding.iter().filter(|(_, w)| w[i]).map(|(h, _)| h.cost).sum::<Nanos>()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn counters_match_a_reference(ops in proptest::collection::vec(op(), 1..80)) {
            let c = LocalCounters::new();
            let limits = [
                Limits { budget_total: Some(1_000), concurrency: Some(3), ..Limits::default() },
                Limits { budget_total: Some(1_500), ..Limits::default() },
            ];
            let all = [
                Scope { kind: ScopeKind::Key, id: Arc::from("x"), limits: limits[0].clone() },
                Scope { kind: ScopeKind::Tenant, id: Arc::from("x"), limits: limits[1].clone() },
            ];
            let group: Arc<str> = Arc::from("x");
            let mut m = Model::default();
            let mut leases: Vec<(Lease, [bool; 2])> = Vec::new();
            let mut now = T0;
            for op in ops {
                match op {
                    Op::Reserve { which, cost, request } => {
                        let used = [which & 1 != 0, which & 2 != 0];
                        let scopes: Arc<[Scope]> = (0..2).filter(|i| used[*i]).map(|i| all[i].clone()).collect();
                        let in_flight = leases.iter().filter(|(_, w)| w[0]).count();
                        let fits = (0..2).all(|i| !used[i] || !over_budget(m.total(i), cost, limits[i].budget_total.unwrap()))
                            && !(request && used[0] && in_flight >= 3);
                        let ask = Ask { scopes: &scopes, group: &group, now_ms: now, request, tokens: 0, cost };
                        match c.reserve(&ask) {
                            Ok((mut hold, _)) => {
                                prop_assert!(fits, "admitted past a limit");
                                if let Some(l) = hold.take_lease() { leases.push((l, used)); }
                                m.outstanding.push((hold, used));
                            }
                            Err(LimitError::Refused(_)) => prop_assert!(!fits, "refused within the limits"),
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::Settle { nth, spent, release } => {
                        if m.outstanding.is_empty() { continue; }
                        let (hold, used) = m.outstanding.remove(nth % m.outstanding.len());
                        let lease = if release && !leases.is_empty() { Some(leases.remove(nth % leases.len()).0) } else { None };
                        for (i, u) in used.iter().enumerate() { if *u { m.settled[i] += spent; } }
                        c.settle(hold, Spent { cost: spent, tokens: 0 }, lease);
                    }
                    Op::Release { nth } => {
                        if leases.is_empty() { continue; }
                        c.release(leases.remove(nth % leases.len()).0);
                    }
                    Op::Wait { ms } => now += ms,
                }
                for (i, s) in all.iter().enumerate() {
                    let u = c.usage(s.kind, &s.id, now);
                    prop_assert!(u.total >= 0 && u.reserved >= 0 && u.day >= 0 && u.month >= 0);
                    prop_assert_eq!(u.total, m.total(i));
                    prop_assert_eq!(u.total - u.reserved, m.settled[i]);
                }
                prop_assert_eq!(c.usage(ScopeKind::Key, "x", now).in_flight as usize, leases.iter().filter(|(_, w)| w[0]).count());
            }
            for (hold, used) in std::mem::take(&mut m.outstanding) {
                for (i, u) in used.iter().enumerate() { if *u { m.settled[i] += 7; } }
                c.settle(hold, Spent { cost: 7, tokens: 0 }, None);
            }
            for (lease, _) in leases { c.release(lease); }
            for (i, s) in all.iter().enumerate() {
                let u = c.usage(s.kind, &s.id, now);
                prop_assert_eq!((u.total, u.day, u.month, u.reserved, u.in_flight), (m.settled[i], m.settled[i], m.settled[i], 0, 0));
            }
            prop_assert_eq!(c.outstanding(), 0);
        }
    }
}
