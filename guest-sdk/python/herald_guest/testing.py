"""A recording stand-in for the node, so that handler logic can be unit-tested
natively with pytest, and builders for test events.

    from herald_guest import Transient, handle, types
    from herald_guest.testing import Block, RecordingHost, ip_block

    host = RecordingHost().fail_block(Transient("disk full"))
    assert handle(MyHandler(), host, [ip_block("203.0.113.7")]) == [
        types.Outcome_Retry("transient: disk full")
    ]
    assert host.effects() == [Block("203.0.113.7", "test", None)]
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from . import DataTypes, EffectError, Event, Level, types


# One thing a handler asked of the node, as recorded.
@dataclass(frozen=True)
class Log:
    level: Level
    message: str


@dataclass(frozen=True)
class NotifyIdle:
    account_id: int
    change_id: int
    types: DataTypes


@dataclass(frozen=True)
class DeliverPush:
    event_id: str
    message: "PushMessage"


@dataclass(frozen=True)
class Block:
    network: str
    reason: str
    expires_at: Optional[int]


@dataclass(frozen=True)
class Unblock:
    network: str


@dataclass(frozen=True)
class InstallCertificate:
    certificate: "Certificate"


@dataclass(frozen=True)
class Publish:
    cause: str
    key: str
    body: types.Body


Effect = Union[Log, NotifyIdle, DeliverPush, Block, Unblock, InstallCertificate, Publish]

# The fallible methods, to script their answers (`RecordingHost.fail`).
DELIVER_PUSH, BLOCK, UNBLOCK, INSTALL_CERTIFICATE, PUBLISH = (
    "deliver_push",
    "block",
    "unblock",
    "install_certificate",
    "publish",
)


class RecordingHost:
    """Records every capability call and answers as scripted: by default
    every call succeeds. Each call of a method takes the next answer
    scripted for it (None for success, or an `EffectError` to raise). A call
    is recorded whether it succeeds or not: it is what the handler asked."""

    def __init__(self, settings: Optional[dict[str, str]] = None):
        self._effects: list[Effect] = []
        self._settings = dict(settings or {})
        self._answers: dict[str, deque] = {}

    def with_setting(self, key: str, value: str) -> "RecordingHost":
        """A manifest `[settings]` entry."""
        self._settings[key] = value
        return self

    def with_results(self, call: str, results: Iterable[Optional[EffectError]]) -> "RecordingHost":
        """Answers for the next calls of `call` (a method name), in order."""
        self._answers.setdefault(call, deque()).extend(results)
        return self

    def fail(self, call: str, error: EffectError) -> "RecordingHost":
        """The next call of `call` raises `error`."""
        return self.with_results(call, [error])

    def fail_push(self, error: EffectError) -> "RecordingHost":
        return self.fail(DELIVER_PUSH, error)

    def fail_block(self, error: EffectError) -> "RecordingHost":
        return self.fail(BLOCK, error)

    def fail_unblock(self, error: EffectError) -> "RecordingHost":
        return self.fail(UNBLOCK, error)

    def fail_install(self, error: EffectError) -> "RecordingHost":
        return self.fail(INSTALL_CERTIFICATE, error)

    def fail_publish(self, error: EffectError) -> "RecordingHost":
        return self.fail(PUBLISH, error)

    def effects(self) -> list[Effect]:
        """What was asked, logs left out."""
        return [e for e in self._effects if not isinstance(e, Log)]

    def logs(self) -> list[Log]:
        """Everything that was logged."""
        return [e for e in self._effects if isinstance(e, Log)]

    def _answer(self, call: str, effect: Effect) -> None:
        self._effects.append(effect)
        queue = self._answers.get(call)
        error = queue.popleft() if queue else None
        if error is not None:
            raise error

    # The Host methods.

    def log(self, level: Level, message: str) -> None:
        self._effects.append(Log(level, message))

    def setting(self, key: str) -> Optional[str]:
        return self._settings.get(key)

    def notify_idle(self, account_id: int, change_id: int, types: DataTypes) -> None:
        self._effects.append(NotifyIdle(account_id, change_id, types))

    def deliver_push(self, event_id: str, message: "PushMessage") -> None:
        self._answer(DELIVER_PUSH, DeliverPush(event_id, message))

    def block(self, network: str, reason: str, expires_at: Optional[int]) -> None:
        self._answer(BLOCK, Block(network, reason, expires_at))

    def unblock(self, network: str) -> None:
        self._answer(UNBLOCK, Unblock(network))

    def install_certificate(self, certificate: "Certificate") -> None:
        self._answer(INSTALL_CERTIFICATE, InstallCertificate(certificate))

    def publish(self, cause: Event, key: str, body: types.Body) -> str:
        self._answer(PUBLISH, Publish(cause.id, key, body))
        return f"published-{len(self._effects)}"


def event(body: types.Body) -> Event:
    """An event with `body`, as if read at offset 0 of a test topic."""
    return Event(
        id="test-event", origin="test-node", timestamp=1_795_690_000_000, offset=0, body=body
    )


def state_change(account_id: int, change_id: int, types_: DataTypes) -> Event:
    """A `state-change` event."""
    return event(types.Body_StateChange(types.StateChange(account_id, change_id, types_)))


def ip_block(ip: str) -> Event:
    """An `ip-block` event blocking `ip`, for the reason "test", without expiry."""
    return event(types.Body_IpBlock(types.IpBlock(ip, types.BlockAction.BLOCK, "test", None)))


def ip_unblock(ip: str) -> Event:
    """An `ip-block` event unblocking `ip`."""
    return event(types.Body_IpBlock(types.IpBlock(ip, types.BlockAction.UNBLOCK, "test", None)))


def push(account_id: int, endpoint: str, payload: str) -> Event:
    """A `push` event (TTL 60 s, normal urgency)."""
    return event(
        types.Body_Push(
            types.Push(account_id, endpoint, payload, 60, types.Urgency.NORMAL, None, None)
        )
    )


def tls_certificate(domains: list[str], certificate_pem: str, private_key_pem: str) -> Event:
    """A `tls-certificate` event; the `not_after` it claims is 0."""
    return event(
        types.Body_TlsCertificate(
            types.TlsCertificate(list(domains), certificate_pem, private_key_pem, 0)
        )
    )
