//! certificate: installs the TLS certificates published on the cluster
//! (ACME renewals, uploads) into the node's certificate store.
//!
//! Nothing is taken on the publisher's word: the chain must parse, the
//! private key must belong to the leaf, the leaf must be valid now and name
//! every domain it is published for (see [`check`]); the expiry installed is
//! the leaf's own notAfter, not the one the event claims.

pub mod check;

use std::time::{SystemTime, UNIX_EPOCH};

use herald_guest::{Certificate, Event, Handler, Host, Outcome, TlsCertificate, reject, retry};

pub struct Certificates;

impl Handler for Certificates {
    fn tls_certificate(host: &impl Host, _: &Event, cert: &TlsCertificate) -> Outcome {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let checked = check::check(
            &cert.domains,
            &cert.certificate_pem,
            &cert.private_key_pem,
            now,
        );
        let not_after = match checked {
            Ok(not_after) => not_after,
            Err(e) => return reject(e),
        };
        let certificate = Certificate {
            domains: cert.domains.clone(),
            chain_pem: cert.certificate_pem.clone(),
            private_key_pem: cert.private_key_pem.clone(),
            not_after,
        };
        match host.install_certificate(&certificate) {
            Ok(()) => Outcome::Ok,
            Err(e) => retry(e),
        }
    }
}

herald_guest::export!(Certificates);

#[cfg(test)]
mod tests;
