//! `[[clients]]`, `[[repos]]` and their environment forms (`TOKENS` + `TRUSTED_NAMES`,
//! `ORCASTRATE_REPOS`): the [`Access`] table, the part of the configuration that reloads on
//! SIGHUP. Pure: the environment comes in as a value.

use std::collections::{BTreeMap, HashSet};

use orcastrate_broker::{names, Problems};

use super::env::{split_list, Env};
use super::file::{ClientFile, RepoFile};
use super::runtime::{Access, Client, RepoRoute, Role};
use super::ConfigError;

/// Shortest client token accepted, whatever its source (`[[clients]]` or `TOKENS`): a
/// token is an MQTT password and a MAC key, and 8 random characters are already far past
/// guessing through the login throttle.
pub(super) const MIN_CLIENT_TOKEN: usize = 8;

/// Clients and repo routes from the file and the environment; every problem at once.
pub(super) fn build(
    clients_file: Vec<ClientFile>,
    repos_file: Vec<RepoFile>,
    env: &dyn Env,
    where_: &str,
) -> Result<Access, ConfigError> {
    let mut p = Problems::default();
    let mut clients: Vec<Client> = clients_file
        .into_iter()
        .filter_map(|c| p.check(client(c, where_)))
        .collect();
    if let Some(from_env) = p.check(env_clients(env)) {
        clients.extend(from_env);
    }
    let mut seen = HashSet::new();
    for c in &clients {
        if !seen.insert(c.name.as_str()) {
            p.push(ConfigError::new(
                where_,
                "[[clients]] name",
                format!(
                    "client {:?} is defined twice ([[clients]] in {where_} or TRUSTED_NAMES): give every client its own name",
                    c.name
                ),
            ));
        }
    }
    let mut repos: Vec<RepoRoute> = Vec::new();
    for r in repos_file {
        let Some(route) = p.check(repo(r, where_)) else {
            continue;
        };
        if repos.iter().any(|x| x.name == route.name) {
            p.push(ConfigError::new(
                where_,
                format!("[[repos]] {}", route.name),
                "listed twice: merge its branches into one entry",
            ));
        } else {
            repos.push(route);
        }
    }
    if let Some(value) = env.var("ORCASTRATE_REPOS") {
        for entry in split_list(&value) {
            if let Some((repo, branch, env_name)) = p.check(env_route(&entry)) {
                match repos.iter_mut().find(|r| r.name == repo) {
                    Some(r) => {
                        r.branches.insert(branch, env_name);
                    }
                    None => repos.push(RepoRoute {
                        name: repo,
                        branches: BTreeMap::from([(branch, env_name)]),
                        rollout: BTreeMap::new(),
                    }),
                }
            }
        }
    }
    p.finish(Some(Access { clients, repos }), where_)
}

/// One `[[clients]]` entry.
fn client(c: ClientFile, where_: &str) -> Result<Client, ConfigError> {
    let name = names::agent(&c.name)
        .map_err(|e| ConfigError::new(where_, "[[clients]] name", e.to_string()))?
        .to_owned();
    let key = |k: &str| format!("[[clients]] {name} {k}");
    let mut p = Problems::default();
    if c.token.len() < MIN_CLIENT_TOKEN {
        p.push(ConfigError::new(
            where_,
            key("token"),
            format!("token is shorter than {MIN_CLIENT_TOKEN} characters: use a long random one (openssl rand -hex 24)"),
        ));
    }
    let scopes = match c.scopes {
        None => Some(None),
        Some(list) => p
            .check(
                list.iter()
                    .map(|s| parse_scope(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConfigError::new(where_, key("scopes"), e)),
            )
            .map(Some),
    };
    let role = match c.role.as_deref() {
        None | Some("agent") => Some(Role::Agent),
        Some("watcher") => Some(Role::Watcher),
        Some(other) => p.check(Err(ConfigError::new(
            where_,
            key("role"),
            format!(
                "{other:?}: use \"agent\" (the default) or \"watcher\" (reads, never publishes)"
            ),
        ))),
    };
    let value = match (scopes, role) {
        (Some(scopes), Some(role)) => Some(Client {
            name,
            token: c.token,
            scopes,
            role,
        }),
        _ => None,
    };
    p.finish(value, where_)
}

/// `TOKENS` and `TRUSTED_NAMES`: the n-th name owns the n-th token.
fn env_clients(env: &dyn Env) -> Result<Vec<Client>, ConfigError> {
    let list = |var: &str| env.var(var).map(|v| split_list(&v)).unwrap_or_default();
    let (tokens, trusted) = (list("TOKENS"), list("TRUSTED_NAMES"));
    if tokens.len() != trusted.len() {
        return Err(ConfigError::new(
            "environment variables TOKENS and TRUSTED_NAMES",
            "TOKENS",
            format!(
                "TOKENS has {} entries and TRUSTED_NAMES has {}: the n-th name owns the n-th token, so give both the same number",
                tokens.len(),
                trusted.len()
            ),
        ));
    }
    let mut p = Problems::default();
    let clients = trusted
        .into_iter()
        .zip(tokens)
        .filter_map(|(name, token)| {
            let name = p.check(names::agent(&name).map_err(|e| {
                ConfigError::new(
                    "environment variable TRUSTED_NAMES",
                    "TRUSTED_NAMES",
                    e.to_string(),
                )
            }))?;
            if token.len() < MIN_CLIENT_TOKEN {
                // The position, not the value: no secret in an error message.
                p.push(ConfigError::new(
                    "environment variable TOKENS",
                    "TOKENS",
                    format!(
                        "the token of {name} is shorter than {MIN_CLIENT_TOKEN} characters, the minimum for every client token ([[clients]] token too): use a long random one (openssl rand -hex 24)"
                    ),
                ));
                return None;
            }
            Some(Client {
                name: name.to_owned(),
                token,
                scopes: None,
                role: Role::Agent,
            })
        })
        .collect();
    p.finish(Some(clients), "environment variable TRUSTED_NAMES")
}

/// One `[[repos]]` entry: its name and the env each branch deploys to.
fn repo(r: RepoFile, where_: &str) -> Result<RepoRoute, ConfigError> {
    let name = names::repo(&r.name)
        .map_err(|e| ConfigError::new(where_, "[[repos]] name", e.to_string()))?;
    let mut p = Problems::default();
    let mut branches = BTreeMap::new();
    for (branch, env_name) in r.branches {
        let key = format!("[[repos]] {name} branches.{branch}");
        let checked = names::single_line("branch", &branch)
            .and_then(|_| names::env(&env_name).map(|_| ()))
            .map_err(|e| ConfigError::new(where_, key, e.to_string()));
        if p.check(checked).is_some() {
            branches.insert(branch, env_name);
        }
    }
    let envs: Vec<&str> = branches.values().map(String::as_str).collect();
    let rollout = crate::rollout::config::validate(&name, &envs, r.rollout, where_);
    let rollout = p.check(rollout).unwrap_or_default();
    p.finish(
        Some(RepoRoute {
            name,
            branches,
            rollout,
        }),
        where_,
    )
}

/// One `ORCASTRATE_REPOS` entry, `owner/name@branch=env`.
fn env_route(entry: &str) -> Result<(String, String, String), ConfigError> {
    let err = |problem: String| {
        ConfigError::new(
            "environment variable ORCASTRATE_REPOS",
            "ORCASTRATE_REPOS",
            problem,
        )
    };
    let (repo, rest) = entry.split_once('@').ok_or_else(|| {
        err(format!(
            "entry {entry:?}: write owner/name@branch=env, e.g. octo-org/web@main=production"
        ))
    })?;
    let (branch, env_name) = rest
        .split_once('=')
        .ok_or_else(|| err(format!("entry {entry:?}: write owner/name@branch=env")))?;
    let repo = names::repo(repo).map_err(|e| err(e.to_string()))?;
    names::single_line("branch", branch).map_err(|e| err(e.to_string()))?;
    let env_name = names::env(env_name).map_err(|e| err(e.to_string()))?;
    Ok((repo, branch.to_owned(), env_name.to_owned()))
}

/// Parses a scope `owner/name/env`.
fn parse_scope(scope: &str) -> Result<(String, String), String> {
    let (repo, env) = scope
        .rsplit_once('/')
        .ok_or_else(|| format!("{scope:?}: write owner/name/env"))?;
    let repo = names::repo(repo).map_err(|e| e.to_string())?;
    let env = names::env(env).map_err(|e| e.to_string())?.to_owned();
    Ok((repo, env))
}
