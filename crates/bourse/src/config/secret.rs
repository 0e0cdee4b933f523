//! Secrets by reference: config names where a key lives (`env:NAME`, `file:PATH`),
//! never the key itself, and a resolved [`Secret`] never prints its value, nor lets text from
//! elsewhere carry it ([`Secret::redact`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// A resolved secret. `Debug` and `Display` print `***` so a key cannot reach a log line
/// by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every run of at least [`REDACT_RUN`] characters of this secret in it
    /// (the whole secret, or a vendor's quotation of part of it) replaced by `***`; borrowed
    /// when there is none. For text the gateway relays from elsewhere, such as an upstream's
    /// error message, which may quote the key the upstream was sent.
    ///
    /// Runs are found through the secret's windows of [`REDACT_RUN`] bytes, so the cost is
    /// one set lookup per byte of `text` plus the length of each run found, whatever the
    /// secret's length. Secrets are ASCII (they travel in headers), so a run never starts or
    /// ends inside a character of `text`.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let (secret, bytes) = (self.0.as_bytes(), text.as_bytes());
        if secret.len() < REDACT_RUN || bytes.len() < REDACT_RUN || !self.0.is_ascii() {
            return Cow::Borrowed(text);
        }
        let windows: HashSet<&[u8]> = secret.windows(REDACT_RUN).collect();
        let mut out: Option<String> = None;
        // `kept`: the end of what has been copied to `out` (or scanned clean).
        let (mut i, mut kept) = (0, 0);
        while i + REDACT_RUN <= bytes.len() {
            if !windows.contains(&bytes[i..i + REDACT_RUN]) {
                i += 1;
                continue;
            }
            // The longest run of the secret starting here, wherever it is in the secret.
            let run = (0..=secret.len() - REDACT_RUN)
                .filter(|&j| secret[j..j + REDACT_RUN] == bytes[i..i + REDACT_RUN])
                .map(|j| secret[j..].iter().zip(&bytes[i..]).take_while(|(a, b)| a == b).count())
                .max()
                .unwrap_or(REDACT_RUN);
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[kept..i]);
            o.push_str("***");
            i += run;
            kept = i;
        }
        match out {
            None => Cow::Borrowed(text),
            Some(mut o) => {
                o.push_str(&text[kept..]);
                Cow::Owned(o)
            }
        }
    }
}

/// The shortest run of a secret's characters [`Secret::redact`] removes: long enough that
/// ordinary words in a message do not match a random key by chance, short enough that a
/// vendor's partial quotation (`sk-proj-...wXyZ1234`) is caught once it shows eight.
pub const REDACT_RUN: usize = 8;

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Resolve `env:NAME` or `file:PATH`. The error says what was wrong, without the value.
pub fn resolve(reference: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
    if let Some(name) = reference.strip_prefix("env:") {
        match env(name) {
            Some(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_string())),
            Some(_) => Err(format!("environment variable {name} is empty")),
            None => Err(format!("environment variable {name} is not set")),
        }
    } else if let Some(path) = reference.strip_prefix("file:") {
        match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_string())),
            Ok(_) => Err(format!("file {path} is empty")),
            Err(e) => Err(format!("cannot read file {path}: {e}")),
        }
    } else {
        Err("secrets must be references (\"env:NAME\" or \"file:PATH\"); literal keys are not accepted".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("sk-live-123".into());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
    }

    #[test]
    fn literal_keys_are_refused_without_echoing_them() {
        let err = resolve("sk-live-123", &|_| None).unwrap_err();
        assert!(err.contains("env:NAME") && !err.contains("sk-live"), "{err}");
    }

    #[test]
    fn redact_removes_the_secret_and_any_eight_characters_of_it() {
        let s = Secret::new("sk-PROVIDER-SECRET-1234567890".into());
        let cases = [
            ("Incorrect API key provided: sk-PROVIDER-SECRET-1234567890.", "Incorrect API key provided: ***."),
            (
                "Bearer sk-PROVIDER-SECRET-1234567890 and again sk-PROVIDER-SECRET-1234567890",
                "Bearer *** and again ***",
            ),
            ("key sk-PROV****7890 ends in ...1234567890", "key sk-PROV****7890 ends in ...***"),
            ("a tail: ECRET-12 and a head sk-PROVIDER", "a tail: *** and a head ***"),
            ("seven of it, CRET-12, stays", "seven of it, CRET-12, stays"),
            ("ünïcødé around sk-PROVIDER-SECRET-1234567890 模型", "ünïcødé around *** 模型"),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(s.redact(text), want, "{text}");
        }
        assert!(matches!(s.redact("nothing to see here"), Cow::Borrowed(_)));
        // A secret shorter than a run cannot be told from ordinary text: left alone.
        assert_eq!(Secret::new("short".into()).redact("a short key"), "a short key");
    }

    proptest::proptest! {
        /// Whatever surrounds the secret's pieces, no run of eight of its characters is left,
        /// and text that shares no such run with it comes back unchanged.
        #[test]
        fn redact_leaves_no_run_of_the_secret(
            secret in "[a-zA-Z0-9_-]{8,40}",
            pieces in proptest::collection::vec(("[ -~]{0,12}", 0usize..40, 0usize..40), 0..6),
            tail in "\\PC{0,12}",
        ) {
            let s = Secret::new(secret.clone());
            let mut text = String::new();
            for (filler, a, b) in &pieces {
                text.push_str(filler);
                let (a, b) = ((*a).min(secret.len()), (*b).min(secret.len()));
                text.push_str(&secret[a.min(b)..a.max(b)]);
            }
            text.push_str(&tail);
            let out = s.redact(&text);
            let runs: Vec<&[u8]> = secret.as_bytes().windows(REDACT_RUN).collect();
            proptest::prop_assert!(!runs.iter().any(|r| out.as_bytes().windows(REDACT_RUN).any(|w| w == *r)), "{text:?} -> {out:?}");
            if !runs.iter().any(|r| text.as_bytes().windows(REDACT_RUN).any(|w| w == *r)) {
                proptest::prop_assert_eq!(out.as_ref(), text.as_str());
            }
        }
    }

    #[test]
    fn env_and_file_references() {
        let env = |n: &str| (n == "K").then(|| " v1 ".to_string());
        assert_eq!(resolve("env:K", &env).unwrap().expose(), "v1");
        assert!(resolve("env:MISSING", &env).unwrap_err().contains("MISSING is not set"));
        let dir = std::env::temp_dir().join(format!("bourse-secret-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        assert_eq!(resolve(&format!("file:{}", dir.display()), &env).unwrap().expose(), "from-file");
        std::fs::remove_file(&dir).unwrap();
    }
}
