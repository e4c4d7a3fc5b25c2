//! kill -9 and restarts.

use orcastrate_broker::{AgentState, OrderKind, Step};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_install_retries_the_order_once_without_duplicating_the_app() {
    let mut w = World::new().await;
    let (_, _, first) = w.start_healthy_on_v1("true\n").await;
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
    eventually(WAIT, "first try", || {
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
    let (_, _, first) = w.start_healthy_on_v1("true\n").await;
    let pid = w.wait_app("v1");

    w.kill9(first);
    // The broker publishes the last will.
    w.bus
        .wait_status("offline (last will)", |s| s.state == AgentState::Offline)
        .await;
    let before = w.bus.statuses().len();
    let second = w.start_agent();
    eventually(WAIT, "adoption", || {
        w.agent_log(second)
            .contains("adopted the running app")
            .then_some(())
    });
    // Reconnected and re-published its status, with a new session.
    let st = w
        .bus
        .wait_status("healthy again", |s| s.state == AgentState::Healthy)
        .await;
    let again = eventually(WAIT, "new status", || w.bus.statuses().get(before).cloned());
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
async fn a_dead_app_is_restarted() {
    let mut w = World::new().await;
    w.start_healthy_on_v1("true\n").await;
    let pid = w.wait_app("v1");
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status();
    let pid2 = eventually(WAIT, "a restarted app", || {
        app_identity(w.app_port)
            .map(|(_, p)| p)
            .filter(|&p| p != pid)
    });
    assert_ne!(pid, pid2);
    assert_eq!(w.app_pids(), vec![pid2 as i32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_health_reports_unhealthy_and_recovery() {
    let mut w = World::new().await;
    let (_, s1, _) = w.start_healthy_on_v1("true\n").await;
    w.wait_app("v1");
    // The test app answers 500 on /health while this file exists.
    let flag = w.root.join("current/UNHEALTHY");
    std::fs::write(&flag, "1").unwrap();
    let bad = w
        .bus
        .wait_status("unhealthy", |s| s.state == AgentState::Unhealthy)
        .await;
    assert!(bad.error.as_deref().unwrap().contains("500"), "{bad:?}");
    assert_eq!(bad.seq, Some(s1));
    let n = w.bus.statuses().len();
    std::fs::remove_file(&flag).unwrap();
    eventually(WAIT, "healthy again", || {
        w.bus.statuses()[n..]
            .iter()
            .any(|s| s.state == AgentState::Healthy)
            .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_when_the_broker_comes_up_later_trying_servers_in_order() {
    // The first server never answers; the second comes up after the agent started.
    let dead = free_port();
    let late = free_port();
    let mut w = World::new().await;
    let text = std::fs::read_to_string(&w.config).unwrap().replace(
        &format!("server = [\"{}\"]", w.bus.url()),
        &format!("server = [\"mqtt://127.0.0.1:{dead}\", \"mqtt://127.0.0.1:{late}\"]"),
    );
    std::fs::write(&w.config, text).unwrap();
    let n = w.start_agent();
    eventually(WAIT, "a failed connection attempt", || {
        w.agent_log(n)
            .contains("cannot reach the MQTT server")
            .then_some(())
    });
    let bus = Bus::start_on(late, w.bus.signer_seed()).await;
    let a = w.commit("v1", "true\n");
    let seq = w.next_seq();
    bus.publish(&bus.order(seq, &a, OrderKind::Push)).await;
    assert_eq!(bus.wait_outcome(seq).await.state, AgentState::Healthy);
    w.wait_app("v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_interrupted_twice_is_given_up() {
    let mut w = World::new().await;
    let a = w.commit("v1", "true\n");
    let s1 = w.order(&a, OrderKind::Push).await;
    let mut run = w.start_agent();
    assert_eq!(w.bus.wait_outcome(s1).await.state, AgentState::Healthy);
    let pid = w.wait_app("v1");

    let b = w.commit("v2", "echo try; sleep 120\n");
    let s2 = w.order(&b, OrderKind::Push).await;
    for _ in 0..2 {
        let n = w.bus.statuses().len();
        eventually(WAIT, "an install of seq 2", || {
            w.bus.statuses()[n..]
                .iter()
                .any(|s| s.seq == Some(s2) && s.step == Some(Step::Install))
                .then_some(())
        });
        eventually(WAIT, "the install to run", || {
            w.processes_in_root()
                .iter()
                .any(|(_, c)| c.contains("sleep 120"))
                .then_some(())
        });
        w.kill9(run);
        run = w.start_agent();
    }
    let out = w.bus.wait_outcome(s2).await;
    assert_eq!(out.state, AgentState::Failed, "{out:?}");
    assert!(out.error.as_deref().unwrap().contains("gave up"), "{out:?}");
    assert_eq!(w.wait_app("v1"), pid);
    assert!(w.state_json()["pending"].is_null());
    assert!(!w
        .processes_in_root()
        .iter()
        .any(|(_, c)| c.contains("sleep 120")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_file_takes_the_floor_from_the_release_names() {
    let mut w = World::new().await;
    let (_, s1, first) = w.start_healthy_on_v1("true\n").await;
    let pid = w.wait_app("v1");
    w.kill9(first);
    std::fs::remove_file(w.root.join("state.json")).unwrap();

    let n = w.bus.statuses().len();
    let second = w.start_agent();
    eventually(WAIT, "the floor", || {
        w.agent_log(second)
            .contains("floor taken from the release directories")
            .then_some(())
    });
    // The retained order (seq s1) is not run again; the next one is.
    let b = w.commit("v2", "true\n");
    let s2 = w.order(&b, OrderKind::Push).await;
    assert_eq!(w.bus.wait_outcome(s2).await.state, AgentState::Healthy);
    assert!(!w.bus.statuses()[n..]
        .iter()
        .any(|s| s.seq == Some(s1) && s.state == AgentState::Deploying));
    // Without state.json the running app could not be adopted: it was replaced, not doubled.
    let pid2 = w.wait_app("v2");
    assert_ne!(pid, pid2);
    assert_eq!(w.app_pids(), vec![pid2 as i32]);
}
