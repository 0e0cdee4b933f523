//! Provider health: a circuit breaker and a time-to-first-byte EWMA per `provider/model`.
//!
//! The router asks this module whether a target is worth trying ([`Health::is_available`]
//! while ranking, [`Health::acquire`] right before an attempt) and reports the outcome
//! ([`Health::record_success`] / [`Health::record_failure`]). `failure_threshold`
//! consecutive failures open the circuit for `cooldown`; after that a single caller gets a
//! probe (half-open) and its success closes the circuit again.
//!
//! This sits on the request path of every attempt, so the common case has to be cheap: the
//! map is behind an `RwLock` that is only write-locked the first time a key is recorded, and
//! all per-key state is atomics, so a check is a shared lock plus one or two atomic loads.
//! Time is always passed in (`now`) rather than read here, which keeps the logic
//! deterministic and lets tests step through cooldowns without sleeping.
//!
//! Per-key state, and why it is shaped this way:
//! - `state` packs the consecutive-failure count and the "open" flag into one word. They are
//!   decided together (the failure that reaches the threshold is the one that opens), and a
//!   success resets both, so packing them means a success racing a failure can never leave
//!   an open circuit with a zero count or a closed one past the threshold.
//! - `open_until` is only meaningful while the open flag is set. A failure writes it
//!   *before* publishing the flag, so anyone who sees the flag sees a current deadline.
//! - There is no separate probe flag: claiming the probe is a compare-and-swap that pushes
//!   `open_until` from an elapsed deadline to `now + cooldown`. Exactly one racer wins, the
//!   rest see a future deadline and get `Open`. It also doubles as a lease: a probe whose
//!   caller never reports back (client went away, task cancelled) would otherwise pin the
//!   target open forever; here another probe is allowed one cooldown later.

use crate::config::HealthConfig;
use crate::fnv::Fnv1a;
use serde::Serialize;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

/// What [`Health::acquire`] says about one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Circuit closed: go ahead.
    Healthy,
    /// The circuit was open and its cooldown is over: this caller holds the single probe and
    /// must report the outcome with `record_success` or `record_failure`.
    Probe,
    /// Skip this target; it may be worth asking again after `retry_in`.
    Open { retry_in: Duration },
}

/// One key's state for the admin view.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntrySnapshot {
    pub consecutive_failures: u32,
    /// The circuit is not closed (open, or half-open waiting for / running a probe).
    pub open: bool,
    pub ewma_ttfb_ms: Option<f64>,
}

/// Set in `Entry::state` while the circuit is open; the low 32 bits are the failure count.
const OPEN: u64 = 1 << 32;
const FAILURES: u64 = u32::MAX as u64;
/// `Entry::ewma_us` before the first sample. All-ones is a NaN payload that arithmetic on
/// finite samples never produces, so it cannot collide with a real average.
const NO_EWMA: u64 = u64::MAX;

#[derive(Debug)]
struct Entry {
    /// Consecutive failures (low 32 bits, saturating) | `OPEN`.
    state: AtomicU64,
    /// Nanoseconds since `Health::base` at which the cooldown (or a probe's lease) ends.
    open_until: AtomicU64,
    /// TTFB average in microseconds, as `f64` bits; `NO_EWMA` until the first success.
    ewma_us: AtomicU64,
}

impl Entry {
    fn new() -> Self {
        Entry { state: AtomicU64::new(0), open_until: AtomicU64::new(0), ewma_us: AtomicU64::new(NO_EWMA) }
    }

    fn is_available(&self, now: u64) -> bool {
        self.state.load(Ordering::Acquire) & OPEN == 0 || now >= self.open_until.load(Ordering::Acquire)
    }

    fn acquire(&self, now: u64, cooldown: u64) -> Availability {
        if self.state.load(Ordering::Acquire) & OPEN == 0 {
            return Availability::Healthy;
        }
        let mut until = self.open_until.load(Ordering::Acquire);
        loop {
            if now < until {
                return Availability::Open { retry_in: Duration::from_nanos(until - now) };
            }
            // Cooldown over: try to take the probe by moving the deadline forward. Losing
            // the race means someone else took it (or a failure extended the cooldown), so
            // re-evaluate against the value that won.
            match self.open_until.compare_exchange_weak(
                until,
                now.saturating_add(cooldown),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Availability::Probe,
                Err(current) => until = current,
            }
        }
    }

    fn record_success(&self, ttfb: Duration, alpha: f64) {
        // Closing drops the open flag and the count together; `open_until` is stale from
        // here on and ignored until the next opening overwrites it. Usually it is closed
        // already: read first, so the common case does not write a line both workers share.
        if self.state.load(Ordering::Acquire) != 0 {
            self.state.store(0, Ordering::Release);
        }
        let sample = ttfb.as_secs_f64() * 1e6;
        let mut old = self.ewma_us.load(Ordering::Acquire);
        loop {
            let next = if old == NO_EWMA {
                sample
            } else {
                let prev = f64::from_bits(old);
                prev + alpha * (sample - prev)
            };
            match self.ewma_us.compare_exchange_weak(old, next.to_bits(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(current) => old = current,
            }
        }
    }

    fn record_failure(&self, now: u64, threshold: u32, cooldown: u64) {
        let until = now.saturating_add(cooldown);
        let mut old = self.state.load(Ordering::Acquire);
        loop {
            let failures = ((old & FAILURES) as u32).saturating_add(1);
            // Already open covers the probe (and late failures of attempts started before
            // the circuit opened): each one pushes the deadline to a full cooldown from now.
            let open = old & OPEN != 0 || failures >= threshold;
            if open {
                // Deadline first, flag second (the CAS below): a reader that sees the flag
                // must not pair it with a deadline from an earlier opening that has long
                // elapsed, or it would hand out a probe immediately. `fetch_max` so a slower
                // thread with an older `now` can't shorten a cooldown. If the CAS then loses
                // to a success, the written deadline is harmless: it is ignored while closed.
                self.open_until.fetch_max(until, Ordering::AcqRel);
            }
            let new = u64::from(failures) | if open { OPEN } else { 0 };
            match self.state.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(current) => old = current,
            }
        }
    }

    fn ewma_us(&self) -> Option<f64> {
        let bits = self.ewma_us.load(Ordering::Acquire);
        (bits != NO_EWMA).then(|| f64::from_bits(bits))
    }

    fn snapshot(&self) -> EntrySnapshot {
        let state = self.state.load(Ordering::Acquire);
        EntrySnapshot {
            consecutive_failures: (state & FAILURES) as u32,
            open: state & OPEN != 0,
            ewma_ttfb_ms: self.ewma_us().map(|us| us / 1000.0),
        }
    }
}

/// Health of every `provider/model` the router has reported on. Keys never reported are
/// healthy, and are not stored: checks don't grow the map, only outcomes do.
#[derive(Debug)]
pub struct Health {
    cfg: HealthConfig,
    /// Times are stored as nanoseconds since this so they fit in an `AtomicU64`.
    base: Instant,
    cooldown_ns: u64,
    /// The keys known at start-up (every router entry), created up front so the hot path
    /// reads them without taking any lock. Hashed with FNV-1a: fixed keys, looked up
    /// several times per routed request (SipHash was most of each lookup).
    known: HashMap<Box<str>, Entry, BuildHasherDefault<Fnv1a>>,
    /// Any other key, created on its first recorded outcome.
    entries: RwLock<HashMap<Box<str>, Entry>>,
}

impl Health {
    pub fn new(cfg: HealthConfig) -> Health {
        Health::with_keys(cfg, std::iter::empty())
    }

    /// A tracker whose `keys` exist from the start (still healthy until told otherwise).
    pub fn with_keys<'a>(cfg: HealthConfig, keys: impl IntoIterator<Item = &'a str>) -> Health {
        // Sanitised here rather than rejected: config validation is the config layer's job,
        // and a zero threshold or a NaN alpha must not make the breaker misbehave.
        let cfg = HealthConfig {
            failure_threshold: cfg.failure_threshold.max(1),
            cooldown: cfg.cooldown,
            ewma_alpha: if cfg.ewma_alpha.is_nan() { 0.2 } else { cfg.ewma_alpha.clamp(0.0, 1.0) },
        };
        Health {
            cfg,
            base: Instant::now(),
            cooldown_ns: u64::try_from(cfg.cooldown.as_nanos()).unwrap_or(u64::MAX),
            known: keys.into_iter().map(|k| (Box::from(k), Entry::new())).collect(),
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// Cheap check used while ranking (does NOT claim the probe): true if closed, or open
    /// but cooldown elapsed.
    pub fn is_available(&self, key: &str, now: Instant) -> bool {
        let now = self.nanos(now);
        self.with_existing(key, |e| e.is_available(now)).unwrap_or(true)
    }

    /// Called right before an attempt: `Healthy`, or claims the single probe (`Probe`) if the
    /// cooldown elapsed and no probe is in flight, else `Open`. A `Probe` caller must report
    /// back; if it never does, another probe is handed out one cooldown later.
    pub fn acquire(&self, key: &str, now: Instant) -> Availability {
        let now = self.nanos(now);
        self.with_existing(key, |e| e.acquire(now, self.cooldown_ns)).unwrap_or(Availability::Healthy)
    }

    /// Closes the circuit, resets the failure count, releases any probe, and folds `ttfb`
    /// into the EWMA.
    pub fn record_success(&self, key: &str, ttfb: Duration, _now: Instant) {
        self.with_entry(key, |e| e.record_success(ttfb, self.cfg.ewma_alpha));
    }

    /// Counts a failure; at the threshold, or if the circuit was already open (a failed
    /// probe), opens it until `now + cooldown`. Releases any probe.
    pub fn record_failure(&self, key: &str, now: Instant) {
        let now = self.nanos(now);
        self.with_entry(key, |e| e.record_failure(now, self.cfg.failure_threshold, self.cooldown_ns));
    }

    /// Average time to first byte over successful attempts; `None` before the first one.
    pub fn ewma_ttfb(&self, key: &str) -> Option<Duration> {
        let us = self.with_existing(key, Entry::ewma_us)??;
        Duration::try_from_secs_f64(us / 1e6).ok()
    }

    /// Every recorded key's state, sorted by key, for an admin view.
    pub fn snapshot(&self) -> Vec<(String, EntrySnapshot)> {
        let map = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = self.known.iter().chain(map.iter()).map(|(k, e)| (k.to_string(), e.snapshot())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// `now` as nanoseconds since `base`. Instants before `base` clamp to zero; the router
    /// only passes `Instant::now()`, which is never earlier than construction.
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Runs `f` on the key's entry if it has one, under the shared lock (no `Arc` clone, so
    /// no extra contended refcount on the hot path).
    fn with_existing<R>(&self, key: &str, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        if let Some(e) = self.known.get(key) {
            return Some(f(e));
        }
        let map = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key).map(f)
    }

    /// Runs `f` on the key's entry, creating it on first sight (the only write lock taken).
    fn with_entry<R>(&self, key: &str, f: impl FnOnce(&Entry) -> R) -> R {
        if let Some(e) = self.known.get(key) {
            return f(e);
        }
        {
            let map = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = map.get(key) {
                return f(e);
            }
        }
        let mut map = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have inserted it between the two locks; `entry` handles both.
        f(map.entry(key.into()).or_insert_with(Entry::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::thread;

    const KEY: &str = "openai/gpt-4o";
    const COOLDOWN: Duration = Duration::from_secs(30);

    /// A tracker plus a base instant taken after it, so offsets never fall before its base.
    fn health(failure_threshold: u32) -> (Health, Instant) {
        let h = Health::new(HealthConfig { failure_threshold, cooldown: COOLDOWN, ewma_alpha: 0.2 });
        (h, Instant::now())
    }

    /// Keys registered up front behave exactly like keys created on first outcome: they
    /// start healthy, open at the threshold, close on success, and show in snapshots.
    #[test]
    fn keys_known_up_front_track_like_any_other() {
        let cfg = HealthConfig { failure_threshold: 2, cooldown: COOLDOWN, ewma_alpha: 0.5 };
        let h = Health::with_keys(cfg, [KEY, "other/m"]);
        let t0 = Instant::now();
        assert!(h.is_available(KEY, t0));
        assert_eq!(h.snapshot().len(), 2, "known keys are listed from the start");
        h.record_failure(KEY, t0);
        assert!(h.is_available(KEY, t0));
        h.record_failure(KEY, t0);
        assert!(!h.is_available(KEY, t0), "open at the threshold");
        assert!(h.is_available("other/m", t0), "keys are independent");
        h.record_success(KEY, ms(100), t0);
        h.record_success(KEY, ms(300), t0);
        assert!(h.is_available(KEY, t0));
        assert_eq!(h.ewma_ttfb(KEY), Some(ms(200)));
        // An unknown key still works (created on first outcome).
        h.record_failure("late/m", t0);
        assert_eq!(h.snapshot().len(), 3);
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    fn assert_close(actual: Option<Duration>, expected_ms: f64) {
        let actual = actual.map(|d| d.as_secs_f64() * 1e3);
        assert!(
            actual.is_some_and(|a| (a - expected_ms).abs() < 1e-3),
            "ewma {actual:?} ms, expected {expected_ms} ms"
        );
    }

    #[test]
    fn unknown_key_is_available() {
        let (h, t0) = health(3);
        assert!(h.is_available("nobody/nothing", t0));
        assert_eq!(h.acquire("nobody/nothing", t0), Availability::Healthy);
        assert_eq!(h.ewma_ttfb("nobody/nothing"), None);
        // Checks don't create entries.
        assert!(h.snapshot().is_empty());
    }

    #[test]
    fn threshold_opens_the_circuit() {
        let (h, t0) = health(3);
        h.record_failure(KEY, t0);
        h.record_failure(KEY, t0 + secs(1));
        assert!(h.is_available(KEY, t0 + secs(1)));
        assert_eq!(h.acquire(KEY, t0 + secs(1)), Availability::Healthy);

        h.record_failure(KEY, t0 + secs(2));
        assert!(!h.is_available(KEY, t0 + secs(2)));
        let snap = h.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].0, KEY);
        assert_eq!(snap[0].1, EntrySnapshot { consecutive_failures: 3, open: true, ewma_ttfb_ms: None });
        // Other keys are unaffected.
        assert!(h.is_available("openai/gpt-4o-mini", t0 + secs(2)));
    }

    #[test]
    fn open_reports_retry_in() {
        let (h, t0) = health(3);
        for i in 0..3 {
            h.record_failure(KEY, t0 + secs(i));
        }
        // Opened at t0+2s, so open until t0+32s.
        assert_eq!(h.acquire(KEY, t0 + secs(12)), Availability::Open { retry_in: secs(20) });
        assert_eq!(h.acquire(KEY, t0 + secs(32) - ms(1)), Availability::Open { retry_in: ms(1) });
        // Being refused doesn't take the probe or move the deadline.
        assert!(h.is_available(KEY, t0 + secs(32)));
    }

    #[test]
    fn exactly_one_probe_after_cooldown() {
        let (h, t0) = health(3);
        for _ in 0..3 {
            h.record_failure(KEY, t0);
        }
        let t1 = t0 + COOLDOWN;
        // Ranking looks don't claim it.
        assert!(h.is_available(KEY, t1));
        assert!(h.is_available(KEY, t1));
        assert_eq!(h.acquire(KEY, t1), Availability::Probe);
        // A second caller while the probe is in flight is refused until the probe's lease ends.
        assert_eq!(h.acquire(KEY, t1 + secs(1)), Availability::Open { retry_in: COOLDOWN - secs(1) });
        assert!(!h.is_available(KEY, t1 + secs(1)));
    }

    #[test]
    fn concurrent_acquirers_get_one_probe() {
        let (h, t0) = health(1);
        h.record_failure(KEY, t0);
        let t1 = t0 + COOLDOWN + ms(5);
        let h = Arc::new(h);
        let barrier = Arc::new(Barrier::new(4));
        let results: Vec<Availability> = (0..4)
            .map(|_| {
                let (h, barrier) = (Arc::clone(&h), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    h.acquire(KEY, t1)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|j| j.join().unwrap())
            .collect();
        assert_eq!(results.iter().filter(|r| **r == Availability::Probe).count(), 1, "{results:?}");
        assert_eq!(results.iter().filter(|r| **r == Availability::Open { retry_in: COOLDOWN }).count(), 3);
    }

    #[test]
    fn probe_success_closes() {
        let (h, t0) = health(3);
        for _ in 0..3 {
            h.record_failure(KEY, t0);
        }
        let t1 = t0 + COOLDOWN;
        assert_eq!(h.acquire(KEY, t1), Availability::Probe);
        h.record_success(KEY, ms(80), t1 + ms(80));
        assert_eq!(h.acquire(KEY, t1 + ms(81)), Availability::Healthy);
        assert!(h.is_available(KEY, t1 + ms(81)));
        assert_eq!(h.snapshot()[0].1, EntrySnapshot { consecutive_failures: 0, open: false, ewma_ttfb_ms: Some(80.0) });
        // Closed means the count starts over: one failure doesn't reopen.
        h.record_failure(KEY, t1 + secs(1));
        assert_eq!(h.acquire(KEY, t1 + secs(1)), Availability::Healthy);
    }

    #[test]
    fn probe_failure_reopens_for_full_cooldown() {
        let (h, t0) = health(3);
        for _ in 0..3 {
            h.record_failure(KEY, t0);
        }
        let t1 = t0 + COOLDOWN;
        assert_eq!(h.acquire(KEY, t1), Availability::Probe);
        let failed_at = t1 + secs(5);
        h.record_failure(KEY, failed_at);
        assert_eq!(h.acquire(KEY, failed_at), Availability::Open { retry_in: COOLDOWN });
        assert_eq!(h.acquire(KEY, failed_at + secs(29)), Availability::Open { retry_in: secs(1) });
        assert_eq!(h.snapshot()[0].1.consecutive_failures, 4);
        // And after that cooldown, a new probe.
        assert_eq!(h.acquire(KEY, failed_at + COOLDOWN), Availability::Probe);
    }

    #[test]
    fn abandoned_probe_is_reissued_after_a_cooldown() {
        let (h, t0) = health(1);
        h.record_failure(KEY, t0);
        let t1 = t0 + COOLDOWN;
        assert_eq!(h.acquire(KEY, t1), Availability::Probe);
        // The prober never reports back.
        assert_eq!(h.acquire(KEY, t1 + COOLDOWN - ms(1)), Availability::Open { retry_in: ms(1) });
        assert_eq!(h.acquire(KEY, t1 + COOLDOWN), Availability::Probe);
    }

    #[test]
    fn success_resets_failure_count() {
        let (h, t0) = health(3);
        h.record_failure(KEY, t0);
        h.record_failure(KEY, t0);
        h.record_success(KEY, ms(100), t0);
        h.record_failure(KEY, t0);
        h.record_failure(KEY, t0);
        assert_eq!(h.acquire(KEY, t0), Availability::Healthy);
        assert_eq!(h.snapshot()[0].1.consecutive_failures, 2);
        assert!(!h.snapshot()[0].1.open);
    }

    #[test]
    fn ewma_first_sample_then_alpha() {
        let (h, t0) = health(3);
        assert_eq!(h.ewma_ttfb(KEY), None);
        h.record_success(KEY, ms(100), t0);
        assert_close(h.ewma_ttfb(KEY), 100.0);
        // 100 + 0.2 * (200 - 100)
        h.record_success(KEY, ms(200), t0);
        assert_close(h.ewma_ttfb(KEY), 120.0);
        // 120 + 0.2 * (20 - 120)
        h.record_success(KEY, ms(20), t0);
        assert_close(h.ewma_ttfb(KEY), 100.0);
        // Failures don't touch the average.
        h.record_failure(KEY, t0);
        assert_close(h.ewma_ttfb(KEY), 100.0);
        let snap = h.snapshot()[0].1.ewma_ttfb_ms;
        assert!(snap.is_some_and(|v| (v - 100.0).abs() < 1e-6), "{snap:?}");
    }

    #[test]
    fn config_is_sanitised() {
        let h = Health::new(HealthConfig { failure_threshold: 0, cooldown: COOLDOWN, ewma_alpha: f64::NAN });
        let t0 = Instant::now();
        // Threshold 0 acts as 1.
        h.record_failure(KEY, t0);
        assert_eq!(h.acquire(KEY, t0), Availability::Open { retry_in: COOLDOWN });
        // NaN alpha falls back to the default.
        h.record_success(KEY, ms(100), t0);
        h.record_success(KEY, ms(200), t0);
        assert_close(h.ewma_ttfb(KEY), 120.0);
    }

    #[test]
    fn hammering_from_four_threads_stays_consistent() {
        const KEYS: [&str; 3] = ["a/x", "b/y", "c/z"];
        let (h, t0) = health(3);
        // One known sample each, so every key has an average to range-check at the end even
        // if its circuit opens before the threads record a success.
        for key in KEYS {
            h.record_success(key, ms(100), t0);
        }
        let h = Arc::new(h);
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let h = Arc::clone(&h);
                thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t);
                    let mut probes = 0u32;
                    for i in 0..20_000u64 {
                        let key = KEYS[rng.usize(..KEYS.len())];
                        // Time moves forward a little each step so cooldowns elapse mid-run.
                        let now = t0 + ms(i * 3);
                        let _ = h.is_available(key, now);
                        // Like the router: only attempts that were let through report back.
                        match h.acquire(key, now) {
                            Availability::Probe => probes += 1,
                            Availability::Open { .. } => continue,
                            Availability::Healthy => {}
                        }
                        if rng.u8(..4) == 0 {
                            h.record_success(key, ms(rng.u64(10..=500)), now);
                        } else {
                            h.record_failure(key, now);
                        }
                        if i % 1000 == 0 {
                            let _ = h.snapshot();
                        }
                    }
                    probes
                })
            })
            .collect();
        let probes: u32 = handles.into_iter().map(|j| j.join().unwrap()).sum();
        assert!(probes > 0, "the run should have gone through half-open at least once");

        let snap = h.snapshot();
        assert_eq!(snap.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), KEYS);
        for (key, s) in &snap {
            // Open exactly when the count is at the threshold: a success racing a failure
            // never splits the two.
            assert_eq!(s.open, s.consecutive_failures >= 3, "{key}: {s:?}");
            let ewma = s.ewma_ttfb_ms.unwrap_or_else(|| panic!("{key} lost its average"));
            assert!((10.0..=500.0).contains(&ewma), "{key}: ewma {ewma} outside the sample range");
        }
        // Quiescent now: a success closes every key for good.
        let later = t0 + secs(3600);
        for key in KEYS {
            h.record_success(key, ms(50), later);
            assert_eq!(h.acquire(key, later), Availability::Healthy);
            assert!(h.is_available(key, later));
        }
        assert!(h.snapshot().iter().all(|(_, s)| s.consecutive_failures == 0 && !s.open));
    }
}
