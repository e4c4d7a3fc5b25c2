//! The sample app every test deploys: a tiny Node HTTP service (`fixtures/server.js`), and
//! how to ask it who it is.
//!
//! A release of it is the files [`files`] makes. It answers `/` with
//! `{"version", "pid", "greeting", "client"}` (the greeting from its decrypted
//! `config/decrypted_production.json`, if any), `/health` with 200 (500 if the release has a
//! file `UNHEALTHY`) and `/env` with its environment; it listens on the port in its `PORT`
//! file, after the milliseconds in its `DELAY` file if it has one. Its other tricks (a slow
//! download, a WebSocket, a PROXY protocol header) are listed at the top of the fixture.

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

/// A connection to the app on `port` with `request` sent, whose reads give up after 5 s.
fn send(port: u16, request: &str) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    Some(stream)
}

/// `GET http://127.0.0.1:{port}{path}`: the status and body, or `None` if nothing answers
/// (within 5 s).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = send(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )?;
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

/// A WebSocket open to the app's `/ws` on `port`, the long-lived connection of the
/// zero-downtime tests: [`AppSocket::ask`] says which release the connection is on.
pub struct AppSocket {
    stream: TcpStream,
}

impl AppSocket {
    /// Opens it (the HTTP upgrade), or `None` if the app does not answer `101` within 5 s.
    pub fn open(port: u16) -> Option<Self> {
        // The key is RFC 6455's example; the fixture does not need a fresh one.
        let mut stream = send(
            port,
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
            stream.read_exact(&mut byte).ok()?;
            head.push(byte[0]);
        }
        head.starts_with(b"HTTP/1.1 101 ")
            .then_some(Self { stream })
    }

    /// Sends a message and returns the version that answered, `None` if the connection
    /// is gone.
    pub fn ask(&mut self) -> Option<String> {
        // An empty text frame, masked (with a zero key) as clients must.
        self.stream.write_all(&[0x81, 0x80, 0, 0, 0, 0]).ok()?;
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).ok()?;
        let mut body = vec![0u8; usize::from(head[1] & 0x7f)];
        self.stream.read_exact(&mut body).ok()?;
        String::from_utf8(body).ok()
    }
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
            // The head may arrive in several reads.
            let mut request = Vec::new();
            let mut chunk = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "closed mid-request: {request:?}");
                request.extend_from_slice(&chunk[..n]);
            }
            assert!(request.starts_with(b"GET / HTTP/1.1\r\n"), "{request:?}");
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
