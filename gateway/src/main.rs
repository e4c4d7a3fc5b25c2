//! `orcastrate-gateway`: parses the command line, sets up logging, and runs a command.
//!
//! Exit codes: [`orcastrate_gateway::exit::Exit`].

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use orcastrate_gateway::cli::{Cli, Command, EngineFilesArgs, LogFormat, ServeArgs};
use orcastrate_gateway::config::{self, Overrides, Settings};
use orcastrate_gateway::exit::Exit;
use orcastrate_gateway::{agent_config, client, engine_config, keys, Gateway};
use tracing_subscriber::EnvFilter;

fn set_up_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "info,rumqttd=off",
        1 => "debug,rumqttd=warn",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Internal-error printing is off: a logger that panics on a closed stderr would take
    // rumqttd's listener thread, and every MQTT connection, down with it.
    // Colours only on a terminal: redirected to a file they are escape codes in the text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    set_up_logging(cli.log_format, cli.verbose);
    let result = match &cli.command {
        Command::Serve(args) => serve(args),
        Command::PublicKey(args) => public_key(args),
        Command::Status(args) => client::status(args),
        Command::History(args) => client::history(args),
        Command::Deploy(args) => client::deploy(args),
        Command::Rollback(args) => client::rollback(args),
        Command::Pause(args) => client::set_paused(args, true),
        Command::Rollout(cmd) => client::rollout(cmd),
        Command::Resume(args) => client::set_paused(args, false),
        Command::Watch(args) => orcastrate_gateway::view::run(args),
        Command::AgentConfig(args) => agent_config(args),
        Command::MosquittoConfig(args) => mosquitto_config(args),
        Command::NatsConfig(args) => nats_config(args),
        Command::Outbox(args) => outbox(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::of(&e).into()
        }
    }
}

fn load_settings(
    config: &orcastrate_gateway::cli::ConfigArgs,
    overrides: Overrides,
) -> anyhow::Result<Settings> {
    let overrides = Overrides {
        data_dir: config.data_dir.clone(),
        ..overrides
    };
    Ok(Settings::load(
        config.config.as_deref(),
        &config::ProcessEnv,
        &overrides,
    )?)
}

fn public_key(args: &orcastrate_gateway::cli::ConfigArgs) -> anyhow::Result<()> {
    let data_dir = match &args.config {
        Some(path) => config::read_file(path)?.data_dir,
        None => None,
    };
    let data_dir = args
        .data_dir
        .clone()
        .or(data_dir)
        .unwrap_or_else(|| "data".into());
    let signer = keys::load(&data_dir)?.with_context(|| {
        format!(
            "no signing key in {}: start the gateway once (orcastrate-gateway serve) to create it",
            data_dir.display()
        )
    })?;
    println!("{}", signer.public_key_base64());
    Ok(())
}

fn outbox(args: &orcastrate_gateway::cli::OutboxArgs) -> anyhow::Result<()> {
    let data_dir = match &args.config.config {
        Some(path) => config::read_file(path)?.data_dir,
        None => None,
    };
    let data_dir = args
        .config
        .data_dir
        .clone()
        .or(data_dir)
        .unwrap_or_else(|| "data".into());
    orcastrate_gateway::outbox::print(&data_dir, args.json)
}

fn agent_config(args: &orcastrate_gateway::cli::AgentConfigArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        mqtt_listen: args.mqtt_listen.clone(),
        ..Overrides::default()
    };
    let settings = load_settings(&args.config, overrides)?;
    let signer = keys::load(&settings.data_dir)?.with_context(|| {
        format!(
            "no signing key in {}: start the gateway once (orcastrate-gateway serve) to create it",
            settings.data_dir.display()
        )
    })?;
    let spec = agent_config::AgentSpec {
        name: &args.name,
        repo: &args.repo,
        env: &args.env,
        server: args.server.as_deref(),
    };
    let rendered = agent_config::render(
        &settings,
        &signer.public_key_base64(),
        &spec,
        &agent_config::host_name(),
    )?;
    for warning in &rendered.warnings {
        eprintln!("warning: {warning}");
    }
    print!("{}", rendered.toml);
    Ok(())
}

fn mosquitto_config(args: &EngineFilesArgs) -> anyhow::Result<()> {
    let settings = load_settings(&args.config, Overrides::default())?;
    engine_config::write_mosquitto(&settings, &args.out)?;
    println!(
        "wrote {0}/passwd and {0}/acl for {1} users: set password_file and acl_file in mosquitto.conf to them, and send mosquitto SIGHUP after each change",
        args.out.display(),
        settings.access.clients.len() + 1
    );
    Ok(())
}

fn nats_config(args: &EngineFilesArgs) -> anyhow::Result<()> {
    let settings = load_settings(&args.config, Overrides::default())?;
    engine_config::write_nats(&settings, &args.out)?;
    println!(
        "wrote {} for {} users: include it from each NATS server's config, and run `nats-server --signal reload` after each change",
        args.out.display(),
        settings.access.clients.len() + 1
    );
    Ok(())
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let settings = load_settings(
        &args.config,
        Overrides {
            data_dir: None,
            http_listen: args.http_listen.clone(),
            mqtt_listen: args.mqtt_listen.clone(),
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let http = tokio::net::TcpListener::bind(settings.http_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for HTTP on {}: is another process using it? set [http] listen or PORT",
                    settings.http_listen
                )
            })?;
        let gateway = Gateway::start(settings.clone(), http).await?;
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading clients and repos");
                let _ = reload_tx.try_send(());
            }
        });
        gateway.run_until(&settings, shutdown_signal(), reload_rx).await
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail at start-up");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
