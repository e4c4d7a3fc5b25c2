//! The one error type of the library and its mapping to the documented exit codes.
//!
//! Every message names the file it is about and what is wrong with it, in lowercase and on
//! one line. No message ever contains a secret value: parsers report line and column
//! numbers, never the text they choke on, and integrity errors name key paths (which are
//! stored in clear anyway), never values.

use std::path::PathBuf;

/// Everything that can go wrong while reading, checking, decrypting or writing a config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input from the user: a missing or conflicting option, an invalid env name, two
    /// candidate files for one env.
    #[error("{0}")]
    Usage(String),

    /// A key that is not 32 bytes of standard base64.
    #[error("invalid key{}: {reason}", origin_suffix(.origin))]
    InvalidKey {
        /// Where the key came from (`--key`, a file name, `CONFIG_KEY`, …), if known.
        origin: Option<String>,
        /// What is wrong with it.
        reason: String,
    },

    /// The file was encrypted under another key than the one given.
    #[error("{file}: wrong key: the file was encrypted with key id {file_key_id}, the key given has id {key_id}")]
    WrongKey {
        /// The file, as the user named it.
        file: String,
        /// The key id recorded in the file's metadata.
        file_key_id: String,
        /// The id of the key that was tried.
        key_id: String,
    },

    /// None of the keys available has the id the file was encrypted with (for commands
    /// that pick a key by id: `textconv`, `merge-driver`).
    #[error("{file}: no key with id {file_key_id} is available: set CONFIG_KEY, --key-file, or ENVS and KEYS")]
    NoKey {
        /// The file, as the user named it.
        file: String,
        /// The key id recorded in the file's metadata.
        file_key_id: String,
    },

    /// The file was changed outside the tool: a tampered, swapped, added or dropped value,
    /// or a broken MAC.
    #[error("{file}: integrity check failed: {reason}")]
    Integrity {
        /// The file, as the user named it.
        file: String,
        /// What failed, naming key paths but never values.
        reason: String,
    },

    /// The file cannot be parsed: truncated, not JSON or dotenv, missing metadata.
    #[error("{file}: {reason}")]
    Malformed {
        /// The file, as the user named it.
        file: String,
        /// What is wrong, with a line number where there is one.
        reason: String,
    },

    /// The metadata names a format version this build does not read.
    #[error(
        "{file}: unknown format version {found} (this orcastrate-crypt reads version {supported})"
    )]
    UnknownVersion {
        /// The file, as the user named it.
        file: String,
        /// The version found in the metadata, as written.
        found: String,
        /// The version this build reads and writes.
        supported: u32,
    },

    /// A three-way merge found keys that both sides changed differently.
    #[error("{file}: merge conflict: both sides changed {} differently; the file was left untouched, resolve it with `orcastrate-crypt edit`", list_paths(.paths))]
    Conflict {
        /// The file being merged.
        file: String,
        /// The key paths in conflict, in document order.
        paths: Vec<String>,
    },

    /// Reading, writing or renaming a file failed, or a program could not be run.
    ///
    /// The operating system's error is part of the message (callers such as the agent print
    /// errors with `{}`), so it is deliberately not also exposed as `source()`.
    #[error("cannot {action} {}: {error}", .path.display())]
    Io {
        /// What was being done (`read`, `write`, `rename into place`, …).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
}

/// The exit codes of `orcastrate-crypt`, decided in one place (README, "Exit codes"); the
/// discriminant is the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// A merge conflict (what git expects from a merge driver that did not merge), or an
    /// aborted `edit`.
    Conflict = 1,
    /// Bad arguments, an invalid key text or env name, ambiguous files.
    Usage = 2,
    /// The file was encrypted under another key, or no key has its id.
    WrongKey = 3,
    /// A tampered, swapped, added or dropped value.
    Integrity = 4,
    /// A malformed or truncated file, or an unknown format version.
    Malformed = 5,
    /// A file missing or unreadable, a failed write, a program that could not run.
    Io = 6,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<&Error> for Exit {
    fn from(e: &Error) -> Self {
        match e {
            Error::Conflict { .. } => Self::Conflict,
            Error::Usage(_) | Error::InvalidKey { .. } => Self::Usage,
            Error::WrongKey { .. } | Error::NoKey { .. } => Self::WrongKey,
            Error::Integrity { .. } => Self::Integrity,
            Error::Malformed { .. } | Error::UnknownVersion { .. } => Self::Malformed,
            Error::Io { .. } => Self::Io,
        }
    }
}

impl Error {
    /// The process exit code documented for this error in the crate's README, as [`Exit`]
    /// maps it.
    pub fn exit_code(&self) -> u8 {
        Exit::from(self).code()
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        error: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            error,
        }
    }

    pub(crate) fn malformed(file: &str, reason: impl Into<String>) -> Self {
        Error::Malformed {
            file: file.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn integrity(file: &str, reason: impl Into<String>) -> Self {
        Error::Integrity {
            file: file.to_owned(),
            reason: reason.into(),
        }
    }
}

fn origin_suffix(origin: &Option<String>) -> String {
    origin
        .as_ref()
        .map(|o| format!(" from {o}"))
        .unwrap_or_default()
}

fn list_paths(paths: &[String]) -> String {
    paths.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_match_the_design() {
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        assert_eq!(Error::malformed("f", "x").exit_code(), 5);
        assert_eq!(Error::integrity("f", "x").exit_code(), 4);
        let io = Error::io("read", "f", std::io::Error::other("x"));
        assert_eq!(io.exit_code(), 6);
        assert_eq!(io.to_string(), "cannot read f: x");
    }
}
