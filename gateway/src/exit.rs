//! The exit codes of `orcastrate-gateway`, decided in one place (README, "Exit codes").

use crate::client::ClientError;
use crate::config::ConfigError;

/// Why the gateway binary exits non-zero; the discriminant is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Any other failure (serve stopped on an error, a file could not be written).
    Failure = 1,
    /// Bad configuration or usage (clap's own usage errors exit 2 as well).
    Usage = 2,
    /// An operator command could not reach the gateway.
    Unreachable = 3,
    /// The gateway refused an operator command (its reason is printed).
    Refused = 4,
}

impl Exit {
    /// The exit code for `err`: the first error in its chain that has one decides.
    pub fn of(err: &anyhow::Error) -> Self {
        for cause in err.chain() {
            if cause.is::<ConfigError>() {
                return Self::Usage;
            }
            match cause.downcast_ref::<ClientError>() {
                Some(ClientError::Unreachable { .. }) => return Self::Unreachable,
                Some(ClientError::Refused { .. }) => return Self::Refused,
                None => {}
            }
        }
        Self::Failure
    }

    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_kind_has_its_code() {
        let refused = anyhow::Error::new(ClientError::Refused {
            status: 409,
            message: "paused".into(),
        });
        assert_eq!(Exit::of(&refused).code(), 4);
        let unreachable = anyhow::Error::new(ClientError::Unreachable {
            url: "http://x".into(),
            detail: "refused".into(),
        })
        .context("cannot deploy");
        assert_eq!(Exit::of(&unreachable).code(), 3, "found under context too");
        assert_eq!(Exit::of(&anyhow::anyhow!("disk full")).code(), 1);
    }
}
