//! `herald firewall flush`: delete the node's nftables table.

use std::io::Write;
use std::path::Path;

use crate::config::{Config, Nftables};
use crate::effects::firewall;

/// Delete the nftables table of the node configured at `path`
/// (`firewall.nftables`, or the default `inet herald` when the config has
/// none, e.g. after the setting was removed), whether or not it exists.
/// The blocklist itself is not touched; a running node puts the table back
/// at its next change, so stop the node first.
pub async fn flush(path: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let (nft, configured) = match config.firewall.nftables {
        Some(n) => (n, true),
        None => (Nftables::default(), false),
    };
    firewall::flush_table(&nft).await?;
    writeln!(
        out,
        "nftables table {} {} deleted{}",
        nft.family.as_str(),
        nft.table,
        if configured {
            ""
        } else {
            " (the default: the config has no firewall.nftables)"
        }
    )?;
    Ok(())
}
