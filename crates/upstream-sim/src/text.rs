//! Deterministic fake model output shared by every dialect: answer and
//! reasoning "tokens", prompt-size estimates and embedding vectors.
//!
//! Everything here is a pure function of its inputs so that two runs (or two
//! simulator instances) produce byte-identical responses, which keeps test
//! assertions and benchmark payload sizes stable.

/// Answer vocabulary. Each word carries its leading space, like the
/// byte-pair tokens of real models, so concatenated tokens read as text.
const ANSWER_WORDS: [&str; 24] = [
    " lorem",
    " ipsum",
    " dolor",
    " sit",
    " amet",
    " consectetur",
    " adipiscing",
    " elit",
    " sed",
    " do",
    " eiusmod",
    " tempor",
    " incididunt",
    " ut",
    " labore",
    " et",
    " dolore",
    " magna",
    " aliqua",
    " enim",
    " ad",
    " minim",
    " veniam",
    " quis",
];

/// Reasoning vocabulary, distinct from the answer so tests can tell
/// `reasoning_content` and `content` apart.
const REASONING_WORDS: [&str; 12] = [
    " considering",
    " the",
    " question",
    " carefully",
    " weighing",
    " options",
    " checking",
    " facts",
    " then",
    " drafting",
    " an",
    " answer",
];

/// MiniMax-style thinking block, as the pieces in which it is streamed.
pub(crate) const THINK_PIECES: [&str; 3] = ["<think>", "some reasoning", "</think>\n\n"];

/// Strips the leading space from the first token so text does not start with one.
fn nth(words: &'static [&'static str], i: usize) -> &'static str {
    let word = words[i % words.len()];
    if i == 0 {
        &word[1..]
    } else {
        word
    }
}

/// The `i`-th token of an answer.
pub(crate) fn answer_token(i: usize) -> &'static str {
    nth(&ANSWER_WORDS, i)
}

/// The `i`-th token of reasoning content.
pub(crate) fn reasoning_token(i: usize) -> &'static str {
    nth(&REASONING_WORDS, i)
}

/// Prompt tokens for `chars` characters of input: a quarter, rounded up, at
/// least one (a common rule of thumb for English text).
pub(crate) fn estimate_tokens(chars: u64) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX).max(1)
}

/// FNV-1a offset basis; start value for [`fnv1a`].
pub(crate) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Folds `bytes` into an FNV-1a hash. Cheap and dependency-free; it only seeds
/// embedding vectors, so quality does not matter beyond "different input,
/// different vector".
pub(crate) fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A unit-length vector of `dims` values derived from `seed` (xorshift64*).
pub(crate) fn embedding(seed: u64, dims: usize) -> Vec<f32> {
    // xorshift must not start at zero or it stays there.
    let mut state = seed | 1;
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40; // 24 random bits
            (r as f32 / (1u64 << 23) as f32) - 1.0 // in [-1, 1)
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

/// Splits `s` into `parts` pieces of nearly equal length on char boundaries
/// (fewer if `s` has fewer chars), the way a model streams tool arguments.
pub(crate) fn split_even(s: &str, parts: usize) -> Vec<&str> {
    let chars = s.chars().count();
    let parts = parts.clamp(1, chars.max(1));
    let mut out = Vec::with_capacity(parts);
    let mut rest = s;
    let mut remaining_chars = chars;
    for left in (1..=parts).rev() {
        let take = remaining_chars.div_ceil(left);
        let cut = rest.char_indices().nth(take).map_or(rest.len(), |(at, _)| at);
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
        remaining_chars -= take;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_text(n: usize) -> String {
        (0..n).map(answer_token).collect()
    }

    #[test]
    fn tokens_read_as_text() {
        assert_eq!(answer_text(3), "lorem ipsum dolor");
        assert_eq!(answer_text(0), "");
        assert_eq!(reasoning_token(0), "considering");
    }

    #[test]
    fn estimates() {
        assert_eq!(estimate_tokens(0), 1);
        assert_eq!(estimate_tokens(4), 1);
        assert_eq!(estimate_tokens(5), 2);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding(fnv1a(FNV_START, b"hello"), 16);
        assert_eq!(a, embedding(fnv1a(FNV_START, b"hello"), 16));
        assert_ne!(a, embedding(fnv1a(FNV_START, b"world"), 16));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn split_even_covers_input() {
        let s = r#"{"location":"Paris"}"#;
        for n in 1..30 {
            let parts = split_even(s, n);
            assert_eq!(parts.concat(), s);
            assert_eq!(parts.len(), n.min(s.len()));
            assert!(parts.iter().all(|p| !p.is_empty()));
        }
        assert_eq!(split_even("héllo", 5), ["h", "é", "l", "l", "o"]);
        assert_eq!(split_even("", 3), [""]);
    }
}
