"""The real node, through the component's imports: what `export` hands a
handler in the component. Natively the generated imports are stubs, so this
module is only used in the component; unit tests use `testing.RecordingHost`.
"""

from __future__ import annotations

from typing import Optional

import importlib

from componentize_py_types import Err
from wit_world.imports import config, log

from . import DataTypes, Denied, Event, Level, effect_error, types


class _Missing:
    """A capability interface the component was built without: the build
    imports only what the manifest grants (`capabilities`), as the Rust SDK
    imports only what a handler calls."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, _function: str):
        raise Denied(
            f"this component was built without capability `{self.name}`: add \"{self.name}\" "
            "to the manifest's `capabilities` and build it again"
        )


def _capability(name: str):
    try:
        return importlib.import_module(f"wit_world.imports.{name}")
    except ImportError:
        return _Missing(name)


# Looked up once, when the module is imported: at build time, in the
# pre-initialised snapshot every instance starts from.
idle, push, blocklist, certificates, publish = (
    _capability(n) for n in ("idle", "push", "blocklist", "certificates", "publish")
)


class WasmHost:
    """The node. Settings cannot change during an instance's life, so each
    is asked for once per instance (an instance handles one batch)."""

    __slots__ = ("_settings",)

    def __init__(self) -> None:
        self._settings: dict[str, Optional[str]] = {}

    def log(self, level: Level, message: str) -> None:
        log.log(level, message)

    def setting(self, key: str) -> Optional[str]:
        try:
            return self._settings[key]
        except KeyError:
            value = self._settings[key] = config.get(key)
            return value

    def notify_idle(self, account_id: int, change_id: int, types: DataTypes) -> None:
        idle.notify(account_id, change_id, types)

    def deliver_push(self, event_id: str, message: "PushMessage") -> None:
        try:
            push.deliver(event_id, message)
        except Err as e:
            raise effect_error(e.value) from None

    def block(self, network: str, reason: str, expires_at: Optional[int]) -> None:
        try:
            blocklist.block(network, reason, expires_at)
        except Err as e:
            raise effect_error(e.value) from None

    def unblock(self, network: str) -> None:
        try:
            blocklist.unblock(network)
        except Err as e:
            raise effect_error(e.value) from None

    def install_certificate(self, certificate: "Certificate") -> None:
        try:
            certificates.install(certificate)
        except Err as e:
            raise effect_error(e.value) from None

    def publish(self, cause: Event, key: str, body: types.Body) -> str:
        try:
            return publish.publish(cause.id, key, body)
        except Err as e:
            raise effect_error(e.value) from None
