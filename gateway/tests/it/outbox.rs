//! Issue 18: GitHub deployments and `[[notify]]` through the durable outbox, against a
//! local stand-in of GitHub's REST API and real webhook receivers (the test kit's
//! recording `Receiver`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use orcastrate_broker::{sign, time, AgentState};
use orcastrate_testkit::receiver::{Answer, Receiver, Request};
use serde_json::{json, Value};

use crate::common::*;
use crate::process::{Process, BIN};

const TOKEN: &str = "ghp_test_token_0123456789";
const NOTIFY_SECRET: &str = "notify-secret-0123456789";
const DEPLOYMENTS: &str = "/repos/codertocat/hello-world/deployments";

/// The config with `[github] token`/`api_url` and `extra`.
fn config(dir: &std::path::Path, api: &str, extra: &str) -> String {
    config_text(dir, 0, SECRET, extra).replace(
        "[github]\n",
        &format!("[github]\ntoken = \"{TOKEN}\"\napi_url = \"{api}\"\n"),
    )
}

/// What GitHub's REST API requires of a request to the Deployments API, or `None`.
fn github_problem(r: &Request) -> Option<String> {
    if r.method != "POST" {
        return Some(format!("method {}", r.method));
    }
    if r.header("authorization") != format!("Bearer {TOKEN}") {
        return Some("Authorization".into());
    }
    if r.header("accept") != "application/vnd.github+json"
        || r.header("x-github-api-version") != "2022-11-28"
        || r.header("user-agent").is_empty()
    {
        return Some("Accept, X-GitHub-Api-Version or User-Agent".into());
    }
    let b = r.json();
    if r.path == DEPLOYMENTS {
        let ok = b["ref"].as_str().is_some_and(|s| s.len() == 40)
            && b["environment"] == ENV
            && b["auto_merge"] == false
            && b["required_contexts"] == json!([])
            && b["payload"]["seq"].is_u64()
            && b["payload"]["kind"].is_string()
            && b["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty() && d.len() <= 140);
        return (!ok).then(|| format!("deployment body {b}"));
    }
    let states = ["in_progress", "success", "failure", "inactive"];
    let ok = r.path.starts_with(&format!("{DEPLOYMENTS}/"))
        && r.path.ends_with("/statuses")
        && b["state"].as_str().is_some_and(|s| states.contains(&s))
        && b["description"].as_str().is_some_and(|d| d.len() <= 140);
    (!ok).then(|| format!("status {} {b}", r.path))
}

/// GitHub's answers: 201 with the new object, 422 for a request it would refuse.
fn github(r: &Request, n: usize) -> Answer {
    if let Some(p) = github_problem(r) {
        return (422, vec![], json!({ "message": p }).to_string());
    }
    let id = 1000 + n;
    let body = if r.path == DEPLOYMENTS {
        json!({ "id": id, "ref": r.json()["ref"], "environment": ENV })
    } else {
        json!({ "id": id, "state": r.json()["state"] })
    };
    (201, vec![], body.to_string())
}

/// The first request is refused as GitHub refuses one over a secondary rate limit.
fn github_rate_limited_once(r: &Request, n: usize) -> Answer {
    if n == 0 {
        let msg = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.";
        return (
            403,
            vec![("Retry-After".into(), "2".into())],
            json!({ "message": msg }).to_string(),
        );
    }
    github(r, n)
}

/// `web-1` reports `state` at order `seq` of `sha` to the gateway at `http`/`mqtt_port`.
fn report_to(
    http: &str,
    mqtt_port: u16,
    seq: u64,
    sha_: &str,
    state: AgentState,
    error: Option<&str>,
) {
    static STAMP: AtomicU64 = AtomicU64::new(0);
    let mut s = agent_status("web-1", state);
    s.session = "s".into();
    s.seq = Some(seq);
    s.sha = Some(sha_.into());
    s.error = error.map(str::to_owned);
    s.updated_at = time::from_unix_ms(1_800_000_000_000 + STAMP.fetch_add(1, Ordering::Relaxed));
    sign::seal_status("token-web-1", &mut s);
    let mut agent = Mqtt::connect(mqtt_port, "", "web-1", "token-web-1").expect("login");
    agent.publish(
        &format!("orcastrate/{REPO}/{ENV}/status/web-1"),
        serde_json::to_vec(&s).unwrap(),
        true,
    );
    agent.flush();
    eventually(Duration::from_secs(10), "status recorded", || {
        let (_, v) = orcastrate_testkit::http::get_bearer(&format!("{http}/api/v1/agents"), ADMIN);
        (v["agents"][0]["seq"].as_u64() == Some(seq) && v["agents"][0]["state"] == state.as_str())
            .then_some(())
    });
}

fn report(gw: &TestGateway, seq: u64, sha_: &str, state: AgentState, error: Option<&str>) {
    report_to(&gw.http, gw.mqtt_port, seq, sha_, state, error);
}

fn push(gw: &TestGateway, n: u64) -> u64 {
    let (status, answer) = gw.webhook("push", &format!("push-{n}"), &push_of(&sha(n), "master"));
    assert_eq!(status, 202, "{answer}");
    answer["seq"].as_u64().expect("an order")
}

/// `(path kind, state or ref)` of each request: `("deployment", sha)`, `(id, state)`.
fn calls(got: &[Request]) -> Vec<(String, String)> {
    got.iter()
        .map(|r| {
            let b = r.json();
            if r.path == DEPLOYMENTS {
                (
                    "deployment".into(),
                    b["ref"].as_str().unwrap_or_default().to_owned(),
                )
            } else {
                let id = r.path.trim_start_matches(&format!("{DEPLOYMENTS}/"));
                let id = id.trim_end_matches("/statuses").to_owned();
                (id, b["state"].as_str().unwrap_or_default().to_owned())
            }
        })
        .collect()
}

fn wait_for(rx: &Receiver, n: usize, what: &str) -> Vec<Request> {
    wait_within(rx, n, Duration::from_secs(30), what)
}

fn wait_within(rx: &Receiver, n: usize, within: Duration, what: &str) -> Vec<Request> {
    eventually(within, what, || {
        let got = rx.got();
        (got.len() >= n).then_some(got)
    })
}

/// Pushes `sha(n)` for every `n` of `range` to master, eight at a time, as a busy repo's
/// pushes come; every one must be answered 202 with an order. Returns the shas in the
/// order of their orders' `seq`.
fn pushes_at_once(http: &str, range: std::ops::Range<u64>) -> Vec<String> {
    let url = format!("{http}/webhook");
    let next = AtomicU64::new(range.start);
    let orders = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= range.end {
                    break;
                }
                let body = push_of(&sha(n), "master");
                let delivery = format!("push-{n}");
                let (status, answer) = orcastrate_testkit::http::webhook(
                    &url,
                    SECRET,
                    "push",
                    &delivery,
                    "application/json",
                    &body,
                );
                assert_eq!(status, 202, "push {n}: {answer}");
                let seq = answer["seq"].as_u64().expect("an order");
                orders.lock().unwrap().push((seq, sha(n)));
            });
        }
    });
    let mut orders = orders.into_inner().unwrap();
    orders.sort();
    orders.into_iter().map(|(_, sha_)| sha_).collect()
}

/// The deployments' shas, in the order they arrived.
fn deployed_shas(got: &[Request]) -> Vec<String> {
    calls(got)
        .into_iter()
        .map(|(what, sha_)| {
            assert_eq!(what, "deployment");
            sha_
        })
        .collect()
}

#[test]
fn i18_deploys_show_on_github_in_order_after_a_secondary_rate_limit() {
    let api = Receiver::start(0, github_rate_limited_once);
    let hook = Receiver::start(0, |_, _| (200, vec![], "{}".into()));
    let slack = Receiver::start(0, |_, _| (200, vec![], "ok".into()));
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[notify]]\nurl = \"{}/hook\"\nevents = [\"rolled_back\", \"failed\"]\nsecret = \"{NOTIFY_SECRET}\"\n\
         [[notify]]\nurl = \"{}/slack\"\nformat = \"slack\"\nevents = [\"rolled_back\"]\nboard_url = \"https://deploy.example.com/board\"\n",
        hook.url(),
        slack.url()
    );
    let gw = TestGateway::start_config(dir.path(), &config(dir.path(), &api.url(), &extra));

    let s1 = push(&gw, 1);
    report(&gw, s1, &sha(1), AgentState::Deploying, None);
    report(&gw, s1, &sha(1), AgentState::Healthy, None);
    let got = wait_for(&api, 4, "deployment, in_progress, success");
    assert_eq!(got[0].path, DEPLOYMENTS);
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_secs(2),
        "Retry-After: 2 obeyed, waited {waited:?}"
    );
    let d1 = "1001".to_owned();
    assert_eq!(
        calls(&got[1..4]),
        vec![
            ("deployment".into(), sha(1)),
            (d1.clone(), "in_progress".into()),
            (d1.clone(), "success".into())
        ]
    );
    assert_eq!(
        got[1].json()["payload"],
        json!({ "seq": s1, "kind": "push" })
    );

    // A manual deploy (a failed push would be reverted by the rollout on its own).
    let (status, answer) = gw.admin_post(
        "/api/v1/deploy",
        json!({"repo": REPO, "env": ENV, "sha": sha(2)}),
    );
    assert_eq!(status, 202, "{answer}");
    let s2 = answer["order"]["seq"].as_u64().unwrap();
    report(
        &gw,
        s2,
        &sha(2),
        AgentState::Failed,
        Some("health check failed: 503"),
    );
    let got = wait_for(&api, 7, "the second deployment and its failure");
    let d2 = "1004".to_owned();
    assert_eq!(
        calls(&got[4..7]),
        vec![
            ("deployment".into(), sha(2)),
            (d2.clone(), "in_progress".into()),
            (d2.clone(), "failure".into())
        ]
    );
    assert!(got[6].json()["description"]
        .as_str()
        .unwrap()
        .contains("503"));

    let (status, answer) = gw.admin_post("/api/v1/rollback", json!({"repo": REPO, "env": ENV}));
    assert_eq!(status, 202, "{answer}");
    let s3 = answer["order"]["seq"].as_u64().unwrap();
    report(&gw, s3, &sha(1), AgentState::Healthy, None);
    let got = wait_for(&api, 11, "the rollback's deployment, success, and inactive");
    let d3 = "1007".to_owned();
    assert_eq!(
        calls(&got[7..11]),
        vec![
            ("deployment".into(), sha(1)),
            (d3.clone(), "in_progress".into()),
            (d3, "success".into()),
            (d2, "inactive".into())
        ]
    );
    assert_eq!(got[7].json()["payload"]["kind"], "rollback");
    assert!(got.iter().all(|r| github_problem(r).is_none()));

    // The signed JSON receiver: `failed` then `rolled_back`, each verifying.
    let got = wait_for(&hook, 2, "failed and rolled_back notifications");
    let events: Vec<Value> = got.iter().map(|r| r.json()["event"].clone()).collect();
    assert_eq!(events, vec![json!("failed"), json!("rolled_back")]);
    for r in &got {
        let expected = orcastrate_testkit::github::signature(NOTIFY_SECRET, &r.body);
        assert_eq!(r.header("x-orcastrate-signature-256"), expected);
        assert!(!r.header("x-orcastrate-delivery").is_empty());
        assert_eq!(r.header("x-orcastrate-event"), r.json()["event"]);
    }
    assert_eq!(got[1].json()["sha"], sha(1).as_str());
    // Slack: one `rolled_back` incoming-webhook message.
    let got = wait_for(&slack, 1, "the slack message");
    let text = got[0].json()["text"].as_str().unwrap().to_owned();
    assert_eq!(got[0].json().as_object().unwrap().len(), 1, "only text");
    for part in ["rolled_back", REPO, ENV, &sha(1)[..7], "board"] {
        assert!(text.contains(part), "{part} in {text}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(api.got().len(), 11, "nothing sent twice");
}

/// The stand-in is down while a deploy fails; the gateway binary is SIGKILLed, the stand-in
/// comes back, the gateway restarts: the deployment and its statuses arrive once each, in
/// order, and `orcastrate-gateway outbox` listed them as pending meanwhile.
#[test]
fn i18_a_failure_while_github_is_down_arrives_once_after_a_sigkill_and_restart() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let text = config(
        &dir.path().join("data"),
        &format!("http://127.0.0.1:{port}"),
        "",
    );
    std::fs::write(&path, text).unwrap();
    let gw = Process::start(&path);
    let (status, answer) = orcastrate_testkit::http::post_bearer(
        &format!("{}/api/v1/deploy", gw.http),
        ADMIN,
        &json!({"repo": REPO, "env": ENV, "sha": sha(1)}),
    );
    assert_eq!(status, 202, "{answer}");
    let s1 = answer["order"]["seq"].as_u64().unwrap();
    report_to(
        &gw.http,
        gw.mqtt_port,
        s1,
        &sha(1),
        AgentState::Failed,
        Some("exit status 1"),
    );
    let listed = eventually(Duration::from_secs(10), "outbox lists 3 pending", || {
        let out = std::process::Command::new(BIN)
            .args(["outbox", "--json", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        (text.lines().count() == 3).then_some(text)
    });
    assert!(
        listed.contains("\"state\":\"pending\"") && listed.contains("failure"),
        "{listed}"
    );
    drop(gw); // SIGKILL

    let api = Receiver::start(port, github);
    let _gw = Process::start(&path);
    let got = wait_for(&api, 3, "the deployment and its statuses");
    std::thread::sleep(Duration::from_millis(500));
    let got_all = api.got();
    assert_eq!(got_all.len(), 3, "once each: {:?}", calls(&got_all));
    assert_eq!(
        calls(&got),
        vec![
            ("deployment".into(), sha(1)),
            ("1000".into(), "in_progress".into()),
            ("1000".into(), "failure".into())
        ]
    );
    assert!(got[2].json()["description"]
        .as_str()
        .unwrap()
        .contains("exit status 1"));
}

/// Pushes come eight at a time while the stand-in is up, then while it is down, then it
/// comes back: every webhook is answered 202 (the delivery workers' ledger writes once made
/// one in fifty fail with SQLITE_BUSY), and every deployment arrives once, in order, soon
/// after the stand-in is back.
#[test]
fn i18_pushes_at_once_before_and_during_an_outage_all_arrive_once_in_order() {
    const EACH: u64 = 200;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let api_url = format!("http://127.0.0.1:{port}");
    let gw = TestGateway::start_config(dir.path(), &config(dir.path(), &api_url, ""));
    let api = Receiver::start(port, github);
    let expected = pushes_at_once(&gw.http, 1..EACH + 1);
    let got = wait_for(&api, EACH as usize, "the deployments of the first pushes");
    assert_eq!(deployed_shas(&got), expected);
    drop(api);

    let expected = pushes_at_once(&gw.http, EACH + 1..2 * EACH + 1);
    // Long enough for several failed tries, so the worker is deep in its backoff.
    std::thread::sleep(Duration::from_secs(5));
    let back = Instant::now();
    let api = Receiver::start(port, github);
    // The next try comes within 12.5 s; the rest is the drain.
    wait_within(
        &api,
        EACH as usize,
        Duration::from_secs(60),
        "the deployments made during the outage",
    );
    let drained = back.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        deployed_shas(&api.got()),
        expected,
        "once each, in order (drained in {drained:?})"
    );
}
