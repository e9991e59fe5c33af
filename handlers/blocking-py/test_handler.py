"""The Rust blocking handler's unit tests, for the Python one."""

import pytest

from handler import Blocking
from herald_guest import Denied, Invalid, Transient, handle, types
from herald_guest.testing import Block, RecordingHost, Unblock, ip_block, ip_unblock


def run(host, event):
    return handle(Blocking(), host, [event])[0]


def test_blocks_a_valid_address():
    host = RecordingHost()
    assert run(host, ip_block("203.0.113.7")) == types.Outcome_Ok()
    assert host.effects() == [Block("203.0.113.7", "test", None)]


def test_rejects_garbage_naming_it():
    host = RecordingHost()
    outcome = run(host, ip_block("not-an-ip"))
    assert isinstance(outcome, types.Outcome_Reject) and "not-an-ip" in outcome.value
    assert host.effects() == []


@pytest.mark.parametrize(
    "ip",
    ["127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0/0", "192.0.2.9", "192.0.0.0/16", "2001:db8::1"],
)
def test_never_blocks_loopback_or_allowlisted(ip):
    host = RecordingHost().with_setting("allowlist", "192.0.2.0/24, 2001:db8::1")
    assert isinstance(run(host, ip_block(ip)), types.Outcome_Reject)
    assert host.effects() == []


def test_unblocks_in_canonical_form():
    host = RecordingHost()
    assert run(host, ip_unblock("2001:DB8::/48")) == types.Outcome_Ok()
    assert host.effects() == [Unblock("2001:db8::/48")]


def test_broken_allowlist_holds_the_event():
    host = RecordingHost().with_setting("allowlist", "10.0.0.0/8, nope")
    assert isinstance(run(host, ip_block("203.0.113.7")), types.Outcome_Retry)
    assert host.effects() == []


def test_node_errors_go_by_class():
    host = RecordingHost().fail_block(Transient("disk full")).fail_unblock(Transient("disk full"))
    retry = types.Outcome_Retry("transient: disk full")
    assert run(host, ip_block("203.0.113.7")) == retry
    assert run(host, ip_unblock("203.0.113.7")) == retry
    host = RecordingHost().fail_block(Invalid("bad")).fail_unblock(Denied("protected"))
    assert run(host, ip_block("203.0.113.7")) == types.Outcome_Reject("invalid: bad")
    assert run(host, ip_unblock("203.0.113.7")) == types.Outcome_Reject("denied: protected")
