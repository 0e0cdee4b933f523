//! FNV-1a, 64-bit: the one small non-cryptographic hash the gateway uses — for the catalog's
//! version stamp and as the hasher of maps looked up on every request ([`Fnv1a`]). Not
//! for anything derived from a secret (a key's id is an HMAC: `tenancy::config_key_id`).

/// The FNV-1a offset basis: the hash of no bytes.
pub(crate) const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// `h` extended by `bytes` (start from [`OFFSET`]).
pub(crate) fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a as a `HashMap` hasher, for maps looked up on every request whose keys are fixed
/// at start-up: a client choosing the key it looks up cannot lengthen anyone else's probes,
/// so SipHash's flooding defence buys nothing there and costs most of the lookup.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(OFFSET)
    }
}

impl std::hash::Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a(bytes, self.0);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_fnv1a_64() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b"", OFFSET), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a", OFFSET), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar", OFFSET), 0x8594_4171_f739_67e8);
        let mut h = Fnv1a::default();
        std::hash::Hasher::write(&mut h, b"foo");
        std::hash::Hasher::write(&mut h, b"bar");
        assert_eq!(std::hash::Hasher::finish(&h), fnv1a(b"foobar", OFFSET));
    }
}
