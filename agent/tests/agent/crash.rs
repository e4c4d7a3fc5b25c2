//! kill -9 and restarts.

use orcastrate_broker::{AgentState, OrderKind, Step};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_install_retries_the_order_once_without_duplicating_the_app() {
    let mut w = World::new().await;
    let a = w.commit("v1", "true\n");
    let s1 = w.order(&a, OrderKind::Push).await;
    let first = w.start_agent();
    assert_eq!(w.bus.wait_outcome(s1).await.state, AgentState::Healthy);
    let pid1 = w.wait_app("v1");

    // The install takes long the first time only (a marker in shared/ remembers the try).
    let b = w.commit(
        "v2",
        "if [ -e uploads/tried ]; then echo second try; else touch uploads/tried; echo first try; sleep 120; fi\n",
    );
    let s2 = w.order(&b, OrderKind::Push).await;
    w.bus
        .wait_status("install of seq 2", |s| {
            s.seq == Some(s2) && s.step == Some(Step::Install)
        })
        .await;
    poll("first try", WAIT, || {
        w.processes_in_root()
            .iter()
            .any(|(_, c)| c.contains("sleep 120"))
            .then_some(())
    });
    w.kill9(first);
    // The app outlives the agent.
    assert_eq!(w.wait_app("v1"), pid1);

    let second = w.start_agent();
    let out = w.bus.wait_outcome(s2).await;
    assert_eq!(out.state, AgentState::Healthy, "{out:?}");
    let pid2 = w.wait_app("v2");
    assert_eq!(w.app_pids(), vec![pid2 as i32], "exactly one app runs");
    // The leftover install of the killed agent was killed, the retry ran.
    assert!(!w
        .processes_in_root()
        .iter()
        .any(|(_, c)| c.contains("sleep 120")));
    assert!(
        w.agent_log(second).contains("retrying it once"),
        "{}",
        w.agent_log(second)
    );
    assert!(w.bus.logs().iter().any(|l| l.line == "second try"));
    assert!(w.state_json()["pending"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_the_app_runs_adopts_it() {
    let mut w = World::new().await;
    let a = w.commit("v1", "true\n");
    let s1 = w.order(&a, OrderKind::Push).await;
    let first = w.start_agent();
    assert_eq!(w.bus.wait_outcome(s1).await.state, AgentState::Healthy);
    let pid = w.wait_app("v1");

    w.kill9(first);
    // The broker publishes the last will.
    w.bus
        .wait_status("offline (last will)", |s| s.state == AgentState::Offline)
        .await;
    let before = w.bus.statuses().len();
    let second = w.start_agent();
    poll("adoption", WAIT, || {
        w.agent_log(second)
            .contains("adopted the running app")
            .then_some(())
    });
    // Reconnected and re-published its status, with a new session.
    let st = w
        .bus
        .wait_status("healthy again", |s| s.state == AgentState::Healthy)
        .await;
    let again = poll("new status", WAIT, || w.bus.statuses().get(before).cloned());
    assert_ne!(again.session, st.session);
    // Same process: adopted, not restarted.
    assert_eq!(w.wait_app("v1"), pid);
    assert_eq!(w.app_pids(), vec![pid as i32]);

    // The adopted app is stopped properly by the next deploy.
    let b = w.commit("v2", "true\n");
    let s2 = w.order(&b, OrderKind::Push).await;
    assert_eq!(w.bus.wait_outcome(s2).await.state, AgentState::Healthy);
    let pid2 = w.wait_app("v2");
    assert_eq!(w.app_pids(), vec![pid2 as i32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_app_is_restarted_and_reported_unhealthy_meanwhile() {
    let mut w = World::new().await;
    let a = w.commit("v1", "true\n");
    let s1 = w.order(&a, OrderKind::Push).await;
    w.start_agent();
    assert_eq!(w.bus.wait_outcome(s1).await.state, AgentState::Healthy);
    let pid = w.wait_app("v1");
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status();
    let pid2 = poll("a restarted app", WAIT, || {
        app_identity(w.app_port)
            .map(|(_, p)| p)
            .filter(|&p| p != pid)
    });
    assert_ne!(pid, pid2);
    assert_eq!(w.app_pids(), vec![pid2 as i32]);
}
