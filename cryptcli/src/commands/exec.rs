//! `exec`: run a program with the decrypted values in its environment, never on disk.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use orcastrate_crypt::{decrypt, env_vars, read_encrypted, Error};

use super::{encrypted_file, Ctx};
use crate::cli::EnvOrFile;

/// Variables that hold keys: the program gets the values, not the means to decrypt.
const KEY_VARIABLES: [&str; 4] = ["CONFIG_KEY", "KEYS", "NEW_CONFIG_KEY", "NEW_KEYS"];

pub(crate) fn run(ctx: &Ctx, target: &EnvOrFile, command: &[OsString]) -> anyhow::Result<()> {
    let (env, path) = encrypted_file(ctx, target, false)?;
    let key = ctx.keys.for_env(env.as_deref(), false)?;
    let label = path.display().to_string();
    let plain = decrypt(&read_encrypted(&path)?, &key, &label)?;
    let vars = env_vars(&plain, &label)?;
    let (program, args) = command.split_first().expect("clap requires a command");
    let mut cmd = Command::new(program);
    cmd.args(args);
    for name in KEY_VARIABLES {
        cmd.env_remove(name);
    }
    cmd.envs(vars);
    // exec replaces this process, so the program's exit status and signals are its own.
    let err = cmd.exec();
    Err(Error::Io {
        action: "run",
        path: program.into(),
        error: err,
    }
    .into())
}
