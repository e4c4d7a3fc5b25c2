//! `orcastrate-agent [--config agent.toml] [--once]`: parses arguments, sets up logging and
//! signals, and calls [`orcastrate_agent::run`].

use std::process::ExitCode;

use clap::Parser as _;
use orcastrate_agent::cli::Command;
use orcastrate_agent::{app_log, handoff, Cli, Exit, LogFormat, Settings};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.print_example_config {
        print!("{}", orcastrate_agent::EXAMPLE_CONFIG);
        return ExitCode::SUCCESS;
    }
    match &cli.command {
        None => {}
        Some(Command::Logs { follow }) => return show_logs(&cli, *follow),
        Some(Command::AppLogWriter {
            file,
            max_bytes,
            keep,
        }) => {
            let limits = app_log::AppLogLimits {
                max_bytes: *max_bytes,
                keep: *keep,
            };
            return match app_log::run_writer(file, limits) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            };
        }
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
    let mut settings = match Settings::load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orcastrate-agent: bad configuration: {e}");
            return Exit::BadConfig.into();
        }
    };
    // The app's log writer is this binary, so it outlives the agent (see `app_log`).
    settings.log_writer = std::env::current_exe().ok();
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
            name_from = %settings.name_origin,
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

/// `orcastrate-agent logs [--follow]`: 0 printed, 1 no log to show, 2 bad configuration; a
/// closed pipe (`| head`) is success.
fn show_logs(cli: &Cli, follow: bool) -> ExitCode {
    let root = match Settings::root_of(cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orcastrate-agent: bad configuration: {e}");
            return Exit::BadConfig.into();
        }
    };
    match app_log::show(&root, follow, &mut std::io::stdout().lock()) {
        Ok(()) => Exit::Ok.into(),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Ok.into(),
        Err(e) => {
            eprintln!("orcastrate-agent: {e}");
            Exit::Failed.into()
        }
    }
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
