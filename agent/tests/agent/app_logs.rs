//! Issue 14: the app's output in one timestamped, capped and rotated file per release, and
//! `orcastrate-agent logs [--follow]`.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use orcastrate_broker::{AgentState, OrderKind};

use crate::common::*;

/// Prints 300 lines of about 60 bytes (18 KiB with timestamps) before it serves.
const NOISE_JS: &str = r#"
const v = require('fs').readFileSync('VERSION', 'utf8').trim();
for (let i = 0; i < 300; i++) console.log(`noise ${v} ${i} ${'x'.repeat(40)}`);
console.error(`ready ${v}`);
require('./server.js');
"#;

/// A world whose app is noisy, with `[logs]` capping each file at 4 KiB, two rotated kept.
async fn noisy_world() -> World {
    let w = World::with(Options {
        extra_tables: "[logs]\napp_max_bytes = 4096\napp_keep = 2\n".into(),
        ..Options::default()
    })
    .await;
    w.start_with_script("noise.js");
    w
}

fn logs_command(w: &World, follow: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orcastrate-agent"));
    cmd.arg("logs").arg("--config").arg(&w.config);
    if follow {
        cmd.arg("--follow");
    }
    cmd.env_remove("ORCASTRATE_ROOT").stdin(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i14_app_log_per_release_is_timestamped_capped_rotated_and_shown() {
    let mut w = noisy_world().await;
    let a = w.commit_with("v1", "true\n", &[("noise.js", Some(NOISE_JS))]);
    let n = w.start_agent();
    let s1 = w.order(&a, OrderKind::Push).await;
    w.until_healthy(n, s1).await;
    let release = w.current();
    let dir = w.root.join("logs/app");
    let file = dir.join(format!("{release}.log"));
    let current = eventually(WAIT, "the app's last line in its log", || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|t| t.contains(" stdout noise v1 299 "))
    });
    // Capped and rotated: .1 and .2 kept, nothing older, each at most 4 KiB.
    for f in [
        file.clone(),
        dir.join(format!("{release}.log.1")),
        dir.join(format!("{release}.log.2")),
    ] {
        let meta = std::fs::metadata(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            meta.len() <= 4096,
            "{} is {} bytes",
            f.display(),
            meta.len()
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", f.display());
    }
    assert!(!dir.join(format!("{release}.log.3")).exists());
    for line in current.lines() {
        let (at, rest) = line.split_once(' ').unwrap();
        assert!(at.len() == 24 && at.ends_with('Z'), "no timestamp: {line}");
        assert!(
            rest.starts_with("stdout ")
                || rest.starts_with("stderr ")
                || rest.starts_with("agent "),
            "no stream: {line}"
        );
    }

    // `logs` prints the current release's file.
    let out = logs_command(&w, false).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), current);

    // `logs --follow` keeps printing, into the next release.
    let mut follow = logs_command(&w, true)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = follow.stdout.take().unwrap();
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let b = w.commit_with("v2", "true\n", &[("noise.js", Some(NOISE_JS))]);
    let s2 = w.order(&b, OrderKind::Push).await;
    assert_eq!(w.bus.wait_outcome(s2).await.state, AgentState::Healthy);
    let v2 = w.current();
    eventually(
        WAIT,
        "logs --follow to show the new release's output",
        || {
            let text = seen.lock().unwrap().clone();
            (text.contains(&format!("==> {}/{v2}.log <==", dir.display()))
                && text.contains(" stdout noise v2 299 "))
            .then_some(())
        },
    );
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();

    // Without any release: a clear error, exit 1.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orcastrate-agent"))
        .args(["logs", "--root"])
        .arg(empty.path())
        .env_remove("ORCASTRATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no release is current"),
        "{out:?}"
    );
}

/// Prints a numbered tick every 100 ms before it serves, so its log keeps growing.
const TICK_JS: &str = r#"
let n = 0;
setInterval(() => console.log(`tick ${n++}`), 100);
require('./server.js');
"#;

/// The app's log writer is not the agent: an agent killed with SIGKILL leaves the app
/// serving and its output still logged (a pipe to the agent would break on the app).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i14_the_app_log_outlives_the_agent() {
    let mut w = World::new().await;
    w.start_with_script("tick.js");
    let a = w.commit_with("v1", "true\n", &[("tick.js", Some(TICK_JS))]);
    let n = w.start_agent();
    let s1 = w.order(&a, OrderKind::Push).await;
    w.until_healthy(n, s1).await;
    let pid = w.wait_app("v1");
    let file = w.root.join(format!("logs/app/{}.log", w.current()));
    let ticks = |f: &std::path::Path| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .matches(" stdout tick ")
            .count()
    };
    w.kill9(n);
    let after_kill = ticks(&file);
    eventually(WAIT, "ticks logged after the agent died", || {
        (ticks(&file) >= after_kill + 10).then_some(())
    });
    assert_eq!(w.wait_app("v1"), pid, "the app was restarted");
}
