//! Git integration: `textconv` for `git diff`, and `merge-driver` for merges and rebases.
//!
//! Git hands both commands temporary files, so the key is picked by the key id recorded
//! in each file among every key offered (explicit key, `ENVS`/`KEYS`).

use std::path::Path;

use orcastrate_crypt::{
    decrypt, encrypt, merge, read_text, write_encrypted, EncryptedDocument, Error, Format, Key,
};

use super::{print_stdout, Ctx};

pub(crate) fn textconv(ctx: &Ctx, file: &Path) -> anyhow::Result<()> {
    let text = read_text(file)?;
    if text.trim().is_empty() {
        return print_stdout(&text);
    }
    let label = file.display().to_string();
    let enc = EncryptedDocument::parse(&text, Format::from_path(file)?, &label)?;
    match ctx.keys.by_id(enc.key_id())? {
        Some(key) => print_stdout(&decrypt(&enc, &key, &label)?.to_text()),
        None => {
            ctx.note(&format!(
                "{label}: no key with id {} available, showing the ciphertext",
                enc.key_id()
            ));
            print_stdout(&text)
        }
    }
}

pub(crate) fn merge_driver(
    ctx: &Ctx,
    base: &Path,
    ours: &Path,
    theirs: &Path,
    path: &Path,
) -> anyhow::Result<()> {
    let format = Format::from_path(path)?;
    let label = path.display().to_string();
    let read = |file: &Path, side: &str| -> anyhow::Result<Option<(EncryptedDocument, Key)>> {
        let text = read_text(file)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        let name = format!("{label} ({side})");
        let enc = EncryptedDocument::parse(&text, format, &name)?;
        let key = ctx.keys.by_id(enc.key_id())?.ok_or_else(|| Error::NoKey {
            file: name,
            file_key_id: enc.key_id().to_owned(),
        })?;
        Ok(Some((enc, key)))
    };
    let base = read(base, "base")?;
    let empty = |side: &str| Error::Malformed {
        file: format!("{label} ({side})"),
        reason: "empty file".into(),
    };
    let (ours_enc, ours_key) = read(ours, "ours")?.ok_or_else(|| empty("ours"))?;
    let (theirs_enc, theirs_key) = read(theirs, "theirs")?.ok_or_else(|| empty("theirs"))?;

    let base_plain = match &base {
        Some((enc, key)) => Some(decrypt(enc, key, &format!("{label} (base)"))?),
        None => None,
    };
    let ours_plain = decrypt(&ours_enc, &ours_key, &format!("{label} (ours)"))?;
    let theirs_plain = decrypt(&theirs_enc, &theirs_key, &format!("{label} (theirs)"))?;
    let merged = merge(base_plain.as_ref(), &ours_plain, &theirs_plain, &label)?;

    // A key change merges like a value: if only theirs rekeyed, the result takes their key.
    let theirs_rekeyed = base
        .as_ref()
        .is_some_and(|(b, _)| b.key_id() == ours_enc.key_id())
        && theirs_enc.key_id() != ours_enc.key_id();
    let key = if theirs_rekeyed {
        &theirs_key
    } else {
        &ours_key
    };
    let enc = encrypt(&merged, key, &[&ours_enc, &theirs_enc], &label)?;
    let report = write_encrypted(ours, &enc, Some(&ours_enc))?;
    ctx.note(&format!(
        "{label}: merged key by key ({} taken from the other side)",
        super::values(report.changed.len())
    ));
    Ok(())
}
