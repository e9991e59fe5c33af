//! blocking: applies ip-block events to the node's blocklist.
//!
//! The address comes from another node or an outside publisher, so it is
//! checked before anything is blocked: it must parse as an IP or CIDR
//! network, and a block may not cover loopback or the manifest's
//! `allowlist` setting (a node must never lock out itself or its peers).

use herald_guest::net::{Allowlist, canonical, parse_network, touches_loopback};
use herald_guest::{BlockAction, Event, Handler, Host, IpBlock, Outcome, reject, retry};

pub struct Blocking;

impl Handler for Blocking {
    fn ip_block(host: &impl Host, _: &Event, block: &IpBlock) -> Outcome {
        let net = match parse_network(&block.ip) {
            Ok(net) => net,
            Err(e) => return reject(e),
        };
        let network = canonical(&net);
        if block.action == BlockAction::Unblock {
            return match host.unblock(&network) {
                Ok(()) => Outcome::Ok,
                Err(e) => retry(e),
            };
        }
        if touches_loopback(&net) {
            return reject(format!("refusing to block {network}: it covers loopback"));
        }
        let allowlist = match host.setting("allowlist").as_deref().map(Allowlist::parse) {
            None => Allowlist::default(),
            Some(Ok(a)) => a,
            // The deployer's setting is broken: hold the event until the
            // manifest is fixed rather than block blind.
            Some(Err(e)) => return retry(format!("manifest setting {e}")),
        };
        if let Some(allowed) = allowlist.protects(&net) {
            return reject(format!(
                "refusing to block {network}: allowlisted by {allowed}"
            ));
        }
        match host.block(&network, &block.reason, block.expires_at) {
            Ok(()) => Outcome::Ok,
            Err(e) => retry(e),
        }
    }
}

herald_guest::export!(Blocking);

#[cfg(test)]
mod tests {
    use super::*;
    use herald_guest::testing::{self, Effect, RecordingHost};

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
}
