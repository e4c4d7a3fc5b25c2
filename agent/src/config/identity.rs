//! The sections that say who the agent is and where it connects: `name`, `server`,
//! `token`, `repo`, `env`, `git_url`, `root`, `gateway_public_keys`, `config_key`,
//! `run_as` and `prefix`. Each check is pure: it gets the values and their origins and
//! returns the validated value or the problem.

use std::path::{Path, PathBuf};

use orcastrate_broker::{names, OrderVerifier};

use super::environment::{default_name, Secret, Sources};
use super::{ConfigError, FileConfig, ServerList};
use crate::cli::Cli;
use crate::users::RunAs;

/// `name`: the host name made valid when unset.
pub(super) fn name(
    src: &Sources,
    cli: &Cli,
    file: &FileConfig,
) -> Result<(String, String), ConfigError> {
    let (name, origin) = src.pick(
        cli.name.clone(),
        "--name",
        "ORCASTRATE_NAME",
        file.name.clone(),
    );
    let (name, origin) = match name {
        Some(n) => (n, origin),
        None => (
            default_name(&src.env.host_name),
            format!("the host name {:?} (default for name)", src.env.host_name),
        ),
    };
    names::agent(&name).map_err(|e| {
        ConfigError::new(
            &origin,
            "name",
            format!("{e}; set name = \"web-1\" or ORCASTRATE_NAME"),
        )
    })?;
    Ok((name, origin))
}

/// `server`: one or more MQTT URLs.
pub(super) fn servers(
    src: &Sources,
    cli: &Cli,
    file: &FileConfig,
) -> Result<Vec<String>, ConfigError> {
    let servers_cli = (!cli.server.is_empty()).then(|| cli.server.clone());
    let servers_file = file.server.clone().map(|s| match s {
        ServerList::One(s) => vec![s],
        ServerList::Many(v) => v,
    });
    let (servers, origin) = src.pick(servers_cli, "--server", "ORCASTRATE_SERVER", servers_file);
    let servers: Vec<String> = servers
        .unwrap_or_default()
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Err(ConfigError::new(
            origin,
            "server",
            "no MQTT server: set server = [\"mqtt://gateway-host:1883\"] or ORCASTRATE_SERVER",
        ));
    }
    for url in &servers {
        orcastrate_broker::mqtt::parse_url(url).map_err(|e| {
            let problem = crate::redact::redact(&e.to_string()).into_owned();
            ConfigError::new(&origin, "server", problem)
        })?;
    }
    Ok(servers)
}

/// `ca_file`: a PEM file of the certificates `mqtts://` and `wss://` servers are checked
/// against (a private CA, or a self-signed certificate); relative to the config file.
pub(super) fn ca_file(
    origin: &str,
    file: &FileConfig,
    file_dir: Option<&Path>,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = &file.ca_file else {
        return Ok(None);
    };
    let path = match file_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.clone(),
    };
    let trust = orcastrate_broker::mqtt::Trust::CaFile(path.clone());
    orcastrate_broker::mqtt::client_options_with("mqtts://check", "", "", "", &trust)
        .map_err(|e| ConfigError::new(origin, "ca_file", e.to_string()))?;
    Ok(Some(path))
}

/// `token` (or `token_file`, or the systemd credential).
pub(super) fn token(
    src: &Sources,
    cli: &Cli,
    file: &FileConfig,
    file_dir: Option<&Path>,
) -> Result<String, ConfigError> {
    let (token, origin) = src.secret(
        Secret {
            key: "token",
            flag: "--token",
            var: "CONNECT_TOKEN",
            file_flag: "--token-file",
            file_var: "ORCASTRATE_TOKEN_FILE",
            credential: "token",
        },
        (cli.token.clone(), cli.token_file.clone()),
        (file.token.clone(), file.token_file.clone()),
        file_dir,
    )?;
    let token = token.map(|t| t.trim().to_owned()).unwrap_or_default();
    if token.is_empty() {
        return Err(ConfigError::new(
            origin,
            "token",
            "no token: set token = \"…\" (the one the gateway lists for this agent's name), token_file, or CONNECT_TOKEN",
        ));
    }
    if token.contains(['\n', '\r']) {
        return Err(ConfigError::new(origin, "token", "must be one line"));
    }
    Ok(token)
}

/// `repo`, normalised (`Octo-Org/Web` → `octo-org/web`).
pub(super) fn repo(src: &Sources, cli: &Cli, file: &FileConfig) -> Result<String, ConfigError> {
    let (repo, origin) = src.pick(cli.repo.clone(), "--repo", "REPO_NAME", file.repo.clone());
    let repo = repo.ok_or_else(|| {
        ConfigError::new(
            &origin,
            "repo",
            "no repository: set repo = \"owner/name\" or REPO_NAME",
        )
    })?;
    names::repo(&repo).map_err(|e| ConfigError::new(&origin, "repo", e.to_string()))
}

/// `env`.
pub(super) fn env(src: &Sources, cli: &Cli, file: &FileConfig) -> Result<String, ConfigError> {
    let (env, origin) = src.pick(
        cli.environment.clone(),
        "--env",
        "ENVIRONMENT",
        file.env.clone(),
    );
    let env = env.ok_or_else(|| {
        ConfigError::new(
            &origin,
            "env",
            "no environment: set env = \"production\" or ENVIRONMENT",
        )
    })?;
    names::env(&env).map_err(|e| ConfigError::new(&origin, "env", e.to_string()))?;
    Ok(env)
}

/// `git_url`, by default GitHub's URL of `repo` (`None`: no URL and no valid repo).
pub(super) fn git_url(
    src: &Sources,
    cli: &Cli,
    file: &FileConfig,
    repo: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    let (git_url, origin) = src.pick(
        cli.git_url.clone(),
        "--git-url",
        "ORCASTRATE_GIT_URL",
        file.git_url.clone(),
    );
    let Some(git_url) = git_url
        .map(|u| u.trim().to_owned())
        .or_else(|| repo.map(|repo| format!("https://github.com/{repo}.git")))
    else {
        return Ok(None);
    };
    if git_url.is_empty() || git_url.starts_with('-') || git_url.contains(['\n', '\r']) {
        return Err(ConfigError::new(
            origin,
            "git_url",
            "not a git URL: use e.g. git@github.com:owner/name.git or a local path",
        ));
    }
    Ok(Some(git_url))
}

/// `root`, made absolute: a relative root in the file is relative to the file; from a flag
/// or the environment, to the working directory. Created later, at start-up.
pub(super) fn root(src: &Sources, cli: &Cli, file: &FileConfig) -> Result<PathBuf, ConfigError> {
    let (root, origin) = pick_root(src, cli, file);
    let root = root.unwrap_or_else(|| PathBuf::from("."));
    let config_dir = cli
        .config
        .as_deref()
        .filter(|_| cli.root.is_none())
        .and_then(Path::parent);
    if root.is_absolute() {
        return Ok(root);
    }
    let base = match config_dir {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => src
            .env
            .working_dir
            .clone()
            .map_err(|p| ConfigError::new(&origin, "root", p))?,
    };
    Ok(base.join(root))
}

/// `gateway_public_keys`: at least one, each a valid key.
pub(super) fn verifier(
    src: &Sources,
    cli: &Cli,
    file: &FileConfig,
) -> Result<OrderVerifier, ConfigError> {
    let keys_cli = (!cli.gateway_keys.is_empty()).then(|| cli.gateway_keys.clone());
    let (keys, origin) = src.pick(
        keys_cli,
        "--gateway-key",
        "ORCASTRATE_GATEWAY_KEYS",
        file.gateway_public_keys.clone(),
    );
    let keys: Vec<String> = keys
        .unwrap_or_default()
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    if keys.is_empty() {
        return Err(ConfigError::new(
            origin,
            "gateway_public_keys",
            "no gateway public key, so no order could ever be trusted: set gateway_public_keys = [\"…\"] \
             or ORCASTRATE_GATEWAY_KEYS to what `orcastrate-gateway public-key` prints",
        ));
    }
    OrderVerifier::new(&keys)
        .map_err(|e| ConfigError::new(&origin, "gateway_public_keys", e.to_string()))
}

/// `config_key` (or `config_key_file`, or the systemd credential); optional.
pub(super) fn config_key(
    src: &Sources,
    cli: &Cli,
    file: &FileConfig,
    file_dir: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    let (config_key, origin) = src.secret(
        Secret {
            key: "config_key",
            flag: "--config-key",
            var: "CONFIG_KEY",
            file_flag: "--config-key-file",
            file_var: "ORCASTRATE_CONFIG_KEY_FILE",
            credential: "config_key",
        },
        (cli.config_key.clone(), cli.config_key_file.clone()),
        (file.config_key.clone(), file.config_key_file.clone()),
        file_dir,
    )?;
    let config_key = config_key
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty());
    if let Some(key) = &config_key {
        crate::secrets::check_key(key).map_err(|e| {
            ConfigError::new(
                &origin,
                "config_key",
                format!("{e}: use the key `orcastrate-crypt keygen` printed"),
            )
        })?;
    }
    Ok(config_key)
}

/// `run_as`, looked up in the environment's `/etc/passwd`; `None` when unset or the agent's own user.
pub(super) fn run_as(
    src: &Sources,
    cli: &Cli,
    file: &FileConfig,
) -> Result<Option<RunAs>, ConfigError> {
    let (run_as, origin) = src.pick(
        cli.run_as.clone(),
        "--run-as",
        "ORCASTRATE_RUN_AS",
        file.run_as.clone(),
    );
    let Some(user) = run_as.filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let found = src
        .env
        .passwd
        .clone()
        .and_then(|passwd| crate::users::lookup_in(&user, &passwd, &src.env.group))
        .map_err(|p| ConfigError::new(&origin, "run_as", p))?;
    let uid = src.env.uid;
    if uid == found.uid {
        Ok(None)
    } else if uid != 0 {
        Err(ConfigError::new(
            origin,
            "run_as",
            format!(
                "switching to {user:?} needs the agent to run as root: run it as root, or remove run_as"
            ),
        ))
    } else {
        Ok(Some(found))
    }
}

/// `prefix`: the first topic level(s), under the one rule the gateway's `[mqtt] prefix`
/// follows too ([`orcastrate_broker::topics::check_prefix`]).
pub(super) fn prefix(src: &Sources, cli: &Cli, file: &FileConfig) -> Result<String, ConfigError> {
    let (prefix, origin) = src.pick(
        cli.prefix.clone(),
        "--prefix",
        "ORCASTRATE_PREFIX",
        file.prefix.clone(),
    );
    let prefix = prefix.unwrap_or_else(|| orcastrate_broker::DEFAULT_PREFIX.to_owned());
    orcastrate_broker::topics::check_prefix(&prefix).map_err(|e| {
        ConfigError::new(
            &origin,
            "prefix",
            format!("{e}; set it to the gateway's [mqtt] prefix"),
        )
    })?;
    Ok(prefix)
}

fn pick_root(src: &Sources, cli: &Cli, file: &FileConfig) -> (Option<PathBuf>, String) {
    src.pick(
        cli.root.clone(),
        "--root",
        "ORCASTRATE_ROOT",
        file.root.clone(),
    )
}

/// Where `root` came from.
pub(super) fn root_origin(src: &Sources, cli: &Cli, file: &FileConfig) -> String {
    pick_root(src, cli, file).1
}
