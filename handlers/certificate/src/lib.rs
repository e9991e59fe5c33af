//! certificate: installs the TLS certificates published on the cluster
//! (ACME renewals, uploads) into the node's certificate store.
//!
//! Nothing is taken on the publisher's word: the chain must parse, the
//! private key must belong to the leaf, the leaf must be valid now and name
//! every domain it is published for (see `herald_guest::x509::check`, the
//! same check the node's certificate store runs); the expiry installed is
//! the leaf's own notAfter, not the one the event claims.
//!
//! A key sealed to the cluster (`herald cert publish`) arrives sealed: the
//! handler checks the chain and names, and the node's store opens the key
//! and checks the pair itself; the handler never holds the plaintext.
//!
//! The node's store failing now (transient) retries the event; a
//! certificate the node itself finds invalid is rejected.

use std::time::{SystemTime, UNIX_EPOCH};

use herald_guest::{Certificate, Event, Handled, Handler, Host, OrFail, TlsCertificate, x509};

pub struct Certificates;

impl Handler for Certificates {
    fn tls_certificate(host: &impl Host, _: &Event, cert: &TlsCertificate) -> Handled {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let not_after = x509::check(
            &cert.domains,
            &cert.certificate_pem,
            &cert.private_key_pem,
            now,
        )
        .or_reject()?;
        let certificate = Certificate {
            domains: cert.domains.clone(),
            chain_pem: cert.certificate_pem.clone(),
            private_key_pem: cert.private_key_pem.clone(),
            not_after,
        };
        host.install_certificate(&certificate)?;
        Ok(())
    }
}

herald_guest::export!(Certificates);

#[cfg(test)]
mod tests;
