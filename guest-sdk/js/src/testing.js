/**
 * A recording stand-in for the node, so that handler logic can be
 * unit-tested natively (`node --test`), and builders for test events.
 *
 *     import { handle, Transient } from 'herald-guest';
 *     import { RecordingHost, ipBlock } from 'herald-guest/testing';
 *
 *     const host = new RecordingHost().failBlock(new Transient('disk full'));
 *     handle(new MyHandler(), host, [ipBlock('203.0.113.7')]);
 *     // => [{ tag: 'retry', val: 'transient: disk full' }]
 *     host.effects();
 *     // => [{ block: { network: '203.0.113.7', reason: 'test', expiresAt: undefined } }]
 *
 * @module herald-guest/testing
 */

/**
 * Records every capability call (as `{ method: { arguments } }`) and answers
 * as scripted: by default every call succeeds. Each call of a method takes
 * the next answer scripted for it (`null` for success, or an `EffectError`
 * to throw). A call is recorded whether it succeeds or not: it is what the
 * handler asked.
 */
export class RecordingHost {
  constructor(settings = {}) {
    this.recorded = [];
    this.settings = { ...settings };
    this.answers = new Map();
  }

  /** A manifest `[settings]` entry. */
  withSetting(key, value) {
    this.settings[key] = value;
    return this;
  }

  /** Answers for the next calls of `method` (its name), in order. */
  withResults(method, results) {
    if (!this.answers.has(method)) this.answers.set(method, []);
    this.answers.get(method).push(...results);
    return this;
  }

  /** The next call of `method` throws `error`. */
  fail(method, error) {
    return this.withResults(method, [error]);
  }

  failPush(error) {
    return this.fail('deliverPush', error);
  }

  failBlock(error) {
    return this.fail('block', error);
  }

  failUnblock(error) {
    return this.fail('unblock', error);
  }

  failInstall(error) {
    return this.fail('installCertificate', error);
  }

  failPublish(error) {
    return this.fail('publish', error);
  }

  /** What was asked, logs left out. */
  effects() {
    return this.recorded.filter((e) => !('log' in e));
  }

  /** Everything that was logged, as `{ level, message }`. */
  logs() {
    return this.recorded.filter((e) => 'log' in e).map((e) => e.log);
  }

  answer(method, args) {
    this.recorded.push({ [method]: args });
    const error = this.answers.get(method)?.shift();
    if (error) throw error;
  }

  // The host methods.

  log(level, message) {
    this.recorded.push({ log: { level, message } });
  }

  setting(key) {
    return this.settings[key];
  }

  notifyIdle(accountId, changeId, types) {
    this.recorded.push({ notifyIdle: { accountId, changeId, types } });
  }

  deliverPush(eventId, message) {
    this.answer('deliverPush', { eventId, message });
  }

  block(network, reason, expiresAt) {
    this.answer('block', { network, reason, expiresAt });
  }

  unblock(network) {
    this.answer('unblock', { network });
  }

  installCertificate(certificate) {
    this.answer('installCertificate', { certificate });
  }

  publish(cause, key, body) {
    this.answer('publish', { cause: cause.id, key, body });
    return `published-${this.recorded.length}`;
  }
}

/** An event with `body`, as if read at offset 0 of a test topic. */
export function event(body) {
  return { id: 'test-event', origin: 'test-node', timestamp: 1795690000000n, offset: 0n, body };
}

/** A `state-change` event (`types`: an object of JMAP data-type flags). */
export function stateChange(accountId, changeId, types) {
  return event({ tag: 'state-change', val: { accountId, changeId: BigInt(changeId), types } });
}

/** An `ip-block` event blocking `ip`, for the reason "test", without expiry. */
export function ipBlock(ip) {
  return event({
    tag: 'ip-block',
    val: { ip, action: 'block', reason: 'test', expiresAt: undefined },
  });
}

/** An `ip-block` event unblocking `ip`. */
export function ipUnblock(ip) {
  return event({
    tag: 'ip-block',
    val: { ip, action: 'unblock', reason: 'test', expiresAt: undefined },
  });
}

/** A `push` event (TTL 60 s, normal urgency). */
export function push(accountId, endpoint, payload) {
  return event({
    tag: 'push',
    val: { accountId, endpoint, payload, ttl: 60, urgency: 'normal', keys: undefined, topic: undefined },
  });
}

/** A `tls-certificate` event; the `notAfter` it claims is 0. */
export function tlsCertificate(domains, certificatePem, privateKeyPem) {
  return event({
    tag: 'tls-certificate',
    val: { domains: [...domains], certificatePem, privateKeyPem, notAfter: 0n },
  });
}
