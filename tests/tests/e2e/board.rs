//! Issue 17: the board in a real headless Chromium, against a real gateway, agent and git
//! remote: sign in, watch a push arrive live, roll back with one click (and a confirm),
//! and a viewer who sees no buttons and whose writes are refused.

use std::path::Path;
use std::time::{Duration, Instant};

use orcastrate_testkit::eventually;

use crate::browser::Browser;
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(60);

/// What the page shows for the agent: its state and running sha7 (empty until rendered).
fn agent_row(b: &Browser) -> (String, String) {
    let v = b.js(&format!(
        "const r = document.querySelector('tr[data-agent=\"{AGENT}\"]');
         return r ? [r.querySelector('.state').textContent, r.querySelector('.running').textContent] : ['', ''];"
    ));
    (
        v[0].as_str().unwrap_or("").to_owned(),
        v[1].as_str().unwrap_or("").to_owned(),
    )
}

fn sign_in(b: &Browser, url: &str, token: &str) {
    b.goto(url);
    eventually(WAIT, "the sign-in form", || {
        (b.js("return !document.getElementById('signin').hidden;") == true).then_some(())
    });
    b.type_into("#token", token);
    b.click("#signin button[type=submit]");
    eventually(WAIT, "the board to go live", || {
        (b.js("return document.getElementById('live').textContent;") == "live").then_some(())
    });
}

/// A POST from inside the page with the session cookie; `csrf` adds the page's token.
fn page_post(b: &Browser, path: &str, csrf: bool) -> u64 {
    let header = if csrf { "'X-CSRF-Token': csrf," } else { "" };
    let script = format!(
        "const done = arguments[arguments.length - 1];
         fetch('{path}', {{ method: 'POST', credentials: 'same-origin',
           headers: {{ 'Content-Type': 'application/json', {header} }},
           body: JSON.stringify({{ repo: '{REPO}', env: '{ENV}' }}) }})
         .then(r => done(r.status), e => done(String(e)));"
    );
    b.js_async(&script).as_u64().expect("an HTTP status")
}

#[test]
fn the_board_shows_a_push_live_and_rolls_back_with_one_click() {
    let mut w = World::new();
    w.start_agent();
    let (sha1, _, _) = w.deploy("v1");
    let url = format!("{}/", w.gateway.api.http);
    let b = Browser::start(&w.dir.path().join("chromium"));

    sign_in(&b, &url, ADMIN);
    eventually(WAIT, "the agent healthy on v1 on the page", || {
        (agent_row(&b) == ("healthy".to_owned(), sha1[..7].to_owned())).then_some(())
    });
    // Commit links go to the GitHub that `[github] api_url` names (github.com by default).
    let link = b.js(&format!(
        "const a = document.querySelector('a[href$=\"/commit/{sha1}\"]'); return a ? a.href : '';"
    ));
    assert_eq!(
        link,
        format!("https://github.com/{REPO}/commit/{sha1}").as_str()
    );
    b.js("window.sameDocument = 'yes'; return null;");

    // A push arrives on the page without a reload; timed from when the API shows it.
    let sha2 = w.commit("v2");
    let seq2 = w.push(&sha2);
    w.wait_healthy(seq2, &sha2);
    let api_saw = Instant::now();
    eventually(WAIT, "v2 healthy on the page", || {
        (agent_row(&b) == ("healthy".to_owned(), sha2[..7].to_owned())).then_some(())
    });
    println!(
        "board latency: the page showed the agent's new status {} ms after the admin API did",
        api_saw.elapsed().as_millis()
    );
    assert_eq!(b.js("return window.sameDocument;"), "yes", "no reload");
    w.wait_app("v2");

    // A write without the CSRF token is refused, from the page's own origin and cookie.
    assert_eq!(page_post(&b, "/api/v1/pause", false), 403);

    // One click on "Roll back to {sha7}", then the confirm step.
    let button = format!("button.rollback[data-sha=\"{sha1}\"]");
    let label = b.js(&format!(
        "return document.querySelector('{}').textContent;",
        button.replace('\'', "\\'")
    ));
    assert_eq!(label, format!("Roll back to {}", &sha1[..7]).as_str());
    b.click(&button);
    assert_eq!(
        b.js("return document.getElementById('confirm').open;"),
        true
    );
    b.click("#confirm-yes");
    w.wait_app("v1");
    eventually(WAIT, "the rollback on the page", || {
        (agent_row(&b) == ("healthy".to_owned(), sha1[..7].to_owned())).then_some(())
    });
    // The README's docs/board.png is this screenshot: ORCASTRATE_BOARD_SCREENSHOT=docs/board.png
    // (from the workspace) renews it; by default it goes to the test's scratch folder.
    let shot = std::env::var_os("ORCASTRATE_BOARD_SCREENSHOT").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("board.png"),
        |p| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p),
    );
    b.screenshot(&shot);

    // A viewer: no buttons, and the API refuses its writes even with its CSRF token.
    b.click("#signout");
    sign_in(&b, &url, VIEWER);
    eventually(WAIT, "the viewer's board", || {
        (agent_row(&b).0 == "healthy").then_some(())
    });
    let buttons = b.js("return document.querySelectorAll('#board button').length;");
    assert_eq!(buttons, 0, "a viewer sees no buttons");
    assert_eq!(page_post(&b, "/api/v1/pause", true), 403);
    assert_eq!(page_post(&b, "/api/v1/rollback", true), 403);
}
