"""`herald_guest.net` reads every network of `guest-sdk/tests/networks.jsonl`
as the Rust SDK does: the same canonical text, display, loopback check,
overlaps and error messages."""

import json
from pathlib import Path

from herald_guest.net import Allowlist, canonical, overlaps, parse_network, touches_loopback

CASES = Path(__file__).resolve().parents[2] / "tests" / "networks.jsonl"


def answer(text, reference):
    try:
        net = parse_network(text)
    except ValueError as e:
        return {"input": text, "error": str(e)}
    return {
        "input": text,
        "canonical": canonical(net),
        "display": str(net),
        "loopback": touches_loopback(net),
        "overlaps": "".join("1" if overlaps(net, r) else "0" for r in reference),
    }


def allowlist(setting):
    try:
        return {"allowlist": setting, "networks": [str(n) for n in Allowlist.parse(setting).networks]}
    except ValueError as e:
        return {"allowlist": setting, "error": str(e)}


def cases():
    """The reference networks (the file's first line) and the cases."""
    # Split on newlines only: some inputs hold U+0085 or U+2028 as they are.
    first, *rest = [json.loads(line) for line in CASES.read_text().split("\n") if line]
    return [parse_network(r) for r in first["reference"]], rest


def test_the_case_file_is_not_a_stub():
    _, all_cases = cases()
    valid = [c for c in all_cases if "canonical" in c]
    assert len(valid) > 500 and len(all_cases) - len(valid) > 500


def test_reads_every_network_as_rust_does():
    reference, all_cases = cases()
    wrong = []
    for want in all_cases:
        got = answer(want["input"], reference) if "input" in want else allowlist(want["allowlist"])
        if got != want:
            wrong.append((want, got))
    assert not wrong, f"{len(wrong)} cases differ, the first: {wrong[:3]}"
