"""The JSON documents behind the technician page, and the bounded telemetry history for its charts.

Pure: the functions take what the health process already keeps (the tracker's charge-point states,
the value channel's status document, telemetry payloads, the status document, the last SOH) and
return plain dicts. Nothing here reads a clock, a file or a socket; ``server`` does that.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

PHASES = ("L1", "L2", "L3")
# Per-phase quantities kept for the charts (telemetry keys are ``{quantity}_{phase}``).
CHART_QUANTITIES = {"V": "voltage", "I": "current", "P": "power_active"}
SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def _num(entry: Any) -> float | None:
    """A telemetry value ``{v, unit, q}`` -> its number when quality is ok, else None."""
    if isinstance(entry, Mapping) and entry.get("q") == "ok" and isinstance(entry.get("v"), (int, float)):
        return round(float(entry["v"]), 3)
    return None


def chart_point(payload: Mapping[str, Any]) -> dict[str, Any]:
    """One telemetry payload -> the compact point the charts use.

    ``{"t": ms since epoch, "m": {meter: {"V": [L1, L2, L3], "I": [...], "P": [...]}},
    "s": {sensor: {"t": °C, "rh": %, "dp": °C}}}``; a value that is not ``ok`` is null.
    """
    meters: dict[str, Any] = {}
    for m in payload.get("meters") or []:
        values = m.get("values") or {}
        meters[str(m.get("name"))] = {
            short: [_num(values.get(f"{q}_{ph}")) for ph in PHASES] for short, q in CHART_QUANTITIES.items()
        }
    sensors: dict[str, Any] = {}
    for s in payload.get("sensors") or []:
        ok = s.get("q") == "ok"
        sensors[str(s.get("name"))] = {
            "t": s.get("temperature_c") if ok else None,
            "rh": s.get("humidity_rh") if ok else None,
            "dp": s.get("dew_point_c") if ok else None,
        }
    return {"t": int(payload.get("ts_ns", 0)) // 1_000_000, "m": meters, "s": sensors}


class TelemetryHistory:
    """The last ``minutes`` of chart points, bounded by count (at most one point per sample)."""

    def __init__(self, minutes: int = 10, interval_s: float = 1.0, max_points: int = 3600):
        self.minutes = minutes
        self._points: deque[dict[str, Any]] = deque(maxlen=min(max_points, int(minutes * 60 / interval_s) + 5))

    def add(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        point = chart_point(payload)
        self._points.append(point)
        return point

    def latest(self) -> dict[str, Any] | None:
        return self._points[-1] if self._points else None

    def since(self, minutes: float, now_ms: int) -> list[dict[str, Any]]:
        minutes = max(0.0, min(float(minutes), float(self.minutes)))
        cutoff = now_ms - int(minutes * 60_000)
        return [p for p in self._points if p["t"] >= cutoff]

    def __len__(self) -> int:
        return len(self._points)


def chargers_doc(states: Mapping[str, Mapping[str, Any]], value_status: Mapping[str, Any] | None,
                 now_ns: int) -> dict[str, Any]:
    """Per charge point: the health side's view (tap) beside the value channel's own counters.

    ``states`` is ``{cp_id: ChargePointTracker.state(cp_id)}``; ``value_status`` the value channel's
    status document (None when its socket did not answer). A charger known to only one side is
    still listed.
    """
    by_value = {str(c.get("cp_id")): c for c in (value_status or {}).get("charge_points", [])}
    out = []
    for cp_id in sorted(set(states) | set(by_value)):
        st = dict(states.get(cp_id, {}))
        last = st.get("last_frame_ns")
        v = by_value.get(cp_id)
        out.append({
            "cp_id": cp_id,
            "connected": st.get("connected", bool(v and v.get("connected"))),
            "subprotocol": st.get("subprotocol") or (v or {}).get("subprotocol"),
            "boot": st.get("boot"),
            "boot_status": st.get("boot_status"),
            "connectors": st.get("connectors", {}),
            "transaction": st.get("transaction"),
            "csms_latency_ms": st.get("csms_latency_ms") or (v or {}).get("csms_latency_ms"),
            "last_frame_ns": last,
            "last_frame_age_s": None if last is None else round((now_ns - last) / 1e9, 1),
            "reconnects": st.get("reconnects"),
            "faults": st.get("faults"),
            "upstream_losses": st.get("upstream_losses"),
            "energy_register_wh": st.get("energy_register_wh"),
            "value": None if v is None else {k: v.get(k) for k in (
                "connected", "frames_up", "frames_down", "bytes_up", "bytes_down", "connects", "reconnects",
                "invalid_frames", "rejected_calls", "upstream_failures")},
        })
    return {
        "chargers": out,
        "value_channel": None if value_status is None else {
            "reachable": True, "uptime_s": value_status.get("uptime_s"), "connected": value_status.get("connected"),
            "tap": value_status.get("tap"), "handshake_refusals": value_status.get("handshake_refusals")},
    }


def health_doc(status: Mapping[str, Any], soh: Mapping[str, Any] | None, events: Iterable[Mapping[str, Any]],
               gateway: Mapping[str, Any] | None, versions: Mapping[str, Any]) -> dict[str, Any]:
    """State of health, recent events, relay cycles, uplink, versions, uptime, disk and clock."""
    g = dict(gateway or {})
    relays = dict((soh or {}).get("relays") or {})
    wd = status.get("watchdog")
    if wd and not relays:  # before the first SOH window: the watchdog's live count
        relays = {f"relay-{wd.get('cp_id')}": {"cycles": wd.get("relay_cycles")}}
    return {
        "state": status.get("state"),
        "reasons": status.get("reasons", []),
        "gateway_id": status.get("gateway_id"),
        "versions": dict(versions),
        "uptime": {"process_s": status.get("uptime_s"), "system_s": g.get("uptime_s")},
        "disk": {k: g.get(k) for k in ("disk_total_bytes", "disk_free_bytes", "disk_used_ratio")},
        "clock": {"synced": g.get("clock_synced"), "max_error_ms": g.get("clock_max_error_ms"),
                  "est_error_ms": g.get("clock_est_error_ms"), "source": "adjtimex"},
        "system": {k: g.get(k) for k in ("cpu_temp_c", "load_1", "mem_available_ratio", "rss_kb", "cpu_percent")},
        "uplink": status.get("uplink"),
        "sampler": status.get("sampler"),
        "devices": status.get("devices"),
        "blackbox": status.get("blackbox"),
        "watchdog": wd,
        "relays": relays,
        "soh": soh,
        "events": list(events),
    }


def snapshots_doc(infos: Iterable[Any]) -> dict[str, Any]:
    """The snapshot archive's listing, newest first (``SnapshotInfo`` objects)."""
    rows = [{"id": i.snapshot_id, "file": i.path.name, "trigger_ns": i.trigger_ns, "size": i.size,
             "reasons": list(i.reasons), "records": i.records, "readable": i.readable} for i in infos]
    rows.reverse()
    return {"snapshots": rows}


def valid_snapshot_name(name: str) -> bool:
    """A snapshot id as the archive names them; anything with a slash, a leading dot, ``..`` or
    another odd character is refused before it is looked up."""
    return bool(SNAPSHOT_NAME.fullmatch(name)) and ".." not in name


__all__ = ["TelemetryHistory", "chart_point", "chargers_doc", "health_doc", "snapshots_doc",
           "valid_snapshot_name"]
