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
