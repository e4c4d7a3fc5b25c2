//! `[repos.rollout.ENV]`: how a push reaches a repo/env's agents, read from the file and
//! validated into a [`Policy`] (design: "Rollouts").

use std::collections::BTreeMap;

use orcastrate_broker::{names, ConfigError};
use serde::{Deserialize, Serialize};

/// Most waves a rollout may have; more is a typo, not a plan.
const MAX_WAVES: usize = 20;

/// Longest `hold_s` and `wave_timeout_s` taken: a week.
const MAX_SECONDS: u64 = 7 * 24 * 3600;

/// Default `hold_s`: a minute of health before the next wave.
const DEFAULT_HOLD_S: u64 = 60;

/// Default `wave_timeout_s`: ten minutes for a wave to become healthy.
const DEFAULT_WAVE_TIMEOUT_S: u64 = 600;

/// `[repos.rollout.ENV]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    pub waves: Vec<String>,
    pub hold_s: Option<u64>,
    pub wave_timeout_s: Option<u64>,
    pub max_failed: Option<u32>,
}

/// One wave: cumulative, so a wave's agents include every earlier wave's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wave {
    /// These agents (a `waves` entry of names, comma-separated).
    Agents(Vec<String>),
    /// This share (1 to 100) of the agents known for the repo/env.
    Share(u8),
}

impl std::fmt::Display for Wave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Agents(a) => f.write_str(&a.join(",")),
            Self::Share(p) => write!(f, "{p}%"),
        }
    }
}

/// How a repo/env rolls out, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// At least one; the last is everyone (`100%`).
    pub waves: Vec<Wave>,
    /// How long a wave stays healthy before the next starts.
    pub hold_s: u64,
    /// A wave not all healthy by then is reverted (`None`: no limit).
    pub wave_timeout_s: Option<u64>,
    /// Failed, rolled back or unhealthy agents tolerated; one more reverts.
    pub max_failed: u32,
}

impl Policy {
    /// Without a `rollout` table: one wave of every agent, reverted on the first failure.
    pub fn all_at_once() -> Self {
        Self {
            waves: vec![Wave::Share(100)],
            hold_s: 0,
            wave_timeout_s: None,
            max_failed: 0,
        }
    }
}

/// Validates the `rollout` tables of repo `repo`, whose branches deploy to `envs`.
///
/// # Errors
///
/// A [`ConfigError`] naming the key, what is wrong and what to write instead.
pub fn validate(
    repo: &str,
    envs: &[&str],
    tables: BTreeMap<String, RolloutFile>,
    where_: &str,
) -> Result<BTreeMap<String, Policy>, ConfigError> {
    let mut out = BTreeMap::new();
    for (env, file) in tables {
        let table = format!("[repos.rollout.{env}] of {repo}");
        if !envs.contains(&env.as_str()) {
            return Err(ConfigError::new(
                where_,
                table,
                format!(
                    "{env:?} is not an env of this repo's branches ({}): name one of them",
                    envs.join(", ")
                ),
            ));
        }
        let policy = policy(file).map_err(|e| {
            let (key, problem) = e.split_once(": ").unwrap_or(("", e.as_str()));
            ConfigError::new(where_, format!("{table} {key}"), problem)
        })?;
        out.insert(env, policy);
    }
    Ok(out)
}

fn policy(file: RolloutFile) -> Result<Policy, String> {
    if file.waves.is_empty() || file.waves.len() > MAX_WAVES {
        return Err(format!(
            "waves: give 1 to {MAX_WAVES} waves, e.g. [\"web-1\", \"25%\", \"100%\"]"
        ));
    }
    let waves = file
        .waves
        .iter()
        .map(|w| wave(w))
        .collect::<Result<Vec<_>, _>>()?;
    if waves.last() != Some(&Wave::Share(100)) {
        return Err("waves: the last wave must be \"100%\" (it goes to every agent)".into());
    }
    let hold_s = file.hold_s.unwrap_or(DEFAULT_HOLD_S);
    if hold_s > MAX_SECONDS {
        return Err(format!("hold_s = {hold_s}: at most {MAX_SECONDS} (a week)"));
    }
    let timeout = file.wave_timeout_s.unwrap_or(DEFAULT_WAVE_TIMEOUT_S);
    if timeout == 0 || timeout > MAX_SECONDS {
        return Err(format!(
            "wave_timeout_s = {timeout}: give 1 to {MAX_SECONDS} seconds"
        ));
    }
    Ok(Policy {
        waves,
        hold_s,
        wave_timeout_s: Some(timeout),
        max_failed: file.max_failed.unwrap_or(0),
    })
}

fn wave(text: &str) -> Result<Wave, String> {
    if let Some(share) = text.strip_suffix('%') {
        return match share.parse::<u8>() {
            Ok(p @ 1..=100) => Ok(Wave::Share(p)),
            _ => Err(format!("waves: {text:?} is not a share: write 1% to 100%")),
        };
    }
    let agents = text
        .split(',')
        .map(|a| {
            names::agent(a.trim()).map(str::to_owned).map_err(|e| {
                format!("waves: {text:?}: {e}; write agent names or a share like \"25%\"")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Wave::Agents(agents))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(waves: &[&str]) -> RolloutFile {
        RolloutFile {
            waves: waves.iter().map(|w| (*w).to_owned()).collect(),
            hold_s: None,
            wave_timeout_s: None,
            max_failed: None,
        }
    }

    fn one(env: &str, f: RolloutFile) -> Result<BTreeMap<String, Policy>, String> {
        validate(
            "a/b",
            &["production"],
            BTreeMap::from([(env.to_owned(), f)]),
            "g.toml",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn waves_parse_with_defaults() {
        let p = one(
            "production",
            file(&["web-1", "web-2, web-3", "25%", "100%"]),
        )
        .unwrap();
        let p = &p["production"];
        assert_eq!(
            p.waves,
            [
                Wave::Agents(vec!["web-1".into()]),
                Wave::Agents(vec!["web-2".into(), "web-3".into()]),
                Wave::Share(25),
                Wave::Share(100)
            ]
        );
        assert_eq!(
            (p.hold_s, p.wave_timeout_s, p.max_failed),
            (60, Some(600), 0)
        );
    }

    #[test]
    fn the_example_table_uncommented_is_what_it_says() {
        let text = include_str!("../../../config/gateway.example.toml");
        let block = text
            .split_once("# [repos.rollout.production]")
            .expect("the example has a rollout table")
            .1;
        let mut toml = String::from("[repos.rollout.production]\n");
        for line in block.lines() {
            if let Some(kv) = line.strip_prefix("# ").filter(|l| l.contains(" = ")) {
                toml.push_str(kv);
                toml.push('\n');
            }
        }
        #[derive(Deserialize)]
        struct Repo {
            rollout: BTreeMap<String, RolloutFile>,
        }
        #[derive(Deserialize)]
        struct Doc {
            repos: Repo,
        }
        let doc: Doc = toml::from_str(&toml).unwrap();
        let p = validate(
            "octo-org/web",
            &["production"],
            doc.repos.rollout,
            "example",
        )
        .unwrap();
        let p = &p["production"];
        assert_eq!(p.waves.len(), 3);
        assert_eq!(
            (p.hold_s, p.wave_timeout_s, p.max_failed),
            (60, Some(600), 0)
        );
    }

    #[test]
    fn mistakes_name_the_key() {
        for (env, f, says) in [
            ("staging", file(&["100%"]), "not an env of this repo"),
            ("production", file(&[]), "give 1 to 20 waves"),
            (
                "production",
                file(&["web-1", "50%"]),
                "last wave must be \"100%\"",
            ),
            ("production", file(&["0%", "100%"]), "not a share"),
            ("production", file(&["Web 1", "100%"]), "waves: \"Web 1\""),
        ] {
            let e = one(env, f).unwrap_err();
            assert!(e.contains(says) && e.contains("[repos.rollout."), "{e}");
        }
        let mut f = file(&["100%"]);
        f.wave_timeout_s = Some(0);
        assert!(one("production", f)
            .unwrap_err()
            .contains("wave_timeout_s = 0"));
    }
}
