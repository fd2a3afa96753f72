"""MQTT topic builders for the health channel (docs/mqtt.md): the only place topic strings are made.

Every id that becomes a topic level is validated here, so a charge point id such as ``CP/1`` or
``#`` can never create a topic outside ``{prefix}/{gateway_id}/...`` or a wildcard. Allowed ids:
1-64 characters from ``A-Z a-z 0-9 . _ : -`` (OCPP identities and our snapshot ids fit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

DEFAULT_PREFIX: Final = "omgw/v1"
_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_PREFIX_LEVEL = re.compile(r"[A-Za-z0-9._\-]{1,64}")


class TopicError(ValueError):
    """An id or prefix that cannot be used as a topic level (says which and why)."""


def check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise TopicError(f"invalid {kind} {value!r}: 1-64 chars of A-Z a-z 0-9 . _ : -")
    return value


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic tree of one gateway: ``Topics("GW1").telemetry`` -> ``omgw/v1/GW1/telemetry``."""

    gateway_id: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_id("gateway_id", self.gateway_id)
        levels = self.prefix.split("/")
        if not all(_PREFIX_LEVEL.fullmatch(level) for level in levels):
            raise TopicError(f"invalid topic_prefix {self.prefix!r}: levels of A-Z a-z 0-9 . _ -")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.gateway_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def soh(self) -> str:
        return f"{self.base}/soh"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    def cp_state(self, cp_id: str) -> str:
        return f"{self.base}/ocpp/{check_id('cp_id', cp_id)}/state"

    def blackbox(self, snapshot_id: str) -> str:
        return f"{self.base}/blackbox/{check_id('snapshot_id', snapshot_id)}"

    def cmd(self, name: str) -> str:
        return f"{self.base}/cmd/{check_id('command name', name)}"

    @property
    def cmd_filter(self) -> str:
        """Subscription filter for every command addressed to this gateway."""
        return f"{self.base}/cmd/+"

    def command_name(self, topic: str) -> str | None:
        """The ``{name}`` of a command topic of this gateway, or None if ``topic`` is not one."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head):]
        return name if _ID.fullmatch(name) else None
