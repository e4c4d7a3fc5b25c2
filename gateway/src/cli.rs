//! Command-line interface: `serve`, `public-key`, and the operator commands that call the
//! admin API.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Orcastrate gateway: turns verified GitHub webhooks into signed desired-state orders on an
/// embedded MQTT broker, and lets operators deploy, roll back, pause and watch.
#[derive(Debug, Parser)]
#[command(name = "orcastrate-gateway", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "ORCASTRATE_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// More log detail (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: webhooks, embedded broker, ledger, operator API.
    Serve(ServeArgs),
    /// Print the public key agents use to verify orders (gateway_public_keys).
    PublicKey(ConfigArgs),
    /// Show the latest verified status of every agent.
    Status(ListArgs),
    /// Show orders, newest first.
    History(HistoryArgs),
    /// Deploy a sha to a repo/env now (order kind `manual`).
    Deploy(DeployArgs),
    /// Roll a repo/env back (order kind `rollback`); marks the current sha bad.
    Rollback(RollbackArgs),
    /// Pause a repo/env: webhooks are recorded but make no order.
    Pause(RepoEnvArgs),
    /// Show, promote (next wave now) or abort (revert) the rollout of a repo/env.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Resume a paused repo/env.
    Resume(RepoEnvArgs),
    /// Show the bus live, one readable line per webhook decision, order and agent status
    /// change (an MQTT watcher login, like mosquitto_sub).
    Watch(WatchArgs),
    /// Print a ready agent config (TOML) for one host: server, name, repo, env and this
    /// gateway's public keys; fill in its token and config key.
    AgentConfig(AgentConfigArgs),
    /// Write mosquitto's password and ACL files (`passwd`, `acl`) from [[clients]] and the
    /// gateway's [mqtt] login, for mode = "external".
    MosquittoConfig(EngineFilesArgs),
    /// Write a NATS `authorization` block with per-user permissions from [[clients]] and the
    /// gateway's [mqtt] login, for mode = "external".
    NatsConfig(EngineFilesArgs),
    /// List the outbox's pending and failed messages (GitHub deployments, [[notify]]),
    /// read from the ledger in data_dir.
    Outbox(OutboxArgs),
}

/// `outbox`: where the ledger is, and how to print.
#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What to do with a rollout.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show the newest rollouts: wave, state, and why it ended as it did.
    Status(RepoEnvArgs),
    /// Publish the next wave now, without waiting out the hold.
    Promote(RepoEnvArgs),
    /// Revert the running rollout: a rollback to its base sha for every agent.
    Abort(RepoEnvArgs),
}

#[derive(Debug, Args)]
pub struct EngineFilesArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Where to write: a folder for mosquitto (created if missing), a file for NATS.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Gateway config file (TOML).
    #[arg(long, short, env = "ORCASTRATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Folder of the ledger and signing key (overrides data_dir).
    #[arg(long, env = "ORCASTRATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// HTTP listen address, e.g. 0.0.0.0:8080 (overrides [http] listen and PORT).
    #[arg(long, env = "ORCASTRATE_HTTP_LISTEN")]
    pub http_listen: Option<String>,

    /// MQTT listen address of the embedded broker (overrides [mqtt] listen).
    #[arg(long, env = "ORCASTRATE_MQTT_LISTEN")]
    pub mqtt_listen: Option<String>,
}

/// Where the admin API is and how to authenticate.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Gateway base URL.
    #[arg(
        long,
        env = "ORCASTRATE_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway: String,

    /// Admin token.
    #[arg(long, env = "ORCASTRATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this repo (owner/name).
    #[arg(long)]
    pub repo: Option<String>,
    /// Only this env.
    #[arg(long)]
    pub env: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// How many orders at most.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct RepoEnvArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Repository (owner/name).
    #[arg(long)]
    pub repo: String,
    /// Environment.
    #[arg(long)]
    pub env: String,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub target: RepoEnvArgs,
    /// Commit sha: all 40 characters, or any prefix `status`/`history` print that names
    /// one sha only.
    #[arg(long)]
    pub sha: String,
    /// Git ref to record with the order.
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// To every agent at once, without the repo/env's rollout waves.
    #[arg(long)]
    pub now: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: RepoEnvArgs,
    /// Sha to roll back to, or a unique prefix of one (default: the newest earlier order
    /// reported healthy).
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// MQTT server of the bus (mqtt:// or mqtts://).
    #[arg(
        long,
        env = "ORCASTRATE_SERVER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    pub server: String,
    /// Login: a [[clients]] entry with role = "watcher".
    #[arg(long, env = "ORCASTRATE_WATCHER", default_value = "watcher")]
    pub user: String,
    /// That client's token.
    #[arg(long, env = "ORCASTRATE_WATCHER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Only this repo (owner/name).
    #[arg(long)]
    pub repo: Option<String>,
    /// Only this env.
    #[arg(long)]
    pub env: Option<String>,
    /// Topic prefix ([mqtt] prefix).
    #[arg(long, env = "ORCASTRATE_PREFIX", default_value = "orcastrate")]
    pub prefix: String,
    /// CA certificates (PEM) of an mqtts:// server with a private CA.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentConfigArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The agent's name: its [[clients]] (or TRUSTED_NAMES) entry.
    #[arg(long)]
    pub name: String,
    /// Repository the agent deploys (owner/name).
    #[arg(long)]
    pub repo: String,
    /// Environment it deploys.
    #[arg(long)]
    pub env: String,
    /// The bus URL agents use (default: from [mqtt], with this host's name for 0.0.0.0).
    #[arg(long)]
    pub server: Option<String>,
    /// The embedded broker's address, as given to `serve` (overrides [mqtt] listen).
    #[arg(long, env = "ORCASTRATE_MQTT_LISTEN")]
    pub mqtt_listen: Option<String>,
}
