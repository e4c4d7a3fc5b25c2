//! `orcastrate-agent [--config agent.toml] [--once]`: parses arguments, sets up logging and
//! signals, and calls [`orcastrate_agent::run`].

use std::process::ExitCode;

use clap::Parser as _;
use orcastrate_agent::{handoff, Cli, Exit, LogFormat, Settings};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.print_example_config {
        print!("{}", orcastrate_agent::EXAMPLE_CONFIG);
        return ExitCode::SUCCESS;
    }
    // Before any thread starts: secrets in the environment or on the command line move to a
    // fresh image of the agent (same pid); it continues below with them in `cli`.
    let handoff_failed = handoff::exposed().then(|| handoff::reexec(&cli));
    if let Err(e) = handoff::receive(&mut cli) {
        eprintln!("orcastrate-agent: {e}");
        return Exit::BadConfig.into();
    }
    let inspectable = handoff::forbid_inspection().err();
    set_up_logging(cli.log_format);
    if let Some(e) = handoff_failed {
        tracing::warn!(error = %e, "the token and config key stay readable in /proc/<pid>/environ by processes of this user; give them with token_file/config_key_file instead");
    }
    if let Some(e) = inspectable {
        tracing::warn!(error = %e, "cannot make the agent non-dumpable: processes of its user may read its memory");
    }
    let settings = match Settings::load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orcastrate-agent: bad configuration: {e}");
            return Exit::BadConfig.into();
        }
    };
    // Two worker threads are plenty: the agent waits on the network and child processes.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orcastrate-agent: cannot start the runtime: {e}");
            return Exit::Failed.into();
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(forward_signals(shutdown.clone()));
        tracing::info!(
            agent = %settings.name,
            repo = %settings.repo,
            env = %settings.env,
            root = %settings.root.display(),
            version = env!("CARGO_PKG_VERSION"),
            "starting"
        );
        match orcastrate_agent::run(settings, shutdown).await {
            Ok(outcome) => {
                tracing::info!(?outcome, "stopped");
                Exit::from(outcome).into()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot run");
                eprintln!("orcastrate-agent: {e}");
                Exit::Failed.into()
            }
        }
    })
}

fn set_up_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("orcastrate_agent=info,warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr must not make logging panic.
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// SIGTERM and Ctrl-C stop the agent gracefully; a second one is not special (the agent
/// stops as fast as the deploy in progress allows).
async fn forward_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
    shutdown.cancel();
}
