"""Health-channel payloads and their JSON Schemas (``schemas/*.json``, draft 2020-12).

Every payload published on MQTT or POSTed over HTTPS has a schema of the same name; docs/mqtt.md
documents both. The bodies are the producers' own dicts (``Sample.to_payload()``,
``HealthAccumulator.snapshot()``, ``ChargePointTracker.state()``, event dicts, the snapshot
manifest); :func:`stamp` adds the head common to all payloads:

- ``schema``: payload schema version (1). A consumer rejects versions it does not know.
- ``seq``: a counter per topic class (``status``, ``telemetry``, ``soh``, ``cp_state``, ``event``,
  ``blackbox_manifest``, ``command_reply``), from 0 at every boot; ``status.boot_id`` names the boot.
  The *caller* stamps it (``HealthChannel.publish``, ``SeqCounters``); the transports never touch
  payload bytes, so what was spooled is exactly what is replayed.
- ``ts``: UTC time the data was produced, RFC 3339 with microseconds (:func:`iso_ts`), the one
  timestamp format of the head. Replayed messages keep it.

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
_HEAD_KEYS: Final = frozenset({"schema", "seq", "ts"})


def iso_ts(time_ns: int) -> str:
    """``time_ns`` (ns since the epoch) as ``2026-11-25T17:10:51.123456Z``."""
    t = dt.datetime.fromtimestamp(time_ns // 1_000_000_000, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{(time_ns // 1000) % 1_000_000:06d}Z"


def _head(seq: int, ts_ns: int) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "seq": seq, "ts": iso_ts(ts_ns)}


def stamp(seq: int, ts_ns: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with the common head (``schema``, ``seq``, ``ts`` from ``ts_ns``) first.

    A ``schema``/``seq``/``ts`` already in ``body`` is replaced: producers' dicts (the sampler's
    payload, a snapshot manifest) may carry their own, and the wire has exactly one of each.
    ``HealthChannel.publish`` stamps every payload it sends with this."""
    return _head(seq, ts_ns) | {k: v for k, v in body.items() if k not in _HEAD_KEYS}


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
                      sensors: Sequence[Mapping[str, Any]], gateway: Mapping[str, Any], *,
                      lateness_ms: float = 0.0, skipped: int = 0) -> dict[str, Any]:
    """One sampling tick, as ``Sample.to_payload()`` makes it (``ts_ns`` is the tick's start).

    ``meters``: ``sampler.meter_to_dict`` / ``missing_meter`` dicts; ``sensors``:
    ``sampler.climate_to_dict`` dicts; ``gateway``: ``GatewayInternals.read()``."""
    return stamp(seq, ts_ns, {"ts_ns": ts_ns, "lateness_ms": lateness_ms, "skipped": skipped,
                              "meters": [dict(m) for m in meters], "sensors": [dict(s) for s in sensors],
                              "gateway": dict(gateway)})


def soh_payload(seq: int, ts_ns: int, snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """State of health: ``HealthAccumulator.snapshot()`` with the common head."""
    return stamp(seq, ts_ns, snapshot)


def cp_state_payload(seq: int, ts_ns: int, state: Mapping[str, Any]) -> dict[str, Any]:
    """One charge point: ``ChargePointTracker.state(cp_id)`` with the common head."""
    return stamp(seq, ts_ns, state)


def event_payload(seq: int, ts_ns: int, event: Mapping[str, Any] | None = None, /,
                  **fields: Any) -> dict[str, Any]:
    """An event dict from any producer (``kind`` plus the kind's fields) with the common head."""
    return stamp(seq, ts_ns, {**(event or {}), **fields})


def blackbox_manifest_payload(seq: int, ts_ns: int, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A snapshot's ``manifest.json`` (``appliance.blackbox.snapshot``) with ``seq`` and ``ts``; the
    archive itself goes over HTTPS (``upload_snapshot``)."""
    return stamp(seq, ts_ns, manifest)


def command_reply_payload(seq: int, ts_ns: int, *, name: str | None, ok: bool, nonce: str | None = None,
                          error: str | None = None, detail: str | None = None,
                          result: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Reply to a command (the dispatcher's reply, stamped), sent to its MQTT 5 response topic."""
    p = _head(seq, ts_ns) | {"ok": ok, "name": name, "nonce": nonce}
    if error is not None:
        p["error"] = error
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
