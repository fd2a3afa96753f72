"""Charge-point state from the tap, and the billing cross-check (both pure reducers).

Why this exists: the health channel sees every OCPP frame the value channel forwarded (already
redacted) and must publish, per charge point, what an O&M engineer asks first: is it connected,
what is it (vendor, model, firmware), what are its connectors doing, is it charging, is the CSMS
answering, how often does it drop. And it must check the charger's billing meter against the
gateway's own meter on that charger's feed.

:class:`ChargePointTracker` is a reducer: ``apply(TapRecord) -> [event]``. It never does I/O and
never reads a clock: times are the tap records' ``time_ns`` (the gateway's clock when the frame
was forwarded), so they line up with the sampler's meter timestamps. It understands OCPP 1.6 and
2.0.1 (2.1 messages that keep the 2.0.1 shape are understood too):

- BootNotification request (vendor, model, firmware, serial) and its CALLRESULT (status,
  heartbeat interval), matched by the CALL's unique id;
- StatusNotification (1.6 ``connectorId/status/errorCode``; 2.0.1 ``evseId/connectorId/
  connectorStatus``). A connector entering ``Faulted`` or a new non-``NoError`` error code is a
  ``fault`` event (once per transition, not per repeated notification);
- StartTransaction / StopTransaction (1.6; the transaction id comes from the CALLRESULT matched
  through the CALL's unique id) and TransactionEvent Started/Updated/Ended (2.0.1);
- MeterValues and meter values inside transaction messages: ``Energy.Active.Import.Register``
  (the default measurand) in Wh or kWh (1.6 string values; 2.0.1 numbers with ``unitOfMeasure``
  and its power-of-ten ``multiplier``); per-phase and signed values are ignored;
- Heartbeat, connection events and the value channel's periodic ``stats`` record (CSMS latency
  percentiles, reconnects).

A frame that does not parse, or whose payload has an unexpected shape, is counted
(``unparsed_frames``) and otherwise ignored: the tap is informational and never trusted to be
well-formed.

:class:`BillingCrossCheck` compares, per transaction, the charger-reported energy with the
energy the gateway's own meter on that charger's feed counted between the same two instants
(linearly interpolated between 1 Hz samples). See docs/health.md.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.tap import TapRecord
from appliance.ocppj import FrameError, MessageType, parse_frame

__all__ = ["BillingCrossCheck", "ChargePointTracker", "energy_register_wh"]

ENERGY_MEASURAND = "Energy.Active.Import.Register"
MAX_PENDING_CALLS = 256
_CONNECTION_DOWN = {"disconnect", "charger_closed"}
_UPSTREAM_DOWN = {"upstream_closed", "upstream_failed"}


# --------------------------------------------------------------------------------------------
# Meter values (pure)
# --------------------------------------------------------------------------------------------


def _sampled_energy_wh(sv: Mapping[str, Any]) -> float | None:
    """Wh of one sampledValue if it is the (total) imported active energy register, else None."""
    if sv.get("measurand", ENERGY_MEASURAND) != ENERGY_MEASURAND:
        return None
    if sv.get("phase") not in (None, ""):
        return None  # per-phase registers do not add up to what the charger bills
    if sv.get("format") == "SignedData":
        return None  # 1.6: value is a signed blob, not a number
    raw = sv.get("value")
    try:
        value = float(raw) if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else None
    except ValueError:
        return None
    if value is None:
        return None
    uom = sv.get("unitOfMeasure")
    if isinstance(uom, Mapping):  # 2.0.1: {"unit": "kWh", "multiplier": 0}
        unit = uom.get("unit", "Wh")
        mult = uom.get("multiplier", 0)
        if isinstance(mult, int) and not isinstance(mult, bool):
            value *= 10.0**mult
    else:  # 1.6: "unit": "Wh" | "kWh" (default Wh)
        unit = sv.get("unit", "Wh")
    if unit == "kWh":
        return value * 1000.0
    if unit == "Wh":
        return value
    return None


def energy_register_wh(meter_values: Any) -> float | None:
    """The last ``Energy.Active.Import.Register`` (Wh) in a ``meterValue`` list, or None."""
    found = None
    if not isinstance(meter_values, list):
        return None
    for mv in meter_values:
        if not isinstance(mv, Mapping) or not isinstance(mv.get("sampledValue"), list):
            continue
        for sv in mv["sampledValue"]:
            if isinstance(sv, Mapping):
                wh = _sampled_energy_wh(sv)
                if wh is not None:
                    found = wh
    return found


# --------------------------------------------------------------------------------------------
# Per charge point state
# --------------------------------------------------------------------------------------------


@dataclass
class _Transaction:
    tx_id: str
    connector: str | None
    started_ns: int
    energy_start_wh: float | None
    energy_wh: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.tx_id,
            "connector": self.connector,
            "started_ns": self.started_ns,
            "energy_start_wh": self.energy_start_wh,
            "energy_wh": self.energy_wh,
        }


@dataclass
class _ChargePoint:
    cp_id: str
    connected: bool = False
    subprotocol: str | None = None
    boot: dict[str, Any] = field(
        default_factory=lambda: {"vendor": None, "model": None, "firmware": None, "serial": None}
    )
    boot_status: str | None = None
    boot_ns: int | None = None
    connectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    transactions: dict[str, _Transaction] = field(default_factory=dict)
    heartbeat_interval_s: int | None = None
    last_frame_ns: int | None = None
    last_heartbeat_ns: int | None = None
    energy_register_wh: float | None = None
    csms_latency_ms: dict[str, Any] | None = None
    reconnects: int = 0
    connects: int = 0
    upstream_losses: int = 0
    faults: int = 0
    unparsed_frames: int = 0
    pending: OrderedDict[str, tuple[str, Any, int]] = field(default_factory=OrderedDict)


class ChargePointTracker:
    """``apply(record) -> [event]``; ``state(cp_id)``; ``changed()`` for publishing."""

    def __init__(self) -> None:
        self._cps: dict[str, _ChargePoint] = {}
        self._changed: set[str] = set()

    # -- queries ----------------------------------------------------------------------------

    def cp_ids(self) -> list[str]:
        return sorted(self._cps)

    def changed(self) -> list[str]:
        """Charge points whose state changed since the previous call (sorted)."""
        out, self._changed = sorted(self._changed), set()
        return out

    def state(self, cp_id: str) -> dict[str, Any]:
        """JSON-able state of one charge point (docs/health.md, ``ocpp/{cp_id}/state``)."""
        cp = self._cps.get(cp_id) or _ChargePoint(cp_id)
        active = max(cp.transactions.values(), key=lambda t: t.started_ns, default=None)
        return {
            "cp_id": cp.cp_id,
            "connected": cp.connected,
            "subprotocol": cp.subprotocol,
            "boot": dict(cp.boot),
            "boot_status": cp.boot_status,
            "connectors": {k: dict(v) for k, v in sorted(cp.connectors.items())},
            "transaction": None if active is None else active.as_dict(),
            "transactions": {k: t.as_dict() for k, t in sorted(cp.transactions.items())},
            "heartbeat_interval_s": cp.heartbeat_interval_s,
            "last_frame_ns": cp.last_frame_ns,
            "last_heartbeat_ns": cp.last_heartbeat_ns,
            "energy_register_wh": cp.energy_register_wh,
            "csms_latency_ms": None if cp.csms_latency_ms is None else dict(cp.csms_latency_ms),
            "reconnects": cp.reconnects,
            "upstream_losses": cp.upstream_losses,
            "faults": cp.faults,
            "unparsed_frames": cp.unparsed_frames,
        }

    def totals(self) -> dict[str, dict[str, int]]:
        """``{cp_id: {reconnects, faults, upstream_losses}}`` for the SOH report."""
        return {
            k: {"reconnects": c.reconnects, "faults": c.faults, "upstream_losses": c.upstream_losses}
            for k, c in sorted(self._cps.items())
        }

    # -- the reducer ------------------------------------------------------------------------

    def apply(self, rec: TapRecord) -> list[dict[str, Any]]:
        cp = self._cps.get(rec.cp_id)
        if cp is None:
            cp = self._cps[rec.cp_id] = _ChargePoint(rec.cp_id)
        self._changed.add(rec.cp_id)
        if rec.event == "frame":
            return self._frame(cp, rec)
        if rec.event == "connect":
            cp.connected = True
            cp.connects += 1
            sub = rec.extra.get("subprotocol")
            cp.subprotocol = sub if isinstance(sub, str) else None
        elif rec.event in _CONNECTION_DOWN:
            cp.connected = False
            cp.pending.clear()
        elif rec.event in _UPSTREAM_DOWN:
            cp.upstream_losses += 1
        elif rec.event == "stats":
            self._stats(cp, rec.extra)
        return []

    @staticmethod
    def _stats(cp: _ChargePoint, extra: Mapping[str, Any]) -> None:
        lat = extra.get("csms_latency_ms")
        if isinstance(lat, Mapping):
            cp.csms_latency_ms = {k: lat.get(k) for k in ("n", "p50", "p95", "p99")}
        rc = extra.get("reconnects")
        if isinstance(rc, int) and not isinstance(rc, bool):
            cp.reconnects = rc
        connected = extra.get("connected")
        if isinstance(connected, bool):
            cp.connected = connected

    def _frame(self, cp: _ChargePoint, rec: TapRecord) -> list[dict[str, Any]]:
        cp.last_frame_ns = rec.time_ns
        if rec.frame is None or rec.truncated_from is not None:
            cp.unparsed_frames += 1
            return []
        try:
            f = parse_frame(rec.frame)
        except FrameError:
            cp.unparsed_frames += 1
            return []
        try:
            if f.type is MessageType.CALL and rec.direction == "up":
                return self._call_up(cp, rec, f.unique_id, f.action or "", f.payload)
            if f.type is MessageType.CALLRESULT and rec.direction == "down":
                pending = cp.pending.pop(f.unique_id, None)
                if pending is not None:
                    return self._result(cp, rec, pending, f.payload)
            elif f.type is MessageType.CALLERROR and rec.direction == "down":
                cp.pending.pop(f.unique_id, None)
        except (KeyError, TypeError, ValueError, AttributeError):
            # A payload that does not have the shape its action requires.
            cp.unparsed_frames += 1
        return []

    def _remember(self, cp: _ChargePoint, uid: str, action: str, payload: Any, t: int) -> None:
        cp.pending[uid] = (action, payload, t)
        while len(cp.pending) > MAX_PENDING_CALLS:
            cp.pending.popitem(last=False)

    def _call_up(
        self, cp: _ChargePoint, rec: TapRecord, uid: str, action: str, p: Any
    ) -> list[dict[str, Any]]:
        t = rec.time_ns
        if action == "BootNotification":
            if "chargingStation" in p:  # 2.0.1
                cs = p["chargingStation"]
                cp.boot = {
                    "vendor": cs.get("vendorName"),
                    "model": cs.get("model"),
                    "firmware": cs.get("firmwareVersion"),
                    "serial": cs.get("serialNumber"),
                }
            else:  # 1.6
                cp.boot = {
                    "vendor": p.get("chargePointVendor"),
                    "model": p.get("chargePointModel"),
                    "firmware": p.get("firmwareVersion"),
                    "serial": p.get("chargePointSerialNumber") or p.get("chargeBoxSerialNumber"),
                }
            cp.boot_ns = t
            self._remember(cp, uid, action, p, t)
        elif action == "Heartbeat":
            cp.last_heartbeat_ns = t
        elif action == "StatusNotification":
            return self._status(cp, t, p)
        elif action == "StartTransaction":  # 1.6: the id arrives in the CALLRESULT
            self._remember(cp, uid, action, p, t)
        elif action == "StopTransaction":
            return self._stop_16(cp, t, p)
        elif action == "TransactionEvent":
            return self._transaction_event(cp, t, p)
        elif action == "MeterValues":
            self._meter_values(cp, p)
        return []

    def _result(
        self, cp: _ChargePoint, rec: TapRecord, pending: tuple[str, Any, int], p: Any
    ) -> list[dict[str, Any]]:
        action, req, t_req = pending
        if action == "BootNotification":
            cp.boot_status = p.get("status")
            interval = p.get("interval")
            if isinstance(interval, int) and not isinstance(interval, bool):
                cp.heartbeat_interval_s = interval
        elif action == "StartTransaction":
            tx_id = str(p["transactionId"])
            meter_start = req.get("meterStart")
            start_wh = float(meter_start) if isinstance(meter_start, (int, float)) else None
            connector = str(req.get("connectorId")) if "connectorId" in req else None
            tx = _Transaction(tx_id, connector, t_req, start_wh, start_wh)
            cp.transactions[tx_id] = tx
            if start_wh is not None:
                cp.energy_register_wh = start_wh
            return [self._tx_event("transaction_started", cp, tx, t_req)]
        return []

    # -- StatusNotification --------------------------------------------------------------------

    def _status(self, cp: _ChargePoint, t: int, p: Any) -> list[dict[str, Any]]:
        if "connectorStatus" in p:  # 2.0.1
            key = f"{int(p['evseId'])}/{int(p['connectorId'])}"
            status, error = str(p["connectorStatus"]), None
        else:  # 1.6
            key = str(int(p["connectorId"]))
            status, error = str(p["status"]), str(p.get("errorCode", "NoError"))
        previous = cp.connectors.get(key, {})
        entry: dict[str, Any] = {"status": status, "error_code": error, "since_ns": t}
        if previous.get("status") == status:
            entry["since_ns"] = previous.get("since_ns", t)
        for src, dst in (("info", "info"), ("vendorErrorCode", "vendor_error_code")):
            if isinstance(p.get(src), str):
                entry[dst] = p[src]
        cp.connectors[key] = entry
        faulted = status == "Faulted"
        has_error = error not in (None, "NoError")
        was = (previous.get("status") == "Faulted", previous.get("error_code"))
        if (faulted and not was[0]) or (has_error and error != was[1]):
            cp.faults += 1
            event: dict[str, Any] = {
                "kind": "fault",
                "cp_id": cp.cp_id,
                "connector": key,
                "status": status,
                "error_code": error,
                "time_ns": t,
            }
            for k in ("info", "vendor_error_code"):
                if k in entry:
                    event[k] = entry[k]
            return [event]
        return []

    # -- transactions ---------------------------------------------------------------------------

    def _tx_event(self, kind: str, cp: _ChargePoint, tx: _Transaction, t: int, **more: Any) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "kind": kind,
            "cp_id": cp.cp_id,
            "transaction_id": tx.tx_id,
            "connector": tx.connector,
            "started_ns": tx.started_ns,
            "energy_start_wh": tx.energy_start_wh,
            "time_ns": t,
        }
        ev.update(more)
        return ev

    def _ended(
        self, cp: _ChargePoint, tx: _Transaction, t: int, end_wh: float | None, reason: Any
    ) -> dict[str, Any]:
        if end_wh is not None:
            tx.energy_wh = end_wh
            cp.energy_register_wh = end_wh
        charged = None
        if tx.energy_start_wh is not None and tx.energy_wh is not None:
            charged = round(tx.energy_wh - tx.energy_start_wh, 3)
        return self._tx_event(
            "transaction_ended",
            cp,
            tx,
            t,
            ended_ns=t,
            energy_end_wh=tx.energy_wh,
            charger_energy_wh=charged,
            reason=reason if isinstance(reason, str) else None,
        )

    def _stop_16(self, cp: _ChargePoint, t: int, p: Any) -> list[dict[str, Any]]:
        tx_id = str(p["transactionId"])
        meter_stop = p.get("meterStop")
        end_wh = float(meter_stop) if isinstance(meter_stop, (int, float)) else None
        if end_wh is None:
            end_wh = energy_register_wh(p.get("transactionData"))
        tx = cp.transactions.pop(tx_id, None)
        if tx is None:
            # Started before we were watching (health restart): energy over it is unknown.
            tx = _Transaction(tx_id, None, t, None)
        return [self._ended(cp, tx, t, end_wh, p.get("reason", "Local"))]

    def _transaction_event(self, cp: _ChargePoint, t: int, p: Any) -> list[dict[str, Any]]:
        info = p["transactionInfo"]
        tx_id = str(info["transactionId"])
        kind = p["eventType"]
        wh = energy_register_wh(p.get("meterValue"))
        if wh is not None:
            cp.energy_register_wh = wh
        evse = p.get("evse") if isinstance(p.get("evse"), Mapping) else None
        connector = None
        if evse is not None and "id" in evse:
            connector = f"{int(evse['id'])}/{int(evse.get('connectorId', 1))}"
        tx = cp.transactions.get(tx_id)
        if kind == "Started" or (tx is None and kind == "Updated"):
            # Without a meter value in Started, the last register value seen is the best start.
            start = wh if wh is not None else cp.energy_register_wh
            known_start = kind == "Started"
            tx = _Transaction(tx_id, connector, t, start if known_start else None, wh)
            cp.transactions[tx_id] = tx
            return [self._tx_event("transaction_started", cp, tx, t)] if known_start else []
        if kind == "Updated":
            assert tx is not None
            if wh is not None:
                tx.energy_wh = wh
            return []
        if kind == "Ended":
            tx = cp.transactions.pop(tx_id, None) or _Transaction(tx_id, connector, t, None)
            return [self._ended(cp, tx, t, wh, info.get("stoppedReason", "Local"))]
        raise ValueError(f"unknown eventType {kind!r}")

    def _meter_values(self, cp: _ChargePoint, p: Any) -> None:
        wh = energy_register_wh(p.get("meterValue"))
        if wh is None:
            return
        cp.energy_register_wh = wh
        tx_id = p.get("transactionId")  # 1.6 only
        if tx_id is not None and str(tx_id) in cp.transactions:
            cp.transactions[str(tx_id)].energy_wh = wh
            return
        # 2.0.1 MeterValues carry an evseId, 1.6 without transactionId a connectorId.
        key = p.get("evseId", p.get("connectorId"))
        for tx in cp.transactions.values():
            if tx.connector is not None and key is not None and tx.connector.split("/")[0] == str(key):
                tx.energy_wh = wh


# --------------------------------------------------------------------------------------------
# Billing cross-check
# --------------------------------------------------------------------------------------------


@dataclass
class _Point:
    tx_id: str
    ts_ns: int
    wh: float | None = None
    gap_s: float | None = None  # distance to the nearest meter sample used


@dataclass
class _Check:
    start: _Point
    end: _Point | None = None
    charger_wh: float | None = None


class BillingCrossCheck:
    """Charger-reported energy vs the gateway's meter on that charger's feed, per transaction.

    ``feeds`` maps ``cp_id -> meter_name``. Feed it meter energy with :meth:`meter_energy` (or
    whole samples with :meth:`feed_sample`) and the tracker's transaction events with
    :meth:`on_event`; both return the ``billing_deviation`` / ``billing_check`` events that became
    decidable. The meter energy at an instant is interpolated linearly between the two samples
    around it; an instant after the newest sample waits for the next one.
    """

    def __init__(
        self,
        feeds: Mapping[str, str],
        *,
        abs_tolerance_wh: float = 50.0,
        rel_tolerance: float = 0.01,
        history: int = 600,
        max_gap_s: float = 30.0,
    ) -> None:
        self.feeds = dict(feeds)
        self.abs_tolerance_wh = abs_tolerance_wh
        self.rel_tolerance = rel_tolerance
        self.max_gap_s = max_gap_s
        self._history: dict[str, deque[tuple[int, float]]] = {
            cp: deque(maxlen=history) for cp in self.feeds
        }
        self._checks: dict[tuple[str, str], _Check] = {}
        self.last_results: dict[str, dict[str, Any]] = {}

    def feed_sample(self, ts_ns: int, meters: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Take ``energy_import`` (kWh, total) from telemetry meter dicts (``Sample.meters``)."""
        by_name = {m.get("name"): m for m in meters}
        events: list[dict[str, Any]] = []
        for cp_id, meter in self.feeds.items():
            m = by_name.get(meter)
            values = m.get("values") if m else None
            if not values:
                continue
            e = values.get("energy_import_total") or values.get("energy_import_L1")
            if e and e.get("q") == "ok" and isinstance(e.get("v"), (int, float)):
                scale = 1000.0 if e.get("unit") == "kWh" else 1.0
                events += self.meter_energy(cp_id, m.get("ts_ns", ts_ns), e["v"] * scale)
        return events

    def meter_energy(self, cp_id: str, ts_ns: int, wh: float) -> list[dict[str, Any]]:
        hist = self._history.get(cp_id)
        if hist is None:
            return []
        if hist and ts_ns <= hist[-1][0]:
            return []  # out of order or duplicate
        hist.append((ts_ns, float(wh)))
        return self._resolve(cp_id)

    def on_event(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        cp_id = event.get("cp_id")
        if cp_id not in self.feeds:
            return []
        key = (str(cp_id), str(event.get("transaction_id")))
        if event.get("kind") == "transaction_started":
            self._checks[key] = _Check(_Point(key[1], int(event["started_ns"])))
        elif event.get("kind") == "transaction_ended":
            check = self._checks.get(key)
            if check is None or event.get("charger_energy_wh") is None:
                self._checks.pop(key, None)
                return [self._skipped(key, event, "transaction start or charger energy unknown")]
            check.end = _Point(key[1], int(event["ended_ns"]))
            check.charger_wh = float(event["charger_energy_wh"])
        return self._resolve(key[0])

    def _interpolate(self, cp_id: str, point: _Point) -> bool:
        hist = self._history[cp_id]
        if point.wh is not None:
            return True
        if not hist or hist[-1][0] < point.ts_ns:
            return False
        times = [t for t, _ in hist]
        i = bisect.bisect_left(times, point.ts_ns)
        t1, e1 = hist[i]
        if t1 == point.ts_ns or i == 0:
            point.wh, point.gap_s = e1, (t1 - point.ts_ns) / 1e9
            return True
        t0, e0 = hist[i - 1]
        point.wh = e0 + (e1 - e0) * (point.ts_ns - t0) / (t1 - t0)
        point.gap_s = max(point.ts_ns - t0, t1 - point.ts_ns) / 1e9
        return True

    def _skipped(self, key: tuple[str, str], event: Mapping[str, Any], reason: str) -> dict[str, Any]:
        return {"kind": "billing_check_skipped", "cp_id": key[0], "transaction_id": key[1], "reason": reason}

    def _resolve(self, cp_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key in [k for k in self._checks if k[0] == cp_id]:
            check = self._checks[key]
            self._interpolate(cp_id, check.start)
            if check.end is None or not self._interpolate(cp_id, check.end):
                continue
            del self._checks[key]
            if check.start.wh is None or check.end.wh is None:
                continue
            gaps = [g for g in (check.start.gap_s, check.end.gap_s) if g is not None]
            meter_wh = check.end.wh - check.start.wh
            charger_wh = check.charger_wh or 0.0
            tolerance = max(self.abs_tolerance_wh, self.rel_tolerance * abs(meter_wh))
            result = {
                "cp_id": cp_id,
                "transaction_id": key[1],
                "meter": self.feeds[cp_id],
                "started_ns": check.start.ts_ns,
                "ended_ns": check.end.ts_ns,
                "charger_wh": round(charger_wh, 3),
                "meter_wh": round(meter_wh, 3),
                "deviation_wh": round(charger_wh - meter_wh, 3),
                "tolerance_wh": round(tolerance, 3),
                "meter_gap_s": round(max(gaps), 3) if gaps else None,
            }
            self.last_results[cp_id] = result
            if max(gaps, default=0.0) > self.max_gap_s:
                out.append({"kind": "billing_check_skipped", **result, "reason": "meter samples too far apart"})
            elif abs(charger_wh - meter_wh) > tolerance:
                out.append({"kind": "billing_deviation", **result})
        return out
