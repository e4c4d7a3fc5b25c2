//! The `orcastrate-crypt` binary: parses arguments, runs the command, and maps errors to
//! the documented exit codes with one `{:#}` line on stderr.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser as _;
use orcastrate_crypt::Exit;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): that is how pipes end, not a failure.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("orcastrate-crypt: {err:#}");
            ExitCode::from(exit(&err).code())
        }
    }
}

/// The exit code of the first error in the chain that has one: the library's errors, the
/// binary's own, else I/O or usage.
fn exit(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<orcastrate_crypt::Error>() {
            return e.into();
        }
        if let Some(e) = cause.downcast_ref::<commands::Exit>() {
            return e.code;
        }
    }
    if err.chain().any(|c| c.is::<std::io::Error>()) {
        Exit::Io
    } else {
        Exit::Usage
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
