"""State of health: window counters turned into the 60 s ``soh`` payload (pure).

Why this exists: telemetry says what is happening now; the SOH report says what is wearing out
or going wrong over time. :class:`HealthAccumulator` is fed by the sampler (every sample), the
relay driver, the charge-point tracker, the black box and the internals; :meth:`snapshot` returns
the payload and starts a new window. It never reads a clock: every call takes ``now`` (monotonic
seconds) or the sample's own times. Every value is documented in docs/health.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HealthAccumulator", "SohLimits"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SohLimits:
    relay_rated_cycles: int = 100_000  # mechanical life; configure per relay datasheet
    cabinet_temp_max_c: float = 45.0
    cabinet_temp_min_c: float = -20.0
    cabinet_rh_max: float = 85.0
    dew_margin_warn_c: float = 3.0
    max_rate_c_per_min: float = 5.0
    max_rate_rh_per_min: float = 20.0
    temp_range_c: tuple[float, float] = (-40.0, 85.0)
    rh_range: tuple[float, float] = (0.0, 100.0)
    stuck_samples: int = 300  # identical T and RH for this many consecutive OK samples


@dataclass
class _Comm:
    reads: int = 0
    errors: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "errors": self.errors,
            "error_rate": round(self.errors / self.reads, 4) if self.reads else None,
            "last_error": self.last_error,
        }


@dataclass
class _SensorWindow:
    last: tuple[float, float, float] | None = None  # (t_s, temperature, rh)
    same: int = 0
    stuck: bool = False
    out_of_range: int = 0
    rate_violations: int = 0
    max_rate_c_per_min: float = 0.0
    temp_exceed_s: float = 0.0
    cold_exceed_s: float = 0.0
    rh_exceed_s: float = 0.0
    min_dew_margin_c: float | None = None
    condensation_risk_s: float = 0.0
    temp_min: float | None = None
    temp_max: float | None = None
    rh_max: float | None = None


@dataclass
class HealthAccumulator:
    limits: SohLimits = field(default_factory=SohLimits)
    window_start_s: float | None = None
    _meters: dict[str, _Comm] = field(default_factory=dict)
    _sensors: dict[str, _Comm] = field(default_factory=dict)
    _climate: dict[str, _SensorWindow] = field(default_factory=dict)
    _relays: dict[str, int] = field(default_factory=dict)
    _samples: int = 0
    _skipped_ticks: int = 0
    _last_sample_s: float | None = None
    _blackbox_bytes: tuple[int, int] | None = None  # (first, latest) in window
    _process_write: tuple[int, int] | None = None
    _internals: dict[str, Any] = field(default_factory=dict)
    _boot_ids: list[str] = field(default_factory=list)
    _chargers: dict[str, dict[str, int]] = field(default_factory=dict)
    _charger_base: dict[str, dict[str, int]] = field(default_factory=dict)
    _bus_stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- feeding ----------------------------------------------------------------------------------

    def add_sample(self, sample: Any, now_s: float) -> None:
        """One :class:`~appliance.health.sampler.Sample` (or anything with the same fields)."""
        if self.window_start_s is None:
            self.window_start_s = now_s
        dt = 0.0 if self._last_sample_s is None else max(0.0, now_s - self._last_sample_s)
        self._last_sample_s = now_s
        self._samples += 1
        self._skipped_ticks += getattr(sample, "skipped", 0)
        for m in sample.meters:
            c = self._meters.setdefault(m["name"], _Comm())
            c.reads += 1
            values = m.get("values")
            bad = [f"{k}: {v.get('reason') or v.get('q')}" for k, v in (values or {}).items() if v.get("q") != "ok"]
            if values is None or bad:
                c.errors += 1
                c.last_error = m.get("missing") if values is None else bad[0]
        for s in sample.sensors:
            c = self._sensors.setdefault(s["name"], _Comm())
            c.reads += 1
            if s.get("q") in ("missing", "crc", "timeout"):
                c.errors += 1
                c.last_error = s.get("reason") or s.get("q")
            self._climate_point(s, now_s, dt)
        if sample.gateway:
            self.set_internals(sample.gateway)

    def _climate_point(self, s: Mapping[str, Any], now_s: float, dt: float) -> None:
        w = self._climate.setdefault(s["name"], _SensorWindow())
        t, rh = s.get("temperature_c"), s.get("humidity_rh")
        if t is None or rh is None:
            return
        lim = self.limits
        if s.get("q") == "out_of_range" or not (
            lim.temp_range_c[0] <= t <= lim.temp_range_c[1] and lim.rh_range[0] <= rh <= lim.rh_range[1]
        ):
            w.out_of_range += 1
            return
        if s.get("q") == "stuck":
            w.stuck = True
        if w.last is not None:
            last_t, last_temp, last_rh = w.last
            span = now_s - last_t
            if span > 0:
                rate_t = abs(t - last_temp) / span * 60
                rate_rh = abs(rh - last_rh) / span * 60
                w.max_rate_c_per_min = max(w.max_rate_c_per_min, rate_t)
                if rate_t > lim.max_rate_c_per_min or rate_rh > lim.max_rate_rh_per_min:
                    w.rate_violations += 1
            if (t, rh) == (last_temp, last_rh):
                w.same += 1
                if w.same + 1 >= lim.stuck_samples:
                    w.stuck = True
            else:
                w.same = 0
        w.last = (now_s, t, rh)
        if s.get("q") not in (None, "ok"):
            return  # suspicious values: plausibility only, no exposure accounting
        w.temp_min = t if w.temp_min is None else min(w.temp_min, t)
        w.temp_max = t if w.temp_max is None else max(w.temp_max, t)
        w.rh_max = rh if w.rh_max is None else max(w.rh_max, rh)
        if t > lim.cabinet_temp_max_c:
            w.temp_exceed_s += dt
        if t < lim.cabinet_temp_min_c:
            w.cold_exceed_s += dt
        if rh > lim.cabinet_rh_max:
            w.rh_exceed_s += dt
        dew = s.get("dew_point_c")
        if dew is not None:
            margin = t - dew
            w.min_dew_margin_c = margin if w.min_dew_margin_c is None else min(w.min_dew_margin_c, margin)
            if margin < lim.dew_margin_warn_c:
                w.condensation_risk_s += dt

    def set_relay_cycles(self, relay: str, cycles: int) -> None:
        """Lifetime switching cycles of a relay (persisted by the relay driver's owner)."""
        self._relays[relay] = cycles

    def set_bus_stats(self, bus: str, stats: Mapping[str, Any]) -> None:
        """``ModbusBus.stats.as_dict()`` (cumulative; reported as is)."""
        self._bus_stats[bus] = {
            k: stats.get(k) for k in ("requests", "ok", "timeouts", "crc_errors", "frame_errors", "exceptions", "retries")
        }

    def set_blackbox_stats(self, stats: Mapping[str, Any]) -> None:
        b = stats.get("bytes_written")
        if isinstance(b, int):
            first = self._blackbox_bytes[0] if self._blackbox_bytes else b
            self._blackbox_bytes = (first, b)

    def set_internals(self, internals: Mapping[str, Any]) -> None:
        self._internals = dict(internals)
        wb = internals.get("write_bytes")
        if isinstance(wb, int):
            first = self._process_write[0] if self._process_write else wb
            self._process_write = (first, wb)

    def set_boot_history(self, boot_ids: Iterable[str]) -> None:
        """Distinct boot ids seen so far, oldest first (persisted by the caller in state_dir)."""
        self._boot_ids = list(boot_ids)

    def set_chargers(self, totals: Mapping[str, Mapping[str, int]]) -> None:
        """``ChargePointTracker.totals()``: lifetime counters; the window reports the increase."""
        for cp, t in totals.items():
            self._charger_base.setdefault(cp, dict(t))
            self._chargers[cp] = dict(t)

    # -- reporting ------------------------------------------------------------------------------

    def snapshot(self, now_s: float, ts_ns: int | None = None) -> dict[str, Any]:
        """The SOH payload for the window ending at ``now_s``; then a new window starts."""
        start = self.window_start_s if self.window_start_s is not None else now_s
        lim = self.limits
        sensors = {}
        for name, w in sorted(self._climate.items()):
            comm = self._sensors.get(name, _Comm())
            sensors[name] = {
                **comm.as_dict(),
                "plausibility": {
                    "stuck": w.stuck,
                    "out_of_range": w.out_of_range,
                    "rate_violations": w.rate_violations,
                    "max_rate_c_per_min": round(w.max_rate_c_per_min, 2),
                },
                "temperature_min_c": w.temp_min,
                "temperature_max_c": w.temp_max,
                "humidity_max_rh": w.rh_max,
                "temp_exceed_s": round(w.temp_exceed_s, 1),
                "cold_exceed_s": round(w.cold_exceed_s, 1),
                "rh_exceed_s": round(w.rh_exceed_s, 1),
                "dew_margin_min_c": None if w.min_dew_margin_c is None else round(w.min_dew_margin_c, 2),
                "condensation_risk_s": round(w.condensation_risk_s, 1),
            }
        for name, comm in self._sensors.items():
            sensors.setdefault(name, {**comm.as_dict(), "plausibility": None})
        relays = {
            r: {
                "cycles": c,
                "rated_cycles": lim.relay_rated_cycles,
                "life_used": round(c / lim.relay_rated_cycles, 4),
            }
            for r, c in sorted(self._relays.items())
        }
        def delta(pair: tuple[int, int] | None) -> int | None:
            return None if pair is None else pair[1] - pair[0]

        chargers = {}
        for cp, t in sorted(self._chargers.items()):
            base = self._charger_base.get(cp, t)
            chargers[cp] = {
                "reconnects": t.get("reconnects", 0),
                "reconnects_window": t.get("reconnects", 0) - base.get("reconnects", 0),
                "faults": t.get("faults", 0),
                "faults_window": t.get("faults", 0) - base.get("faults", 0),
                "upstream_losses": t.get("upstream_losses", 0),
            }
        gw = self._internals
        out = {
            "schema": SCHEMA_VERSION,
            "ts_ns": ts_ns,
            "window_s": round(now_s - start, 3),
            "samples": self._samples,
            "skipped_ticks": self._skipped_ticks,
            "relays": relays,
            "meters": {n: c.as_dict() for n, c in sorted(self._meters.items())},
            "buses": dict(sorted(self._bus_stats.items())),
            "sensors": sensors,
            "storage": {
                "blackbox_bytes_written": delta(self._blackbox_bytes),
                "process_write_bytes": delta(self._process_write),
                "process_write_bytes_total": None if self._process_write is None else self._process_write[1],
                "disk_used_ratio": gw.get("disk_used_ratio"),
            },
            "system": {
                "uptime_s": gw.get("uptime_s"),
                "boot_id": gw.get("boot_id"),
                "boots_seen": len(self._boot_ids),
                "reboots": max(0, len(self._boot_ids) - 1),
                "clock_synced": gw.get("clock_synced"),
                "cpu_temp_c": gw.get("cpu_temp_c"),
            },
            "chargers": chargers,
        }
        self._new_window(now_s)
        return out

    def _new_window(self, now_s: float) -> None:
        self.window_start_s = now_s
        self._samples = 0
        self._skipped_ticks = 0
        self._meters.clear()
        self._sensors.clear()
        for w in self._climate.values():
            keep_last, keep_same, keep_stuck = w.last, w.same, w.stuck
            w.__init__()  # type: ignore[misc]
            w.last, w.same = keep_last, keep_same
            # a sensor stays stuck until its values change again
            w.stuck = keep_stuck and keep_same > 0
        if self._blackbox_bytes:
            self._blackbox_bytes = (self._blackbox_bytes[1], self._blackbox_bytes[1])
        if self._process_write:
            self._process_write = (self._process_write[1], self._process_write[1])
        self._charger_base = {cp: dict(t) for cp, t in self._chargers.items()}
