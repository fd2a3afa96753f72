"""The bench's charger simulator: an ``ocpp`` library charge point whose supply follows the relay.

Why this exists: the watchdog test needs a charger that hangs, loses power when the gateway's relay
opens and boots again when it closes, exactly like the real one on the lab bench. The supply is read
from ``power_input`` (a bench-host GPIO behind the relay contact) on the lab bench; on the simulated
bench the relay is a mock pin inside the gateway, so the supply follows the gateway's own
``watchdog_power_cycle`` events (``decided`` = relay opens, ``done``/``interrupted`` = closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from appliance.demo.chargers import Charger16, Charger201, connect_charger

from .bench import Bench


class BenchCharger:
    """``async with BenchCharger(bench, "CP001") as ch: await ch.cp.heartbeat()``.

    On entry it connects, boots and reports Available. ``hang()`` keeps the connection open and
    goes silent; power loss drops the TCP connection without a closing handshake; power return
    reconnects and boots (``boots`` counts BootNotifications sent)."""

    def __init__(self, bench: Bench, cp_id: str):
        self.bench = bench
        self.spec = bench.charger(cp_id)
        self.cp_id = cp_id
        self.cp: Charger16 | Charger201 | None = None
        self.ws: Any = None
        self._task: asyncio.Task[None] | None = None
        self._power_task: asyncio.Task[None] | None = None
        self.powered = True
        self.hung = False
        self.boots = 0
        self.power_log: list[tuple[float, bool]] = []  # (time.time(), powered)
        self.connected = asyncio.Event()

    async def __aenter__(self) -> BenchCharger:
        await self.connect()
        self._power_task = asyncio.create_task(self._follow_power())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._power_task is not None:
            self._power_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._power_task
        await self._drop(clean=True)

    async def connect(self, boot: bool = True, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.cp, self.ws, self._task = await connect_charger(self.bench.gateway.charger_url, self.cp_id,
                                                                     self.spec.version, open_timeout=10)
                break
            except (OSError, TimeoutError, InvalidHandshake) as e:  # refused (502/503) while the CSMS is down
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.cp_id} could not connect within {timeout:g} s: {e!r}") from e
                await asyncio.sleep(0.5)
        self.hung = False
        self.connected.set()
        if boot:
            await self.cp.boot()
            self.boots += 1
            await self.cp.status("Available")

    def hang(self) -> None:
        """Firmware hang: the connection stays up (TCP and WebSocket pings still answered by the
        stack), the charge point sends and answers nothing."""
        self.hung = True
        if self._task is not None:
            self._task.cancel()

    async def reboot(self) -> None:
        """The charger restarts (a hang ends): a clean close, then connect and boot again."""
        await self._drop(clean=True)
        await self.connect()

    async def _drop(self, clean: bool) -> None:
        self.connected.clear()
        if self._task is not None:
            self._task.cancel()
        if self.ws is not None:
            if clean:
                with contextlib.suppress(OSError, TimeoutError, ConnectionClosed):
                    await asyncio.wait_for(self.ws.close(), 3)
            else:
                self.ws.transport.abort()  # power cut: no closing handshake
        self.ws = None

    async def power_off(self) -> None:
        if self.powered:
            self.powered = False
            self.power_log.append((time.time(), False))
            await self._drop(clean=False)

    async def power_on(self) -> None:
        if not self.powered:
            self.powered = True
            self.power_log.append((time.time(), True))
            await self.connect()

    async def _follow_power(self) -> None:
        if self.spec.power_input is not None:
            await self._follow_input(self.spec.power_input)
            return
        seen = 0
        since = time.time()
        while True:
            events = [e for e in self.bench.broker.messages("event", since)
                      if e.get("kind") == "watchdog_power_cycle" and e.get("cp") == self.cp_id]
            for e in events[seen:]:
                if e.get("phase") == "decided":
                    await self.power_off()
                elif e.get("phase") in ("done", "interrupted", "failed"):
                    await self.power_on()
            seen = len(events)
            await asyncio.sleep(0.02)

    async def _follow_input(self, pin: str) -> None:  # lab bench: the relay contact on a bench-host GPIO
        from gpiozero import DigitalInputDevice  # type: ignore[import-untyped]

        supply = DigitalInputDevice(pin, pull_up=False)
        try:
            while True:
                if supply.is_active and not self.powered:
                    await self.power_on()
                elif not supply.is_active and self.powered:
                    await self.power_off()
                await asyncio.sleep(0.01)
        finally:
            supply.close()


async def heartbeat_rtts(ch: BenchCharger, n: int, gap_s: float = 0.0) -> list[float]:
    """Round-trip times (s) of ``n`` sequential Heartbeats through the gateway to the CSMS."""
    assert ch.cp is not None
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await ch.cp.heartbeat()
        out.append(time.perf_counter() - t0)
        if gap_s:
            await asyncio.sleep(gap_s)
    return out
