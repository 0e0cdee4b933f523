//! Budgets and rate limits on the exchange: a virtual key's request is admitted by its key
//! and its tenant before every upstream attempt, and each attempt is settled at its metered
//! cost.
//!
//! [`Gate`] is one request's admission: the first [`Gate::reserve`] counts the request (per
//! minute) and takes its concurrency lease; each reserve puts the attempt's worst-case cost
//! and its estimated tokens on hold. [`Held`] is one attempt's hold: settled with what the
//! attempt metered (a failed attempt: nothing), or, if it is dropped unsettled (the client
//! went away before the answer), released. The lease goes back with the settle of the
//! attempt that answered, or when the gate is dropped (every attempt failed).
//!
//! Config keys (`server.api_keys`) and unauthenticated gateways have no gate: no counters,
//! no extra work on their path.

use super::answer::Content;
use crate::admin::Resolved;
use crate::canonical::Dialect;
use crate::error::{Error, ErrorKind};
use crate::limit::{Ask, Counters, Hold, Lease, LimitError, Nanos, Refusal, Remaining};
use crate::limit::{Rate, ScopeKind, Spent, Window};
use crate::meter::Cost;
use crate::state::{Caller, SharedState};
use crate::timespec::rfc3339;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

pub static X_BOURSE_BUDGET_REMAINING: HeaderName = HeaderName::from_static("x-bourse-budget-remaining-usd");
static X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// Output tokens reserved in a tokens-per-minute window for a request that sets no
/// `max_tokens`; the settle replaces the reservation by what was used.
pub(super) const DEFAULT_TOKENS_RESERVED: u64 = 1024;

/// One request's admission by its key and tenant.
pub(super) struct Gate {
    state: SharedState,
    key: Arc<Resolved>,
    first: bool,
    lease: Option<Lease>,
    /// What the last admitted decision left, for the answer's headers.
    remaining: Option<Remaining>,
}

/// Why a reserve did not admit.
pub(super) enum Denied {
    Refused(Refusal),
    Error(Error),
}

impl Gate {
    /// The gate of a virtual key's request; None for config keys and open gateways.
    pub(super) fn new(state: &SharedState, caller: &Caller) -> Option<Gate> {
        let key = caller.key.clone()?;
        Some(Gate { state: state.clone(), key, first: true, lease: None, remaining: None })
    }

    /// Reserve an attempt's worst-case `cost` and `tokens` on every scope, all or nothing.
    pub(super) async fn reserve(&mut self, cost: Nanos, tokens: u64) -> Result<Held, Denied> {
        let ask = Ask {
            scopes: &self.key.scopes,
            group: &self.key.group,
            now_ms: crate::timespec::now_ms(),
            request: self.first,
            tokens,
            cost,
        };
        match self.state.counters.reserve(&ask).await {
            Ok((mut hold, remaining)) => {
                if self.first {
                    self.first = false;
                    self.lease = hold.take_lease();
                }
                self.remaining = Some(remaining);
                Ok(Held { state: self.state.clone(), hold: Some(hold), lease: None })
            }
            Err(LimitError::Refused(r)) => Err(Denied::Refused(r)),
            Err(LimitError::Unavailable(m)) => Err(Denied::Error(Error::new(
                ErrorKind::Unavailable,
                format!("budgets and rate limits cannot be checked right now ({m}); try again shortly"),
            ))),
        }
    }

    /// The request's lease, for the attempt that answers it (released with its settle).
    pub(super) fn lease(&mut self) -> Option<Lease> {
        self.lease.take()
    }

    /// The tenant's downgrade, if it applies now: (the floor to use, the share of the
    /// tightest tenant budget left, in percent).
    pub(super) async fn downgrade(&self) -> Option<(u32, u32, u32)> {
        let k = &self.key;
        let d = k.tenant.downgrade.as_ref()?;
        let l = &k.tenant.limits;
        let usage = self
            .state
            .counters
            .usage(ScopeKind::Tenant, &k.tenant.name, &self.key.group, crate::timespec::now_ms())
            .await;
        let usage = usage.ok()?;
        let mut least: Option<u32> = None;
        for (limit, used) in [(l.budget_day, usage.day), (l.budget_month, usage.month), (l.budget_total, usage.total)] {
            let Some(limit) = limit.filter(|l| *l > 0) else { continue };
            let left = (limit - used).max(0);
            // Whole percent, rounded down, in integers.
            let pct = u32::try_from((i128::from(left) * 100 / i128::from(limit)).clamp(0, 100)).unwrap_or(0);
            least = Some(least.map_or(pct, |p| p.min(pct)));
        }
        let pct = least?;
        (pct < d.below_percent).then_some((d.min_quality, pct, d.below_percent))
    }

    /// An admitted answer's headers: its content's, then the budget and rate-limit headers
    /// in the client's dialect, with what the last reserve left.
    ///
    /// The map is a clone of a template for the answer's shape (content, dialect, which of
    /// budget, requests and tokens the key is limited by) that holds every name already, so
    /// only the values are written, in the template's order. Inserting the seven names
    /// instead would hash and probe each one on every answer.
    pub(super) fn answer_headers(&self, content: Content, client: Dialect) -> HeaderMap {
        let Some(r) = &self.remaining else { return content.headers() };
        let anthropic = client == Dialect::Anthropic;
        let shape = Shape {
            content,
            anthropic,
            budget: r.budget.is_some(),
            requests: r.requests.is_some(),
            tokens: r.tokens.is_some(),
        };
        let mut h = shape.template().clone();
        let mut slots = h.iter_mut().skip(content.len());
        let mut put = |name: &HeaderName, value: HeaderValue| {
            if let Some((n, slot)) = slots.next() {
                debug_assert_eq!(n, name, "the template's order");
                *slot = value;
            }
        };
        if let Some(b) = &r.budget {
            let mut buf = [0; 24];
            put(&X_BOURSE_BUDGET_REMAINING, ascii(Cost(b.left).usd_ascii(&mut buf)));
        }
        let now = crate::timespec::now_ms();
        for (names, left) in [(&REQUESTS, &r.requests), (&TOKENS, &r.tokens)] {
            let Some(left) = left else { continue };
            let names = &names[usize::from(anthropic)];
            put(&names[0], limit_value(left.limit));
            put(&names[1], digits(left.left));
            let reset = match anthropic {
                true => ascii(rfc3339(left.resets_at_ms).as_bytes()),
                false => openai_reset(left.resets_at_ms - now),
            };
            put(&names[2], reset);
        }
        h
    }
}

/// Which headers an admitted answer carries: the index of its template.
struct Shape {
    content: Content,
    anthropic: bool,
    budget: bool,
    requests: bool,
    tokens: bool,
}

impl Shape {
    const COUNT: usize = 32;

    fn index(&self) -> usize {
        let bits =
            [matches!(self.content, Content::EventStream), self.anthropic, self.budget, self.requests, self.tokens];
        bits.iter().enumerate().map(|(i, &b)| usize::from(b) << i).sum()
    }

    /// The content's headers, then each limit header this shape has with a placeholder value,
    /// in the order [`Gate::answer_headers`] writes them; built once per shape.
    fn template(&self) -> &'static HeaderMap {
        static TEMPLATES: [OnceLock<HeaderMap>; Shape::COUNT] = [const { OnceLock::new() }; Shape::COUNT];
        TEMPLATES[self.index()].get_or_init(|| {
            let mut h = self.content.headers();
            let placeholder = HeaderValue::from_static("0");
            if self.budget {
                h.insert(X_BOURSE_BUDGET_REMAINING.clone(), placeholder.clone());
            }
            for (names, on) in [(&REQUESTS, self.requests), (&TOKENS, self.tokens)] {
                if on {
                    for name in &names[usize::from(self.anthropic)] {
                        h.insert(name.clone(), placeholder.clone());
                    }
                }
            }
            h
        })
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            release(&self.state.counters, lease);
        }
    }
}

/// The limit, remaining and reset headers of one rate: OpenAI's
/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (reset as a duration, `1m0s`) and
/// Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (reset as an
/// RFC 3339 time).
type RateHeaders = [[HeaderName; 3]; 2];
static REQUESTS: RateHeaders = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-requests-limit"),
        HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
        HeaderName::from_static("anthropic-ratelimit-requests-reset"),
    ],
];
static TOKENS: RateHeaders = [
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-tokens-reset"),
    ],
];

/// `1s` to `59s` and `1m0s`: every reset a minute window can report past its first second
/// (the usual one is `1m0s`, the newest request's window), as static values, so an answer
/// clones one instead of formatting and copying it.
static WHOLE_SECONDS: [HeaderValue; 60] = {
    macro_rules! seconds {
        ($($s:literal)*) => { [$(HeaderValue::from_static(concat!($s, "s")),)* HeaderValue::from_static("1m0s")] };
    }
    seconds!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37
        38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59)
};

/// `n` in decimal as a header value, in one allocation of its exact length (`HeaderValue`'s
/// `From<u64>` makes two: a buffer, then its shrink when frozen).
fn digits(n: u64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    ascii(buf.format(n).as_bytes())
}

/// A rate's limit as a header value. Limits are set by administrators and seldom change, so
/// each thread keeps the last few it wrote and clones one (a reference count) rather than
/// formatting, allocating and freeing the same digits on every answer.
fn limit_value(n: u64) -> HeaderValue {
    const WAYS: usize = 4;
    /// (limit, its value) as written, and the way the next new one replaces.
    type Recent = ([Option<(u64, HeaderValue)>; WAYS], usize);
    thread_local! {
        static RECENT: RefCell<Recent> = const { RefCell::new(([const { None }; WAYS], 0)) };
    }
    RECENT.with_borrow_mut(|(ways, next)| {
        if let Some((_, v)) = ways.iter().flatten().find(|(m, _)| *m == n) {
            return v.clone();
        }
        let v = digits(n);
        ways[*next] = Some((n, v.clone()));
        *next = (*next + 1) % WAYS;
        v
    })
}

/// Text this module formatted (digits, `.`, `-`, `:`, letters) as a header value.
fn ascii(text: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(text).expect("formatted numbers and times are valid header values")
}

/// [`openai_duration`] as a header value.
fn openai_reset(ms: i64) -> HeaderValue {
    let whole_seconds = (ms.max(0) + 999) / 1000;
    match usize::try_from(whole_seconds) {
        Ok(s @ 1..=60) if ms >= 1000 => WHOLE_SECONDS[s - 1].clone(),
        _ => ascii(openai_duration(ms).as_bytes()),
    }
}

/// A duration the way OpenAI writes it in its reset headers: `20ms`, `6s`, `1m30s` (written
/// piece by piece: it goes on every limited answer).
fn openai_duration(ms: i64) -> String {
    let ms = ms.max(0);
    let mut out = String::with_capacity(8);
    let mut n = itoa::Buffer::new();
    if ms < 1000 {
        out.push_str(n.format(ms));
        out.push_str("ms");
        return out;
    }
    let s = (ms + 999) / 1000;
    if s >= 60 {
        out.push_str(n.format(s / 60));
        out.push('m');
    }
    out.push_str(n.format(s % 60));
    out.push('s');
    out
}

/// One attempt's hold, settled once: with what it metered, or with nothing if dropped.
pub(super) struct Held {
    state: SharedState,
    hold: Option<Hold>,
    /// The request's lease, when this attempt answers the request.
    pub(super) lease: Option<Lease>,
}

impl Held {
    /// Settle at what the attempt metered (and give back the lease it carries).
    pub(super) fn settle(mut self, spent: Spent) {
        if let Some(hold) = self.hold.take() {
            settle(&self.state.counters, hold, spent, self.lease.take());
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            settle(&self.state.counters, hold, Spent::default(), self.lease.take());
        } else if let Some(lease) = self.lease.take() {
            release(&self.state.counters, lease);
        }
    }
}

/// Settle without waiting: in place for in-process counters; queued for Redis (the answer
/// does not wait for the round trip). A settle that fails (Redis unreachable) is logged; the
/// hold then expires on its own.
fn settle(counters: &Counters, hold: Hold, spent: Spent, lease: Option<Lease>) {
    counters.settle_detached(hold, spent, lease);
}

fn release(counters: &Counters, lease: Lease) {
    match counters {
        Counters::Local(l) => l.release(lease),
        Counters::Shared { .. } => {
            let counters = counters.clone();
            spawn(async move {
                if let Err(e) = counters.release(lease).await {
                    tracing::warn!("lease release failed: {e}; the lease expires on its own");
                }
            });
        }
    }
}

fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(f);
    }
}

/// A refusal as the client's 429: `budget_exceeded` (with `x-should-retry: false`, so the
/// SDKs do not retry what cannot succeed before the reset) or `rate_limit_exceeded` with
/// `Retry-After` in whole seconds — or, when the request's own token reservation (`asked`)
/// is larger than a tokens-per-minute limit, with `x-should-retry: false`: it can never fit.
pub(super) fn refusal_response(r: &Refusal, client: Dialect, asked: u64) -> Response {
    let now = crate::timespec::now_ms();
    match r {
        Refusal::Budget { scope, id, window, limit, used, resets_at_ms } => {
            let period = match window {
                Window::Day => "daily",
                Window::Month => "monthly",
                Window::Total => "total",
            };
            let when = match resets_at_ms {
                Some(t) => format!("; it resets at {}", rfc3339(*t)),
                None => String::new(),
            };
            let msg = format!(
                "budget exceeded: the {period} budget of {} '{id}' is ${} and ${} of it is spent or reserved; \
                 this request does not fit{when}",
                scope.as_str(),
                Cost(*limit).usd(),
                Cost(*used).usd(),
            );
            let mut e = Error::new(ErrorKind::BudgetExceeded, msg);
            e.retry_after = resets_at_ms.map(|t| ((t - now).max(1000) / 1000).to_string());
            let mut resp = e.render(client);
            resp.headers_mut().insert(X_SHOULD_RETRY.clone(), HeaderValue::from_static("false"));
            resp
        }
        Refusal::Rate { scope, id, rate: Rate::Tokens, limit, .. } if asked > *limit => {
            let msg = format!(
                "request too large: it reserves {asked} tokens (its estimated prompt plus max_tokens, 1024 when \
                 unset) and the tokens-per-minute limit of {} '{id}' is {limit}; lower max_tokens",
                scope.as_str(),
            );
            let mut resp = Error::new(ErrorKind::RateLimited, msg).render(client);
            resp.headers_mut().insert(X_SHOULD_RETRY.clone(), HeaderValue::from_static("false"));
            resp
        }
        Refusal::Rate { scope, id, rate, limit, retry_after_ms } => {
            let msg = format!(
                "rate limit reached: {} '{id}' has a limit of {limit} {}; retry after {} ms",
                scope.as_str(),
                rate.as_str(),
                retry_after_ms
            );
            let mut e = Error::new(ErrorKind::RateLimited, msg);
            e.retry_after = Some((((*retry_after_ms).max(1) + 999) / 1000).to_string());
            e.render(client)
        }
    }
}

/// The shared counters are unreachable ("closed"): 503 in either dialect (Anthropic's own
/// mapping would make it a 529, which its SDKs take for an overloaded model and retry).
pub(super) fn unavailable(e: Error, client: Dialect) -> Response {
    let mut resp = e.render(client);
    *resp.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    resp
}

/// The tightest budget's headroom a refusal reports (limit − used), for skipping candidates
/// that cannot fit either.
pub(super) fn headroom(r: &Refusal) -> Option<Nanos> {
    match r {
        Refusal::Budget { limit, used, .. } => Some((limit - used).max(0)),
        Refusal::Rate { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_resets_are_the_formatted_ones() {
        for ms in (-5..2_000).chain(58_000..62_500).chain([600_000, i64::MAX / 2]) {
            assert_eq!(openai_reset(ms), openai_duration(ms), "{ms} ms");
        }
    }

    #[test]
    fn limit_values_are_the_decimal_number_however_they_alternate() {
        for round in 0..3 {
            for n in [100, 7, 100_000, 100, 99, 5, 6, 7, 100_000, u64::MAX, 0, 100] {
                assert_eq!(limit_value(n), n.to_string(), "{n} in round {round}");
            }
        }
    }

    #[test]
    fn digits_are_the_decimal_number() {
        for n in [0, 7, 10, 99_999, 100_000_000, u64::MAX] {
            assert_eq!(digits(n), n.to_string(), "{n}");
            assert_eq!(digits(n), HeaderValue::from(n));
        }
    }

    #[test]
    fn reset_durations_read_like_openai() {
        assert_eq!(openai_duration(20), "20ms");
        assert_eq!(openai_duration(6_000), "6s");
        assert_eq!(openai_duration(5_001), "6s");
        assert_eq!(openai_duration(90_000), "1m30s");
        assert_eq!(openai_duration(-5), "0ms");
        assert_eq!(rfc3339(1_798_761_600_000), "2027-01-01T00:00:00Z");
    }
}
