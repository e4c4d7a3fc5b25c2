//! The app's output: one log file per release (`{root}/logs/app/{release}.log`), every
//! line timestamped and tagged with its stream, credentials in URLs hidden, the file capped
//! at `[logs] app_max_bytes` and rotated to `.1` … `.{app_keep}`.
//!
//! The app writes into two pipes read by a *log writer*: a small process of the agent
//! binary (`orcastrate-agent app-log-writer`, in its own process group) that outlives the
//! agent, so an app that the agent leaves serving (a restart, `on_shutdown = "keep"`, a
//! crash) never writes into a closed pipe. Where the agent runs as a library without its
//! binary (tests that embed it), a thread does the same job with the same code.
//!
//! The agent reads the file back for the last stderr lines of an app that died (the crash
//! reason) and for `orcastrate-agent logs`.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Seek as _, SeekFrom, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::redact::redact;

/// Longest line kept whole in the log; longer output is cut into pieces of this size, so a
/// line without a newline cannot grow the writer's memory.
const MAX_LINE_BYTES: usize = 8192;
/// How long the agent waits for the writer to drain the pipes after the app died, before it
/// reads the file for the crash reason.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How many stderr lines of a dead app go into the status `error` and the `log` topic.
pub(crate) const TAIL_LINES: usize = 10;
/// Longest stderr line kept in a crash reason.
const TAIL_LINE_BYTES: usize = 300;
/// How much of the end of the log is read to find the last stderr lines.
const TAIL_READ_BYTES: u64 = 64 * 1024;
/// The line the writer puts first: where one run of the app begins.
const START_MARK: &str = "agent --- app started";
/// The hidden sub-command that runs the log writer.
pub const WRITER_COMMAND: &str = "app-log-writer";

/// Size cap and rotation of the app's log files (`[logs]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppLogLimits {
    /// A file that would grow past this is rotated first.
    pub max_bytes: u64,
    /// Rotated files kept per release (`.1` is the newest).
    pub keep: u32,
}

/// Where release `release`'s app log is.
pub(crate) fn path(logs: &Path, release: &str) -> PathBuf {
    logs.join("app").join(format!("{release}.log"))
}

/// A log file with a size cap, rotated by renaming (`.1` … `.{keep}`), mode 0600.
struct RotatingFile {
    path: PathBuf,
    limits: AppLogLimits,
    file: File,
    size: u64,
}

impl RotatingFile {
    fn open(path: &Path, limits: AppLogLimits) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = crate::steps::open_log(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            limits,
            file,
            size,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.limits.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(self.rotated(self.limits.keep));
            for n in (1..self.limits.keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = crate::steps::open_log(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Appends one line `{at} {stream} {text}`, rotating first if it would pass the cap.
    fn line(&mut self, stream: &str, text: &str) {
        // Room for the timestamp and the stream: no single line passes the cap either.
        let room = (self.limits.max_bytes as usize).saturating_sub(64);
        let text = redact(text);
        let text = orcastrate_broker::message::truncate_text(&text, room);
        let line = format!("{} {stream} {text}\n", orcastrate_broker::time::now());
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.limits.max_bytes {
            if let Err(e) = self.rotate() {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate the app log");
            }
        }
        if self.file.write_all(line.as_bytes()).is_ok() {
            self.size += len;
        }
    }
}

/// Copies `input` line by line into `log` as `stream` until the end of input.
fn pump(input: impl Read, stream: &'static str, log: &Mutex<RotatingFile>) {
    let mut reader = BufReader::with_capacity(MAX_LINE_BYTES, input);
    let mut line = Vec::new();
    loop {
        line.clear();
        // A line longer than the cap is cut: `take` bounds what one read may buffer.
        match (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .line(stream, text);
    }
}

/// Writes the app's `stdout` and `stderr` into `file` until both are closed (the app and
/// every process that inherited them exited).
///
/// # Errors
///
/// When the log file cannot be opened.
pub fn write_log(
    stdout: impl Read + Send + 'static,
    stderr: impl Read + Send + 'static,
    file: &Path,
    limits: AppLogLimits,
) -> std::io::Result<()> {
    let mut log = RotatingFile::open(file, limits)?;
    log.line("agent", START_MARK);
    let log = Arc::new(Mutex::new(log));
    let out_log = log.clone();
    let out = std::thread::spawn(move || pump(stdout, "stdout", &out_log));
    pump(stderr, "stderr", &log);
    let _ = out.join();
    Ok(())
}

/// The writer of one run of the app: awaited (bounded) before its file is read.
pub(crate) enum Writer {
    Process(tokio::process::Child),
    Thread(std::thread::JoinHandle<()>),
}

impl Writer {
    /// Waits until the writer has drained the app's pipes, at most [`DRAIN_TIMEOUT`]; a
    /// grandchild that kept the pipes open does not hold the agent up.
    pub(crate) async fn drained(&mut self) {
        match self {
            Writer::Process(child) => {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, child.wait()).await;
            }
            Writer::Thread(handle) => {
                let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
                while !handle.is_finished() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// A pipe (read end, write end), both close-on-exec.
#[allow(unsafe_code)]
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts a writer into `file` and returns the app's stdout and stderr for it.
///
/// `helper` is the agent binary: the writer runs as its own process there; without it, in a
/// thread of this process.
///
/// # Errors
///
/// When the pipes or the writer cannot be made.
pub(crate) fn start_writer(
    helper: Option<&Path>,
    file: &Path,
    limits: AppLogLimits,
) -> std::io::Result<(Stdio, Stdio, Writer)> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let writer = match helper {
        Some(exe) => Writer::Process(spawn_helper(exe, file, limits, out_r, err_r)?),
        None => {
            let file = file.to_owned();
            let handle = std::thread::Builder::new()
                .name("app-log".into())
                .spawn(move || {
                    if let Err(e) = write_log(File::from(out_r), File::from(err_r), &file, limits)
                    {
                        tracing::warn!(path = %file.display(), error = %e, "cannot write the app log");
                    }
                })?;
            Writer::Thread(handle)
        }
    };
    Ok((Stdio::from(out_w), Stdio::from(err_w), writer))
}

/// `{exe} app-log-writer --file F --max-bytes N --keep K`, stdin the app's stdout, fd 3 its
/// stderr, in its own process group (stopping the app's group leaves it to drain).
#[allow(unsafe_code)]
fn spawn_helper(
    exe: &Path,
    file: &Path,
    limits: AppLogLimits,
    out_r: OwnedFd,
    err_r: OwnedFd,
) -> std::io::Result<tokio::process::Child> {
    let mut c = tokio::process::Command::new(exe);
    c.arg(WRITER_COMMAND)
        .arg("--file")
        .arg(file)
        .arg("--max-bytes")
        .arg(limits.max_bytes.to_string())
        .arg("--keep")
        .arg(limits.keep.to_string())
        .env_clear()
        .stdin(Stdio::from(out_r))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    let err_fd = err_r.as_raw_fd();
    // SAFETY: runs in the forked child before exec; dup2 is async-signal-safe. The copy on
    // fd 3 is not close-on-exec, so the writer inherits it.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(err_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c.spawn();
    drop(err_r);
    child
}

/// The body of `orcastrate-agent app-log-writer`: stdin is the app's stdout, fd 3 its
/// stderr.
///
/// # Errors
///
/// When the log file cannot be opened.
#[allow(unsafe_code)]
pub fn run_writer(file: &Path, limits: AppLogLimits) -> std::io::Result<()> {
    // SAFETY: the agent passes the app's stderr on fd 3 and nothing else owns it here.
    let stderr = unsafe { File::from_raw_fd(3) };
    write_log(std::io::stdin(), stderr, file, limits)
}

/// The last stderr lines (at most [`TAIL_LINES`], each cut at [`TAIL_LINE_BYTES`]) of the
/// newest run of the app in `file`, without timestamps.
pub(crate) fn stderr_tail(file: &Path) -> Vec<String> {
    let Ok(mut f) = File::open(file) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL_READ_BYTES)));
    let mut buf = Vec::new();
    let _ = f.take(TAIL_READ_BYTES).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let run = match text.rfind(START_MARK) {
        Some(at) => &text[at..],
        None => &text,
    };
    let lines: Vec<String> = run
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(' ')?;
            rest.strip_prefix("stderr ")
        })
        .filter(|l| !l.trim().is_empty())
        .map(|l| orcastrate_broker::message::truncate_text(&redact(l), TAIL_LINE_BYTES))
        .collect();
    let skip = lines.len().saturating_sub(TAIL_LINES);
    lines.into_iter().skip(skip).collect()
}

/// Deletes the app logs (rotated ones included) of releases not in `releases`: they go
/// with their release.
pub(crate) fn prune(logs: &Path, releases: &[String]) {
    let Ok(dir) = std::fs::read_dir(logs.join("app")) else {
        return;
    };
    for entry in dir.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(release) = name
            .to_str()
            .and_then(|n| n.split_once(".log"))
            .map(|(r, _)| r)
        else {
            continue;
        };
        if !releases.iter().any(|r| r == release) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// How often `logs --follow` looks for new output and a switch of `current`.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The release `current` points to under `root`.
fn current_release(root: &Path) -> Option<String> {
    let target = std::fs::read_link(root.join("current")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// `orcastrate-agent logs [--follow]`: writes the current release's app log to `out`; with
/// `follow`, then what is appended, across rotations (the rest of the rotated file first, as
/// `tail -F` does) and switches to a new release, until the process is stopped.
///
/// # Errors
///
/// When no release is current, its log cannot be read, or `out` fails (a closed pipe).
pub fn show(root: &Path, follow: bool, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let Some(mut release) = current_release(root) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no release is current under {}: has the agent deployed here yet? (check --root or --config)",
                root.display()
            ),
        ));
    };
    let logs = root.join("logs");
    let mut file = path(&logs, &release);
    let mut open = open_log(&file)?;
    loop {
        if let Some(f) = open.as_mut() {
            std::io::copy(f, out)?;
            out.flush()?;
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
        if let Some(now) = current_release(root).filter(|r| *r != release) {
            if let Some(f) = open.as_mut() {
                std::io::copy(f, out)?;
            }
            release = now;
            file = path(&logs, &release);
            writeln!(out, "==> {} <==", file.display())?;
            open = open_log(&file)?;
        } else if rotated(open.as_ref(), &file) {
            if let Some(f) = open.as_mut() {
                std::io::copy(f, out)?;
            }
            open = open_log(&file)?;
        }
    }
}

/// Opens a log for reading; `None` while it does not exist yet.
fn open_log(file: &Path) -> std::io::Result<Option<File>> {
    match File::open(file) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", file.display()),
        )),
    }
}

/// Whether `file` is no longer the file `open` reads (rotated, or created since).
fn rotated(open: Option<&File>, file: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(now) = std::fs::metadata(file) else {
        return false;
    };
    match open.and_then(|f| f.metadata().ok()) {
        Some(old) => (old.dev(), old.ino()) != (now.dev(), now.ino()),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_capped_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app/1-abc.log");
        let limits = AppLogLimits {
            max_bytes: 2000,
            keep: 2,
        };
        let mut stdout: Vec<u8> = (0..200)
            .flat_map(|i| format!("out line {i}\n").into_bytes())
            .collect();
        // A last line longer than the cap, without an end, is cut to fit too.
        stdout.extend(vec![b'y'; 10_000]);
        write_log(std::io::Cursor::new(stdout), &b""[..], &file, limits).unwrap();
        let rotated = |n: u32| dir.path().join(format!("app/1-abc.log.{n}"));
        for p in [file.clone(), rotated(1), rotated(2)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= 2000, "{} is {len} bytes", p.display());
        }
        assert!(!rotated(3).exists());
        let current = std::fs::read_to_string(&file).unwrap();
        // Cut into pieces of MAX_LINE_BYTES as read, each cut to fit in a file.
        assert!(current.contains(" stdout yyy"), "{current}");
        let before = std::fs::read_to_string(rotated(1)).unwrap();
        assert!(before.contains(" stdout yyy") && before.ends_with("y…[truncated]\n"));
    }

    #[test]
    fn lines_are_stamped_tagged_and_redacted_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app/1-abc.log");
        let limits = AppLogLimits {
            max_bytes: 1 << 20,
            keep: 1,
        };
        let stderr = b"fetch https://user:sekrit@example.com/x failed\nCannot find module 'pg'\n";
        write_log(&b"listening\n"[..], &stderr[..], &file, limits).unwrap();
        let all = std::fs::read_to_string(&file).unwrap();
        assert!(!all.contains("sekrit"), "{all}");
        assert!(all.contains(" stderr Cannot find module 'pg'\n"), "{all}");
        assert!(all.contains(" stdout listening\n"), "{all}");
        for line in all.lines() {
            let (at, rest) = line.split_once(' ').unwrap();
            assert!(at.len() == 24 && at.ends_with('Z'), "{line}");
            assert!(
                ["stdout ", "stderr ", "agent "]
                    .iter()
                    .any(|s| rest.starts_with(s)),
                "{line}"
            );
        }
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn tail_is_the_last_stderr_lines_of_the_newest_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.log");
        let limits = AppLogLimits {
            max_bytes: 1 << 20,
            keep: 1,
        };
        write_log(&b""[..], &b"old run error\n"[..], &file, limits).unwrap();
        let err: Vec<u8> = (0..30)
            .flat_map(|i| format!("err {i}\n").into_bytes())
            .collect();
        write_log(&b"hello\n"[..], std::io::Cursor::new(err), &file, limits).unwrap();
        let tail = stderr_tail(&file);
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last().map(String::as_str), Some("err 29"));
        assert!(!tail.iter().any(|l| l.contains("old run")), "{tail:?}");
    }
}
