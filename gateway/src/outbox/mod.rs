//! The outbox: what people are told (GitHub deployments, `[[notify]]` webhooks) is first a
//! *fact* row in the ledger, written in the same transaction as the order, status or pause
//! that causes it, so a crash or a receiver outage loses nothing. Each destination keeps its
//! own cursor over the facts and a worker thread (`deliver`) moves it on, in order, once a
//! fact is delivered, dead-lettered (`outbox_failed`) or not for that destination.
//!
//! - `facts`: the facts and the hooks the sequencer calls inside its transaction.
//! - `config`: `[github] token`/`api_url` and `[[notify]]`.
//! - `deliver`: the per-destination worker, its backoff and `Retry-After`.
//! - `github`, `notify`: what each destination sends.

pub mod config;
pub mod deliver;
pub mod facts;
mod github;
pub mod metrics;
mod notify;

pub use config::{GithubTarget, NotifyFormat, NotifyTarget, OutboxConfig};
pub use deliver::{pending, Outbox, PendingRow};
pub use facts::{on_order, on_pause, on_status, Fact};

/// Prints the pending and failed messages of the ledger in `data_dir` (`outbox` command).
///
/// # Errors
///
/// When there is no ledger there or it cannot be read.
pub fn print(data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let path = data_dir.join(crate::serve::LEDGER_FILE);
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| {
                format!(
                    "cannot open the ledger {}: pass --data-dir or --config of the gateway",
                    path.display()
                )
            })?;
    let rows =
        pending(&conn).context("cannot read the outbox (a gateway older than the outbox?)")?;
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "{:<20} {:>8} {:<8} {:>8}  {:<40} ERROR",
        "DEST", "ID", "STATE", "ATTEMPTS", "WHAT"
    );
    for r in &rows {
        let what = format!(
            "{} {} {} {}",
            r.fact["fact"].as_str().unwrap_or("?"),
            r.fact["repo"].as_str().unwrap_or("?"),
            r.fact["env"].as_str().unwrap_or("?"),
            r.fact["state"]
                .as_str()
                .or(r.fact["kind"].as_str())
                .unwrap_or(""),
        );
        println!(
            "{:<20} {:>8} {:<8} {:>8}  {:<40} {}",
            r.dest,
            r.id,
            r.state,
            r.attempts,
            what,
            r.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
