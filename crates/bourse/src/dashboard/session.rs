//! Dashboard logins: a session per successful login with an admin key, held in this process.
//!
//! A session id is 32 bytes from the operating system's CSPRNG (hex in the cookie); the map is
//! keyed by its SHA-256, so neither a lookup's timing nor a memory dump gives a usable id away.
//! A session expires `ttl` after the login (no sliding renewal: an admin logs in again), and is
//! gone on log-out or restart. The map holds at most [`MAX_SESSIONS`]; a login beyond that
//! drops expired ones first, then the oldest.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Live sessions at most (admins are few; this bounds memory whatever happens).
pub const MAX_SESSIONS: usize = 1024;

/// The cookie's name.
pub const COOKIE: &str = "bourse_session";

#[derive(Debug, Clone)]
struct Session {
    expires_ms: i64,
    created_ms: i64,
    /// `admin:<key id>`, for the log of who logged in and out.
    actor: String,
}

#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

/// The randomness behind a session id failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRandom;

fn digest(id: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Sessions {
    /// A new session for `actor`, valid until `now_ms + ttl_ms`; returns its id (for the cookie).
    pub fn create(&self, actor: &str, now_ms: i64, ttl_ms: i64) -> Result<String, NoRandom> {
        use ring::rand::SecureRandom as _;
        let mut raw = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut raw).map_err(|_| NoRandom)?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires_ms > now_ms);
        }
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created_ms).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(digest(&id), Session { expires_ms: now_ms + ttl_ms, created_ms: now_ms, actor: actor.to_string() });
        Ok(id)
    }

    /// The actor of a live session with this id.
    pub fn check(&self, id: &str, now_ms: i64) -> Option<String> {
        if id.len() != 64 {
            return None;
        }
        let key = digest(id);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(&key) {
            Some(s) if s.expires_ms > now_ms => Some(s.actor.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session; its actor if it existed.
    pub fn end(&self, id: &str) -> Option<String> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).remove(&digest(id)).map(|s| s.actor)
    }

    /// Sessions held (expired ones included until they are next looked up or pruned).
    pub fn count(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// The session id in a `Cookie` header, if any.
pub fn from_cookie(header: &str) -> Option<&str> {
    header.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| *k == COOKIE).map(|(_, v)| v.trim())
}

/// Constant-time equality: the time taken does not depend on where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_end_and_stay_bounded() {
        let s = Sessions::default();
        let id = s.create("admin:key_1", 1_000, 500).unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, s.create("admin:key_1", 1_000, 500).unwrap(), "ids are random");
        assert_eq!(s.check(&id, 1_499).as_deref(), Some("admin:key_1"));
        assert_eq!(s.check(&id, 1_500), None, "expired");
        assert_eq!(s.check(&id, 1_000), None, "and gone");
        let id = s.create("admin:key_2", 2_000, 500).unwrap();
        assert_eq!(s.end(&id).as_deref(), Some("admin:key_2"));
        assert_eq!(s.check(&id, 2_000), None);
        assert_eq!(s.check("nothex", 0), None);
        for i in 0..MAX_SESSIONS + 10 {
            s.create("admin:x", 10_000 + i as i64, 1_000_000).unwrap();
        }
        assert_eq!(s.count(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(from_cookie("a=1; bourse_session=abc ; b=2"), Some("abc"));
        assert_eq!(from_cookie("bourse_sessionx=1"), None);
        assert_eq!(from_cookie(""), None);
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }
}
