"""The 1 Hz sampler: every tick, read every meter and sensor and the gateway internals once.

Why this exists: telemetry is only useful if its cadence is trustworthy and one broken device
cannot blank out the rest. Guarantees:

- **Drift-free cadence** from :class:`~appliance.health.schedule.TickSchedule`: ticks are anchored
  on the monotonic clock; after a stall the missed ticks are skipped and counted (``seq`` jumps by
  the number skipped), never run back to back.
- **Per-device isolation.** Sensors and each Modbus bus are read concurrently. Meters that share
  a bus are read one after the other (an RS-485 line carries one transaction at a time, so
  concurrent reads would only queue on the bus lock and eat each other's timeouts); each meter read
  is bounded by ``device_timeout_s`` from the moment it starts, and the whole bus by the cycle
  budget (``cycle_budget_s``, default 90 % of the interval). A timeout or a driver error becomes a
  *missing* entry with its reason; the other devices' values are unaffected.
- **No pile-up.** A sensor read runs in a worker thread that cannot be cancelled; if it is still
  running at the next tick, that tick reports the sensor missing ("previous read still running")
  instead of starting a second one.
- **Bus cycles.** ``cycle_begin()``/``cycle_end()`` are called on every bus around each tick, so
  a dead unit costs its timeout once per tick (see drivers/modbus/bus.py).

The payload format (``Sample.to_payload()``) is documented in docs/health.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from appliance.health.schedule import TickSchedule
from appliance.logfmt import get_logger
from drivers.i2c.errors import I2cError
from drivers.i2c.reading import ClimateReading, dew_point_c
from drivers.modbus.errors import ModbusError
from drivers.modbus.meter import Meter
from drivers.modbus.reading import MeterReading

__all__ = ["SCHEMA_VERSION", "Sample", "Sampler", "climate_to_dict", "meter_to_dict", "missing_meter"]

log = get_logger("health.sampler")

SCHEMA_VERSION = 1


class ClimateSource(Protocol):
    name: str

    async def read(self) -> ClimateReading: ...


class CycleBus(Protocol):
    def cycle_begin(self) -> None: ...

    def cycle_end(self) -> float: ...


def _iso(ts_ns: int) -> str:
    dt = datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ts_ns // 1_000_000) % 1000:03d}Z"


def _value_key(quantity: str, phase: str | None) -> str:
    return quantity if phase is None else f"{quantity}_{phase}"


def meter_to_dict(reading: MeterReading) -> dict[str, Any]:
    """Telemetry form of one meter reading: ``values = {quantity_phase: {v, unit, q[, reason]}}``."""
    values: dict[str, Any] = {}
    for v in reading.values:
        entry: dict[str, Any] = {"v": v.value, "unit": v.unit, "q": str(v.quality)}
        if v.detail:
            entry["reason"] = v.detail
        values[_value_key(str(v.quantity), None if v.phase is None else str(v.phase))] = entry
    return {
        "name": reading.meter,
        "model": reading.model,
        "unit_id": reading.unit_id,
        "ts_ns": reading.timestamp_ns,
        "values": values,
    }


def missing_meter(meter: Meter, reason: str) -> dict[str, Any]:
    """A meter that produced no reading at all this tick."""
    return {
        "name": meter.name,
        "model": meter.regmap.model,
        "unit_id": meter.unit_id,
        "values": None,
        "missing": reason,
    }


def climate_to_dict(reading: ClimateReading) -> dict[str, Any]:
    """Telemetry form of a climate reading; ``dew_point_c`` only when temperature and RH are OK."""
    dew = None
    if reading.ok and reading.temperature_c is not None and reading.humidity_rh is not None:
        dew = round(dew_point_c(reading.temperature_c, reading.humidity_rh), 2)
    out: dict[str, Any] = {
        "name": reading.sensor,
        "model": reading.model,
        "address": reading.address,
        "ts_ns": reading.timestamp_ns,
        "temperature_c": reading.temperature_c,
        "humidity_rh": reading.humidity_rh,
        "pressure_hpa": reading.pressure_hpa,
        "dew_point_c": dew,
        "q": reading.quality.value,
    }
    if reading.detail:
        out["reason"] = reading.detail
    return out


def _missing_sensor(sensor: Any, reason: str, quality: str = "missing") -> dict[str, Any]:
    return {
        "name": getattr(sensor, "name", repr(sensor)),
        "model": getattr(sensor, "model", None),
        "address": getattr(sensor, "address", None),
        "temperature_c": None,
        "humidity_rh": None,
        "pressure_hpa": None,
        "dew_point_c": None,
        "q": quality,
        "reason": reason,
    }


@dataclass(frozen=True)
class Sample:
    """Everything read in one tick. ``meters``/``sensors`` are in configuration order."""

    seq: int
    ts_ns: int  # wall clock at the start of the tick
    tick_lateness_s: float
    meters: list[dict[str, Any]]
    sensors: list[dict[str, Any]]
    gateway: dict[str, Any]
    skipped: int = 0  # ticks skipped just before this one
    duration_s: float = 0.0  # how long reading took
    readings: tuple[MeterReading, ...] = field(default=(), compare=False, repr=False)

    def to_payload(self) -> dict[str, Any]:
        """The ``omgw/v1/{gateway_id}/telemetry`` payload (schema 1, docs/health.md)."""
        return {
            "schema": SCHEMA_VERSION,
            "seq": self.seq,
            "ts": _iso(self.ts_ns),
            "ts_ns": self.ts_ns,
            "lateness_ms": round(self.tick_lateness_s * 1e3, 3),
            "skipped": self.skipped,
            "meters": self.meters,
            "sensors": self.sensors,
            "gateway": self.gateway,
        }


class Sampler:
    """See the module docstring. ``await sampler.run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        meters: Sequence[Meter],
        sensors: Sequence[ClimateSource],
        internals: Callable[[], dict[str, Any]] | None,
        *,
        on_sample: Callable[[Sample], None],
        interval_s: float = 1.0,
        device_timeout_s: float = 0.8,
        cycle_budget_s: float | None = None,
        clock_mono: Callable[[], float] = time.monotonic,
        clock_ns: Callable[[], int] = time.time_ns,
        bus_cycles: Sequence[CycleBus] | None = None,
    ) -> None:
        if device_timeout_s <= 0:
            raise ValueError("device_timeout_s must be positive")
        self.meters = list(meters)
        self.sensors = list(sensors)
        self.internals = internals
        self.on_sample = on_sample
        self.interval_s = float(interval_s)
        self.device_timeout_s = device_timeout_s
        self._cycle_budget_s = cycle_budget_s
        self._mono = clock_mono
        self._ns = clock_ns
        if bus_cycles is None:
            seen: dict[int, CycleBus] = {}
            for m in self.meters:
                if hasattr(m.bus, "cycle_begin") and hasattr(m.bus, "cycle_end"):
                    seen.setdefault(id(m.bus), m.bus)  # type: ignore[arg-type]
            bus_cycles = list(seen.values())
        self.bus_cycles = list(bus_cycles)
        # Meters grouped by bus, in configuration order within each bus.
        self._groups: dict[int, list[int]] = {}
        for i, m in enumerate(self.meters):
            self._groups.setdefault(id(m.bus), []).append(i)
        self.schedule = TickSchedule(self.interval_s, clock_mono())
        self._new_interval: float | None = None
        self._sensor_tasks: dict[int, asyncio.Task[ClimateReading]] = {}
        self.device_failures: dict[str, int] = {}  # missing device readings per device name
        self.samples = 0

    @property
    def cycle_budget_s(self) -> float:
        return self._cycle_budget_s if self._cycle_budget_s is not None else 0.9 * self.interval_s

    def set_interval(self, interval_s: float) -> None:
        """Change the sampling interval; takes effect after the current tick (re-anchored)."""
        if not interval_s > 0:
            raise ValueError("interval must be positive")
        self._new_interval = float(interval_s)

    def stats(self) -> dict[str, Any]:
        out = self.schedule.stats()
        out["samples"] = self.samples
        out["device_failures"] = dict(self.device_failures)
        return out

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.schedule = TickSchedule(self.interval_s, self._mono())
        try:
            while not stop.is_set():
                delay = self.schedule.next_deadline() - self._mono()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                    if self._mono() < self.schedule.next_deadline():
                        continue  # woke a hair early
                tick_no, lateness, skipped = self.schedule.on_tick(self._mono())
                if skipped:
                    log.warning("sample_ticks_skipped", skipped=skipped, lateness_s=round(lateness, 3))
                sample = await self.sample_once(tick_no, lateness, skipped)
                self.on_sample(sample)
                if self._new_interval is not None:
                    self.interval_s, self._new_interval = self._new_interval, None
                    self.schedule.set_interval(self.interval_s, self._mono())
        finally:
            for t in self._sensor_tasks.values():
                t.cancel()

    async def sample_once(self, seq: int, lateness_s: float = 0.0, skipped: int = 0) -> Sample:
        """Read everything once (also usable without :meth:`run`, e.g. for ``omgw status``)."""
        ts_ns = self._ns()
        t0 = self._mono()
        for bus in self.bus_cycles:
            bus.cycle_begin()
        try:
            meter_out: list[dict[str, Any] | None] = [None] * len(self.meters)
            readings: list[MeterReading] = []
            jobs = [self._read_bus(idx, meter_out, readings, t0) for idx in self._groups.values()]
            jobs_s = [self._read_sensor(i, s) for i, s in enumerate(self.sensors)]
            results = await asyncio.gather(self._read_internals(), *jobs_s, *jobs)
        finally:
            for bus in self.bus_cycles:
                bus.cycle_end()
        gateway = results[0]
        sensors = list(results[1 : 1 + len(self.sensors)])
        self.samples += 1
        return Sample(
            seq=seq,
            ts_ns=ts_ns,
            tick_lateness_s=lateness_s,
            meters=[m for m in meter_out if m is not None],
            sensors=sensors,
            gateway=gateway,
            skipped=skipped,
            duration_s=self._mono() - t0,
            readings=tuple(readings),
        )

    def _failed(self, name: str) -> None:
        self.device_failures[name] = self.device_failures.get(name, 0) + 1

    async def _read_bus(
        self,
        indexes: list[int],
        out: list[dict[str, Any] | None],
        readings: list[MeterReading],
        t0: float,
    ) -> None:
        for i in indexes:
            meter = self.meters[i]
            left = self.cycle_budget_s - (self._mono() - t0)
            if left <= 0:
                self._failed(meter.name)
                out[i] = missing_meter(meter, "not read: cycle budget exhausted by the meters before it")
                continue
            timeout = min(self.device_timeout_s, left)
            try:
                reading = await asyncio.wait_for(meter.read(), timeout)
            except TimeoutError:
                self._failed(meter.name)
                out[i] = missing_meter(meter, f"timeout: no complete reading within {timeout:.3g} s")
            except ModbusError as e:  # Meter.read maps these per request; a bare one means the bus
                self._failed(meter.name)
                out[i] = missing_meter(meter, f"{type(e).__name__}: {e}")
            except Exception as e:  # noqa: BLE001 - the sampler is the boundary for one device
                self._failed(meter.name)
                log.exception("meter_read_error", meter=meter.name)
                out[i] = missing_meter(meter, f"error: {type(e).__name__}: {e}")
            else:
                readings.append(reading)
                out[i] = meter_to_dict(reading)

    async def _read_sensor(self, i: int, sensor: ClimateSource) -> dict[str, Any]:
        name = getattr(sensor, "name", repr(sensor))
        running = self._sensor_tasks.get(i)
        if running is not None and not running.done():
            self._failed(name)
            return _missing_sensor(sensor, "previous read still running", "timeout")
        task = asyncio.ensure_future(sensor.read())
        # A read that finishes after its tick timed out: collect its outcome so it is not
        # reported as "exception never retrieved"; the failure was already counted.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._sensor_tasks[i] = task
        try:
            # shield: a timeout must not cancel the task (its thread keeps running anyway); the
            # next tick sees it still running and does not pile up another read.
            reading = await asyncio.wait_for(asyncio.shield(task), self.device_timeout_s)
        except TimeoutError:
            self._failed(name)
            return _missing_sensor(sensor, f"timeout: no reading within {self.device_timeout_s:.3g} s", "timeout")
        except I2cError as e:
            self._failed(name)
            return _missing_sensor(sensor, f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - the sampler is the boundary for one device
            self._failed(name)
            log.exception("sensor_read_error", sensor=name)
            return _missing_sensor(sensor, f"error: {type(e).__name__}: {e}")
        if not reading.ok:
            self._failed(name)
        return climate_to_dict(reading)

    async def _read_internals(self) -> dict[str, Any]:
        if self.internals is None:
            return {}
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.internals), self.device_timeout_s)
        except TimeoutError:
            return {"unavailable": {"*": f"internals: no answer within {self.device_timeout_s:.3g} s"}}
        except Exception as e:  # noqa: BLE001 - never let a /proc quirk stop telemetry
            log.exception("internals_error")
            return {"unavailable": {"*": f"internals: {type(e).__name__}: {e}"}}
