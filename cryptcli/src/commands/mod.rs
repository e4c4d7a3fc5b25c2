//! The binary's subcommands, one module each, and the file planning they share.
//!
//! Every command checks everything (keys, parsing, decryption, verification) for every
//! file it will touch before it writes the first one, so an error leaves no output.

mod convert;
mod edit;
mod exec;
mod git;
mod keygen;
mod keyring;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use orcastrate_crypt::{
    counterpart, env_from_file_name, file_name, find, validate_env, Error, Format, Side,
};

use crate::cli::{Cli, Command, EnvOrFile, Target};
pub(crate) use keyring::Keyring;

/// What every command needs besides its own arguments.
pub(crate) struct Ctx {
    pub(crate) config_dir: PathBuf,
    pub(crate) quiet: bool,
    pub(crate) keys: Keyring,
}

impl Ctx {
    /// A progress or status message on stderr (stdout stays for data).
    pub(crate) fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("orcastrate-crypt: {message}");
        }
    }
}

/// An error that carries its own exit code, for conditions the library does not know
/// (an aborted edit).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Exit {
    pub(crate) code: orcastrate_crypt::Exit,
    pub(crate) message: String,
}

/// Runs the parsed command line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx {
        config_dir: cli.config_dir,
        quiet: cli.quiet,
        keys: Keyring::from_args(&cli.keys)?,
    };
    match cli.command {
        Command::Keygen { out, force } => keygen::run(&ctx, out.as_deref(), force),
        Command::Encrypt { target, fresh } => convert::encrypt(&ctx, &target, fresh),
        Command::Decrypt { target } => convert::decrypt(&ctx, &target),
        Command::Rekey {
            target,
            new_key_file,
            new_key,
            new_keys,
        } => convert::rekey(
            &ctx,
            &target,
            new_key_file.as_deref(),
            new_key.as_deref(),
            new_keys.as_deref(),
        ),
        Command::Edit { target } => edit::run(&ctx, &target),
        Command::Exec { target, command } => exec::run(&ctx, &target, &command),
        Command::Textconv { file } => git::textconv(&ctx, &file),
        Command::MergeDriver {
            base,
            ours,
            theirs,
            path,
        } => git::merge_driver(&ctx, &base, &ours, &theirs, &path),
    }
}

/// One file to convert.
pub(crate) struct Job {
    pub(crate) env: Option<String>,
    pub(crate) input: PathBuf,
    pub(crate) output: PathBuf,
    /// Part of an `ENVS`/`KEYS` run: the env's own key is used.
    pub(crate) batch: bool,
}

/// The files a command reading `from` files works on: `--in`, or `--env`'s default file,
/// or every env in `ENVS`. The output is the counterpart file unless `in_place`.
pub(crate) fn plan(
    ctx: &Ctx,
    target: &Target,
    from: Side,
    in_place: bool,
) -> anyhow::Result<Vec<Job>> {
    let to = if in_place { from } else { from.other() };
    if let Some(env) = &target.env {
        validate_env(env)?;
    }
    if let Some(input) = &target.input {
        let named = env_from_file_name(input);
        let env = target
            .env
            .clone()
            .or_else(|| named.as_ref().map(|(e, _)| e.clone()));
        let output = match (&target.output, in_place) {
            (Some(out), _) => out.clone(),
            (None, true) => input.clone(),
            (None, false) => match (&named, &target.env) {
                (Some((_, side)), _) if *side == from => {
                    counterpart(input).expect("named files have a counterpart")
                }
                (_, Some(env)) => {
                    ctx.config_dir
                        .join(file_name(to, env, Format::from_path(input)?))
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "pass --out FILE: cannot derive the output name from {}",
                        input.display()
                    ))
                    .into());
                }
            },
        };
        return Ok(vec![Job {
            env,
            input: input.clone(),
            output,
            batch: false,
        }]);
    }
    let (envs, batch) = match &target.env {
        Some(env) => (vec![env.clone()], false),
        None => (ctx.keys.batch_envs()?, true),
    };
    if batch && target.output.is_some() {
        return Err(Error::Usage("--out needs --env or --in".into()).into());
    }
    envs.into_iter()
        .map(|env| {
            let input = find_existing(&ctx.config_dir, from, &env)?;
            let output = match (&target.output, in_place) {
                (Some(out), _) => out.clone(),
                (None, true) => input.clone(),
                (None, false) => {
                    ctx.config_dir
                        .join(file_name(to, &env, Format::from_path(&input)?))
                }
            };
            Ok(Job {
                env: Some(env),
                input,
                output,
                batch,
            })
        })
        .collect()
}

/// The encrypted file of `--in` or `--env`, and the env it belongs to. With `allow_new`, a
/// missing file is fine (for `edit`) and defaults to JSON.
pub(crate) fn encrypted_file(
    ctx: &Ctx,
    target: &EnvOrFile,
    allow_new: bool,
) -> anyhow::Result<(Option<String>, PathBuf)> {
    if let Some(env) = &target.env {
        validate_env(env)?;
    }
    match (&target.input, &target.env) {
        (Some(input), env) => Ok((
            env.clone()
                .or_else(|| env_from_file_name(input).map(|(e, _)| e)),
            input.clone(),
        )),
        (None, Some(env)) => {
            let path = match find(&ctx.config_dir, Side::Encrypted, env)? {
                Some(path) => path,
                None if allow_new => {
                    ctx.config_dir
                        .join(file_name(Side::Encrypted, env, Format::Json))
                }
                None => find_existing(&ctx.config_dir, Side::Encrypted, env)?,
            };
            Ok((Some(env.clone()), path))
        }
        (None, None) => Err(Error::Usage("pass --env ENV or --in FILE".into()).into()),
    }
}

/// The one `<side>_<env>.json` or `.env` in `dir`, or a "not found" error naming both.
fn find_existing(dir: &Path, side: Side, env: &str) -> anyhow::Result<PathBuf> {
    find(dir, side, env)?.ok_or_else(|| {
        let stem = dir.join(file_name(side, env, Format::Json));
        let stem = stem.display().to_string();
        let name = format!("{}{{json,env}}", stem.trim_end_matches("json"));
        Error::Io {
            action: "find",
            path: PathBuf::from(name),
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        }
        .into()
    })
}

/// Writes data to stdout; a closed pipe surfaces as an error that `main` treats as success.
pub(crate) fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A short list of key paths for messages (names are in clear in the file anyway).
pub(crate) fn summarize(paths: &[String]) -> String {
    /// Enough names to recognise a change without flooding the terminal.
    const SHOWN: usize = 8;
    let mut s = paths
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        s.push_str(&format!(", and {} more", paths.len() - SHOWN));
    }
    s
}
