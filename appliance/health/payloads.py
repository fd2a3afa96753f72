"""Health-channel payload builders and their JSON Schemas (``schemas/*.json``, draft 2020-12).

Every payload published on MQTT or POSTed over HTTPS is built here and has a schema of the same
name; docs/mqtt.md documents both. Conventions common to all payloads:

- ``schema``: payload schema version (1). A consumer rejects versions it does not know.
- ``seq``: a counter per topic class (``status``, ``telemetry``, ``soh``, ``cp_state``, ``event``,
  ``blackbox_manifest``, ``command_reply``), from 0 at every boot; ``status.boot_id`` names the boot.
  The *caller* stamps it (``SeqCounters``); the transports never touch payload bytes, so what was
  spooled is exactly what is replayed.
- ``ts``: UTC time the data was produced, RFC 3339 with microseconds. Replayed messages keep it.

Builders are pure: time and seq come in as arguments. They return dicts; ``encode`` makes the
compact UTF-8 JSON that goes on the wire.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, Final

import jsonschema

SCHEMA_VERSION: Final = 1
PAYLOAD_NAMES: Final = ("status", "telemetry", "soh", "cp_state", "event", "blackbox_manifest",
                        "command_reply")


def iso_ts(time_ns: int) -> str:
    """``time_ns`` (ns since the epoch) as ``2026-11-25T17:10:51.123456Z``."""
    t = dt.datetime.fromtimestamp(time_ns // 1_000_000_000, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{(time_ns // 1000) % 1_000_000:06d}Z"


def _head(seq: int, ts_ns: int) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "seq": seq, "ts": iso_ts(ts_ns)}


class SeqCounters:
    """Per-topic-class sequence numbers: ``seqs.next("telemetry")`` -> 0, 1, 2, ..."""

    def __init__(self) -> None:
        self._next: Counter[str] = Counter()

    def next(self, payload_name: str) -> int:
        if payload_name not in PAYLOAD_NAMES:
            raise KeyError(payload_name)
        n = self._next[payload_name]
        self._next[payload_name] = n + 1
        return n


def status_payload(seq: int, ts_ns: int, *, gateway_id: str, state: str, boot_id: str,
                   version: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Retained gateway status: ``state`` "online" (birth) or "offline" (last will, clean stop)."""
    p = _head(seq, ts_ns) | {"state": state, "gateway_id": gateway_id, "boot_id": boot_id}
    if version is not None:
        p["version"] = version
    if reason is not None:
        p["reason"] = reason
    return p


def telemetry_payload(seq: int, ts_ns: int, meters: Sequence[Mapping[str, Any]],
                      sensors: Sequence[Mapping[str, Any]], gateway: Mapping[str, Any]) -> dict[str, Any]:
    """One sampling tick. ``meters``/``sensors``: ``{"name", "ok", "values": {quantity: number|None},
    "model"?, "error"?}``; ``gateway``: flat internals (``cpu_temp_c``, ``spool_pending``...)."""
    return _head(seq, ts_ns) | {"meters": [dict(m) for m in meters],
                                "sensors": [dict(s) for s in sensors], "gateway": dict(gateway)}


def soh_payload(seq: int, ts_ns: int, components: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """State of health: ``[{"name", "state": ok|degraded|failed|unknown, "detail"?, "metrics"?}]``."""
    return _head(seq, ts_ns) | {"components": [dict(c) for c in components]}


def cp_state_payload(seq: int, ts_ns: int, *, cp_id: str, connected: bool,
                     connectors: Sequence[Mapping[str, Any]] = (), errors: Sequence[str] = (),
                     latency_ms: float | None = None, boot: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One charge point: connection, BootNotification info, connectors ``[{"id", "status",
    "error_code"?}]``, recent errors, upstream round-trip latency."""
    return _head(seq, ts_ns) | {"cp_id": cp_id, "connected": connected,
                                "boot": dict(boot) if boot is not None else None,
                                "connectors": [dict(c) for c in connectors], "errors": list(errors),
                                "latency_ms": latency_ms}


def event_payload(seq: int, ts_ns: int, *, type: str, severity: str, source: str, message: str,
                  data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A fault, watchdog action, command audit entry, state or transport change."""
    p = _head(seq, ts_ns) | {"type": type, "severity": severity, "source": source, "message": message}
    if data is not None:
        p["data"] = dict(data)
    return p


def blackbox_manifest_payload(seq: int, ts_ns: int, *, snapshot_id: str, reason: str, from_ns: int,
                              to_ns: int, records: int, size: int, sha256: str,
                              archive_transport: str = "https", archive_url: str | None = None) -> dict[str, Any]:
    """Manifest of a black-box snapshot; the archive itself goes over HTTPS (``upload_snapshot``)."""
    archive: dict[str, Any] = {"transport": archive_transport}
    if archive_url is not None:
        archive["url"] = archive_url
    return _head(seq, ts_ns) | {"snapshot_id": snapshot_id, "reason": reason, "from_ts": iso_ts(from_ns),
                                "to_ts": iso_ts(to_ns), "records": records, "bytes": size,
                                "sha256": sha256, "archive": archive}


def command_reply_payload(seq: int, ts_ns: int, *, command: str, status: str, detail: str | None = None,
                          result: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Reply to a command, published to its MQTT 5 response topic with its correlation data."""
    p = _head(seq, ts_ns) | {"command": command, "status": status}
    if detail is not None:
        p["detail"] = detail
    if result is not None:
        p["result"] = dict(result)
    return p


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@cache
def schema(name: str) -> dict[str, Any]:
    if name not in PAYLOAD_NAMES:
        raise KeyError(f"no payload schema named {name!r}")
    text = resources.files("appliance.health").joinpath("schemas", f"{name}.json").read_text()
    s: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(s)
    return s


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(name))


def validate(name: str, payload: Mapping[str, Any] | bytes) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``payload`` (dict or JSON bytes) matches ``name``."""
    obj = json.loads(payload) if isinstance(payload, (bytes, bytearray)) else payload
    _validator(name).validate(obj)
