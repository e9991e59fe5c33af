"""`herald_guest.net` reads every network of `guest-sdk/tests/networks.jsonl`
as the Rust SDK does: the same canonical text, display, loopback check,
overlaps and error messages."""

import json
from pathlib import Path

from herald_guest.net import Allowlist, canonical, overlaps, parse_network, touches_loopback

CASES = Path(__file__).resolve().parents[2] / "tests" / "networks.jsonl"
REFERENCE = [
    "10.0.0.0/8",
    "192.0.2.0/24",
    "0.0.0.0/0",
    "::/0",
    "2001:db8::/32",
    "64:ff9b::/96",
    "fe80::/10",
    "203.0.113.7",
]


def answer(text):
    try:
        net = parse_network(text)
    except ValueError as e:
        return {"input": text, "error": str(e)}
    return {
        "input": text,
        "canonical": canonical(net),
        "display": str(net),
        "loopback": touches_loopback(net),
        "overlaps": "".join("1" if overlaps(net, parse_network(r)) else "0" for r in REFERENCE),
    }


def allowlist(setting):
    try:
        return {"allowlist": setting, "networks": [str(n) for n in Allowlist.parse(setting).networks]}
    except ValueError as e:
        return {"allowlist": setting, "error": str(e)}


def cases():
    # Split on newlines only: some inputs hold U+0085 or U+2028 as they are.
    return [json.loads(line) for line in CASES.read_text().split("\n") if line]


def test_the_case_file_is_not_a_stub():
    valid = [c for c in cases() if "canonical" in c]
    assert len(valid) > 500 and len(cases()) - len(valid) > 500


def test_reads_every_network_as_rust_does():
    wrong = []
    for want in cases():
        got = answer(want["input"]) if "input" in want else allowlist(want["allowlist"])
        if got != want:
            wrong.append((want, got))
    assert not wrong, f"{len(wrong)} cases differ, the first: {wrong[:3]}"
