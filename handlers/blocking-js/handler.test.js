// The Rust blocking handler's unit tests, for the JavaScript one.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Denied, Invalid, Transient, handle } from 'herald-guest';
import { RecordingHost, ipBlock, ipUnblock } from 'herald-guest/testing';

import Blocking from './handler.js';

const run = (host, event) => handle(new Blocking(), host, [event])[0];

test('blocks a valid address', () => {
  const host = new RecordingHost();
  assert.deepEqual(run(host, ipBlock('203.0.113.7')), { tag: 'ok' });
  assert.deepEqual(host.effects(), [
    { block: { network: '203.0.113.7', reason: 'test', expiresAt: undefined } },
  ]);
});

test('rejects garbage, naming it', () => {
  const host = new RecordingHost();
  const outcome = run(host, ipBlock('not-an-ip'));
  assert.equal(outcome.tag, 'reject');
  assert.match(outcome.val, /not-an-ip/);
  assert.deepEqual(host.effects(), []);
});

test('never blocks loopback or what is allowlisted', () => {
  const host = new RecordingHost().withSetting('allowlist', '192.0.2.0/24, 2001:db8::1');
  for (const ip of ['127.0.0.1', '::1', '::ffff:127.0.0.1', '0.0.0.0/0', '192.0.2.9', '192.0.0.0/16', '2001:db8::1']) {
    assert.equal(run(host, ipBlock(ip)).tag, 'reject', ip);
  }
  assert.deepEqual(host.effects(), []);
});

test('unblocks in canonical form', () => {
  const host = new RecordingHost();
  assert.deepEqual(run(host, ipUnblock('2001:DB8::/48')), { tag: 'ok' });
  assert.deepEqual(host.effects(), [{ unblock: { network: '2001:db8::/48' } }]);
});

test('a broken allowlist holds the event', () => {
  const host = new RecordingHost().withSetting('allowlist', '10.0.0.0/8, nope');
  assert.equal(run(host, ipBlock('203.0.113.7')).tag, 'retry');
  assert.deepEqual(host.effects(), []);
});

test("the node's errors go by class", () => {
  let host = new RecordingHost().failBlock(new Transient('disk full')).failUnblock(new Transient('disk full'));
  const retry = { tag: 'retry', val: 'transient: disk full' };
  assert.deepEqual(run(host, ipBlock('203.0.113.7')), retry);
  assert.deepEqual(run(host, ipUnblock('203.0.113.7')), retry);
  host = new RecordingHost().failBlock(new Invalid('bad')).failUnblock(new Denied('protected'));
  assert.deepEqual(run(host, ipBlock('203.0.113.7')), { tag: 'reject', val: 'invalid: bad' });
  assert.deepEqual(run(host, ipUnblock('203.0.113.7')), { tag: 'reject', val: 'denied: protected' });
});
