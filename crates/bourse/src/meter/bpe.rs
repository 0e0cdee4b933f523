//! The o200k_base tokenizer behind the one call the estimator makes (tiktoken-rs's CoreBPE,
//! loaded on first use).
use std::sync::OnceLock;

pub struct Bpe(tiktoken_rs::CoreBPE);

impl Bpe {
    pub fn o200k() -> &'static Bpe {
        static B: OnceLock<Bpe> = OnceLock::new();
        // The vocabulary ships inside the crate; it fails to load only if the crate is broken.
        B.get_or_init(|| Bpe(tiktoken_rs::o200k_base().expect("tiktoken-rs's o200k_base loads")))
    }

    pub fn count(&self, text: &str) -> usize {
        self.0.encode_ordinary(text).len()
    }
}
