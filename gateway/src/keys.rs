//! The gateway's order-signing key, kept in `data_dir`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use orcastrate_broker::OrderSigner;

/// The key file's name inside `data_dir`.
pub const KEY_FILE: &str = "signing.key";

/// Path of the key file.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Reads the signing key.
pub fn load(data_dir: &Path) -> anyhow::Result<Option<OrderSigner>> {
    let path = key_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(OrderSigner::from_seed(&bytes).with_context(|| {
            format!("{} is damaged: restore it from a backup", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Reads the signing key, creating it when there is none and the ledger holds no orders.
///
/// A new key while orders exist would make every agent refuse every new order, so that is
/// refused with what to do instead.
pub fn load_or_create(data_dir: &Path, ledger_orders: u64) -> anyhow::Result<OrderSigner> {
    if let Some(signer) = load(data_dir)? {
        return Ok(signer);
    }
    let path = key_path(data_dir);
    if ledger_orders > 0 {
        bail!(
            "the signing key {} is missing but the ledger holds {ledger_orders} orders: restore the key from a backup (a new key would make every agent refuse new orders), or move the ledger away to start over",
            path.display()
        );
    }
    let signer = OrderSigner::generate();
    orcastrate_fs::write_private(&path, &signer.seed())
        .with_context(|| format!("cannot create the signing key {}", path.display()))?;
    tracing::info!(
        public_key = %signer.public_key_base64(),
        key_id = signer.key_id(),
        "created a new order-signing key: give its public key to every agent (gateway_public_keys)"
    );
    Ok(signer)
}
