// `herald-guest/net` reads every network of `guest-sdk/tests/networks.jsonl`
// as the Rust SDK does: the same canonical text, display, loopback check,
// overlaps and error messages.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { Allowlist, canonical, overlaps, parseNetwork, touchesLoopback } from '../src/net.js';

const CASES = new URL('../../tests/networks.jsonl', import.meta.url);
function answer(input) {
  let net;
  try {
    net = parseNetwork(input);
  } catch (e) {
    return { input, error: e.message };
  }
  return {
    input,
    canonical: canonical(net),
    display: String(net),
    loopback: touchesLoopback(net),
    overlaps: REFERENCE.map((r) => (overlaps(net, r) ? '1' : '0')).join(''),
  };
}

function allowlist(setting) {
  try {
    return { allowlist: setting, networks: Allowlist.parse(setting).networks.map(String) };
  } catch (e) {
    return { allowlist: setting, error: e.message };
  }
}

// The reference networks (the file's first line), then the cases.
const [first, ...cases] = readFileSync(CASES, 'utf8')
  .split('\n')
  .filter((l) => l)
  .map((l) => JSON.parse(l));
const REFERENCE = first.reference.map(parseNetwork);

test('the case file is not a stub', () => {
  const valid = cases.filter((c) => 'canonical' in c).length;
  assert.ok(valid > 500 && cases.length - valid > 500, `${valid} of ${cases.length}`);
});

test('reads every network as Rust does', () => {
  for (const want of cases) {
    const got = 'input' in want ? answer(want.input) : allowlist(want.allowlist);
    assert.deepEqual(got, want);
  }
});
