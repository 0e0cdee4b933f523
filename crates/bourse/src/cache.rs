//! The exact-match response cache: a complete, successful answer kept under a key made from
//! everything that decides it, and served again, at no cost, to the same request.
//!
//! **When it applies.** A `[cache]` section turns it on for every request (`enabled`,
//! default true); `cache = true|false` on a route or a virtual key overrides that, and a
//! `false` from either wins over a `true` from the other ([`Cache::applies`]). A request
//! sampled at `temperature > 0` — or sending no temperature, which both dialects take as 1 —
//! is neither looked up nor stored unless its route says `cache_sampled = true`: its answer is
//! one draw of many, and serving it again would hide that. A client's `Cache-Control:
//! no-cache` skips the lookup (the fresh answer then replaces the stored one), `no-store`
//! skips the lookup and the store ([`Directive`]).
//!
//! **The key** ([`Key::of`]) is SHA-256 (`ring`, already in the build) over, each piece
//! length-prefixed: a format version; the scope (the caller's tenant — `server.api_keys` and
//! open gateways are the built-in tenant — or nothing when `share_across_tenants`); the client
//! dialect (the stored bytes are in its wire format) and, for Anthropic's, the `anthropic-beta`
//! header (relayed to an Anthropic upstream, it switches features and answer shapes on);
//! whether the answer streams and whether a
//! stream carries its usage chunk; the `provider/model` the routing policy put first for this
//! caller (so a change of policy, floor, downgrade or allowed models is a different key); and
//! every top-level member of the client's body as written, in order, except `model` (replaced
//! by the routed model), `stream_options` (only its `include_usage` changes the bytes, and that
//! is in the key already), `user` and `metadata` (they label the caller, not the answer). A
//! body the fast path kept as bytes is hashed as sent (member text as written: a different
//! spacing or member order is a different key); one held as a map (Anthropic's, the map walk's)
//! as serde_json writes each value. Either way the body is hashed once, with no allocation.
//!
//! **What is stored** ([`Entry`]): only answers with status 200 that ended normally (a stream
//! whose relay saw it complete: not cut, not broken, not abandoned by its client) and that fit
//! in `max_entry_bytes`; as the client received them, minus a stream's trailing cost comment;
//! with who answered and what it cost (for the hit's headers and ledger row). In memory
//! ([`memory`]) the store is bounded by `max_bytes` and evicts the least recently used entry;
//! in Redis ([`redis`], when `[shared] redis_url` is set) each entry is one string under
//! `bourse:cache:v1:<key in hex>` with a `PX` expiry of the TTL, and Redis's own `maxmemory`
//! bounds the whole. A store that cannot be reached is a miss, never an error.
//!
//! With no store (no `[cache]` section and no route turning it on) a request pays one branch.

mod memory;
mod redis;

use crate::canonical::ChatRequest;
use crate::config::CacheConfig;
use crate::dialect::scan::Raw;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use std::sync::Arc;

/// A request's key: SHA-256 of what decides its answer (see the module doc).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.hex())
    }
}

/// Top-level members left out of the key: `model` is replaced by the routed model;
/// `stream_options` by its one effect on the answer's bytes; `user` and `metadata` name the
/// caller, not the question.
const IGNORED: [&str; 4] = ["model", "stream_options", "user", "metadata"];

/// Bumped whenever what goes into a key, or an entry's encoding, changes: old entries then
/// simply stop matching.
const VERSION: &[u8] = b"bourse-cache-1";

impl Key {
    /// The key of `req` from `scope` (the tenant, or None when shared), answered first by
    /// `provider`/`model`, with the request's `anthropic-beta` header (empty: none).
    pub fn of(scope: Option<&str>, req: &ChatRequest, provider: &str, model: &str, beta: &[u8]) -> Key {
        let mut h = Hasher(ring::digest::Context::new(&ring::digest::SHA256));
        h.piece(VERSION);
        match scope {
            Some(s) => {
                h.piece(b"t");
                h.piece(s.as_bytes());
            }
            None => h.piece(b"*"),
        }
        h.piece(req.dialect.name().as_bytes());
        h.piece(beta);
        h.piece(&[u8::from(req.stream), u8::from(req.stream && req.include_usage)]);
        h.piece(provider.as_bytes());
        h.piece(model.as_bytes());
        match req.raw_body().and_then(|r| std::str::from_utf8(&r.bytes).ok()) {
            Some(text) => {
                // The fast path checked these bytes whole, so skimming them cannot fail; if it
                // did, the key would cover fewer members, never another request's.
                let _ = Raw::checked(text).fields(|name, value| {
                    if !IGNORED.contains(&name.text) {
                        h.piece(name.text.as_bytes());
                        h.piece(value.get().as_bytes());
                    }
                });
            }
            None => {
                for (name, value) in req.body() {
                    if !IGNORED.contains(&name.as_str()) {
                        h.piece(name.as_bytes());
                        h.value(value);
                    }
                }
            }
        }
        let digest = h.0.finish();
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        Key(key)
    }

    /// The key in lower-case hex (Redis key names, logs).
    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 15)]));
        }
        s
    }
}

/// SHA-256 over length-prefixed pieces, so no two sequences of pieces hash alike.
struct Hasher(ring::digest::Context);

impl Hasher {
    fn piece(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// A JSON value as serde_json writes it, streamed into the hash (no buffer), framed by
    /// its length (counted as it is written).
    fn value(&mut self, v: &serde_json::Value) {
        struct Counted<'a> {
            ctx: &'a mut ring::digest::Context,
            len: u64,
        }
        impl std::io::Write for Counted<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.ctx.update(buf);
                self.len += buf.len() as u64;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = Counted { ctx: &mut self.0, len: 0 };
        // Writing a Value to a writer that never fails cannot fail.
        let _ = serde_json::to_writer(&mut w, v);
        let len = w.len;
        // The length after the value: still unambiguous, since every value is followed by it.
        self.0.update(&len.to_le_bytes());
    }
}

/// Whether the request is sampled: `temperature` above 0, or absent (both dialects then
/// sample at 1). `null` counts as absent, as the dialects read it.
pub fn sampled(req: &ChatRequest) -> bool {
    let temperature = match req.raw_body().and_then(|r| std::str::from_utf8(&r.bytes).ok()) {
        Some(text) => {
            let mut t = None;
            let _ = Raw::checked(text).fields(|name, value| {
                if name.text == "temperature" && !value.is_null() {
                    t = value.get().parse::<f64>().ok();
                }
            });
            t
        }
        None => req.body().get("temperature").and_then(serde_json::Value::as_f64),
    };
    temperature.is_none_or(|t| t > 0.0)
}

/// What the client's `Cache-Control` asks of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Nothing: look up, and store a miss's answer.
    Normal,
    /// `no-cache`: do not serve a stored answer; store the fresh one.
    NoCache,
    /// `no-store`: neither serve nor store.
    NoStore,
}

impl Directive {
    /// From the request's `Cache-Control` (comma-separated, any case; `no-store` wins).
    pub fn of(headers: &HeaderMap) -> Directive {
        let mut d = Directive::Normal;
        for v in headers.get_all(header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for part in v.split(',') {
                let part = part.trim();
                if part.eq_ignore_ascii_case("no-store") {
                    return Directive::NoStore;
                }
                if part.eq_ignore_ascii_case("no-cache") {
                    d = Directive::NoCache;
                }
            }
        }
        d
    }
}

/// A stored answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `body` is an SSE stream (else a JSON answer).
    pub stream: bool,
    /// Unix milliseconds when it was stored.
    pub stored_ms: i64,
    /// What the answer cost (nano-USD): what each hit saves.
    pub cost_nanos: i64,
    /// Its counterfactual on the reference model (nano-USD).
    pub reference_nanos: i64,
    /// The provider and upstream model that answered.
    pub provider: String,
    pub model: String,
    /// The answer as its client received it (a stream without its cost comment).
    pub body: Bytes,
}

/// The encoding's first bytes.
const MAGIC: &[u8; 4] = b"BC1\n";

impl Entry {
    /// What the in-memory store counts an entry as: its bytes and names, and a fixed
    /// overhead for the key, the map's slot and the order's node.
    pub fn size(&self) -> usize {
        self.body.len() + self.provider.len() + self.model.len() + 160
    }

    /// The entry as Redis stores it: `MAGIC`, the flags byte, the three integers
    /// (little-endian), the two names (each after its u16 length), then the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 1 + 24 + 4 + self.provider.len() + self.model.len() + self.body.len());
        out.extend_from_slice(MAGIC);
        out.push(u8::from(self.stream));
        for n in [self.stored_ms, self.cost_nanos, self.reference_nanos] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for name in [&self.provider, &self.model] {
            // Ids and model names are far below 64 KiB; a longer one is cut, not misread.
            let bytes = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// The inverse of [`Entry::encode`]; None for anything else (another version's entry,
    /// a foreign value under the key), which is then a miss. The body is a slice of `bytes`.
    pub fn decode(bytes: Bytes) -> Option<Entry> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<std::ops::Range<usize>> {
            let r = at..at.checked_add(n)?;
            if r.end > bytes.len() {
                return None;
            }
            at = r.end;
            Some(r)
        };
        if bytes.get(take(4)?)? != MAGIC {
            return None;
        }
        let stream = match bytes.get(take(1)?)? {
            [0] => false,
            [1] => true,
            _ => return None,
        };
        let mut int = || -> Option<i64> { Some(i64::from_le_bytes(bytes.get(take(8)?)?.try_into().ok()?)) };
        let (stored_ms, cost_nanos, reference_nanos) = (int()?, int()?, int()?);
        let mut name = || -> Option<String> {
            let len = u16::from_le_bytes(bytes.get(take(2)?)?.try_into().ok()?);
            String::from_utf8(bytes.get(take(usize::from(len))?)?.to_vec()).ok()
        };
        let (provider, model) = (name()?, name()?);
        let body = bytes.slice(at..);
        Some(Entry { stream, stored_ms, cost_nanos, reference_nanos, provider, model, body })
    }
}

/// Where entries live.
enum Store {
    Memory(memory::Memory),
    Redis(redis::RedisStore),
}

/// The response cache: its settings and its store.
pub struct Cache {
    pub config: CacheConfig,
    store: Store,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = match self.store {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        };
        f.debug_struct("Cache").field("config", &self.config).field("store", &store).finish()
    }
}

impl Cache {
    /// A cache in this process's memory.
    pub fn memory(config: CacheConfig) -> Cache {
        let max = usize::try_from(config.max_bytes).unwrap_or(usize::MAX);
        Cache { config, store: Store::Memory(memory::Memory::new(max)) }
    }

    /// A cache in Redis at `url`, shared by every replica that names it. Connects lazily
    /// (inside a tokio runtime); an unreachable server is a miss on each lookup.
    pub fn redis(config: CacheConfig, url: &str) -> Result<Cache, String> {
        Ok(Cache { config, store: Store::Redis(redis::RedisStore::connect(url)?) })
    }

    /// Whether a request uses the cache, given its key's and its route's `cache`: a `false`
    /// from either wins, then a `true` from either, then `[cache] enabled`.
    pub fn applies(&self, key: Option<bool>, route: Option<bool>) -> bool {
        match (key, route) {
            (Some(false), _) | (_, Some(false)) => false,
            (Some(true), _) | (_, Some(true)) => true,
            (None, None) => self.config.enabled,
        }
    }

    /// The key's scope for a caller of `tenant` (None: the built-in tenant).
    pub fn scope<'a>(&self, tenant: Option<&'a str>) -> Option<&'a str> {
        match self.config.share_across_tenants {
            true => None,
            false => Some(tenant.unwrap_or(crate::tenancy::BUILTIN_TENANT)),
        }
    }

    /// The entry under `key`, if one is there and fresh.
    pub async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let now = crate::timespec::now_ms();
        match &self.store {
            Store::Memory(m) => m.get(key, now),
            Store::Redis(r) => r.get(key).await.map(Arc::new),
        }
    }

    /// Store `entry` under `key` for the TTL, unless it is larger than `max_entry_bytes`.
    /// Returns at once: a Redis write goes on a task of its own.
    pub fn put(&self, key: Key, entry: Entry) {
        if entry.body.len() as u64 > self.config.max_entry_bytes {
            return;
        }
        let ttl_ms = i64::try_from(self.config.ttl.as_millis()).unwrap_or(i64::MAX);
        match &self.store {
            Store::Memory(m) => m.put(key, entry, crate::timespec::now_ms().saturating_add(ttl_ms)),
            Store::Redis(r) => r.put(&key, &entry, ttl_ms),
        }
    }

    /// How many answers the in-memory store holds, and their bytes as counted against
    /// `max_bytes` (None for Redis).
    pub fn held(&self) -> Option<(usize, usize)> {
        match &self.store {
            Store::Memory(m) => Some(m.held()),
            Store::Redis(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::openai::parse_chat_request;

    fn openai(body: &str) -> ChatRequest {
        parse_chat_request(&Bytes::from(body.to_string())).unwrap()
    }

    fn anthropic(body: &str) -> ChatRequest {
        crate::dialect::anthropic::parse_request(body.as_bytes()).unwrap()
    }

    fn key(req: &ChatRequest) -> Key {
        Key::of(Some("acme"), req, "p", "m", b"")
    }

    const BASE: &str = r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0}"#;

    #[test]
    fn the_key_covers_what_changes_the_answer_and_nothing_else() {
        let base = key(&openai(BASE));
        assert!(openai(BASE).raw_body().is_some(), "the fast path kept the bytes");
        // Ignored: the model as named, the caller's labels, stream options without streaming.
        for same in [
            r#"{"model":"cheap","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0,"user":"u1","metadata":{"a":"b"}}"#,
        ] {
            assert_eq!(key(&openai(same)), base, "{same}");
        }
        // Everything else is part of it.
        for other in [
            r#"{"model":"auto","messages":[{"role":"user","content":"hi!"}],"temperature":0}"#,
            r#"{"model":"auto","messages":[{"role":"system","content":"hi"}],"temperature":0}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0.0}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":5}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0,"tools":[{"type":"function","function":{"name":"f"}}]}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0,"response_format":{"type":"json_object"}}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream":true}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0,"top_p":0.5}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0,"x_vendor":1}"#,
        ] {
            assert_ne!(key(&openai(other)), base, "{other}");
        }
        // The scope, the routed model and the dialect.
        let req = openai(BASE);
        assert_ne!(Key::of(Some("other"), &req, "p", "m", b""), base);
        assert_ne!(Key::of(None, &req, "p", "m", b""), base);
        assert_ne!(Key::of(Some("acme"), &req, "q", "m", b""), base);
        assert_ne!(Key::of(Some("acme"), &req, "p", "n", b""), base);
        // Pieces are framed: moving a byte from one to the next is another key.
        assert_ne!(Key::of(Some("acme"), &req, "pm", "", b""), Key::of(Some("acme"), &req, "p", "m", b""));
        assert_ne!(Key::of(Some("acme"), &req, "p", "m", b"tools-2024"), base);
    }

    #[test]
    fn streams_key_their_usage_chunk_and_maps_are_keyed_too() {
        let s = r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream":true}"#;
        let su = r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream":true,"stream_options":{"include_usage":true}}"#;
        assert_ne!(key(&openai(s)), key(&openai(su)));
        let a = r#"{"model":"auto","max_tokens":9,"messages":[{"role":"user","content":"hi"}],"temperature":0}"#;
        let req = anthropic(a);
        assert!(req.raw_body().is_none(), "Anthropic bodies are maps");
        let k = key(&req);
        assert_eq!(k, key(&anthropic(a)));
        let b = r#"{"model":"auto","max_tokens":9,"messages":[{"role":"user","content":"hi"}],"temperature":0,"metadata":{"user_id":"x"}}"#;
        assert_eq!(key(&anthropic(b)), k, "metadata is ignored");
        let c = r#"{"model":"auto","max_tokens":10,"messages":[{"role":"user","content":"hi"}],"temperature":0}"#;
        assert_ne!(key(&anthropic(c)), k);
        let d = r#"{"model":"auto","max_tokens":9,"system":"be brief","messages":[{"role":"user","content":"hi"}],"temperature":0}"#;
        assert_ne!(key(&anthropic(d)), k);
    }

    #[test]
    fn sampled_means_a_temperature_above_zero_or_none() {
        let with = |t: &str| format!(r#"{{"model":"a","messages":[{{"role":"user","content":"hi"}}]{t}}}"#);
        for (t, expect) in [("", true), (r#","temperature":null"#, true), (r#","temperature":0"#, false)] {
            assert_eq!(sampled(&openai(&with(t))), expect, "{t:?}");
        }
        assert!(sampled(&openai(&with(r#","temperature":0.2"#))));
        assert!(!sampled(&openai(&with(r#","temperature":0.0"#))));
        let a = |t: &str| format!(r#"{{"model":"a","max_tokens":3,"messages":[{{"role":"user","content":"hi"}}]{t}}}"#);
        assert!(sampled(&anthropic(&a(""))));
        assert!(!sampled(&anthropic(&a(r#","temperature":0"#))));
        assert!(sampled(&anthropic(&a(r#","temperature":0.7"#))));
    }

    #[test]
    fn cache_control_is_read_in_any_case_and_no_store_wins() {
        let h = |v: &[&str]| {
            let mut m = HeaderMap::new();
            for v in v {
                m.append(header::CACHE_CONTROL, v.parse().unwrap());
            }
            Directive::of(&m)
        };
        assert_eq!(h(&[]), Directive::Normal);
        assert_eq!(h(&["max-age=0"]), Directive::Normal);
        assert_eq!(h(&["No-Cache"]), Directive::NoCache);
        assert_eq!(h(&["max-age=0, no-cache"]), Directive::NoCache);
        assert_eq!(h(&["no-cache", "no-store"]), Directive::NoStore);
    }

    #[test]
    fn entries_round_trip_and_anything_else_is_a_miss() {
        let e = Entry {
            stream: true,
            stored_ms: 1_700_000_000_123,
            cost_nanos: 1234,
            reference_nanos: -5,
            provider: "sim".into(),
            model: "sim-small".into(),
            body: Bytes::from_static(b"data: {}\n\n"),
        };
        let bytes = Bytes::from(e.encode());
        assert_eq!(Entry::decode(bytes.clone()), Some(e));
        for cut in 0..bytes.len() - 10 {
            assert_eq!(Entry::decode(bytes.slice(..cut)), None, "cut at {cut}");
        }
        assert_eq!(Entry::decode(Bytes::from_static(b"hello")), None);
        let mut flags = bytes.to_vec();
        flags[4] = 7;
        assert_eq!(Entry::decode(Bytes::from(flags)), None);
    }

    #[test]
    fn a_false_wins_then_a_true_then_the_section() {
        let config = CacheConfig {
            enabled: false,
            ttl: std::time::Duration::from_secs(1),
            max_bytes: 1 << 20,
            max_entry_bytes: 1 << 10,
            share_across_tenants: false,
        };
        let c = Cache::memory(config);
        assert!(!c.applies(None, None));
        assert!(c.applies(Some(true), None) && c.applies(None, Some(true)));
        assert!(!c.applies(Some(false), Some(true)) && !c.applies(Some(true), Some(false)));
        let on = Cache::memory(CacheConfig { enabled: true, ..config });
        assert!(on.applies(None, None) && !on.applies(None, Some(false)));
        assert_eq!(on.scope(Some("t")), Some("t"));
        assert_eq!(on.scope(None), Some(crate::tenancy::BUILTIN_TENANT));
        let shared = Cache::memory(CacheConfig { share_across_tenants: true, ..config });
        assert_eq!(shared.scope(Some("t")), None);
    }
}
