//! The shared counters: Redis (or Valkey), one server-side script per decision.
//!
//! Every call is one EVALSHA of a Lua script (`reserve.lua`, `settle.lua`, `release.lua`,
//! `usage.lua` beside this file), so a decision over a key and its tenant is atomic across
//! every replica: the script sweeps the group's expired holds and leases, checks every
//! scope, and counts only if all admit. The semantics are those of [`super::local`], kept
//! identical (the integration tests run the same sequences on both).
//!
//! Keys, all carrying the group (tenant id) as hash tag `{group}` so one script may touch
//! them all on Redis Cluster too (`S` is `bourse:{group}:k:<key id>:` or `...:t:<tenant id>:`):
//! - `S` (HASH): the scope's counters, read with one HMGET and written with one HSET per
//!   decision: `d<day>`, `m<month>` and `t`, spend in nano-USD (settled + reserved); `r`,
//!   the cost of the scope's outstanding holds; `tk`, the tokens in its tokens-per-minute
//!   window; `rn`/`tn`, the newest request/tokens timestamp; `rx`/`tx`, when the TTL of the
//!   minute windows was last renewed. Only today, the two days before, this month and the
//!   one before are kept: the first decision of a day deletes older fields. No TTL (the
//!   total lives there);
//! - `Srpm` (ZSET, hold id by timestamp), only where the scope sets requests per minute;
//! - `Stpm` (ZSET, `<hold id>:<tokens>` by timestamp), only where it sets tokens per minute:
//!   the tokens are in the member, so what leaves the window is taken off `tk` without
//!   another read;
//! - `Slease` (ZSET, lease id by expiry), only where it sets a concurrency limit;
//! - `bourse:{group}:holds` (ZSET by expiry) of the outstanding holds, each member the hold's
//!   record `<id> <cost> <day> <month>` then ` <length>:<scope key suffix>` per scope (the
//!   settle rebuilds it from the [`Hold`] to remove it), which the sweep reads to take an
//!   expired hold's cost back off exactly the counters it was added to. The sweep touches
//!   scope keys not passed in KEYS, but always under the same hash tag (slot).
//!
//! Integers only: the scripts count and compare in Lua numbers, exact up to 2^53 nano-USD
//! (about $9M). Limits and costs are clamped to [`MAX_EXACT`]
//! before they reach a script, so no comparison ever loses precision.
//!
//! Hold and lease ids are random u64s, so replicas never collide. A server that cannot be
//! reached (or answers slower than [`TIMEOUT`]) is [`LimitError::Unavailable`] for that
//! call; the connection manager reconnects in the background.

use super::remaining::{remaining, After};
use super::{
    day_of, month_of, window_end, Ask, Hold, Lease, LimitError, Limits, Nanos, Rate, Refusal, Remaining, Scope,
    ScopeKind, Spent, Usage, Window, HOLD_TTL_MS, MINUTE_MS,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// The largest integer the scripts handle exactly (Lua numbers are doubles).
pub const MAX_EXACT: i64 = (1 << 53) - 1;
/// The longest one call may take before it is `Unavailable`.
pub const TIMEOUT: Duration = Duration::from_secs(1);

static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("reserve.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("settle.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));
static USAGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("usage.lua")));

#[derive(Clone)]
pub struct RedisCounters {
    conn: ConnectionManager,
    hold_ttl_ms: i64,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters").field("hold_ttl_ms", &self.hold_ttl_ms).finish_non_exhaustive()
    }
}

fn group_prefix(group: &str) -> String {
    format!("bourse:{{{group}}}:")
}

/// A scope's key under its group's prefix (`k:<id>:` or `t:<id>:`): what hold records name.
fn scope_suffix(kind: ScopeKind, id: &str) -> String {
    let k = match kind {
        ScopeKind::Key => "k",
        ScopeKind::Tenant => "t",
    };
    format!("{k}:{id}:")
}

/// Scopes (by index) whose tokens window a hold has an entry in, kept in the low bits of the
/// hold id so the settle knows where to look without a read (past them, it looks everywhere).
const TPM_BITS: usize = 8;

fn hold_id(scopes: &[Scope]) -> u64 {
    let mut flags = 0;
    for (i, s) in scopes.iter().enumerate().take(TPM_BITS) {
        if s.limits.tpm.is_some() {
            flags |= 1 << i;
        }
    }
    (fastrand::u64(..) & !((1 << TPM_BITS) - 1)) | flags
}

/// A hold's member in its group's holds ZSET (see the module doc).
fn hold_record<'a>(id: u64, cost: Nanos, at_ms: i64, scopes: impl Iterator<Item = (ScopeKind, &'a str)>) -> String {
    use std::fmt::Write;
    let mut record = format!("{id} {cost} {} {}", day_of(at_ms), month_of(at_ms));
    for (kind, id) in scopes {
        let suffix = scope_suffix(kind, id);
        let _ = write!(record, " {}:{suffix}", suffix.len());
    }
    record
}

fn has_tokens_entry(id: u64, i: usize) -> bool {
    i >= TPM_BITS || id & (1 << i) != 0
}

fn unavailable(e: impl std::fmt::Display) -> LimitError {
    LimitError::Unavailable(e.to_string())
}

fn exact(v: i64) -> i64 {
    v.clamp(0, MAX_EXACT)
}

fn limit_arg(v: Option<i64>) -> i64 {
    v.map_or(-1, exact)
}

fn rate_arg(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| v.min(MAX_EXACT as u64) as i64)
}

impl RedisCounters {
    /// Connect to `url` (`redis://...`). Fails only on a malformed URL: an unreachable
    /// server is a per-decision [`LimitError::Unavailable`], so a replica starts (and serves,
    /// with "open") while Redis is down.
    pub async fn connect(url: &str) -> Result<RedisCounters, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid redis URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(RedisCounters { conn, hold_ttl_ms: HOLD_TTL_MS })
    }

    /// The same counters with holds and leases expiring after `ms` instead of
    /// [`HOLD_TTL_MS`] (tests).
    pub fn with_hold_ttl(mut self, ms: i64) -> RedisCounters {
        self.hold_ttl_ms = ms;
        self
    }

    async fn run<T: redis::FromRedisValue>(&self, invocation: redis::ScriptInvocation<'_>) -> Result<T, LimitError> {
        let mut conn = self.conn.clone();
        // A little over the connection's own timeouts: a connect then a call.
        match tokio::time::timeout(TIMEOUT * 2, invocation.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable("timed out")),
        }
    }

    pub async fn reserve(&self, ask: &Ask<'_>) -> Result<(Hold, Remaining), LimitError> {
        let now = ask.now_ms;
        let cost = exact(ask.cost);
        let tokens = ask.tokens.min(MAX_EXACT as u64);
        let id = hold_id(ask.scopes);
        let (day, month) = (day_of(now), month_of(now));
        let group = group_prefix(ask.group);
        let record = hold_record(id, cost, now, ask.scopes.iter().map(|s| (s.kind, &*s.id)));
        let mut inv = RESERVE.prepare_invoke();
        inv.key(format!("{group}holds"));
        for s in ask.scopes {
            inv.key(format!("{group}{}", scope_suffix(s.kind, &s.id)));
        }
        inv.arg(now)
            .arg(id)
            .arg(cost)
            .arg(tokens)
            .arg(u8::from(ask.request))
            .arg(now.saturating_add(self.hold_ttl_ms))
            .arg(day)
            .arg(month)
            .arg(record)
            .arg(format!("{id}:{tokens}"))
            .arg(now - MINUTE_MS);
        for s in ask.scopes {
            let l = &s.limits;
            inv.arg(limit_arg(l.budget_day))
                .arg(limit_arg(l.budget_month))
                .arg(limit_arg(l.budget_total))
                .arg(rate_arg(l.rpm))
                .arg(rate_arg(l.tpm))
                .arg(rate_arg(l.concurrency));
        }
        let out: Vec<i64> = self.run(inv).await?;
        if out.first() == Some(&0) {
            return Err(LimitError::Refused(refusal(ask.scopes, &out, now)?));
        }
        if out.len() != 1 + 7 * ask.scopes.len() {
            return Err(unavailable(format!("unexpected reserve reply of {} values", out.len())));
        }
        let newest = |v: i64| (v >= 0).then_some(v);
        let afters = out[1..].chunks(7).map(|c| After {
            day: c[0],
            month: c[1],
            total: c[2],
            requests: c[3] as u64,
            requests_newest: newest(c[4]),
            tokens: c[5] as u64,
            tokens_newest: newest(c[6]),
        });
        let left = remaining(ask.scopes.iter().zip(afters).map(|(s, a)| (s.kind, &s.limits, a)), now);
        let scopes: Vec<(ScopeKind, Arc<str>)> = ask.scopes.iter().map(|s| (s.kind, s.id.clone())).collect();
        let group: Arc<str> = Arc::from(ask.group);
        let lease = Lease::for_ask(id, ask, &group, false);
        Ok((Hold { id, scopes, group, at_ms: now, cost, tokens: ask.tokens, local: false, lease }, left))
    }

    pub async fn settle(&self, hold: Hold, spent: Spent, release: Option<Lease>) -> Result<(), LimitError> {
        let group = group_prefix(&hold.group);
        let mut inv = SETTLE.prepare_invoke();
        inv.key(format!("{group}holds"));
        for (kind, id) in &hold.scopes {
            inv.key(format!("{group}{}", scope_suffix(*kind, id)));
        }
        // A lease of another group (not how the gateway uses them) is released on its own;
        // one with no scope (no concurrency limit) has nothing to release.
        let (same, other) = match release {
            Some(l) if l.group == hold.group => (Some(l), None),
            other => (None, other),
        };
        let same = same.filter(|l| !l.scopes.is_empty());
        if let Some(l) = &same {
            for (kind, id) in &l.scopes {
                inv.key(format!("{group}{}lease", scope_suffix(*kind, id)));
            }
        }
        let flags: String =
            (0..hold.scopes.len()).map(|i| if has_tokens_entry(hold.id, i) { '1' } else { '0' }).collect();
        inv.arg(hold_record(hold.id, hold.cost, hold.at_ms, hold.scopes.iter().map(|(k, id)| (*k, &**id))))
            .arg(hold.id)
            .arg(exact(spent.cost))
            .arg(spent.tokens.min(MAX_EXACT as u64))
            .arg(hold.cost)
            .arg(hold.tokens.min(MAX_EXACT as u64))
            .arg(hold.at_ms)
            .arg(day_of(hold.at_ms))
            .arg(month_of(hold.at_ms))
            .arg(hold.scopes.len())
            .arg(same.as_ref().map_or(String::new(), |l| l.id.to_string()))
            .arg(flags);
        let _: i64 = self.run(inv).await?;
        if let Some(l) = other {
            self.release(l).await?;
        }
        Ok(())
    }

    pub async fn release(&self, lease: Lease) -> Result<(), LimitError> {
        if lease.scopes.is_empty() {
            return Ok(());
        }
        let group = group_prefix(&lease.group);
        let mut inv = RELEASE.prepare_invoke();
        for (kind, id) in &lease.scopes {
            inv.key(format!("{group}{}lease", scope_suffix(*kind, id)));
        }
        inv.arg(lease.id);
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    pub async fn usage(&self, kind: ScopeKind, id: &str, group: &str, now_ms: i64) -> Result<Usage, LimitError> {
        let g = group_prefix(group);
        let suffix = scope_suffix(kind, id);
        let mut inv = USAGE.prepare_invoke();
        inv.key(format!("{g}holds"))
            .key(format!("{g}{suffix}"))
            .key(format!("{g}{suffix}lease"))
            .arg(now_ms)
            .arg(day_of(now_ms))
            .arg(month_of(now_ms))
            .arg(suffix);
        let v: Vec<i64> = self.run(inv).await?;
        let [day, month, total, reserved, in_flight] = v[..] else {
            return Err(unavailable(format!("unexpected usage reply of {} values", v.len())));
        };
        Ok(Usage { day, month, total, reserved, in_flight: in_flight as u64 })
    }
}

/// The refusal a reserve script reported as `{0, scope (1-based), what, value}`.
fn refusal(scopes: &[Scope], out: &[i64], now: i64) -> Result<Refusal, LimitError> {
    let bad = || unavailable(format!("unexpected reserve reply {out:?}"));
    let [_, i, what, value] = out[..] else { return Err(bad()) };
    let scope = usize::try_from(i - 1).ok().and_then(|i| scopes.get(i)).ok_or_else(bad)?;
    let (kind, id, l): (ScopeKind, Arc<str>, &Limits) = (scope.kind, scope.id.clone(), &scope.limits);
    let budget = |window: Window, limit: Option<Nanos>| {
        Ok(Refusal::Budget {
            scope: kind,
            id: id.clone(),
            window,
            limit: limit.unwrap_or_default(),
            used: value,
            resets_at_ms: window_end(window, now),
        })
    };
    let rate = |rate: Rate, limit: Option<u64>| {
        Ok(Refusal::Rate {
            scope: kind,
            id: id.clone(),
            rate,
            limit: limit.unwrap_or_default(),
            retry_after_ms: value.max(1),
        })
    };
    match what {
        1 => budget(Window::Day, l.budget_day),
        2 => budget(Window::Month, l.budget_month),
        3 => budget(Window::Total, l.budget_total),
        4 => rate(Rate::Requests, l.rpm),
        5 => rate(Rate::Tokens, l.tpm),
        6 => rate(Rate::Concurrency, l.concurrency),
        _ => Err(bad()),
    }
}
