//! The in-memory store: a map from key to entry, bounded by `max_bytes` (each entry counted
//! by [`Entry::size`]), evicting the least recently used entry first.
//!
//! Recency is a counter: each get or put gives the entry the next tick, and a `BTreeMap` from
//! tick to key orders the entries from least to most recently used, so eviction pops its
//! first. An entry past its expiry is removed when it is next asked for; until then it is
//! the least recently used sooner or later, and eviction takes it. One mutex guards both
//! maps: a hit holds it for two map operations and a reference count, no longer than the
//! counters' own lock.

use super::{Entry, Key};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

pub(super) struct Memory {
    max_bytes: usize,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    map: HashMap<Key, Slot, BuildHasherDefault<KeyHasher>>,
    /// Tick -> key, least recently used first.
    order: BTreeMap<u64, Key>,
    tick: u64,
    /// The sum of the held entries' sizes.
    bytes: usize,
}

struct Slot {
    entry: Arc<Entry>,
    tick: u64,
    expires_ms: i64,
    size: usize,
}

/// Keys are SHA-256 digests already: their first eight bytes are as good a hash as any.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its bytes in one call (after no length prefix for arrays).
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
}

impl Memory {
    pub(super) fn new(max_bytes: usize) -> Memory {
        Memory { max_bytes, inner: Mutex::new(Lru::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // A panic while holding the lock leaves the maps consistent (every change is one
        // step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, key: &Key, now_ms: i64) -> Option<Arc<Entry>> {
        let mut lru = self.lock();
        let lru = &mut *lru;
        let slot = lru.map.get_mut(key)?;
        if slot.expires_ms <= now_ms {
            let (tick, size) = (slot.tick, slot.size);
            lru.map.remove(key);
            lru.order.remove(&tick);
            lru.bytes -= size;
            return None;
        }
        lru.order.remove(&slot.tick);
        lru.tick += 1;
        slot.tick = lru.tick;
        lru.order.insert(lru.tick, *key);
        Some(slot.entry.clone())
    }

    pub(super) fn put(&self, key: Key, entry: Entry, expires_ms: i64) {
        let size = entry.size();
        if size > self.max_bytes {
            return;
        }
        let entry = Arc::new(entry);
        let mut lru = self.lock();
        let lru = &mut *lru;
        if let Some(old) = lru.map.remove(&key) {
            lru.order.remove(&old.tick);
            lru.bytes -= old.size;
        }
        while lru.bytes + size > self.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else { break };
            if let Some(old) = lru.map.remove(&oldest) {
                lru.bytes -= old.size;
            }
        }
        lru.tick += 1;
        lru.order.insert(lru.tick, key);
        lru.map.insert(key, Slot { entry, tick: lru.tick, expires_ms, size });
        lru.bytes += size;
    }

    /// Entries held and their counted bytes.
    pub(super) fn held(&self) -> (usize, usize) {
        let lru = self.lock();
        (lru.map.len(), lru.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(body: usize) -> Entry {
        Entry {
            stream: false,
            stored_ms: 0,
            cost_nanos: 1,
            reference_nanos: 2,
            provider: "p".into(),
            model: "m".into(),
            body: Bytes::from(vec![b'x'; body]),
        }
    }

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    #[test]
    fn it_evicts_the_least_recently_used_within_its_bound() {
        let one = entry(100).size();
        let m = Memory::new(3 * one);
        for n in 0..3 {
            m.put(key(n), entry(100), 1_000);
        }
        assert_eq!(m.held(), (3, 3 * one));
        // 0 is used, so 1 is now the least recently used.
        assert!(m.get(&key(0), 0).is_some());
        m.put(key(3), entry(100), 1_000);
        assert!(m.get(&key(1), 0).is_none());
        for n in [0, 2, 3] {
            assert!(m.get(&key(n), 0).is_some(), "{n}");
        }
        assert_eq!(m.held(), (3, 3 * one));
        // The gets above left the order 0, 2, 3: an entry twice the size evicts 0, then 2.
        m.put(key(4), entry(100 + one), 1_000);
        assert_eq!(m.held(), (2, one + (one + one)));
        assert!(m.get(&key(3), 0).is_some() && m.get(&key(4), 0).is_some());
        // One larger than the bound is not stored, and evicts nothing.
        m.put(key(5), entry(3 * one), 1_000);
        assert!(m.get(&key(5), 0).is_none());
        assert_eq!(m.held().0, 2);
    }

    #[test]
    fn an_expired_entry_is_gone_and_a_replaced_one_counted_once() {
        let m = Memory::new(1 << 20);
        m.put(key(1), entry(10), 500);
        assert!(m.get(&key(1), 499).is_some());
        assert!(m.get(&key(1), 500).is_none());
        assert_eq!(m.held(), (0, 0));
        m.put(key(2), entry(10), 500);
        m.put(key(2), entry(20), 900);
        assert_eq!(m.held(), (1, entry(20).size()));
        assert_eq!(m.get(&key(2), 600).unwrap().body.len(), 20);
    }
}
