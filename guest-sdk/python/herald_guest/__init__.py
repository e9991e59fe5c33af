"""The Python SDK for herald handlers: coordination-event handlers that run as
WebAssembly components (built with componentize-py) in every herald node's
sandbox.

The same shape as the Rust SDK (`herald-guest`): a handler is a class with
one method per event kind it cares about; every other kind is handled by
doing nothing. A method returns normally when the event is handled, raises
`Retry` or `Reject` to say otherwise, and lets a capability's `EffectError`
through to be decided by its class::

    from herald_guest import Handler, Reject, export

    class Unblocker(Handler):
        def ip_block(self, host, event, block):
            ...

    WitWorld = export(Unblocker)

The component's types come from bindings generated from `wit/herald.wit`
(`wit_world`, by `componentize-py bindings`); this SDK targets
`herald:coordination@0.2.0`.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from wit_world.imports import types
from wit_world.imports.log import Level
from wit_world.imports.types import (
    BlockAction,
    CacheScope,
    DataTypes,
    Event,
    IpBlock,
    Outcome,
    Source,
    Urgency,
)

__all__ = [
    "WIT_PACKAGE",
    "Handler",
    "Host",
    "Fail",
    "Retry",
    "Reject",
    "EffectError",
    "Transient",
    "Gone",
    "Invalid",
    "Denied",
    "handle",
    "export",
    "types",
    "BlockAction",
    "CacheScope",
    "DataTypes",
    "Event",
    "IpBlock",
    "Level",
    "Source",
    "Urgency",
]

#: The WIT package and version this SDK is written against.
WIT_PACKAGE = "herald:coordination@0.2.0"


def __getattr__(name: str):
    # The records of a capability interface exist only in a component built
    # with that capability (see build.py), so they are looked up on use.
    if name == "Certificate":
        from wit_world.imports.certificates import Certificate

        return Certificate
    if name == "PushMessage":
        from wit_world.imports.push import Message

        return Message
    raise AttributeError(f"module 'herald_guest' has no attribute {name!r}")


class Fail(Exception):
    """Why a handler did not handle an event; `reason` goes with it."""

    outcome: type

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    def to_outcome(self) -> Outcome:
        return self.outcome(self.reason)


class Retry(Fail):
    """Transient: herald retries the event later with backoff, holding its
    partition so that order is kept."""

    outcome = types.Outcome_Retry


class Reject(Fail):
    """Permanent: the event goes to the dead-letter topic with the reason."""

    outcome = types.Outcome_Reject


class EffectError(Exception):
    """Why the node did not apply what a handler asked (`effect-error` in
    `wit/herald.wit`). Every fallible `Host` method raises one of its four
    classes, so a handler decides by class, not by reading a message.

    Left uncaught in a handler method, it decides the event's outcome as
    Rust's `?` does: `Transient` retries, the others reject, with
    `str(error)` (`transient: disk full`) as the reason."""

    #: `transient`, `gone`, `invalid` or `denied`, as written in the WIT.
    cls = ""
    #: What an uncaught error of this class makes of the event.
    verdict: type = Reject

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.cls}: {self.message}"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.message == self.message

    def __hash__(self) -> int:
        return hash((self.cls, self.message))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def to_outcome(self) -> Outcome:
        return self.verdict.outcome(str(self))


class Transient(EffectError):
    """Might work later (network error, 429/5xx, producer queue full, disk
    error): retried when uncaught."""

    cls, verdict = "transient", Retry


class Gone(EffectError):
    """The target no longer exists (a push subscription answered 404 or 410):
    nothing to retry."""

    cls = "gone"


class Invalid(EffectError):
    """Will never work as asked (malformed network, unparseable certificate,
    invalid domain)."""

    cls = "invalid"


class Denied(EffectError):
    """The node's policy refuses it whatever the handler says (a kind the
    manifest may not publish, a protected network)."""

    cls = "denied"


_ERROR_CLASSES = {
    types.EffectError_Transient: Transient,
    types.EffectError_Gone: Gone,
    types.EffectError_Invalid: Invalid,
    types.EffectError_Denied: Denied,
}


def effect_error(wit_error: types.EffectError) -> EffectError:
    """The exception for a WIT `effect-error` value."""
    return _ERROR_CLASSES[type(wit_error)](wit_error.value)


class Host(Protocol):
    """What a handler can ask of the node: one method per function of a
    capability interface of `wit/herald.wit`. The deployer grants the
    interfaces in the handler's manifest (`capabilities = [...]`); `log` and
    `setting` need no grant. The fallible methods raise an `EffectError`.

    In the component the node is `herald_guest.wasm.WasmHost`; in unit tests
    `herald_guest.testing.RecordingHost` stands in for it."""

    def log(self, level: Level, message: str) -> None: ...

    def setting(self, key: str) -> Optional[str]:
        """The manifest's `[settings]` value for `key`, None if unset."""
        ...

    def notify_idle(self, account_id: int, change_id: int, types: DataTypes) -> None:
        """Capability `idle`: wake the account's IDLE/EventSource sessions."""
        ...

    def deliver_push(self, event_id: str, message: PushMessage) -> None:
        """Capability `push`: deliver a Web Push message, once per event id."""
        ...

    def block(self, network: str, reason: str, expires_at: Optional[int]) -> None:
        """Capability `blocklist`: block `network` (canonical form)."""
        ...

    def unblock(self, network: str) -> None:
        """Capability `blocklist`: lift the block on `network`."""
        ...

    def install_certificate(self, certificate: Certificate) -> None:
        """Capability `certificates`: install a chain and its key."""
        ...

    def publish(self, cause: Event, key: str, body: types.Body) -> str:
        """Capability `publish`: publish `body` on behalf of `cause`, keyed
        by the entity `key`; returns the new event's id."""
        ...


class Handler:
    """A handler: one method per event kind, each called once per event of
    that kind in a batch, in order, with the node (`host`), the whole event
    and its body. Override the kinds the manifest subscribes to; the others
    do nothing.

    Return (any value) when handled or when there is nothing to do; raise
    `Retry(reason)` to have herald try again later, `Reject(reason)` to send
    the event to the dead-letter topic. An `EffectError` left uncaught
    decides by its class. Any other exception is a bug: it fails the whole
    call, like a Rust panic, and herald retries the batch.

    A retried event is handled again from the start, so effects must be safe
    to repeat: pass `event.id` where a capability asks for it."""

    def state_change(self, host: Host, event: Event, change: types.StateChange) -> None:
        """Something changed in an account; its sessions may need waking."""

    def push(self, host: Host, event: Event, push: types.Push) -> None:
        """A Web Push message to deliver once per cluster."""

    def ip_block(self, host: Host, event: Event, block: IpBlock) -> None:
        """Block or unblock `block.ip`, exactly as the publisher wrote it
        (validate it: `herald_guest.net.parse_network`)."""

    def tls_certificate(self, host: Host, event: Event, cert: types.TlsCertificate) -> None:
        """A certificate chain and key for `cert.domains`, as published."""

    def cache_invalidate(self, host: Host, event: Event, items: list) -> None:
        """Drop these cached items."""

    def cache_invalidate_all(self, host: Host, event: Event, scope: CacheScope) -> None:
        """Drop every cache, or only the negative ones."""

    def settings_reload(self, host: Host, event: Event) -> None:
        """The mail server's settings changed."""

    def queue_status(self, host: Host, event: Event, running: bool) -> None:
        """The MTA queue is now running (True) or paused (False)."""

    def queue_refresh(self, host: Host, event: Event) -> None:
        """The MTA queue should be scanned again."""

    def registry_change(self, host: Host, event: Event, change: types.RegistryChange) -> None:
        """A settings object was inserted or deleted, or a type reloaded."""

    def calendar_alert(self, host: Host, event: Event, alert: types.CalendarAlert) -> None:
        """An alert of a calendar event is due."""

    def email_push(self, host: Host, event: Event, push: types.EmailPush) -> None:
        """An email arrived for an account with push subscriptions."""

    def push_server_update(self, host: Host, event: Event, account_id: int) -> None:
        """The push subscriptions of `account_id` changed."""

    def push_subscription_gone(
        self, host: Host, event: Event, gone: types.PushSubscriptionGone
    ) -> None:
        """A subscription's endpoint answered that it is gone."""


# Each body case, and how its handler method is called: with the case's
# value, or (kinds without a body) without.
_ROUTES: dict[type, tuple[str, bool]] = {
    types.Body_StateChange: ("state_change", True),
    types.Body_Push: ("push", True),
    types.Body_IpBlock: ("ip_block", True),
    types.Body_TlsCertificate: ("tls_certificate", True),
    types.Body_CacheInvalidate: ("cache_invalidate", True),
    types.Body_CacheInvalidateAll: ("cache_invalidate_all", True),
    types.Body_SettingsReload: ("settings_reload", False),
    types.Body_QueueStatus: ("queue_status", True),
    types.Body_QueueRefresh: ("queue_refresh", False),
    types.Body_RegistryChange: ("registry_change", True),
    types.Body_CalendarAlert: ("calendar_alert", True),
    types.Body_EmailPush: ("email_push", True),
    types.Body_PushServerUpdate: ("push_server_update", True),
    types.Body_PushSubscriptionGone: ("push_subscription_gone", True),
}

_OK = types.Outcome_Ok()


def handle(handler: Handler, host: Host, events: list[Event]) -> list[Outcome]:
    """Route each event of a batch to its handler method and collect one
    outcome per event, in order. This is what the component runs for each
    batch (`export`); unit tests call it with a `RecordingHost`."""
    # The handler's methods, looked up once per batch rather than per event.
    routes = {case: (getattr(handler, name), value) for case, (name, value) in _ROUTES.items()}
    outcomes = []
    for event in events:
        body = event.body
        method, has_value = routes[type(body)]
        try:
            if has_value:
                method(host, event, body.value)
            else:
                method(host, event)
            outcomes.append(_OK)
        except (Fail, EffectError) as failed:
            outcomes.append(failed.to_outcome())
    return outcomes


def export(handler_class: Callable[[], Handler]) -> type:
    """The component's world for `handler_class`: assign it to `WitWorld` at
    the top level of the module componentize-py builds (`WitWorld =
    export(MyHandler)`). Each batch runs `handle` with the real node."""
    # Imported here, at build time: the component has no file system to
    # import from later, only the modules its snapshot holds.
    from herald_guest.wasm import WasmHost

    handler = handler_class()

    class WitWorld:
        def handle(self, source: Source, events: list[Event]) -> list[Outcome]:
            return handle(handler, WasmHost(), events)

    return WitWorld
