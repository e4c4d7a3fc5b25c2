//! Issue 14: an app that dies while its health is checked fails the deploy at once, and the
//! status `error` and the `log` topic say how it died and what it last printed to stderr.

use std::time::{Duration, Instant};

use orcastrate_broker::{AgentState, LogStream, OrderKind, Step};

use crate::common::*;

/// Exits at start the way a Node app with a missing dependency does; its second line carries
/// a credential in a URL that must not leave the host.
const CRASH_JS: &str = r#"
console.log('booting');
console.error("Error: Cannot find module 'pg'");
console.error('Require stack: https://deploy:hunter2-secret@db.example.com/app');
process.exit(3);
"#;

/// Far under the 30 s health timeout, far over what failing fast takes on a slow machine.
const FAST: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i14_app_that_exits_at_start_fails_at_once_with_its_exit_code_and_stderr() {
    let mut w = World::with(Options {
        health_timeout_s: Some(30),
        ..Options::default()
    })
    .await;
    let good = w.commit("v1", "true\n");
    let n = w.start_agent();
    let s1 = w.order(&good, OrderKind::Push).await;
    w.until_healthy(n, s1).await;

    let bad = w.commit_with("v2", "true\n", &[("server.js", Some(CRASH_JS))]);
    let s2 = w.order(&bad, OrderKind::Push).await;
    w.bus
        .wait_status("the health step of the crashing release", |s| {
            s.seq == Some(s2) && s.step == Some(Step::Start)
        })
        .await;
    let started = Instant::now();
    let outcome = w.bus.wait_outcome(s2).await;
    let took = started.elapsed();
    assert_eq!(outcome.state, AgentState::RolledBack, "{outcome:?}");
    assert!(
        took < FAST,
        "the deploy took {took:?} to fail: it waited for the health timeout"
    );
    let error = outcome.error.clone().unwrap_or_default();
    assert!(error.contains("exit code 3"), "{error}");
    assert!(error.contains("Cannot find module 'pg'"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    assert!(!error.contains("booting"), "stdout is not stderr: {error}");

    let logs = w.bus.logs();
    assert!(
        logs.iter().any(|l| l.seq == Some(s2)
            && l.stream == LogStream::Stderr
            && l.line == "Error: Cannot find module 'pg'"),
        "{logs:?}"
    );
    assert!(!logs.iter().any(|l| l.line.contains("hunter2")), "{logs:?}");
    // The old release serves again.
    w.wait_app("v1");
}

/// Crashes at start while its release has a file `CRASH`, else serves.
const BOOT_JS: &str = r#"
if (require('fs').existsSync('CRASH')) {
  console.error('Error: connect ECONNREFUSED 127.0.0.1:5432');
  process.exit(4);
}
require('./server.js');
"#;

/// After `healthy`, an app that keeps dying makes the periodic check report `unhealthy`
/// with how it died and its last stderr line, not only the refused connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i14_unhealthy_after_a_crash_says_how_the_app_died() {
    let mut w = World::new().await;
    w.start_with_script("boot.js");
    let a = w.commit_with("v1", "true\n", &[("boot.js", Some(BOOT_JS))]);
    let n = w.start_agent();
    let s1 = w.order(&a, OrderKind::Push).await;
    w.until_healthy(n, s1).await;
    let pid = w.wait_app("v1");
    std::fs::write(w.root.join("current/CRASH"), "").unwrap();
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let unhealthy = w
        .bus
        .wait_status("unhealthy after the crash", |s| {
            s.state == AgentState::Unhealthy
                && s.error
                    .as_deref()
                    .is_some_and(|e| e.contains("exit code 4"))
        })
        .await;
    let error = unhealthy.error.unwrap_or_default();
    assert!(error.contains("ECONNREFUSED 127.0.0.1:5432"), "{error}");
}
