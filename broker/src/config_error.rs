//! [`ConfigError`]: the one shape of a configuration problem, shared by the gateway and the
//! agent: where the value came from, the key and the fix; and [`Problems`], the collector
//! the per-section checks gather them in, so that a user sees all of a file's problems in
//! one run.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

/// A configuration problem, naming where the value came from, the key and the fix; with
/// the further problems found in the same pass, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, flag or environment variable the value came from.
    pub origin: String,
    /// The key as users write it (`health.timeout_s`, `[mqtt] prefix`).
    pub key: String,
    /// What is wrong and what to do.
    pub problem: String,
    /// The other problems found, in the order of the keys (each with an empty `more`).
    pub more: Vec<ConfigError>,
}

impl ConfigError {
    /// One problem.
    pub fn new(
        origin: impl Into<String>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self {
            origin: origin.into(),
            key: key.into(),
            problem: problem.into(),
            more: Vec::new(),
        }
    }

    /// A problem of a file's syntax at byte `offset` of `text` (a parser's error span): the
    /// key is the line, or `(file)` when the parser gave no place.
    pub fn at_offset(
        origin: impl Into<String>,
        text: &str,
        offset: Option<usize>,
        problem: impl Into<String>,
    ) -> Self {
        let key = offset
            .and_then(|o| text.get(..o))
            .map(|before| format!("line {}", before.matches('\n').count() + 1))
            .unwrap_or_else(|| "(file)".to_owned());
        Self::new(origin, key, problem)
    }

    /// Every problem, the first one included.
    pub fn all(&self) -> impl Iterator<Item = &ConfigError> {
        std::iter::once(self).chain(&self.more)
    }
}

impl fmt::Display for ConfigError {
    /// One problem per line: `origin: key: problem`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.all().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}: {}", e.origin, e.key, e.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses the TOML config file at `path` into `T` (the gateway's and the agent's
/// raw file shape).
///
/// # Errors
///
/// When it cannot be read, or is not TOML of this shape (unknown keys included): naming the
/// line and `example`, the example file that shows every key.
pub fn read_toml<T: DeserializeOwned>(path: &Path, example: &str) -> Result<T, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            &origin,
            "(file)",
            format!("cannot read the config file: {e}; check --config"),
        )
    })?;
    toml::from_str(&text).map_err(|e| {
        ConfigError::at_offset(
            &origin,
            &text,
            e.span().map(|span| span.start),
            format!("{} (see {example} for every key)", e.message()),
        )
    })
}

/// The problems found so far by the per-section checks.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigError>);

impl Problems {
    /// The value of a check that passed; a failed one is kept and gives `None`.
    pub fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// Keeps a problem (and the further ones it carries).
    pub fn push(&mut self, e: ConfigError) {
        self.0.extend(e.all().cloned());
    }

    /// Whether no problem was found so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `value` when every check passed, else all problems as one error.
    ///
    /// # Errors
    ///
    /// Every problem kept, in order.
    pub fn finish<T>(self, value: Option<T>, origin: &str) -> Result<T, ConfigError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(self.fail(origin)),
        }
    }

    /// All problems as one error (a value is missing only where its check failed).
    pub fn fail(self, origin: &str) -> ConfigError {
        self.into_error()
            .unwrap_or_else(|| ConfigError::new(origin, "(file)", "incomplete configuration"))
    }

    /// All problems as one error (`None` when there were none).
    pub fn into_error(self) -> Option<ConfigError> {
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

    #[test]
    fn a_syntax_problem_names_its_line() {
        let e = ConfigError::at_offset("f.toml", "a = 1\nb = ?\n", Some(10), "bad value");
        assert_eq!(e.to_string(), "f.toml: line 2: bad value");
        assert_eq!(ConfigError::at_offset("f", "", None, "x").key, "(file)");
    }

    #[test]
    fn a_kept_list_is_flattened() {
        let mut inner = Problems::default();
        inner.push(ConfigError::new("f", "a", "1"));
        inner.push(ConfigError::new("f", "b", "2"));
        let mut outer = Problems::default();
        outer.push(inner.fail("f"));
        outer.push(ConfigError::new("f", "c", "3"));
        let e = outer.finish::<()>(None, "f").unwrap_err();
        let keys: Vec<&str> = e.all().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(e.more.iter().all(|e| e.more.is_empty()));
    }
}
