// blocking-js: the built-in blocking handler, in JavaScript.
//
// Applies ip-block events to the node's blocklist, with the same checks and
// the same outcomes as `handlers/blocking` (Rust): the address must parse as
// an IP or CIDR network, and a block may not cover loopback or the
// manifest's `allowlist` setting. The node's own errors go by class: a
// transient one retries the event, the others reject it.

import { Handler, Reject, Retry } from 'herald-guest';
import { Allowlist, canonical, parseNetwork, touchesLoopback } from 'herald-guest/net';

export default class Blocking extends Handler {
  ipBlock(host, event, block) {
    let net;
    try {
      net = parseNetwork(block.ip);
    } catch (e) {
      throw new Reject(e.message);
    }
    const network = canonical(net);
    if (block.action === 'unblock') {
      host.unblock(network);
      return;
    }
    if (touchesLoopback(net)) throw new Reject(`refusing to block ${network}: it covers loopback`);
    // The deployer's setting is broken: hold the event until the manifest
    // is fixed rather than block blind.
    let allowlist;
    try {
      allowlist = Allowlist.parse(host.setting('allowlist') ?? '');
    } catch (e) {
      throw new Retry(`manifest setting ${e.message}`);
    }
    const allowed = allowlist.protects(net);
    if (allowed !== null) throw new Reject(`refusing to block ${network}: allowlisted by ${allowed}`);
    host.block(network, block.reason, block.expiresAt);
  }
}
