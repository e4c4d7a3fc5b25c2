//! The processes a test started, found by where they run: nothing an agent starts (apps,
//! steps) may outlive its test.

use std::path::Path;
use std::time::Duration;

/// Live (not zombie) processes whose working directory is under `dir`: (pid, command line).
pub fn under(dir: &Path) -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            if !cwd.starts_with(dir) {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            if matches!(state, 'Z' | 'X') {
                return None;
            }
            let cmd = std::fs::read(e.path().join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            Some((pid, cmd))
        })
        .collect()
}

/// SIGKILLs every process under `dir` until none is left (at most about a second).
pub fn kill_all_under(dir: &Path) {
    for _ in 0..50 {
        let left = under(dir);
        if left.is_empty() {
            return;
        }
        for (pid, _) in left {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// User plus system CPU time process `pid` has used so far, in seconds (from
/// `/proc/<pid>/stat`, whose clock ticks are 1/100 s on Linux); `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name, utime and stime are the 12th and 13th fields.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let mut ticks = || fields.next()?.parse::<u64>().ok();
    Some((ticks()? + ticks()?) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_kills_what_runs_under_a_dir() {
        let dir = std::env::temp_dir().join(format!("testkit-procs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .current_dir(&dir)
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // Until the forked child has exec'd, its command line is still this test's.
        crate::wait::eventually(Duration::from_secs(10), "sleep under the dir", || {
            under(&dir)
                .iter()
                .any(|(p, cmd)| *p == pid && cmd.contains("sleep"))
                .then_some(())
        });
        kill_all_under(&dir);
        // Reaped here: the kill left a zombie, which `under` does not list.
        assert!(!child.wait().unwrap().success());
        assert!(under(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
