"""``omgw health``: wires the health channel together (Channel B).

Everything the health side sees goes through one function, :meth:`HealthChannel.record`: it is
appended to the black box (where the snapshot recorder watches for faults) and, for what the O&M
centre subscribes to, published. The tap is only read; nothing here can write to the value process
or the CSMS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..blackbox.record import Record, RecordKind
from ..blackbox.snapshot import SnapshotArchive, SnapshotRecorder
from ..blackbox.store import BlackBox
from ..config import Config, HealthConfig
from ..logfmt import get_logger
from ..metrics import MetricsServer, start_metrics
from ..sdnotify import SystemdNotifier
from ..statussock import StatusSocket
from ..tap import TapReceiver, TapRecord
from .commands import CommandDispatcher, CommandFailed, NonceStore, TrustedKey, keyring, redact
from .cpstate import BillingCrossCheck, ChargePointTracker
from .internals import GatewayInternals
from .mqtt import Command, MqttSettings, MqttUplink
from .payloads import stamp
from .sampler import Sample, Sampler
from .soh import HealthAccumulator
from .spool import Spool
from .status import StatusRules, StatusTracker, assess
from .topics import TopicError, Topics
from .web.data import TelemetryHistory
from .web.server import WebServer, start_web
from .web.source import ChannelSource

log = get_logger("health")


def _open_meters(h: HealthConfig) -> tuple[list[Any], list[Any]]:
    """One ModbusBus per port (RS-485 is half duplex), shared by the meters on it."""
    from drivers.modbus.bus import ModbusBus
    from drivers.modbus.meter import Meter
    from drivers.modbus.regmap import load_map

    by_port: dict[str, list[Any]] = defaultdict(list)
    for m in h.meters:
        by_port[m.port].append(m)
    buses, meters = [], []
    for port, cfgs in by_port.items():
        first = cfgs[0]
        if port.startswith("tcp://"):
            from pymodbus.client import AsyncModbusTcpClient

            url = urlsplit(port)
            bus = ModbusBus(AsyncModbusTcpClient(url.hostname or "localhost", port=url.port or 502, retries=0),
                            name=port, timeout_s=first.timeout_s, retries=first.retries)
        else:
            bus = ModbusBus.serial(port, baud=first.baud, parity=first.parity, stopbits=first.stopbits,
                                   timeout_s=first.timeout_s, retries=first.retries)
        buses.append(bus)
        meters += [Meter(m.name, load_map(m.model), m.unit_id, bus) for m in cfgs]
    return buses, meters


def _open_sensors(h: HealthConfig, smbus_factory: Any = None) -> list[Any]:
    from drivers.i2c.bme280 import Bme280
    from drivers.i2c.bus import I2cBus
    from drivers.i2c.sht3x import Sht3x
    from drivers.i2c.sht4x import Sht4x

    classes = {"sht3x": Sht3x, "sht4x": Sht4x, "bme280": Bme280}
    buses: dict[Any, Any] = {}
    sensors = []
    for s in h.sensors:
        if s.bus not in buses:
            if smbus_factory is not None:
                factory = smbus_factory(s.bus)
            elif s.bus == "sim":  # the simulated bench: every sensor on "sim" gets its chip model
                from drivers.sim.i2c import SimulatedBme280, SimulatedSht3x, SimulatedSht4x, SimulatedSMBus

                models = {"sht3x": SimulatedSht3x, "sht4x": SimulatedSht4x, "bme280": SimulatedBme280}
                sim = SimulatedSMBus({x.address: models[x.model]() for x in h.sensors if x.bus == "sim"})
                factory = (lambda b: lambda: b)(sim)
            elif s.sim_socket is not None:  # the HIL bench: a bench process serves the chips on a socket
                from drivers.sim.i2c_server import RemoteSMBus

                factory = (lambda p: lambda: RemoteSMBus(p))(s.sim_socket)
            else:
                from smbus2 import SMBus

                factory = (lambda n: lambda: SMBus(n))(int(s.bus))
            buses[s.bus] = I2cBus(factory, number=s.bus if isinstance(s.bus, int) else 0)
        sensors.append(classes[s.model](buses[s.bus], s.address, name=s.name))
    return sensors


class HealthChannel:
    def __init__(self, config: Config, *, smbus_factory: Any = None, clock: Any = time.time_ns):
        assert config.health is not None
        self.config = config
        self.h: HealthConfig = config.health
        self.gw = config.gateway
        self.clock = clock
        self.topics = Topics(self.gw.id, self.h.topic_prefix)
        self.seq: dict[str, int] = defaultdict(int)
        state = self.gw.state_dir
        bb = config.blackbox
        self.store = BlackBox(state / "blackbox", max_mb=bb.max_mb, segment_mb=bb.segment_mb,
                              flush_interval_s=bb.flush_interval_s, flush_bytes=bb.flush_bytes,
                              on_error=self._store_error)
        self.archive = SnapshotArchive(state / "blackbox" / "snapshots", keep_count=bb.snapshot_keep,
                                       keep_mb=bb.snapshot_max_mb)
        self.recorder = SnapshotRecorder(self.store, self.archive, self.gw.id, pre_s=bb.pre_s, post_s=bb.post_s,
                                         on_written=self._snapshot_written)
        self.tracker = ChargePointTracker()
        feeds = {m.feeds: m.name for m in self.h.meters if m.feeds}
        self.billing = BillingCrossCheck(feeds, abs_tolerance_wh=self.h.billing_tolerance_wh,
                                         rel_tolerance=self.h.billing_tolerance_rel)
        self.soh = HealthAccumulator()
        self.internals = GatewayInternals(state)
        self.spool = Spool(state / "spool", self.h.spool_mb)
        self.uplink = self._make_uplink()
        self.buses, self.meters = _open_meters(self.h)
        self.sensors = _open_sensors(self.h, smbus_factory)
        self.sampler = Sampler(self.meters, self.sensors, self.internals, on_sample=self._on_sample,
                               interval_s=self.h.sample_interval_s)
        c = config.commands
        keys = keyring(TrustedKey(k.kid, k.public_key, frozenset(k.allowed)) for k in c.keys)
        self.nonces = NonceStore(c.nonce_file or state / "nonces")
        self.dispatcher = CommandDispatcher(keys, self.gw.id, self.nonces, self._command_handlers(),
                                            audit=lambda rec: self.record(RecordKind.COMMAND, rec, publish=False),
                                            max_skew_s=c.max_skew_s)
        self.watchdog = self._make_watchdog()
        self._disconnected_since: dict[str, int] = {}
        self.receiver: TapReceiver | None = None
        self.notifier = SystemdNotifier()
        self._tasks: list[asyncio.Task[Any]] = []
        self.started_ns = time.time_ns()
        self.status_rules = StatusRules()
        self.status_tracker = StatusTracker(time.monotonic())
        self._status_socket = StatusSocket(self.h.status_socket, self.status)
        self._metrics: MetricsServer | None = None
        # The technician page (docs/web.md): fed here, served by health/web/ on this loop.
        self.web_history: TelemetryHistory | None = None
        self.web_events: deque[dict[str, Any]] = deque(maxlen=50)
        self.web_source: ChannelSource | None = None
        self._web: WebServer | None = None
        if self.h.web is not None:
            self.web_history = TelemetryHistory(self.h.web.history_minutes, self.h.sample_interval_s)
            self.web_source = ChannelSource(self, self.web_history, self.web_events)

    # ---- relay watchdog -------------------------------------------------------------------------

    def _make_watchdog(self) -> Any:
        w = self.config.watchdog
        if not w.enabled:
            if "OMGW_SIM_GPIO_LOOPBACK" in os.environ:
                log.warning("sim_gpio_loopback_ignored", reason="watchdog not enabled")
            return None
        from gpiozero import Device

        from drivers.gpio.relay import ChargerRelay

        from ..watchdog.policy import PowerCyclePolicy, WatchdogSettings
        from ..watchdog.run import RelayWatchdog

        Device.ensure_pin_factory()  # honours GPIOZERO_PIN_FACTORY ("mock" on the simulated bench)
        factory = Device.pin_factory
        if "OMGW_SIM_GPIO_LOOPBACK" in os.environ:
            # The simulated bench wires the relay back to the alive input (docs/watchdog.md); refused
            # (SimulationRefused, the process exits) unless the factory is gpiozero's MockFactory.
            from drivers.sim.gpio import LOOPBACK_ENV, loop_back_from_env

            loop_back_from_env(factory, os.environ)
            log.warning("sim_gpio_loopback", spec=os.environ[LOOPBACK_ENV], relay_pin=w.relay_pin,
                        alive_pin=w.alive_pin)
        cycles_file = self.gw.state_dir / f"relay-{w.cp_id}.cycles"
        try:
            initial = int(cycles_file.read_text().strip() or 0)
        except (OSError, ValueError):
            initial = 0
        relay = ChargerRelay(w.relay_pin, pin_factory=factory, name=f"relay-{w.cp_id}",
                             active_high=w.relay_active_high, initial_cycles=initial)

        def on_decision(ev: dict[str, Any]) -> None:
            self.record(RecordKind.EVENT, ev)
            if ev.get("kind") == "watchdog_power_cycle" and ev.get("phase") in ("done", "interrupted"):
                with contextlib.suppress(OSError):  # lifetime cycles vs rated life (SOH)
                    tmp = cycles_file.with_suffix(".tmp")
                    tmp.write_text(f"{relay.cycles}\n")
                    tmp.replace(cycles_file)

        alive = None
        if w.alive_pin is not None:
            from drivers.gpio.inputs import DigitalInput

            alive = DigitalInput(f"alive-{w.cp_id}", w.alive_pin, pin_factory=factory,
                                 loop=asyncio.get_running_loop())
        settings = WatchdogSettings(hang_after_s=w.hang_after_s, offline_after_s=w.offline_after_s,
                                    require_alive_low=w.require_alive_low, off_s=w.off_s,
                                    max_cycles_per_hour=w.max_cycles_per_hour)
        assert w.cp_id is not None
        return RelayWatchdog(w.cp_id, PowerCyclePolicy(settings), relay, self._observe_charger, on_decision,
                             alive_input=alive)

    def _observe_charger(self) -> Any:
        from ..watchdog.policy import ChargerObservation

        cp_id = self.config.watchdog.cp_id
        assert cp_id is not None
        st = self.tracker.state(cp_id) if cp_id in self.tracker.cp_ids() else {}
        connected = bool(st.get("connected"))
        now = time.time_ns()
        if connected:
            self._disconnected_since.pop(cp_id, None)
        elif st:
            self._disconnected_since.setdefault(cp_id, now)
        return ChargerObservation(now_ns=now, connected=connected, last_frame_ns=st.get("last_frame_ns"),
                                  disconnected_since_ns=self._disconnected_since.get(cp_id),
                                  transaction_active=st.get("transaction") is not None, alive_input=None)

    # ---- uplink ---------------------------------------------------------------------------------

    def _make_uplink(self) -> Any:
        h = self.h
        if h.transport == "https":
            # Batches POSTed with mTLS; there is no inbound path, so remote commands need MQTT.
            from .https_uplink import HttpsSettings, HttpsUplink

            return HttpsUplink(HttpsSettings(url=h.url, ca_file=str(h.ca_file), cert_file=str(h.client_cert),
                                             key_file=str(h.client_key)), self.spool)
        url = urlsplit(h.url)
        tls = url.scheme == "mqtts"  # mqtt:// passed check-config only with allow_insecure
        opt = lambda path: None if path is None else str(path)  # noqa: E731
        settings = MqttSettings(host=url.hostname or "localhost", port=url.port or (8883 if tls else 1883),
                                gateway_id=self.gw.id, tls=tls,
                                ca_file=opt(h.ca_file), cert_file=opt(h.client_cert), key_file=opt(h.client_key),
                                topic_prefix=h.topic_prefix, bind_interface=h.bind_interface, version=__version__)
        return MqttUplink(settings, self.spool, on_command=self._on_command)

    def publish(self, topic: str, payload: dict[str, Any], *, name: str, retain: bool = False,
                ts_ns: int | None = None) -> None:
        """Stamp the common head (``schema``, ``seq`` per topic class, ``ts`` from ``ts_ns`` or now) and send.

        The head is stamped here and only here, so every payload carries one timestamp format
        (``payloads.iso_ts``); a ``schema``/``seq``/``ts`` the producer put in its dict is replaced.
        """
        payload = stamp(self.seq[name], self.clock() if ts_ns is None else ts_ns, payload)
        self.seq[name] += 1
        self.uplink.publish(topic, json.dumps(payload, separators=(",", ":"), default=str).encode(), retain=retain)

    # ---- the one path for everything the health side sees ---------------------------------------

    def record(self, kind: RecordKind, payload: dict[str, Any], *, publish: bool = True,
               time_ns: int | None = None) -> Record:
        rec = self.recorder.append(kind, payload, time_ns)
        if kind is RecordKind.EVENT:
            self.web_events.append({"ts_ns": rec.time_ns, **payload})
        if publish and kind is RecordKind.EVENT:
            self.publish(self.topics.event, payload, name="event", ts_ns=rec.time_ns)
        return rec

    def _store_error(self, kind: str, detail: str) -> None:
        log.error("blackbox_" + kind, detail=detail)
        with contextlib.suppress(Exception):
            self.publish(self.topics.event, {"kind": "blackbox_" + kind, "detail": detail}, name="event")

    def _snapshot_written(self, path: Path, manifest: dict[str, Any]) -> None:
        log.info("snapshot_written", path=str(path), id=manifest.get("snapshot_id"))
        self.publish(self.topics.blackbox(manifest["snapshot_id"]), manifest, name="blackbox_manifest")
        if hasattr(self.uplink, "upload_snapshot"):  # HTTPS: the archive itself goes to the endpoint
            self._tasks.append(asyncio.ensure_future(self._upload(path)))

    async def _upload(self, path: Path) -> None:
        try:
            await self.uplink.upload_snapshot(path)
        except Exception as e:  # noqa: BLE001 - the archive stays on the card; the manifest was sent
            log.warning("snapshot_upload_failed", path=str(path), error=repr(e))

    def _on_sample(self, sample: Sample) -> None:
        payload = sample.to_payload()
        self.record(RecordKind.TELEMETRY, payload, publish=False, time_ns=sample.ts_ns)
        self.publish(self.topics.telemetry, payload, name="telemetry", ts_ns=sample.ts_ns)
        self.soh.add_sample(sample, time.time())
        if self.web_history is not None and self.web_source is not None:
            self.web_history.add(payload)
            self.web_source.last_gateway = payload.get("gateway")
        self.status_tracker.note_sample(payload["meters"], payload["sensors"], time.monotonic())
        for ev in self.billing.feed_sample(sample.ts_ns, payload["meters"]):
            self.record(RecordKind.EVENT, ev)

    def _on_tap(self, rec: TapRecord) -> None:
        payload: dict[str, Any] = {"cp": rec.cp_id, "dir": rec.direction, "ev": rec.event}
        if rec.frame is not None:
            payload["f"] = rec.frame
        if rec.extra:
            payload["x"] = dict(rec.extra)
        self.record(RecordKind.OCPP, payload, publish=False, time_ns=rec.time_ns)
        for ev in self.tracker.apply(rec):
            self.record(RecordKind.EVENT, ev)
            for bev in self.billing.on_event(ev):
                self.record(RecordKind.EVENT, bev)

    async def _read_tap(self) -> None:
        assert self.receiver is not None
        async for dgram in self.receiver.datagrams():
            for rec in dgram.records:
                self._on_tap(rec)
            for cp_id in self.tracker.changed():
                try:
                    topic = self.topics.cp_state(cp_id)
                except TopicError:  # an id the topic tree cannot carry: recorded in the black box only
                    log.warning("cp_state_not_published", cp=cp_id, reason="id not valid as a topic level")
                    continue
                self.publish(topic, self.tracker.state(cp_id), name="cp_state", retain=True)

    async def _publish_soh(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.h.soh_interval_s)
            self.soh.set_blackbox_stats(self.store.stats())
            self.soh.set_chargers(self.tracker.totals())
            self.soh.set_internals(self.internals())
            self.soh.set_boot_history(self.boot_ids)
            for bus in self.buses:
                self.soh.set_bus_stats(bus.name, bus.stats.as_dict())
            if self.watchdog is not None:
                self.soh.set_relay_cycles(self.watchdog.relay.name, self.watchdog.relay.cycles)
            now_ns = time.time_ns()
            snap = self.soh.snapshot(now_ns / 1e9, now_ns)
            self.record(RecordKind.SOH, snap, publish=False, time_ns=now_ns)
            if self.web_source is not None:
                self.web_source.last_soh = snap
            self.publish(self.topics.soh, snap, name="soh", ts_ns=now_ns)

    # ---- commands -------------------------------------------------------------------------------

    def _on_command(self, cmd: Command) -> None:
        async def handle() -> None:
            reply = await self.dispatcher.handle(cmd.name, cmd.payload)
            if cmd.response_topic:
                reply = stamp(self.seq["command_reply"], self.clock(), reply)
                self.seq["command_reply"] += 1
                self.uplink.reply(cmd.response_topic, cmd.correlation_data,
                                  json.dumps(reply, separators=(",", ":"), default=str).encode())

        self._tasks.append(asyncio.create_task(handle()))

    def _command_handlers(self) -> dict[str, Any]:
        async def ping(args: dict[str, Any]) -> dict[str, Any]:
            return {"pong": True, "version": __version__, "time_ns": time.time_ns()}

        async def snapshot(args: dict[str, Any]) -> dict[str, Any]:
            self.recorder.request(args.get("reason", "remote command"))
            return {"requested": True}

        async def set_sample_interval(args: dict[str, Any]) -> dict[str, Any]:
            self.sampler.set_interval(float(args["interval_s"]))
            return {"interval_s": float(args["interval_s"])}

        async def get_config(args: dict[str, Any]) -> dict[str, Any]:
            return redact(self.config.model_dump(mode="json"))

        async def selftest(args: dict[str, Any]) -> dict[str, Any]:
            """Active checks a technician would do by hand; each is ok/failed with a reason."""
            checks: dict[str, dict[str, Any]] = {}

            def check(name: str, ok: bool, detail: Any = "") -> None:
                checks[name] = {"ok": bool(ok), "detail": detail}

            try:
                await asyncio.to_thread(self.store.flush)
                st = self.store.stats()
                check("blackbox_write", not st.get("write_failing"), {"errors": st.get("errors")})
            except Exception as e:  # noqa: BLE001 - a self-test reports, it does not fail
                check("blackbox_write", False, repr(e))
            for meter in self.meters:
                try:
                    reading = await asyncio.wait_for(meter.read(), 3)
                    bad = [v.name for v in reading.values if v.quality != "ok"]
                    check(f"meter:{meter.name}", not bad, {"not_ok": bad})
                except Exception as e:  # noqa: BLE001
                    check(f"meter:{meter.name}", False, repr(e))
            for sensor in self.sensors:
                try:
                    r = await asyncio.wait_for(sensor.read(), 3)
                    check(f"sensor:{sensor.name}", r.ok, r.detail)
                except Exception as e:  # noqa: BLE001
                    check(f"sensor:{sensor.name}", False, repr(e))
            internals = self.internals()
            free = internals.get("disk_free_bytes")
            check("disk_free", isinstance(free, int) and free > 50 * 2**20, {"free_bytes": free})
            check("clock_synced", internals.get("clock_synced") is True, internals.get("clock_synced"))
            check("tap", self.receiver is not None and self.receiver.received > 0,
                  {"datagrams": self.receiver.received if self.receiver else 0})
            return {"ok": all(c["ok"] for c in checks.values()), "checks": checks}

        async def read_registers(args: dict[str, Any]) -> dict[str, Any]:
            meter = next((m for m in self.meters if m.name == args.get("meter")), None)
            if meter is None:
                raise CommandFailed("bad_arguments", f"no meter {args.get('meter')!r}")
            regs = await meter.bus.read_registers(meter.unit_id, args["function"], args["address"], args["count"])
            return {"registers": list(regs)}

        async def relay_cycle(args: dict[str, Any]) -> dict[str, Any]:
            if self.watchdog is None or args.get("cp") != self.config.watchdog.cp_id:
                raise CommandFailed("bad_arguments", f"no relay for charge point {args.get('cp')!r}")
            event = await self.watchdog.manual_cycle(bool(args.get("force", False)))
            if event.get("kind") == "watchdog_refused":
                raise CommandFailed(event.get("code") or "refused", event.get("reason", ""))
            return event

        return {"ping": ping, "snapshot": snapshot, "relay_cycle": relay_cycle, "set_sample_interval": set_sample_interval,
                "get_config": get_config, "selftest": selftest, "read_registers": read_registers}

    # ---- status socket and metrics (omgw status, Prometheus) -----------------------------------

    def _observe_status(self) -> None:
        now = time.monotonic()
        up = self.uplink.stats()
        self.status_tracker.note_uplink(bool(up.get("connected", up.get("reachable"))), now)
        if self.receiver is not None:
            self.status_tracker.note_tap(self.receiver.stats(), now)

    async def _watch_status(self) -> None:
        """Once a second, so durations (uplink down since, tap silence) do not depend on being asked."""
        while True:
            self._observe_status()
            await asyncio.sleep(1.0)

    def status(self) -> dict[str, Any]:
        """The document served on ``health.status_socket`` and scraped by the metrics endpoint;
        ``state``/``reasons`` come from :func:`.status.assess` (docs/operations.md)."""
        self._observe_status()
        now = time.monotonic()
        t, rules = self.status_tracker, self.status_rules
        up = self.uplink.stats()
        connected = bool(up.get("connected", up.get("reachable")))
        sampler = self.sampler.stats()
        sampler["last_sample_age_s"] = None if t.last_sample_s is None else round(now - t.last_sample_s, 1)
        bb = self.store.stats()
        tap: dict[str, Any] = dict(self.receiver.stats()) if self.receiver is not None else {}
        tap["silent_for_s"] = round(now - (t.tap_last_datagram_s or t.started_s), 1)
        tap["stats_interval_s"] = self.config.value.tap_stats_interval_s if self.config.value else 10.0
        tap["chargers_connected"] = sum(1 for c in self.tracker.cp_ids() if self.tracker.state(c).get("connected"))
        tap["losses_in_window"] = t.tap_losses_within(rules.tap_loss_window_s, now)
        doc: dict[str, Any] = {
            "schema": 1,
            "channel": "health",
            "gateway_id": self.gw.id,
            "pid": os.getpid(),
            "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 1),
            "uplink": {"transport": self.h.transport, "connected": connected,
                       "down_for_s": None if t.uplink_down_since_s is None else round(now - t.uplink_down_since_s, 1),
                       "published": up.get("published", 0), "spooled": up.get("spooled", 0),
                       "spool_pending": up.get("spool_pending", 0), "dropped": up.get("dropped", 0)},
            "sampler": sampler,
            "devices": {name: {"kind": d.kind, "quality": d.quality, "reason": d.reason,
                               "missing_cycles": d.missing_cycles} for name, d in sorted(t.devices.items())},
            "blackbox": {"write_failing": bool(bb.get("write_failing")), "errors": bb.get("errors", 0),
                         "records": bb.get("records", 0), "dropped": bb.get("dropped", 0)},
            "tap": tap,
            "watchdog": None,
        }
        if self.watchdog is not None:
            doc["watchdog"] = {"cp_id": self.watchdog.cp_id, "state": self.watchdog.policy.state.value,
                               "failures": self.watchdog.policy.failures, "relay_cycles": self.watchdog.relay.cycles}
        doc["state"], doc["reasons"] = assess(doc, rules)
        return doc

    async def _start_status_socket(self) -> None:
        """Status socket and the metrics endpoint; either being unavailable is logged, never fatal."""
        self._tasks.append(asyncio.create_task(self._watch_status()))
        await self._status_socket.start()
        self._metrics = await start_metrics(self.h.metrics_listen, self.status, channel="health")
        if self.web_source is not None:
            self._web = await start_web(self.h.web, self.web_source)

    async def _stop_status_socket(self) -> None:
        if self._web is not None:
            await self._web.close()
        if self._metrics is not None:
            await self._metrics.close()
        await self._status_socket.stop()

    # ---- lifecycle ------------------------------------------------------------------------------

    def _remember_boot(self) -> list[str]:
        """Distinct boot ids seen on this card (oldest first): the SOH's reboot count survives restarts."""
        path = self.gw.state_dir / "boot_ids"
        try:
            ids = [x for x in path.read_text().split() if x]
        except OSError:
            ids = []
        current = self.internals().get("boot_id")
        if current and current not in ids:
            ids = (ids + [current])[-1000:]
            with contextlib.suppress(OSError):
                tmp = path.with_suffix(".tmp")
                tmp.write_text("\n".join(ids) + "\n")
                tmp.replace(path)
        return ids

    async def run(self, stop: asyncio.Event) -> None:
        self.gw.state_dir.mkdir(parents=True, exist_ok=True)
        self.boot_ids = self._remember_boot()
        report = self.store.open()
        log.info("blackbox_open", segments=len(report.segments) if hasattr(report, "segments") else "?")
        tap_path = self.h.tap_socket or (self.config.value.tap_socket if self.config.value else
                                         Path("/run/omgw/tap.sock"))
        self.receiver = TapReceiver(str(tap_path))
        self.receiver.start()
        for bus in self.buses:
            with contextlib.suppress(Exception):
                await bus.open()  # a missing adapter is reported per meter by the sampler, every cycle
        await self.uplink.start()
        self._tasks += [asyncio.create_task(self._read_tap()), asyncio.create_task(self.sampler.run(stop)),
                        asyncio.create_task(self.recorder.run(stop)), asyncio.create_task(self.store.run(stop)),
                        asyncio.create_task(self._publish_soh(stop))]
        if self.watchdog is not None:
            self._tasks.append(asyncio.create_task(self.watchdog.run(stop)))
        await self._start_status_socket()
        self.notifier.ready("health channel running")
        log.info("health_started", gateway=self.gw.id, meters=len(self.meters), sensors=len(self.sensors),
                 tap=str(tap_path), broker=self.h.url)
        try:
            await stop.wait()
        finally:
            self.notifier.stopping()
            log.info("health_stopping")
            await self._stop_status_socket()
            for t in self._tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.receiver.close()
            await self.uplink.stop()
            for bus in self.buses:
                bus.close()
            self.store.close()
            self.spool.close()
            self.nonces.close()
            log.info("health_stopped")


async def serve_health(config: Config, stop: asyncio.Event | None = None, **kwargs: Any) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    channel = HealthChannel(config, **kwargs)
    await channel.run(stop)


__all__ = ["HealthChannel", "serve_health"]
