//! The operator commands: small clients of the admin API that print tables or JSON.

use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};

use crate::cli::{
    ClientArgs, DeployArgs, HistoryArgs, ListArgs, RepoEnvArgs, RollbackArgs, RolloutCommand,
};

/// Why an operator command failed, mapped to its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached (exit 3).
    #[error("cannot reach the gateway at {url}: {detail} (check --gateway / ORCASTRATE_GATEWAY)")]
    Unreachable { url: String, detail: String },
    /// The gateway refused the request (exit 4).
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    /// The command line lacks something (exit 2, as clap's own usage errors).
    #[error("{0}")]
    Usage(&'static str),
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// GET `path`, or POST `body` to it when given.
fn call(args: &ClientArgs, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let token = args.token.as_deref().ok_or(ClientError::Usage(
        "no admin token: pass --token or set ORCASTRATE_ADMIN_TOKEN",
    ))?;
    let url = format!("{}{path}", args.gateway.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let agent = agent();
    let result = match body {
        None => agent.get(&url).header("Authorization", &auth).call(),
        Some(b) => agent
            .post(&url)
            .header("Authorization", &auth)
            .send_json(&b),
    };
    let mut response = result.map_err(|e| ClientError::Unreachable {
        url: args.gateway.clone(),
        detail: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let value: Value = response
        .body_mut()
        .read_json()
        .with_context(|| format!("the gateway answered {status} without JSON"))?;
    if !(200..300).contains(&status) {
        let message = value["error"]
            .as_str()
            .unwrap_or("request refused")
            .to_owned();
        return Err(ClientError::Refused { status, message }.into());
    }
    Ok(value)
}

fn query(list: &ListArgs) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(r) = &list.repo {
        q.append_pair("repo", r);
    }
    if let Some(e) = &list.env {
        q.append_pair("env", e);
    }
    q.finish()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(v: &Value) -> String {
    v.as_str()
        .map(|x| x.chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}

/// Longest error shown in the `status` table; `--json` has it whole.
const MAX_ERROR_CELL: usize = 80;

/// An agent's error on one line of the `status` table: its first line, cut, `-` if none.
fn error_cell(v: &Value) -> String {
    let Some(e) = v.as_str().filter(|e| !e.is_empty()) else {
        return "-".into();
    };
    let first = e.lines().next().unwrap_or("");
    let mut cell: String = first.chars().take(MAX_ERROR_CELL).collect();
    if cell.len() < e.len() {
        cell.push('…');
    }
    cell
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row));
    }
    out
}

fn print(json: bool, value: &Value, human: impl FnOnce(&Value) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON values serialize")
        );
    } else {
        println!("{}", human(value));
    }
}

/// `status`: agents and what they run.
pub fn status(args: &ListArgs) -> anyhow::Result<()> {
    let value = call(
        &args.client,
        &format!("/api/v1/agents?{}", query(args)),
        None,
    )?;
    print(args.client.json, &value, |v| {
        let rows = v["agents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s_| {
                        vec![
                            s(&s_["agent"]),
                            s(&s_["repo"]),
                            s(&s_["env"]),
                            s(&s_["state"]),
                            s(&s_["step"]),
                            s(&s_["seq"]),
                            short(&s_["sha"]),
                            short(&s_["running_sha"]),
                            s(&s_["port"]),
                            s(&s_["updated_at"]),
                            error_cell(&s_["error"]),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(
            &[
                "AGENT", "REPO", "ENV", "STATE", "STEP", "SEQ", "SHA", "RUNNING", "PORT",
                "UPDATED", "ERROR",
            ],
            rows,
        )
    });
    if !args.client.json {
        let rollouts = call(
            &args.client,
            &format!("/api/v1/rollouts?{}&limit=100", query(args)),
            None,
        )?;
        for line in rollout_lines(&rollouts) {
            println!("{line}");
        }
    }
    Ok(())
}

/// One line per repo/env about its newest rollout: what, where it stands, and why.
fn rollout_lines(v: &Value) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for r in v["rollouts"].as_array().into_iter().flatten() {
        if !seen.insert((s(&r["repo"]), s(&r["env"]))) {
            continue;
        }
        let waves = r["policy"]["waves"].as_array().map_or(0, Vec::len);
        let why = r["reason"]
            .as_str()
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
        out.push(format!(
            "rollout {} of {}/{}: {} over {}, wave {}/{waves}, {}{why}",
            s(&r["id"]),
            s(&r["repo"]),
            s(&r["env"]),
            short(&r["sha"]),
            short(&r["base_sha"]),
            r["wave"].as_u64().unwrap_or(0) + 1,
            s(&r["state"]),
        ));
    }
    out
}

/// `history`: orders newest first.
pub fn history(args: &HistoryArgs) -> anyhow::Result<()> {
    let path = format!(
        "/api/v1/deployments?{}&limit={}",
        query(&args.list),
        args.limit
    );
    let value = call(&args.list.client, &path, None)?;
    print(args.list.client.json, &value, |v| {
        let rows = v["deployments"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|o| {
                        vec![
                            s(&o["seq"]),
                            s(&o["repo"]),
                            s(&o["env"]),
                            s(&o["kind"]),
                            short(&o["sha"]),
                            s(&o["ref"]),
                            s(&o["issued_at"]),
                            s(&o["issued_by"]),
                            outcome(o),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(
            &[
                "SEQ",
                "REPO",
                "ENV",
                "KIND",
                "SHA",
                "REF",
                "ISSUED_AT",
                "ISSUED_BY",
                "OUTCOME",
            ],
            rows,
        )
    });
    Ok(())
}

fn print_order(json: bool, value: &Value) {
    print(json, value, |v| {
        let o = &v["order"];
        format!(
            "order {} issued: {} {} {} -> {}",
            s(&o["seq"]),
            s(&o["kind"]),
            s(&o["repo"]),
            s(&o["env"]),
            s(&o["sha"])
        )
    });
}

/// An order's outcome and why, on one line.
fn outcome(o: &Value) -> String {
    match o["reason"].as_str() {
        Some(why) => format!("{}: {why}", s(&o["outcome"])),
        None => s(&o["outcome"]),
    }
}

/// The full sha a prefix names among the shas the gateway knows for a repo/env (its orders
/// and its agents'), as `status` and `history` print them (12 characters).
fn full_sha(t: &RepoEnvArgs, given: &str) -> anyhow::Result<String> {
    let given = given.trim().to_ascii_lowercase();
    if given.len() == 40 || given.is_empty() || !given.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(given);
    }
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("repo", &t.repo.to_ascii_lowercase())
        .append_pair("env", &t.env);
    let q = q.finish();
    let orders = call(
        &t.client,
        &format!("/api/v1/deployments?{q}&limit=1000"),
        None,
    )?;
    let agents = call(&t.client, &format!("/api/v1/agents?{q}"), None)?;
    let mut found: Vec<String> = Vec::new();
    let known = orders["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|o| [&o["sha"], &o["base_sha"]])
        .chain(
            agents["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| [&a["sha"], &a["running_sha"], &a["previous_sha"]]),
        );
    for sha in known.filter_map(Value::as_str) {
        if sha.starts_with(&given) && !found.iter().any(|f| f == sha) {
            found.push(sha.to_owned());
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(anyhow!(
            "no order or agent of {}/{} has a sha starting with {given}: give all 40 characters",
            t.repo,
            t.env
        )),
        _ => Err(anyhow!(
            "{given} is the start of {} shas ({}): give more characters",
            found.len(),
            found.join(", ")
        )),
    }
}

/// `deploy`: a manual order.
pub fn deploy(args: &DeployArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let sha = full_sha(t, &args.sha)?;
    let body =
        json!({ "repo": t.repo, "env": t.env, "sha": sha, "ref": args.git_ref, "now": args.now });
    let value = call(&t.client, "/api/v1/deploy", Some(body))?;
    print_order(t.client.json, &value);
    Ok(())
}

/// `rollback`: a rollback order.
pub fn rollback(args: &RollbackArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let to = args.to.as_deref().map(|to| full_sha(t, to)).transpose()?;
    let body = json!({ "repo": t.repo, "env": t.env, "to": to });
    let value = call(&t.client, "/api/v1/rollback", Some(body))?;
    print_order(t.client.json, &value);
    Ok(())
}

/// `pause` / `resume`.
pub fn set_paused(args: &RepoEnvArgs, paused: bool) -> anyhow::Result<()> {
    let path = if paused {
        "/api/v1/pause"
    } else {
        "/api/v1/resume"
    };
    let body = json!({ "repo": args.repo, "env": args.env });
    let value = call(&args.client, path, Some(body))?;
    print(args.client.json, &value, |v| {
        format!(
            "{}/{} {}",
            s(&v["repo"]),
            s(&v["env"]),
            if paused { "paused" } else { "resumed" }
        )
    });
    Ok(())
}

/// `rollout status|promote|abort`.
pub fn rollout(cmd: &RolloutCommand) -> anyhow::Result<()> {
    let (args, path) = match cmd {
        RolloutCommand::Status(a) => (a, None),
        RolloutCommand::Promote(a) => (a, Some("/api/v1/rollouts/promote")),
        RolloutCommand::Abort(a) => (a, Some("/api/v1/rollouts/abort")),
    };
    let value = match path {
        Some(path) => {
            let body = json!({ "repo": args.repo, "env": args.env });
            call(&args.client, path, Some(body))?
        }
        None => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("repo", &args.repo.to_ascii_lowercase())
                .append_pair("env", &args.env)
                .append_pair("limit", "10");
            call(
                &args.client,
                &format!("/api/v1/rollouts?{}", q.finish()),
                None,
            )?
        }
    };
    print(args.client.json, &value, |v| {
        let list = match v.get("rollout") {
            Some(one) => vec![one.clone()],
            None => v["rollouts"].as_array().cloned().unwrap_or_default(),
        };
        let rows = list
            .iter()
            .map(|r| {
                let waves = r["policy"]["waves"].as_array().map_or(0, Vec::len);
                vec![
                    s(&r["id"]),
                    s(&r["kind"]),
                    short(&r["sha"]),
                    short(&r["base_sha"]),
                    format!("{}/{waves}", r["wave"].as_u64().unwrap_or(0) + 1),
                    s(&r["state"]),
                    s(&r["started_at"]),
                    s(&r["reason"]),
                ]
            })
            .collect();
        table(
            &[
                "ID", "KIND", "SHA", "BASE", "WAVE", "STATE", "STARTED", "WHY",
            ],
            rows,
        )
    });
    Ok(())
}
