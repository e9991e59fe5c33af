"""IP addresses and CIDR networks as handlers receive them: strings from the
publisher, to be validated before anything is blocked.

The same rules as the Rust SDK's `herald_guest::net`, to the character: what
one accepts the other accepts, with the same canonical text and the same
error messages, so that a handler ported from Rust to Python gives the same
outcomes (`guest-sdk/tests/networks.tsv` holds the cases all three SDKs are
tested against). That is why this module parses by hand instead of using
`ipaddress`, which takes scope ids (`fe80::1%eth0`), netmasks
(`10.0.0.0/255.0.0.0`) and prints IPv4-mapped addresses differently.
"""

from __future__ import annotations

__all__ = [
    "Network",
    "parse_network",
    "read_network",
    "unmap",
    "canonical",
    "overlaps",
    "touches_loopback",
    "Allowlist",
]

# Rust's `char::is_whitespace` (the Unicode White_Space property), which
# `str::trim` strips and the allowlist splits on. Python's `str.isspace`
# also takes U+001C-U+001F, which Rust does not.
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_MAPPED = 0xFFFF << 32


class Network:
    """An IPv4 or IPv6 network: `version` (4 or 6), the address as an
    integer (`bits`) and the prefix length. `str()` is `address/prefix`,
    always with the prefix, as Rust's `IpNet` prints it."""

    __slots__ = ("version", "bits", "prefix", "_text")

    def __init__(self, version: int, bits: int, prefix: int, text: str | None = None):
        self.version = version
        self.bits = bits
        self.prefix = prefix
        # The address's text, when it was read in that very form (a plain
        # IPv4 address): every block prints it, so it is not built again.
        self._text = text

    @property
    def width(self) -> int:
        """32 or 128."""
        return 32 if self.version == 4 else 128

    def trunc(self) -> "Network":
        """The network with its host bits cleared."""
        host = (1 << (self.width - self.prefix)) - 1
        return Network(self.version, self.bits & ~host, self.prefix)

    def address(self) -> str:
        """The address alone, as Rust's `IpAddr` prints it."""
        if self._text is None:
            self._text = _v4_text(self.bits) if self.version == 4 else _v6_text(self.bits)
        return self._text

    def __str__(self) -> str:
        return f"{self.address()}/{self.prefix}"

    def __repr__(self) -> str:
        return f"Network({self})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Network)
            and (self.version, self.bits, self.prefix)
            == (other.version, other.bits, other.prefix)
        )

    def __hash__(self) -> int:
        return hash((self.version, self.bits, self.prefix))


def parse_network(text: str) -> Network:
    """Parse `"203.0.113.7"`, `"2001:db8::/48"` or `"::ffff:192.0.2.1"`.

    An IPv4-mapped IPv6 address is taken as the IPv4 address it maps, so that
    `::ffff:127.0.0.1` cannot slip past a loopback check. A network with host
    bits set (`10.0.0.1/8`) is refused rather than guessed at. Raises
    `ValueError` naming the input."""
    s = text.strip(_WHITESPACE)
    if not s:
        raise ValueError("empty address")
    net = read_network(s)
    if net is None:
        raise ValueError(f"`{text}` is not an IP address or CIDR network")
    if net.prefix < net.width:
        trunc = net.trunc()
        if trunc.bits != net.bits:
            raise ValueError(f"`{text}` has host bits set; the network is `{trunc}`")
        return unmap(net)
    return net if net.version == 4 else unmap(net)


def read_network(s: str) -> Network | None:
    """An address or CIDR network exactly as written: no trimming, no
    unmapping, host bits kept. `None` if `s` is neither."""
    if "/" in s:
        return _CidrParser(s).network()
    v4 = _dotted_quad(s)
    if v4 is not None:
        # A plain address is its own canonical text (no leading zeros).
        return Network(4, v4, 32, s)
    v6 = _std_ipv6(s)
    return None if v6 is None else Network(6, v6, 128)


def unmap(net: Network) -> Network:
    """An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/n`) as the IPv4 network it
    stands for; any other network as it is."""
    if net.version == 6 and net.prefix >= 96 and net.bits >> 32 == 0xFFFF:
        return Network(4, net.bits & 0xFFFFFFFF, net.prefix - 96)
    return net


def canonical(net: Network) -> str:
    """The canonical text of a network: a bare address for a single host,
    `address/prefix` otherwise."""
    if net.prefix == net.width:
        return net.address()
    return str(net)


def overlaps(a: Network, b: Network) -> bool:
    """Whether two networks share any address (they nest, being CIDR)."""
    if a.version != b.version:
        return False
    width = a.width
    shift = width - min(a.prefix, b.prefix)
    return (a.bits ^ b.bits) >> shift == 0


_LOOPBACK_V4 = Network(4, 127 << 24, 8)
_LOOPBACK_V6 = Network(6, 1, 128)


def touches_loopback(net: Network) -> bool:
    """Whether `net` touches a loopback address (127.0.0.0/8, ::1), which no
    node may block on itself."""
    return overlaps(net, _LOOPBACK_V4 if net.version == 4 else _LOOPBACK_V6)


class Allowlist:
    """Networks that must never be blocked, from a setting such as
    `"10.0.0.0/8, 2001:db8::1"` (commas or white space between entries)."""

    __slots__ = ("networks",)

    def __init__(self, networks: list[Network] | None = None):
        self.networks = list(networks or [])

    @classmethod
    def parse(cls, setting: str) -> "Allowlist":
        """Raises `ValueError` (`allowlist: ...`) on the first bad entry.

        A handler reads its setting for every event: the last few settings
        read are remembered, so each is parsed once per instance."""
        known = _ALLOWLISTS.get(setting)
        if known is not None:
            return known
        allowlist = cls._parse(setting)
        if len(_ALLOWLISTS) >= 8:
            _ALLOWLISTS.clear()
        _ALLOWLISTS[setting] = allowlist
        return allowlist

    @classmethod
    def _parse(cls, setting: str) -> "Allowlist":
        networks = []
        for entry in _split_setting(setting):
            try:
                networks.append(parse_network(entry))
            except ValueError as e:
                raise ValueError(f"allowlist: {e}") from None
        return cls(networks)

    def protects(self, net: Network) -> Network | None:
        """The allowlisted network that `net` would hit, if any."""
        for allowed in self.networks:
            if overlaps(allowed, net):
                return allowed
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Allowlist) and self.networks == other.networks

    def __repr__(self) -> str:
        return f"Allowlist({self.networks})"


_ALLOWLISTS: dict[str, Allowlist] = {}


def _split_setting(setting: str) -> list[str]:
    entries, start = [], 0
    for i, c in enumerate(setting):
        if c == "," or c in _WHITESPACE:
            if i > start:
                entries.append(setting[start:i])
            start = i + 1
    if len(setting) > start:
        entries.append(setting[start:])
    return entries


# ---------------------------------------------------------------------------
# Printing, as Rust's `Ipv4Addr` and `Ipv6Addr` print.


def _v4_text(bits: int) -> str:
    return f"{bits >> 24}.{bits >> 16 & 255}.{bits >> 8 & 255}.{bits & 255}"


def _v6_text(bits: int) -> str:
    if bits >> 32 == 0xFFFF:
        return "::ffff:" + _v4_text(bits & 0xFFFFFFFF)
    groups = [(bits >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    # The first longest run of zero groups, if longer than one, becomes `::`.
    best_at, best_len, at, run = -1, 0, 0, 0
    for i, g in enumerate(groups):
        if g == 0:
            if run == 0:
                at = i
            run += 1
            if run > best_len:
                best_at, best_len = at, run
        else:
            run = 0
    if best_len > 1:
        head = ":".join(f"{g:x}" for g in groups[:best_at])
        tail = ":".join(f"{g:x}" for g in groups[best_at + best_len :])
        return f"{head}::{tail}"
    return ":".join(f"{g:x}" for g in groups)


# ---------------------------------------------------------------------------
# Reading a bare address, as Rust's standard library does.


def _dotted_quad(s: str) -> int | None:
    """A plain IPv4 address: four decimal octets up to 255, no leading
    zeros (Rust's `Ipv4Addr` parser)."""
    parts = s.split(".")
    if len(parts) != 4:
        return None
    bits = 0
    for p in parts:
        n = len(p)
        # isascii: str.isdigit also takes other scripts' digits.
        if n == 0 or n > 3 or not (p.isascii() and p.isdigit()) or (n > 1 and p[0] == "0"):
            return None
        octet = int(p)
        if octet > 255:
            return None
        bits = bits << 8 | octet
    return bits


def _std_ipv6(s: str) -> int | None:
    """Rust's `Ipv6Addr` parser: hex groups of up to four digits, one `::`
    standing for at least one group, an IPv4 address (no leading zeros) as
    the last two groups."""
    p = _Parser(s, leading_zeros=False, empty_run=False)
    bits = p.ipv6()
    return bits if bits is not None and p.at_end() else None


class _Parser:
    """A recursive-descent reader over `s`, after Rust's: each `read_*`
    either consumes what it read and returns it, or consumes nothing and
    returns None.

    Rust's standard library and the `ipnet` crate (which reads CIDR
    networks with an older copy of it) differ in two ways, chosen here:
    `leading_zeros` (ipnet takes `01.2.3.4`), and `empty_run` (ipnet's `::`
    may stand for no group at all, as in `1:2:3:4::5:6:7:8`)."""

    __slots__ = ("s", "pos", "leading_zeros", "empty_run")

    def __init__(self, s: str, leading_zeros: bool, empty_run: bool):
        self.s = s
        self.pos = 0
        self.leading_zeros = leading_zeros
        self.empty_run = empty_run

    def at_end(self) -> bool:
        return self.pos == len(self.s)

    def char(self, c: str) -> bool:
        if self.s.startswith(c, self.pos):
            self.pos += 1
            return True
        return False

    def number(self, radix: int, max_digits: int, upto: int, zeros: bool = True) -> int | None:
        start, value, digits = self.pos, 0, 0
        while self.pos < len(self.s):
            d = _digit(self.s[self.pos], radix)
            if d is None:
                break
            if not zeros and digits == 1 and value == 0:
                # Rust's parser: a leading zero ends a number of more digits.
                self.pos = start
                return None
            value = value * radix + d
            digits += 1
            self.pos += 1
            if digits > max_digits or value >= upto:
                self.pos = start
                return None
        if digits == 0:
            self.pos = start
            return None
        return value

    def ipv4(self) -> int | None:
        start, bits = self.pos, 0
        for i in range(4):
            if i and not self.char("."):
                self.pos = start
                return None
            octet = self.number(10, 3, 256, self.leading_zeros)
            if octet is None:
                self.pos = start
                return None
            bits = bits << 8 | octet
        return bits

    def _groups(self, limit: int) -> tuple[list[int], bool]:
        groups: list[int] = []
        while len(groups) < limit:
            i = len(groups)
            if i < limit - 1:
                start = self.pos
                if i == 0 or self.char(":"):
                    v4 = self.ipv4()
                    if v4 is not None:
                        groups += [v4 >> 16, v4 & 0xFFFF]
                        return groups, True
                self.pos = start
            start = self.pos
            group = None
            if i == 0 or self.char(":"):
                group = self.number(16, 4, 0x10000)
            if group is None:
                self.pos = start
                return groups, False
            groups.append(group)
        return groups, False

    def ipv6(self) -> int | None:
        start = self.pos
        head, head_v4 = self._groups(8)
        if len(head) == 8:
            return _join(head)
        if head_v4 or not (self.char(":") and self.char(":")):
            self.pos = start
            return None
        limit = 8 - len(head) if self.empty_run else 7 - len(head)
        tail, _ = self._groups(limit)
        return _join(head + [0] * (8 - len(head) - len(tail)) + tail)


class _CidrParser(_Parser):
    """The `ipnet` crate's `IpNet` parser: an address (read as ipnet reads
    it), `/`, and a prefix of at most two digits (IPv4) or three (IPv6)."""

    def __init__(self, s: str):
        super().__init__(s, leading_zeros=True, empty_run=True)

    def _net(self, version: int) -> Network | None:
        start = self.pos
        bits = self.ipv4() if version == 4 else self.ipv6()
        if bits is not None and self.char("/"):
            prefix = self.number(10, 2, 33) if version == 4 else self.number(10, 3, 129)
            if prefix is not None:
                return Network(version, bits, prefix)
        self.pos = start
        return None

    def network(self) -> Network | None:
        # The first of the two readers that succeeds wins, and only then is
        # the end checked, as ipnet does.
        net = self._net(4) or self._net(6)
        return net if net is not None and self.at_end() else None


def _digit(c: str, radix: int) -> int | None:
    if "0" <= c <= "9":
        return ord(c) - 48
    if radix == 16:
        if "a" <= c <= "f":
            return ord(c) - 87
        if "A" <= c <= "F":
            return ord(c) - 55
    return None


def _join(groups: list[int]) -> int:
    bits = 0
    for g in groups:
        bits = bits << 16 | g
    return bits
