//! Tenants and their virtual keys, as data: what an administrator set for each, and the
//! rules every key obeys (secrets, validity, allowed routes and models).
//!
//! A tenant (a team, an org, a customer) owns keys; each has limits ([`Limits`]), an optional
//! data policy (a `[policies.X]` name) and free-form metadata. A key's secret is
//! `sk-bourse-` followed by 32 random base62 characters (~190 bits, from the operating
//! system's CSPRNG); only its SHA-256 is stored, and the secret is shown once, when the key is
//! created or rotated. Keys in `server.api_keys` are unlimited keys of the built-in tenant
//! [`BUILTIN_TENANT`] and are never stored; their ids are keyed hashes ([`config_key_id`]).
//!
//! This module is pure: the store is `ledger::tenancy`, the live directory every replica
//! keeps is `admin::Directory`.

use crate::limit::Limits;
use serde::{Deserialize, Serialize};

/// The tenant `server.api_keys` belong to.
pub const BUILTIN_TENANT: &str = "builtin";

/// The prefix of every virtual key's secret.
pub const SECRET_PREFIX: &str = "sk-bourse-";

/// A tenant as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Unique and immutable; `[a-z0-9_-]`, 1 to 64 characters.
    pub name: String,
    pub limits: Limits,
    /// A `[policies.X]` name every request of the tenant's keys obeys.
    pub policy: Option<String>,
    /// Route with a lower quality floor when the remaining budget runs low.
    pub downgrade: Option<Downgrade>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// `downgrade = { below = "20%", min_quality = "adequate" }`: when the tightest budget has
/// less than `below_percent` of its limit left, routed requests use `min_quality` as their
/// floor (never lower than it, and never higher than the route's own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downgrade {
    /// 1..=99.
    pub below_percent: u32,
    /// On the catalog's quality scale.
    pub min_quality: u32,
}

/// A virtual key as stored (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// `key_` + 16 hex digits, random; what ledger rows and reports name.
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    /// Lower-case hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub limits: Limits,
    /// Route names the key may use (globs: `*` any run, `?` one character); empty: any.
    pub routes: Vec<String>,
    /// Models the key may name, as `provider/model` or bare model globs; empty: any.
    pub models: Vec<String>,
    /// A `[policies.X]` name, applied on top of the tenant's (it can only narrow it).
    pub policy: Option<String>,
    /// The route a request naming no model (or `model: "default"`) goes to.
    pub default_route: Option<String>,
    /// Whether the key's requests use the response cache (None: as its route or `[cache]`
    /// says; `false` wins over a route's `true`).
    pub cache: Option<bool>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

impl Key {
    /// Usable at `now_ms`: not revoked and not expired.
    pub fn active(&self, now_ms: i64) -> bool {
        self.revoked_ms.is_none_or(|t| t > now_ms) && self.expires_ms.is_none_or(|t| t > now_ms)
    }
}

/// One audit row: who changed what, when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub ts_ms: i64,
    /// `admin:<key id>` over the API, `cli:<user>` from the command line.
    pub actor: String,
    /// `tenant.create`, `tenant.set`, `tenant.delete`, `key.create`, `key.revoke`, `key.rotate`.
    pub action: String,
    /// The tenant's name or the key's id.
    pub target: String,
    /// What was set (never a secret).
    pub detail: serde_json::Value,
}

/// A config key's id (`server.api_keys`, `server.admin_keys`), so ledger rows, reports, audit
/// rows and logs say which key without holding it: `key_` + the first 8 bytes of
/// HMAC-SHA-256 of the key under the installation's [`KeyIdSecret`], in hex (the shape of a
/// virtual key's id). Keyed, so whoever reads reports or rows, but not the secret, cannot test
/// guesses at a short key against its id; 64 bits, so two keys' ids do not collide.
pub fn config_key_id(secret: &KeyIdSecret, key: &str) -> String {
    let tag = ring::hmac::sign(&secret.0, key.as_bytes());
    format!("key_{}", hex(&tag.as_ref()[..8]))
}

/// The secret config keys' ids are keyed with: 32 bytes from the OS CSPRNG, made once per
/// installation and kept in its store (`installation.key_id_secret`, as 64 hex digits), so
/// restarts and replicas sharing the store give a key the same id and reports by key keep
/// one row per key. Whoever can read the store itself also has the secret: to them an id
/// protects a key only as well as its own randomness does. `Debug` prints `***`.
#[derive(Clone)]
pub struct KeyIdSecret(ring::hmac::Key);

impl KeyIdSecret {
    /// A new secret as the store keeps it: 64 lower-case hex digits.
    pub fn generate() -> Result<String, RandomUnavailable> {
        let mut buf = [0u8; 32];
        random_bytes(&mut buf)?;
        Ok(hex(&buf))
    }

    /// The secret stored as `text`; None unless it is 64 hex digits.
    pub fn from_stored(text: &str) -> Option<KeyIdSecret> {
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (b, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            *b = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(KeyIdSecret(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes)))
    }

    /// A secret for this process alone, for a gateway without a store: its key ids reach
    /// only its logs, so they need not outlive it.
    pub fn ephemeral() -> Result<KeyIdSecret, RandomUnavailable> {
        let text = KeyIdSecret::generate()?;
        KeyIdSecret::from_stored(&text).ok_or(RandomUnavailable)
    }
}

impl std::fmt::Debug for KeyIdSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyIdSecret(***)")
    }
}

/// The randomness behind secrets and key ids failed (the OS CSPRNG was unavailable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomUnavailable;

impl std::fmt::Display for RandomUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the operating system's random number generator failed")
    }
}

impl std::error::Error for RandomUnavailable {}

fn random_bytes(buf: &mut [u8]) -> Result<(), RandomUnavailable> {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new().fill(buf).map_err(|_| RandomUnavailable)
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new secret: [`SECRET_PREFIX`] + 32 base62 characters, each uniform (bytes of 248 and
/// above are rejected, so `b % 62` carries no bias).
pub fn new_secret() -> Result<String, RandomUnavailable> {
    let mut out = String::with_capacity(SECRET_PREFIX.len() + 32);
    out.push_str(SECRET_PREFIX);
    let mut buf = [0u8; 48];
    let mut n = 0;
    while n < 32 {
        random_bytes(&mut buf)?;
        for &b in buf.iter().filter(|&&b| b < 248) {
            if n == 32 {
                break;
            }
            out.push(char::from(BASE62[usize::from(b % 62)]));
            n += 1;
        }
    }
    Ok(out)
}

/// Lower-case hex SHA-256 of a secret: what is stored and looked up.
pub fn secret_sha256(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// A new key id: `key_` + 16 random hex digits.
pub fn new_key_id() -> Result<String, RandomUnavailable> {
    let mut buf = [0u8; 8];
    random_bytes(&mut buf)?;
    Ok(format!("key_{}", hex(&buf)))
}

/// Lower-case hex, a table lookup per nibble: it runs on a virtual key's first request in a
/// directory snapshot, where `{:02x}` per byte takes ~7,600 instructions for a digest.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// A tenant name: `[a-z0-9_-]`, 1 to 64 characters.
pub fn valid_tenant_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (also none)
/// and `?` exactly one; everything else matches itself. Linear backtracking on the last
/// `*` only, so no pattern is exponential.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently taken to end at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more character and retry after it.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `text` matches any of `patterns`; an empty list allows everything.
pub fn allowed_by(patterns: &[String], text: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| glob_match(p, text))
}

/// Decimal USD (`"0.45"`, `"12"`, `"0.000000001"`) to integer nano-USD, without floats.
/// Refused: signs, exponents, more than nine decimal places, empty parts, overflow.
pub fn parse_usd(s: &str) -> Result<i64, String> {
    let bad = || format!("\"{s}\" is not an amount of USD like \"5\" or \"0.45\" (at most 9 decimals, not negative)");
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty()
        || t.ends_with('.')
        || frac.len() > 9
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: i64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| bad())? };
    let mut nanos: i64 = 0;
    for (i, d) in frac.bytes().enumerate() {
        nanos += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    whole.checked_mul(1_000_000_000).and_then(|w| w.checked_add(nanos)).ok_or_else(bad)
}

/// Integer nano-USD as decimal USD with at least two decimals and no trailing zeros past
/// them: 450_000_000 → `"0.45"`, 5_000_000_000 → `"5.00"`, 1 → `"0.000000001"`.
pub fn format_usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let (int, frac) = (nanos.unsigned_abs() / 1_000_000_000, nanos.unsigned_abs() % 1_000_000_000);
    let mut f = format!("{frac:09}");
    while f.len() > 2 && f.ends_with('0') {
        f.pop();
    }
    format!("{sign}{int}.{f}")
}

/// A validity period for `--expires`: `30d`, `12h`, `90m`, `45s` (a whole number and a
/// unit), in milliseconds. Integer arithmetic; at most 100 years.
pub fn parse_period_ms(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let bad = || format!("\"{s}\" is not a period like \"30d\", \"12h\" or \"90m\"");
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if ms <= 0 || ms > 100 * 366 * 86_400_000 {
        return Err(format!("\"{s}\" must be more than zero and at most 100 years"));
    }
    Ok(ms)
}

/// A downgrade threshold: `"20%"` or `"20"`, a whole percent in 1..=99.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let n: u32 = t
        .strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\" is not a percentage like \"20%\""))?;
    if !(1..=99).contains(&n) {
        return Err(format!("\"{s}\" must be between 1% and 99%"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn config_key_ids_are_truncated_hmac_sha256_under_the_stored_secret() {
        // Python's hmac module: hmac.new(bytes(range(32)), b"gw-secret", "sha256").hexdigest()[:16]
        let secret =
            KeyIdSecret::from_stored("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f").unwrap();
        assert_eq!(config_key_id(&secret, "gw-secret"), "key_e5f5d7af1942a2f3");
        let other = KeyIdSecret::ephemeral().unwrap();
        assert_ne!(config_key_id(&other, "gw-secret"), "key_e5f5d7af1942a2f3");
        let stored = KeyIdSecret::generate().unwrap();
        assert!(stored.len() == 64 && stored.bytes().all(|c| c.is_ascii_hexdigit()), "{stored}");
        for bad in ["", "00", &"0".repeat(63), &"g".repeat(64), &"é".repeat(32)] {
            assert!(KeyIdSecret::from_stored(bad).is_none(), "{bad}");
        }
        assert_eq!(format!("{secret:?}"), "KeyIdSecret(***)");
    }

    #[test]
    fn secrets_have_the_documented_shape() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        let tail = a.strip_prefix(SECRET_PREFIX).unwrap();
        assert_eq!(tail.len(), 32);
        assert!(tail.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        let id = new_key_id().unwrap();
        assert!(id.starts_with("key_") && id.len() == 20 && id[4..].bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    }

    #[test]
    fn sha256_is_lower_hex() {
        assert_eq!(secret_sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn tenant_names() {
        for ok in ["a", "team-1", "x_y", &"a".repeat(64)] {
            assert!(valid_tenant_name(ok), "{ok}");
        }
        for bad in ["", "Team", "a b", "a.b", "é", &"a".repeat(65)] {
            assert!(!valid_tenant_name(bad), "{bad}");
        }
    }

    #[test]
    fn usd_parses_exactly() {
        assert_eq!(parse_usd("0.45"), Ok(450_000_000));
        assert_eq!(parse_usd("5"), Ok(5_000_000_000));
        assert_eq!(parse_usd(".5"), Ok(500_000_000));
        assert_eq!(parse_usd("0.000000001"), Ok(1));
        assert_eq!(parse_usd("12.30"), Ok(12_300_000_000));
        for bad in
            ["", ".", "5.", "-1", "+1", "1e3", "0.0000000001", "abc", "1.2.3", "99999999999999999999", "9300000000"]
        {
            assert!(parse_usd(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usd_formats_trimmed() {
        assert_eq!(format_usd(450_000_000), "0.45");
        assert_eq!(format_usd(5_000_000_000), "5.00");
        assert_eq!(format_usd(1), "0.000000001");
        assert_eq!(format_usd(0), "0.00");
        assert_eq!(format_usd(-1_500_000_000), "-1.50");
    }

    #[test]
    fn periods_and_percentages() {
        assert_eq!(parse_period_ms("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_period_ms("12h"), Ok(12 * 3_600_000));
        assert_eq!(parse_period_ms("90m"), Ok(90 * 60_000));
        for bad in ["", "d", "0d", "30", "1.5d", "-3d", "3w", "99999999999999d"] {
            assert!(parse_period_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_percent("20%"), Ok(20));
        assert_eq!(parse_percent("5"), Ok(5));
        for bad in ["0%", "100%", "x", "-5%", "20.5%"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("gpt-*", "gpt-4o"));
        assert!(glob_match("*/*-mini", "openai/gpt-4o-mini"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("", "a"));
        assert!(allowed_by(&[], "anything"));
        assert!(!allowed_by(&["cheap".into()], "auto"));
    }

    /// The obvious exponential definition, for the property test.
    fn reference(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, _) => t.is_empty(),
            (Some('*'), _) => reference(&p[1..], t) || (!t.is_empty() && reference(p, &t[1..])),
            (Some('?'), Some(_)) => reference(&p[1..], &t[1..]),
            (Some(a), Some(b)) => a == b && reference(&p[1..], &t[1..]),
            (Some(_), None) => false,
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_reference(p in "[ab*?]{0,8}", t in "[abc]{0,10}") {
            let (pc, tc): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
            prop_assert_eq!(glob_match(&p, &t), reference(&pc, &tc));
        }

        #[test]
        fn usd_round_trips(n in 0i64..=i64::MAX) {
            prop_assert_eq!(parse_usd(&format_usd(n)), Ok(n));
        }
    }
}
