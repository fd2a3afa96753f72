"""What the demo shows: the gateway as the O&M centre sees it, built only from its MQTT topics.

Why this exists: the demo's point is that everything on screen came over the health channel
(``omgw/v1/{gw}/#``), not from inside the processes. :class:`BenchPicture` folds messages into a
picture (pure: topic + payload in, plain log lines out, no I/O, no clock); :func:`render` draws it
with rich for a terminal (imported only then). Headless runs (tests, CI, pipes) print the log lines
instead.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Group


def _value(values: dict[str, Any] | None, name: str) -> float | None:
    """One ``q == ok`` value from a telemetry meter's values (names are case-insensitive)."""
    for k, v in (values or {}).items():
        if k.lower() == name and isinstance(v, dict) and v.get("q") == "ok":
            return float(v["v"])
    return None


_EVENT_KEYS = ("transaction_id", "energy_start_wh", "energy_end_wh", "phase", "code", "reason", "off_s")


def _clock(ts_ns: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts_ns / 1e9)) if ts_ns else "--:--:--"


@dataclass
class BenchPicture:
    topic_root: str
    chargers: dict[str, dict[str, Any]] = field(default_factory=dict)
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)
    sensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=12))
    telemetry_count: int = 0
    transactions_seen: set[str] = field(default_factory=set)
    value_status: dict[str, Any] = field(default_factory=dict)  # the value channel's status socket
    fault_stage: str = ""  # the scripted fault's progress, in words

    def update(self, topic: str, p: dict[str, Any]) -> list[str]:
        """Fold one message in; return the plain log lines worth printing for it."""
        tail = topic[len(self.topic_root) + 1:]
        out: list[str] = []
        if tail == "status":
            self.status = p
            out.append(f"event=gateway_status state={p.get('state')} boot_id={p.get('boot_id')}")
        elif tail == "telemetry":
            self.telemetry_count += 1
            for m in p.get("meters", []):
                self.meters[m["name"]] = m
            for s in p.get("sensors", []):
                self.sensors[s["name"]] = s
            if self.telemetry_count == 1 or self.telemetry_count % 5 == 0:
                parts = []
                for name, m in sorted(self.meters.items()):
                    pw, e = _value(m.get("values"), "power_active_total"), _value(m.get("values"),
                                                                                   "energy_import_total")
                    parts.append(f"{name}={pw / 1000 if pw is not None else float('nan'):.1f}kW/"
                                 f"{e if e is not None else float('nan'):.2f}kWh")
                for name, s in sorted(self.sensors.items()):
                    t = s.get("temperature_c")
                    parts.append(f"{name}={t if t is None else round(t, 1)}C/{s.get('q')}")
                out.append(f"event=telemetry seq={p.get('seq')} " + " ".join(parts))
        elif tail.startswith("ocpp/") and tail.endswith("/state"):
            cp = p.get("cp_id", tail.split("/")[1])
            old = self.chargers.get(cp, {})
            self.chargers[cp] = p
            if old.get("connected") != p.get("connected"):
                out.append(f"event=charger_{'connected' if p.get('connected') else 'disconnected'} cp={cp} "
                           f"subprotocol={p.get('subprotocol')}")
        elif tail == "event":
            kind = p.get("kind")
            cp = p.get("cp") or p.get("cp_id") or ""
            if kind == "transaction_started":
                self.transactions_seen.add(f"{cp}/{p.get('transaction_id')}")
            extra = " ".join(f"{k}={p[k]}" for k in _EVENT_KEYS if p.get(k) is not None)
            line = f"event={kind} cp={cp} {extra}".rstrip()
            if not str(kind).startswith("transaction_"):  # those show in the chargers table
                self.events.appendleft(f"{_clock(p.get('time_ns'))} {kind} {cp} {extra}")
            out.append(line)
        elif tail.startswith("blackbox/"):
            trig = p.get("trigger", {})
            recs = p.get("records", {})
            line = (f"event=snapshot id={p.get('snapshot_id')} reasons={','.join(trig.get('reasons', []))} "
                    f"records={recs.get('total', recs)}")
            self.events.appendleft(f"{time.strftime('%H:%M:%S')} SNAPSHOT {p.get('snapshot_id')}")
            out.append(line)
        return out


def render(pic: BenchPicture, elapsed_s: float, title: str) -> Group:
    """The live view: chargers, meters, sensors, channel health, events."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    cps = Table(title="chargers (ocpp/<cp>/state)", expand=True)
    for col in ("cp", "link", "protocol", "connector", "transaction", "energy Wh", "last frame", "reconnects"):
        cps.add_column(col)
    for cp, s in sorted(pic.chargers.items()):
        conns = s.get("connectors") or {}
        status = ", ".join(f"{k}:{v.get('status')}" for k, v in sorted(conns.items()))
        tx = s.get("transaction")
        cps.add_row(cp, Text("online", "green") if s.get("connected") else Text("offline", "red"),
                    s.get("subprotocol") or "-", status or "-", tx["id"] if tx else "-",
                    f"{tx.get('energy_wh') or 0:.0f}" if tx else "-", _clock(s.get("last_frame_ns")),
                    str(s.get("reconnects", 0)))
    meters = Table(title="meters (RS-485, Modbus RTU)", expand=True)
    for col in ("meter", "power kW", "energy kWh", "V L1", "A L1"):
        meters.add_column(col)
    for name, m in sorted(pic.meters.items()):
        vals = m.get("values")
        if vals is None:
            meters.add_row(name, Text(m.get("missing", "no reading"), "red"), "", "", "")
            continue
        pw, e = _value(vals, "power_active_total"), _value(vals, "energy_import_total")
        v1, a1 = _value(vals, "voltage_l1"), _value(vals, "current_l1")
        meters.add_row(name, f"{pw / 1000:.2f}" if pw is not None else "-", f"{e:.3f}" if e is not None else "-",
                       f"{v1:.1f}" if v1 is not None else "-", f"{a1:.1f}" if a1 is not None else "-")
    sensors = Table(title="sensors (I2C)", expand=True)
    for col in ("sensor", "°C", "%RH", "hPa", "q"):
        sensors.add_column(col)
    for name, s in sorted(pic.sensors.items()):
        sensors.add_row(name, *(f"{s[k]:.1f}" if isinstance(s.get(k), (int, float)) else "-"
                                for k in ("temperature_c", "humidity_rh", "pressure_hpa")), str(s.get("q")))
    st = pic.status.get("state", "unknown")
    health = Text.assemble(("health channel: ", "bold"), (st, "green" if st == "online" else "red"),
                           f"   telemetry messages: {pic.telemetry_count}   transactions seen: "
                           f"{len(pic.transactions_seen)}   t={elapsed_s:.0f}s")
    v = pic.value_status
    if v:
        tap = v.get("tap", {})
        lat = [cp["csms_latency_ms"]["p50"] for cp in v.get("charge_points", [])
               if cp.get("csms_latency_ms", {}).get("p50") is not None]
        value = Text.assemble(("value channel: ", "bold"), (f"{v.get('connected', 0)} chargers connected", "green"),
                              f"   frames up/down: {sum(cp.get('frames_up', 0) for cp in v.get('charge_points', []))}/"
                              f"{sum(cp.get('frames_down', 0) for cp in v.get('charge_points', []))}"
                              f"   tap: {json.dumps(tap)}"
                              f"   CSMS p50: {max(lat) if lat else '-'} ms")
    else:
        value = Text("value channel: (no status yet)")
    events = Panel("\n".join(pic.events) or "(none yet)", title="events and black-box snapshots")
    fault = Text.assemble(("scripted fault: ", "bold"), (pic.fault_stage, "yellow"))
    return Group(Text(title, style="bold"), value, health, fault, cps, meters, sensors, events)
