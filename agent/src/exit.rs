//! The exit codes of `orcastrate-agent`, decided in one place (README, "`--once`").

use crate::RunOutcome;

/// How the agent process ends; the discriminant is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Stopped, up to date, healthy, or the order was skipped.
    Ok = 0,
    /// The deploy failed or was rolled back, or the agent could not run.
    Failed = 1,
    /// Bad configuration or arguments (clap's own usage errors exit 2 as well).
    BadConfig = 2,
    /// `--once`: no server could be reached.
    NoConnection = 3,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<RunOutcome> for Exit {
    fn from(outcome: RunOutcome) -> Self {
        match outcome {
            RunOutcome::Stopped
            | RunOutcome::UpToDate
            | RunOutcome::Healthy
            | RunOutcome::Skipped => Self::Ok,
            RunOutcome::Failed | RunOutcome::RolledBack => Self::Failed,
            RunOutcome::NoConnection => Self::NoConnection,
        }
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
    fn outcomes_map_to_the_documented_codes() {
        assert_eq!(Exit::from(RunOutcome::Healthy).code(), 0);
        assert_eq!(Exit::from(RunOutcome::Skipped).code(), 0);
        assert_eq!(Exit::from(RunOutcome::RolledBack).code(), 1);
        assert_eq!(Exit::from(RunOutcome::NoConnection).code(), 3);
        assert_eq!(Exit::BadConfig.code(), 2);
    }
}
