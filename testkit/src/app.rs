//! The sample app every test deploys: a tiny Node HTTP service (`fixtures/server.js`), and
//! how to ask it who it is.
//!
//! A release of it is the files [`files`] makes. It answers `/` with
//! `{"version", "pid", "greeting"}` (the greeting from its decrypted
//! `config/decrypted_production.json`, if any), `/health` with 200 (500 if the release has a
//! file `UNHEALTHY`) and `/env` with its environment; it listens on the port in its `PORT`
//! file, after the milliseconds in its `DELAY` file if it has one.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::git::Origin;

/// The app's source, `server.js` of every release.
pub const SERVER_JS: &str = include_str!("../fixtures/server.js");

/// Its `package.json`: `npm start` runs it; no dependencies.
pub const PACKAGE_JSON: &str =
    r#"{"name":"web","version":"1.0.0","private":true,"scripts":{"start":"node server.js"}}"#;

/// The files of release `version` listening on `port`: `server.js`, `VERSION`, `PORT` and
/// `package.json`, as (path, content).
pub fn files(version: &str, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("server.js", SERVER_JS.to_owned()),
        ("VERSION", format!("{version}\n")),
        ("PORT", format!("{port}\n")),
        ("package.json", PACKAGE_JSON.to_owned()),
    ]
}

/// Commits release `version` of the app listening on `port` to `origin`, with `extra` files
/// (path and content; `None` deletes), and returns the commit's sha.
#[track_caller]
pub fn commit(origin: &Origin, version: &str, port: u16, extra: &[(&str, Option<&str>)]) -> String {
    let files = files(version, port);
    let mut all: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(path, content)| (*path, Some(content.as_str())))
        .collect();
    all.extend_from_slice(extra);
    origin.commit(version, &all)
}

/// `GET http://127.0.0.1:{port}{path}`: the status and body, or `None` if nothing answers
/// (within 5 s).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// The app's JSON answer on `/`, or `None` if nothing answers 200.
pub fn answer(port: u16) -> Option<Value> {
    let (code, body) = http_get(port, "/")?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// Who answers on `port`: (version, pid), or `None` if nothing answers.
pub fn identity(port: u16) -> Option<(String, u64)> {
    let v = answer(port)?;
    Some((v["version"].as_str()?.to_owned(), v["pid"].as_u64()?))
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn identity_reads_the_apps_answer_and_nothing_is_none() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0; 1024];
            let n = stream.read(&mut request).unwrap();
            assert!(request[..n].starts_with(b"GET / HTTP/1.1\r\n"));
            stream
                .write_all(b"HTTP/1.1 200 OK\r\n\r\n{\"version\":\"v1\",\"pid\":7}")
                .unwrap();
        });
        assert_eq!(identity(port), Some(("v1".to_owned(), 7)));
        server.join().unwrap();
        // Nothing listens there any more.
        assert_eq!(identity(port), None);
    }

    #[test]
    fn a_release_has_the_fixture_and_its_port() {
        let files = files("v3", 4321);
        assert!(files.contains(&("server.js", SERVER_JS.to_owned())));
        assert!(files.contains(&("PORT", "4321\n".to_owned())));
        assert!(SERVER_JS.contains("UNHEALTHY"));
    }
}
