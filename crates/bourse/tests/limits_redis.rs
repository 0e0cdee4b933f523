//! The shared counters against a real `redis-server` (each test starts its own; see
//! `common/redis.rs`): the same decisions as the in-process counters, atomic across
//! replicas, and `Unavailable` (not a hang) while the server is down.

#[path = "common/redis.rs"]
mod redis_server;

use bourse::limit::{
    Ask, Hold, Lease, LimitError, Limits, LocalCounters, Nanos, RedisCounters, Refusal, Remaining, Scope, ScopeKind,
    Spent, Usage,
};
use redis_server::RedisServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 2026-03-31T23:00:00Z: an hour before both a day and a month end.
const T0: i64 = 1_774_998_000_000;
const CENT: Nanos = 10_000_000;

fn key(id: &str, limits: Limits) -> Scope {
    Scope { kind: ScopeKind::Key, id: Arc::from(id), limits }
}

fn tenant(id: &str, limits: Limits) -> Scope {
    Scope { kind: ScopeKind::Tenant, id: Arc::from(id), limits }
}

type Decision = Result<Remaining, Refusal>;

fn decision(r: Result<(Hold, Remaining), LimitError>) -> (Option<Hold>, Decision) {
    match r {
        Ok((h, left)) => (Some(h), Ok(left)),
        Err(LimitError::Refused(r)) => (None, Err(r)),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn the_same_sequences_decide_the_same_on_both_backends() {
    let server = RedisServer::start();
    let redis = RedisCounters::connect(&server.url).await.unwrap().with_hold_ttl(90_000);
    let local = LocalCounters::new().with_hold_ttl(90_000);
    // Two keys of one tenant, and another tenant whose id equals the first key's.
    let k1 = Limits { budget_day: Some(15 * CENT), rpm: Some(5), tpm: Some(3_000), ..Limits::default() };
    let k2 = Limits { budget_total: Some(60 * CENT), concurrency: Some(2), ..Limits::default() };
    let t = Limits { budget_month: Some(30 * CENT), tpm: Some(5_000), concurrency: Some(3), ..Limits::default() };
    let k3 = Limits { rpm: Some(1), ..Limits::default() };
    let k4 = Limits { budget_total: Some(20 * CENT), concurrency: Some(1), ..Limits::default() };
    let groups: [(Arc<str>, Arc<[Scope]>); 5] = [
        ("acme".into(), Arc::from([key("k1", k1.clone()), tenant("acme", t.clone())])),
        ("acme".into(), Arc::from([key("k2", k2), tenant("acme", t.clone())])),
        ("acme".into(), Arc::from([key("k3", k3), tenant("acme", t)])),
        ("k1".into(), Arc::from([tenant("k1", k1)])),
        ("solo".into(), Arc::from([key("k4", k4)])),
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    let mut now = T0;
    let mut holds: Vec<(Hold, Hold)> = Vec::new();
    let mut leases: Vec<(Lease, Lease)> = Vec::new();
    let mut admitted = 0;
    let mut refusals = std::collections::BTreeSet::new();
    for step in 0..1_000 {
        match rng.u8(0..10) {
            0..=4 => {
                let (group, scopes) = &groups[rng.usize(0..groups.len())];
                let ask = Ask {
                    scopes,
                    group,
                    now_ms: now,
                    request: rng.bool(),
                    tokens: rng.u64(0..1_500),
                    cost: rng.i64(0..8) * CENT / 2,
                };
                let (l, dl) = decision(local.reserve(&ask));
                let (r, dr) = decision(redis.reserve(&ask).await);
                assert_eq!(dl, dr, "step {step}: {ask:?}");
                if let Err(r) = &dl {
                    refusals.insert(match r {
                        Refusal::Budget { window, .. } => window.as_str(),
                        Refusal::Rate { rate, .. } => rate.as_str(),
                    });
                }
                if let (Some(mut l), Some(mut r)) = (l, r) {
                    admitted += 1;
                    if let (Some(ll), Some(rl)) = (l.take_lease(), r.take_lease()) {
                        leases.push((ll, rl));
                    }
                    holds.push((l, r));
                }
            }
            5..=7 if !holds.is_empty() => {
                let (l, r) = holds.swap_remove(rng.usize(0..holds.len()));
                let spent = Spent { cost: rng.i64(0..=l.cost() / 1_000_000) * 1_000_000, tokens: rng.u64(0..2_000) };
                let release = rng.bool() && !leases.is_empty();
                let (ll, rl) = if release {
                    let (a, b) = leases.swap_remove(rng.usize(0..leases.len()));
                    (Some(a), Some(b))
                } else {
                    (None, None)
                };
                local.settle(l, spent, ll);
                redis.settle(r, spent, rl).await.unwrap();
            }
            8 if !leases.is_empty() => {
                let (l, r) = leases.swap_remove(rng.usize(0..leases.len()));
                local.release(l);
                redis.release(r).await.unwrap();
            }
            _ => now += if rng.u8(0..6) == 0 { rng.i64(0..1_500_000) } else { rng.i64(0..6_000) },
        }
        for (group, scopes) in &groups {
            for s in scopes.iter() {
                let lu = local.usage(s.kind, &s.id, now);
                let ru = redis.usage(s.kind, &s.id, group, now).await.unwrap();
                assert_eq!(lu, ru, "step {step}: usage of {:?} {}", s.kind, s.id);
            }
        }
    }
    assert!(now > T0 + 3_600_000, "the sequence crosses midnight and the month's end");
    assert!(admitted > 100, "{admitted} admitted");
    assert_eq!(refusals.len(), 6, "every kind of refusal is compared: {refusals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_never_reserve_past_a_budget() {
    let server = RedisServer::start();
    let a = RedisCounters::connect(&server.url).await.unwrap();
    let b = RedisCounters::connect(&server.url).await.unwrap();
    let scopes = Arc::<[Scope]>::from(vec![
        key("k", Limits::default()),
        tenant("t", Limits { budget_total: Some(100 * CENT), ..Limits::default() }),
    ]);
    let cost = 7 * CENT / 10; // $0.007: 142 fit in $1.00
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            let scopes = scopes.clone();
            tokio::spawn(async move {
                let ask = Ask { scopes: &scopes, group: &Arc::from("t"), now_ms: T0, request: false, tokens: 0, cost };
                match c.reserve(&ask).await {
                    Ok((hold, _)) => Some(hold),
                    Err(LimitError::Refused(_)) => None,
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let mut holds = Vec::new();
    for t in tasks {
        holds.extend(t.await.unwrap());
    }
    assert_eq!(holds.len(), 142);
    let u = a.usage(ScopeKind::Tenant, "t", "t", T0).await.unwrap();
    assert_eq!((u.total, u.reserved), (142 * cost, 142 * cost));
    assert_eq!(a.usage(ScopeKind::Key, "k", "t", T0).await.unwrap().total, 142 * cost);
    for h in holds {
        b.settle(h, Spent { cost: cost / 2, tokens: 0 }, None).await.unwrap();
    }
    let u = b.usage(ScopeKind::Tenant, "t", "t", T0).await.unwrap();
    assert_eq!((u.total, u.reserved), (71 * cost, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_admit_exactly_the_requests_per_minute() {
    let server = RedisServer::start();
    let a = RedisCounters::connect(&server.url).await.unwrap();
    let b = RedisCounters::connect(&server.url).await.unwrap();
    let scopes = Arc::<[Scope]>::from(vec![key("k", Limits { rpm: Some(100), ..Limits::default() })]);
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            let scopes = scopes.clone();
            tokio::spawn(async move {
                let ask =
                    Ask { scopes: &scopes, group: &Arc::from("t"), now_ms: T0 + i, request: true, tokens: 0, cost: 0 };
                match c.reserve(&ask).await {
                    Ok((mut hold, _)) => {
                        let lease = hold.take_lease();
                        c.settle(hold, Spent::default(), lease).await.unwrap();
                        true
                    }
                    Err(LimitError::Refused(Refusal::Rate { retry_after_ms, .. })) => {
                        // Asks of up to 300 ms later may already be in the window.
                        assert!((1..=60_300).contains(&retry_after_ms), "{retry_after_ms}");
                        false
                    }
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let mut n = 0;
    for t in tasks {
        n += usize::from(t.await.unwrap());
    }
    assert_eq!(n, 100);
    assert_eq!(a.usage(ScopeKind::Key, "k", "t", T0 + 300).await.unwrap().in_flight, 0);
}

#[tokio::test]
async fn a_stopped_server_is_unavailable_at_once_and_a_restarted_one_serves_again() {
    assert!(RedisCounters::connect("not a url").await.is_err());
    let mut server = RedisServer::start();
    let c = RedisCounters::connect(&server.url).await.unwrap();
    let scopes = Arc::from([key("k", Limits { budget_total: Some(CENT), ..Limits::default() })]);
    let ask = Ask { scopes: &scopes, group: &Arc::from("g"), now_ms: T0, request: false, tokens: 0, cost: 1 };
    let (h, _) = c.reserve(&ask).await.unwrap();
    c.settle(h, Spent { cost: 1, tokens: 0 }, None).await.unwrap();
    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let r = c.reserve(&ask).await;
        assert!(matches!(r, Err(LimitError::Unavailable(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }
    assert!(matches!(c.usage(ScopeKind::Key, "k", "g", T0).await, Err(LimitError::Unavailable(_))));
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.reserve(&ask).await {
            Ok((h, _)) => {
                c.settle(h, Spent { cost: 1, tokens: 0 }, None).await.unwrap();
                break;
            }
            Err(LimitError::Unavailable(m)) if Instant::now() < deadline => {
                eprintln!("not yet: {m}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The restarted server is empty (no persistence): only the spend after it counts.
    assert_eq!(c.usage(ScopeKind::Key, "k", "g", T0).await.unwrap().total, 1);
    // A server that was never there: connecting works, deciding does not.
    let nowhere = RedisCounters::connect("redis://127.0.0.1:1/").await.unwrap();
    assert!(matches!(nowhere.reserve(&ask).await, Err(LimitError::Unavailable(_))));
}

#[tokio::test]
async fn an_unsettled_hold_expires_and_releases_its_reservation() {
    let server = RedisServer::start();
    let c = RedisCounters::connect(&server.url).await.unwrap().with_hold_ttl(10_000);
    let scopes = Arc::from([
        key("k", Limits { budget_day: Some(10 * CENT), concurrency: Some(1), ..Limits::default() }),
        tenant("t", Limits::default()),
    ]);
    let group = Arc::from("t");
    let ask = |now_ms, cost| Ask { scopes: &scopes, group: &group, now_ms, request: true, tokens: 0, cost };
    let (mut lost, _) = c.reserve(&ask(T0, 8 * CENT)).await.unwrap();
    let _ = lost.take_lease(); // its replica died: the lease is never released
    let refused = c.reserve(&ask(T0 + 9_999, 3 * CENT)).await;
    assert!(matches!(refused, Err(LimitError::Refused(Refusal::Budget { used, .. })) if used == 8 * CENT));
    let u: Usage = c.usage(ScopeKind::Tenant, "t", "t", T0 + 9_999).await.unwrap();
    // The tenant sets no concurrency limit: the lease is the key's only.
    assert_eq!((u.day, u.reserved, u.in_flight), (8 * CENT, 8 * CENT, 0));
    let u: Usage = c.usage(ScopeKind::Key, "k", "t", T0 + 9_999).await.unwrap();
    assert_eq!((u.day, u.reserved, u.in_flight), (8 * CENT, 8 * CENT, 1));
    // Read at the expiry, the hold and its lease no longer count, before any sweep.
    let u = c.usage(ScopeKind::Key, "k", "t", T0 + 10_000).await.unwrap();
    assert_eq!((u.day, u.reserved, u.in_flight), (0, 0, 0));
    // The next decision sweeps them; the concurrency slot is free again.
    let (mut h, left) = c.reserve(&ask(T0 + 10_000, 3 * CENT)).await.unwrap();
    assert_eq!(left.budget.unwrap().left, 7 * CENT);
    let lease = h.take_lease();
    c.settle(h, Spent { cost: 2 * CENT, tokens: 0 }, lease).await.unwrap();
    // A settle after the sweep adds what was spent, and takes nothing more back.
    c.settle(lost, Spent { cost: CENT, tokens: 0 }, None).await.unwrap();
    let u = c.usage(ScopeKind::Key, "k", "t", T0 + 11_000).await.unwrap();
    assert_eq!((u.day, u.month, u.total, u.reserved, u.in_flight), (3 * CENT, 3 * CENT, 3 * CENT, 0, 0));
}

/// Decisions waiting together ride in one script call (batch.lua): each is still decided
/// and reported as if alone, in some order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_share_calls_and_each_reports_its_own_place() {
    let server = RedisServer::start();
    let c = RedisCounters::connect(&server.url).await.unwrap();
    let scopes = Arc::<[Scope]>::from(vec![
        key("k", Limits { rpm: Some(1_000), tpm: Some(1_000_000), ..Limits::default() }),
        tenant("t", Limits { budget_day: Some(1_000 * CENT), ..Limits::default() }),
    ]);
    let asks = 200;
    let tasks: Vec<_> = (0..asks)
        .map(|i| {
            let (c, scopes) = (c.clone(), scopes.clone());
            tokio::spawn(async move {
                let ask = Ask {
                    scopes: &scopes,
                    group: &Arc::from("t"),
                    now_ms: T0 + i % 3,
                    request: true,
                    tokens: 10,
                    cost: CENT,
                };
                c.reserve(&ask).await.unwrap_or_else(|e| panic!("{e}"))
            })
        })
        .collect();
    let mut requests_left = Vec::new();
    let mut tokens_left = Vec::new();
    let mut budget_left = Vec::new();
    for t in tasks {
        let (_, left) = t.await.unwrap();
        requests_left.push(left.requests.unwrap().left);
        tokens_left.push(left.tokens.unwrap().left);
        budget_left.push(left.budget.unwrap().left);
    }
    requests_left.sort_unstable();
    tokens_left.sort_unstable();
    budget_left.sort_unstable();
    // The n-th decision (in the order the server took them) sees n requests, 10n tokens and
    // n cents counted: every place from 1 to 200 exactly once.
    assert_eq!(requests_left, (800..1_000).collect::<Vec<u64>>());
    assert_eq!(tokens_left, (0..asks as u64).map(|n| 1_000_000 - 10 * (asks as u64 - n)).collect::<Vec<_>>());
    assert_eq!(budget_left, (0..asks).map(|n| (800 + n) * CENT).collect::<Vec<_>>());
    let u = c.usage(ScopeKind::Tenant, "t", "t", T0 + 3).await.unwrap();
    assert_eq!((u.day, u.reserved), (asks * CENT, asks * CENT));
    // And they shared calls: fewer script calls than decisions.
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "info", "commandstats"])
        .output()
        .expect("redis-cli runs");
    let stats = String::from_utf8_lossy(&out.stdout);
    let calls: i64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls=").or_else(|| l.strip_prefix("cmdstat_eval:calls=")))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no script calls in {stats}"));
    assert!(calls < asks, "{calls} script calls for {asks} decisions");
}

/// A busy minute leaves one window bucket per millisecond; the first decision after it
/// prunes them all in one call (more values than Lua can spread into one command at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_minute_of_buckets_is_pruned_in_one_call() {
    let server = RedisServer::start();
    let c = RedisCounters::connect(&server.url).await.unwrap();
    let scopes = Arc::<[Scope]>::from(vec![key(
        "k",
        Limits { rpm: Some(1_000_000), tpm: Some(1_000_000_000), ..Limits::default() },
    )]);
    let busy: i64 = 12_000;
    for wave in 0..busy / 500 {
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let (c, scopes) = (c.clone(), scopes.clone());
                tokio::spawn(async move {
                    let now_ms = T0 + wave * 500 + i;
                    let ask =
                        Ask { scopes: &scopes, group: &Arc::from("t"), now_ms, request: true, tokens: 3, cost: 0 };
                    let (mut hold, _) = c.reserve(&ask).await.unwrap_or_else(|e| panic!("{e}"));
                    let lease = hold.take_lease();
                    c.settle(hold, Spent { cost: 0, tokens: 3 }, lease).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let buckets = || {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &server.port.to_string(), "hlen", "bourse:{t}:k:k:rw"])
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().parse::<i64>().unwrap()
    };
    assert_eq!(buckets(), busy);
    // A minute after the last of them, every bucket is pruned by the next decision.
    let later = T0 + busy + 60_000;
    let ask = Ask { scopes: &scopes, group: &Arc::from("t"), now_ms: later, request: true, tokens: 5, cost: 0 };
    let (_, left) = c.reserve(&ask).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(left.requests.unwrap().left, 1_000_000 - 1);
    assert_eq!(left.tokens.unwrap().left, 1_000_000_000 - 5);
    assert_eq!(buckets(), 1, "only the new decision's bucket is left");
}
