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
//! certificate, key, names, `notAfter` and version again changes nothing.
//!
//! # Which certificate wins
//!
//! Each version directory records the version of the event that installed it
//! (`meta.json`, see [`crate::event::version`]). A certificate whose version
//! is older than the installed one's is not installed for that name, whatever
//! its `notAfter`: a newer signed certificate replaces the installed one even
//! when it ends earlier (a rotation after a key compromise, a shorter-lived
//! CA), and a replay of an older one changes nothing. Only where no version
//! decides (an install without one, or an entry from before versions) does
//! the no-rollback rule hold: no name goes back to a certificate that ends
//! earlier than the one it has. `herald cert force` is the operator's way
//! past both.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::durable;
use crate::event::Version as EventVersion;
use crate::event::now_ms;
use crate::event::version::{Order, order};

pub mod hooks;
mod names;
#[cfg(test)]
mod tests;

use names::{dir_name, domain_of_dir, normalise, version_owner};

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
    /// The version of the event that installed it, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<EventVersion>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<EventVersion>,
}

/// The contents of one version directory.
struct Version {
    meta: Meta,
    chain: String,
    key: String,
}

/// What an install did, name by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installs {
    /// Names switched to the new certificate.
    pub changed: Vec<String>,
    /// Names whose installed certificate has a newer version: left alone.
    pub stale: Vec<String>,
}

/// Why a certificate was not installed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A domain the store does not accept; nothing was written.
    #[error("{0}")]
    InvalidName(String),
    #[error("a certificate must be installed for at least one domain")]
    NoDomain,
    #[error("certificate for {domains}: the {what} is empty")]
    Empty { domains: String, what: &'static str },
    /// No version decides, and the certificate ends before the installed one.
    #[error(
        "refusing to roll `{domain}` back to a certificate that ends at {not_after} ms; \
         the installed one ends at {installed} ms"
    )]
    Rollback {
        domain: String,
        not_after: u64,
        installed: u64,
    },
    /// The disk failed: installing again may work.
    #[error("certificate for {domain}: {source:#}")]
    Storage {
        domain: String,
        source: anyhow::Error,
    },
}

impl CertError {
    /// Whether the same install could succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, CertError::Storage { .. })
    }
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
    ) -> Result<Installs, CertError> {
        self.install_at(domains, chain_pem, private_key_pem, not_after, None, false)
    }

    /// Install as of `version` (see "Which certificate wins" above): for
    /// each name, only if it is newer than the installed certificate's, or,
    /// where no version decides, if it does not end earlier. `force` skips
    /// both rules (`herald cert force`). Answers which names changed and
    /// which were stale.
    pub fn install_at(
        &self,
        domains: &[String],
        chain_pem: &str,
        private_key_pem: &str,
        not_after: u64,
        version: Option<&EventVersion>,
        force: bool,
    ) -> Result<Installs, CertError> {
        let mut names: Vec<String> = Vec::with_capacity(domains.len());
        for d in domains {
            let name = normalise(d).map_err(CertError::InvalidName)?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            return Err(CertError::NoDomain);
        }
        let all = names.join(", ");
        for (what, pem) in [("chain", chain_pem), ("private key", private_key_pem)] {
            if pem.trim().is_empty() {
                return Err(CertError::Empty { domains: all, what });
            }
        }
        let storage = |domain: &str| {
            let domain = domain.to_string();
            move |source| CertError::Storage { domain, source }
        };
        let _in_process = self.install.lock().unwrap_or_else(|e| e.into_inner());
        let _across_processes = self.lock().map_err(storage(&all))?;
        // Decided for every name before anything is written: a rollback of
        // one name refuses the whole install.
        let mut report = Installs::default();
        let mut wanted = Vec::with_capacity(names.len());
        for name in &names {
            let held = self.read_entry(name);
            let decided = held.as_ref().and_then(|h| {
                let held_version = h.version.as_ref()?;
                Some(order(version, Some(held_version)))
            });
            match (force, decided, held) {
                (true, _, _) => {}
                (false, Some(Order::Stale), _) => {
                    report.stale.push(name.clone());
                    continue;
                }
                (false, Some(_), _) => {}
                (false, None, Some(h)) if h.not_after > not_after => {
                    return Err(CertError::Rollback {
                        domain: name.clone(),
                        not_after,
                        installed: h.not_after,
                    });
                }
                (false, None, _) => {}
            }
            wanted.push(name);
        }
        let installed_at = now_ms();
        for name in wanted {
            let changed = self
                .install_one(
                    name,
                    &names,
                    chain_pem,
                    private_key_pem,
                    (not_after, version),
                    installed_at,
                )
                .map_err(storage(name))?;
            if changed {
                report.changed.push(name.clone());
            }
        }
        Ok(report)
    }

    /// The paths through which the mail server reads `domain`'s current
    /// pair (`certs/<domain>/fullchain.pem` and `privkey.pem`).
    pub fn files(&self, domain: &str) -> (PathBuf, PathBuf) {
        let name = normalise(domain).unwrap_or_else(|_| domain.to_ascii_lowercase());
        let dir = self.dir.join(dir_name(&name));
        (dir.join("fullchain.pem"), dir.join("privkey.pem"))
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
        (not_after, event_version): (u64, Option<&EventVersion>),
        installed_at: u64,
    ) -> anyhow::Result<bool> {
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
                && v.meta.version.as_ref() == event_version
            {
                tracing::debug!(domain = name, "certificate already installed");
                return Ok(false);
            }
        }

        let versions = self.dir.join(VERSIONS);
        let hash = hex::encode(Sha256::digest(chain.as_bytes()));
        let (version, path) = create_version_dir(&versions, &dir, &hash[..16], installed_at)?;
        let meta = Meta {
            domains: domains.to_vec(),
            not_after,
            installed_at,
            version: event_version.cloned(),
        };
        let written = (|| -> anyhow::Result<()> {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
            durable::create_new(&path.join(CHAIN), chain.as_bytes(), 0o644)?;
            durable::create_new(&path.join(KEY), key.as_bytes(), 0o600)?;
            durable::create_new(&path.join(META), &serde_json::to_vec_pretty(&meta)?, 0o644)?;
            durable::sync_dir(&path)?;
            durable::sync_dir(&versions)
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
        durable::sync_dir(&self.dir)?;
        tracing::info!(domain = name, not_after, %version, "certificate installed");

        let previous = previous.as_deref().and_then(Path::file_name);
        self.prune(&dir, &version, previous.and_then(|p| p.to_str()));
        Ok(true)
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
                        version: v.meta.version,
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
