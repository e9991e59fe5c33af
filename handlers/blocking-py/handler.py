"""blocking-py: the built-in blocking handler, in Python.

Applies ip-block events to the node's blocklist, with the same checks and the
same outcomes as `handlers/blocking` (Rust): the address must parse as an IP
or CIDR network, and a block may not cover loopback or the manifest's
`allowlist` setting. The node's own errors go by class: a transient one
retries the event, the others reject it.
"""

from herald_guest import BlockAction, Handler, Reject, Retry, export
from herald_guest.net import Allowlist, canonical, parse_network, touches_loopback


class Blocking(Handler):
    def ip_block(self, host, event, block):
        try:
            net = parse_network(block.ip)
        except ValueError as e:
            raise Reject(str(e))
        network = canonical(net)
        if block.action == BlockAction.UNBLOCK:
            host.unblock(network)
            return
        if touches_loopback(net):
            raise Reject(f"refusing to block {network}: it covers loopback")
        # The deployer's setting is broken: hold the event until the
        # manifest is fixed rather than block blind.
        try:
            allowlist = Allowlist.parse(host.setting("allowlist") or "")
        except ValueError as e:
            raise Retry(f"manifest setting {e}")
        allowed = allowlist.protects(net)
        if allowed is not None:
            raise Reject(f"refusing to block {network}: allowlisted by {allowed}")
        host.block(network, block.reason, block.expires_at)


WitWorld = export(Blocking)
