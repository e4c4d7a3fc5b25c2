//! Keeping the agent's secrets away from the code it deploys.
//!
//! Build steps and the app run as the agent's user (unless `run_as` says otherwise), so
//! they could read `/proc/{agent}/environ`, `/proc/{agent}/cmdline` and `/proc/{agent}/mem`.
//! At start-up, secrets given in the environment (`CONNECT_TOKEN`, `CONFIG_KEY`) or as flags
//! (`--token`, `--config-key`) are therefore handed over to a fresh image of the agent: it
//! re-executes itself (same pid) without them in its environment or arguments and reads
//! them from an inherited socket named by [`FD_VAR`]. The process is then made non-dumpable,
//! so processes of the same user can neither read its memory nor attach to it.
//!
//! Systemd's `LoadCredential=` with `token_file`/`config_key_file` keeps the secrets out of
//! the environment in the first place.

use std::io::{Read as _, Write as _};

use serde::{Deserialize, Serialize};

use crate::cli::Cli;

/// Names the inherited file descriptor the secrets arrive on, in the re-executed agent.
pub const FD_VAR: &str = "ORCASTRATE_SECRETS_FD";

/// Environment variables that carry secrets.
const SECRET_VARS: [&str; 2] = ["CONNECT_TOKEN", "CONFIG_KEY"];
/// Flags that carry secrets.
const SECRET_FLAGS: [&str; 2] = ["--token", "--config-key"];
/// Largest handover read: two one-line secrets.
const MAX_HANDOVER_BYTES: u64 = 64 * 1024;

/// What the agent hands to its re-executed self.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Handover {
    token: Option<String>,
    config_key: Option<String>,
    /// The environment variables they came from, for error messages.
    from_env: Vec<String>,
}

/// Why the secrets could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("cannot re-execute the agent to move its secrets out of its environment: {0}")]
    Exec(std::io::Error),
    #[error("{FD_VAR}: cannot read the secrets handed over by the agent: {0}")]
    Receive(String),
}

/// Whether secrets sit in the environment or on the command line (and were not handed over
/// already).
pub fn exposed() -> bool {
    if std::env::var_os(FD_VAR).is_some() {
        return false;
    }
    SECRET_VARS.iter().any(|v| std::env::var_os(v).is_some())
        || SECRET_FLAGS.iter().any(|f| flag_given(f))
}

/// Whether `flag` is on the command line (`--flag value` or `--flag=value`).
fn flag_given(flag: &str) -> bool {
    std::env::args_os().any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&format!("{flag}="))
    })
}

/// Re-executes the agent (same pid) without the secrets in its environment and arguments,
/// handing them over through an inherited socket. Call it before any thread starts.
///
/// # Errors
///
/// Returns only if the handover or the exec failed.
pub fn reexec(cli: &Cli) -> HandoffError {
    use std::os::unix::process::CommandExt as _;
    let handover = Handover {
        token: cli.token.clone(),
        config_key: cli.config_key.clone(),
        // A variable counts only where its flag did not beat it.
        from_env: SECRET_VARS
            .iter()
            .zip(SECRET_FLAGS)
            .filter(|(v, flag)| std::env::var_os(v).is_some() && !flag_given(flag))
            .map(|(v, _)| (*v).to_owned())
            .collect(),
    };
    let (mut writer, reader) = match std::os::unix::net::UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => return HandoffError::Exec(e),
    };
    let sent = serde_json::to_vec(&handover)
        .map_err(std::io::Error::other)
        .and_then(|bytes| writer.write_all(&bytes));
    drop(writer);
    if let Err(e) = sent.and_then(|()| keep_across_exec(&reader)) {
        return HandoffError::Exec(e);
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&reader);
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "orcastrate-agent".into());
    // The binary's own path keeps the process name (`comm`) the agent's; /proc/self/exe
    // still works if the file was replaced since it started.
    let program = std::env::current_exe()
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| "/proc/self/exe".into());
    let mut command = std::process::Command::new(program);
    command
        .arg0(arg0)
        .args(without_secret_flags(args))
        .env(FD_VAR, fd.to_string());
    for var in SECRET_VARS {
        command.env_remove(var);
    }
    let error = command.exec();
    drop(reader);
    HandoffError::Exec(error)
}

/// In the re-executed agent: takes the secrets handed over on [`FD_VAR`] into `cli`.
///
/// # Errors
///
/// When the variable is malformed or the socket cannot be read.
pub fn receive(cli: &mut Cli) -> Result<(), HandoffError> {
    let Some(value) = std::env::var_os(FD_VAR) else {
        return Ok(());
    };
    let fd: i32 = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| HandoffError::Receive(format!("{value:?} is not a descriptor")))?;
    let mut text = String::new();
    let mut file = take_fd(fd).map_err(|e| HandoffError::Receive(e.to_string()))?;
    std::io::Read::by_ref(&mut file)
        .take(MAX_HANDOVER_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| HandoffError::Receive(e.to_string()))?;
    drop(file);
    let handover: Handover =
        serde_json::from_str(&text).map_err(|e| HandoffError::Receive(e.to_string()))?;
    if cli.token.is_none() {
        cli.token = handover.token;
    }
    if cli.config_key.is_none() {
        cli.config_key = handover.config_key;
    }
    cli.secrets_from_env = handover.from_env;
    Ok(())
}

/// Makes the process non-dumpable: other processes of the same user can no longer read
/// `/proc/{pid}/mem` or `environ`, nor attach with ptrace (root still can). Children do
/// not inherit it (it resets on exec).
///
/// # Errors
///
/// The OS error of `prctl`.
#[allow(unsafe_code)]
pub fn forbid_inspection() -> std::io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Clears close-on-exec on `socket`, so the re-executed image inherits it.
#[allow(unsafe_code)]
fn keep_across_exec(socket: &std::os::unix::net::UnixStream) -> std::io::Result<()> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(socket);
    // SAFETY: fcntl(F_SETFD) on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Takes ownership of the inherited descriptor `fd`.
#[allow(unsafe_code)]
fn take_fd(fd: i32) -> std::io::Result<std::fs::File> {
    // F_GETFD fails on a descriptor that is not open, so we never own a stranger's.
    // SAFETY: fcntl(F_GETFD) passes no memory.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open, was created for this handover by our previous image,
    // and nothing else in this process refers to it.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The arguments without `--token X`, `--token=X`, `--config-key X`, `--config-key=X`.
fn without_secret_flags(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let text = arg.to_string_lossy();
        if SECRET_FLAGS.contains(&text.as_ref()) {
            skip_value = true;
        } else if !SECRET_FLAGS
            .iter()
            .any(|f| text.starts_with(&format!("{f}=")))
        {
            out.push(arg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_flags_are_dropped() {
        let args = [
            "--config",
            "a.toml",
            "--token",
            "t0k",
            "--config-key=k3y",
            "--once",
        ]
        .map(std::ffi::OsString::from);
        assert_eq!(
            without_secret_flags(args.into_iter()),
            ["--config", "a.toml", "--once"].map(std::ffi::OsString::from)
        );
    }
}
