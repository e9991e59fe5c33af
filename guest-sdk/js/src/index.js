/**
 * The JavaScript SDK for herald handlers: coordination-event handlers that
 * run as WebAssembly components (built with componentize-js) in every herald
 * node's sandbox. It targets `herald:coordination@0.2.0`.
 *
 * The same shape as the Rust SDK (`herald-guest`): a handler is a class with
 * one method per event kind it cares about; every other kind is handled by
 * doing nothing. A method returns when the event is handled, throws `Retry`
 * or `Reject` to say otherwise, and lets a capability's `EffectError`
 * through to be decided by its class:
 *
 *     import { Handler, Reject } from 'herald-guest';
 *
 *     export default class Unblocker extends Handler {
 *       ipBlock(host, event, block) { ... }
 *     }
 *
 * Values are as componentize-js gives them: records are objects with
 * camelCase fields, variants `{ tag, val }`, enums kebab-case strings,
 * `u64`/`s64` BigInts, and a missing `option` `undefined`.
 *
 * @module herald-guest
 */

/** The WIT package and version this SDK is written against. */
export const WIT_PACKAGE = 'herald:coordination@0.2.0';

/** Why a handler did not handle an event; `reason` goes with it. */
export class Fail extends Error {
  constructor(reason) {
    super(reason);
    this.reason = reason;
  }
}

/**
 * Transient: herald retries the event later with backoff, holding its
 * partition so that order is kept.
 */
export class Retry extends Fail {
  toOutcome() {
    return { tag: 'retry', val: this.reason };
  }
}

/** Permanent: the event goes to the dead-letter topic with the reason. */
export class Reject extends Fail {
  toOutcome() {
    return { tag: 'reject', val: this.reason };
  }
}

/**
 * Why the node did not apply what a handler asked (`effect-error` in
 * `wit/herald.wit`). Every fallible host method throws one of its four
 * classes (`Transient`, `Gone`, `Invalid`, `Denied`), so a handler decides
 * by class, not by reading a message.
 *
 * Left uncaught in a handler method, it decides the event's outcome as
 * Rust's `?` does: `Transient` retries, the others reject, with
 * `String(error)` (`transient: disk full`) as the reason.
 */
export class EffectError extends Error {
  constructor(message) {
    super(message);
    this.detail = message;
  }

  /** `transient`, `gone`, `invalid` or `denied`, as written in the WIT. */
  get class() {
    return this.constructor.cls;
  }

  toString() {
    return `${this.class}: ${this.detail}`;
  }

  toOutcome() {
    return { tag: this.constructor.retries ? 'retry' : 'reject', val: this.toString() };
  }
}

/** Might work later (network error, 429/5xx, queue full, disk): retried when uncaught. */
export class Transient extends EffectError {
  static cls = 'transient';
  static retries = true;
}

/** The target no longer exists (a push subscription answered 404 or 410). */
export class Gone extends EffectError {
  static cls = 'gone';
}

/** Will never work as asked (malformed network, unparseable certificate). */
export class Invalid extends EffectError {
  static cls = 'invalid';
}

/** The node's policy refuses it whatever the handler says. */
export class Denied extends EffectError {
  static cls = 'denied';
}

const ERROR_CLASSES = { transient: Transient, gone: Gone, invalid: Invalid, denied: Denied };

/** The exception for a WIT `effect-error` value (`{ tag, val }`). */
export function effectError(witError) {
  const Class = ERROR_CLASSES[witError.tag];
  return new Class(witError.val);
}

/**
 * A handler: one method per event kind, each called once per event of that
 * kind in a batch, in order, with the node (`host`), the whole event and its
 * body. Override the kinds the manifest subscribes to; the others do
 * nothing.
 *
 * Return when handled or when there is nothing to do; throw
 * `new Retry(reason)` to have herald try again later, `new Reject(reason)`
 * to send the event to the dead-letter topic. An `EffectError` left
 * uncaught decides by its class. Any other exception is a bug: it fails the
 * whole call, like a Rust panic, and herald retries the batch.
 *
 * A retried event is handled again from the start, so effects must be safe
 * to repeat: pass `event.id` where a capability asks for it.
 */
export class Handler {
  /** Something changed in an account; its sessions may need waking. */
  stateChange(host, event, change) {}
  /** A Web Push message to deliver once per cluster. */
  push(host, event, push) {}
  /** Block or unblock `block.ip`, exactly as published (validate it: `net.parseNetwork`). */
  ipBlock(host, event, block) {}
  /** A certificate chain and key for `cert.domains`, as published. */
  tlsCertificate(host, event, cert) {}
  /** Drop these cached items. */
  cacheInvalidate(host, event, items) {}
  /** Drop every cache (`'all'`), or only the negative ones (`'negative'`). */
  cacheInvalidateAll(host, event, scope) {}
  /** The mail server's settings changed. */
  settingsReload(host, event) {}
  /** The MTA queue is now running (true) or paused (false). */
  queueStatus(host, event, running) {}
  /** The MTA queue should be scanned again. */
  queueRefresh(host, event) {}
  /** A settings object was inserted or deleted, or a type reloaded. */
  registryChange(host, event, change) {}
  /** An alert of a calendar event is due. */
  calendarAlert(host, event, alert) {}
  /** An email arrived for an account with push subscriptions. */
  emailPush(host, event, push) {}
  /** The push subscriptions of `accountId` changed. */
  pushServerUpdate(host, event, accountId) {}
  /** A subscription's endpoint answered that it is gone. */
  pushSubscriptionGone(host, event, gone) {}
}

// Each body case (the event's `kind`) and the handler method it calls.
const ROUTES = {
  'state-change': 'stateChange',
  push: 'push',
  'ip-block': 'ipBlock',
  'tls-certificate': 'tlsCertificate',
  'cache-invalidate': 'cacheInvalidate',
  'cache-invalidate-all': 'cacheInvalidateAll',
  'settings-reload': 'settingsReload',
  'queue-status': 'queueStatus',
  'queue-refresh': 'queueRefresh',
  'registry-change': 'registryChange',
  'calendar-alert': 'calendarAlert',
  'email-push': 'emailPush',
  'push-server-update': 'pushServerUpdate',
  'push-subscription-gone': 'pushSubscriptionGone',
};

const OK = { tag: 'ok' };

/**
 * Route each event of a batch to its handler method and collect one outcome
 * per event, in order. This is what the component runs for each batch;
 * unit tests call it with a `RecordingHost`.
 */
export function handle(handler, host, events) {
  const outcomes = new Array(events.length);
  for (let i = 0; i < events.length; i++) {
    const event = events[i];
    const method = ROUTES[event.body.tag];
    try {
      handler[method](host, event, event.body.val);
      outcomes[i] = OK;
    } catch (e) {
      if (e instanceof Fail || e instanceof EffectError) outcomes[i] = e.toOutcome();
      else throw e;
    }
  }
  return outcomes;
}

/**
 * The real node, through the component's imports (`imports`: the generated
 * import modules by interface name, as the build passes them). The build
 * imports only the capabilities the manifest grants; a method of another
 * throws `Denied`. Settings cannot change during an instance's life, so
 * each is asked for once per host (the build makes one per batch).
 */
export class WasmHost {
  constructor(imports) {
    this.imports = imports;
    this.settings = new Map();
  }

  capability(name) {
    const found = this.imports[name];
    if (found === undefined) {
      throw new Denied(
        `this component was built without capability \`${name}\`: add "${name}" to the ` +
          "manifest's `capabilities` and build it again",
      );
    }
    return found;
  }

  log(level, message) {
    this.imports.log.log(level, message);
  }

  setting(key) {
    if (!this.settings.has(key)) this.settings.set(key, this.imports.config.get(key));
    return this.settings.get(key);
  }

  notifyIdle(accountId, changeId, types) {
    this.capability('idle').notify(accountId, changeId, types);
  }

  deliverPush(eventId, message) {
    call(() => this.capability('push').deliver(eventId, message));
  }

  block(network, reason, expiresAt) {
    call(() => this.capability('blocklist').block(network, reason, expiresAt));
  }

  unblock(network) {
    call(() => this.capability('blocklist').unblock(network));
  }

  installCertificate(certificate) {
    call(() => this.capability('certificates').install(certificate));
  }

  publish(cause, key, body) {
    return call(() => this.capability('publish').publish(cause.id, key, body));
  }
}

// componentize-js throws a `result`'s error as an Error whose `payload` is
// the WIT value; a handler sees the SDK's class for it instead.
function call(f) {
  try {
    return f();
  } catch (e) {
    if (e && e.payload && ERROR_CLASSES[e.payload.tag]) throw effectError(e.payload);
    throw e;
  }
}
