//! Deploys, failures and rollbacks.

use orcastrate_broker::{AgentState, OrderKind, Step};

use crate::common::*;

const OK_INSTALL: &str = "echo installing; echo to-stderr >&2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_and_second_deploy() {
    let mut w = World::new().await;
    let a = w.commit("v1", OK_INSTALL);
    // Published before the agent exists: the retained order is what a new host finds.
    let s1 = w.order(&a, OrderKind::Push).await;
    w.start_agent();

    let healthy = w.bus.wait_outcome(s1).await;
    assert_eq!(healthy.state, AgentState::Healthy, "{healthy:?}");
    assert_eq!(healthy.sha.as_deref(), Some(a.as_str()));
    assert_eq!(healthy.running_sha.as_deref(), Some(a.as_str()));
    assert!(healthy.deploy_ms.is_some());
    let pid1 = w.wait_app("v1");
    let r1 = format!("{s1}-{}", &a[..12]);
    assert_eq!(w.current(), r1);
    let release = w.root.join("releases").join(&r1);
    assert!(release.join(".orcastrate-complete").exists());
    assert_eq!(
        std::fs::read_to_string(release.join("BUILT"))
            .unwrap()
            .trim(),
        "built"
    );
    // [shared] links.
    assert!(std::fs::symlink_metadata(release.join(".env"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::symlink_metadata(release.join("uploads"))
        .unwrap()
        .file_type()
        .is_symlink());
    // No .git in a release.
    assert!(!release.join(".git").exists());

    // Every step was reported, in order.
    let steps: Vec<Step> = w
        .bus
        .statuses()
        .iter()
        .filter(|s| s.seq == Some(s1) && s.state == AgentState::Deploying)
        .filter_map(|s| s.step)
        .collect();
    for step in [
        Step::Fetch,
        Step::Config,
        Step::Install,
        Step::Build,
        Step::Start,
        Step::Health,
    ] {
        assert!(steps.contains(&step), "no {step:?} in {steps:?}");
    }
    // Step output reached the log topic (both streams) and the release log file.
    let logs = w.bus.logs();
    assert!(logs
        .iter()
        .any(|l| l.step == Some(Step::Install) && l.line == "installing" && l.seq == Some(s1)));
    assert!(logs
        .iter()
        .any(|l| l.line == "to-stderr" && l.stream == orcastrate_broker::LogStream::Stderr));
    let file = std::fs::read_to_string(w.root.join("logs").join(format!("{r1}.log"))).unwrap();
    assert!(file.contains("install stdout installing"), "{file}");

    // Second deploy.
    let b = w.commit("v2", OK_INSTALL);
    let s2 = w.order(&b, OrderKind::Push).await;
    let healthy = w.bus.wait_outcome(s2).await;
    assert_eq!(healthy.state, AgentState::Healthy, "{healthy:?}");
    assert_eq!(healthy.previous_sha.as_deref(), Some(a.as_str()));
    let pid2 = w.wait_app("v2");
    assert_ne!(pid1, pid2);
    assert_eq!(w.app_pids(), vec![pid2 as i32], "exactly one app runs");
    assert_eq!(w.current(), format!("{s2}-{}", &b[..12]));
    let state = w.state_json();
    assert_eq!(state["floor"], s2);
    assert!(state["pending"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_failure_keeps_the_old_app() {
    let mut w = World::new().await;
    let (a, s1, _) = w.start_healthy_on_v1(OK_INSTALL).await;
    let pid = w.wait_app("v1");

    let b = w.commit("v2", "echo about to fail; exit 7\n");
    let s2 = w.order(&b, OrderKind::Push).await;
    let failed = w.bus.wait_outcome(s2).await;
    assert_eq!(failed.state, AgentState::Failed, "{failed:?}");
    assert!(
        failed.error.as_deref().unwrap().contains("exit code 7"),
        "{failed:?}"
    );
    assert_eq!(failed.running_sha.as_deref(), Some(a.as_str()));
    // The old app never stopped, the half-built release is gone, current unchanged.
    assert_eq!(w.wait_app("v1"), pid);
    assert_eq!(w.current(), format!("{s1}-{}", &a[..12]));
    assert!(!w
        .release_dirs()
        .iter()
        .any(|r| r.starts_with(&s2.to_string())));
    // Never switched: no start step for that order.
    assert!(!w
        .bus
        .statuses()
        .iter()
        .any(|s| s.seq == Some(s2) && s.step == Some(Step::Start)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_failure_rolls_back() {
    let mut w = World::with(Options {
        health_timeout_s: Some(3),
        ..Options::default()
    })
    .await;
    let (a, s1, _) = w.start_healthy_on_v1(OK_INSTALL).await;
    w.wait_app("v1");

    let b = w.commit_with("v2", OK_INSTALL, &[("UNHEALTHY", Some("yes"))]);
    let s2 = w.order(&b, OrderKind::Push).await;
    let out = w.bus.wait_outcome(s2).await;
    assert_eq!(out.state, AgentState::RolledBack, "{out:?}");
    assert_eq!(out.running_sha.as_deref(), Some(a.as_str()));
    assert!(out.error.as_deref().unwrap().contains("500"), "{out:?}");
    // The previous healthy release serves again, and only it.
    let pid = w.wait_app("v1");
    assert_eq!(w.app_pids(), vec![pid as i32]);
    assert_eq!(w.current(), format!("{s1}-{}", &a[..12]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_order_to_a_warm_release_skips_fetch_and_install() {
    let mut w = World::new().await;
    let (a, s1, _) = w.start_healthy_on_v1(OK_INSTALL).await;
    let b = w.commit("v2", OK_INSTALL);
    let s2 = w.order(&b, OrderKind::Push).await;
    assert_eq!(w.bus.wait_outcome(s2).await.state, AgentState::Healthy);
    w.wait_app("v2");

    // The origin loses the commit: a fetch would now fail, so success proves there was none.
    std::fs::remove_dir_all(&w.origin.bare).unwrap();
    let s3 = w.order(&a, OrderKind::Rollback).await;
    let out = w.bus.wait_outcome(s3).await;
    assert_eq!(out.state, AgentState::Healthy, "{out:?}");
    assert_eq!(out.running_sha.as_deref(), Some(a.as_str()));
    assert_eq!(
        out.release.as_deref(),
        Some(format!("{s1}-{}", &a[..12]).as_str())
    );
    w.wait_app("v1");
    assert_eq!(w.current(), format!("{s1}-{}", &a[..12]));
    let steps: Vec<Step> = w
        .bus
        .statuses()
        .iter()
        .filter(|s| s.seq == Some(s3))
        .filter_map(|s| s.step)
        .collect();
    assert!(
        !steps.contains(&Step::Install) && !steps.contains(&Step::Config),
        "{steps:?}"
    );
    assert!(!w
        .bus
        .logs()
        .iter()
        .any(|l| l.seq == Some(s3) && l.step == Some(Step::Install)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_order_supersedes_an_install() {
    let mut w = World::new().await;
    w.start_healthy_on_v1(OK_INSTALL).await;
    let pid1 = w.wait_app("v1");

    let b = w.commit("v2", "echo slow install; exec sleep 120\n");
    let s2 = w.order(&b, OrderKind::Push).await;
    w.bus
        .wait_status("install of seq 2", |s| {
            s.seq == Some(s2) && s.step == Some(Step::Install)
        })
        .await;
    eventually(WAIT, "the slow install to run", || {
        w.processes_in_root()
            .iter()
            .any(|(_, c)| c.contains("sleep 120"))
            .then_some(())
    });
    // The old app still serves while the superseded deploy installs.
    assert_eq!(w.wait_app("v1"), pid1);

    let c = w.commit("v3", OK_INSTALL);
    let s3 = w.order(&c, OrderKind::Push).await;
    let out = w.bus.wait_outcome(s3).await;
    assert_eq!(out.state, AgentState::Healthy, "{out:?}");
    w.wait_app("v3");
    // The superseded deploy left nothing: no release dir, no install process, no outcome.
    assert!(!w
        .release_dirs()
        .iter()
        .any(|r| r.starts_with(&s2.to_string())));
    assert!(!w
        .processes_in_root()
        .iter()
        .any(|(_, c)| c.contains("sleep 120")));
    assert!(!w
        .bus
        .statuses()
        .iter()
        .any(|s| s.seq == Some(s2) && !matches!(s.state, AgentState::Deploying)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_order_waits_for_a_deploy_past_the_switch() {
    let mut w = World::new().await;
    w.start_healthy_on_v1(OK_INSTALL).await;

    // v2 takes a while to listen: the order for v3 arrives during its health check.
    let b = w.commit_with("v2", OK_INSTALL, &[("DELAY", Some("1500"))]);
    let s2 = w.order(&b, OrderKind::Push).await;
    w.bus
        .wait_status("health of seq 2", |s| {
            s.seq == Some(s2) && s.step == Some(Step::Health)
        })
        .await;
    let c = w.commit("v3", OK_INSTALL);
    let s3 = w.order(&c, OrderKind::Push).await;
    assert_eq!(w.bus.wait_outcome(s3).await.state, AgentState::Healthy);
    w.wait_app("v3");
    // v2 finished (healthy) before v3 started.
    let statuses = w.bus.statuses();
    let done2 = statuses
        .iter()
        .position(|s| s.seq == Some(s2) && s.state == AgentState::Healthy)
        .expect("seq 2 finished healthy");
    let start3 = statuses.iter().position(|s| s.seq == Some(s3)).unwrap();
    assert!(done2 < start3, "seq 3 started before seq 2 finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_releases_are_pruned_keeping_current_and_newest_healthy() {
    let mut w = World::new().await;
    let mut last = String::new();
    // keep_releases = 3 in the test config.
    for v in 1..=5 {
        let sha = w.commit(&format!("v{v}"), OK_INSTALL);
        let seq = w.order(&sha, OrderKind::Push).await;
        if v == 1 {
            w.start_agent();
        }
        assert_eq!(w.bus.wait_outcome(seq).await.state, AgentState::Healthy);
        last = format!("{seq}-{}", &sha[..12]);
    }
    // Pruning runs once the deploy task has finished, just after its healthy status.
    let dirs = eventually(WAIT, "pruning down to 3 releases", || {
        Some(w.release_dirs()).filter(|d| d.len() <= 3)
    });
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    assert!(dirs.contains(&last));
    assert_eq!(w.current(), last);
}

/// Makes the release directory `releases/{name}` impossible to create, for root too: the
/// releases directory is made read-only (mode 0555) where that stops this process's
/// writes; where it does not (root, or CAP_DAC_OVERRIDE), a regular file is put where the
/// release directory must go. Undone by `undo`.
struct UnwritableRelease {
    releases: std::path::PathBuf,
    file: Option<std::path::PathBuf>,
}

impl UnwritableRelease {
    fn new(releases: &std::path::Path, name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |m| std::fs::set_permissions(releases, std::fs::Permissions::from_mode(m));
        mode(0o555).unwrap();
        let probe = releases.join(".probe");
        if std::fs::create_dir(&probe).is_err() {
            eprintln!("the releases directory is read-only (mode 0555)");
            return Self {
                releases: releases.to_owned(),
                file: None,
            };
        }
        // Permission bits do not bind this process (root): block the one path instead.
        std::fs::remove_dir(&probe).unwrap();
        mode(0o755).unwrap();
        let file = releases.join(name);
        std::fs::write(&file, "not a directory\n").unwrap();
        eprintln!("running as root: a regular file is in the way of the release directory");
        Self {
            releases: releases.to_owned(),
            file: Some(file),
        }
    }

    fn undo(&self) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&self.releases, std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some(f) = &self.file {
            std::fs::remove_file(f).unwrap();
        }
    }
}

impl Drop for UnwritableRelease {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt as _;
        // Let the temp dir be deleted whatever happened.
        let _ = std::fs::set_permissions(&self.releases, std::fs::Permissions::from_mode(0o755));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_release_dir_fails_clearly_and_the_old_app_keeps_serving() {
    let mut w = World::new().await;
    let (a, s1, _) = w.start_healthy_on_v1(OK_INSTALL).await;
    let pid = w.wait_app("v1");

    let b = w.commit("v2", OK_INSTALL);
    let s2 = w.next_seq();
    let name = format!("{s2}-{}", &b[..12]);
    let releases = w.root.join("releases");
    let blocked = UnwritableRelease::new(&releases, &name);
    w.bus.publish(&w.bus.order(s2, &b, OrderKind::Push)).await;
    let failed = w.bus.wait_outcome(s2).await;
    assert_eq!(failed.state, AgentState::Failed, "{failed:?}");
    assert_eq!(failed.running_sha.as_deref(), Some(a.as_str()));
    // The error names the path and says what to do.
    let error = failed.error.clone().unwrap();
    assert!(
        error.contains(&releases.join(&name).display().to_string()),
        "{error}"
    );
    assert!(
        error.contains(&format!("make {} writable", releases.display())),
        "{error}"
    );
    assert!(error.contains("free space"), "{error}");
    // So does the deploy's log, on the bus.
    assert!(
        w.bus
            .logs()
            .iter()
            .any(|l| l.seq == Some(s2) && l.line.contains(&error)),
        "{:?}",
        w.bus.logs()
    );
    // The old app never stopped and current did not move.
    assert_eq!(w.wait_app("v1"), pid);
    assert_eq!(w.current(), format!("{s1}-{}", &a[..12]));
    assert!(!w
        .bus
        .statuses()
        .iter()
        .any(|s| s.seq == Some(s2) && s.step == Some(Step::Start)));
    assert!(w.state_json()["pending"].is_null());

    // Once the directory is writable again, the next order deploys.
    blocked.undo();
    let s3 = w.order(&b, OrderKind::Push).await;
    let out = w.bus.wait_outcome(s3).await;
    assert_eq!(out.state, AgentState::Healthy, "{out:?}");
    assert_eq!(out.running_sha.as_deref(), Some(b.as_str()));
    let pid2 = w.wait_app("v2");
    assert_eq!(w.app_pids(), vec![pid2 as i32]);
    assert_eq!(w.current(), format!("{s3}-{}", &b[..12]));
}
