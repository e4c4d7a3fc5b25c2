//! Health checks: an HTTP GET that must answer 2xx, a command that must exit 0, or (when
//! none is configured) the app still running.
//!
//! The HTTP check is a minimal HTTP/1.1 GET over a plain TCP stream: it needs no TLS and no
//! HTTP library, because it talks to the app on the same host.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::{parse_http_url, HealthCheck, HttpTarget};
use crate::steps::Cmd;
use crate::users::RunAs;

/// Longest single attempt; a slow app gets more attempts within `timeout_s`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// First pause between attempts while waiting for a new release to become healthy: short,
/// because most apps listen within milliseconds and a rollback should take well under a
/// second; doubled after each failure up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between attempts.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(250);

/// Without a configured check, the app must still run this long after start to count as
/// healthy (it would usually crash on a bad config within it).
const RUNNING_GRACE: Duration = Duration::from_secs(1);

/// One GET, after `preface` (a PROXY protocol header, or nothing); `Ok` on a 2xx status
/// line.
async fn http_once(target: &HttpTarget, preface: &[u8]) -> Result<(), String> {
    let addr = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let mut stream = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("GET http://{addr}{}: {e}", target.path))?;
    let mut request = preface.to_vec();
    request.extend_from_slice(format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: orcastrate-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.path
    ).as_bytes());
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("GET http://{addr}{}: {e}", target.path))?;
    // Only the status line matters.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("GET http://{addr}{}: {e}", target.path))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let code: Option<u16> = line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    match code {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(c) => Err(format!("GET http://{addr}{} answered {c}", target.path)),
        None => Err(format!("GET http://{addr}{}: no HTTP answer", target.path)),
    }
}

/// Runs one check. `dir` is where a command check runs; `app_alive` says whether the app's
/// process group lives.
///
/// # Errors
///
/// What failed, for the status `error` and the log.
pub(crate) async fn check_once(
    check: &HealthCheck,
    dir: &Path,
    app_alive: bool,
    user: Option<&RunAs>,
) -> Result<(), String> {
    let attempt = async {
        match check {
            HealthCheck::Http(url) => http_once(&parse_http_url(url)?, &[]).await,
            HealthCheck::HttpBehindProxy(url, protocol) => {
                let header = crate::proxy_protocol::local(*protocol);
                http_once(&parse_http_url(url)?, &header).await
            }
            HealthCheck::Command(cmd) => {
                let out = crate::steps::output(&Cmd::shell(cmd, dir).run_as(user))
                    .await
                    .map_err(|e| format!("health command `{cmd}` did not start: {e}"))?;
                if out.0.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "health command `{cmd}` failed ({})",
                        crate::steps::describe(out.0)
                    ))
                }
            }
            HealthCheck::Running => {
                if app_alive {
                    Ok(())
                } else {
                    Err("the app is not running".to_owned())
                }
            }
        }
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "health check timed out after {} s",
            ATTEMPT_TIMEOUT.as_secs()
        )),
    }
}

/// Retries the check until it passes or `timeout` runs out.
///
/// # Errors
///
/// The last failure, when the time ran out or `cancel` fired.
pub(crate) async fn wait_healthy(
    check: &HealthCheck,
    dir: &Path,
    timeout: Duration,
    app_alive: impl Fn() -> bool,
    user: Option<&RunAs>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    if *check == HealthCheck::Running {
        tokio::select! {
            () = tokio::time::sleep(RUNNING_GRACE.min(timeout)) => {}
            () = cancel.cancelled() => return Err("cancelled".to_owned()),
        }
    }
    let mut last;
    let mut pause = RETRY_PAUSE;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = tokio::time::timeout(
            remaining.max(Duration::from_millis(100)),
            check_once(check, dir, app_alive(), user),
        );
        last = match attempt.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "health check timed out".to_owned(),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(format!(
                "not healthy within {} s: {last}",
                timeout.as_secs()
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = cancel.cancelled() => return Err(format!("cancelled: {last}")),
        }
        pause = (pause * 2).min(RETRY_PAUSE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve_once(answer: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_status_decides() {
        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        let bad = serve_once("HTTP/1.0 503 Busy\r\n\r\n").await;
        let dir = Path::new("/");
        let check = |p: u16| HealthCheck::Http(format!("http://127.0.0.1:{p}/h"));
        assert_eq!(check_once(&check(ok), dir, true, None).await, Ok(()));
        assert!(check_once(&check(bad), dir, true, None)
            .await
            .unwrap_err()
            .contains("503"));
        let cancel = CancellationToken::new();
        let err = wait_healthy(
            &check(bad),
            dir,
            Duration::from_secs(1),
            || true,
            None,
            &cancel,
        )
        .await
        .unwrap_err();
        assert!(err.contains("not healthy within 1 s"), "{err}");
    }

    #[tokio::test]
    async fn command_and_running_checks() {
        let dir = Path::new("/");
        assert!(
            check_once(&HealthCheck::Command("true".into()), dir, false, None)
                .await
                .is_ok()
        );
        assert!(
            check_once(&HealthCheck::Command("exit 3".into()), dir, true, None)
                .await
                .is_err()
        );
        assert!(check_once(&HealthCheck::Running, dir, true, None)
            .await
            .is_ok());
        assert!(check_once(&HealthCheck::Running, dir, false, None)
            .await
            .is_err());
    }
}
