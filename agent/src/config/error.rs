//! [`ConfigError`]: every problem of a configuration, each naming where the value came
//! from, the key and the fix; and the collector the validation gathers them in, so that a
//! user sees all of a file's problems in one run.

use std::fmt;

/// A configuration problem, naming where the value came from, the key and the fix; with
/// the further problems found in the same pass, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, flag or environment variable the value came from.
    pub origin: String,
    /// The key as users write it in the file (`health.timeout_s`).
    pub key: String,
    /// What is wrong and what to do.
    pub problem: String,
    /// The other problems found, in the order of the keys (each with an empty `more`).
    pub more: Vec<ConfigError>,
}

impl ConfigError {
    pub(super) fn new(origin: impl Into<String>, key: &str, problem: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            key: key.to_owned(),
            problem: problem.into(),
            more: Vec::new(),
        }
    }

    /// Every problem, the first one included.
    pub fn all(&self) -> impl Iterator<Item = &ConfigError> {
        std::iter::once(self).chain(&self.more)
    }
}

impl fmt::Display for ConfigError {
    /// One problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.key, self.problem)?;
        for e in &self.more {
            write!(f, "\n{}: {}: {}", e.origin, e.key, e.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The problems found so far by the per-section checks.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<ConfigError>);

impl Problems {
    /// The value of a check that passed; a failed one is kept and gives `None`.
    pub(super) fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.0.extend(e.all().cloned())).ok()
    }

    /// `value` when every check passed, else all problems as one error.
    pub(super) fn finish<T>(self, value: Option<T>, origin: &str) -> Result<T, ConfigError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(self.fail(origin)),
        }
    }

    /// All problems as one error (a value is missing only where its check failed).
    pub(super) fn fail(self, origin: &str) -> ConfigError {
        self.into_error()
            .unwrap_or_else(|| ConfigError::new(origin, "(file)", "incomplete configuration"))
    }

    /// All problems as one error (`None` when there were none).
    pub(super) fn into_error(self) -> Option<ConfigError> {
        let mut all = self.0.into_iter().map(|mut e| {
            e.more.clear();
            e
        });
        let mut first = all.next()?;
        first.more = all.collect();
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_kept_in_order_and_shown_one_per_line() {
        let mut p = Problems::default();
        assert_eq!(p.check(Ok::<_, ConfigError>(1)), Some(1));
        assert_eq!(
            p.check::<u8>(Err(ConfigError::new("a.toml", "env", "bad"))),
            None
        );
        assert_eq!(
            p.check::<u8>(Err(ConfigError::new("--repo", "repo", "worse"))),
            None
        );
        let e = p.into_error().unwrap();
        assert_eq!((e.key.as_str(), e.more.len()), ("env", 1));
        assert_eq!(e.to_string(), "a.toml: env: bad\n--repo: repo: worse");
        assert!(Problems::default().into_error().is_none());
    }
}
