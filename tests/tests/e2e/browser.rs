//! A real headless Chromium, driven through `chromedriver`'s W3C WebDriver HTTP API.
//!
//! The protocol is a handful of JSON calls, so this speaks it with the `ureq` client the
//! tests already use rather than pulling in a WebDriver crate (and its async HTTP stack) or
//! Python: nothing new to build on a 2-core CI machine, nothing that tries to go online.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use orcastrate_testkit::{eventually, free_port, http};
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session; ends the browser and its driver when dropped.
pub struct Browser {
    driver: Child,
    base: String,
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium whose profile lives in `profile`.
    pub fn start(profile: &Path) -> Self {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "the board test needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"
        );
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let root = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), "chromedriver to answer", || {
            let mut r = http::client().get(&format!("{root}/status")).call().ok()?;
            let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
            (v["value"]["ready"] == true).then_some(())
        });
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-default-apps",
            "--window-size=1100,1000",
        ];
        let mut args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let (code, v) = http::answer(
            http::client()
                .post(&format!("{root}/session"))
                .send_json(&caps),
        );
        let mut browser = Self { driver, base: root };
        assert_eq!(code, 200, "a browser session: {v}");
        let id = v["value"]["sessionId"].as_str().expect("a session id");
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let c = http::client();
        let result = match (method, body) {
            ("GET", _) => c.get(&url).call(),
            ("DELETE", _) => c.delete(&url).call(),
            (_, body) => c.post(&url).send_json(body.unwrap_or_else(|| json!({}))),
        };
        let (code, v) = http::answer(result);
        assert_eq!(code, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `return` gives its value) in the page.
    pub fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Runs `script`, whose last argument is the callback that gives its value.
    pub fn js_async(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("an element {css}: {v}"))
            .to_owned()
    }

    /// Clicks the element `css` as a person would.
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/click"), None);
    }

    /// Types `text` into the element `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let v = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("valid base64");
        std::fs::write(path, png).expect("screenshot written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http::client().delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
