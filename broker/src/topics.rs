//! Topic names of the bus, built and parsed in one place.
//!
//! `{prefix}/{owner}/{name}/{env}/desired`, `.../status/{agent}`, `.../log/{agent}`,
//! `.../fleet`, and `{prefix}/{owner}/{name}/events`. Values are validated before they get
//! here (see [`crate::names`]), so building needs no escaping.

/// A value that cannot be the topic prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a topic prefix: use one or more topic levels (\"orcastrate\", \"acme/deploys\") \
     without + # $ or control characters, no leading or trailing '/', the same on the gateway and \
     every agent (default \"orcastrate\")"
)]
pub struct PrefixError(pub String);

/// Checks a topic prefix; the one rule of the gateway's `[mqtt] prefix` and the agent's
/// `prefix`, so both sides build the same topics.
///
/// A leading `/` would make an empty first level, and brokers treat topics starting with
/// `$` as their own (`$SYS`), so a `#` subscription would miss them.
///
/// # Errors
///
/// When the prefix is empty, starts or ends with `/`, or holds `+`, `#`, `$` or a control
/// character.
pub fn check_prefix(prefix: &str) -> Result<&str, PrefixError> {
    if prefix.is_empty()
        || prefix.starts_with('/')
        || prefix.ends_with('/')
        || prefix.contains(['+', '#', '$'])
        || prefix.chars().any(char::is_control)
    {
        let shown: String = prefix.chars().take(80).collect();
        return Err(PrefixError(shown));
    }
    Ok(prefix)
}

/// Builds and parses topics under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

/// What an incoming topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKind {
    /// The retained desired-state order of a repo/env.
    Desired { repo: String, env: String },
    /// The retained status of one agent.
    Status {
        repo: String,
        env: String,
        agent: String,
    },
    /// Live log lines of one agent.
    Log {
        repo: String,
        env: String,
        agent: String,
    },
    /// The retained fleet summary of a repo/env.
    Fleet { repo: String, env: String },
    /// Webhook decisions for a repo.
    Events { repo: String },
}

impl Default for Topics {
    fn default() -> Self {
        Self::new(crate::DEFAULT_PREFIX)
    }
}

impl Topics {
    /// Topics under `prefix` (without a trailing `/`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// `{prefix}/{repo}/{env}/desired`.
    pub fn desired(&self, repo: &str, env: &str) -> String {
        format!("{}/{repo}/{env}/desired", self.prefix)
    }

    /// `{prefix}/{repo}/{env}/status/{agent}`.
    pub fn status(&self, repo: &str, env: &str, agent: &str) -> String {
        format!("{}/{repo}/{env}/status/{agent}", self.prefix)
    }

    /// `{prefix}/{repo}/{env}/log/{agent}`.
    pub fn log(&self, repo: &str, env: &str, agent: &str) -> String {
        format!("{}/{repo}/{env}/log/{agent}", self.prefix)
    }

    /// `{prefix}/{repo}/{env}/fleet`.
    pub fn fleet(&self, repo: &str, env: &str) -> String {
        format!("{}/{repo}/{env}/fleet", self.prefix)
    }

    /// `{prefix}/{repo}/events`.
    pub fn events(&self, repo: &str) -> String {
        format!("{}/{repo}/events", self.prefix)
    }

    /// Filter matching every topic under the prefix.
    pub fn all(&self) -> String {
        format!("{}/#", self.prefix)
    }

    /// Filter matching every `desired` topic.
    pub fn all_desired(&self) -> String {
        format!("{}/+/+/+/desired", self.prefix)
    }

    /// Filter matching every `fleet` topic.
    pub fn all_fleet(&self) -> String {
        format!("{}/+/+/+/fleet", self.prefix)
    }

    /// Filter matching every `status` topic.
    pub fn all_status(&self) -> String {
        format!("{}/+/+/+/status/+", self.prefix)
    }

    /// What the gateway subscribes to: every `desired` and `fleet` topic (to guard them)
    /// and every `status`.
    pub fn gateway_filters(&self) -> [String; 3] {
        [self.all_desired(), self.all_status(), self.all_fleet()]
    }

    /// Parses a topic of this prefix; `None` for anything else.
    pub fn parse(&self, topic: &str) -> Option<TopicKind> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        let repo = |owner: &str, name: &str| format!("{owner}/{name}");
        match parts.as_slice() {
            [owner, name, "events"] => Some(TopicKind::Events {
                repo: repo(owner, name),
            }),
            [owner, name, env, "desired"] => Some(TopicKind::Desired {
                repo: repo(owner, name),
                env: (*env).to_owned(),
            }),
            [owner, name, env, "fleet"] => Some(TopicKind::Fleet {
                repo: repo(owner, name),
                env: (*env).to_owned(),
            }),
            [owner, name, env, "status", agent] => Some(TopicKind::Status {
                repo: repo(owner, name),
                env: (*env).to_owned(),
                agent: (*agent).to_owned(),
            }),
            [owner, name, env, "log", agent] => Some(TopicKind::Log {
                repo: repo(owner, name),
                env: (*env).to_owned(),
                agent: (*agent).to_owned(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_parse_round_trip() {
        let t = Topics::default();
        let d = t.desired("octo-org/web", "production");
        assert_eq!(d, "orcastrate/octo-org/web/production/desired");
        assert_eq!(
            t.parse(&d),
            Some(TopicKind::Desired {
                repo: "octo-org/web".into(),
                env: "production".into()
            })
        );
        let s = t.status("octo-org/web", "production", "web-1");
        assert_eq!(s, "orcastrate/octo-org/web/production/status/web-1");
        assert_eq!(
            t.parse(&s),
            Some(TopicKind::Status {
                repo: "octo-org/web".into(),
                env: "production".into(),
                agent: "web-1".into()
            })
        );
        assert_eq!(
            t.parse(&t.events("octo-org/web")),
            Some(TopicKind::Events {
                repo: "octo-org/web".into()
            })
        );
        assert!(matches!(
            t.parse(&t.fleet("a/b", "c")),
            Some(TopicKind::Fleet { .. })
        ));
        assert!(matches!(
            t.parse(&t.log("a/b", "c", "d")),
            Some(TopicKind::Log { .. })
        ));
    }

    #[test]
    fn the_prefix_rule() {
        for ok in ["orcastrate", "acme/deploys", "a-b_c.d"] {
            assert_eq!(check_prefix(ok), Ok(ok));
        }
        for bad in [
            "",
            "/orcastrate",
            "orcastrate/",
            "a/+",
            "a/#",
            "$SYS",
            "a$b",
            "a\nb",
            "a\0b",
        ] {
            let e = check_prefix(bad).unwrap_err().to_string();
            assert!(e.contains("not a topic prefix"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn foreign_topics_are_none() {
        let t = Topics::new("orcastrate");
        assert_eq!(t.parse("other/a/b/c/desired"), None);
        assert_eq!(t.parse("orcastrate/a/b/c/unknown"), None);
        assert_eq!(t.parse("orcastrateX/a/b/c/desired"), None);
        assert_eq!(t.parse("orcastrate/a/b/c/status/x/y"), None);
    }
}
