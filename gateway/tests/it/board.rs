//! Issue 17: the board's page, its sign-in (session cookie + CSRF token), the viewer's
//! read-only rights, and the live stream, over plain HTTP.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use orcastrate_testkit::http;
use serde_json::{json, Value};

use crate::common::*;

const VIEWER: &str = "viewer-token-0123456789";

fn start(dir: &std::path::Path) -> TestGateway {
    let text = config_text(dir, 0, SECRET, "").replace(
        "[admin]\n",
        &format!("[admin]\nviewer_tokens = [\"{VIEWER}\"]\n"),
    );
    TestGateway::start_config(dir, &text)
}

/// Signs in with `token`; returns the status, the `Cookie` header to send back, the
/// `Set-Cookie` text and the body.
fn sign_in(gw: &TestGateway, token: &str) -> (u16, String, String, Value) {
    let mut r = http::client()
        .post(&format!("{}/api/v1/session", gw.http))
        .send_json(json!({ "token": token }))
        .expect("request sent");
    let status = r.status().as_u16();
    let set = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let cookie = set.split(';').next().unwrap_or("").to_owned();
    let body = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null);
    (status, cookie, set, body)
}

fn with_cookie(
    gw: &TestGateway,
    method: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", gw.http);
    let c = http::client();
    let result = match method {
        "GET" => {
            let mut req = c.get(&url).header("Cookie", cookie);
            if let Some(t) = csrf {
                req = req.header("X-CSRF-Token", t);
            }
            req.call()
        }
        "DELETE" => {
            let mut req = c.delete(&url).header("Cookie", cookie);
            if let Some(t) = csrf {
                req = req.header("X-CSRF-Token", t);
            }
            req.call()
        }
        _ => {
            let mut req = c.post(&url).header("Cookie", cookie);
            if let Some(t) = csrf {
                req = req.header("X-CSRF-Token", t);
            }
            req.send_json(body.unwrap_or(Value::Null))
        }
    };
    http::answer(result)
}

#[test]
fn the_page_is_served_from_the_binary_and_names_its_parts() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path());
    let (status, page) = http::get_text(&format!("{}/", gw.http));
    assert_eq!(status, 200);
    assert!(
        page.contains("/board.js") && page.contains("/board.css"),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no CDN: {page}"
    );
    for path in ["/board.js", "/board.css"] {
        let (status, text) = http::get_text(&format!("{}{path}", gw.http));
        assert_eq!(status, 200, "{path}");
        assert!(text.len() > 500, "{path}");
    }
    let weight = orcastrate_gateway::board::PAGE_BYTES;
    println!("board page weight (HTML+CSS+JS, uncompressed): {weight} bytes");
    assert!(weight < 64 * 1024, "the page stays light: {weight} bytes");
    gw.stop();
}

#[test]
fn a_session_cookie_is_strict_and_writes_need_its_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path());
    let (status, _, _, body) = sign_in(&gw, "wrong-token-0123456789");
    assert_eq!(status, 401, "{body}");

    let (status, cookie, set, body) = sign_in(&gw, ADMIN);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "admin");
    assert_eq!(
        body["github_web"], "https://github.com",
        "commit links by default"
    );
    for part in ["HttpOnly", "SameSite=Strict", "Max-Age=", "Path=/"] {
        assert!(set.contains(part), "{part} in {set}");
    }
    assert!(!set.contains(ADMIN), "the token is not the cookie");
    let csrf = body["csrf"].as_str().unwrap().to_owned();

    // Reads need only the cookie.
    let (status, _) = with_cookie(&gw, "GET", "/api/v1/deployments", &cookie, None, None);
    assert_eq!(status, 200);
    let (status, who) = with_cookie(&gw, "GET", "/api/v1/session", &cookie, None, None);
    assert_eq!((status, who["csrf"].as_str()), (200, Some(csrf.as_str())));

    // A write without (or with a wrong) CSRF token is refused, and changes nothing.
    let pause = json!({ "repo": REPO, "env": ENV });
    let (status, e) = with_cookie(
        &gw,
        "POST",
        "/api/v1/pause",
        &cookie,
        None,
        Some(pause.clone()),
    );
    assert_eq!(status, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("X-CSRF-Token"), "{e}");
    let (status, _) = with_cookie(
        &gw,
        "POST",
        "/api/v1/pause",
        &cookie,
        Some("forged"),
        Some(pause.clone()),
    );
    assert_eq!(status, 403);
    assert_eq!(gw.count("SELECT COUNT(*) FROM paused"), 0);

    // With it, the write is done.
    let (status, e) = with_cookie(
        &gw,
        "POST",
        "/api/v1/pause",
        &cookie,
        Some(&csrf),
        Some(pause),
    );
    assert_eq!(status, 200, "{e}");
    assert_eq!(gw.count("SELECT COUNT(*) FROM paused"), 1);

    // Signing out needs the token too, and ends the session.
    let (status, _) = with_cookie(&gw, "DELETE", "/api/v1/session", &cookie, None, None);
    assert_eq!(status, 403);
    let (status, _) = with_cookie(&gw, "DELETE", "/api/v1/session", &cookie, Some(&csrf), None);
    assert_eq!(status, 200);
    let (status, _) = with_cookie(&gw, "GET", "/api/v1/deployments", &cookie, None, None);
    assert_eq!(status, 401, "the session ended");
    gw.stop();
}

#[test]
fn a_viewer_reads_but_every_write_is_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path());
    let (status, cookie, _, body) = sign_in(&gw, VIEWER);
    assert_eq!((status, body["role"].as_str()), (200, Some("viewer")));
    let csrf = body["csrf"].as_str().unwrap().to_owned();
    let (status, _) = with_cookie(&gw, "GET", "/api/v1/agents", &cookie, None, None);
    assert_eq!(status, 200);
    let body = json!({ "repo": REPO, "env": ENV });
    for path in [
        "/api/v1/pause",
        "/api/v1/resume",
        "/api/v1/rollback",
        "/api/v1/rollouts/abort",
    ] {
        let (status, e) = with_cookie(&gw, "POST", path, &cookie, Some(&csrf), Some(body.clone()));
        assert_eq!(status, 403, "{path}: {e}");
        assert!(e["error"].as_str().unwrap().contains("read-only"), "{e}");
    }
    // The viewer token as a bearer token: the same rights.
    let (status, _) = http::get_bearer(&format!("{}/api/v1/deployments", gw.http), VIEWER);
    assert_eq!(status, 200);
    let (status, _) = http::post_bearer(&format!("{}/api/v1/pause", gw.http), VIEWER, &body);
    assert_eq!(status, 403);
    assert_eq!(gw.count("SELECT COUNT(*) FROM paused"), 0);
    gw.stop();
}

/// Reads SSE lines until a `data:` line containing `needle`.
fn wait_event(reader: &mut BufReader<TcpStream>, needle: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("stream open");
        assert!(n > 0, "stream ended before {needle}");
        if line.starts_with("data:") && line.contains(needle) {
            return line;
        }
    }
}

/// Ledger batches the sequencer has committed so far (`/metrics`).
fn batches(gw: &TestGateway) -> u64 {
    let metrics = gw.metrics();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("orcastrate_ledger_commit_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no batch count in {metrics}"))
}

#[test]
fn the_stream_sends_a_snapshot_and_then_each_change_and_reads_nothing_while_idle() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path());
    let (_, cookie, _, _) = sign_in(&gw, VIEWER);
    let (mut reader, head) = open_stream(&gw, &cookie, "Accept: text/event-stream\r\n");
    assert!(head.contains("200"), "{head}");
    wait_event(&mut reader, "\"deployments\":[]");
    let pushed = Instant::now();
    let (status, _) = gw.webhook("push", "board-1", &push_of(&sha(1), "master"));
    assert_eq!(status, 202);
    wait_event(&mut reader, &sha(1));
    println!(
        "board stream: a new order reached the stream {} ms after its webhook was answered",
        pushed.elapsed().as_millis()
    );
    // Watched but idle, the board reads nothing: only the rollout ticker's batch, about one
    // a second, reaches the ledger (polling read it four times per 200 ms).
    std::thread::sleep(Duration::from_millis(500));
    let before = batches(&gw);
    std::thread::sleep(Duration::from_secs(2));
    let idle = batches(&gw) - before;
    assert!(
        idle <= 6,
        "{idle} ledger batches in 2 s of an idle, watched board"
    );
    // Without a session the stream is refused.
    let (status, _) = http::get_text(&format!("{}/api/v1/stream", gw.http));
    assert_eq!(status, 401);
    gw.stop();
}

/// Opens a raw stream request with `cookie` and `headers` (each ending in CRLF); returns
/// the connection and its status line.
fn open_stream(gw: &TestGateway, cookie: &str, headers: &str) -> (BufReader<TcpStream>, String) {
    let addr = gw.http.trim_start_matches("http://").to_owned();
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "GET /api/v1/stream HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n{headers}\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(conn);
    let mut head = String::new();
    reader.read_line(&mut head).unwrap();
    (reader, head)
}

#[test]
fn streams_are_capped_and_a_session_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path());
    let (_, cookie, _, body) = sign_in(&gw, ADMIN);
    let csrf = body["csrf"].as_str().unwrap().to_owned();
    let open: Vec<_> = (0..orcastrate_gateway::http::stream::MAX_STREAMS)
        .map(|i| {
            let (reader, head) = open_stream(&gw, &cookie, "");
            assert!(head.contains("200"), "stream {i}: {head}");
            reader
        })
        .collect();
    let (_, head) = open_stream(&gw, &cookie, "");
    assert!(head.contains("503"), "one past the cap: {head}");
    drop(open);
    gw.stop();

    // The same secrets after a restart: the browser's cookie and CSRF token still work.
    let gw = start(dir.path());
    let (status, who) = with_cookie(&gw, "GET", "/api/v1/session", &cookie, None, None);
    assert_eq!((status, who["csrf"].as_str()), (200, Some(csrf.as_str())));
    let (_, head) = open_stream(&gw, &cookie, "");
    assert!(head.contains("200"), "{head}");
    gw.stop();
}

/// Commit links follow `[github] api_url`: GitHub Enterprise Server's own address, not
/// github.com.
#[test]
fn commit_links_go_to_the_github_that_api_url_names() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), 0, SECRET, "").replace(
        "[github]\n",
        "[github]\napi_url = \"https://ghe.example.com/api/v3\"\n",
    );
    assert!(text.contains("ghe.example.com"), "{text}");
    let gw = TestGateway::start_config(dir.path(), &text);
    let (status, cookie, _, body) = sign_in(&gw, ADMIN);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["github_web"], "https://ghe.example.com");
    let (_, who) = with_cookie(&gw, "GET", "/api/v1/session", &cookie, None, None);
    assert_eq!(who["github_web"], "https://ghe.example.com");
}
