/**
 * IP addresses and CIDR networks as handlers receive them: strings from the
 * publisher, to be validated before anything is blocked.
 *
 * The same rules as the Rust SDK's `herald_guest::net`, to the character:
 * what one accepts the other accepts, with the same canonical text and the
 * same error messages (`guest-sdk/tests/networks.tsv` holds the cases all
 * three SDKs are tested against). IPv4 addresses are numbers, IPv6 ones
 * BigInts.
 *
 * @module herald-guest/net
 */

// Rust's `char::is_whitespace` (Unicode White_Space), which `str::trim`
// strips and the allowlist splits on.
const WHITESPACE = new Set(
  '\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006' +
    '\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000',
);

/**
 * An IPv4 or IPv6 network: `version` (4 or 6), the address (`bits`: a
 * number for IPv4, a BigInt for IPv6) and the prefix length. `toString()`
 * is `address/prefix`, always with the prefix, as Rust's `IpNet` prints it.
 */
export class Network {
  constructor(version, bits, prefix, text = null) {
    this.version = version;
    this.bits = bits;
    this.prefix = prefix;
    // The address's text, when it was read in that very form (a plain IPv4
    // address): every block prints it, so it is not built again.
    this.text = text;
  }

  /** 32 or 128. */
  get width() {
    return this.version === 4 ? 32 : 128;
  }

  /** The network with its host bits cleared. */
  trunc() {
    if (this.version === 4) {
      const mask = this.prefix === 0 ? 0 : (0xffffffff << (32 - this.prefix)) >>> 0;
      return new Network(4, (this.bits & mask) >>> 0, this.prefix);
    }
    const host = (1n << BigInt(128 - this.prefix)) - 1n;
    return new Network(6, this.bits & ~host, this.prefix);
  }

  /** The address alone, as Rust's `IpAddr` prints it. */
  address() {
    if (this.text === null) this.text = this.version === 4 ? v4Text(this.bits) : v6Text(this.bits);
    return this.text;
  }

  equals(other) {
    return (
      other instanceof Network &&
      this.version === other.version &&
      this.bits === other.bits &&
      this.prefix === other.prefix
    );
  }

  toString() {
    return `${this.address()}/${this.prefix}`;
  }
}

/**
 * Parse `"203.0.113.7"`, `"2001:db8::/48"` or `"::ffff:192.0.2.1"`.
 *
 * An IPv4-mapped IPv6 address is taken as the IPv4 address it maps, so that
 * `::ffff:127.0.0.1` cannot slip past a loopback check. A network with host
 * bits set (`10.0.0.1/8`) is refused rather than guessed at. Throws an
 * `Error` whose message names the input.
 */
export function parseNetwork(text) {
  const s = trim(text);
  if (s === '') throw new Error('empty address');
  const net = readNetwork(s);
  if (net === null) throw new Error(`\`${text}\` is not an IP address or CIDR network`);
  if (net.prefix === net.width) return net.version === 4 ? net : unmap(net);
  const trunc = net.trunc();
  if (trunc.bits !== net.bits) {
    throw new Error(`\`${text}\` has host bits set; the network is \`${trunc}\``);
  }
  return unmap(net);
}

/**
 * An address or CIDR network exactly as written: no trimming, no unmapping,
 * host bits kept. `null` if `s` is neither.
 */
export function readNetwork(s) {
  if (s.includes('/')) return new CidrParser(s).network();
  const v4 = dottedQuad(s);
  // A plain address is its own canonical text (no leading zeros).
  if (v4 !== null) return new Network(4, v4, 32, s);
  const p = new Parser(s, false, false);
  const v6 = p.ipv6();
  return v6 !== null && p.atEnd() ? new Network(6, v6, 128) : null;
}

const LOW32 = 0xffffffffn;

/**
 * An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/n`) as the IPv4 network it
 * stands for; any other network as it is.
 */
export function unmap(net) {
  if (net.version === 6 && net.prefix >= 96 && net.bits >> 32n === 0xffffn) {
    return new Network(4, Number(net.bits & LOW32), net.prefix - 96);
  }
  return net;
}

/**
 * The canonical text of a network: a bare address for a single host,
 * `address/prefix` otherwise.
 */
export function canonical(net) {
  return net.prefix === net.width ? net.address() : net.toString();
}

/** Whether two networks share any address (they nest, being CIDR). */
export function overlaps(a, b) {
  if (a.version !== b.version) return false;
  const shift = a.width - Math.min(a.prefix, b.prefix);
  if (a.version === 4) return shift === 32 || (a.bits ^ b.bits) >>> shift === 0;
  return (a.bits ^ b.bits) >> BigInt(shift) === 0n;
}

const LOOPBACK_V4 = new Network(4, 127 * 2 ** 24, 8);
const LOOPBACK_V6 = new Network(6, 1n, 128);

/**
 * Whether `net` touches a loopback address (127.0.0.0/8, ::1), which no node
 * may block on itself.
 */
export function touchesLoopback(net) {
  return overlaps(net, net.version === 4 ? LOOPBACK_V4 : LOOPBACK_V6);
}

/**
 * Networks that must never be blocked, from a setting such as
 * `"10.0.0.0/8, 2001:db8::1"` (commas or white space between entries).
 */
export class Allowlist {
  constructor(networks = []) {
    this.networks = networks;
  }

  /**
   * Throws an `Error` (`allowlist: ...`) on the first bad entry. A handler
   * reads its setting for every event: the last few settings read are
   * remembered, so each is parsed once per instance.
   */
  static parse(setting) {
    let allowlist = ALLOWLISTS.get(setting);
    if (allowlist === undefined) {
      allowlist = Allowlist.read(setting);
      if (ALLOWLISTS.size >= 8) ALLOWLISTS.clear();
      ALLOWLISTS.set(setting, allowlist);
    }
    return allowlist;
  }

  static read(setting) {
    const networks = [];
    let start = 0;
    const entry = (end) => {
      if (end > start) {
        try {
          networks.push(parseNetwork(setting.slice(start, end)));
        } catch (e) {
          throw new Error(`allowlist: ${e.message}`);
        }
      }
    };
    for (let i = 0; i < setting.length; i++) {
      if (setting[i] === ',' || WHITESPACE.has(setting[i])) {
        entry(i);
        start = i + 1;
      }
    }
    entry(setting.length);
    return new Allowlist(networks);
  }

  /** The allowlisted network that `net` would hit, if any (else `null`). */
  protects(net) {
    return this.networks.find((allowed) => overlaps(allowed, net)) ?? null;
  }
}

const ALLOWLISTS = new Map();

function trim(text) {
  let start = 0;
  let end = text.length;
  while (start < end && WHITESPACE.has(text[start])) start++;
  while (end > start && WHITESPACE.has(text[end - 1])) end--;
  return text.slice(start, end);
}

// Printing, as Rust's `Ipv4Addr` and `Ipv6Addr` print.

function v4Text(bits) {
  return `${bits >>> 24}.${(bits >>> 16) & 255}.${(bits >>> 8) & 255}.${bits & 255}`;
}

function v6Text(bits) {
  if (bits >> 32n === 0xffffn) return `::ffff:${v4Text(Number(bits & LOW32))}`;
  const groups = [];
  for (let i = 0; i < 8; i++) groups.push(Number((bits >> BigInt(112 - 16 * i)) & 0xffffn));
  // The first longest run of zero groups, if longer than one, becomes `::`.
  let bestAt = -1;
  let bestLen = 0;
  let at = 0;
  let run = 0;
  groups.forEach((g, i) => {
    if (g === 0) {
      if (run === 0) at = i;
      run++;
      if (run > bestLen) [bestAt, bestLen] = [at, run];
    } else run = 0;
  });
  const hex = (gs) => gs.map((g) => g.toString(16)).join(':');
  if (bestLen > 1) return `${hex(groups.slice(0, bestAt))}::${hex(groups.slice(bestAt + bestLen))}`;
  return hex(groups);
}

// Reading, as Rust's standard library (bare addresses) and the ipnet crate
// (CIDR networks) read.

/**
 * A plain IPv4 address: four decimal octets up to 255, no leading zeros
 * (Rust's `Ipv4Addr` parser); `null` for anything else.
 */
function dottedQuad(s) {
  const parts = s.split('.');
  if (parts.length !== 4) return null;
  let bits = 0;
  for (const p of parts) {
    if (p.length === 0 || p.length > 3 || (p.length > 1 && p[0] === '0')) return null;
    let octet = 0;
    for (let i = 0; i < p.length; i++) {
      const c = p.charCodeAt(i);
      if (c < 48 || c > 57) return null;
      octet = octet * 10 + (c - 48);
    }
    if (octet > 255) return null;
    bits = bits * 256 + octet;
  }
  return bits;
}

/**
 * A recursive-descent reader over `s`, after Rust's: each read either
 * consumes what it read and returns it, or consumes nothing and returns
 * null.
 *
 * Rust's standard library and the `ipnet` crate (which reads CIDR networks
 * with an older copy of it) differ in two ways, chosen here: `leadingZeros`
 * (ipnet takes `01.2.3.4`) and `emptyRun` (ipnet's `::` may stand for no
 * group at all, as in `1:2:3:4::5:6:7:8`).
 */
class Parser {
  constructor(s, leadingZeros, emptyRun) {
    this.s = s;
    this.pos = 0;
    this.leadingZeros = leadingZeros;
    this.emptyRun = emptyRun;
  }

  atEnd() {
    return this.pos === this.s.length;
  }

  char(c) {
    if (this.s[this.pos] === c) {
      this.pos++;
      return true;
    }
    return false;
  }

  number(radix, maxDigits, upto, zeros = true) {
    const start = this.pos;
    let value = 0;
    let digits = 0;
    while (this.pos < this.s.length) {
      const d = digit(this.s.charCodeAt(this.pos), radix);
      if (d === null) break;
      if (!zeros && digits === 1 && value === 0) {
        // Rust's parser: a leading zero ends a number of more digits.
        this.pos = start;
        return null;
      }
      value = value * radix + d;
      digits++;
      this.pos++;
      if (digits > maxDigits || value >= upto) {
        this.pos = start;
        return null;
      }
    }
    if (digits === 0) {
      this.pos = start;
      return null;
    }
    return value;
  }

  ipv4() {
    const start = this.pos;
    let bits = 0;
    for (let i = 0; i < 4; i++) {
      const octet = i && !this.char('.') ? null : this.number(10, 3, 256, this.leadingZeros);
      if (octet === null) {
        this.pos = start;
        return null;
      }
      bits = bits * 256 + octet;
    }
    return bits;
  }

  groups(limit) {
    const groups = [];
    while (groups.length < limit) {
      const i = groups.length;
      if (i < limit - 1) {
        const start = this.pos;
        if (i === 0 || this.char(':')) {
          const v4 = this.ipv4();
          if (v4 !== null) {
            groups.push(Math.floor(v4 / 65536), v4 % 65536);
            return [groups, true];
          }
        }
        this.pos = start;
      }
      const start = this.pos;
      const group = i === 0 || this.char(':') ? this.number(16, 4, 0x10000) : null;
      if (group === null) {
        this.pos = start;
        return [groups, false];
      }
      groups.push(group);
    }
    return [groups, false];
  }

  ipv6() {
    const start = this.pos;
    const [head, headV4] = this.groups(8);
    if (head.length === 8) return join(head);
    if (headV4 || !(this.char(':') && this.char(':'))) {
      this.pos = start;
      return null;
    }
    const [tail] = this.groups((this.emptyRun ? 8 : 7) - head.length);
    return join([...head, ...new Array(8 - head.length - tail.length).fill(0), ...tail]);
  }
}

/**
 * The ipnet crate's `IpNet` parser: an address (read as ipnet reads it),
 * `/`, and a prefix of at most two digits (IPv4) or three (IPv6).
 */
class CidrParser extends Parser {
  constructor(s) {
    super(s, true, true);
  }

  net(version) {
    const start = this.pos;
    const bits = version === 4 ? this.ipv4() : this.ipv6();
    if (bits !== null && this.char('/')) {
      const prefix = version === 4 ? this.number(10, 2, 33) : this.number(10, 3, 129);
      if (prefix !== null) return new Network(version, bits, prefix);
    }
    this.pos = start;
    return null;
  }

  network() {
    // The first of the two readers that succeeds wins, and only then is the
    // end checked, as ipnet does.
    const net = this.net(4) ?? this.net(6);
    return net !== null && this.atEnd() ? net : null;
  }
}

function digit(c, radix) {
  if (c >= 48 && c <= 57) return c - 48;
  if (radix === 16) {
    if (c >= 97 && c <= 102) return c - 87;
    if (c >= 65 && c <= 70) return c - 55;
  }
  return null;
}

function join(groups) {
  let bits = 0n;
  for (const g of groups) bits = (bits << 16n) | BigInt(g);
  return bits;
}
