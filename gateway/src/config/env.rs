//! The environment the gateway reads (the original tool's variables), as a value handed to
//! the validation: the process environment at start-up ([`ProcessEnv`]), a fixed list in
//! tests.

/// Reads the environment variables the gateway understands.
pub trait Env {
    /// The value of a set, non-empty variable.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// Splits a comma-separated list, allowing spaces after commas.
pub(super) fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}
