//! The operator API: auth, deploy, rollback target selection, bad shas, errors.

use std::time::Duration;

use orcastrate_broker::{sign, AgentState};
use serde_json::json;

use crate::common::*;

/// Publishes a verified `healthy` status of web-1 for an order, and waits until it is recorded.
fn report_healthy(gw: &TestGateway, seq: u64, sha_: &str) {
    let mut s = agent_status("web-1", AgentState::Healthy);
    s.session = "s".into();
    s.seq = Some(seq);
    s.sha = Some(sha_.into());
    s.running_sha = Some(sha_.into());
    s.deploy_ms = Some(1);
    sign::seal_status("token-web-1", &mut s);
    let mut agent = gw.mqtt("web-1", "token-web-1");
    agent.publish(
        &format!("orcastrate/{REPO}/{ENV}/status/web-1"),
        serde_json::to_vec(&s).unwrap(),
        true,
    );
    agent.flush();
    eventually(Duration::from_secs(5), "healthy status recorded", || {
        let (_, v) = gw.admin_get("/api/v1/agents");
        (v["agents"][0]["seq"].as_u64() == Some(seq)).then_some(())
    });
}

fn push(gw: &TestGateway, n: u64) -> u64 {
    let (status, answer) = gw.webhook("push", &format!("push-{n}"), &push_of(&sha(n), "master"));
    assert_eq!(status, 202, "{answer}");
    answer["seq"].as_u64().expect("an order")
}

#[test]
fn rollback_picks_the_newest_healthy_earlier_order_and_marks_the_current_bad() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let rollback = || gw.admin_post("/api/v1/rollback", json!({"repo": REPO, "env": ENV}));

    let s1 = push(&gw, 1);
    report_healthy(&gw, s1, &sha(1));
    // Nothing earlier to go back to.
    let (status, answer) = rollback();
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("--to"));

    let s2 = push(&gw, 2);
    report_healthy(&gw, s2, &sha(2));
    let _s3 = push(&gw, 3); // never reported healthy
    let (status, answer) = rollback();
    assert_eq!(status, 202, "{answer}");
    let order = &answer["order"];
    assert_eq!(order["kind"], "rollback");
    assert_eq!(
        order["sha"],
        sha(2).as_str(),
        "newest earlier healthy order"
    );
    assert!(order["seq"].as_u64().unwrap() > s2);

    // The sha rolled back from is bad: a later push of it is ignored with a reason.
    let (status, answer) = gw.webhook("push", "again-3", &push_of(&sha(3), "master"));
    assert_eq!(status, 202);
    assert!(
        answer["ignored"].as_str().unwrap().contains("marked bad"),
        "{answer}"
    );
    // A manual deploy may still name it.
    let (status, answer) = gw.admin_post(
        "/api/v1/deploy",
        json!({"repo": REPO, "env": ENV, "sha": sha(3)}),
    );
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["order"]["kind"], "manual");

    // Rolling back again skips the bad sha 3 and the current one.
    let (status, answer) = rollback();
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["order"]["sha"], sha(2).as_str());
    let (status, answer) = rollback();
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["order"]["sha"], sha(1).as_str());

    // An explicit target.
    let (status, answer) = gw.admin_post(
        "/api/v1/rollback",
        json!({"repo": REPO, "env": ENV, "to": sha(2)}),
    );
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["order"]["sha"], sha(2).as_str());

    let (status, history) =
        gw.admin_get("/api/v1/deployments?repo=codertocat/hello-world&env=production&limit=3");
    assert_eq!(status, 200);
    let list = history["deployments"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert!(
        list[0]["seq"].as_u64() > list[1]["seq"].as_u64(),
        "newest first"
    );
}

#[test]
fn admin_api_refuses_clearly() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let url = format!("{}/api/v1/deployments", gw.http);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    assert_eq!(agent.get(&url).call().unwrap().status(), 401);
    let r = agent
        .get(&url)
        .header("Authorization", "Bearer wrong-token-wrong-token")
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);

    let (status, answer) = gw.admin_post(
        "/api/v1/deploy",
        json!({"repo": REPO, "env": ENV, "sha": "abc"}),
    );
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("sha"));
    let (status, _) = gw.admin_post(
        "/api/v1/deploy",
        json!({"repo": REPO, "env": "Bad.Env", "sha": sha(1)}),
    );
    assert_eq!(status, 400);
    let (status, answer) = gw.admin_post("/api/v1/deploy", json!({"repo": REPO}));
    assert_eq!(status, 400);
    assert!(answer["error"].is_string());
    let (status, answer) = gw.admin_post(
        "/api/v1/deploy",
        json!({"repo": "octo/unknown", "env": ENV, "sha": sha(1)}),
    );
    assert_eq!(status, 404, "{answer}");
    let (status, _) = gw.admin_post("/api/v1/pause", json!({"repo": REPO, "env": "nowhere"}));
    assert_eq!(status, 404);
    let (status, _) = gw.admin_post("/api/v1/rollback", json!({"repo": REPO, "env": ENV}));
    assert_eq!(status, 409);
}

#[test]
fn admin_requests_without_a_token_are_refused_before_their_body_is_read() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let post = |token: Option<&str>| {
        // A fresh connection each time: a refused request's connection is not reused.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent
            .post(format!("{}/api/v1/deploy", gw.http))
            .header("Content-Type", "application/json");
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        let mut r = req.send("{not json").unwrap();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (r.status().as_u16(), text)
    };
    for token in [None, Some("wrong-token-wrong-token")] {
        let (status, text) = post(token);
        assert_eq!(status, 401, "{token:?}: {text}");
        assert!(text.contains("admin token"), "{text}");
    }
    // The same body with the token is refused for what it is.
    let (status, text) = post(Some(ADMIN));
    assert_eq!(status, 400, "{text}");
}

#[test]
fn wrong_tokens_from_one_address_are_throttled_on_the_api_and_the_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(dir.path());
    let deployments = format!("{}/api/v1/deployments", gw.http);
    let session = format!("{}/api/v1/session", gw.http);
    let sign_in = |token: &str| {
        orcastrate_testkit::http::answer(
            orcastrate_testkit::http::client()
                .post(&session)
                .send_json(json!({ "token": token })),
        )
    };
    // The right token works before any wrong one; then a burst of wrong ones is answered
    // 401, each checked, on either route.
    assert_eq!(
        orcastrate_testkit::http::get_bearer(&deployments, ADMIN).0,
        200
    );
    let mut refused = 0;
    let throttled = loop {
        let (status, answer) = if refused % 2 == 0 {
            orcastrate_testkit::http::get_bearer(&deployments, "wrong-token-wrong-token")
        } else {
            sign_in("wrong-token-wrong-token")
        };
        match status {
            401 => refused += 1,
            429 => break answer,
            other => panic!("{other}: {answer}"),
        }
        assert!(
            refused <= 20,
            "still checking tokens after {refused} wrong ones"
        );
    };
    assert!(refused >= 5, "throttled after only {refused} wrong tokens");
    assert!(
        throttled["error"]
            .as_str()
            .unwrap()
            .contains("too many wrong tokens"),
        "{throttled}"
    );
    // Throttled, even the right token is not checked (a guess cannot be confirmed), on both
    // routes; the webhook route is not affected.
    assert_eq!(
        orcastrate_testkit::http::get_bearer(&deployments, ADMIN).0,
        429
    );
    assert_eq!(sign_in(ADMIN).0, 429);
    assert_eq!(
        orcastrate_testkit::http::get_text(&format!("{}/healthz", gw.http)).0,
        200
    );
    // One refusal a second is earned back: the right token works again.
    orcastrate_testkit::eventually(
        Duration::from_secs(5),
        "the throttle to let a token through",
        || (orcastrate_testkit::http::get_bearer(&deployments, ADMIN).0 == 200).then_some(()),
    );
}

/// Behind a reverse proxy every client has the proxy's address. With the proxy in `[http]
/// trusted_proxies`, the token throttle counts the client the proxy names in
/// `X-Forwarded-For`, so one guesser cannot lock out everyone behind the proxy; without
/// it, the header is ignored, so a client cannot dodge the throttle by writing one.
#[test]
fn behind_a_trusted_proxy_the_token_throttle_counts_the_forwarded_client() {
    let get = |gw: &TestGateway, token: &str, forwarded: &str| {
        orcastrate_testkit::http::answer(
            orcastrate_testkit::http::client()
                .get(&format!("{}/api/v1/deployments", gw.http))
                .header("Authorization", format!("Bearer {token}"))
                .header("X-Forwarded-For", forwarded)
                .call(),
        )
        .0
    };
    // Wrong tokens until throttled; each may name itself anything in the header.
    let guess_until_throttled = |gw: &TestGateway, forwarded: &dyn Fn(usize) -> String| {
        for n in 0..=20 {
            match get(gw, "wrong-token-wrong-token", &forwarded(n)) {
                401 => {}
                429 => return,
                other => panic!("{other}"),
            }
        }
        panic!("still checking tokens after 20 wrong ones");
    };

    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(dir.path());
    guess_until_throttled(&gw, &|n| format!("203.0.113.{n}"));
    assert_eq!(
        get(&gw, ADMIN, "198.51.100.1"),
        429,
        "the header is not trusted"
    );
    drop(gw);

    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(dir.path(), "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n");
    guess_until_throttled(&gw, &|_| "203.0.113.7".to_owned());
    assert_eq!(
        get(&gw, ADMIN, "203.0.113.7"),
        429,
        "the guesser is throttled"
    );
    // What the guesser writes left of the address the proxy appended is not believed.
    assert_eq!(get(&gw, ADMIN, "198.51.100.1, 203.0.113.7"), 429);
    // Everyone else behind the proxy is not.
    assert_eq!(get(&gw, ADMIN, "203.0.113.8"), 200);
    assert_eq!(get(&gw, ADMIN, "2001:db8::1"), 200);
}
