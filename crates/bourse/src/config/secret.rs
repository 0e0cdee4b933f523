//! Secrets by reference: config names where a key lives (`env:NAME`, `file:PATH`),
//! never the key itself, and a resolved [`Secret`] never prints its value.

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
}

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
