//! Who may write what herald runs: the handler folder (its components
//! decide what every event does to the node) and the compile cache (its
//! files are native code, loaded as they are).
//!
//! A path passes when it is owned by herald's own user or by root and
//! nobody else may write it: not others, and not its group unless that is
//! root's or herald's own group. This is the rule OpenSSH applies to
//! `authorized_keys`; a folder any local user can write would let that
//! user run code as herald (or, through `sudo -E herald handler test` and
//! a cache under `$XDG_CACHE_HOME`, as root).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why `meta` (of `path`) may not be trusted, if it may not.
fn untrusted(path: &Path, meta: &Metadata) -> Option<String> {
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mode = meta.mode();
    if meta.uid() != uid && meta.uid() != 0 {
        return Some(format!(
            "{} is owned by uid {}, neither herald's user (uid {uid}) nor root",
            path.display(),
            meta.uid()
        ));
    }
    if mode & 0o002 != 0 {
        return Some(format!(
            "{} may be written by any user (mode {:o}); run `chmod o-w {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    if mode & 0o020 != 0 && meta.gid() != 0 && meta.gid() != gid {
        return Some(format!(
            "{} may be written by group {} (mode {:o}); run `chmod g-w {}`",
            path.display(),
            meta.gid(),
            mode & 0o7777,
            path.display()
        ));
    }
    None
}

/// [`untrusted`] as an error.
fn refuse_untrusted(path: &Path, meta: &Metadata) -> anyhow::Result<()> {
    match untrusted(path, meta) {
        Some(why) => Err(anyhow::anyhow!("refusing {why}")),
        None => Ok(()),
    }
}

/// Refuse `path` (followed if it is a symbolic link) unless only herald's
/// user or root may write it.
pub fn check_trusted(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read its owner: {e}", path.display()))?;
    refuse_untrusted(path, &meta)
}

/// [`check_trusted`] for a file that is loaded as native code: a symbolic
/// link is refused as well (its target's folder is not checked).
pub fn check_trusted_file(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read its owner: {e}", path.display()))?;
    if !meta.file_type().is_file() {
        anyhow::bail!("refusing {}: not a regular file", path.display());
    }
    refuse_untrusted(path, &meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_what_others_cannot_write_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.wasm");
        std::fs::write(&file, b"x").unwrap();
        let set = |mode| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode));
        set(0o644).unwrap();
        check_trusted(&file).unwrap();
        check_trusted_file(&file).unwrap();
        set(0o646).unwrap();
        let e = check_trusted(&file).unwrap_err().to_string();
        assert!(e.contains("any user") && e.contains("chmod o-w"), "{e}");
        assert!(check_trusted_file(&file).is_err());
        set(0o644).unwrap();
        let link = dir.path().join("link.cwasm");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        check_trusted(&link).unwrap();
        let e = check_trusted_file(&link).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
