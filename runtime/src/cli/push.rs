//! `herald push vapid-key --config <file>`: the node's VAPID public key, the
//! `applicationServerKey` web clients subscribe with.

use std::io::Write;
use std::path::Path;

use crate::config::Config;
use crate::effects::push::Vapid;

/// Load the VAPID key the configuration at `config` names
/// (`push.vapid.keyFile`, default `<stateDir>/vapid.key`), creating it if
/// the file does not exist, and print its public key (base64url, the
/// 65-byte uncompressed point) on one line. Notes go to standard error, so
/// that `$(herald push vapid-key …)` is the key alone.
pub fn vapid_key(config: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let path = config.push_vapid_key_file();
    let existed = path.exists();
    let vapid = Vapid::load_or_create(&path, config.push_vapid.subject.clone())?;
    if !existed {
        eprintln!(
            "created {}: copy it (mode 0600) to every node of the cluster",
            path.display()
        );
    }
    writeln!(out, "{}", vapid.public_key())?;
    Ok(())
}
