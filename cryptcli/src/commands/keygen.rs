//! `keygen`: a new random key, printed or written 0600.

use std::path::Path;

use orcastrate_crypt::{write_atomic, Error, Key, PRIVATE_MODE};

use super::{print_stdout, Ctx};

pub(crate) fn run(ctx: &Ctx, out: Option<&Path>, force: bool) -> anyhow::Result<()> {
    let key = Key::generate()?;
    let text = format!("{}\n", key.to_base64().as_str());
    let Some(out) = out else {
        print_stdout(&text)?;
        ctx.note(&format!("new key id {}", key.id()));
        return Ok(());
    };
    if !force && out.try_exists().unwrap_or(true) {
        return Err(Error::Usage(format!(
            "{} already exists: pass --force to replace it (the old key is lost)",
            out.display()
        ))
        .into());
    }
    write_atomic(out, text.as_bytes(), PRIVATE_MODE)?;
    ctx.note(&format!(
        "wrote a new key (id {}) to {} (mode 0600)",
        key.id(),
        out.display()
    ));
    Ok(())
}
