//! The shared counters: Redis (or Valkey), one server-side script per decision.
//!
//! Decisions and settles run in `batch.lua` (beside this file, with `release.lua` and
//! `usage.lua`), so a decision over a key and its tenant is atomic across every replica: the
//! script sweeps the group's expired holds and leases, checks every scope, and counts only
//! if all admit. The semantics are those of [`super::local`], kept identical (the
//! integration tests run the same sequences on both).
//!
//! One task per [`RedisCounters`] sends them: whatever decisions and settles of a group are
//! waiting when it is free go in one EVALSHA, applied in arrival order, each with exactly
//! the effect it would have alone. An idle gateway sends each at once (one round trip, as
//! before); a busy one pays the script's fixed cost (the call, reading and writing each
//! scope's HASH) once per batch instead of once per request, which is what Redis's one
//! thread spends most of its time on. Groups never share a call, so every call's keys stay
//! in one hash slot.
//!
//! Keys, all carrying the group (tenant id) as hash tag `{group}` so one script may touch
//! them all on Redis Cluster too (`S` is `bourse:{group}:k:<key id>:` or `...:t:<tenant id>:`):
//! - `S` (HASH): the scope's counters, read with one HGETALL and written with one HSET per
//!   call: `d<day>`, `m<month>` and `t`, spend in nano-USD (settled + reserved); `r`, the
//!   cost of the scope's outstanding holds; `rq`/`tk`, the requests/tokens in its minute
//!   windows; `rn`/`tn`, the newest request/tokens timestamp; `pc`, the latest cutoff the
//!   windows were pruned to; `wx`, when their TTL was last renewed. Only today, the two days
//!   before, this month and the one before are kept: the first decision of a day deletes
//!   older fields. No TTL (the total lives there);
//! - `Srw` and `Stw` (HASH, millisecond -> requests / tokens) and `Swi` (ZSET of those
//!   milliseconds, by time): the minute windows, one bucket per millisecond like the local
//!   counters' (a busy key holds at most 60,000, however many requests it serves), only
//!   where the scope sets requests or tokens per minute. What leaves the window is taken off
//!   `rq`/`tk` and deleted; a settle moves its bucket's tokens from reserved to spent;
//! - `Slease` (ZSET, lease id by expiry), only where it sets a concurrency limit;
//! - `bourse:{group}:holds` (ZSET by expiry) of the outstanding holds, each member the hold's
//!   record `<id> <cost> <day> <month>` then ` <length>:<scope key suffix>` per scope (the
//!   settle rebuilds it from the [`Hold`] to remove it), which the sweep reads to take an
//!   expired hold's cost back off exactly the counters it was added to. The sweep touches
//!   scope keys not passed in KEYS, but always under the same hash tag (slot);
//! - `bourse:{group}:swept` (SET, kept a day after the last sweep): the records the sweep
//!   released, read only when a settle finds its hold gone (so it adds what was spent and
//!   gives back nothing).
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
use tokio::sync::{mpsc, oneshot};

/// The largest integer the scripts handle exactly (Lua numbers are doubles).
pub const MAX_EXACT: i64 = (1 << 53) - 1;
/// The longest one call may take before it is `Unavailable`.
pub const TIMEOUT: Duration = Duration::from_secs(1);

static BATCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("batch.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));
static USAGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("usage.lua")));

/// The most ops one call carries.
const MAX_BATCH: usize = 256;

#[derive(Clone)]
pub struct RedisCounters {
    conn: ConnectionManager,
    ops: mpsc::UnboundedSender<Op>,
    hold_ttl_ms: i64,
}

/// One decision or settle waiting for the batch task, with where its reply goes: the
/// values `batch.lua` returned for it.
struct Op {
    group: Arc<str>,
    kind: OpKind,
    /// None for a settle nobody waits for: a failure is logged.
    reply: Option<oneshot::Sender<Result<Vec<i64>, LimitError>>>,
}

/// An op names its scopes, not their keys: the batch task writes each key once per call, for
/// however many ops of the call name it.
enum OpKind {
    /// `head` is now, cost, tokens, request (0/1), the hold's expiry, day and month; `scopes`
    /// the decision's, in order. The hold's id is its record's first word.
    Reserve { head: [i64; 7], record: String, scopes: Arc<[Scope]> },
    /// `head` is the spent cost and tokens, the reserved cost and tokens, the hold's ts, day
    /// and month.
    Settle {
        record: String,
        head: [i64; 7],
        lease: Option<u64>,
        /// The hold's scopes, and its id (which of them have a tokens entry).
        scopes: Arc<[Scope]>,
        hold: u64,
        /// The scopes of the lease released with it.
        lease_scopes: Vec<(ScopeKind, Arc<str>)>,
    },
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters").field("hold_ttl_ms", &self.hold_ttl_ms).finish_non_exhaustive()
    }
}

// The names below are written piece by piece rather than with `format!`: a decision and a
// settle each need several, and the formatting machinery cost more than the rest of the
// gateway's part of a decision.

/// `bourse:{<group>}:`, the prefix of every key of a group (its hash tag), followed by `rest`.
fn group_key(group: &str, rest: &str) -> String {
    let mut key = String::with_capacity(group.len() + rest.len() + 10);
    push_group_prefix(&mut key, group);
    key.push_str(rest);
    key
}

fn push_group_prefix(out: &mut String, group: &str) {
    out.push_str("bourse:{");
    out.push_str(group);
    out.push_str("}:");
}

/// A scope's key under its group's prefix (`k:<id>:` or `t:<id>:`): what hold records name.
fn push_scope_suffix(out: &mut String, kind: ScopeKind, id: &str) {
    out.push_str(match kind {
        ScopeKind::Key => "k:",
        ScopeKind::Tenant => "t:",
    });
    out.push_str(id);
    out.push(':');
}

/// The length of [`push_scope_suffix`]'s text.
fn scope_suffix_len(id: &str) -> usize {
    id.len() + 3
}

/// A scope's key: `bourse:{<group>}:k:<id>:` (or `t:`), followed by `rest`.
fn scope_key(group: &str, kind: ScopeKind, id: &str, rest: &str) -> String {
    let mut key = String::with_capacity(group.len() + 10 + scope_suffix_len(id) + rest.len());
    push_group_prefix(&mut key, group);
    push_scope_suffix(&mut key, kind, id);
    key.push_str(rest);
    key
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
    let mut record = String::with_capacity(96);
    let mut n = itoa::Buffer::new();
    record.push_str(n.format(id));
    for v in [cost, day_of(at_ms), month_of(at_ms)] {
        record.push(' ');
        record.push_str(n.format(v));
    }
    for (kind, id) in scopes {
        record.push(' ');
        record.push_str(n.format(scope_suffix_len(id)));
        record.push(':');
        push_scope_suffix(&mut record, kind, id);
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

/// A scope's limits as batch.lua takes them (-1: none).
fn limit_args(l: &Limits) -> [i64; 6] {
    [
        limit_arg(l.budget_day),
        limit_arg(l.budget_month),
        limit_arg(l.budget_total),
        rate_arg(l.rpm),
        rate_arg(l.tpm),
        rate_arg(l.concurrency),
    ]
}

/// A connection to `url` that connects on first use, with [`TIMEOUT`] on connecting and on
/// every call and no retries: a caller on the request path gives up rather than waits. Fails
/// only on a malformed URL. Shared by the counters and the response cache.
pub(crate) fn lazy_connection(url: &str) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| format!("invalid redis URL: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())
}

impl RedisCounters {
    /// Connect to `url` (`redis://...`). Fails only on a malformed URL: an unreachable
    /// server is a per-decision [`LimitError::Unavailable`], so a replica starts (and serves,
    /// with "open") while Redis is down.
    pub async fn connect(url: &str) -> Result<RedisCounters, String> {
        let conn = lazy_connection(url)?;
        let (ops, queue) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(conn.clone(), queue));
        Ok(RedisCounters { conn, ops, hold_ttl_ms: HOLD_TTL_MS })
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

    /// Queues `kind` for the batch task and waits for its values.
    async fn submit(&self, group: &Arc<str>, kind: OpKind) -> Result<Vec<i64>, LimitError> {
        let (reply, answer) = oneshot::channel();
        let op = Op { group: group.clone(), kind, reply: Some(reply) };
        self.ops.send(op).map_err(|_| unavailable("the batch task ended"))?;
        answer.await.map_err(|_| unavailable("the batch task ended"))?
    }

    pub async fn reserve(&self, ask: &Ask<'_>) -> Result<(Hold, Remaining), LimitError> {
        let now = ask.now_ms;
        let cost = exact(ask.cost);
        let tokens = ask.tokens.min(MAX_EXACT as u64);
        let id = hold_id(ask.scopes);
        let record = hold_record(id, cost, now, ask.scopes.iter().map(|s| (s.kind, &*s.id)));
        let head = [
            now,
            cost,
            tokens as i64,
            i64::from(ask.request),
            now.saturating_add(self.hold_ttl_ms),
            day_of(now),
            month_of(now),
        ];
        let out = self.submit(ask.group, OpKind::Reserve { head, record, scopes: ask.scopes.clone() }).await?;
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
        let lease = Lease::for_ask(id, ask, false);
        let (scopes, group) = (ask.scopes.clone(), ask.group.clone());
        Ok((Hold { id, scopes, group, at_ms: now, cost, tokens: ask.tokens, local: false, lease }, left))
    }

    pub async fn settle(&self, hold: Hold, spent: Spent, release: Option<Lease>) -> Result<(), LimitError> {
        let group = hold.group.clone();
        let (kind, other) = settle_op(hold, spent, release);
        self.submit(&group, kind).await?;
        if let Some(l) = other {
            self.release(l).await?;
        }
        Ok(())
    }

    /// [`RedisCounters::settle`] without waiting: the settle joins the next call, and a
    /// failure is logged (the hold then expires on its own).
    pub fn settle_detached(&self, hold: Hold, spent: Spent, release: Option<Lease>) {
        let group = hold.group.clone();
        let (kind, other) = settle_op(hold, spent, release);
        let _ = self.ops.send(Op { group, kind, reply: None });
        if let Some(l) = other {
            let counters = self.clone();
            tokio::spawn(async move {
                if let Err(e) = counters.release(l).await {
                    tracing::warn!("lease release failed: {e}; the lease expires on its own");
                }
            });
        }
    }

    pub async fn release(&self, lease: Lease) -> Result<(), LimitError> {
        if lease.scopes.is_empty() {
            return Ok(());
        }
        let mut inv = RELEASE.prepare_invoke();
        for (kind, id) in &lease.scopes {
            inv.key(scope_key(&lease.group, *kind, id, "lease"));
        }
        inv.arg(lease.id);
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    pub async fn usage(&self, kind: ScopeKind, id: &str, group: &str, now_ms: i64) -> Result<Usage, LimitError> {
        let mut suffix = String::with_capacity(scope_suffix_len(id));
        push_scope_suffix(&mut suffix, kind, id);
        let mut inv = USAGE.prepare_invoke();
        inv.key(group_key(group, "holds"))
            .key(scope_key(group, kind, id, ""))
            .key(scope_key(group, kind, id, "lease"))
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

/// A settle as batch.lua takes it, and a lease of another group to release on its own (not
/// how the gateway uses them; one with no scope, no concurrency limit, has nothing to
/// release).
fn settle_op(hold: Hold, spent: Spent, release: Option<Lease>) -> (OpKind, Option<Lease>) {
    let (same, other) = match release {
        Some(l) if l.group == hold.group => (Some(l), None),
        other => (None, other),
    };
    let same = same.filter(|l| !l.scopes.is_empty());
    let record = hold_record(hold.id, hold.cost, hold.at_ms, hold.scopes.iter().map(|s| (s.kind, &*s.id)));
    let head = [
        exact(spent.cost),
        spent.tokens.min(MAX_EXACT as u64) as i64,
        hold.cost,
        hold.tokens.min(MAX_EXACT as u64) as i64,
        hold.at_ms,
        day_of(hold.at_ms),
        month_of(hold.at_ms),
    ];
    let (lease, lease_scopes) = same.map_or((None, Vec::new()), |l| (Some(l.id), l.scopes));
    (OpKind::Settle { record, head, lease, scopes: hold.scopes, hold: hold.id, lease_scopes }, other)
}

/// The batch task: sends what is waiting, one call per group, and hands out the replies;
/// ends when every [`RedisCounters`] clone is gone.
async fn send_batches(conn: ConnectionManager, mut queue: mpsc::UnboundedReceiver<Op>) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut ops, MAX_BATCH).await > 0 {
        let mut groups: Vec<Vec<Op>> = Vec::new();
        for op in ops.drain(..) {
            match groups.iter_mut().find(|g| g[0].group == op.group) {
                Some(g) => g.push(op),
                None => groups.push(vec![op]),
            }
        }
        futures_util::future::join_all(groups.into_iter().map(|g| send_batch(conn.clone(), g))).await;
    }
}

/// One group's ops in one call of batch.lua: the settles summed per scope, then the
/// decisions in arrival order.
async fn send_batch(mut conn: ConnectionManager, ops: Vec<Op>) {
    let mut inv = BATCH.prepare_invoke();
    let group = &*ops[0].group;
    inv.key(group_key(group, "holds"));
    // KEYS[1] is the holds ZSET; every scope's key follows once (a scope's key is its kind and
    // id under the group's prefix, so the pair names it).
    let mut scope_keys: Vec<(ScopeKind, &str)> = Vec::new();
    fn key<'a>(scope_keys: &mut Vec<(ScopeKind, &'a str)>, kind: ScopeKind, id: &'a str) -> usize {
        match scope_keys.iter().position(|&(k, i)| k == kind && i == id) {
            Some(i) => i + 2,
            None => {
                scope_keys.push((kind, id));
                scope_keys.len() + 1
            }
        }
    }
    let mut entries: Vec<(usize, [i64; 6])> = Vec::new();
    let mut sums: Vec<(usize, i64, i64, i64, i64)> = Vec::new();
    let mut tokens: Vec<(usize, i64, i64, i64)> = Vec::new();
    let mut leases: Vec<(usize, String)> = Vec::new();
    let mut records: Vec<&str> = Vec::new();
    let mut decisions = Vec::with_capacity(ops.len() * 128);
    // Per decision: its head and its scopes' entries (indices into `entries`).
    let mut taken: Vec<([i64; 7], Vec<usize>)> = Vec::new();
    let mut maxcut = None;
    fn i4(b: &mut Vec<u8>, v: usize) {
        b.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn i8(b: &mut Vec<u8>, v: i64) {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for op in &ops {
        match &op.kind {
            OpKind::Reserve { head, record, scopes } => {
                let [now, cost, tokens, request, expiry, day, month] = *head;
                maxcut = maxcut.max(Some(now - MINUTE_MS));
                for v in [now, cost, tokens, expiry] {
                    i8(&mut decisions, v);
                }
                decisions.push(request as u8);
                i4(&mut decisions, day as usize);
                i4(&mut decisions, month as usize);
                i4(&mut decisions, record.len());
                decisions.extend_from_slice(record.as_bytes());
                i4(&mut decisions, scopes.len());
                let mut named = Vec::with_capacity(scopes.len());
                for s in scopes.iter() {
                    let idx = key(&mut scope_keys, s.kind, &s.id);
                    let l = limit_args(&s.limits);
                    let e = match entries.iter().position(|e| e.0 == idx && e.1 == l) {
                        Some(e) => e,
                        None => {
                            entries.push((idx, l));
                            entries.len() - 1
                        }
                    };
                    i4(&mut decisions, e + 1);
                    named.push(e);
                }
                taken.push((*head, named));
            }
            OpKind::Settle { record, head, lease, scopes, hold, lease_scopes } => {
                let [spent, spent_tokens, held, held_tokens, at, day, month] = *head;
                records.push(record);
                for (i, s) in scopes.iter().enumerate() {
                    let idx = key(&mut scope_keys, s.kind, &s.id);
                    match sums.iter_mut().find(|x| x.0 == idx && x.1 == day && x.2 == month) {
                        Some(x) => {
                            x.3 += spent;
                            x.4 += held;
                        }
                        None => sums.push((idx, day, month, spent, held)),
                    }
                    if has_tokens_entry(*hold, i) {
                        match tokens.iter_mut().find(|x| x.0 == idx && x.1 == at) {
                            Some(x) => {
                                x.2 += held_tokens;
                                x.3 += spent_tokens;
                            }
                            None => tokens.push((idx, at, held_tokens, spent_tokens)),
                        }
                    }
                }
                if let Some(id) = lease {
                    for (kind, scope) in lease_scopes {
                        leases.push((key(&mut scope_keys, *kind, scope), id.to_string()));
                    }
                }
            }
        }
    }
    for &(kind, id) in &scope_keys {
        inv.key(scope_key(group, kind, id, ""));
    }
    // The blob as batch.lua reads it (little-endian; `struct` on the Lua side).
    let mut blob = Vec::with_capacity(16 + entries.len() * 52 + sums.len() * 36 + tokens.len() * 28 + decisions.len());
    i4(&mut blob, entries.len());
    for (idx, l) in &entries {
        i4(&mut blob, *idx);
        l.iter().for_each(|v| i8(&mut blob, *v));
    }
    i4(&mut blob, sums.len());
    for &(idx, day, month, spent, held) in &sums {
        i4(&mut blob, idx);
        [day, month, spent, held].into_iter().for_each(|v| i8(&mut blob, v));
    }
    i4(&mut blob, tokens.len());
    for &(idx, at, held, spent) in &tokens {
        i4(&mut blob, idx);
        [at, held, spent].into_iter().for_each(|v| i8(&mut blob, v));
    }
    i4(&mut blob, leases.len());
    for (idx, id) in &leases {
        i4(&mut blob, *idx);
        i4(&mut blob, id.len());
        blob.extend_from_slice(id.as_bytes());
    }
    let together = together(&taken, &entries);
    match &together {
        None => blob.push(0),
        Some(t) => {
            blob.push(1);
            [t.min_now, t.max_now].into_iter().for_each(|v| i8(&mut blob, v));
            [t.day, t.month].into_iter().for_each(|v| i4(&mut blob, v as usize));
            for e in &t.entries {
                [e.cost, e.requests, e.tokens, e.most, e.newest_request, e.newest_tokens]
                    .into_iter()
                    .for_each(|v| i8(&mut blob, v));
                i4(&mut blob, e.buckets.len());
                for &(at, r, k) in &e.buckets {
                    [at, r, k].into_iter().for_each(|v| i8(&mut blob, v));
                }
            }
        }
    }
    blob.extend_from_slice(&decisions);
    inv.arg(blob).arg(maxcut.map_or(String::new(), |c: i64| c.to_string())).arg(records.len());
    for r in records {
        inv.arg(r);
    }
    if together.is_some() {
        for op in &ops {
            if let OpKind::Reserve { head, record, .. } = &op.kind {
                inv.arg(head[4]).arg(record.as_str());
            }
        }
    }
    // A little over the connection's own timeouts: a connect then a call.
    let result: Result<Vec<i64>, String> = match tokio::time::timeout(TIMEOUT * 2, inv.invoke_async(&mut conn)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".to_string()),
    };
    let mut values = match result {
        Ok(v) => v.into_iter(),
        Err(e) => {
            for op in ops {
                answer(op.reply, Err(LimitError::Unavailable(e.clone())));
            }
            return;
        }
    };
    // Taken together: each decision's counters rebuilt from the scopes' counters before them.
    let mut before: Option<Vec<[i64; 7]>> = None;
    if values.as_slice().first() == Some(&2) {
        let v = &values.as_slice()[1..];
        if v.len() == 7 * entries.len() {
            before = Some(v.chunks(7).map(|c| c.try_into().expect("chunks of 7")).collect());
        }
    }
    let mut d = 0;
    for op in ops {
        let reply = match (&op.kind, &mut before) {
            (OpKind::Settle { .. }, _) => Some(Vec::new()),
            (OpKind::Reserve { scopes, .. }, None) => decision(&mut values, scopes),
            (OpKind::Reserve { .. }, Some(counters)) => {
                let (head, named) = &taken[d];
                d += 1;
                Some(admitted(counters, head, named, &entries))
            }
        };
        answer(op.reply, reply.ok_or_else(|| unavailable("batch reply shorter than its ops")));
    }
}

fn answer(to: Option<oneshot::Sender<Result<Vec<i64>, LimitError>>>, reply: Result<Vec<i64>, LimitError>) {
    match (to, reply) {
        (Some(to), reply) => {
            let _ = to.send(reply);
        }
        (None, Err(e)) => tracing::warn!("settle failed: {e}; the reservation expires on its own"),
        (None, Ok(_)) => {}
    }
}

/// What batch.lua needs to take a batch's decisions together (see there): None when they
/// cannot be (different days, a concurrency limit, a scope under two sets of limits, more
/// than a minute between them).
fn together(taken: &[([i64; 7], Vec<usize>)], entries: &[(usize, [i64; 6])]) -> Option<Together> {
    let (first, _) = taken.first()?;
    let (day, month) = (first[5], first[6]);
    if taken.iter().any(|(h, _)| h[5] != day || h[6] != month) {
        return None;
    }
    if entries.iter().any(|e| e.1[5] >= 0) {
        return None;
    }
    if entries.iter().enumerate().any(|(i, e)| entries[..i].iter().any(|x| x.0 == e.0)) {
        return None;
    }
    let min_now = taken.iter().map(|(h, _)| h[0]).min()?;
    let max_now = taken.iter().map(|(h, _)| h[0]).max()?;
    if max_now - min_now >= MINUTE_MS {
        return None;
    }
    let mut sums: Vec<Totals> =
        entries.iter().map(|_| Totals { newest_request: -1, newest_tokens: -1, ..Totals::default() }).collect();
    for (h, named) in taken {
        let [now, cost, tokens, request, ..] = *h;
        for &e in named {
            let (limits, t) = (&entries[e].1, &mut sums[e]);
            t.cost += cost;
            let requests = i64::from(request == 1 && limits[3] >= 0);
            let tokens = if limits[4] >= 0 { tokens } else { 0 };
            if requests > 0 {
                t.requests += 1;
                t.newest_request = t.newest_request.max(now);
            }
            if limits[4] >= 0 {
                t.tokens += tokens;
                t.most = t.most.max(tokens);
                t.newest_tokens = t.newest_tokens.max(now);
            }
            if requests > 0 || tokens > 0 {
                match t.buckets.iter_mut().find(|b| b.0 == now) {
                    Some(b) => {
                        b.1 += requests;
                        b.2 += tokens;
                    }
                    None => t.buckets.push((now, requests, tokens)),
                }
            }
        }
    }
    Some(Together { min_now, max_now, day, month, entries: sums })
}

struct Together {
    min_now: i64,
    max_now: i64,
    day: i64,
    month: i64,
    entries: Vec<Totals>,
}

/// One scope's share of the decisions taken together.
#[derive(Default)]
struct Totals {
    cost: i64,
    requests: i64,
    tokens: i64,
    /// The most tokens one decision asks.
    most: i64,
    newest_request: i64,
    newest_tokens: i64,
    /// (ms, requests, tokens) the windows gain.
    buckets: Vec<(i64, i64, i64)>,
}

/// The reply one decision would have had alone, counted onto `counters` (per entry: day,
/// month, total, requests, newest request, tokens, newest tokens).
fn admitted(counters: &mut [[i64; 7]], head: &[i64; 7], named: &[usize], entries: &[(usize, [i64; 6])]) -> Vec<i64> {
    let [now, cost, tokens, request, ..] = *head;
    let mut out = Vec::with_capacity(1 + 7 * named.len());
    out.push(1);
    for &e in named {
        let (limits, c) = (&entries[e].1, &mut counters[e]);
        c[0] += cost;
        c[1] += cost;
        c[2] += cost;
        out.extend([c[0], c[1], c[2]]);
        if limits[3] >= 0 {
            if request == 1 {
                c[3] += 1;
                if c[3] == 1 || now > c[4] {
                    c[4] = now;
                }
            }
            out.extend([c[3], if c[3] > 0 { c[4] } else { -1 }]);
        } else {
            out.extend([0, -1]);
        }
        if limits[4] >= 0 {
            c[5] += tokens;
            c[6] = c[6].max(now);
            out.extend([c[5], c[6]]);
        } else {
            out.extend([0, -1]);
        }
    }
    out
}

/// One decision's values from batch.lua's reply, as {0, scope, what, value} or {1, then 7
/// per scope: day, month, total, requests, newest request, tokens, newest tokens} (0, or -1
/// for a timestamp, where the scope sets no such limit: the reply leaves those out).
fn decision(values: &mut impl Iterator<Item = i64>, scopes: &[Scope]) -> Option<Vec<i64>> {
    match values.next()? {
        0 => Some(vec![0, values.next()?, values.next()?, values.next()?]),
        1 => {
            let mut out = Vec::with_capacity(1 + 7 * scopes.len());
            out.push(1);
            for s in scopes {
                let l = limit_args(&s.limits);
                for limit in [l[0], l[1], l[2]] {
                    out.push(if limit >= 0 { values.next()? } else { 0 });
                }
                for limit in [l[3], l[4]] {
                    if limit >= 0 {
                        out.push(values.next()?);
                        out.push(values.next()?);
                    } else {
                        out.extend([0, -1]);
                    }
                }
            }
            Some(out)
        }
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        assert_eq!(group_key("acme", "holds"), "bourse:{acme}:holds");
        assert_eq!(scope_key("acme", ScopeKind::Key, "key_1", ""), "bourse:{acme}:k:key_1:");
        assert_eq!(scope_key("acme", ScopeKind::Tenant, "acme", "lease"), "bourse:{acme}:t:acme:lease");
        // 2026-03-01T00:00:00Z: day 20513, month 2026 * 12 + 2.
        let record =
            hold_record(42, 7, 1_772_323_200_000, [(ScopeKind::Key, "key_1"), (ScopeKind::Tenant, "é")].into_iter());
        assert_eq!(record, "42 7 20513 24314 8:k:key_1: 5:t:é:");
    }
}
