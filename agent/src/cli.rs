//! The command line: `orcastrate-agent [--config agent.toml] [--once]`.
//!
//! Every flag has an environment fallback; the original tool's variables
//! (`ORCASTRATE_SERVER`, `CONNECT_TOKEN`, `REPO_NAME`, `ENVIRONMENT`, `CONFIG_KEY`) keep their
//! names. A flag beats the environment, which beats the config file (see [`crate::config`]).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// How the agent's own log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Orcastrate deploy agent: follows the desired state of one repo/env on this host.
#[derive(Debug, Clone, Parser, Default)]
#[command(name = "orcastrate-agent", version, about, max_term_width = 100)]
pub struct Cli {
    /// Without a command the agent runs (follows the desired state).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Config file (TOML); without it the agent runs from flags and environment variables.
    #[arg(
        long,
        short = 'c',
        env = "ORCASTRATE_CONFIG",
        value_name = "FILE",
        global = true
    )]
    pub config: Option<PathBuf>,

    /// Follow the desired state once and exit: 0 healthy or up to date, 1 failed or rolled
    /// back, 2 bad config, 3 no connection.
    #[arg(long)]
    pub once: bool,

    /// Log format of the agent's own messages on stderr.
    #[arg(long, value_enum, env = "ORCASTRATE_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Print a commented example config file and exit.
    #[arg(long)]
    pub print_example_config: bool,

    /// Agent name: the MQTT username and client id (default: the host name).
    #[arg(long, env = "ORCASTRATE_NAME")]
    pub name: Option<String>,

    /// MQTT server URLs, comma-separated, tried in order.
    #[arg(
        long,
        env = "ORCASTRATE_SERVER",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub server: Vec<String>,

    /// The agent's token (MQTT password, status MAC key).
    #[arg(long, env = "CONNECT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// GitHub repository `owner/name` this agent deploys.
    #[arg(long, env = "REPO_NAME")]
    pub repo: Option<String>,

    /// Environment name (e.g. `production`).
    #[arg(long = "env", env = "ENVIRONMENT", value_name = "ENV")]
    pub environment: Option<String>,

    /// File holding the token (e.g. `$CREDENTIALS_DIRECTORY/token` under systemd's
    /// `LoadCredential=`), so it need not be in the environment.
    #[arg(long, env = "ORCASTRATE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Key of the encrypted per-environment config (base64).
    #[arg(long, env = "CONFIG_KEY", hide_env_values = true)]
    pub config_key: Option<String>,

    /// File holding the config key.
    #[arg(long, env = "ORCASTRATE_CONFIG_KEY_FILE", value_name = "FILE")]
    pub config_key_file: Option<PathBuf>,

    /// User (name or uid) that steps, health commands and the app run as; needs the agent
    /// to run as root.
    #[arg(long, env = "ORCASTRATE_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,

    /// The environment variables the secrets came from before the agent moved them out of
    /// its environment (see `handoff`), for error messages.
    #[arg(skip)]
    pub secrets_from_env: Vec<String>,

    /// Gateway public keys (base64), comma-separated.
    #[arg(
        long = "gateway-key",
        env = "ORCASTRATE_GATEWAY_KEYS",
        value_delimiter = ','
    )]
    pub gateway_keys: Vec<String>,

    /// Directory holding repo.git, releases/, current, shared/ and state.json.
    #[arg(long, env = "ORCASTRATE_ROOT", global = true)]
    pub root: Option<PathBuf>,

    /// Where to fetch the service's code from (default `https://github.com/{repo}.git`).
    #[arg(long, env = "ORCASTRATE_GIT_URL")]
    pub git_url: Option<String>,

    /// Topic prefix (default `orcastrate`).
    #[arg(long, env = "ORCASTRATE_PREFIX")]
    pub prefix: Option<String>,

    /// With --once: how long to try to reach a server before exiting with 3.
    #[arg(long, env = "ORCASTRATE_CONNECT_TIMEOUT_S", value_name = "SECONDS")]
    pub connect_timeout_s: Option<u64>,
}

/// What the agent does besides running.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print the log of the current release's app (`{root}/logs/app/{release}.log`).
    Logs {
        /// Keep printing what the app writes, following the switch to a new release.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Internal: the writer of the app's log, started by the agent with the app's stdout
    /// on stdin and its stderr on fd 3.
    #[command(name = "app-log-writer", hide = true)]
    AppLogWriter {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        max_bytes: u64,
        #[arg(long)]
        keep: u32,
    },
}
