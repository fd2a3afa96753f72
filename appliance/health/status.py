"""The health channel's own verdict for ``omgw status``: "up" or "degraded", with reasons.

Sans-I/O: :class:`StatusTracker` is fed observations with the time they were made (sampler ticks,
uplink connectivity, tap counters) and :func:`assess` turns a status document into a state and
reasons. Neither reads a clock or touches a socket; ``health/run.py`` does that.

The rules (docs/operations.md, "Status and metrics") are chosen so that a healthy gateway with no
charger plugged in is "up": silence on the tap is only suspicious while the health side believes a
charger is connected, because the value channel sends a ``stats`` record for every charge point it
knows every ``tap_stats_interval_s``, but sends nothing at all when it has never seen a charger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Reason codes (stable: the fleet rollout and dashboards match on them).
UPLINK_DOWN = "uplink_down"
BLACKBOX_WRITE_FAILING = "blackbox_write_failing"
DEVICE_MISSING = "device_missing"
SAMPLER_STALLED = "sampler_stalled"
TAP_SILENT = "tap_silent"
TAP_LOSS = "tap_loss"


@dataclass(frozen=True)
class StatusRules:
    uplink_down_after_s: float = 60.0  # disconnected (or never connected) for longer than this
    missing_cycles: int = 5  # a meter/sensor missing in this many consecutive sampler cycles
    sampler_stall_intervals: float = 5.0  # no tick for this many sample intervals (at least 5 s)
    tap_silent_intervals: float = 3.0  # x the value side's tap_stats_interval_s, while a charger is connected
    tap_loss_window_s: float = 300.0  # new tap losses (gaps, sender drops, overflow) within this window


@dataclass
class DeviceState:
    kind: str  # "meter" | "sensor"
    quality: str = "unknown"  # ok | partial | missing | the sensor's quality
    reason: str | None = None
    missing_cycles: int = 0  # consecutive cycles without a usable reading


def meter_quality(entry: dict[str, Any]) -> tuple[str, str | None]:
    """One telemetry meter entry -> (quality, reason): ok, partial (some values not ok) or missing."""
    if entry.get("missing") is not None or not entry.get("values"):
        return "missing", entry.get("missing")
    bad = {k: v for k, v in entry["values"].items() if v.get("q") != "ok"}
    if not bad:
        return "ok", None
    if len(bad) == len(entry["values"]):
        return "missing", next(iter(bad.values())).get("reason") or next(iter(bad.values())).get("q")
    return "partial", f"{len(bad)} value(s) not ok"


@dataclass
class StatusTracker:
    """Remembers what a one-shot status document cannot see: durations and consecutive counts."""

    started_s: float
    devices: dict[str, DeviceState] = field(default_factory=dict)
    last_sample_s: float | None = None
    uplink_down_since_s: float | None = None  # None while connected
    tap_last_datagram_s: float | None = None
    _tap_received: int = 0
    _tap_losses: int = 0
    _tap_loss_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.uplink_down_since_s = self.started_s  # not connected until the uplink says so

    def note_sample(self, meters: list[dict[str, Any]], sensors: list[dict[str, Any]], now_s: float) -> None:
        self.last_sample_s = now_s
        for kind, entries in (("meter", meters), ("sensor", sensors)):
            for e in entries:
                if kind == "meter":
                    q, reason = meter_quality(e)
                    usable = q != "missing"
                else:
                    q, reason = str(e.get("q", "unknown")), e.get("reason")
                    usable = q == "ok"
                d = self.devices.setdefault(f"{kind}:{e.get('name')}", DeviceState(kind))
                d.quality, d.reason = q, reason
                d.missing_cycles = 0 if usable else d.missing_cycles + 1

    def note_uplink(self, connected: bool, now_s: float) -> None:
        if connected:
            self.uplink_down_since_s = None
        elif self.uplink_down_since_s is None:
            self.uplink_down_since_s = now_s

    def note_tap(self, stats: dict[str, int], now_s: float) -> None:
        if stats.get("received", 0) != self._tap_received:
            self._tap_received = stats.get("received", 0)
            self.tap_last_datagram_s = now_s
        losses = stats.get("lost", 0) + stats.get("sender_dropped", 0) + stats.get("overflow", 0)
        if losses > self._tap_losses:
            self._tap_loss_times.append(now_s)
        self._tap_losses = losses

    def tap_losses_within(self, window_s: float, now_s: float) -> int:
        self._tap_loss_times = [t for t in self._tap_loss_times if now_s - t <= window_s]
        return len(self._tap_loss_times)


def assess(status: dict[str, Any], rules: StatusRules = StatusRules()) -> tuple[str, list[str]]:
    """The health channel's state from its status document (the fields ``HealthChannel.status`` writes).

    Each reason is ``code: detail``; the state is "degraded" when there is at least one.
    """
    reasons: list[str] = []
    up = status.get("uplink", {})
    down_s = up.get("down_for_s")
    if down_s is not None and down_s > rules.uplink_down_after_s:
        reasons.append(f"{UPLINK_DOWN}: not connected for {down_s:.0f} s")
    bb = status.get("blackbox", {})
    if bb.get("write_failing"):
        reasons.append(f"{BLACKBOX_WRITE_FAILING}: {bb.get('errors', 0)} error(s)")
    for name, d in sorted(status.get("devices", {}).items()):
        if d.get("missing_cycles", 0) >= rules.missing_cycles:
            reasons.append(f"{DEVICE_MISSING}: {name} missing for {d['missing_cycles']} cycles"
                           + (f" ({d['reason']})" if d.get("reason") else ""))
    smp = status.get("sampler", {})
    age = smp.get("last_sample_age_s")
    interval = float(smp.get("interval_s") or 1.0)
    stall = max(5.0, rules.sampler_stall_intervals * interval)
    if (age is None and status.get("uptime_s", 0) > stall) or (age is not None and age > stall):
        reasons.append(f"{SAMPLER_STALLED}: no sample for {age if age is not None else status.get('uptime_s')} s")
    tap = status.get("tap", {})
    silent = tap.get("silent_for_s")
    limit = rules.tap_silent_intervals * float(tap.get("stats_interval_s") or 10.0)
    if tap.get("chargers_connected", 0) > 0 and silent is not None and silent > limit:
        reasons.append(f"{TAP_SILENT}: no tap datagram for {silent:.0f} s with "
                       f"{tap['chargers_connected']} charger(s) connected (is the value channel running?)")
    if tap.get("losses_in_window", 0) > 0:
        reasons.append(f"{TAP_LOSS}: tap records lost in the last {rules.tap_loss_window_s:.0f} s")
    return ("degraded" if reasons else "up"), reasons


__all__ = ["StatusRules", "StatusTracker", "DeviceState", "assess", "meter_quality"]
