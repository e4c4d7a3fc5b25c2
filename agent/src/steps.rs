//! Running the commands of a deploy: each in its own process group, in the release
//! directory, with an environment scrubbed of the agent's secrets, its output streamed line
//! by line to the `log` topic and to the release's log file, and killable when a newer order
//! supersedes the deploy.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orcastrate_broker::{LogLine, LogStream, Step};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::connection::Bus;
use crate::redact::redact;
use crate::state::{self, ProcRecord, SharedState};
use crate::users::RunAs;

/// Longest line kept whole; longer output is cut into pieces of this size.
const MAX_LINE_BYTES: usize = 3000;

/// How long to keep reading output after a step's process exited (a grandchild may hold
/// the pipe open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Environment variables never passed to steps or the app (the last one is where systemd
/// puts the agent's credentials).
const SECRET_VARS: [&str; 3] = ["CONNECT_TOKEN", "CONFIG_KEY", "CREDENTIALS_DIRECTORY"];
/// Prefix of the agent's own variables, never passed to steps or the app.
const AGENT_VAR_PREFIX: &str = "ORCASTRATE_";

/// The agent's environment without its secrets and settings, for steps and the app.
pub(crate) fn scrubbed_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !SECRET_VARS.contains(&k.as_ref()) && !k.starts_with(AGENT_VAR_PREFIX)
        })
        .collect()
}

/// Opens a log file for appending, readable by the agent's user only (mode 0600, also when
/// an older agent created it more open): output can hold what the service's own code prints.
///
/// # Errors
///
/// When the file cannot be opened or its mode set.
pub(crate) fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Where the output of one deploy goes: the `log` topic and a log file.
pub(crate) struct Sink {
    bus: Bus,
    seq: Option<u64>,
    file: Mutex<Option<File>>,
    /// The first stderr line starting with `fatal:` or `error:` (git's prefixes) since
    /// [`Sink::take_first_error`], so an error in the status can say what git said (git's
    /// first such line is its most specific one).
    first_error: Mutex<Option<String>>,
}

impl Sink {
    /// A sink for order `seq`, appending to `log_file` if it can be opened.
    pub(crate) fn new(bus: Bus, seq: Option<u64>, log_file: Option<&Path>) -> Arc<Self> {
        let file = log_file.and_then(|p| {
            open_log(p)
                .map_err(|e| tracing::warn!(path = %p.display(), error = %e, "cannot open the deploy log file"))
                .ok()
        });
        Arc::new(Self {
            bus,
            seq,
            file: Mutex::new(file),
            first_error: Mutex::new(None),
        })
    }

    /// The first stderr line starting with `fatal:` or `error:` since the last call.
    pub(crate) fn take_first_error(&self) -> Option<String> {
        self.first_error.lock().ok()?.take()
    }

    /// One line of output (credentials in URLs hidden).
    pub(crate) fn line(&self, step: Option<Step>, stream: LogStream, text: &str) {
        let text = &*redact(text);
        let at = orcastrate_broker::time::now();
        if stream == LogStream::Stderr && (text.starts_with("fatal:") || text.starts_with("error:"))
        {
            if let Ok(mut first) = self.first_error.lock() {
                first.get_or_insert_with(|| text.to_owned());
            }
        }
        if let Ok(mut file) = self.file.lock() {
            if let Some(f) = file.as_mut() {
                let step_name = step.map(Step::as_str).unwrap_or("-");
                let stream_name = match stream {
                    LogStream::Stdout => "stdout",
                    LogStream::Stderr => "stderr",
                    LogStream::Agent => "agent",
                };
                let _ = writeln!(f, "{at} {step_name} {stream_name} {text}");
            }
        }
        self.bus.log(LogLine {
            v: orcastrate_broker::PAYLOAD_VERSION,
            agent: String::new(),
            seq: self.seq,
            step,
            stream,
            line: orcastrate_broker::message::truncate_text(text, MAX_LINE_BYTES),
            at,
        });
    }

    /// The agent's own message about the deploy (also logged locally).
    pub(crate) fn note(&self, step: Option<Step>, text: &str) {
        let text = &*redact(text);
        tracing::info!(seq = self.seq, step = step.map(Step::as_str), "{text}");
        self.line(step, LogStream::Agent, text);
    }
}

/// Why a step did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status})")]
    Failed { command: String, status: String },
    #[error("cancelled: a newer order superseded this deploy")]
    Cancelled,
}

/// A command to run: a program with arguments, in a directory.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) dir: PathBuf,
    pub(crate) extra_env: Vec<(String, String)>,
    /// Runs as this user (`run_as`) instead of the agent's.
    pub(crate) user: Option<RunAs>,
}

impl Cmd {
    /// `sh -c {script}` in `dir`.
    pub(crate) fn shell(script: &str, dir: &Path) -> Self {
        Self {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            dir: dir.to_path_buf(),
            extra_env: Vec::new(),
            user: None,
        }
    }

    /// The same command, run as `user` when given.
    pub(crate) fn run_as(mut self, user: Option<&RunAs>) -> Self {
        self.user = user.cloned();
        self
    }

    /// `sh -c {script}` in a release directory, marked as the agent's (see
    /// [`crate::procs::RELEASE_VAR`]), as `user` when given.
    pub(crate) fn in_release(script: &str, dir: &Path, user: Option<&RunAs>) -> Self {
        let mut cmd = Self::shell(script, dir).run_as(user);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        cmd.extra_env
            .push((crate::procs::RELEASE_VAR.to_owned(), name));
        cmd
    }

    /// How the command is shown in logs and errors (credentials in URLs hidden).
    pub(crate) fn display(&self) -> String {
        let shown = if self.program == "sh" && self.args.first().map(String::as_str) == Some("-c") {
            self.args.get(1).cloned().unwrap_or_default()
        } else {
            std::iter::once(self.program.as_str())
                .chain(self.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ")
        };
        redact(&shown).into_owned()
    }

    /// A `tokio` command in its own process group with the scrubbed environment, switched
    /// to its user (with that user's `HOME`, `USER` and `LOGNAME`) if it has one.
    #[allow(unsafe_code)]
    pub(crate) fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .current_dir(&self.dir)
            .env_clear()
            .envs(scrubbed_env())
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(user) = self.user.clone() {
            match &user.home {
                Some(home) => c.env("HOME", home),
                None => c.env_remove("HOME"),
            };
            c.env("USER", &user.name).env("LOGNAME", &user.name);
            // SAFETY: runs in the forked child before exec; `become_user` makes only
            // async-signal-safe system calls and allocates nothing.
            unsafe {
                c.pre_exec(move || crate::users::become_user(&user));
            }
        }
        c
    }
}

/// Runs a step command to completion, streaming its output to `sink`.
///
/// The running command's process group is recorded in `state.json` so that a restarted
/// agent can kill what a crash left behind. Cancelling `cancel` kills the group at once.
///
/// # Errors
///
/// When it cannot start, exits non-zero, or is cancelled.
pub(crate) async fn run(
    cmd: &Cmd,
    step: Step,
    sink: &Arc<Sink>,
    state: &SharedState,
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    if cancel.is_cancelled() {
        return Err(StepError::Cancelled);
    }
    let mut command = cmd.command();
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| StepError::Spawn {
        command: cmd.display(),
        source,
    })?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    if let Some(start_time) = crate::procs::start_time(pgid) {
        state::update(state, |s| s.step = Some(ProcRecord { pgid, start_time }));
    }
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(stream_lines(
            out,
            sink.clone(),
            step,
            LogStream::Stdout,
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(stream_lines(
            err,
            sink.clone(),
            step,
            LogStream::Stderr,
        )));
    }
    let waited = tokio::select! {
        status = child.wait() => Some(status),
        () = cancel.cancelled() => None,
    };
    // Whatever the outcome, nothing of the step may outlive it: kill leftovers of its group.
    if pgid > 1 && crate::procs::group_alive(pgid) {
        crate::procs::kill_group(pgid).await;
    }
    let status: Option<std::io::Result<ExitStatus>> = match waited {
        Some(s) => Some(s),
        None => {
            let _ = child.wait().await;
            None
        }
    };
    for r in readers {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, r).await;
    }
    state::update(state, |s| s.step = None);
    match status {
        None => Err(StepError::Cancelled),
        Some(Err(source)) => Err(StepError::Spawn {
            command: cmd.display(),
            source,
        }),
        Some(Ok(st)) if st.success() => Ok(()),
        Some(Ok(st)) => Err(StepError::Failed {
            command: cmd.display(),
            status: describe(st),
        }),
    }
}

/// Runs a command without streaming (for git plumbing); returns its status and stdout.
///
/// # Errors
///
/// When it cannot start.
pub(crate) async fn output(cmd: &Cmd) -> std::io::Result<(ExitStatus, String)> {
    let mut command = cmd.command();
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = command.output().await?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// `exit code 3` or `killed by signal 9`.
pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".to_owned(),
    }
}

async fn stream_lines(
    reader: impl AsyncRead + Unpin,
    sink: Arc<Sink>,
    step: Step,
    stream: LogStream,
) {
    let mut reader = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            break;
        }
        let (take, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        // `line` is flushed once full, so there is always room for at least one byte.
        let used = take.min(MAX_LINE_BYTES - line.len());
        line.extend_from_slice(&buf[..used]);
        reader.consume(used);
        if (newline && used == take) || line.len() >= MAX_LINE_BYTES {
            emit(&sink, step, stream, &line);
            line.clear();
        }
    }
    if !line.is_empty() {
        emit(&sink, step, stream, &line);
    }
}

fn emit(sink: &Sink, step: Step, stream: LogStream, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    sink.line(Some(step), stream, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed() {
        let env = scrubbed_env();
        assert!(env.iter().all(|(k, _)| {
            let k = k.to_string_lossy();
            k != "CONNECT_TOKEN" && k != "CONFIG_KEY" && !k.starts_with("ORCASTRATE_")
        }));
    }

    #[test]
    fn display_of_shell_commands() {
        assert_eq!(
            Cmd::shell("npm install", Path::new("/")).display(),
            "npm install"
        );
        let c = Cmd {
            program: "git".into(),
            args: vec!["fetch".into(), "origin".into()],
            dir: PathBuf::from("/"),
            extra_env: vec![],
            user: None,
        };
        assert_eq!(c.display(), "git fetch origin");
    }
}
