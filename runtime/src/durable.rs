//! Files that survive a crash: every piece of node state that is replaced
//! whole (blocklist snapshot and export, the push log, compiled components,
//! certificate metadata, secrets) goes through here, so all of them agree
//! on what "written" means.
//!
//! A replacement is written to a temporary file with a unique name in the
//! same directory (two writers never share one), synced, renamed over the
//! target, and then the directory is synced: without that last step a crash
//! can keep the old directory entry, and the rename never happened.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Replace `path` with `bytes` atomically and durably, with the default
/// mode for new files (0644 less the umask).
pub fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    replace_with_mode(path, bytes, None)
}

/// [`replace`] for secrets: the file is 0600 from its first byte on.
pub fn replace_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    replace_with_mode(path, bytes, Some(0o600))
}

fn replace_with_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> anyhow::Result<()> {
    let dir = parent(path);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(mode.unwrap_or(0o644)))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    if let Some(mode) = mode {
        // The umask may have taken bits off; a secret must be exactly 0600.
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    sync_dir(dir)
}

/// Create a new file with exactly `mode` holding `bytes`, synced. Fails if
/// it exists. The caller syncs the directory once all its entries are made.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Create a secret file (a private key) holding `bytes`: 0600 from its
/// first byte, written whole to a temporary file beside it, synced, and
/// linked into place only if nothing is there yet, then the directory is
/// synced. A crash never leaves a torn key, and an existing file is never
/// replaced: the error is then [`std::io::ErrorKind::AlreadyExists`], and a
/// caller racing another creator reads the winner's file.
pub fn create_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent(path);
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    // The umask may have taken bits off; a secret must be exactly 0600.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Read a secret file, refusing what is not a regular file and a file that
/// others than its owner may read or change: a key others could read is not
/// the node's any more, and using it anyway would hide that. Errors say what
/// is wrong, not which file: the caller names it.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    let meta = fs::metadata(path).context("cannot read it")?;
    if !meta.is_file() {
        anyhow::bail!("not a regular file");
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "mode {mode:04o} lets others than its owner read or change the private key; \
             make it 0600 (chmod 600 {}, owned by the user herald runs as)",
            path.display()
        );
    }
    fs::read_to_string(path).context("cannot read it")
}

/// Open `path` for appending (creating it), for journals.
pub fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {} for appending", path.display()))
}

/// Make the entries created, renamed or removed in `dir` durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_keeps_secrets_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let secret = dir.path().join("sub").join("token");
        replace_secret(&secret, b"s3cret").unwrap();
        let mode = fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
    }

    #[test]
    fn concurrent_writers_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.txt");
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..50 {
                        let text = format!("{i}\n").repeat(100);
                        replace(path, text.as_bytes()).unwrap();
                    }
                });
            }
        });
        // Whatever writer won, the file is one writer's whole text.
        let text = fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        assert!(text.lines().all(|l| l == first) && text.lines().count() == 100);
    }

    #[test]
    fn secrets_are_created_once_private_and_read_only_when_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("key");
        create_secret(&path, b"k1").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = create_secret(&path, b"k2").unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(read_secret(&path).unwrap(), "k1");
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_secret(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        let e = format!("{:#}", read_secret(dir.path()).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn create_new_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        create_new(&path, b"k", 0o600).unwrap();
        assert!(create_new(&path, b"k", 0o600).is_err());
    }
}
