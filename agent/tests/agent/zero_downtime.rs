//! `[proxy]`: a client hammering the public port across a deploy, a failing deploy, a
//! rollback, a no-op order and an agent restart sees no refused or failed request; a long
//! download and a WebSocket stay on the release they started on; the old app is gone
//! afterwards; the status names the private port of each release; a PROXY protocol header
//! gives the app the client's address.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use orcastrate_broker::{AgentState, AgentStatus, OrderKind};
use orcastrate_testkit::app::{answer, http_get, AppSocket};

use crate::common::*;

/// What the client saw.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failed: Vec<String>,
    /// The versions that answered, each run of equal answers once.
    versions: Vec<String>,
}

/// A client sending one request after another, each on a new connection, to `port`.
struct Hammer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Tally>,
}

impl Hammer {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut t = Tally::default();
            while !flag.load(Ordering::SeqCst) {
                match http_get(port, "/") {
                    Some((200, body)) => {
                        t.ok += 1;
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        let version = v["version"].as_str().unwrap_or_default().to_owned();
                        if t.versions.last() != Some(&version) {
                            t.versions.push(version);
                        }
                    }
                    other => t.failed.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            t
        });
        Self { stop, thread }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// A world whose agent serves the app behind `[proxy]` on `public` (with `more` keys of
/// it); the health check reaches each release on its private `{port}`.
async fn proxied_world(public: u16, on_shutdown: &str, more: &str) -> World {
    let w = World::with(Options {
        health_timeout_s: Some(5),
        on_shutdown: Some(on_shutdown.to_owned()),
        extra_tables: format!("\n[proxy]\nlisten = \"127.0.0.1:{public}\"\ndrain_s = 20\n{more}"),
        ..Options::default()
    })
    .await;
    let text = std::fs::read_to_string(&w.config).unwrap();
    let fixed = format!("http://127.0.0.1:{}/health", w.app_port);
    assert!(text.contains(&fixed));
    std::fs::write(
        &w.config,
        text.replace(&fixed, "http://127.0.0.1:{port}/health"),
    )
    .unwrap();
    w
}

/// The version and pid answering on `port`, once it is `version`.
fn serving(port: u16, version: &str) -> u64 {
    eventually(WAIT, &format!("{version} on port {port}"), || {
        answer(port)
            .filter(|a| a["version"] == version)
            .and_then(|a| a["pid"].as_u64())
    })
}

/// The private port `status` names, where `version` answers directly.
#[track_caller]
fn private_port(status: &AgentStatus, version: &str) -> u16 {
    let port = status
        .port
        .unwrap_or_else(|| panic!("no port in {status:?}"));
    assert_eq!(
        answer(port).map(|a| a["version"].clone()),
        Some(version.into()),
        "port {port} of {status:?}"
    );
    port
}

fn gone(pid: u64) {
    eventually(WAIT, &format!("app {pid} gone"), || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_failed_deploy_and_rollback_fail_no_request() {
    let public = free_port();
    let mut w = proxied_world(public, "stop", "").await;
    let (v1, seq, _) = w.start_healthy_on_v1("true").await;
    let port1 = private_port(&w.bus.wait_outcome(seq).await, "v1");
    let pid1 = serving(public, "v1");
    let hammer = Hammer::start(public);
    // A long download and a WebSocket, opened on v1 before the switch.
    let slow = std::thread::spawn(move || http_get(public, "/slow?ms=3000"));
    let mut socket = AppSocket::open(public).expect("the WebSocket upgrade");
    assert_eq!(socket.ask().as_deref(), Some("v1"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A deploy: v2 starts beside v1 on its own port and gets new connections once healthy.
    let v2 = w.commit("v2", "true");
    let seq = w.order(&v2, OrderKind::Push).await;
    let out = w.bus.wait_outcome(seq).await;
    assert_eq!(out.state, AgentState::Healthy);
    let port2 = private_port(&out, "v2");
    assert_ne!(port2, port1);
    let pid2 = serving(public, "v2");
    // The WebSocket stays on v1, which drains until it closes.
    assert_eq!(socket.ask().as_deref(), Some("v1"));
    let (code, body) = slow.join().unwrap().expect("the long download finished");
    assert_eq!(code, 200);
    assert_eq!(body.lines().filter(|l| *l == "v1").count(), 30, "{body}");
    assert_eq!(socket.ask().as_deref(), Some("v1"));
    drop(socket);
    gone(pid1);

    // A failing deploy never gets traffic, and v2 is never stopped.
    let v3 = w.commit_with("v3", "true", &[("UNHEALTHY", Some("1"))]);
    let seq = w.order(&v3, OrderKind::Push).await;
    let out = w.bus.wait_outcome(seq).await;
    assert_eq!(out.state, AgentState::Failed, "{out:?}");
    assert_eq!(out.port, Some(port2), "{out:?}");
    assert_eq!(serving(public, "v2"), pid2);
    eventually(WAIT, "only v2's app left", || {
        (w.app_pids() == [pid2 as i32]).then_some(())
    });

    // A rollback is the same switch, to the release on disk.
    let seq = w.order(&v1, OrderKind::Rollback).await;
    let out = w.bus.wait_outcome(seq).await;
    assert_eq!(out.state, AgentState::Healthy);
    let port3 = private_port(&out, "v1");
    assert_ne!(port3, port2);
    let pid1b = serving(public, "v1");
    gone(pid2);

    // The sha already serving healthy: nothing to do, no restart.
    let seq = w.order(&v1, OrderKind::Rollback).await;
    let out = w.bus.wait_outcome(seq).await;
    assert_eq!(out.state, AgentState::Healthy);
    assert_eq!(out.port, Some(port3));
    assert!(w
        .bus
        .logs()
        .iter()
        .any(|l| l.seq == Some(seq) && l.line.contains("nothing to do")));
    assert_eq!(serving(public, "v1"), pid1b);

    let t = hammer.finish();
    assert!(t.failed.is_empty(), "failed requests: {:?}", t.failed);
    assert_eq!(t.versions, ["v1", "v2", "v1"], "{t:?}");
    assert!(t.ok > 20, "{t:?}");
}

/// The agent binary with `listener` as the socket systemd would pass (fd 3, `LISTEN_FDS`).
fn agent_with_socket(w: &World, listener: &TcpListener) -> Command {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orcastrate-agent"));
    cmd.arg("--config")
        .arg(&w.config)
        .current_dir(w.dir.path())
        .env("RUST_LOG", "orcastrate_agent=debug,info")
        .env("LISTEN_FDS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    #[allow(unsafe_code)]
    // SAFETY: dup2 and fcntl are async-signal-safe and allocate nothing.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, 3) == 3
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_with_socket_activation_fails_no_request() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let public = listener.local_addr().unwrap().port();
    let mut w = proxied_world(public, "keep", "").await;
    let v1 = w.commit("v1", "true");
    let seq = w.order(&v1, OrderKind::Push).await;
    let first = w.push_agent(agent_with_socket(&w, &listener));
    let out = w.bus.wait_outcome(seq).await;
    assert_eq!(out.state, AgentState::Healthy, "{}", w.agent_log(first));
    let port = private_port(&out, "v1");
    let pid = serving(public, "v1");
    let hammer = Hammer::start(public);
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(w.terminate(first), Some(0), "{}", w.agent_log(first));
    let second = w.push_agent(agent_with_socket(&w, &listener));
    eventually(WAIT, "the new agent adopted the app", || {
        w.agent_log(second)
            .contains("adopted the running app")
            .then_some(())
    });
    // The new agent reports the adopted app's port.
    w.bus
        .wait_status("the adopted app's port", |s| {
            s.session != out.session && s.port == Some(port)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t = hammer.finish();
    assert!(t.failed.is_empty(), "failed requests: {:?}", t.failed);
    assert_eq!(t.versions, ["v1"]);
    assert_eq!(
        serving(public, "v1"),
        pid,
        "the app was adopted, not restarted"
    );
}

/// `[proxy] proxy_protocol`: the app (which, like nginx's `proxy_protocol`, refuses
/// connections without the header) reads the client's own address from it: here
/// 127.0.0.2, while the proxy connects from 127.0.0.1. The agent's health check gets
/// through too, with the header for local connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_gives_the_app_the_client_address() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for version in ["v1", "v2"] {
        let public = free_port();
        let mut w =
            proxied_world(public, "stop", &format!("proxy_protocol = \"{version}\"\n")).await;
        let v1 = w.commit_with("v1", "true", &[("PROXY_PROTOCOL", Some(""))]);
        let seq = w.order(&v1, OrderKind::Push).await;
        w.start_until_healthy(seq).await;

        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket
            .connect(([127, 0, 0, 1], public).into())
            .await
            .unwrap();
        let me = stream.local_addr().unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let seen: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(seen["client"], me.to_string(), "{version}: {text}");

        // Straight to the app, without the header: refused, so the header is what it read.
        let port = w.bus.wait_outcome(seq).await.port.unwrap();
        assert_eq!(http_get(port, "/"), None, "{version}");
    }
}
