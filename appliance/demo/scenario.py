"""``omgw demo``: the bench, a fleet of simulated chargers, one scripted fault, and the live view.

The chargers connect over ws:// to the value channel, which upgrades each leg to TLS + Basic auth
(security profile 2) towards the simulated CSMS. Meanwhile the health channel samples meters on a
simulated RS-485 line and simulated I2C sensors and publishes to a local mosquitto (mTLS); the view
subscribes there like an O&M centre would.

Scripted fault: ``FaultScript.cp_id`` stops sending (stays connected, silent) ``hang_at_s`` after the
start; the health channel's watchdog sees it silent for ``hang_after_s``, power-cycles it through the
(mock-GPIO) relay and publishes ``watchdog_power_cycle``; the demo plays the relay's part for the
simulated charger (power off: its TCP connection dies; power on: it boots again); the black box cuts
a snapshot whose manifest arrives on ``blackbox/<id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import random
import signal
import ssl
import sys
import time
from typing import Any

from ocpp.exceptions import OCPPError
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .bench import Bench, BenchError, FaultScript
from .chargers import connect_charger
from .view import BenchPicture, render


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


class Fleet:
    """The simulated chargers; ``power_off``/``power_on`` are what the relay does to the faulty one."""

    def __init__(self, bench: Bench, stop: asyncio.Event, fault: FaultScript, pic: BenchPicture,
                 headless: bool) -> None:
        self.bench, self.stop, self.fault, self.pic, self.headless = bench, stop, fault, pic, headless
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.sockets: dict[str, Any] = {}
        self.t0 = time.monotonic()
        self.powered = True
        self.failure: BaseException | None = None

    def start(self) -> None:
        self.t0 = time.monotonic()
        for cp_id, version in self.bench.fleet:
            hang = self.t0 + self.fault.hang_at_s if cp_id == self.fault.cp_id else None
            self.tasks[cp_id] = self._spawn(cp_id, version, hang)

    def power_off(self, cp_id: str) -> None:
        if cp_id not in self.tasks or not self.powered:
            return
        self.powered = False
        ws = self.sockets.pop(cp_id, None)
        if ws is not None:
            ws.transport.abort()  # power cut: no closing handshake, the TCP connection just dies
        self.tasks[cp_id].cancel()
        self._log(f"event=relay_off cp={cp_id} (simulated charger loses power)")
        self.pic.fault_stage = f"watchdog power-cycles {cp_id}: relay off, the charger loses power"

    def power_on(self, cp_id: str) -> None:
        if cp_id not in self.tasks or self.powered:
            return
        self.powered = True
        version = dict(self.bench.fleet)[cp_id]
        self.tasks[cp_id] = self._spawn(cp_id, version, None)
        self._log(f"event=relay_on cp={cp_id} (simulated charger boots again)")
        self.pic.fault_stage = f"relay on again: {cp_id} boots; waiting for the black-box snapshot"

    def _spawn(self, cp_id: str, version: str, hang_at: float | None) -> asyncio.Task[None]:
        task = asyncio.create_task(self._life(cp_id, version, hang_at), name=f"charger-{cp_id}")
        task.add_done_callback(self._check)
        return task

    def _check(self, task: asyncio.Task[None]) -> None:
        """A charger task that dies of an unexpected error is a demo bug: end the demo and show it."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.failure = exc
            self.stop.set()

    async def close(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    def _log(self, line: str) -> None:
        if self.headless:
            _say(line)

    async def _life(self, cp_id: str, version: str, hang_at: float | None) -> None:
        """Boot, then sessions with pauses; reconnect after a drop as a real charger would."""
        while not self.stop.is_set():
            try:
                cp, ws, task = await connect_charger(self.bench.charger_url, cp_id, version)
            except (OSError, TimeoutError, InvalidHandshake):  # gateway not up yet, or refusing for now
                await asyncio.sleep(2)
                continue
            self.sockets[cp_id] = ws
            try:
                await cp.boot()
                await cp.status("Available")
                self._log(f"charger={cp_id} action=BootNotification protocol={version}")
                while not self.stop.is_set():
                    if hang_at is not None and time.monotonic() >= hang_at:
                        self._log(f"charger={cp_id} scripted_fault=hang (connected, silent; the watchdog "
                                  f"acts after {self.fault.hang_after_s:g} s)")
                        self.pic.fault_stage = (f"{cp_id} hangs since {time.strftime('%H:%M:%S')} (connected, "
                                                f"silent); the watchdog acts after {self.fault.hang_after_s:g} s")
                        await self.stop.wait()
                        return
                    await asyncio.sleep(random.uniform(1.0, 2.5))
                    await cp.heartbeat()
                    tag = f"04{random.randrange(16**8):08X}"
                    self._log(f"charger={cp_id} action={'StartTransaction' if version == 'ocpp1.6' else 'TransactionEvent'}")
                    await cp.session(tag, wh_start=random.randrange(10_000), samples=3, interval_s=1.0)
            except (OSError, TimeoutError, ConnectionClosed, OCPPError) as e:
                # A dropped leg (the gateway restarted it, a CSMS error): reconnect like a real charger.
                self._log(f"charger={cp_id} event=link_lost error={type(e).__name__}")
                await asyncio.sleep(1)
            finally:
                task.cancel()
                self.sockets.pop(cp_id, None)
                with contextlib.suppress(OSError, TimeoutError, ConnectionClosed):
                    await asyncio.wait_for(ws.close(), 2)


def _subscribe(bench: Bench, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[tuple[str, Any]]) -> Any:
    """A paho MQTT 5 client (its own thread) on ``omgw/v1/<gw>/#``; messages go to ``queue``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    assert bench.ca is not None and bench.observer is not None
    ctx = ssl.create_default_context(cafile=str(bench.ca.cert_file))
    ctx.load_cert_chain(str(bench.observer.cert), str(bench.observer.key))
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-view", protocol=mqtt.MQTTv5)
    c.tls_set_context(ctx)
    c.reconnect_delay_set(1, 2)

    def on_connect(cl: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            cl.subscribe(f"{bench.topic_root}/#", qos=1)

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        try:
            payload = json.loads(m.payload)
        except ValueError:
            return
        loop.call_soon_threadsafe(queue.put_nowait, (m.topic, payload))

    c.on_connect, c.on_message = on_connect, on_message
    c.connect_async("127.0.0.1", bench.broker_port)
    c.loop_start()
    return c


async def _poll_value_status(bench: Bench, pic: BenchPicture) -> None:
    """The value channel's own view (its status socket): connections, frame counts, tap drops."""
    while True:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(bench.work / "value.sock")), 1)
            try:
                pic.value_status = json.loads(await asyncio.wait_for(reader.read(), 1))
            finally:
                writer.close()
        except (OSError, ValueError, TimeoutError):
            pass  # not up yet, or stopping: keep the last picture
        await asyncio.sleep(1.0)


async def run_scenario(duration: float | None, chargers: int, fault: FaultScript | None = None) -> int:
    fault = fault or FaultScript()
    headless = not sys.stdout.isatty()
    if not headless and importlib.util.find_spec("rich") is None:
        print("omgw demo: the live view needs rich (./dev demo installs it); printing log lines instead")
        headless = True
    t_start = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bench = Bench(chargers=chargers, fault=fault)
    fleet: Fleet | None = None
    client = None
    live = None
    poller: asyncio.Task[None] | None = None
    try:
        await bench.start()
        _say(f"omgw demo: bench in {bench.work}: {chargers} chargers (ws://) -> value 127.0.0.1:{bench.value_port} "
             f"-> CSMS {bench.csms.url if bench.csms else ''} (TLS, profile 2); health -> mosquitto "
             f"127.0.0.1:{bench.broker_port} (mTLS); scripted fault: {fault.cp_id} hangs at t={fault.hang_at_s:g}s. "
             "Ctrl-C to stop.")
        _say(f"omgw demo: technician page {bench.web_url} user {bench.web_user} password {bench.web_password} "
             f"(certificate from the demo CA {bench.ca.cert_file if bench.ca else ''})")
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        client = _subscribe(bench, loop, queue)
        pic = BenchPicture(bench.topic_root, fault_stage=f"{fault.cp_id} will hang at t={fault.hang_at_s:g} s")
        fleet = Fleet(bench, stop, fault, pic, headless)
        fleet.start()
        title = f"omgw demo — gateway {bench.topic_root.split('/')[-1]} on a simulated bench (Ctrl-C to stop)"
        if not headless:
            from rich.live import Live

            live = Live(render(pic, 0, title), refresh_per_second=4, screen=False)
            live.start()
        poller = asyncio.create_task(_poll_value_status(bench, pic))
        deadline = None if duration is None else t_start + duration
        drawn = 0.0
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if dead := bench.dead_children():
                raise BenchError("; ".join(dead))
            try:
                topic, payload = await asyncio.wait_for(queue.get(), 0.25)
            except TimeoutError:
                topic, payload = "", None
            if payload is not None:
                for line in pic.update(topic, payload):
                    if headless:
                        _say(line)
                if "/blackbox/" in topic and fault.cp_id in str(payload.get("trigger")):
                    pic.fault_stage = f"done: {fault.cp_id} back online, snapshot {payload.get('snapshot_id')}"
                if topic.endswith("/event") and payload.get("kind") == "watchdog_power_cycle":
                    cp = payload.get("cp") or payload.get("cp_id")
                    if payload.get("phase") == "decided":
                        fleet.power_off(cp)
                    elif payload.get("phase") in ("done", "interrupted", "failed"):
                        fleet.power_on(cp)
            if live is not None and time.monotonic() - drawn >= 0.25:  # Live repaints 4 times a second
                drawn = time.monotonic()
                live.update(render(pic, drawn - t_start, title))
        summary = (f"omgw demo: done after {time.monotonic() - t_start:.0f} s: telemetry={pic.telemetry_count} "
                   f"transactions={len(pic.transactions_seen)} chargers_online="
                   f"{sum(1 for s in pic.chargers.values() if s.get('connected'))}")
        if fleet.failure is not None:
            raise fleet.failure
        if live is not None:
            live.stop()
            live = None
        _say(summary)
        for cp in pic.value_status.get("charge_points", []):
            print(f"  {cp['cp_id']} {cp['subprotocol'] or '-':10} frames up {cp['frames_up']:4} down "
                  f"{cp['frames_down']:4} invalid {cp['invalid_frames']} csms p50 {cp['csms_latency_ms']['p50']} ms")
        if pic.value_status:
            print(f"  tap: {json.dumps(pic.value_status.get('tap', {}))}", flush=True)
        return 0
    except BenchError as e:
        print(f"omgw demo: {e}", file=sys.stderr)
        return 1
    finally:
        if poller is not None:
            poller.cancel()
        if live is not None:
            live.stop()
        if client is not None:
            client.disconnect()
            client.loop_stop()
        if fleet is not None:
            await fleet.close()
        await bench.close()
        _say(f"omgw demo: stopped every child process and removed {bench.work}")
