//! GitHub's Deployments API with typed requests on `ureq` (already the gateway's HTTP
//! client: no new client stack, which octocrab's hyper/tower tree and its many
//! endpoints we do not use would add to the binary).

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::json;

use super::config::GithubTarget;
use super::deliver::{send, Outcome};
use super::facts::Fact;

/// `POST /repos/{owner}/{repo}/deployments`.
#[derive(Serialize)]
struct NewDeployment<'a> {
    #[serde(rename = "ref")]
    git_ref: &'a str,
    environment: &'a str,
    auto_merge: bool,
    required_contexts: [&'a str; 0],
    payload: serde_json::Value,
    description: &'a str,
}

/// `POST /repos/{owner}/{repo}/deployments/{id}/statuses`.
#[derive(Serialize)]
struct NewStatus<'a> {
    state: &'a str,
    description: &'a str,
    environment: &'a str,
}

/// GitHub keeps at most 140 characters of a description.
fn clip(s: &str) -> String {
    s.chars().take(140).collect()
}

fn deployment_id(
    conn: &Connection,
    repo: &str,
    env: &str,
    seq: u64,
) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT id FROM github_deployments WHERE repo = ?1 AND env = ?2 AND seq = ?3",
        params![repo, env, i64::try_from(seq).unwrap_or(i64::MAX)],
        |r| r.get(0),
    )
    .optional()
}

/// The deployment this one replaces: the newest older one of the repo/env.
fn replaced_id(
    conn: &Connection,
    repo: &str,
    env: &str,
    seq: u64,
) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT id FROM github_deployments WHERE repo = ?1 AND env = ?2 AND seq < ?3
         ORDER BY seq DESC LIMIT 1",
        params![repo, env, i64::try_from(seq).unwrap_or(i64::MAX)],
        |r| r.get(0),
    )
    .optional()
}

fn post(gh: &GithubTarget, path: &str, body: &impl Serialize) -> Outcome {
    let url = format!("{}{path}", gh.api_url);
    let body = serde_json::to_vec(body).expect("requests serialize");
    let headers = [
        ("Authorization", format!("Bearer {}", gh.token)),
        ("Accept", "application/vnd.github+json".to_owned()),
        ("X-GitHub-Api-Version", "2022-11-28".to_owned()),
        ("Content-Type", "application/json".to_owned()),
    ];
    send(&url, &headers, &body)
}

fn status(gh: &GithubTarget, repo: &str, id: i64, state: &str, why: &str, env: &str) -> Outcome {
    let body = NewStatus {
        state,
        description: &clip(why),
        environment: env,
    };
    post(
        gh,
        &format!("/repos/{repo}/deployments/{id}/statuses"),
        &body,
    )
}

/// Delivers one fact to GitHub.
pub(super) fn deliver(gh: &GithubTarget, conn: &Connection, fact: &Fact) -> Outcome {
    match fact {
        Fact::Order {
            repo,
            env,
            seq,
            sha,
            kind,
            why,
            ..
        } => {
            let body = NewDeployment {
                git_ref: sha,
                environment: env,
                auto_merge: false,
                required_contexts: [],
                payload: json!({ "seq": seq, "kind": kind }),
                description: &clip(why),
            };
            let outcome = post(gh, &format!("/repos/{repo}/deployments"), &body);
            let Outcome::Done(Some(answer)) = &outcome else {
                return outcome;
            };
            let Some(id) = answer["id"].as_i64() else {
                return Outcome::Failed("GitHub's answer to a new deployment has no id".into());
            };
            if let Err(e) = conn.execute(
                "INSERT OR REPLACE INTO github_deployments (repo, env, seq, id) VALUES (?1, ?2, ?3, ?4)",
                params![repo, env, i64::try_from(*seq).unwrap_or(i64::MAX), id],
            ) {
                return Outcome::Retry { after: None, error: format!("ledger: {e}") };
            }
            outcome
        }
        Fact::State {
            repo,
            env,
            seq,
            state,
            error,
            ..
        } => {
            let id = match deployment_id(conn, repo, env, *seq) {
                Ok(Some(id)) => id,
                Ok(None) => {
                    return Outcome::Failed(format!("no GitHub deployment for order {seq}"))
                }
                Err(e) => {
                    return Outcome::Retry {
                        after: None,
                        error: format!("ledger: {e}"),
                    }
                }
            };
            let why = error.as_deref().unwrap_or(match state.as_str() {
                "success" => "every agent healthy",
                _ => "agents deploying",
            });
            let outcome = status(gh, repo, id, state, why, env);
            if state == "success" && matches!(outcome, Outcome::Done(_)) {
                if let Ok(Some(old)) = replaced_id(conn, repo, env, *seq) {
                    return status(
                        gh,
                        repo,
                        old,
                        "inactive",
                        &format!("replaced by order {seq}"),
                        env,
                    );
                }
            }
            outcome
        }
        Fact::Pause { .. } => Outcome::Done(None),
    }
}
