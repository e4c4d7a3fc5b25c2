//! MQTT over WebSocket (issue 15): a real agent deploys through `ws://…/mqtt` on the
//! gateway's HTTP port (the one port a Heroku-style host gives a service), and through
//! `wss://` via a real nginx and a real Caddy, each terminating TLS with the README's
//! configuration; paho-mqtt (a client nobody here wrote) reads the retained order and fleet
//! summary both ways, and a wrong token is refused.
//!
//! Needs `nginx`, `caddy` and the PyPI `paho-mqtt` (see `.ci/run`): without them these tests
//! fail and say what to install.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::harness::*;

/// The gateway's MQTT over WebSocket URL.
fn ws_url(w: &World) -> String {
    format!("{}/mqtt", w.gateway.http.replacen("http://", "ws://", 1))
}

#[test]
fn an_agent_deploys_through_websocket_on_the_http_port() {
    let mut w = World::new();
    // The WebSocket URL first; plain MQTT stays usable beside it in the same list.
    let servers = [
        ws_url(&w),
        format!("mqtt://127.0.0.1:{}", w.gateway.mqtt_port),
    ];
    w.start_agent_on(&servers);
    let sha1 = w.commit("v1");
    let seq1 = w.push(&sha1);
    w.wait_healthy(seq1, &sha1);
    w.wait_app("v1");
    let logs = w.agent.as_ref().unwrap().logs.text();
    assert!(
        logs.contains("ws://127.0.0.1"),
        "the agent did not say it connected over WebSocket:\n{logs}"
    );
    let sha2 = w.commit("v2");
    let seq2 = w.push(&sha2);
    w.wait_healthy(seq2, &sha2);
    w.wait_app("v2");
}

#[test]
fn behind_nginx_an_agent_deploys_over_wss_and_paho_reads_the_bus() {
    through_the_readme_proxy(Proxy::Nginx);
}

#[test]
fn behind_caddy_an_agent_deploys_over_wss_and_paho_reads_the_bus() {
    through_the_readme_proxy(Proxy::Caddy);
}

/// The README's configuration of `kind` terminates TLS with a certificate made here: an
/// agent deploys through it over `wss://`, and paho-mqtt reads the bus through it and
/// directly, and is refused with a wrong token both ways.
fn through_the_readme_proxy(kind: Proxy) {
    let mut w = World::new();
    let tls = w.dir.path().join("tls");
    let (ca, cert, key) = certificates(&tls);
    let gateway_addr = w.gateway.http.trim_start_matches("http://").to_owned();
    let proxy = ReverseProxy::start(
        kind,
        &w.dir.path().join("proxy"),
        &gateway_addr,
        &cert,
        &key,
    );
    let wss = format!("wss://localhost:{}/mqtt", proxy.port);

    w.agent_top = format!("ca_file = {:?}\n", ca.display().to_string());
    w.start_agent_on(std::slice::from_ref(&wss));
    let sha1 = w.commit("v1");
    let seq1 = w.push(&sha1);
    w.wait_healthy(seq1, &sha1);
    w.wait_app("v1");
    let logs = w.agent.as_ref().unwrap().logs.text();
    assert!(logs.contains("wss://localhost"), "{logs}");

    // paho-mqtt reads the retained order and fleet summary through the proxy and directly.
    let topics = [topic("desired"), topic("fleet")];
    for (url, ca) in [(wss.as_str(), ca.as_path()), (&ws_url(&w), Path::new("-"))] {
        let (code, out) = paho(url, ca, WATCHER, WATCHER_TOKEN, &topics);
        assert_eq!(
            code,
            0,
            "paho over {url}: {out}\n{kind:?} log:\n{}",
            proxy.log()
        );
        let got = &out["got"];
        let order: Value = serde_json::from_str(got[&topics[0]].as_str().unwrap()).unwrap();
        assert_eq!(order["sha"], sha1.as_str(), "{url}: {order}");
        let fleet: Value = serde_json::from_str(got[&topics[1]].as_str().unwrap()).unwrap();
        assert!(fleet.to_string().contains(AGENT), "{url}: {fleet}");
        // A wrong token is refused with CONNACK 5 over WebSocket too.
        let (code, out) = paho(url, ca, WATCHER, "not-the-token", &topics);
        assert_eq!(code, 5, "paho over {url} with a wrong token: {out}");
        assert_eq!(out["connack"], "Not authorized", "{url}: {out}");
    }
    drop(proxy);
}

#[test]
fn behind_nginx_a_guesser_does_not_lock_out_the_clients_behind_it() {
    guesser_behind_the_readme_proxy(Proxy::Nginx);
}

#[test]
fn behind_caddy_a_guesser_does_not_lock_out_the_clients_behind_it() {
    guesser_behind_the_readme_proxy(Proxy::Caddy);
}

/// `[http] trusted_proxies` of the gateway behind the README's proxy.
const TRUSTED: &str = "[http]\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]\n";

/// The README's proxy in front of a gateway that lists it in `[http] trusted_proxies`, and
/// paho-mqtt logging in through it with wrong tokens: 30 clients (127.0.1.1 to 127.0.1.30)
/// once each are all checked, while one client (127.0.0.2) trying 30 times at once is
/// throttled, and a right login from 127.0.0.3 then gets in. Without `trusted_proxies` the
/// gateway would see one address, the proxy's, and throttle the 30 clients too.
fn guesser_behind_the_readme_proxy(kind: Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    let text = gateway_config(&dir.path().join("gateway-data"), mqtt_port) + TRUSTED;
    let gateway = Gateway::start_config(&text, mqtt_port);
    let (ca, cert, key) = certificates(&dir.path().join("tls"));
    let gateway_addr = gateway.http.trim_start_matches("http://").to_owned();
    let proxy = ReverseProxy::start(kind, &dir.path().join("proxy"), &gateway_addr, &cert, &key);
    let wss = format!("wss://localhost:{}/mqtt", proxy.port);

    let clients: Vec<String> = (1..=30).map(|n| format!("127.0.1.{n}")).collect();
    let each_once = paho_logins(&wss, &ca, &clients.join(","), "not-the-token", 30);
    assert_eq!(
        each_once["Not authorized"],
        30,
        "30 clients, one wrong login each, all checked: {each_once}\n{kind:?} log:\n{}",
        proxy.log()
    );
    let guesses = paho_logins(&wss, &ca, "127.0.0.2", "not-the-token", 30);
    assert!(
        guesses["Server unavailable"].as_u64().unwrap_or(0) > 0,
        "one client, 30 wrong logins at once, none throttled: {guesses}"
    );
    let other = paho_logins(&wss, &ca, "127.0.0.3", WATCHER_TOKEN, 1);
    assert_eq!(other["Success"], 1, "the other client: {other}");
}

/// Runs `tests/fixtures/paho/ws_logins.py`: how many of `count` logins at once as the
/// watcher from `binds` (comma-separated addresses, round robin) got each CONNACK reason.
fn paho_logins(url: &str, ca: &Path, binds: &str, token: &str, count: u32) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/paho/ws_logins.py");
    let out = Command::new("python3")
        .arg(script)
        .args([url, &ca.display().to_string(), binds, WATCHER, token])
        .arg(count.to_string())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "paho printed no result: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `tests/fixtures/paho/ws_retained.py`: its exit code and its JSON line.
fn paho(url: &str, ca: &Path, user: &str, token: &str, topics: &[String]) -> (i32, Value) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/paho/ws_retained.py");
    let check = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .output();
    assert!(
        check.is_ok_and(|o| o.status.success()),
        "paho-mqtt is not installed: python3 -m pip install paho-mqtt (.ci/run installs it)"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(url)
        .arg(ca)
        .args([user, token])
        .args(topics)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "paho printed no result: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// A private CA (its certificate is what clients trust) and a certificate it signed for
/// `localhost` and 127.0.0.1 with its key, made by openssl in `dir`: (ca, cert, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let file = |name: &str| dir.join(name);
    let ext = file("ext.cnf");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl is installed (apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "proxy.key",
        "-out",
        "proxy.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "proxy.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "proxy.crt",
    ]);
    (file("ca.crt"), file("proxy.crt"), file("proxy.key"))
}

/// The reverse proxies the README gives a configuration for.
#[derive(Debug, Clone, Copy)]
enum Proxy {
    Nginx,
    Caddy,
}

impl Proxy {
    /// The installed binary, or a panic that says how to install it.
    fn binary(self) -> &'static str {
        let (candidates, package) = match self {
            Proxy::Nginx => (
                ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"],
                "nginx",
            ),
            Proxy::Caddy => (
                ["/usr/bin/caddy", "/usr/local/bin/caddy", "/usr/sbin/caddy"],
                "caddy",
            ),
        };
        candidates
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!(
                    "{package} is not installed: apt-get install {package} (.ci/run installs it)"
                )
            })
    }

    /// The README's configuration as a foreground process in `dir`: TLS on loopback `port`
    /// with `cert`/`key`, forwarding to the gateway at `gateway_addr`.
    fn command(
        self,
        dir: &Path,
        port: u16,
        gateway_addr: &str,
        cert: &Path,
        key: &Path,
    ) -> Command {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let shared = [
            ("/etc/ssl/deploy.example.com.crt", cert.as_str()),
            ("/etc/ssl/deploy.example.com.key", key.as_str()),
            ("127.0.0.1:8080", gateway_addr),
        ];
        let d = dir.display();
        match self {
            Proxy::Nginx => {
                let listen = format!("listen 127.0.0.1:{port} ssl;");
                let site = readme_block("nginx", &shared, ("listen 443 ssl;", &listen));
                // Only the process settings around the README's block are the test's own.
                let conf = format!(
                    "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                     error_log {d}/error.log info;\n{user}\nevents {{ worker_connections 256; }}\n\
                     http {{\n access_log off;\n client_body_temp_path {d}/body;\n\
                     proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
                     uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{site}\n}}\n",
                    user = if is_root() { "user root;" } else { "" },
                );
                let conf_path = dir.join("nginx.conf");
                std::fs::write(&conf_path, conf).unwrap();
                let mut cmd = Command::new(self.binary());
                cmd.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log"));
                cmd.arg("-c").arg(conf_path);
                cmd
            }
            Proxy::Caddy => {
                let address = format!("https://localhost:{port} {{\n    bind 127.0.0.1");
                let site = readme_block("caddy", &shared, ("deploy.example.com {", &address));
                // The test's own global options: no admin endpoint (tests run side by side),
                // no ACME and no redirect listener on port 80, state in `dir`, no HTTP/3 (a
                // UDP port nobody reserved).
                let conf = format!(
                    "{{\n    admin off\n    auto_https off\n    skip_install_trust\n    \
                     storage file_system {d}/data\n    servers {{\n        protocols h1 h2\n    \
                     }}\n}}\n\n{site}"
                );
                let conf_path = dir.join("Caddyfile");
                std::fs::write(&conf_path, conf).unwrap();
                let mut cmd = Command::new(self.binary());
                cmd.args(["run", "--adapter", "caddyfile", "--config"]);
                cmd.arg(conf_path);
                for var in ["HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"] {
                    cmd.env(var, dir);
                }
                cmd
            }
        }
    }
}

/// A reverse proxy run as a test process (not a daemon) with the README's configuration.
struct ReverseProxy {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl ReverseProxy {
    fn start(kind: Proxy, dir: &Path, gateway_addr: &str, cert: &Path, key: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = kind
            .command(dir, port, gateway_addr, cert, key)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{kind:?} starts: {e}"));
        let mut proxy = Self {
            port,
            dir: dir.to_owned(),
            child,
        };
        orcastrate_testkit::eventually(WAIT, &format!("{kind:?} to listen"), || {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("{kind:?} exited with {status}:\n{}", proxy.log());
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        proxy
    }

    /// What the proxy logged (nginx's error log, Caddy's standard error).
    fn log(&self) -> String {
        ["error.log", "stderr.log"]
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .concat()
    }
}

impl Drop for ReverseProxy {
    fn drop(&mut self) {
        // SIGTERM lets nginx's master stop its worker; SIGKILL would leave the worker behind.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The ```{lang} block of the workspace README (the configuration users copy is the one
/// tested) with the shared replacements and then `own` made; each must match, so a README
/// edit cannot quietly leave the test running something else.
fn readme_block(lang: &str, shared: &[(&str, &str)], own: (&str, &str)) -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(readme).unwrap();
    let fence = format!("```{lang}\n");
    let start = text
        .find(&fence)
        .unwrap_or_else(|| panic!("README has no {lang} block"))
        + fence.len();
    let len = text[start..].find("```").unwrap();
    let mut block = text[start..start + len].to_owned();
    for (from, to) in shared.iter().chain([&own]) {
        assert!(
            block.contains(from),
            "the README's {lang} block no longer has `{from}`: update this test with it"
        );
        block = block.replace(from, to);
    }
    block
}
