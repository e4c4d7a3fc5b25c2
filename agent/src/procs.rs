//! Process groups on Linux: signalling a group, finding its live members, and telling a
//! process apart from a later one that reused its pid (by its start time in `/proc`).
//!
//! Every command the agent runs gets its own process group, so stopping it reaches the
//! children it forked (`npm` → `node`, `sh -c` → anything) and nothing else.

use std::io;
use std::path::Path;
use std::time::Duration;

/// First interval at which a stopping group is polled for exit (most apps exit on SIGTERM
/// within milliseconds); doubled up to [`STOP_POLL_MAX`].
const STOP_POLL: Duration = Duration::from_millis(2);
/// Longest interval between polls of a stopping group.
const STOP_POLL_MAX: Duration = Duration::from_millis(50);

/// How long to wait for a group to vanish after SIGKILL before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Sends `sig` to every process of group `pgid` (`kill(-pgid, sig)`).
///
/// # Errors
///
/// The OS error, e.g. `ESRCH` when the group has no process left.
#[allow(unsafe_code)]
pub(crate) fn signal_group(pgid: i32, sig: i32) -> io::Result<()> {
    if pgid <= 1 {
        // kill(0) or kill(-1) would reach the agent's own group or every process.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill(2) takes two plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(-pgid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The fields of `/proc/{pid}/stat` the agent needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// One-letter state (`R`, `S`, `Z`, ...).
    pub(crate) state: char,
    /// Process group id.
    pub(crate) pgrp: i32,
    /// Start time in clock ticks since boot: with the pid, identifies one process.
    pub(crate) start_time: u64,
}

/// Parses `/proc/{pid}/stat`; `None` if the process does not exist.
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    read_stat(&Path::new("/proc").join(pid.to_string()).join("stat"))
}

fn read_stat(path: &Path) -> Option<ProcStat> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may itself contain ") ": the fields
    // after it start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is fields[n - 3].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The start time of a live (not zombie) process.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    stat(pid)
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .map(|s| s.start_time)
}

/// Pids of the live (not zombie) processes in group `pgid`.
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            stat(pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z' && s.state != 'X')
        })
        .collect()
}

/// Marks the environment of every step and app the agent starts (value: the release name),
/// so a restarted agent that lost `state.json` can tell its own processes from, say, an
/// operator's shell sitting in a release directory.
pub(crate) const RELEASE_VAR: &str = "ORCA_RELEASE";

fn has_marker(pid: i32) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let prefix = format!("{RELEASE_VAR}=");
    environ
        .split(|&b| b == 0)
        .any(|var| var.starts_with(prefix.as_bytes()))
}

/// Live process groups (other than the agent's own) with a member that the agent started
/// (see [`RELEASE_VAR`]) whose working directory is under `dir`, with the working directory
/// of one such member (the leader's, when it qualifies).
pub(crate) fn groups_under(dir: &Path) -> Vec<(i32, std::path::PathBuf)> {
    let own = stat(std::process::id() as i32).map(|s| s.pgrp);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut groups: Vec<(i32, std::path::PathBuf)> = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Some(st) = stat(pid).filter(|s| s.state != 'Z' && s.state != 'X') else {
            continue;
        };
        if Some(st.pgrp) == own {
            continue;
        }
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        if !cwd.starts_with(dir) || !has_marker(pid) {
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == st.pgrp) {
            Some(entry) if pid == st.pgrp => entry.1 = cwd,
            Some(_) => {}
            None => groups.push((st.pgrp, cwd)),
        }
    }
    groups
}

/// Whether group `pgid` still has a live process.
pub(crate) fn group_alive(pgid: i32) -> bool {
    // Cheap test first: no process at all in the group.
    if signal_group(pgid, 0).is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH)) {
        return false;
    }
    !group_members(pgid).is_empty()
}

/// Whether the process that led group `pgid` and started at `start_time` is still the one
/// running under that pid, or, if it exited, whether its group lives on.
pub(crate) fn same_group_alive(pgid: i32, start_time_ticks: u64) -> bool {
    match stat(pgid) {
        // The leader lives: it must be the same process, not a reuse of its pid.
        Some(s) if s.state != 'Z' && s.state != 'X' => {
            s.start_time == start_time_ticks && s.pgrp == pgid
        }
        // The leader is gone but children may hold the group (a pid that is a live pgid
        // cannot be reused as a new group leader, so this group is still ours).
        _ => group_alive(pgid),
    }
}

/// How a group was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// It was already gone.
    NotRunning,
    /// It exited after SIGTERM.
    Terminated,
    /// It had to be killed with SIGKILL.
    Killed,
}

/// Stops group `pgid`: SIGTERM, then SIGKILL after `grace`, and waits until no live process
/// is left (bounded).
pub(crate) async fn stop_group(pgid: i32, grace: Duration) -> Stopped {
    if !group_alive(pgid) {
        return Stopped::NotRunning;
    }
    let _ = signal_group(pgid, libc::SIGTERM);
    // A stopped (SIGSTOP) process would not act on SIGTERM until continued.
    let _ = signal_group(pgid, libc::SIGCONT);
    if wait_gone(pgid, grace).await {
        return Stopped::Terminated;
    }
    let _ = signal_group(pgid, libc::SIGKILL);
    wait_gone(pgid, KILL_WAIT).await;
    Stopped::Killed
}

/// Kills group `pgid` at once with SIGKILL and waits (bounded) until it is gone.
pub(crate) async fn kill_group(pgid: i32) {
    if signal_group(pgid, libc::SIGKILL).is_ok() {
        wait_gone(pgid, KILL_WAIT).await;
    }
}

async fn wait_gone(pgid: i32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = STOP_POLL;
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(STOP_POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (my ) app) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 1234);
        assert_eq!(s.start_time, 98765);
    }

    #[test]
    fn own_process_is_visible() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert_eq!(start_time(me), Some(s.start_time));
        assert!(stat(i32::MAX).is_none());
    }

    #[test]
    fn refuses_dangerous_groups() {
        assert!(signal_group(0, 0).is_err());
        assert!(signal_group(1, 0).is_err());
        assert!(signal_group(-5, 0).is_err());
    }

    #[tokio::test]
    async fn stops_a_whole_group() {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id().unwrap() as i32;
        // Wait until the background sleep is in the group too.
        for _ in 0..200 {
            if group_members(pgid).len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let start = start_time(pgid).unwrap();
        assert!(same_group_alive(pgid, start));
        assert!(!same_group_alive(pgid, start + 1));
        let reaper = tokio::spawn(async move { child.wait().await });
        let how = stop_group(pgid, Duration::from_secs(5)).await;
        assert_ne!(how, Stopped::NotRunning);
        assert!(!group_alive(pgid));
        reaper.await.unwrap().unwrap();
        assert_eq!(
            stop_group(pgid, Duration::from_secs(1)).await,
            Stopped::NotRunning
        );
    }
}
