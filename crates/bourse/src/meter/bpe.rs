//! An exact o200k_base token counter with a small memory footprint.
//!
//! [`Bpe::count`] returns what tiktoken's `encode_ordinary(text).len()` returns for the
//! o200k_base encoding (GPT-4o, GPT-4.1, GPT-5, the o-series): ordinary text, special tokens
//! never recognised. It counts without building the token list. The tests check it against
//! tiktoken-rs on generated and hand-picked text, and the vocabulary rank by rank.
//!
//! # How a text is counted
//!
//! 1. The pre-tokenizer splits the text into pieces with o200k_base's pattern (`PATTERN`:
//!    its doc gives the one place it differs from tiktoken's and why the pieces are the
//!    same).
//! 2. A piece that is itself a token counts 1. Any other piece is byte-pair merged: start
//!    from its single bytes (all 256 are tokens) and repeatedly merge the adjacent pair
//!    whose concatenation is the token of lowest rank, leftmost on ties, until no adjacent
//!    pair is a token; the piece counts as many tokens as parts remain. Pieces of up to
//!    `SIMPLE_MAX` bytes scan all pairs for each merge (quadratic, no allocation); longer
//!    ones keep the candidate pairs in a heap (O(n log n)) and make the same merges in the
//!    same order.
//!
//! # Memory
//!
//! The vocabulary is embedded in the binary (`o200k_base.bin`, 1.6 MB, read in place,
//! never copied). Loading it ([`Bpe::o200k`], once per process) puts two tables on the
//! heap: where each token's record starts in the file (4 bytes per token) and an
//! open-addressing hash table from token bytes to rank (a `u32` per slot, 2^19 slots, load
//! 0.38), 2.9 MB together, plus the compiled splitter regex (~1.5 MB). The regex keeps a
//! search cache for each thread that uses it (a few hundred KB each). Counting allocates
//! only for pieces longer than `SIMPLE_MAX` bytes: scratch for the heap merge, reused by
//! the call's later pieces and freed when it returns.
//!
//! # The data file, `o200k_base.bin`
//!
//! Written by `scripts/gen-o200k.py` from tiktoken's `o200k_base.tiktoken` (OpenAI's
//! vocabulary, MIT licensed; the copy shipped in the tiktoken-rs crate's `assets/`).
//! Integers are little-endian:
//!
//! ```text
//! magic  4 bytes  "BPE1"
//! count  u32      number of tokens, N (199 998: ranks 0..=199 997, no gaps)
//! N records in rank order (record r is the token of rank r):
//!     len    u8         token length in bytes, 1..=255 (the longest o200k token has 128)
//!     bytes  len bytes  the token
//! ```
//!
//! Loading checks the magic and count, that exactly N records fill the rest of the file,
//! that no token repeats and that every single byte is a token. A test loads the embedded
//! file, so a bad file fails the tests, not the gateway.

use regex::Regex;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;

/// The o200k_base vocabulary in the format described in the module documentation.
static DATA: &[u8] = include_bytes!("o200k_base.bin");

const MAGIC: &[u8; 4] = b"BPE1";
const HEADER_LEN: usize = 8;

/// Tokens in o200k_base, not counting its special tokens (`<|endoftext|>` = 199 999 and
/// `<|endofprompt|>` = 200 018, which ordinary text never produces).
const TOKENS: usize = 199_998;

/// A hash slot holds `tag << RANK_BITS | (rank + 1)`, 0 when empty. The tag is 14 more bits
/// of the key's hash, so a probe compares token bytes only when the tags agree.
const RANK_BITS: u32 = 18;
const RANK_MASK: u32 = (1 << RANK_BITS) - 1;
const TAG_BITS: u32 = 32 - RANK_BITS;
/// log2 of the slot count: 2^19 = 524 288 slots for 199 998 tokens.
const TABLE_BITS: u32 = 19;

/// A pair that is not a token, in the merge loops' rank arrays.
const NONE: u32 = u32::MAX;

/// The longest piece merged with the plain quadratic scan; longer ones use the heap.
const SIMPLE_MAX: usize = 128;

/// o200k_base's pre-tokenizer pattern (tiktoken's `O200K_BASE_PAT_STR`) with its last two
/// alternatives, `\s+(?!\S)|\s+`, replaced by `\s+`: the regex crate has no lookahead.
/// [`Bpe::count`] restores the lookahead's effect: a match of two or more whitespace
/// characters whose last is neither `\r` nor `\n`, followed by a non-whitespace character,
/// gives its last character back to the next piece.
///
/// Why the pieces are the same. Both engines are leftmost-first: at the current position p
/// they take the first alternative, in pattern order, that matches. The first five
/// alternatives are the same in both, so the pieces can only differ where all five fail at
/// p. There the text from p is a run of whitespace p..q without `\r` or `\n` (else
/// `\s*[\r\n]+` would have matched), and q is the end of the text or a non-whitespace
/// character. tiktoken's `\s+(?!\S)` greedily takes p..q, which stands if q is the end of
/// the text; otherwise it backs off to p..q-1, which stands if it is not empty (whitespace
/// follows it); if the run is one character long, it fails and `\s+` takes p..q. Our `\s+`
/// takes p..q, and the fix-up shortens it to p..q-1 in exactly the middle case. The fix-up
/// recognises these matches by their last character, whitespace other than `\r` and `\n`,
/// which no other alternative ends with: the letter, number and punctuation ones end in a
/// non-whitespace character or in `\r`, `\n` or `/`, and `\s*[\r\n]+` in `\r` or `\n`.
/// Both engines then search on from the piece's end.
///
/// `\s` is Unicode White_Space in the regex crate and in fancy-regex (which tiktoken-rs
/// uses), as `char::is_whitespace` is; the tests cover every White_Space character.
const PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

/// The o200k_base vocabulary and splitter, loaded once.
pub struct Bpe {
    /// The embedded file.
    data: &'static [u8],
    /// `offsets[rank]`: where the token's record (its length byte) starts in `data`.
    offsets: Vec<u32>,
    /// Open-addressing hash table, linear probing, `1 << TABLE_BITS` slots (see [`RANK_BITS`]).
    slots: Vec<u32>,
    /// The longest token's length: longer byte strings are not looked up.
    max_len: usize,
    splitter: Regex,
}

/// Scratch for [`Bpe::merge_heap`], kept across the pieces of one call.
#[derive(Default)]
struct Scratch {
    /// `next[i]`: start of the part after the part starting at byte `i` (the piece length
    /// for the last part).
    next: Vec<u32>,
    /// `prev[i]`: start of the part before the part starting at `i` (unused for `i` = 0).
    prev: Vec<u32>,
    /// `pair[i]`: rank of the token made of the part starting at `i` and the next one, or
    /// [`NONE`] (also for parts merged away, so their heap entries read as stale).
    pair: Vec<u32>,
    /// Candidate merges as `rank << 32 | start`, smallest first.
    heap: Vec<Reverse<u64>>,
}

/// FNV-1a (64-bit) of `bytes`, then a multiply-xorshift so the high bits, which pick the
/// slot and the tag, depend on every input bit (plain FNV-1a mixes its last byte only into
/// the lower bits).
#[inline]
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 32;
    h.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The hash's slot index and the tag bits of a slot holding the key.
#[inline]
fn slot_and_tag(bytes: &[u8]) -> (usize, u32) {
    let h = hash(bytes);
    let slot = (h >> (64 - TABLE_BITS)) as usize;
    let tag = ((h >> (64 - TABLE_BITS - TAG_BITS)) as u32) << RANK_BITS;
    (slot, tag)
}

impl Bpe {
    /// The o200k_base tokenizer; the first call loads it (~10 ms).
    pub fn o200k() -> &'static Bpe {
        static BPE: OnceLock<Bpe> = OnceLock::new();
        // Cannot fail: the data is embedded at build time and the pattern is a constant, and
        // the `loads` test loads exactly these.
        BPE.get_or_init(|| Bpe::load(DATA).expect("embedded o200k_base data and pattern are valid"))
    }

    fn load(data: &'static [u8]) -> Result<Bpe, String> {
        let rest = data.strip_prefix(MAGIC).ok_or("bad magic")?;
        let (count, _) = rest.split_first_chunk::<4>().ok_or("truncated header")?;
        let count = u32::from_le_bytes(*count) as usize;
        if count != TOKENS {
            return Err(format!("{count} tokens in the header, expected {TOKENS}"));
        }
        let mut offsets = Vec::with_capacity(count);
        let mut max_len = 0;
        let mut at = HEADER_LEN;
        while let Some(&len) = data.get(at) {
            let len = usize::from(len);
            if len == 0 || at + 1 + len > data.len() {
                return Err(format!("bad record at byte {at}"));
            }
            offsets.push(u32::try_from(at).map_err(|_| "file too large")?);
            max_len = max_len.max(len);
            at += 1 + len;
        }
        if offsets.len() != count {
            return Err(format!("{} records, expected {count}", offsets.len()));
        }
        let mut bpe = Bpe {
            data,
            offsets,
            slots: vec![0; 1 << TABLE_BITS],
            max_len,
            splitter: Regex::new(PATTERN).map_err(|e| e.to_string())?,
        };
        for rank in 0..count as u32 {
            bpe.insert(rank)?;
        }
        if let Some(b) = (0..=255u8).find(|&b| bpe.rank(&[b]) == NONE) {
            return Err(format!("byte {b:#04x} is not a token"));
        }
        Ok(bpe)
    }

    fn insert(&mut self, rank: u32) -> Result<(), String> {
        let token = self.token(rank);
        let (mut i, tag) = slot_and_tag(token);
        let mask = self.slots.len() - 1;
        loop {
            let s = self.slots[i];
            if s == 0 {
                self.slots[i] = tag | (rank + 1);
                return Ok(());
            }
            if s & !RANK_MASK == tag && self.token((s & RANK_MASK) - 1) == token {
                return Err(format!("rank {rank} repeats rank {}", (s & RANK_MASK) - 1));
            }
            i = (i + 1) & mask;
        }
    }

    /// The bytes of the token of rank `rank` (< [`TOKENS`]).
    #[inline]
    fn token(&self, rank: u32) -> &'static [u8] {
        let data = self.data;
        let at = self.offsets[rank as usize] as usize;
        &data[at + 1..at + 1 + usize::from(data[at])]
    }

    /// The rank of the token `bytes`, or [`NONE`].
    #[inline]
    fn rank(&self, bytes: &[u8]) -> u32 {
        if bytes.len() > self.max_len {
            return NONE;
        }
        let (mut i, tag) = slot_and_tag(bytes);
        let mask = self.slots.len() - 1;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return NONE;
            }
            if s & !RANK_MASK == tag && self.token((s & RANK_MASK) - 1) == bytes {
                return (s & RANK_MASK) - 1;
            }
            i = (i + 1) & mask;
        }
    }

    /// Tokens in `text`: tiktoken's `encode_ordinary(text).len()` for o200k_base.
    pub fn count(&self, text: &str) -> usize {
        let mut bounds = [0u32; SIMPLE_MAX + 1];
        let mut ranks = [0u32; SIMPLE_MAX];
        let mut scratch = Scratch::default();
        let mut total = 0;
        let mut at = 0;
        while let Some(m) = self.splitter.find_at(text, at) {
            let (start, mut end) = (m.start(), m.end());
            // The lookahead fix-up (see PATTERN). The match is never empty, so `last` exists;
            // it never shortens a match to nothing, so the loop always advances.
            if let (Some(last), Some(next)) = (text[start..end].chars().next_back(), text[end..].chars().next()) {
                if last.is_whitespace()
                    && last != '\r'
                    && last != '\n'
                    && end - last.len_utf8() > start
                    && !next.is_whitespace()
                {
                    end -= last.len_utf8();
                }
            }
            total += self.count_piece(&text.as_bytes()[start..end], &mut bounds, &mut ranks, &mut scratch);
            at = end;
        }
        total
    }

    /// Tokens in one piece of the split.
    fn count_piece(&self, piece: &[u8], bounds: &mut [u32], ranks: &mut [u32], scratch: &mut Scratch) -> usize {
        if piece.len() < 2 {
            // Every single byte is a token (checked when loading); pieces are never empty.
            piece.len()
        } else if self.rank(piece) != NONE {
            1
        } else if piece.len() <= SIMPLE_MAX {
            self.merge_simple(piece, bounds, ranks)
        } else if u32::try_from(piece.len()).is_ok() {
            self.merge_heap(piece, scratch)
        } else {
            // One piece of 4 GiB or more (a request body is refused long before): counted in
            // chunks, which may over-count by a token per seam.
            piece.chunks(1 << 31).map(|c| self.merge_heap(c, scratch)).sum()
        }
    }

    /// Rank of the token `piece[from..to]`, or [`NONE`].
    #[inline]
    fn pair_rank(&self, piece: &[u8], from: u32, to: u32) -> u32 {
        self.rank(&piece[from as usize..to as usize])
    }

    /// Parts left after byte-pair merging `piece` (at least 2 bytes), scanning all pairs for
    /// each merge. `bounds` needs `piece.len() + 1` entries and `ranks` `piece.len()`; on
    /// return `bounds[..=parts]` are the parts' boundaries.
    fn merge_simple(&self, piece: &[u8], bounds: &mut [u32], ranks: &mut [u32]) -> usize {
        let n = piece.len();
        // Part p is piece[bounds[p]..bounds[p + 1]]; ranks[p] is the rank of parts p and
        // p + 1 together.
        for (i, b) in bounds[..=n].iter_mut().enumerate() {
            *b = i as u32;
        }
        for (i, r) in ranks[..n - 1].iter_mut().enumerate() {
            *r = self.pair_rank(piece, i as u32, i as u32 + 2);
        }
        let mut parts = n;
        loop {
            let mut best = NONE;
            let mut at = 0;
            for (i, &r) in ranks[..parts - 1].iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == NONE {
                return parts;
            }
            // Merge parts `at` and `at + 1`: drop the boundary between them and the pair
            // rank of part `at + 1` with its successor (recomputed below as `ranks[at]`).
            bounds.copy_within(at + 2..=parts, at + 1);
            if at + 2 < parts - 1 {
                ranks.copy_within(at + 2..parts - 1, at + 1);
            }
            parts -= 1;
            if at + 1 < parts {
                ranks[at] = self.pair_rank(piece, bounds[at], bounds[at + 2]);
            }
            if at > 0 {
                ranks[at - 1] = self.pair_rank(piece, bounds[at - 1], bounds[at + 1]);
            }
        }
    }

    /// [`merge_simple`](Self::merge_simple)'s result in O(n log n), for long pieces (1 to
    /// 2^32 - 1 bytes). Parts form a doubly linked list over their start offsets, and a
    /// min-heap holds the candidate pairs as (rank, start): the smallest is exactly the pair
    /// the scan picks, lowest rank then leftmost. Entries are not removed when a merge
    /// changes a pair, they go stale: an entry is live iff its rank is still `pair[start]`.
    /// That test is exact because the pair starting at a given offset only ever grows to the
    /// right, so it never has the same bytes, hence the same rank, twice; a part merged
    /// away has `pair` = `NONE` for good.
    fn merge_heap(&self, piece: &[u8], s: &mut Scratch) -> usize {
        let n = piece.len();
        let n32 = n as u32;
        s.next.clear();
        s.next.extend(1..=n32);
        s.prev.clear();
        s.prev.extend((0..n32).map(|i| i.wrapping_sub(1)));
        s.pair.clear();
        s.pair.extend((0..n32 - 1).map(|i| self.pair_rank(piece, i, i + 2)));
        s.pair.push(NONE);
        s.heap.clear();
        s.heap.extend(
            s.pair
                .iter()
                .enumerate()
                .filter(|&(_, &r)| r != NONE)
                .map(|(i, &r)| Reverse(u64::from(r) << 32 | i as u64)),
        );
        let mut heap = BinaryHeap::from(std::mem::take(&mut s.heap));
        let mut parts = n;
        while let Some(Reverse(key)) = heap.pop() {
            let (rank, i) = ((key >> 32) as u32, key as u32);
            if s.pair[i as usize] != rank {
                continue;
            }
            // Part i absorbs its successor j.
            let j = s.next[i as usize];
            let k = s.next[j as usize];
            s.next[i as usize] = k;
            if k < n32 {
                s.prev[k as usize] = i;
            }
            s.pair[j as usize] = NONE;
            parts -= 1;
            let r = if k < n32 { self.pair_rank(piece, i, s.next[k as usize]) } else { NONE };
            s.pair[i as usize] = r;
            if r != NONE {
                heap.push(Reverse(u64::from(r) << 32 | u64::from(i)));
            }
            if i > 0 {
                let h = s.prev[i as usize];
                let r = self.pair_rank(piece, h, k);
                s.pair[h as usize] = r;
                if r != NONE {
                    heap.push(Reverse(u64::from(r) << 32 | u64::from(h)));
                }
            }
        }
        s.heap = heap.into_vec();
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use tiktoken_rs::CoreBPE;

    fn tiktoken() -> &'static CoreBPE {
        static T: OnceLock<CoreBPE> = OnceLock::new();
        T.get_or_init(|| tiktoken_rs::o200k_base().unwrap())
    }

    fn reference(text: &str) -> usize {
        tiktoken().encode_ordinary(text).len()
    }

    /// Parts of the heap merge's result, as boundaries like `merge_simple` leaves them.
    fn heap_bounds(bpe: &Bpe, piece: &[u8]) -> Vec<u32> {
        let mut s = Scratch::default();
        let parts = bpe.merge_heap(piece, &mut s);
        let mut bounds = vec![0];
        let mut at = 0;
        while (at as usize) < piece.len() {
            at = s.next[at as usize];
            bounds.push(at);
        }
        assert_eq!(bounds.len(), parts + 1);
        bounds
    }

    fn simple_bounds(bpe: &Bpe, piece: &[u8]) -> Vec<u32> {
        let mut bounds = vec![0; piece.len() + 1];
        let mut ranks = vec![0; piece.len()];
        let parts = bpe.merge_simple(piece, &mut bounds, &mut ranks);
        bounds.truncate(parts + 1);
        bounds
    }

    fn assert_same_merges(piece: &[u8]) {
        let bpe = Bpe::o200k();
        assert_eq!(simple_bounds(bpe, piece), heap_bounds(bpe, piece), "piece {:?}", String::from_utf8_lossy(piece));
    }

    const CONTRACTIONS: &[&str] = &[
        "'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'rE", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'Ll", "'d", "'D",
        "'\u{17f}", "'x",
    ];
    const WHITESPACE: &[&str] = &[
        " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "\u{a0}", "\u{2003}", "\u{3000}", "\u{85}", "\u{2028}", "\u{b}",
        "\u{c}", "\u{1680}", "\u{202f}",
    ];
    const EMOJI: &[&str] = &["😀", "🎉", "👍🏽", "❤️", "❤️‍🔥", "👨‍👩‍👧", "1️⃣", "🇫🇷", "\u{200b}", "\u{feff}"];
    const RUN_CHARS: &[char] =
        &[' ', '-', '=', 'a', 'A', '9', '\n', '\t', '.', '漢', 'é', '\u{a0}', '😀', '/', '#', '\''];

    /// One fragment of generated text: each arm aims at a part of the pattern or the merge.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            5 => "[A-Za-z]{1,10}",
            3 => "[ ]{1,4}",
            3 => prop::collection::vec(prop::sample::select(WHITESPACE), 1..6).prop_map(|v| v.concat()),
            2 => "[0-9]{1,7}",
            2 => "[!-/:-@\\[-`{-~]{1,4}",
            2 => prop::sample::select(CONTRACTIONS).prop_map(String::from),
            1 => "[\u{4e00}-\u{9fff}\u{3040}-\u{30ff}]{1,6}",
            1 => "[àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßÀÉÎÖÜŒœ]{1,4}",
            1 => "[a-zA-Z][\u{300}-\u{36f}]{1,3}",
            1 => prop::sample::select(EMOJI).prop_map(String::from),
            1 => "[\u{600}-\u{6ff}]{1,6}",
            1 => "[\u{400}-\u{4ff}]{1,8}",
            1 => "[ǅǈǋʰʱªº²³¼٣३３ⅫⅩ]{1,3}",
            1 => (prop::sample::select(RUN_CHARS), 20..400usize).prop_map(|(c, n)| c.to_string().repeat(n)),
            1 => any::<char>().prop_map(String::from),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(fragment(), 0..24).prop_map(|v| v.concat())
    }

    #[test]
    fn loads() {
        let bpe = Bpe::load(DATA).unwrap();
        assert_eq!(bpe.offsets.len(), TOKENS);
        assert_eq!(bpe.max_len, 128);
    }

    #[test]
    fn refuses_bad_data() {
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut data = DATA.to_vec();
            f(&mut data);
            Bpe::load(Vec::leak(data)).err().unwrap_or_default()
        };
        assert_eq!(with(&|d| d[0] = b'X'), "bad magic");
        assert_eq!(with(&|d| d.truncate(6)), "truncated header");
        assert!(with(&|d| d[4] += 1).contains("tokens in the header"));
        assert!(with(&|d| d.truncate(d.len() - 1)).starts_with("bad record"));
        assert!(with(&|d| d.extend([1, b'a'])).contains("records, expected"));
        // Rank 1 ('"') spelled as rank 0 ('!').
        assert!(with(&|d| d[HEADER_LEN + 3] = b'!').starts_with("rank 1 repeats rank 0"));
    }

    #[test]
    fn every_rank_round_trips() {
        let bpe = Bpe::o200k();
        let t = tiktoken();
        for rank in 0..TOKENS as u32 {
            let token = bpe.token(rank);
            assert_eq!(token, t.decode_bytes(&[rank]).unwrap(), "rank {rank}");
            assert_eq!(bpe.rank(token), rank);
        }
        assert_eq!(bpe.rank(b""), NONE);
        assert_eq!(bpe.rank(b"Hello, world, this is not one token"), NONE);
    }

    #[test]
    fn fixed_cases() {
        let bpe = Bpe::o200k();
        let code = "fn main() {\n    let x = 1;\n\tif x > 0 {\n        println!(\"{x}\");\n    }\n}\n";
        let cases: &[&str] =
            &["", " ", "   x", "a\n\n  b", "Hello world", code, "x", "\n", "  ", "\r\n", "hello ", "hello  ", "a  "];
        for case in cases {
            assert_eq!(bpe.count(case), reference(case), "{case:?}");
        }
        assert_eq!(bpe.count(""), 0);
        assert_eq!(bpe.count("Hello world"), 2);
    }

    /// Shapes that exercise the lookahead fix-up, the contractions, Unicode whitespace and
    /// the heap merge, checked directly rather than left to the generator's luck.
    #[test]
    fn tricky_cases() {
        let bpe = Bpe::o200k();
        let long = |s: &str, n: usize| s.repeat(n);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let base64: String =
            (0..20_000u32).map(|i| alphabet[(i.wrapping_mul(2_654_435_761) >> 26) as usize] as char).collect();
        let cases = [
            "   x".to_string(),
            "x  \u{a0}y".into(),
            "x \u{a0}".into(),
            "\u{3000}\u{3000}漢字".into(),
            "a\u{2003}\u{2003}b".into(),
            "x\u{85}\u{85}y".into(),
            "I'LL DO IT'S DONE, don't you'Re we'VE".into(),
            "don'\u{17f} IT'\u{17f}".into(),
            "'s".into(),
            " 's".into(),
            "  \n  x".into(),
            "\r\n\r\n  \r\n".into(),
            "a\r\n b".into(),
            "a \r\n\tb".into(),
            "foo  ".into(),
            "foo \t".into(),
            " \t\n".into(),
            "\t\tx".into(),
            "x\n\n\ty".into(),
            "x\u{b}\u{c}y".into(),
            "1234567 89 ١٢٣٤ ３４５ ²³".into(),
            "ǅemal ʰello ªb".into(),
            "e\u{301}\u{301}\u{301}x".into(),
            "👨‍👩‍👧 1️⃣ 🇫🇷 ❤️‍🔥".into(),
            "https://example.com/a/b?c=d&e=f\n//\n".into(),
            "...\n\n\n///\r\n".into(),
            long("a", 1000),
            long("ab", 3000),
            long(" ", 1000) + "x",
            long(" ", 1000),
            long("\u{a0}", 300) + "y",
            long("-", 5000),
            long("=", 129),
            long("=", 128),
            long("=", 127),
            long("1234567", 100),
            long("漢字かな", 500),
            long("é", 400),
            long("\n", 500) + "x",
            long(" \n", 300),
            base64.clone(),
            format!("data:image/png;base64,{base64}=="),
        ];
        for case in &cases {
            assert_eq!(bpe.count(case), reference(case), "{:?}", &case[..case.len().min(80)]);
        }
    }

    #[test]
    fn counts_from_many_threads_at_once() {
        let text = format!("{} {}", "Hello, world! Let's count: 12345.\n\t".repeat(200), "=".repeat(3000));
        let expected = Bpe::o200k().count(&text);
        assert_eq!(expected, reference(&text));
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..20 {
                        assert_eq!(Bpe::o200k().count(&text), expected);
                    }
                });
            }
        });
    }

    /// Every code point below U+3100 (among them every White_Space character) and every 61st
    /// above, where the pattern's classes decide the split: next to letters, in runs, before
    /// a contraction, after a newline.
    #[test]
    fn classes_agree_on_code_points() {
        let bpe = Bpe::o200k();
        let chars = (0..0x3100).chain((0x3100..=0x10ffff).step_by(61)).filter_map(char::from_u32);
        for c in chars {
            let s = format!("a{c}{c} b {c}{c}'S x\n{c}1");
            assert_eq!(bpe.count(&s), reference(&s), "{c:?} (U+{:04X})", c as u32);
        }
    }

    /// The generator does produce the shapes the differential test is for.
    #[test]
    fn generator_covers_tricky_shapes() {
        let mut runner = TestRunner::deterministic();
        let strategy = text();
        let ws_then_text = regex::Regex::new(r"[ \t\u{a0}\u{2003}\u{3000}]{2,}[^\s]").unwrap();
        let upper_contraction = regex::Regex::new(r"[A-Z]'(S|T|RE|VE|M|LL|D)").unwrap();
        let (mut crlf, mut ws, mut contraction, mut unicode_ws, mut heap) = (0, 0, 0, 0, 0);
        for _ in 0..2000 {
            let s = strategy.new_tree(&mut runner).unwrap().current();
            crlf += s.contains("\r\n") as u32;
            ws += ws_then_text.is_match(&s) as u32;
            contraction += upper_contraction.is_match(&s) as u32;
            unicode_ws += s.chars().any(|c| c.is_whitespace() && !c.is_ascii()) as u32;
            heap += Bpe::o200k().splitter.find_iter(&s).any(|m| m.len() > SIMPLE_MAX) as u32;
        }
        for (name, n) in [
            ("\\r\\n", crlf),
            ("whitespace run before text", ws),
            ("upper-case contraction", contraction),
            ("Unicode whitespace", unicode_ws),
            ("piece over SIMPLE_MAX bytes", heap),
        ] {
            assert!(n >= 50, "only {n} of 2000 generated texts have a {name}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn counts_like_tiktoken(s in text()) {
            prop_assert_eq!(Bpe::o200k().count(&s), reference(&s));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// No input panics, and any string still counts as tiktoken counts it.
        #[test]
        fn any_string(s in any::<String>()) {
            prop_assert_eq!(Bpe::o200k().count(&s), reference(&s));
        }

        #[test]
        fn any_lossy_bytes(b in prop::collection::vec(any::<u8>(), 0..300)) {
            let s = String::from_utf8_lossy(&b);
            prop_assert_eq!(Bpe::o200k().count(&s), reference(&s));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn heap_merge_equals_simple_on_small_alphabets(
            piece in prop::collection::vec(prop::sample::select(b"ab -=e\n".to_vec()), 2..800)
        ) {
            assert_same_merges(&piece);
        }

        #[test]
        fn heap_merge_equals_simple_on_random_bytes(piece in prop::collection::vec(any::<u8>(), 2..600)) {
            assert_same_merges(&piece);
        }

        #[test]
        fn heap_merge_equals_simple_on_text(s in text()) {
            if s.len() >= 2 {
                assert_same_merges(s.as_bytes());
            }
        }
    }

    #[test]
    fn heap_merge_equals_simple_on_long_pieces() {
        let prose = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. ";
        let pieces = [
            "-".repeat(6000),
            "ab".repeat(3000),
            " ".repeat(4000),
            prose.repeat(60),
            prose.replace(' ', "").repeat(60),
            "漢字かなカナ".repeat(300),
            (0..8000u32).map(|i| (b'!' + (i.wrapping_mul(2_654_435_761) >> 26) as u8 % 90) as char).collect(),
        ];
        for piece in &pieces {
            assert_same_merges(piece.as_bytes());
        }
    }
}
