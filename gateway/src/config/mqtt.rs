//! `[mqtt]`: the topic prefix and how the gateway reaches its bus, the embedded broker (its
//! listener, TLS and quotas) or an external engine (its URL, the gateway's login, the
//! hooks). Pure: the environment comes in as a value; the only read is of `ca_file`.

use std::time::Duration;

use orcastrate_broker::guard::Quotas;
use orcastrate_broker::{names, Problems};

use super::env::Env;
use super::file::{MqttFile, Overrides};
use super::http::{pair, parse_addr};
use super::runtime::{ExternalMqtt, MqttMode};
use super::ConfigError;

/// Default `republish_interval_s`.
const DEFAULT_REPUBLISH_S: u64 = 60;

impl MqttFile {
    /// The keys set that only the embedded broker uses.
    fn embedded_keys_set(&self) -> Vec<&'static str> {
        set_keys(&[
            ("listen", self.listen.is_some()),
            ("tls_cert", self.tls_cert.is_some()),
            ("tls_key", self.tls_key.is_some()),
            ("max_message_bytes", self.max_message_bytes.is_some()),
            ("max_log_bytes", self.max_log_bytes.is_some()),
            (
                "max_topics_per_client",
                self.max_topics_per_client.is_some(),
            ),
            (
                "max_subscriptions_per_client",
                self.max_subscriptions_per_client.is_some(),
            ),
            ("max_inflight", self.max_inflight.is_some()),
            (
                "max_connections_per_client",
                self.max_connections_per_client.is_some(),
            ),
        ])
    }

    /// The keys set that only an external engine uses.
    fn external_keys_set(&self) -> Vec<&'static str> {
        set_keys(&[
            ("url", self.url.is_some()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("republish_interval_s", self.republish_interval_s.is_some()),
            ("hooks_listen", self.hooks_listen.is_some()),
            ("hooks_token", self.hooks_token.is_some()),
        ])
    }
}

fn set_keys(keys: &[(&'static str, bool)]) -> Vec<&'static str> {
    keys.iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| *key)
        .collect()
}

/// `[mqtt] prefix`, under the one rule the agents follow too.
pub(super) fn prefix(mqtt: &MqttFile, where_: &str) -> Result<String, ConfigError> {
    let prefix = mqtt
        .prefix
        .clone()
        .unwrap_or_else(|| orcastrate_broker::DEFAULT_PREFIX.into());
    orcastrate_broker::topics::check_prefix(&prefix)
        .map_err(|e| ConfigError::new(where_, "[mqtt] prefix", e.to_string()))?;
    Ok(prefix)
}

/// `[mqtt] mode` and the keys of that mode.
pub(super) fn mode(
    mqtt: MqttFile,
    overrides: &Overrides,
    env: &dyn Env,
    where_: &str,
) -> Result<MqttMode, ConfigError> {
    match mqtt.mode.as_deref().unwrap_or("embedded") {
        "embedded" => embedded(mqtt, overrides, where_),
        "external" => external(mqtt, env, where_).map(MqttMode::External),
        other => Err(ConfigError::new(
            where_,
            "[mqtt] mode",
            format!("{other:?}: use \"embedded\" or \"external\""),
        )),
    }
}

/// The embedded broker: its listener, TLS and quotas.
fn embedded(mqtt: MqttFile, overrides: &Overrides, where_: &str) -> Result<MqttMode, ConfigError> {
    let mut p = Problems::default();
    for key in mqtt.external_keys_set() {
        p.push(ConfigError::new(
            where_,
            format!("[mqtt] {key}"),
            format!("{key} is for mode = \"external\": set mode = \"external\" to use an MQTT engine, or remove {key}"),
        ));
    }
    let listen = p.check(match &overrides.mqtt_listen {
        Some(value) => parse_addr(
            value,
            "--mqtt-listen (or ORCASTRATE_MQTT_LISTEN)",
            "[mqtt] listen",
        ),
        None => parse_addr(
            mqtt.listen.as_deref().unwrap_or("0.0.0.0:1883"),
            where_,
            "[mqtt] listen",
        ),
    });
    let quotas = p.check(quotas(&mqtt, where_));
    let tls = p.check(pair(mqtt.tls_cert, mqtt.tls_key, where_, "[mqtt]", "TLS"));
    let value = match (listen, quotas, tls) {
        (Some(listen), Some(quotas), Some(tls)) => Some(MqttMode::Embedded {
            listen,
            tls,
            quotas,
        }),
        _ => None,
    };
    p.finish(value, where_)
}

/// The embedded broker's quotas: each key between 1 and a ceiling, default when unset.
fn quotas(mqtt: &MqttFile, where_: &str) -> Result<Quotas, ConfigError> {
    let d = Quotas::default();
    let mut p = Problems::default();
    let mut key = |name: &str, value: Option<usize>, default: usize, max: usize| match value {
        None => default,
        Some(v) if (1..=max).contains(&v) => v,
        Some(v) => {
            p.push(ConfigError::new(
                where_,
                format!("[mqtt] {name}"),
                format!("{v} is out of range: use 1 to {max} (default {default})"),
            ));
            default
        }
    };
    let max_bytes = orcastrate_broker::MAX_PACKET_BYTES;
    let quotas = Quotas {
        max_message_bytes: key(
            "max_message_bytes",
            mqtt.max_message_bytes,
            d.max_message_bytes,
            max_bytes,
        ),
        max_log_bytes: key(
            "max_log_bytes",
            mqtt.max_log_bytes,
            d.max_log_bytes,
            max_bytes,
        ),
        max_topics_per_client: key(
            "max_topics_per_client",
            mqtt.max_topics_per_client,
            d.max_topics_per_client,
            10_000,
        ),
        max_subscriptions_per_client: key(
            "max_subscriptions_per_client",
            mqtt.max_subscriptions_per_client,
            d.max_subscriptions_per_client,
            10_000,
        ),
        max_inflight: key("max_inflight", mqtt.max_inflight, d.max_inflight, 65_535),
        max_connections_per_client: key(
            "max_connections_per_client",
            mqtt.max_connections_per_client,
            d.max_connections_per_client,
            100_000,
        ),
    };
    p.finish(Some(quotas), where_)
}

/// An external engine: its URL and the gateway's login there (the password may come from
/// `ORCASTRATE_MQTT_PASSWORD` so it need not sit in the file), and the hooks.
fn external(mqtt: MqttFile, env: &dyn Env, where_: &str) -> Result<ExternalMqtt, ConfigError> {
    let mut p = Problems::default();
    for key in mqtt.embedded_keys_set() {
        p.push(ConfigError::new(
            where_,
            format!("[mqtt] {key}"),
            format!("{key} is for the embedded broker; with mode = \"external\" the engine listens: remove {key}"),
        ));
    }
    let url = p.check(url(&mqtt, where_));
    let username = p.check(username(&mqtt, where_));
    let password = p.check(
        env.var("ORCASTRATE_MQTT_PASSWORD")
            .or(mqtt.password.clone())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    where_,
                    "[mqtt] password",
                    "mode = \"external\" needs password (or ORCASTRATE_MQTT_PASSWORD): the gateway's own password on the engine",
                )
            }),
    );
    if let (Some(url), Some(username), Some(password)) = (&url, &username, &password) {
        p.check(ca_file(&mqtt, url, username, password, where_));
    }
    let republish_interval = match mqtt.republish_interval_s.unwrap_or(DEFAULT_REPUBLISH_S) {
        0 => p.check(Err(ConfigError::new(
            where_,
            "[mqtt] republish_interval_s",
            format!("0: use 1 or more seconds (default {DEFAULT_REPUBLISH_S})"),
        ))),
        s => Some(Duration::from_secs(s)),
    };
    let hooks = p.check(hooks(&mqtt, where_));
    let value = match (url, username, password, republish_interval, hooks) {
        (Some(url), Some(username), Some(password), Some(republish_interval), Some(hooks)) => {
            Some(ExternalMqtt {
                url,
                username,
                password,
                ca_file: mqtt.ca_file,
                republish_interval,
                hooks_listen: hooks.0,
                hooks_token: hooks.1,
            })
        }
        _ => None,
    };
    p.finish(value, where_)
}

/// `[mqtt] url`: `mqtt://` or `mqtts://`.
fn url(mqtt: &MqttFile, where_: &str) -> Result<String, ConfigError> {
    let url = mqtt.url.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
        ConfigError::new(
            where_,
            "[mqtt] url",
            "mode = \"external\" needs url = \"mqtt://host:1883\" (or mqtts://host:8883 with ca_file)",
        )
    })?;
    orcastrate_broker::mqtt::parse_url(&url)
        .map_err(|e| ConfigError::new(where_, "[mqtt] url", e.to_string()))?;
    Ok(url)
}

/// `[mqtt] username`: the gateway's own login on the engine.
fn username(mqtt: &MqttFile, where_: &str) -> Result<String, ConfigError> {
    let username = mqtt
        .username
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                where_,
                "[mqtt] username",
                "mode = \"external\" needs username: the gateway's own login on the engine",
            )
        })?;
    names::agent(&username)
        .map_err(|e| ConfigError::new(where_, "[mqtt] username", e.to_string()))?;
    Ok(username)
}

/// `[mqtt] ca_file`: only with `mqtts://`, and a file of usable certificates.
fn ca_file(
    mqtt: &MqttFile,
    url: &str,
    username: &str,
    password: &str,
    where_: &str,
) -> Result<(), ConfigError> {
    let Some(ca) = &mqtt.ca_file else {
        return Ok(());
    };
    let err = |problem: String| ConfigError::new(where_, "[mqtt] ca_file", problem);
    let server = orcastrate_broker::mqtt::parse_url(url).map_err(|e| err(e.to_string()))?;
    if !server.tls {
        return Err(err(format!(
            "ca_file is only used with an mqtts:// url: change url to mqtts://{}:{} or remove ca_file",
            server.host, server.port
        )));
    }
    let trust = orcastrate_broker::mqtt::Trust::CaFile(ca.clone());
    orcastrate_broker::mqtt::client_options_with(url, "", username, password, &trust)
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// The engine hooks' address and bearer token (`None`: not served / none asked).
type Hooks = (Option<std::net::SocketAddr>, Option<String>);

/// `[mqtt] hooks_listen` and `hooks_token`.
fn hooks(mqtt: &MqttFile, where_: &str) -> Result<Hooks, ConfigError> {
    let hooks_listen = mqtt
        .hooks_listen
        .as_deref()
        .map(|a| parse_addr(a, where_, "[mqtt] hooks_listen"))
        .transpose()?;
    let hooks_token = mqtt.hooks_token.clone().filter(|t| !t.is_empty());
    let err = |problem: &str| ConfigError::new(where_, "[mqtt] hooks_token", problem);
    if hooks_token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(err(
            "hooks_token is shorter than 16 characters: use a long random one (openssl rand -hex 24)",
        ));
    }
    if hooks_token.is_some() && hooks_listen.is_none() {
        return Err(err(
            "hooks_token without hooks_listen: the hooks are only served on hooks_listen, so set it (e.g. \"127.0.0.1:8081\") or remove hooks_token",
        ));
    }
    Ok((hooks_listen, hooks_token))
}
