//! blocking: applies ip-block events to the node's blocklist.
//!
//! The address comes from another node or an outside publisher, so it is
//! checked before anything is blocked: it must parse as an IP or CIDR
//! network, and a block may not cover loopback or the manifest's
//! `allowlist` setting (a node must never lock out itself or its peers).
//!
//! The node's own errors go by class: a transient one (store error) retries
//! the event, an invalid or denied one rejects it.

use herald_guest::net::{Allowlist, canonical, parse_network, touches_loopback};
use herald_guest::{BlockAction, Event, Fail, Handled, Handler, Host, IpBlock, OrFail, reject};

pub struct Blocking;

impl Handler for Blocking {
    fn ip_block(host: &impl Host, _: &Event, block: &IpBlock) -> Handled {
        let net = parse_network(&block.ip).or_reject()?;
        let network = canonical(&net);
        if block.action == BlockAction::Unblock {
            host.unblock(&network)?;
            return Ok(());
        }
        if touches_loopback(&net) {
            return reject(format!("refusing to block {network}: it covers loopback"));
        }
        // The deployer's setting is broken: hold the event until the
        // manifest is fixed rather than block blind.
        let allowlist = match host.setting("allowlist") {
            Some(setting) => Allowlist::parse(&setting)
                .map_err(|e| Fail::Retry(format!("manifest setting {e}")))?,
            None => Allowlist::default(),
        };
        if let Some(allowed) = allowlist.protects(&net) {
            return reject(format!(
                "refusing to block {network}: allowlisted by {allowed}"
            ));
        }
        host.block(&network, &block.reason, block.expires_at)?;
        Ok(())
    }
}

herald_guest::export!(Blocking);

#[cfg(test)]
mod tests {
    use super::*;
    use herald_guest::testing::{self, Effect, RecordingHost};
    use herald_guest::{EffectError, Outcome};

    fn run(host: &RecordingHost, ev: herald_guest::Event) -> Outcome {
        herald_guest::handle::<Blocking>(host, &[ev]).remove(0)
    }

    #[test]
    fn blocks_a_valid_address() {
        let host = RecordingHost::new();
        assert_eq!(run(&host, testing::ip_block("203.0.113.7")), Outcome::Ok);
        assert_eq!(
            host.effects(),
            vec![Effect::Block {
                network: "203.0.113.7".into(),
                reason: "test".into(),
                expires_at: None
            }]
        );
    }

    #[test]
    fn rejects_garbage_naming_it() {
        let host = RecordingHost::new();
        match run(&host, testing::ip_block("not-an-ip")) {
            Outcome::Reject(r) => assert!(r.contains("not-an-ip"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(host.effects().is_empty());
    }

    #[test]
    fn never_blocks_loopback_or_allowlisted() {
        let host = RecordingHost::new().with_setting("allowlist", "192.0.2.0/24, 2001:db8::1");
        for ip in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0/0",
            "192.0.2.9",
            "192.0.0.0/16",
            "2001:db8::1",
        ] {
            assert!(
                matches!(run(&host, testing::ip_block(ip)), Outcome::Reject(_)),
                "{ip}"
            );
        }
        assert!(host.effects().is_empty());
    }

    #[test]
    fn unblocks_in_canonical_form() {
        let host = RecordingHost::new();
        assert_eq!(
            run(&host, testing::ip_unblock("2001:DB8::/48")),
            Outcome::Ok
        );
        assert_eq!(
            host.effects(),
            vec![Effect::Unblock {
                network: "2001:db8::/48".into()
            }]
        );
    }

    #[test]
    fn broken_allowlist_holds_the_event() {
        let host = RecordingHost::new().with_setting("allowlist", "10.0.0.0/8, nope");
        assert!(matches!(
            run(&host, testing::ip_block("203.0.113.7")),
            Outcome::Retry(_)
        ));
        assert!(host.effects().is_empty());
    }

    #[test]
    fn node_errors_go_by_class() {
        let host = RecordingHost::new()
            .fail_block(EffectError::Transient("disk full".into()))
            .fail_unblock(EffectError::Transient("disk full".into()));
        let retry = Outcome::Retry("transient: disk full".into());
        assert_eq!(run(&host, testing::ip_block("203.0.113.7")), retry);
        assert_eq!(run(&host, testing::ip_unblock("203.0.113.7")), retry);
        let host = RecordingHost::new()
            .fail_block(EffectError::Invalid("bad".into()))
            .fail_unblock(EffectError::Denied("protected".into()));
        assert_eq!(
            run(&host, testing::ip_block("203.0.113.7")),
            Outcome::Reject("invalid: bad".into())
        );
        assert_eq!(
            run(&host, testing::ip_unblock("203.0.113.7")),
            Outcome::Reject("denied: protected".into())
        );
    }
}
