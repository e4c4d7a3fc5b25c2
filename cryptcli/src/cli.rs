//! Command-line arguments (clap derive); the `///` comments are the `--help` text.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const LONG_ABOUT: &str = "\
Encrypted per-environment config that stays diffable and tamper-evident.

Keys and structure stay in clear; every value is encrypted on its own (AES-256-GCM, bound to
its key path) and a MAC covers every key, value and the metadata. Re-encrypting keeps the
ciphertext of unchanged values, so `git diff` shows exactly the keys that changed.

FORMAT BY EXTENSION: *.json files are JSON objects; *.env files (and .env, .env.*) are
dotenv `KEY=value` lines with comments kept. Default paths, under --config-dir (config/):
  decrypted_<env>.json <-> encrypted_<env>.json
  decrypted_<env>.env  <-> encrypted_<env>.env
--in/--out override them and pick the format by their extension.";

const AFTER_HELP: &str = "\
KEYS: --key, then --key-file, then CONFIG_KEY; or, per env, ENVS and KEYS (comma-separated,
paired by position). With ENVS and KEYS set, encrypt, decrypt and rekey without --env act on
every listed env. textconv and merge-driver pick the key whose id the file names.

EXIT CODES: 0 ok, 1 merge conflict or edit aborted, 2 usage, 3 wrong key, 4 integrity
(tampered, swapped, dropped or added values, MAC), 5 malformed file or unknown format
version, 6 I/O. On any error no output file is written.

GIT SETUP (diffs of the decrypted view, key-by-key merges):
  git config diff.orcastrate.textconv \"orcastrate-crypt textconv\"
  git config merge.orcastrate.driver \"orcastrate-crypt merge-driver %O %A %B %P\"
  .gitattributes: config/encrypted_*.json diff=orcastrate merge=orcastrate
                  config/encrypted_*.env  diff=orcastrate merge=orcastrate
The file format is specified in cryptcli/README.md of the Orcastrate source repository.";

/// orcastrate-crypt: diffable, tamper-evident encrypted config per environment.
#[derive(Debug, Parser)]
#[command(name = "orcastrate-crypt", version, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// What the commands that read or write config files take: keys and the config folder.
/// (Each command lists only the options it uses, so these are not global.)
#[derive(Debug, Args)]
pub(crate) struct FileArgs {
    #[command(flatten)]
    pub(crate) keys: KeyArgs,

    /// Directory of the default decrypted_<env>.* and encrypted_<env>.* files.
    #[arg(long, value_name = "DIR", default_value = "config")]
    pub(crate) config_dir: PathBuf,
}

/// Where keys come from.
#[derive(Debug, Args, Default)]
pub(crate) struct KeyArgs {
    /// The key, 32 bytes in base64. Prefer CONFIG_KEY or --key-file: command lines are
    /// visible to other users.
    #[arg(
        long,
        env = "CONFIG_KEY",
        hide_env_values = true,
        value_name = "BASE64"
    )]
    pub(crate) key: Option<String>,

    /// Read the key from this file (as written by `keygen --out`).
    #[arg(long, value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,

    /// Env names for batch use, comma-separated, paired by position with KEYS.
    #[arg(long, env = "ENVS", value_name = "ENV,…")]
    pub(crate) envs: Option<String>,

    /// Keys for batch use, comma-separated, paired by position with ENVS.
    #[arg(long, env = "KEYS", hide_env_values = true, value_name = "BASE64,…")]
    pub(crate) keys: Option<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print a new random key (32 bytes, base64), or write it to a file with mode 0600.
    Keygen {
        /// Write the key to this file (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Overwrite --out if it exists.
        #[arg(long)]
        force: bool,
    },

    /// Encrypt decrypted_<env>.* to encrypted_<env>.*, keeping the ciphertext of unchanged
    /// values.
    Encrypt {
        #[command(flatten)]
        files: FileArgs,
        #[command(flatten)]
        target: Target,
        /// Encrypt every value anew, ignoring (and replacing) the existing encrypted file,
        /// even if it does not verify.
        #[arg(long)]
        fresh: bool,
    },

    /// Verify and decrypt encrypted_<env>.* to decrypted_<env>.* (mode 0600).
    Decrypt {
        #[command(flatten)]
        files: FileArgs,
        #[command(flatten)]
        target: Target,
    },

    /// Decrypt to a private temporary file, open $VISUAL or $EDITOR, and re-encrypt,
    /// keeping the ciphertext of unchanged values. The temporary file is always deleted.
    Edit {
        #[command(flatten)]
        files: FileArgs,
        #[command(flatten)]
        target: EnvOrFile,
    },

    /// Run a program with the config's values as environment variables; no plaintext on
    /// disk. Nested JSON keys are joined with "__" (db.password → db__password), array
    /// items by index.
    Exec {
        #[command(flatten)]
        files: FileArgs,
        #[command(flatten)]
        target: EnvOrFile,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },

    /// Re-encrypt an env's file (or, with ENVS and KEYS, every listed env's) under a new
    /// key.
    Rekey {
        #[command(flatten)]
        files: FileArgs,
        #[command(flatten)]
        target: Target,
        /// The new key, from a file.
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
        /// The new key, base64.
        #[arg(
            long,
            env = "NEW_CONFIG_KEY",
            hide_env_values = true,
            value_name = "BASE64"
        )]
        new_key: Option<String>,
        /// New keys for batch use, comma-separated, paired by position with ENVS.
        #[arg(
            long,
            env = "NEW_KEYS",
            hide_env_values = true,
            value_name = "BASE64,…"
        )]
        new_keys: Option<String>,
    },

    /// Print the decrypted view of an encrypted file, for `git diff`
    /// (git config diff.orcastrate.textconv "orcastrate-crypt textconv"). Without a
    /// matching key, prints the file as it is.
    Textconv {
        #[command(flatten)]
        keys: KeyArgs,
        /// The encrypted file; its name picks the format.
        file: PathBuf,
    },

    /// Git merge driver: decrypt base, ours and theirs, merge key by key, re-encrypt into
    /// ours (git config merge.orcastrate.driver "orcastrate-crypt merge-driver %O %A %B %P").
    MergeDriver {
        #[command(flatten)]
        keys: KeyArgs,
        /// %O: the common ancestor (empty if the file was added on both sides).
        base: PathBuf,
        /// %A: our version; the merge result is written here.
        ours: PathBuf,
        /// %B: their version.
        theirs: PathBuf,
        /// %P: the path in the repository; picks the format and names the file in messages.
        path: PathBuf,
    },
}

/// Which files a command reads and writes.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// The environment, e.g. production: uses <config-dir>/decrypted_<env>.json or .env and
    /// encrypted_<env>.json or .env, whichever exists.
    #[arg(long, short)]
    pub(crate) env: Option<String>,
    /// Read this file instead of the default path; its extension picks the format (.json
    /// is JSON, .env is dotenv).
    #[arg(long = "in", value_name = "FILE")]
    pub(crate) input: Option<PathBuf>,
    /// Write this file instead of the default path; same extension as the input (`-` is
    /// stdout for decrypt).
    #[arg(long = "out", value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
}

/// The encrypted file a command works on.
#[derive(Debug, Args)]
pub(crate) struct EnvOrFile {
    /// The environment, e.g. production.
    #[arg(long, short)]
    pub(crate) env: Option<String>,
    /// The encrypted file, instead of the default path; its extension picks the format
    /// (.json is JSON, .env is dotenv).
    #[arg(long = "in", value_name = "FILE")]
    pub(crate) input: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
