//! Every webhook answer of the design, in its order, with real GitHub payloads.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use orcastrate_broker::{DeployOrder, Event, OrderVerifier};
use orcastrate_gateway::github;
use serde_json::Value;

use crate::common::*;

/// The first order a new subscriber to `filter` gets: the retained one.
#[track_caller]
fn retained_order(gw: &TestGateway, filter: &str, what: &str) -> DeployOrder {
    let mut sub = gw.mqtt("ops", "token-ops");
    sub.subscribe(filter);
    let (_, payload) = sub
        .wait_for(Duration::from_secs(5), |_, _| true)
        .expect(what);
    serde_json::from_slice(&payload).unwrap()
}

fn deliveries(gw: &TestGateway) -> i64 {
    gw.count("SELECT COUNT(*) FROM deliveries")
}

fn orders(gw: &TestGateway) -> i64 {
    gw.count("SELECT COUNT(*) FROM orders")
}

/// A watcher of the fixture repo's events, from now on.
fn watch_events(gw: &TestGateway) -> Mqtt {
    let mut events = gw.mqtt("ops", "token-ops");
    events.subscribe("orcastrate/codertocat/hello-world/events");
    events.flush();
    events
}

#[test]
fn push_to_mapped_branch_becomes_a_signed_retained_order() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let mut events = watch_events(&gw);

    let body = fixture("push__with-new-branch.payload.json");
    let (status, answer) = gw.webhook("push", "delivery-1", &body);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["repo"], REPO);
    assert_eq!(answer["env"], ENV);
    assert_eq!(answer["sha"], "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    assert_eq!(answer["delivery"], "delivery-1");
    let seq = answer["seq"].as_u64().unwrap();
    // Durable before the answer.
    assert_eq!(orders(&gw), 1);

    // A subscriber that comes later gets the retained order, verifiable with the public key.
    let order = retained_order(
        &gw,
        "orcastrate/codertocat/hello-world/production/desired",
        "retained order",
    );
    assert_eq!(order.seq, seq);
    assert_eq!(order.kind.as_str(), "push");
    assert_eq!(order.git_ref.as_deref(), Some("refs/heads/master"));
    assert_eq!(order.delivery.as_deref(), Some("delivery-1"));
    assert_eq!(order.issued_by.as_deref(), Some("github:Codertocat"));
    OrderVerifier::new(std::slice::from_ref(&gw.public_key))
        .unwrap()
        .verify(&order)
        .unwrap();

    let (_, payload) = events
        .wait_for(Duration::from_secs(5), |_, _| true)
        .expect("accepted event");
    let event: Event = serde_json::from_slice(&payload).unwrap();
    assert_eq!(event.delivery, "delivery-1");
    assert_eq!(event.seq, Some(seq));
    assert_eq!(
        serde_json::to_value(event.outcome).unwrap(),
        Value::from("accepted")
    );
}

#[test]
fn merged_pull_request_then_push_of_same_sha_makes_one_order() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let (pr, merge_sha) = merged_pull_request();
    let (status, answer) = gw.webhook("pull_request", "pr-1", &serde_json::to_vec(&pr).unwrap());
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["sha"], merge_sha.as_str());
    let (_, history) =
        gw.admin_get("/api/v1/deployments?repo=codertocat/hello-world&env=production");
    assert_eq!(history["deployments"][0]["kind"], "merge");

    // GitHub's merge button also sends the push of the same commit.
    let (status, answer) = gw.webhook("push", "push-1", &push_of(&merge_sha, "master"));
    assert_eq!(status, 202);
    let reason = answer["ignored"].as_str().unwrap();
    assert!(reason.contains("already the newest order"), "{reason}");
    assert_eq!(orders(&gw), 1);
    assert_eq!(deliveries(&gw), 2);
}

#[test]
fn valid_webhooks_that_deploy_nothing_are_ignored_with_a_reason() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let mut other_repo: Value = serde_json::from_slice(&push_of(&sha(9), "master")).unwrap();
    other_repo["repository"]["full_name"] = "someone/else".into();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("push", fixture("push__payload.json"), "tag push"),
        (
            "push",
            push_of("0000000000000000000000000000000000000000", "master"),
            "deleted",
        ),
        ("push", push_of(&sha(1), "feature-x"), "not mapped"),
        (
            "push",
            serde_json::to_vec(&other_repo).unwrap(),
            "not configured",
        ),
        (
            "pull_request",
            fixture("pull_request__closed.payload.json"),
            "without merging",
        ),
        (
            "pull_request",
            fixture("pull_request__opened.payload.json"),
            "opened",
        ),
        (
            "issues",
            br#"{"action":"opened","repository":{"full_name":"Codertocat/Hello-World"}}"#.to_vec(),
            "does not deploy",
        ),
    ];
    for (i, (event, body, reason)) in cases.into_iter().enumerate() {
        let (status, answer) = gw.webhook(event, &format!("ignored-{i}"), &body);
        assert_eq!(status, 202, "case {i}: {answer}");
        let got = answer["ignored"].as_str().unwrap_or_default();
        assert!(
            got.contains(reason),
            "case {i}: {got:?} should mention {reason:?}"
        );
    }
    assert_eq!(orders(&gw), 0);
    assert_eq!(deliveries(&gw), 7);
}

#[test]
fn ping_is_200() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let (status, answer) = gw.webhook("ping", "ping-1", &fixture("ping__payload.json"));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(orders(&gw), 0);
}

#[test]
fn form_encoded_body_is_accepted() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let payload = String::from_utf8(push_of(&sha(5), "master")).unwrap();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload)
        .finish();
    let sig = github::sign(SECRET, body.as_bytes());
    let (status, answer) = gw.raw_webhook(
        "/pullrequest",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "form-1"),
            ("X-Hub-Signature-256", &sig),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["sha"], sha(5).as_str());
}

#[test]
fn refusals_come_in_the_designs_order_and_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(dir.path(), "[http]\nmax_body_bytes = 20000\n");
    let body = push_of(&sha(7), "master");
    let good = github::sign(SECRET, &body);
    let headers = |sig: &'static str, ct: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![
            ("Content-Type", ct),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "refused-1"),
            ("X-Hub-Signature-256", sig),
        ]
    };
    let good: &'static str = Box::leak(good.into_boxed_str());

    // 413 comes first, even with a wrong signature.
    let big = vec![b' '; 20001];
    let (status, answer) =
        gw.raw_webhook("/webhook", &headers("sha256=00", "application/json"), &big);
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("max_body_bytes"));

    // 401: missing, wrong, sha1-only, malformed.
    let (status, _) = gw.raw_webhook(
        "/webhook",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "x"),
        ],
        &body,
    );
    assert_eq!(status, 401);
    let forged = github::sign("not-the-secret", &body);
    let forged: &'static str = Box::leak(forged.into_boxed_str());
    for sig in [
        forged,
        "sha1=0123456789abcdef0123456789abcdef01234567",
        "sha256=nothex",
        "garbage",
    ] {
        let (status, answer) = gw.raw_webhook("/webhook", &headers(sig, "text/plain"), &body);
        assert_eq!(status, 401, "{sig}: {answer}");
        assert!(answer["error"]
            .as_str()
            .unwrap()
            .contains("X-Hub-Signature-256"));
    }

    // 415 after the signature passed.
    let (status, answer) = gw.raw_webhook("/webhook", &headers(good, "text/plain"), &body);
    assert_eq!(status, 415, "{answer}");

    // 400: missing headers, malformed payloads.
    let (status, _) = gw.raw_webhook(
        "/webhook",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Delivery", "x"),
            ("X-Hub-Signature-256", good),
        ],
        &body,
    );
    assert_eq!(status, 400);
    let (status, _) = gw.raw_webhook(
        "/webhook",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", good),
        ],
        &body,
    );
    assert_eq!(status, 400);
    for bad in [
        &b"{not json"[..],
        br#"{"ref":"refs/heads/master"}"#,
        br#"[]"#,
    ] {
        let (status, answer) = gw.webhook("push", "bad-json", bad);
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"]
            .as_str()
            .unwrap()
            .contains("malformed push payload"));
    }
    let (status, _) = gw.raw_webhook(
        "/webhook",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "form-bad"),
            (
                "X-Hub-Signature-256",
                Box::leak(github::sign(SECRET, b"nopayload=1").into_boxed_str()),
            ),
        ],
        b"nopayload=1",
    );
    assert_eq!(status, 400);
    assert_eq!(deliveries(&gw), 0, "refused webhooks leave nothing behind");
    assert_eq!(orders(&gw), 0);
}

#[test]
fn githubs_signature_test_vector_passes_the_signature_check() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with_secret(dir.path(), "It's a Secret to Everybody", "");
    let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let send = |sig: &str| {
        gw.raw_webhook(
            "/webhook",
            &[
                ("Content-Type", "application/json"),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "vector"),
                ("X-Hub-Signature-256", sig),
            ],
            b"Hello, World!",
        )
    };
    // The signature is right, so the next check (payload) is the one that refuses.
    assert_eq!(send(header).0, 400);
    assert_eq!(send(&header.replace("757", "758")).0, 401);
}

#[test]
fn body_over_the_limit_is_refused_before_it_is_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(dir.path(), "[http]\nmax_body_bytes = 1000\n");
    let addr = gw.http.trim_start_matches("http://").to_owned();
    // A push's head with `length` (the body's framing header) and `delivery`, sent raw.
    let post = |length: &str, delivery: &str| {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: sha256=00\r\n\r\n"
        )
        .unwrap();
        stream
    };
    // Announce 100 MB and send only the headers: the answer must come without the body.
    let mut stream = post("Content-Length: 100000000", "big");
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // Chunked, with no length announced: cut off at the limit. The gateway may answer and
    // close while chunks are still being sent: a write that fails then is the point.
    let mut stream = post("Transfer-Encoding: chunked", "big2");
    let chunk = vec![b'x'; 600];
    let _ = (0..3).try_for_each(|_| {
        write!(stream, "{:x}\r\n", chunk.len())?;
        stream.write_all(&chunk)?;
        stream.write_all(b"\r\n")
    });
    let n = stream.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[test]
fn duplicate_delivery_before_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let body = push_of(&sha(11), "master");
    let gw = TestGateway::start(dir.path());
    assert_eq!(gw.webhook("push", "dup-1", &body).0, 202);
    let (status, answer) = gw.webhook("push", "dup-1", &body);
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    gw.stop();

    let gw = TestGateway::start(dir.path());
    let (status, answer) = gw.webhook("push", "dup-1", &body);
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    assert_eq!(orders(&gw), 1);
}

#[test]
fn orders_survive_a_restart_and_are_republished() {
    let (dir, gw) = TestGateway::start_in_temp();
    let (_, answer) = gw.webhook("push", "s-1", &push_of(&sha(21), "master"));
    let seq = answer["seq"].as_u64().unwrap();
    let key = gw.public_key.clone();
    gw.stop();

    let gw = TestGateway::start(dir.path());
    assert_eq!(gw.public_key, key, "the signing key persists");
    let order = retained_order(
        &gw,
        "orcastrate/+/+/+/desired",
        "order re-published after restart",
    );
    assert_eq!(order.seq, seq);
    // The next order still gets a higher seq.
    let (_, answer) = gw.webhook("push", "s-2", &push_of(&sha(22), "master"));
    assert!(answer["seq"].as_u64().unwrap() > seq);
}

#[test]
fn paused_env_records_webhooks_without_orders() {
    let (_dir, gw) = TestGateway::start_in_temp();
    // `pause` or `resume` our repo/env.
    let admin = |action: &str| {
        let (status, _) = gw.admin_post(
            &format!("/api/v1/{action}"),
            serde_json::json!({"repo": REPO, "env": ENV}),
        );
        assert_eq!(status, 200, "{action}");
    };
    admin("pause");
    let (status, answer) = gw.webhook("push", "p-1", &push_of(&sha(31), "master"));
    assert_eq!(status, 202);
    assert!(answer["ignored"].as_str().unwrap().contains("paused"));
    assert_eq!(orders(&gw), 0);
    assert_eq!(deliveries(&gw), 1);
    admin("resume");
    let (status, answer) = gw.webhook("push", "p-2", &push_of(&sha(31), "master"));
    assert_eq!(status, 202);
    assert_eq!(answer["sha"], sha(31).as_str());
}

#[test]
fn https_listener_accepts_signed_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path());
    let extra = format!("[http]\ntls_cert = {cert:?}\ntls_key = {key:?}\n");
    let gw = TestGateway::start_with(&dir.path().join("data"), &extra);
    let port = gw.http.rsplit(':').next().unwrap().to_owned();
    let body_file = dir.path().join("push.json");
    let body = push_of(&sha(71), "master");
    std::fs::write(&body_file, &body).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            "X-GitHub-Event: push",
        ])
        .args(["-H", "X-GitHub-Delivery: tls-1"])
        .args([
            "-H",
            &format!("X-Hub-Signature-256: {}", github::sign(SECRET, &body)),
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!("https://localhost:{port}/webhook"))
        .output()
        .expect("curl is installed");
    assert!(out.status.success(), "{out:?}");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["sha"], sha(71).as_str(), "{answer}");
    // Plain HTTP is not spoken there.
    let plain = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/healthz"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
}

/// Issue 10, finding 6: a captured signed push body re-sent with a new `X-GitHub-Delivery`
/// made a new order for an old sha (the signature does not cover the delivery header).
#[test]
fn r10_replayed_body_with_a_new_delivery_id_is_a_duplicate_before_and_after_restart() {
    let (dir, gw) = TestGateway::start_in_temp();
    let mut events = watch_events(&gw);
    let history = |gw: &TestGateway| {
        let (status, v) =
            gw.admin_get("/api/v1/deployments?repo=codertocat/hello-world&env=production");
        assert_eq!(status, 200, "{v}");
        v["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["sha"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let captured = push_of(&sha(41), "master");
    assert_eq!(gw.webhook("push", "genuine-1", &captured).0, 202);
    assert_eq!(
        gw.webhook("push", "genuine-2", &push_of(&sha(42), "master"))
            .0,
        202
    );

    // The captured body again, under a delivery id never seen: a duplicate, no order.
    let (status, answer) = gw.webhook("push", "replay-1", &captured);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert!(
        answer["reason"].as_str().unwrap().contains("genuine-1"),
        "{answer}"
    );
    assert_eq!(history(&gw), [sha(42), sha(41)]);
    let duplicate = events
        .wait_for(Duration::from_secs(5), |_, p| {
            serde_json::from_slice::<Event>(p).is_ok_and(|e| e.delivery == "replay-1")
        })
        .expect("an event for the replay");
    let event: Event = serde_json::from_slice(&duplicate.1).unwrap();
    assert_eq!(
        serde_json::to_value(event.outcome).unwrap(),
        Value::from("duplicate")
    );
    // A new body (a new push of a new sha) still deploys.
    let (status, answer) = gw.webhook("push", "genuine-3", &push_of(&sha(43), "master"));
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["sha"], sha(43).as_str());
    let metrics = gw.metrics();
    assert!(
        metrics.contains("orcastrate_webhooks_total{outcome=\"duplicate\"} 1"),
        "{metrics}"
    );
    gw.stop();

    // The ledger remembers the body across a restart.
    let gw = TestGateway::start(dir.path());
    let (status, answer) = gw.webhook("push", "replay-2", &captured);
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    assert_eq!(history(&gw), [sha(43), sha(42), sha(41)]);
    assert_eq!(deliveries(&gw), 3, "a replay is not recorded as a delivery");
}

/// Sends `request` as raw bytes on a new connection and returns everything the gateway
/// answers until it closes the connection (or 5 s pass).
fn exchange(gw: &TestGateway, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(gw.http.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// The head of a push request, framed by `framing` (`Content-Length` or
/// `Transfer-Encoding` lines), with `extra` header lines (each ending in CRLF).
fn push_head(delivery: &str, framing: &str, extra: &str) -> String {
    format!(
        "POST /webhook HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\n{extra}{framing}\r\n\r\n"
    )
}

/// Closes the connection after the answer (so [`exchange`] returns at once).
const CLOSE: &str = "Connection: close\r\n";

/// `body` as one chunk of chunked transfer coding, then the last chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    [
        format!("{:x}\r\n", body.len()).as_bytes(),
        body,
        b"\r\n0\r\n\r\n",
    ]
    .concat()
}

/// `X-Hub-Signature` (the SHA-1 one GitHub still sends) of `body`, made by openssl.
fn sha1_signature(secret: &str, body: &[u8]) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha1", "-hmac", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha1={}", text.trim().rsplit(' ').next().unwrap())
}

/// Issue 10, what held: a signature is refused when it is another body's, only the SHA-1
/// one (`X-Hub-Signature`, valid), truncated, or a forged one sent before the genuine one
/// in a duplicated header. Nothing is recorded.
#[test]
fn r10_signatures_of_another_body_sha1_only_truncated_or_duplicated_are_refused() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let body = push_of(&sha(51), "master");
    let genuine = orcastrate_testkit::github::signature(SECRET, &body);
    let other_body = orcastrate_testkit::github::signature(SECRET, &push_of(&sha(52), "master"));
    let sha1 = sha1_signature(SECRET, &body);
    let both = format!("{genuine}, {other_body}");
    let send = |delivery: &str, signatures: &[(&str, &str)]| {
        let extra: String = signatures
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .chain([CLOSE.to_owned()])
            .collect();
        let head = push_head(delivery, &format!("Content-Length: {}", body.len()), &extra);
        exchange(&gw, &[head.as_bytes(), &body].concat())
    };
    let sig256 = "X-Hub-Signature-256";
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("another body's", vec![(sig256, &other_body)]),
        ("sha1 only", vec![("X-Hub-Signature", &sha1)]),
        (
            "truncated by one",
            vec![(sig256, &genuine[..genuine.len() - 1])],
        ),
        ("truncated to half", vec![(sig256, &genuine[..7 + 32])]),
        ("prefix only", vec![(sig256, "sha256=")]),
        (
            "forged, then genuine",
            vec![(sig256, &other_body), (sig256, &genuine)],
        ),
        ("genuine and forged in one line", vec![(sig256, &both)]),
    ];
    for (what, signatures) in cases {
        let answer = send(what, &signatures);
        assert!(answer.starts_with("HTTP/1.1 401"), "{what}: {answer}");
        assert!(answer.contains("X-Hub-Signature-256"), "{what}: {answer}");
    }
    assert_eq!(deliveries(&gw), 0, "refused webhooks leave nothing behind");
    // The same body with its own signature (and the SHA-1 one beside it) deploys.
    let answer = send("genuine", &[("X-Hub-Signature", &sha1), (sig256, &genuine)]);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(orders(&gw), 1);
}

/// Issue 10, what held: refs with `;`, `..`, a newline or unicode, and repository names
/// with `..`, `+` or `#`, signed as GitHub would sign them, never make an order (the mapped
/// branch is `master` of `Codertocat/Hello-World`), and never forge a log line.
#[test]
fn r10_hostile_refs_and_repo_names_make_no_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::process::write_config(dir.path(), "");
    let log = dir.path().join("gateway.log");
    let gw = crate::process::Process::start_logging(&config, Some(&log));
    let url = format!("{}/webhook", gw.http);
    let send = |n: usize, body: &Value| {
        orcastrate_testkit::http::webhook(
            &url,
            SECRET,
            "push",
            &format!("hostile-{n}"),
            "application/json",
            &serde_json::to_vec(body).unwrap(),
        )
    };
    let refs = [
        "refs/heads/master;rm -rf /",
        "refs/heads/master; echo",
        "refs/heads/../heads/master",
        "refs/heads/master/..",
        "refs/heads/..",
        "refs/heads/master\nINJECTED fake log line",
        "refs/heads/master\r\n",
        "refs/heads/mäster",
        "refs/heads/master\u{202e}",
        "refs/heads/ｍaster",
    ];
    let repos = [
        "Codertocat/Hello-World/..",
        "Codertocat/..",
        "../Hello-World",
        "Codertocat/../Hello-World",
        "Codertocat/Hello-World+",
        "Codertocat/Hello+World",
        "Codertocat/Hello-World#",
        "Codertocat/#",
        "Codertocat/Hello-World\nINJECTED",
    ];
    let (mut n, mut recorded) = (0, refs.len() as i64);
    for git_ref in refs {
        let mut body: Value = serde_json::from_slice(&push_of(&sha(60 + n as u64), "x")).unwrap();
        body["ref"] = git_ref.into();
        let (status, answer) = send(n, &body);
        assert_eq!(status, 202, "{git_ref:?}: {answer}");
        assert!(answer["ignored"].is_string(), "{git_ref:?}: {answer}");
        n += 1;
    }
    for repo in repos {
        let mut body: Value =
            serde_json::from_slice(&push_of(&sha(60 + n as u64), "master")).unwrap();
        body["repository"]["full_name"] = repo.into();
        let (status, answer) = send(n, &body);
        assert!(
            status == 400 || (status == 202 && answer["ignored"].is_string()),
            "{repo:?}: {status} {answer}"
        );
        recorded += i64::from(status == 202);
        n += 1;
    }
    let ledger = rusqlite::Connection::open_with_flags(
        dir.path().join("data/ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let count = |sql: &str| -> i64 { ledger.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM orders"), 0);
    assert_eq!(count("SELECT COUNT(*) FROM deliveries"), recorded);
    // The newline in a ref is logged escaped, inside its field: no line of its own.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("hostile-5"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("INJECTED")),
        "a ref forged a log line:\n{text}"
    );
}

/// Issue 10, what held: the body-size limit is exact (a body of exactly `max_body_bytes`
/// is read, one byte more is 413), whether the length is announced or the body is chunked.
#[test]
fn r10_a_body_of_exactly_max_body_bytes_is_read_one_more_is_413_announced_or_chunked() {
    const LIMIT: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(dir.path(), &format!("[http]\nmax_body_bytes = {LIMIT}\n"));
    // A signed push padded with JSON whitespace to `len` bytes.
    let padded = |n: u64, len: usize| {
        let mut body = push_of(&sha(80 + n), "master");
        body.resize(len, b' ');
        let sig = orcastrate_testkit::github::signature(SECRET, &body);
        (body, format!("X-Hub-Signature-256: {sig}\r\n{CLOSE}"))
    };
    for (n, (len, chunk, expected)) in [
        (LIMIT, false, "202"),
        (LIMIT, true, "202"),
        (LIMIT + 1, false, "413"),
        (LIMIT + 1, true, "413"),
    ]
    .into_iter()
    .enumerate()
    {
        let (body, sig) = padded(n as u64, len);
        let delivery = format!("exact-{n}");
        let request = if chunk {
            let head = push_head(&delivery, "Transfer-Encoding: chunked", &sig);
            [head.into_bytes(), chunked(&body)].concat()
        } else {
            let head = push_head(&delivery, &format!("Content-Length: {len}"), &sig);
            [head.into_bytes(), body].concat()
        };
        let answer = exchange(&gw, &request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expected}")),
            "{len} bytes, chunked {chunk}: {answer}"
        );
    }
    assert_eq!(orders(&gw), 2);
}

/// Issue 10, what held: a request with both `Content-Length` and `Transfer-Encoding` is
/// read by its chunked coding alone and its connection closed after the answer, so bytes
/// that the length would have left over are never read as a second request (no request
/// smuggling); conflicting lengths and a coding other than chunked are 400.
#[test]
fn r10_content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let smuggled = b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n";
    for (n, framing) in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ]
    .into_iter()
    .enumerate()
    {
        let body = push_of(&sha(90 + n as u64), "master");
        let sig = orcastrate_testkit::github::signature(SECRET, &body);
        let head = push_head(
            &format!("cl-te-{n}"),
            framing,
            &format!("X-Hub-Signature-256: {sig}\r\n"),
        );
        let answer = exchange(&gw, &[head.as_bytes(), &chunked(&body), smuggled].concat());
        assert!(answer.starts_with("HTTP/1.1 202"), "{framing:?}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{framing:?}: the bytes after the body were answered as a request: {answer}"
        );
    }
    let body = push_of(&sha(95), "master");
    let sig = orcastrate_testkit::github::signature(SECRET, &body);
    let sig = format!("X-Hub-Signature-256: {sig}\r\n{CLOSE}");
    let lengths = format!("Content-Length: {}\r\nContent-Length: 4", body.len());
    let answer = exchange(
        &gw,
        &[push_head("cl-cl", &lengths, &sig).as_bytes(), &body].concat(),
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = exchange(
        &gw,
        &[
            push_head("te-gzip", "Transfer-Encoding: gzip", &sig).as_bytes(),
            &body,
        ]
        .concat(),
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(orders(&gw), 2);
    assert_eq!(deliveries(&gw), 2);
}
