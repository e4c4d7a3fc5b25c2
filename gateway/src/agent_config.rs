//! `orcastrate-gateway agent-config`: a ready agent config for one host, so that nothing
//! (the server URL, the gateway's public key, the exact repo and env names) is copied by
//! hand. The two secrets stay placeholders: the gateway does not print tokens.

use std::net::SocketAddr;

use orcastrate_broker::{names, ConfigError, DEFAULT_PREFIX};

use crate::config::{MqttMode, Settings};

/// What to write for one agent.
#[derive(Debug, Clone)]
pub struct AgentSpec<'a> {
    pub name: &'a str,
    pub repo: &'a str,
    pub env: &'a str,
    /// The bus URL as agents reach it; `None`: derived from `[mqtt]`.
    pub server: Option<&'a str>,
}

/// The agent config, and warnings about what would stop that agent from working.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub toml: String,
    pub warnings: Vec<String>,
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The URL agents use for a broker listening on `listen`: this host's name for a wildcard
/// address, which agents on other hosts cannot dial.
fn server_for(listen: SocketAddr, tls: bool, host_name: &str) -> String {
    let scheme = if tls { "mqtts" } else { "mqtt" };
    let host = if listen.ip().is_unspecified() {
        host_name.to_owned()
    } else if listen.is_ipv6() {
        format!("[{}]", listen.ip())
    } else {
        listen.ip().to_string()
    };
    format!("{scheme}://{host}:{}", listen.port())
}

/// This machine's host name (`localhost` if it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Renders the agent config of `spec` for a gateway with `settings` and `public_key`.
///
/// # Errors
///
/// A name, repo or env the agent would refuse, naming the flag.
pub fn render(
    settings: &Settings,
    public_key: &str,
    spec: &AgentSpec<'_>,
    host_name: &str,
) -> Result<Rendered, ConfigError> {
    let flag = |key: &str, e: String| ConfigError::new("the command line", key, e);
    let name = names::agent(spec.name).map_err(|e| flag("--name", e.to_string()))?;
    let repo = names::repo(spec.repo).map_err(|e| flag("--repo", e.to_string()))?;
    let env = names::env(spec.env).map_err(|e| flag("--env", e.to_string()))?;
    let server = match (spec.server, &settings.mqtt) {
        (Some(url), _) => url.to_owned(),
        (None, MqttMode::Embedded { listen, tls, .. }) => {
            server_for(*listen, tls.is_some(), host_name)
        }
        (None, MqttMode::External(engine)) => engine.url.clone(),
    };
    let mut warnings = Vec::new();
    match settings.access.client(name) {
        None => warnings.push(format!(
            "{name} is not a client of this gateway: add it to [[clients]] (or TRUSTED_NAMES and TOKENS) with a token, or its login is refused"
        )),
        Some(c) if !c.may_report(&repo, env) => warnings.push(format!(
            "client {name} may not report for {repo}/{env}: give it role \"agent\" and a scope \"{repo}/{env}\""
        )),
        Some(_) => {}
    }
    if !settings.access.knows(&repo, env) {
        warnings.push(format!(
            "{repo}/{env} is not mapped in [[repos]] (or ORCASTRATE_REPOS): no push deploys to it"
        ));
    }
    let short = repo.rsplit('/').next().unwrap_or(&repo);
    let mut toml = format!(
        "# Agent config for {name}, printed by `orcastrate-gateway agent-config`.\n\
         # Fill in the two secrets below (or set CONNECT_TOKEN and CONFIG_KEY), then run\n\
         # `orcastrate-agent --config <this file>`; config/agent.example.toml comments every key.\n\
         name = {}\n\
         server = [{}]\n\
         repo = {}\n\
         env = {}\n\
         # Where releases live on this host (created if missing).\n\
         root = {}\n\
         # The gateway's order-signing key: the agent runs only orders it signed.\n\
         gateway_public_keys = [{}]\n\
         # This agent's token: its entry in the gateway's [[clients]] or TOKENS (or CONNECT_TOKEN).\n\
         # token = \"…\"\n\
         # The key of the service's config/encrypted_{env}.* (orcastrate-crypt keygen), if it has one (or CONFIG_KEY).\n\
         # config_key = \"…\"\n",
        q(name),
        q(&server),
        q(&repo),
        q(env),
        q(&format!("/srv/orcastrate/{short}-{env}")),
        q(public_key),
    );
    if settings.prefix != DEFAULT_PREFIX {
        toml.push_str(&format!("prefix = {}\n", q(&settings.prefix)));
    }
    Ok(Rendered { toml, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_reached_by_the_host_name() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            server_for(at("0.0.0.0:1883"), false, "gw"),
            "mqtt://gw:1883"
        );
        assert_eq!(
            server_for(at("10.0.0.2:8883"), true, "gw"),
            "mqtts://10.0.0.2:8883"
        );
        assert_eq!(
            server_for(at("[::1]:1883"), false, "gw"),
            "mqtt://[::1]:1883"
        );
    }
}
