//! Domain names as the certificate store accepts them, and the directory
//! names it keeps them under.

use super::WILDCARD_DIR;

/// `name` lowercased and without its trailing dot, if it is a name the store
/// accepts: labels of ASCII letters, digits and hyphens (not at either end of
/// a label, at most 63 characters), separated by single dots, with an
/// optional leading `*.`, at most 253 characters in all.
pub(super) fn normalise(name: &str) -> Result<String, String> {
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
pub(super) fn dir_name(name: &str) -> String {
    match name.strip_prefix("*.") {
        Some(parent) => format!("{WILDCARD_DIR}{parent}"),
        None => name.to_string(),
    }
}

/// The domain a directory name stands for; the reverse of [`dir_name`].
pub(super) fn domain_of_dir(dir: &str) -> String {
    match dir.strip_prefix(WILDCARD_DIR) {
        Some(parent) => format!("*.{parent}"),
        None => dir.to_string(),
    }
}

/// The domain directory name a version directory belongs to, if `version`
/// is `<dir>-<16 hex>-<unix ms>`. Parsed from the end, so that a domain
/// whose name extends another's with a hyphen is never mistaken for it.
pub(super) fn version_owner(version: &str) -> Option<&str> {
    let mut parts = version.rsplitn(3, '-');
    let ms = parts.next()?;
    let hash = parts.next()?;
    let owner = parts.next()?;
    let ms_ok = !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit());
    let hash_ok = hash.len() == 16 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (ms_ok && hash_ok && !owner.is_empty()).then_some(owner)
}
