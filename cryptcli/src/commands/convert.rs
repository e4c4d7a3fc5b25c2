//! `encrypt`, `decrypt` and `rekey`: one file, or every env of `ENVS`/`KEYS`, checked in
//! full before anything is written.

use std::path::Path;

use anyhow::Context as _;
use orcastrate_crypt::{
    decrypt as decrypt_doc, encrypt as encrypt_doc, read_encrypted, read_existing, read_plain,
    write_atomic, write_encrypted, Error, Format, Side, PRIVATE_MODE,
};

use super::keyring::{key_from_file, key_from_text, split_list};
use super::{plan, print_stdout, summarize, values, Ctx};
use crate::cli::Target;

pub(crate) fn encrypt(ctx: &Ctx, target: &Target, fresh: bool) -> anyhow::Result<()> {
    let jobs = plan(ctx, target, Side::Decrypted, false)?;
    let mut ready = Vec::with_capacity(jobs.len());
    for job in &jobs {
        same_format(&job.input, &job.output)?;
        let key = ctx.keys.for_env(job.env.as_deref(), job.batch)?;
        let plain = read_plain(&job.input)?;
        let previous = if fresh {
            None
        } else {
            read_existing(&job.output, &key).with_context(|| {
                format!(
                    "cannot reuse the existing {} (rekey changes keys; --fresh replaces the file)",
                    job.output.display()
                )
            })?
        };
        let enc = encrypt_doc(
            &plain,
            &key,
            &previous.iter().collect::<Vec<_>>(),
            &job.input.display().to_string(),
        )?;
        ready.push((job, enc, previous));
    }
    for (job, enc, previous) in ready {
        let report = write_encrypted(&job.output, &enc, previous.as_ref())?;
        let out = job.output.display();
        if !report.written || report.changed.is_empty() {
            ctx.note(&format!("{out}: up to date ({})", values(enc.len())));
        } else if previous.is_none() {
            ctx.note(&format!(
                "{out}: encrypted {} from {}",
                values(enc.len()),
                job.input.display()
            ));
        } else {
            ctx.note(&format!(
                "{out}: {} of {} changed ({})",
                report.changed.len(),
                values(enc.len()),
                summarize(&report.changed)
            ));
        }
    }
    Ok(())
}

pub(crate) fn decrypt(ctx: &Ctx, target: &Target) -> anyhow::Result<()> {
    let to_stdout = target.output.as_deref() == Some(Path::new("-"));
    let jobs = plan(ctx, target, Side::Encrypted, false)?;
    let mut ready = Vec::with_capacity(jobs.len());
    for job in &jobs {
        if !to_stdout {
            same_format(&job.input, &job.output)?;
        }
        let key = ctx.keys.for_env(job.env.as_deref(), job.batch)?;
        let enc = read_encrypted(&job.input)?;
        let plain = decrypt_doc(&enc, &key, &job.input.display().to_string())?;
        ready.push((job, plain));
    }
    for (job, plain) in ready {
        if to_stdout {
            print_stdout(&plain.to_text())?;
            continue;
        }
        write_atomic(&job.output, plain.to_text().as_bytes(), PRIVATE_MODE)?;
        ctx.note(&format!(
            "{}: decrypted {} from {} (mode 0600; do not commit it)",
            job.output.display(),
            values(plain.len()),
            job.input.display()
        ));
    }
    Ok(())
}

pub(crate) fn rekey(
    ctx: &Ctx,
    target: &Target,
    new_key_file: Option<&Path>,
    new_key: Option<&str>,
    new_keys: Option<&str>,
) -> anyhow::Result<()> {
    let jobs = plan(ctx, target, Side::Encrypted, true)?;
    let single = match (new_key_file, new_key) {
        (Some(file), _) => Some(key_from_file(file)?),
        (None, Some(text)) => Some(key_from_text(text, "--new-key/NEW_CONFIG_KEY")?),
        (None, None) => None,
    };
    let mut ready = Vec::with_capacity(jobs.len());
    for job in &jobs {
        same_format(&job.input, &job.output)?;
        let new = match (&single, new_keys) {
            (Some(key), _) => key.clone(),
            (None, Some(list)) => new_key_for_env(ctx, list, job.env.as_deref())?,
            (None, None) => {
                return Err(Error::Usage(
                    "pass --new-key-file FILE (or set NEW_CONFIG_KEY, or NEW_KEYS paired with ENVS)".into(),
                )
                .into());
            }
        };
        let old = ctx.keys.for_env(job.env.as_deref(), job.batch)?;
        let enc = read_encrypted(&job.input)?;
        let label = job.input.display().to_string();
        let plain = decrypt_doc(&enc, &old, &label)?;
        if enc.key_id() == new.id() && job.input == job.output {
            ctx.note(&format!(
                "{label}: already encrypted with key id {}",
                new.id()
            ));
            continue;
        }
        let fresh = encrypt_doc(&plain, &new, &[], &label)?;
        ready.push((job, fresh, enc.key_id().to_owned()));
    }
    for (job, enc, old_id) in ready {
        write_encrypted(&job.output, &enc, None)?;
        let env = job.env.as_deref().unwrap_or("this file");
        ctx.note(&format!(
            "{}: rekeyed from key id {old_id} to {}; give the new key to everything that decrypts {env}",
            job.output.display(),
            enc.key_id()
        ));
    }
    Ok(())
}

/// The entry of `NEW_KEYS` paired by position with `env` in `ENVS`.
fn new_key_for_env(
    ctx: &Ctx,
    list: &str,
    env: Option<&str>,
) -> anyhow::Result<orcastrate_crypt::Key> {
    let envs = ctx.keys.batch_envs()?;
    let keys = split_list(list);
    if keys.len() != envs.len() {
        return Err(Error::Usage(format!(
            "ENVS lists {} envs but NEW_KEYS lists {} keys: they are paired by position",
            envs.len(),
            keys.len()
        ))
        .into());
    }
    let at = env
        .and_then(|env| envs.iter().position(|e| e == env))
        .ok_or_else(|| Error::Usage("NEW_KEYS needs the env to be listed in ENVS".into()))?;
    key_from_text(&keys[at], &format!("NEW_KEYS (entry for env {})", envs[at]))
}

fn same_format(input: &Path, output: &Path) -> anyhow::Result<()> {
    let (a, b) = (Format::from_path(input)?, Format::from_path(output)?);
    if a != b {
        return Err(Error::Usage(format!(
            "{} is {a} but {} is {b}: both must have the same extension",
            input.display(),
            output.display()
        ))
        .into());
    }
    Ok(())
}
