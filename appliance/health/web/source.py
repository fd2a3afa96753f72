"""The page's view of a running health channel: what :class:`.server.WebServer` asks for.

Reads only: the charge-point tracker, the status document, the telemetry history and recent
events the channel keeps for the page, the snapshot archive, and the value channel's status socket
(one short read, cached for a second; the same socket ``omgw status`` reads). The one action, the
snapshot button, runs the same handler as the remote ``snapshot`` command and is audited in the
black box as a ``command`` record with ``source: "web"`` and the technician's name.
"""

from __future__ import annotations

import asyncio
import json
import platform
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import __version__
from ...blackbox.record import RecordKind
from ...logfmt import get_logger
from .data import TelemetryHistory, chargers_doc, health_doc, snapshots_doc

if TYPE_CHECKING:
    from ..run import HealthChannel

log = get_logger("web")


def _os_release() -> str | None:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return None


class ChannelSource:
    def __init__(self, channel: HealthChannel, history: TelemetryHistory, events: deque[dict[str, Any]]):
        self.ch = channel
        self.history = history
        self.events = events
        self.last_gateway: dict[str, Any] | None = None
        self.last_soh: dict[str, Any] | None = None
        self._value: dict[str, Any] | None = None
        self._value_at = 0.0
        self._value_lock = asyncio.Lock()
        self.versions = {"omgw": __version__, "python": platform.python_version(), "os": _os_release(),
                         "kernel": platform.release()}

    async def _value_status(self) -> dict[str, Any] | None:
        cfg = self.ch.config.value
        if cfg is None:
            return None
        async with self._value_lock:
            if time.monotonic() - self._value_at < 0.9:
                return self._value
            self._value_at = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(cfg.status_socket)), 0.5)
                try:
                    self._value = json.loads(await asyncio.wait_for(reader.read(1 << 20), 0.5))
                finally:
                    writer.close()
            except (OSError, ValueError, TimeoutError):
                self._value = None  # not running (or not here): the page says so
            return self._value

    async def chargers(self) -> dict[str, Any]:
        t = self.ch.tracker
        states = {cp: t.state(cp) for cp in t.cp_ids()}
        return chargers_doc(states, await self._value_status(), time.time_ns())

    def telemetry(self, minutes: float) -> dict[str, Any]:
        return {"minutes": minutes, "interval_s": self.ch.sampler.stats().get("interval_s"),
                "points": self.history.since(minutes, time.time_ns() // 1_000_000)}

    def health(self) -> dict[str, Any]:
        return health_doc(self.ch.status(), self.last_soh, reversed(self.events), self.last_gateway, self.versions)

    def snapshots(self) -> dict[str, Any]:
        doc = snapshots_doc(self.ch.archive.snapshots())
        doc["recorder"] = self.ch.recorder.stats()
        return doc

    def snapshot_path(self, name: str) -> Path | None:
        info = self.ch.archive.get(name)
        return None if info is None or not info.path.is_file() else info.path

    def live(self) -> dict[str, Any]:
        return {"point": self.history.latest(), "health": self.health()}

    async def request_snapshot(self, user: str, address: str) -> dict[str, Any]:
        """The snapshot button: audited like a remote command, then the remote command's handler."""
        base = {"kind": "command", "name": "snapshot", "source": "web", "user": user, "address": address,
                "kid": None, "authenticated": True, "args": {"reason": f"web: {user}"}}
        now = time.time_ns()
        try:
            self.ch.record(RecordKind.COMMAND, {**base, "phase": "decision", "time_ns": now, "accepted": True,
                                                "reason": "accepted"}, publish=False)
        except Exception as exc:  # the black box refused: an unaudited action is not run (as for commands)
            log.error("web_snapshot_audit_failed", user=user, error=type(exc).__name__)
            return {"requested": False, "error": "audit_failed"}
        log.info("web_snapshot_requested", user=user, addr=address)
        start = time.monotonic()
        result = await self.ch.dispatcher.handlers["snapshot"]({"reason": f"web: {user}"})
        self.ch.record(RecordKind.COMMAND, {**base, "phase": "result", "time_ns": time.time_ns(), "accepted": True,
                                            "reason": "ok", "ok": True,
                                            "duration_ms": round((time.monotonic() - start) * 1000, 1)},
                       publish=False)
        return {**result, "by": user, "ready_in_s": self.ch.config.blackbox.post_s + 2}


__all__ = ["ChannelSource"]
