//! The node's TLS certificate store.
//!
//! The `certificate` handler validates a certificate (the key matches, it has
//! not expired, its names cover the domains) and asks the host to install it;
//! this store puts it where the mail server process on the same node finds
//! it: as files, and through herald's local API ([`CertStore::get`]).
//!
//! # On-disk layout
//!
//! Everything lives under `<state dir>/certs/`:
//!
//! ```text
//! certs/
//!   .lock                                   serialises installs across processes
//!   .versions/
//!     mail.example.com-<16 hex>-<unix ms>/  mode 0700, one version of one domain
//!       fullchain.pem                       the chain, leaf first (mode 0644)
//!       privkey.pem                         the private key (mode 0600)
//!       meta.json                           {"domains":[…],"notAfter":ms,"installedAt":ms}
//!   mail.example.com -> .versions/mail.example.com-…/
//!   _wildcard.example.com -> .versions/_wildcard.example.com-…/
//! ```
//!
//! `certs/<domain>` is a symbolic link to the domain's current version
//! directory; the mail server is configured with
//! `certs/<domain>/fullchain.pem` and `certs/<domain>/privkey.pem`. The 16 hex
//! digits are the start of the SHA-256 of the chain. A wildcard name
//! `*.example.com` is stored as `_wildcard.example.com`, so that no path ever
//! holds a `*` (`_` is not allowed in the names the store accepts, so this
//! cannot collide with a real domain), and names starting with a dot (the
//! store's own files) cannot be domains either.
//!
//! # Why it is atomic
//!
//! The chain and the key must change together: a server that loaded a new
//! chain with the old key (or the reverse) could not complete a handshake.
//! So a version directory is never changed once it is in use. An install
//! writes a *new* version directory with all three files, syncs the files
//! and the directory, then switches the domain to it: it creates the symbolic
//! link `certs/.<domain>.tmp` → `.versions/…` and renames it over
//! `certs/<domain>`. `rename` replaces the link in one step, so at every
//! instant `certs/<domain>` is either the old version or the new one, each a
//! complete, matching pair, and a crash at any point leaves one of the two.
//! A reader that resolves the link once (opens the directory, or reads the
//! link, as [`CertStore::get`] does) and reads both files from it always gets
//! a matching pair; a reader that opens the two paths separately could, in
//! the instant of a switch, straddle two versions, and should compare the
//! two or re-read.
//!
//! After the switch the versions of that domain older than the previous one
//! are deleted: the previous one is kept for readers that resolved the link
//! just before the switch. Version directories that a crash left behind
//! before their switch go at the domain's next install.
//!
//! A certificate for several names is installed under each of them, with the
//! same files; each name switches atomically on its own. Installing the same
//! certificate, key, names and `notAfter` again changes nothing.

use std::fmt;
use std::fs;
use std::io;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The directory, under `certs/`, holding every version directory.
const VERSIONS: &str = ".versions";
/// The lock file, under `certs/`, held for the length of an install.
const LOCK: &str = ".lock";
const CHAIN: &str = "fullchain.pem";
const KEY: &str = "privkey.pem";
const META: &str = "meta.json";
/// The directory-name prefix standing for `*.`.
const WILDCARD_DIR: &str = "_wildcard.";

/// The node's certificate store, under `<state dir>/certs`. See the module
/// documentation for the layout.
///
/// Installs are serialised (within the process by a mutex, across processes
/// by a lock on `certs/.lock`); reads take no lock.
pub struct CertStore {
    /// `<state dir>/certs`, absolute.
    dir: PathBuf,
    /// Serialises installs within the process.
    install: Mutex<()>,
}

/// One installed certificate, as [`CertStore::get`] returns it.
///
/// `Debug` redacts the private key, so that an `Installed` can be logged.
/// `Serialize` includes it: it is meant for herald's local API, which hands
/// the pair to the mail server, never for logs.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Installed {
    /// The entry that matched: the domain asked for, or the wildcard entry
    /// (`*.example.com`) that covers it.
    pub domain: String,
    /// Every name the certificate was installed for, in install order.
    pub domains: Vec<String>,
    /// The end of the certificate's validity, in Unix milliseconds.
    pub not_after: u64,
    /// When this version was installed, in Unix milliseconds.
    pub installed_at: u64,
    /// The certificate chain, PEM, leaf first.
    pub chain_pem: String,
    /// The private key, PEM. Never log it.
    pub private_key_pem: String,
    /// `certs/<entry>/fullchain.pem`, through the link: always the current
    /// chain.
    pub chain_path: PathBuf,
    /// `certs/<entry>/privkey.pem`, through the link: always the current key.
    pub key_path: PathBuf,
}

impl fmt::Debug for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Installed")
            .field("domain", &self.domain)
            .field("domains", &self.domains)
            .field("not_after", &self.not_after)
            .field("installed_at", &self.installed_at)
            .field("chain_pem", &self.chain_pem)
            .field("private_key_pem", &format_args!("<redacted>"))
            .field("chain_path", &self.chain_path)
            .field("key_path", &self.key_path)
            .finish()
    }
}

/// `meta.json` in a version directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    domains: Vec<String>,
    not_after: u64,
    installed_at: u64,
}

/// The contents of one version directory.
struct Version {
    meta: Meta,
    chain: String,
    key: String,
}

impl CertStore {
    /// The store under `state_dir/certs`, created if missing. Opening
    /// changes nothing that is already there.
    pub fn open(state_dir: &Path) -> anyhow::Result<CertStore> {
        let dir = std::path::absolute(state_dir.join("certs"))
            .with_context(|| format!("cannot resolve {}", state_dir.display()))?;
        fs::create_dir_all(dir.join(VERSIONS))
            .with_context(|| format!("cannot create {}", dir.join(VERSIONS).display()))?;
        Ok(CertStore {
            dir,
            install: Mutex::new(()),
        })
    }

    /// Install for every name in `domains` (the same files serve all of
    /// them). Errors name the domain.
    ///
    /// Names are compared case-insensitively and a trailing dot is ignored;
    /// every name is checked before anything is written, so an invalid name
    /// writes nothing. Each name switches to the new pair atomically; should
    /// the disk fail half-way through the list, the names before the failing
    /// one are installed, and installing again completes the rest (the
    /// installed ones are then unchanged). `chain_pem` and `private_key_pem`
    /// are not parsed: the handler validated them.
    pub fn install(
        &self,
        domains: &[String],
        chain_pem: &str,
        private_key_pem: &str,
        not_after: u64,
    ) -> Result<(), String> {
        let mut names: Vec<String> = Vec::with_capacity(domains.len());
        for d in domains {
            let name = normalise(d)?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            return Err("a certificate must be installed for at least one domain".into());
        }
        let all = names.join(", ");
        if chain_pem.trim().is_empty() {
            return Err(format!("certificate for {all}: the chain is empty"));
        }
        if private_key_pem.trim().is_empty() {
            return Err(format!("certificate for {all}: the private key is empty"));
        }
        let _in_process = self.install.lock().unwrap_or_else(|e| e.into_inner());
        let _across_processes = self
            .lock()
            .map_err(|e| format!("certificate for {all}: {e:#}"))?;
        let installed_at = now_ms();
        for name in &names {
            self.install_one(
                name,
                &names,
                chain_pem,
                private_key_pem,
                not_after,
                installed_at,
            )
            .map_err(|e| format!("certificate for {name}: {e:#}"))?;
        }
        Ok(())
    }

    /// The current certificate for `domain` (case-insensitive, trailing dot
    /// ignored): an exact entry first, else the wildcard entry `*.parent`
    /// covering it (one label only: `*.example.com` covers
    /// `mail.example.com`, not `a.b.example.com` nor `example.com`).
    ///
    /// The link is resolved once and both files are read from the version
    /// it points to, so the pair always matches. None for a name the store
    /// would not accept.
    pub fn get(&self, domain: &str) -> Option<Installed> {
        let name = normalise(domain).ok()?;
        if let Some(found) = self.read_entry(&name) {
            return Some(found);
        }
        if name.starts_with("*.") {
            return None;
        }
        let (_, parent) = name.split_once('.')?;
        self.read_entry(&format!("*.{parent}"))
    }

    /// Every domain with its notAfter, sorted by domain. Wildcard entries
    /// are listed as `*.example.com`.
    pub fn list(&self) -> Vec<(String, u64)> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list certificates");
                return Vec::new();
            }
        };
        let mut out: Vec<(String, u64)> = entries
            .filter_map(|entry| {
                let file_name = entry.ok()?.file_name();
                let file_name = file_name.to_str()?;
                if file_name.starts_with('.') {
                    return None;
                }
                let domain = domain_of_dir(file_name);
                if normalise(&domain).ok()? != domain {
                    return None;
                }
                let installed = self.read_entry(&domain)?;
                Some((domain, installed.not_after))
            })
            .collect();
        out.sort();
        out
    }

    /// Take the store's lock file; the lock goes with the returned file.
    fn lock(&self) -> anyhow::Result<fs::File> {
        let path = self.dir.join(LOCK);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(file)
    }

    /// Install one (valid, normalised) name; the caller holds the locks.
    fn install_one(
        &self,
        name: &str,
        domains: &[String],
        chain: &str,
        key: &str,
        not_after: u64,
        installed_at: u64,
    ) -> anyhow::Result<()> {
        let dir = dir_name(name);
        let link = self.dir.join(&dir);
        let previous = match fs::read_link(&link) {
            Ok(target) => Some(target),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("{} is not a link to a version directory", link.display())
                });
            }
        };
        if let Some(current) = previous.as_deref().and_then(|t| self.version_path(t)) {
            // An unreadable current version is simply replaced.
            if let Ok(v) = read_version(&current)
                && v.chain == chain
                && v.key == key
                && v.meta.domains == domains
                && v.meta.not_after == not_after
            {
                tracing::debug!(domain = name, "certificate already installed");
                return Ok(());
            }
        }

        let versions = self.dir.join(VERSIONS);
        let hash = hex::encode(Sha256::digest(chain.as_bytes()));
        let (version, path) = create_version_dir(&versions, &dir, &hash[..16], installed_at)?;
        let meta = Meta {
            domains: domains.to_vec(),
            not_after,
            installed_at,
        };
        let written = (|| -> anyhow::Result<()> {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
            write_new(&path.join(CHAIN), chain.as_bytes(), 0o644)?;
            write_new(&path.join(KEY), key.as_bytes(), 0o600)?;
            write_new(&path.join(META), &serde_json::to_vec_pretty(&meta)?, 0o644)?;
            sync_dir(&path)?;
            sync_dir(&versions)
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&path);
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }

        // The switch: a fresh link next to the old one, renamed over it.
        let tmp = self.dir.join(format!(".{dir}.tmp"));
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", tmp.display())),
        }
        let target = Path::new(VERSIONS).join(&version);
        let switched = std::os::unix::fs::symlink(&target, &tmp)
            .with_context(|| format!("cannot create the link {}", tmp.display()))
            .and_then(|()| {
                fs::rename(&tmp, &link)
                    .with_context(|| format!("cannot replace {}", link.display()))
            });
        if let Err(e) = switched {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_dir_all(&path);
            return Err(e);
        }
        sync_dir(&self.dir)?;
        tracing::info!(domain = name, not_after, %version, "certificate installed");

        let previous = previous.as_deref().and_then(Path::file_name);
        self.prune(&dir, &version, previous.and_then(|p| p.to_str()));
        Ok(())
    }

    /// Delete the versions of the domain stored as `dir` other than
    /// `current` and `previous`. Failures are logged: the install is done.
    fn prune(&self, dir: &str, current: &str, previous: Option<&str>) {
        let versions = self.dir.join(VERSIONS);
        let entries = match fs::read_dir(&versions) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %versions.display(), error = %e, "cannot prune old certificates");
                return;
            }
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(version) = file_name.to_str() else {
                continue;
            };
            if version_owner(version) != Some(dir)
                || version == current
                || Some(version) == previous
            {
                continue;
            }
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(%version, error = %e, "cannot remove an old certificate version");
            }
        }
    }

    /// A link target, as a path, if it names a version directory.
    fn version_path(&self, target: &Path) -> Option<PathBuf> {
        let name = target.file_name()?.to_str()?;
        (target.parent() == Some(Path::new(VERSIONS)) && version_owner(name).is_some())
            .then(|| self.dir.join(target))
    }

    /// The certificate installed under the (normalised) entry `name`.
    fn read_entry(&self, name: &str) -> Option<Installed> {
        let dir = dir_name(name);
        let link = self.dir.join(&dir);
        // The version read can go away when two installs switch the entry
        // in between resolving the link and reading it: resolve again.
        for _ in 0..3 {
            let target = match fs::read_link(&link) {
                Ok(target) => target,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
                Err(e) => {
                    tracing::warn!(domain = name, error = %e, "unreadable certificate entry");
                    return None;
                }
            };
            let Some(path) = self.version_path(&target) else {
                tracing::warn!(domain = name, target = %target.display(), "certificate entry points outside the store");
                return None;
            };
            match read_version(&path) {
                Ok(v) => {
                    return Some(Installed {
                        domain: name.to_string(),
                        domains: v.meta.domains,
                        not_after: v.meta.not_after,
                        installed_at: v.meta.installed_at,
                        chain_pem: v.chain,
                        private_key_pem: v.key,
                        chain_path: link.join(CHAIN),
                        key_path: link.join(KEY),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(domain = name, error = %e, "unreadable certificate");
                    return None;
                }
            }
        }
        None
    }
}

/// `name` lowercased and without its trailing dot, if it is a name the store
/// accepts: labels of ASCII letters, digits and hyphens (not at either end of
/// a label, at most 63 characters), separated by single dots, with an
/// optional leading `*.`, at most 253 characters in all.
fn normalise(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    let name_without_dot = lower.strip_suffix('.').unwrap_or(&lower);
    let host = name_without_dot
        .strip_prefix("*.")
        .unwrap_or(name_without_dot);
    let valid = name_without_dot.len() <= 253 && host.split('.').all(valid_label);
    if valid {
        Ok(name_without_dot.to_string())
    } else {
        Err(format!("{name:?} is not a valid domain name"))
    }
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The directory name of a (normalised) domain: `*.` becomes `_wildcard.`.
fn dir_name(name: &str) -> String {
    match name.strip_prefix("*.") {
        Some(parent) => format!("{WILDCARD_DIR}{parent}"),
        None => name.to_string(),
    }
}

/// The domain a directory name stands for; the reverse of [`dir_name`].
fn domain_of_dir(dir: &str) -> String {
    match dir.strip_prefix(WILDCARD_DIR) {
        Some(parent) => format!("*.{parent}"),
        None => dir.to_string(),
    }
}

/// The domain directory name a version directory belongs to, if `version`
/// is `<dir>-<16 hex>-<unix ms>`. Parsed from the end, so that a domain
/// whose name extends another's with a hyphen is never mistaken for it.
fn version_owner(version: &str) -> Option<&str> {
    let mut parts = version.rsplitn(3, '-');
    let ms = parts.next()?;
    let hash = parts.next()?;
    let owner = parts.next()?;
    let ms_ok = !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit());
    let hash_ok = hash.len() == 16 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (ms_ok && hash_ok && !owner.is_empty()).then_some(owner)
}

/// Create a new, empty version directory (mode 0700) under `versions`;
/// returns its name and path. Two versions with the same chain in the same
/// millisecond get successive milliseconds.
fn create_version_dir(
    versions: &Path,
    dir: &str,
    hash: &str,
    mut ms: u64,
) -> anyhow::Result<(String, PathBuf)> {
    loop {
        let name = format!("{dir}-{hash}-{ms}");
        let path = versions.join(&name);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok((name, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ms += 1,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", path.display()));
            }
        }
    }
}

/// Write a new file with exactly `mode` and sync it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // The umask may have taken bits off the mode asked for.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}

/// Sync a directory, making the entries created in it durable.
fn sync_dir(path: &Path) -> anyhow::Result<()> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", path.display()))
}

/// Read the three files of a version directory.
fn read_version(path: &Path) -> io::Result<Version> {
    let meta: Meta = serde_json::from_slice(&fs::read(path.join(META))?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Version {
        meta,
        chain: fs::read_to_string(path.join(CHAIN))?,
        key: fs::read_to_string(path.join(KEY))?,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u32) -> String {
        format!("-----BEGIN CERTIFICATE-----\nMIIleaf{n}\n-----END CERTIFICATE-----\n")
    }

    fn key(n: u32) -> String {
        format!("-----BEGIN PRIVATE KEY-----\nMIIkey{n}\n-----END PRIVATE KEY-----\n")
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The version directories of the domain stored as `dir`, sorted.
    fn versions_of(certs: &Path, dir: &str) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(certs.join(VERSIONS))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|v| version_owner(v) == Some(dir))
            .collect();
        out.sort();
        out
    }

    /// Every path under `dir` with what it is: link target, file contents
    /// and mode, or directory.
    fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let what = if meta.file_type().is_symlink() {
                    format!("-> {}", fs::read_link(&path).unwrap().display())
                } else if meta.is_dir() {
                    stack.push(path.clone());
                    format!("dir {:o}", meta.permissions().mode())
                } else {
                    format!(
                        "file {:o} {}",
                        meta.permissions().mode(),
                        fs::read_to_string(&path).unwrap()
                    )
                };
                out.push((path, what));
            }
        }
        out.sort();
        out
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn installs_and_gets_exact_and_wildcard() {
        let state = tempfile::tempdir().unwrap();
        let store = CertStore::open(state.path()).unwrap();
        let certs = state.path().join("certs");
        let before = now_ms();
        store
            .install(
                &names(&["mail.example.com", "*.example.com"]),
                &chain(1),
                &key(1),
                1_900_000_000_000,
            )
            .unwrap();

        let exact = store.get("mail.example.com").unwrap();
        assert_eq!(exact.domain, "mail.example.com");
        assert_eq!(exact.domains, names(&["mail.example.com", "*.example.com"]));
        assert_eq!(exact.not_after, 1_900_000_000_000);
        assert!(exact.installed_at >= before && exact.installed_at <= now_ms());
        assert_eq!(exact.chain_pem, chain(1));
        assert_eq!(exact.private_key_pem, key(1));
        assert_eq!(
            exact.chain_path,
            certs.join("mail.example.com/fullchain.pem")
        );
        assert_eq!(exact.key_path, certs.join("mail.example.com/privkey.pem"));

        let wild = store.get("imap.example.com").unwrap();
        assert_eq!(wild.domain, "*.example.com");
        assert_eq!(wild.chain_pem, chain(1));
        assert_eq!(wild.private_key_pem, key(1));
        assert_eq!(
            wild.chain_path,
            certs.join("_wildcard.example.com/fullchain.pem")
        );
        assert_eq!(store.get("*.example.com"), Some(wild.clone()));
        assert_eq!(store.get("a.b.example.com"), None, "one label only");
        assert_eq!(store.get("example.com"), None);
        assert_eq!(store.get("other.org"), None);

        // The files, through the links.
        for dir in ["mail.example.com", "_wildcard.example.com"] {
            let link = certs.join(dir);
            assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
            assert_eq!(
                fs::read_to_string(link.join("fullchain.pem")).unwrap(),
                chain(1)
            );
            assert_eq!(
                fs::read_to_string(link.join("privkey.pem")).unwrap(),
                key(1)
            );
            assert_eq!(mode(&link.join("privkey.pem")), 0o600);
            assert_eq!(mode(&link), 0o700, "the version directory");
            let meta: Meta =
                serde_json::from_slice(&fs::read(link.join("meta.json")).unwrap()).unwrap();
            assert_eq!(
                meta,
                Meta {
                    domains: names(&["mail.example.com", "*.example.com"]),
                    not_after: 1_900_000_000_000,
                    installed_at: exact.installed_at,
                }
            );
            let json: serde_json::Value =
                serde_json::from_slice(&fs::read(link.join("meta.json")).unwrap()).unwrap();
            assert_eq!(json["notAfter"], 1_900_000_000_000u64);
            assert_eq!(json["installedAt"], exact.installed_at);
        }
        assert!(
            tree(&certs)
                .iter()
                .all(|(p, _)| !p.to_string_lossy().contains('*')),
            "no `*` in any path"
        );

        assert_eq!(
            store.list(),
            vec![
                ("*.example.com".to_string(), 1_900_000_000_000),
                ("mail.example.com".to_string(), 1_900_000_000_000),
            ]
        );

        let debug = format!("{exact:?}");
        assert!(!debug.contains("MIIkey1"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let api = serde_json::to_value(&exact).unwrap();
        assert_eq!(api["privateKeyPem"], key(1));
        assert_eq!(api["notAfter"], 1_900_000_000_000u64);
    }

    #[test]
    fn a_new_install_replaces_the_pair_and_keeps_two_versions() {
        let state = tempfile::tempdir().unwrap();
        let store = CertStore::open(state.path()).unwrap();
        let certs = state.path().join("certs");
        let d = names(&["mail.example.com"]);
        // A domain whose name extends the other's with a hyphen keeps its
        // own versions.
        let lookalike = names(&["mail.example.com-0123456789abcdef"]);
        store.install(&lookalike, &chain(9), &key(9), 9).unwrap();

        store.install(&d, &chain(1), &key(1), 1).unwrap();
        let first = versions_of(&certs, "mail.example.com");
        assert_eq!(first.len(), 1);

        store.install(&d, &chain(2), &key(2), 2).unwrap();
        let got = store.get("mail.example.com").unwrap();
        assert_eq!(
            (
                got.chain_pem.as_str(),
                got.private_key_pem.as_str(),
                got.not_after
            ),
            (chain(2).as_str(), key(2).as_str(), 2)
        );
        assert_eq!(
            fs::read_to_string(&got.chain_path).unwrap(),
            chain(2),
            "the path follows the switch"
        );
        assert_eq!(fs::read_to_string(&got.key_path).unwrap(), key(2));
        let second = versions_of(&certs, "mail.example.com");
        assert_eq!(second.len(), 2, "the previous version is kept");
        assert!(second.contains(&first[0]));

        store.install(&d, &chain(3), &key(3), 3).unwrap();
        let third = versions_of(&certs, "mail.example.com");
        assert_eq!(third.len(), 2, "{third:?}");
        assert!(!third.contains(&first[0]), "the oldest version is gone");
        let current = fs::read_link(certs.join("mail.example.com")).unwrap();
        let current = current.file_name().unwrap().to_str().unwrap();
        assert!(third.iter().any(|v| v == current));
        let previous = third.iter().find(|v| *v != current).unwrap();
        assert_eq!(
            fs::read_to_string(certs.join(VERSIONS).join(previous).join(CHAIN)).unwrap(),
            chain(2),
            "the one kept is the previous one"
        );
        assert_eq!(store.get("mail.example.com").unwrap().chain_pem, chain(3));

        assert_eq!(
            versions_of(&certs, "mail.example.com-0123456789abcdef").len(),
            1
        );
        assert_eq!(
            store
                .get("mail.example.com-0123456789abcdef")
                .unwrap()
                .chain_pem,
            chain(9)
        );
        let leftovers: Vec<_> = fs::read_dir(&certs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn installing_the_same_certificate_again_changes_nothing() {
        let state = tempfile::tempdir().unwrap();
        let store = CertStore::open(state.path()).unwrap();
        let certs = state.path().join("certs");
        let d = names(&["mail.example.com", "smtp.example.com"]);
        store.install(&d, &chain(1), &key(1), 1).unwrap();
        let before = tree(&certs);
        let installed = store.get("smtp.example.com").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.install(&d, &chain(1), &key(1), 1).unwrap();
        assert_eq!(tree(&certs), before);
        assert_eq!(store.get("smtp.example.com"), Some(installed));

        // The same chain for other names or another notAfter is a change.
        store.install(&d, &chain(1), &key(1), 2).unwrap();
        assert_eq!(store.get("smtp.example.com").unwrap().not_after, 2);
        assert_eq!(versions_of(&certs, "smtp.example.com").len(), 2);
    }

    #[test]
    fn invalid_names_are_refused_before_anything_is_written() {
        let state = tempfile::tempdir().unwrap();
        let store = CertStore::open(state.path()).unwrap();
        let certs = state.path().join("certs");
        let fresh = tree(&certs);
        let long = format!("{}com", "a.".repeat(125));
        assert_eq!(long.len(), 253);
        assert!(normalise(&long).is_ok());
        let too_long = format!("a{long}");
        let long_label = format!("{}.com", "a".repeat(64));
        let bad = [
            "",
            ".",
            "*",
            "*.",
            "*.*.example.com",
            "a.*.example.com",
            "*example.com",
            "a..example.com",
            ".example.com",
            "example.com..",
            "..",
            "../etc",
            "a/b.example.com",
            "/etc",
            "ex ample.com",
            "ex_ample.com",
            "_wildcard.example.com",
            "-a.example.com",
            "a-.example.com",
            "bücher.example.com",
            "a\0.example.com",
            too_long.as_str(),
            long_label.as_str(),
        ];
        for b in bad {
            let err = store
                .install(&names(&["ok.example.com", b]), &chain(1), &key(1), 1)
                .unwrap_err();
            assert!(err.contains(&format!("{b:?}")), "{b:?}: {err}");
            assert_eq!(store.get(b), None, "{b:?}");
        }
        assert!(store.install(&[], &chain(1), &key(1), 1).is_err());
        let err = store
            .install(&names(&["ok.example.com"]), "", &key(1), 1)
            .unwrap_err();
        assert!(err.contains("ok.example.com"), "{err}");
        let err = store
            .install(&names(&["ok.example.com"]), &chain(1), " \n", 1)
            .unwrap_err();
        assert!(err.contains("ok.example.com"), "{err}");
        assert_eq!(tree(&certs), fresh, "nothing written");

        store
            .install(&names(&["ok.example.com"]), &chain(1), &key(1), 1)
            .unwrap();
        let installed = tree(&certs);
        for b in bad {
            assert!(
                store
                    .install(&names(&[b, "ok.example.com"]), &chain(2), &key(2), 2)
                    .is_err()
            );
        }
        assert_eq!(tree(&certs), installed, "nothing changed");
        assert_eq!(store.get("ok.example.com").unwrap().chain_pem, chain(1));
    }

    #[test]
    fn a_reopened_store_sees_the_certificates() {
        let state = tempfile::tempdir().unwrap();
        let installed = {
            let store = CertStore::open(state.path()).unwrap();
            store
                .install(&names(&["*.example.org"]), &chain(1), &key(1), 10)
                .unwrap();
            store
                .install(&names(&["mx.example.net"]), &chain(2), &key(2), 20)
                .unwrap();
            store.get("mail.example.org").unwrap()
        };
        let before = tree(&state.path().join("certs"));
        let store = CertStore::open(state.path()).unwrap();
        assert_eq!(
            tree(&state.path().join("certs")),
            before,
            "opening changes nothing"
        );
        assert_eq!(store.get("mail.example.org"), Some(installed));
        assert_eq!(store.get("mx.example.net").unwrap().private_key_pem, key(2));
        assert_eq!(
            store.list(),
            vec![
                ("*.example.org".to_string(), 10),
                ("mx.example.net".to_string(), 20)
            ]
        );
    }

    #[test]
    fn names_are_case_insensitive_and_a_trailing_dot_is_ignored() {
        let state = tempfile::tempdir().unwrap();
        let store = CertStore::open(state.path()).unwrap();
        store
            .install(
                &names(&["Mail.Example.COM.", "*.Example.com", "mail.example.com"]),
                &chain(1),
                &key(1),
                1,
            )
            .unwrap();
        let got = store.get("MAIL.example.com.").unwrap();
        assert_eq!(got.domain, "mail.example.com");
        assert_eq!(
            got.domains,
            names(&["mail.example.com", "*.example.com"]),
            "normalised and without duplicates"
        );
        assert_eq!(
            store.get("IMAP.EXAMPLE.COM").unwrap().domain,
            "*.example.com"
        );
        assert_eq!(
            store.get("mail.example.com.").unwrap().domain,
            "mail.example.com"
        );
        assert!(state.path().join("certs/mail.example.com").exists());
        assert!(!state.path().join("certs/Mail.Example.COM.").exists());
    }

    #[test]
    fn a_link_left_by_a_crash_does_not_block_an_install() {
        let state = tempfile::tempdir().unwrap();
        let store = CertStore::open(state.path()).unwrap();
        let certs = state.path().join("certs");
        std::os::unix::fs::symlink(".versions/gone", certs.join(".mail.example.com.tmp")).unwrap();
        store
            .install(&names(&["mail.example.com"]), &chain(1), &key(1), 1)
            .unwrap();
        assert_eq!(store.get("mail.example.com").unwrap().chain_pem, chain(1));
        assert!(!certs.join(".mail.example.com.tmp").exists());
        assert!(
            fs::symlink_metadata(certs.join(".mail.example.com.tmp")).is_err(),
            "no link left"
        );
    }

    #[test]
    fn readers_always_see_a_matching_pair() {
        let state = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(CertStore::open(state.path()).unwrap());
        let d = names(&["mail.example.com"]);
        store.install(&d, &chain(0), &key(0), 0).unwrap();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 1..40 {
                    store.install(&d, &chain(n), &key(n), n as u64).unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() || reads == 0 {
            let got = store.get("mail.example.com").expect("always installed");
            let n = got.not_after as u32;
            assert_eq!((got.chain_pem, got.private_key_pem), (chain(n), key(n)));
            reads += 1;
        }
        writer.join().unwrap();
        assert_eq!(store.get("mail.example.com").unwrap().not_after, 39);
    }
}
