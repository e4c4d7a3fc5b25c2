//! `edit`: decrypt to a private temporary file, run the user's editor, re-encrypt.
//!
//! The plaintext lives in a fresh 0700 directory as a 0600 file named like the real one
//! (so editors pick the right syntax), and the directory is removed on every way out:
//! success, error, an editor that fails, or Ctrl-C (caught while the editor runs, so this
//! process survives to clean up instead of dying with the editor).

use std::fs;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use orcastrate_crypt::{
    decrypt, encrypt, file_name, read_encrypted, write_encrypted, Document, EncryptedDocument,
    Error, Format, Key, Side,
};

use super::{encrypted_file, summarize, Ctx, Exit};
use crate::cli::EnvOrFile;

/// Signals that would otherwise kill us and leave the plaintext behind.
const CAUGHT_SIGNALS: [i32; 4] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGQUIT,
];

pub(crate) fn run(ctx: &Ctx, target: &EnvOrFile) -> anyhow::Result<()> {
    let (env, path) = encrypted_file(ctx, target, true)?;
    let key = ctx.keys.for_env(env.as_deref(), false)?;
    let format = Format::from_path(&path)?;
    let label = path.display().to_string();
    let previous = if path.try_exists().map_err(|e| Error::Io {
        action: "look for",
        path: path.clone(),
        error: e,
    })? {
        Some(read_encrypted(&path)?)
    } else {
        None
    };
    let original = match &previous {
        Some(enc) => decrypt(enc, &key, &label)?.to_text(),
        None => Document::empty(format).to_text(),
    };

    // Dropping `dir` deletes the plaintext, whatever happens below.
    let dir = tempfile::Builder::new()
        .prefix("orcastrate-edit-")
        .tempdir()
        .map_err(|e| Error::Io {
            action: "create a temporary directory in",
            path: std::env::temp_dir(),
            error: e,
        })?;
    // tempfile honours the umask for directories; nobody else may even list this one.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).map_err(|e| Error::Io {
        action: "set permissions on",
        path: dir.path().to_owned(),
        error: e,
    })?;
    let file = dir.path().join(file_name(
        Side::Decrypted,
        env.as_deref().unwrap_or("config"),
        format,
    ));
    write_private(&file, &original)?;

    let interrupted = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for signal in CAUGHT_SIGNALS {
        ids.push(signal_hook::flag::register(
            signal,
            Arc::clone(&interrupted),
        )?);
    }
    let result = edit_loop(
        ctx,
        &file,
        &original,
        format,
        &path,
        &key,
        previous.as_ref(),
        &interrupted,
    );
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    drop(dir);
    result
}

#[allow(clippy::too_many_arguments)]
fn edit_loop(
    ctx: &Ctx,
    file: &Path,
    original: &str,
    format: Format,
    path: &Path,
    key: &Key,
    previous: Option<&EncryptedDocument>,
    interrupted: &AtomicBool,
) -> anyhow::Result<()> {
    let label = path.display();
    loop {
        run_editor(file)?;
        if interrupted.load(Ordering::SeqCst) {
            return Err(aborted("interrupted"));
        }
        let text = fs::read_to_string(file).map_err(|e| Error::Io {
            action: "read back",
            path: file.to_owned(),
            error: e,
        })?;
        if text == original {
            ctx.note(&format!("{label}: no changes"));
            return Ok(());
        }
        let edited = format!("{label} (edited)");
        let checked = Document::parse(&text, format, &edited).and_then(|doc| {
            encrypt(
                &doc,
                key,
                &previous.into_iter().collect::<Vec<_>>(),
                &edited,
            )
        });
        match checked {
            Ok(enc) => {
                let report = write_encrypted(path, &enc, previous)?;
                ctx.note(&format!(
                    "{label}: {} of {} values changed ({})",
                    report.changed.len(),
                    enc.len(),
                    summarize(&report.changed)
                ));
                return Ok(());
            }
            Err(err) if std::io::stdin().is_terminal() => {
                eprintln!("orcastrate-crypt: {err}");
                if !ask("edit again? [Y/n] ")? {
                    return Err(aborted("abandoned"));
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Runs `$VISUAL`, else `$EDITOR`, else `vi`, through `sh` so values like `code --wait`
/// work.
fn run_editor(file: &Path) -> anyhow::Result<()> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned());
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file)
        .status()
        .map_err(|e| Error::Io {
            action: "run the editor",
            path: editor.clone().into(),
            error: e,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(aborted(&format!("the editor exited with {status}")))
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let io = |e| Error::Io {
        action: "write",
        path: path.to_owned(),
        error: e,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    Ok(())
}

fn ask(question: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(!answer.trim().to_lowercase().starts_with('n'))
}

fn aborted(why: &str) -> anyhow::Error {
    Exit {
        code: orcastrate_crypt::Exit::Conflict,
        message: format!("edit aborted ({why}): nothing written, temporary file deleted"),
    }
    .into()
}
