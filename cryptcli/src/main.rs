//! The `orcastrate-crypt` binary: parses arguments, runs the command, and maps errors to
//! the documented exit codes with one `{:#}` line on stderr.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): that is how pipes end, not a failure.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("orcastrate-crypt: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The exit code of the first error in the chain that has one: the library's errors, the
/// binary's own, else I/O (6) or usage (2).
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<orcastrate_crypt::Error>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<commands::Exit>() {
            return e.code;
        }
    }
    if err.chain().any(|c| c.is::<std::io::Error>()) {
        6
    } else {
        2
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
