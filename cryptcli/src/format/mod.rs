//! The two file formats, JSON and dotenv, and how a path picks between them.
//!
//! The format is always chosen by the file name, never by sniffing the content, so that a
//! truncated or tampered file is reported as such instead of being read as the other format.

pub(crate) mod dotenv;
pub(crate) mod json;

use std::fmt;
use std::path::Path;

use crate::Error;

/// A config file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// A JSON object, the original tool's format.
    Json,
    /// `KEY=value` lines as read by Node's `dotenv`, comments and blank lines kept.
    Dotenv,
}

impl Format {
    /// Picks the format from a file name: `*.json` is JSON; `*.env`, `.env` and `.env.*`
    /// are dotenv. Git's temporary files for `textconv` keep the original name as a suffix,
    /// so they work too.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for any other name.
    pub fn from_path(path: &Path) -> Result<Format, Error> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".json") {
            Ok(Format::Json)
        } else if name.ends_with(".env") || name == ".env" || name.starts_with(".env.") {
            Ok(Format::Dotenv)
        } else {
            Err(Error::Usage(format!(
                "cannot tell the format of {} from its name: use a .json or .env extension",
                path.display()
            )))
        }
    }

    /// The extension used for default paths: `json` or `env`.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Dotenv => "env",
        }
    }

    /// The name recorded in the MAC input: `json` or `dotenv`.
    pub(crate) fn mac_name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Dotenv => "dotenv",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width and alignment flags work in tables.
        f.pad(self.mac_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_format_by_name() {
        let f = |p: &str| Format::from_path(Path::new(p));
        assert_eq!(f("config/encrypted_prod.json").unwrap(), Format::Json);
        assert_eq!(f("config/decrypted_prod.env").unwrap(), Format::Dotenv);
        assert_eq!(f(".env").unwrap(), Format::Dotenv);
        assert_eq!(f(".env.local").unwrap(), Format::Dotenv);
        assert_eq!(f("/tmp/XyZ12_encrypted_prod.json").unwrap(), Format::Json);
        assert_eq!(f("config/encrypted_prod").unwrap_err().exit_code(), 2);
    }
}
