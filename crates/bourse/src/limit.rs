//! Budgets and rate limits: the counters every request of a virtual key is admitted against,
//! kept in this process ([`local`]) or in Redis shared by every replica ([`redis`]).
//!
//! A request names its scopes (its key, then its key's tenant); every scope must admit it.
//! Admission is **reserve, then settle**: before an upstream attempt, [`Counters::reserve`]
//! adds the attempt's worst-case cost to each scope's day, month and total spend and its
//! estimated tokens to each scope's tokens-per-minute window, atomically across all scopes
//! (all or nothing); the first attempt of a request also counts one request per minute and
//! takes a concurrency lease (on the scopes that set a concurrency limit). After the attempt, [`Counters::settle`] replaces the reserved
//! cost and tokens by what was metered (releasing the rest), and the last settle of a
//! request gives its lease back. So at any moment a scope's spend counter is what has been
//! settled plus what is still reserved, and when nothing is reserved it equals the ledger.
//!
//! Windows: budgets per UTC day, per UTC calendar month and in total; requests and tokens
//! per minute as an exact sliding window (every admitted request or reservation is kept for
//! 60 s, so no 60-second interval ever holds more than the limit). Time is the replica's
//! clock (`now_ms` in [`Ask`]): the same instant the ledger row records, so a day's counter
//! and the day's ledger rows agree.
//!
//! Nothing stays reserved for ever: a hold or lease that is never settled (its replica died)
//! expires after [`HOLD_TTL_MS`] and is released by the next decision on its scopes.
//!
//! Money is integer nano-USD throughout; no counter is ever a float.

use crate::config::OnSharedFailure;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub mod local;
pub mod redis;
mod remaining;

pub use local::LocalCounters;
pub use redis::RedisCounters;

/// Integer nano-USD.
pub type Nanos = i64;

/// How long an unsettled hold or lease may live before it is released without a settle:
/// longer than any request may run (the longest upstream total timeout).
pub const HOLD_TTL_MS: i64 = 60 * 60 * 1000;

/// The length of the requests- and tokens-per-minute window.
pub const MINUTE_MS: i64 = 60_000;

/// What one scope (a key or a tenant) may spend and use. `None`: no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub budget_day: Option<Nanos>,
    pub budget_month: Option<Nanos>,
    pub budget_total: Option<Nanos>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub concurrency: Option<u64>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }
}

/// Which kind of scope a limit belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScopeKind {
    Key,
    Tenant,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Key => "key",
            ScopeKind::Tenant => "tenant",
        }
    }
}

/// One scope of a decision: its kind, its id (a key id or a tenant id) and its limits now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub kind: ScopeKind,
    pub id: Arc<str>,
    pub limits: Limits,
}

/// A budget window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Window {
    Day,
    Month,
    Total,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Month => "month",
            Window::Total => "total",
        }
    }
}

/// A rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rate {
    Requests,
    Tokens,
    Concurrency,
}

impl Rate {
    pub fn as_str(self) -> &'static str {
        match self {
            Rate::Requests => "requests per minute",
            Rate::Tokens => "tokens per minute",
            Rate::Concurrency => "concurrent requests",
        }
    }
}

/// One admission decision. Its scopes and group are shared (a key's, built once per directory
/// load): the hold an admitted decision makes keeps them by reference count, not by copy.
#[derive(Clone, Debug)]
pub struct Ask<'a> {
    /// Every scope that must admit the request (key first, then tenant). May be empty.
    pub scopes: &'a Arc<[Scope]>,
    /// The tenant id: all of a decision's counters share it as their Redis hash tag, so one
    /// script can touch them all, on Redis Cluster too.
    pub group: &'a Arc<str>,
    /// Unix milliseconds now (the replica's clock): decides the day, month and minute.
    pub now_ms: i64,
    /// The first attempt of a request: count one request per minute and take a lease.
    pub request: bool,
    /// Tokens to reserve in the tokens-per-minute window (the estimate).
    pub tokens: u64,
    /// Worst-case cost to reserve in every budget window.
    pub cost: Nanos,
}

/// Why a decision refused. Nothing was counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Budget {
        scope: ScopeKind,
        id: Arc<str>,
        window: Window,
        limit: Nanos,
        /// Settled plus reserved in the window, before this ask.
        used: Nanos,
        /// Unix ms when the window starts again; None for the total budget.
        resets_at_ms: Option<i64>,
    },
    Rate {
        scope: ScopeKind,
        id: Arc<str>,
        rate: Rate,
        limit: u64,
        /// When the ask could fit again, counting from `now_ms` (at least 1 ms; for
        /// concurrency, a guess: 1 s).
        retry_after_ms: i64,
    },
}

/// What is left after an admitted decision, for the response headers: the tightest of all
/// scopes for each kind of limit (None where no scope has that limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    pub budget: Option<BudgetLeft>,
    pub requests: Option<RateLeft>,
    pub tokens: Option<RateLeft>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetLeft {
    pub scope: ScopeKind,
    pub window: Window,
    pub limit: Nanos,
    /// limit − (settled + reserved), never below 0.
    pub left: Nanos,
    pub resets_at_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLeft {
    pub limit: u64,
    /// What another ask could still take now, this one included.
    pub left: u64,
    /// Unix ms when the window will have room for the full limit again (the newest entry
    /// leaves it).
    pub resets_at_ms: i64,
}

/// An admitted reservation, to be settled exactly once.
#[derive(Debug)]
#[must_use = "a hold must be settled, or its reservation stays until it expires"]
pub struct Hold {
    pub(crate) id: u64,
    /// The decision's scopes (their limits as they were then are not used by the settle).
    pub(crate) scopes: Arc<[Scope]>,
    pub(crate) group: Arc<str>,
    /// The instant the reservation was made: its day and month windows.
    pub(crate) at_ms: i64,
    pub(crate) cost: Nanos,
    pub(crate) tokens: u64,
    /// Made on the in-process counters while Redis was unreachable ("open").
    pub(crate) local: bool,
    pub(crate) lease: Option<Lease>,
}

impl Hold {
    /// The concurrency lease the first attempt took (the request's, not the attempt's).
    pub fn take_lease(&mut self) -> Option<Lease> {
        self.lease.take()
    }

    pub fn cost(&self) -> Nanos {
        self.cost
    }
}

/// A request's concurrency slot, given back by the settle of its last attempt (or by
/// [`Counters::release`]).
#[derive(Debug)]
#[must_use = "a lease must be released, or it holds a concurrency slot until it expires"]
pub struct Lease {
    pub(crate) id: u64,
    pub(crate) scopes: Vec<(ScopeKind, Arc<str>)>,
    pub(crate) group: Arc<str>,
    pub(crate) local: bool,
}

impl Lease {
    /// The lease a request's first decision takes: on the scopes with a concurrency limit
    /// (None for a later attempt's decision, which takes none, and where no scope sets one).
    pub(crate) fn for_ask(id: u64, ask: &Ask<'_>, local: bool) -> Option<Lease> {
        let leased = ask.request && ask.scopes.iter().any(|s| s.limits.concurrency.is_some());
        leased.then(|| Lease {
            id,
            scopes: ask
                .scopes
                .iter()
                .filter(|s| s.limits.concurrency.is_some())
                .map(|s| (s.kind, s.id.clone()))
                .collect(),
            group: ask.group.clone(),
            local,
        })
    }
}

/// What an attempt actually used, metered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spent {
    pub cost: Nanos,
    pub tokens: u64,
}

/// A scope's counters now, for reports and for checking them against the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub day: Nanos,
    pub month: Nanos,
    pub total: Nanos,
    /// Cost still reserved by unsettled holds (included in the three above).
    pub reserved: Nanos,
    /// Leases held now. A lease is taken only on the scopes that set a concurrency limit, so
    /// this is 0 for a scope without one.
    pub in_flight: u64,
}

/// Why the counters could not decide.
#[derive(Debug)]
pub enum LimitError {
    Refused(Refusal),
    /// The shared store is unreachable (and `on_shared_failure` is "closed").
    Unavailable(String),
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::Refused(r) => write!(f, "refused: {r:?}"),
            LimitError::Unavailable(m) => write!(f, "shared counters unavailable: {m}"),
        }
    }
}

/// The UTC day of a Unix-ms instant (days since 1970-01-01).
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// The UTC calendar month of a Unix-ms instant, as `year * 12 + (month - 1)`.
///
/// Every decision and settle asks for it, so days from 1970 to 9999 take integer arithmetic
/// (Howard Hinnant's `civil_from_days`, in eras of 400 years that start on March 1) rather
/// than the calendar library, which costs about four times as much; other instants go to the
/// library.
pub fn month_of(ms: i64) -> i64 {
    let day = day_of(ms);
    if !(0..=2_932_896).contains(&day) {
        return month_of_by_calendar(ms);
    }
    // Days since 0000-03-01, the era, the day and year of the era, and the day of the year
    // counted from March 1.
    let z = day + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    // Months counted from March (0..=11); January and February belong to the next year.
    let mp = (5 * doy + 2) / 153;
    let (month0, year) = if mp < 10 { (mp + 2, era * 400 + yoe) } else { (mp - 10, era * 400 + yoe + 1) };
    year * 12 + month0
}

fn month_of_by_calendar(ms: i64) -> i64 {
    let date =
        time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).map(|t| t.date()).unwrap_or(time::Date::MIN);
    i64::from(date.year()) * 12 + i64::from(u8::from(date.month())) - 1
}

/// Unix ms at which the window holding `ms` starts (None for the total).
pub fn window_start(window: Window, ms: i64) -> Option<i64> {
    match window {
        Window::Day => Some(day_of(ms) * 86_400_000),
        Window::Month => {
            let m = month_of(ms);
            let month = time::Month::try_from(m.rem_euclid(12) as u8 + 1).ok()?;
            let date = time::Date::from_calendar_date(m.div_euclid(12) as i32, month, 1).ok()?;
            Some(date.midnight().assume_utc().unix_timestamp() * 1000)
        }
        Window::Total => None,
    }
}

/// Unix ms at which the window holding `ms` ends (None for the total).
pub fn window_end(window: Window, ms: i64) -> Option<i64> {
    match window {
        Window::Day => Some((day_of(ms) + 1) * 86_400_000),
        Window::Month => {
            let next = month_of(ms) + 1;
            let (year, month) = (next.div_euclid(12), next.rem_euclid(12) as u8 + 1);
            let month = time::Month::try_from(month).ok()?;
            let date = time::Date::from_calendar_date(year as i32, month, 1).ok()?;
            Some(date.midnight().assume_utc().unix_timestamp() * 1000)
        }
        Window::Total => None,
    }
}

/// The counters a gateway decides with: in process, or in Redis with the in-process ones as
/// the fallback `on_shared_failure = "open"` serves on.
#[derive(Clone, Debug)]
pub enum Counters {
    Local(LocalCounters),
    Shared { redis: RedisCounters, fallback: LocalCounters, on_failure: OnSharedFailure, failures: Arc<AtomicU64> },
}

impl Counters {
    /// Reserve `ask` on every scope, all or nothing.
    pub async fn reserve(&self, ask: &Ask<'_>) -> Result<(Hold, Remaining), LimitError> {
        match self {
            Counters::Local(l) => l.reserve(ask),
            Counters::Shared { redis, fallback, on_failure, failures } => match redis.reserve(ask).await {
                Err(LimitError::Unavailable(m)) if *on_failure == OnSharedFailure::Open => {
                    if failures.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                        tracing::warn!("shared counters unreachable ({m}); serving on this replica's own counters");
                    }
                    fallback.reserve(ask)
                }
                other => other,
            },
        }
    }

    /// Settle a hold at what was spent, releasing the rest of its reservation; with `release`,
    /// also give back that lease in the same round trip.
    pub async fn settle(&self, hold: Hold, spent: Spent, release: Option<Lease>) -> Result<(), LimitError> {
        match self {
            Counters::Local(l) => {
                l.settle(hold, spent, release);
                Ok(())
            }
            Counters::Shared { redis, fallback, .. } => {
                if hold.local {
                    let release = match release {
                        Some(l) if !l.local => {
                            redis.release(l).await?;
                            None
                        }
                        other => other,
                    };
                    fallback.settle(hold, spent, release);
                    return Ok(());
                }
                redis.settle(hold, spent, release).await
            }
        }
    }

    /// [`Counters::settle`] without waiting for Redis (in place for the in-process counters):
    /// the answer does not wait for the round trip, and a failure is logged.
    pub fn settle_detached(&self, hold: Hold, spent: Spent, release: Option<Lease>) {
        match self {
            Counters::Shared { redis, .. } if !hold.local && release.as_ref().is_none_or(|l| !l.local) => {
                redis.settle_detached(hold, spent, release)
            }
            Counters::Local(l) => l.settle(hold, spent, release),
            shared => {
                let counters = shared.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = counters.settle(hold, spent, release).await {
                            tracing::warn!("settle failed: {e}; the reservation expires on its own");
                        }
                    });
                }
            }
        }
    }

    /// Give back a lease whose request ends without a settle (its last attempt failed and
    /// was already settled).
    pub async fn release(&self, lease: Lease) -> Result<(), LimitError> {
        match self {
            Counters::Local(l) => {
                l.release(lease);
                Ok(())
            }
            Counters::Shared { redis, fallback, .. } => {
                if lease.local {
                    fallback.release(lease);
                    Ok(())
                } else {
                    redis.release(lease).await
                }
            }
        }
    }

    /// A scope's counters at `now_ms`.
    pub async fn usage(&self, kind: ScopeKind, id: &str, group: &str, now_ms: i64) -> Result<Usage, LimitError> {
        match self {
            Counters::Local(l) => Ok(l.usage(kind, id, now_ms)),
            Counters::Shared { redis, .. } => redis.usage(kind, id, group, now_ms).await,
        }
    }

    /// Times a decision was served on local counters because Redis was unreachable.
    pub fn shared_failures(&self) -> u64 {
        match self {
            Counters::Local(_) => 0,
            Counters::Shared { failures, .. } => failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn month_arithmetic_agrees_with_the_calendar(ms in any::<i64>(), near in -100_000_000_000_000i64..400_000_000_000_000) {
            prop_assert_eq!(month_of(ms), month_of_by_calendar(ms));
            prop_assert_eq!(month_of(near), month_of_by_calendar(near));
        }
    }

    #[test]
    fn month_arithmetic_at_every_month_edge() {
        // Each first and last millisecond of a month from 1970 to 9999, and the range's ends.
        let mut edges = vec![-1, 0, 253_402_300_799_999, 253_402_300_800_000];
        for m in 1970 * 12..10_000i64 * 12 {
            let month = time::Month::try_from(m.rem_euclid(12) as u8 + 1).unwrap();
            let first = time::Date::from_calendar_date(m.div_euclid(12) as i32, month, 1).unwrap();
            let start = first.midnight().assume_utc().unix_timestamp() * 1000;
            assert_eq!(month_of(start), m);
            edges.extend([start - 1, start]);
        }
        for ms in edges {
            assert_eq!(month_of(ms), month_of_by_calendar(ms), "{ms}");
        }
    }

    #[test]
    fn windows_follow_the_utc_calendar() {
        // 2026-02-28T23:59:59.999Z and the next millisecond.
        let last = 1_772_323_199_999;
        assert_eq!(day_of(last) + 1, day_of(last + 1));
        assert_eq!(month_of(last), 2026 * 12 + 1);
        assert_eq!(month_of(last + 1), 2026 * 12 + 2);
        assert_eq!(window_end(Window::Day, last), Some(last + 1));
        assert_eq!(window_end(Window::Month, last), Some(last + 1));
        // December rolls into January of the next year.
        let dec = 1_796_083_200_000; // 2026-12-01T00:00:00Z
        assert_eq!(month_of(dec), 2026 * 12 + 11);
        assert_eq!(window_end(Window::Month, dec), Some(1_798_761_600_000)); // 2027-01-01
        assert_eq!(window_end(Window::Total, dec), None);
        assert_eq!(window_start(Window::Month, dec + 86_400_000 * 30 + 5), Some(dec));
        assert_eq!(window_start(Window::Day, last), Some(last + 1 - 86_400_000));
    }
}
