//! Topic permissions, derived from `[[clients]]` in one place and enforced by the embedded
//! broker on every packet ([`AccessPolicy`]) or rendered for an external engine: mosquitto's
//! ACL file, NATS permissions, and the HTTP authorization endpoint EMQX calls.
//!
//! An agent reads only its scopes' `desired` topics and writes only its own `status` and
//! `log` topics; a watcher reads every topic of its scopes and writes nothing; only the
//! gateway writes `desired`, `fleet` and `events`. Signed orders and MAC'd statuses stay a
//! second line of defence where an engine's ACLs are wrong.

use std::sync::{Arc, RwLock};

use orcastrate_broker::Topics;

use crate::config::{Access, Client, Role};

/// The topic filters one bus user may subscribe to (`read`) and publish on (`write`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub read: Vec<String>,
    pub write: Vec<String>,
}

/// What a user asks to do, as an engine's authorization hook names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

/// The grants of a configured client.
pub fn client_grants(client: &Client, topics: &Topics) -> Grants {
    // A client of all repo/envs gets wildcard levels in place of owner/name and env.
    let all = [("+/+".to_owned(), "+".to_owned())];
    let scopes = client.scopes.as_deref().unwrap_or(&all);
    let mut grants = Grants::default();
    if client.role == Role::Watcher && client.scopes.is_none() {
        // Every repo/env is in its scope: one filter, so `mosquitto_sub -t 'prefix/#'` works.
        grants.read.push(topics.all());
        return grants;
    }
    for (repo, env) in scopes {
        match client.role {
            Role::Agent => {
                grants.read.push(topics.desired(repo, env));
                grants.write.push(topics.status(repo, env, &client.name));
                grants.write.push(topics.log(repo, env, &client.name));
            }
            Role::Watcher => {
                grants.read.push(topics.desired(repo, env));
                grants.read.push(topics.fleet(repo, env));
                grants.read.push(topics.status(repo, env, "+"));
                grants.read.push(topics.log(repo, env, "+"));
                grants.read.push(topics.events(repo));
            }
        }
    }
    grants.read.dedup();
    grants
}

/// The gateway's own grants: everything under the prefix.
pub fn gateway_grants(topics: &Topics) -> Grants {
    let all = topics.all();
    Grants {
        read: vec![all.clone()],
        write: vec![all],
    }
}

impl Grants {
    /// Whether `action` on `topic` (a topic name to publish on, or a filter to subscribe to)
    /// is granted.
    pub fn allows(&self, action: Action, topic: &str) -> bool {
        match action {
            Action::Publish => {
                !topic.contains(['+', '#']) && self.write.iter().any(|f| covers(f, topic))
            }
            Action::Subscribe => self.read.iter().any(|f| covers(f, topic)),
        }
    }
}

/// The permission model as the embedded broker asks it: the clients are read on every
/// check, so a SIGHUP reload applies to connected clients' next packets.
pub struct AccessPolicy {
    pub access: Arc<RwLock<Access>>,
    pub topics: Topics,
}

impl AccessPolicy {
    fn allows(&self, username: &str, action: Action, topic: &str) -> bool {
        let access = self.access.read().unwrap_or_else(|e| e.into_inner());
        access
            .client(username)
            .is_some_and(|c| client_grants(c, &self.topics).allows(action, topic))
    }
}

#[cfg(feature = "embedded")]
impl orcastrate_broker::guard::TopicPolicy for AccessPolicy {
    fn may_publish(&self, username: &str, topic: &str) -> bool {
        self.allows(username, Action::Publish, topic)
    }

    fn may_subscribe(&self, username: &str, filter: &str) -> bool {
        self.allows(username, Action::Subscribe, filter)
    }
}

/// Whether every topic `requested` can match is also matched by `granted` (both MQTT
/// filters; a topic name is a filter without wildcards).
fn covers(granted: &str, requested: &str) -> bool {
    let mut g = granted.split('/');
    let mut r = requested.split('/');
    loop {
        match (g.next(), r.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(gl), Some(rl)) if gl == rl && gl != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(role: Role, scopes: Option<&[(&str, &str)]>) -> Client {
        Client {
            name: "web-1".into(),
            token: "token-1234".into(),
            scopes: scopes.map(|s| {
                s.iter()
                    .map(|(r, e)| ((*r).to_owned(), (*e).to_owned()))
                    .collect()
            }),
            role,
        }
    }

    #[test]
    fn an_agent_reads_its_orders_and_writes_only_its_own_status_and_log() {
        let t = Topics::default();
        let g = client_grants(
            &client(Role::Agent, Some(&[("octo/web.site", "production")])),
            &t,
        );
        assert!(g.allows(
            Action::Subscribe,
            "orcastrate/octo/web.site/production/desired"
        ));
        assert!(g.allows(
            Action::Publish,
            "orcastrate/octo/web.site/production/status/web-1"
        ));
        assert!(g.allows(
            Action::Publish,
            "orcastrate/octo/web.site/production/log/web-1"
        ));
        for denied in [
            "orcastrate/octo/web.site/production/desired",
            "orcastrate/octo/web.site/production/status/web-2",
            "orcastrate/octo/web.site/staging/status/web-1",
            "orcastrate/octo/web.site/production/fleet",
            "orcastrate/octo/web.site/events",
            "orcastrate/octo/web.site/production/status/+",
        ] {
            assert!(!g.allows(Action::Publish, denied), "{denied}");
        }
        for denied in [
            "orcastrate/#",
            "orcastrate/+/+/+/desired",
            "orcastrate/octo/web.site/staging/desired",
            "orcastrate/octo/web.site/production/status/web-2",
            "orcastrate/octo/web.site/production/+",
        ] {
            assert!(!g.allows(Action::Subscribe, denied), "{denied}");
        }
    }

    #[test]
    fn an_agent_of_all_repos_gets_wildcards_but_still_only_its_own_status() {
        let g = client_grants(&client(Role::Agent, None), &Topics::default());
        assert!(g.allows(Action::Subscribe, "orcastrate/a/b/prod/desired"));
        assert!(g.allows(Action::Subscribe, "orcastrate/+/+/+/desired"));
        assert!(g.allows(Action::Publish, "orcastrate/a/b/prod/status/web-1"));
        assert!(!g.allows(Action::Publish, "orcastrate/a/b/prod/status/web-2"));
        assert!(!g.allows(Action::Subscribe, "orcastrate/a/b/prod/fleet"));
    }

    #[test]
    fn a_watcher_reads_its_scopes_and_writes_nothing() {
        let g = client_grants(
            &client(Role::Watcher, Some(&[("octo/web", "production")])),
            &Topics::default(),
        );
        assert!(g.write.is_empty());
        for allowed in [
            "orcastrate/octo/web/production/fleet",
            "orcastrate/octo/web/production/status/+",
            "orcastrate/octo/web/production/log/web-9",
            "orcastrate/octo/web/events",
        ] {
            assert!(g.allows(Action::Subscribe, allowed), "{allowed}");
        }
        assert!(!g.allows(Action::Subscribe, "orcastrate/octo/web/#"));
        assert!(!g.allows(Action::Subscribe, "orcastrate/octo/api/production/fleet"));

        let all = client_grants(&client(Role::Watcher, None), &Topics::default());
        assert!(all.write.is_empty());
        assert!(all.allows(Action::Subscribe, "orcastrate/#"));
        assert!(!all.allows(Action::Subscribe, "#"));
        assert!(!all.allows(Action::Subscribe, "other/#"));
    }

    #[test]
    fn filters_cover_only_what_they_match() {
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/b/#"));
        assert!(covers("a/+/c", "a/+/c"));
        assert!(!covers("a/+/c", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/b", "a/b/c"));
        assert!(!covers("a/b/c", "a/b"));
        assert!(
            gateway_grants(&Topics::default()).allows(Action::Publish, "orcastrate/x/y/z/desired")
        );
        assert!(!gateway_grants(&Topics::default()).allows(Action::Publish, "other/x"));
    }
}
