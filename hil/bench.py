"""The bench at run time: the gateway under test and every part around it, behind one interface.

Why this exists: a HIL test must never know whether its meter is a simulator on a pty or an SDM630
on the lab's RS-485 line. :func:`open_bench` turns a :class:`~hil.spec.Bench` into a :class:`Bench`
whose parts (``gateway``, ``csms``, ``broker``, ``meters``, ``sensors``, ``relay``, chargers) offer
the same operations on both benches; what a bench cannot do (corrupt a real sensor's CRC) raises
:class:`Unsupported`, which the fixtures turn into a skip that names the missing capability.

The simulated bench (``dut: local``) runs, on this machine and from one temp dir: an ``ocpp``
library CSMS (TLS, Basic auth), our own mosquitto (mTLS), the meters as a Modbus RTU slave on a
socat pty, the climate sensors as byte-level chip models served on a Unix socket (``bus =
"sim:PATH"`` in the gateway's config, so they live outside the gateway like real chips), and the
gateway itself as ``omgw run`` (two child processes, restarted when they die, like the image's
units) with gpiozero's mock pins and the relay looped back to the alive input. The CSMS and the
simulators run on a private asyncio loop in a thread; tests use their own loop for chargers.

The lab bench (``dut: ssh``) reaches a flashed gateway over SSH (``omgw status --json``, ``omgw
blackbox dump``, ``systemctl kill``); the CSMS and the broker still run here, on the bench host's
address on the lab network; reference meters and fault switches hang on the bench host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from appliance.devbroker import Mosquitto, Subscriber, free_port, subscribe
from appliance.devpki import CertFiles, DevCA
from appliance.health.sampler import _value_key
from drivers.sim.modbus_meter import SimulatedMeter

from . import spec as S

T = TypeVar("T")


class Unsupported(Exception):
    """This bench cannot do that (a capability it lacks); the test is skipped with this reason."""


class BenchError(RuntimeError):
    """The bench could not be set up or a part did not answer."""


# --------------------------------------------------------------------------------------------- loop


class LoopThread:
    """An asyncio loop in a daemon thread for the bench's own peers (CSMS, simulators)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hil-bench", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


# --------------------------------------------------------------------------------------------- parts


@dataclass
class MeterPart:
    """A meter the gateway reads. ``reference(ts_ns)``: what it should have reported for a reading
    taken at ``ts_ns`` (the simulator's served values, or a reference meter read now)."""

    spec: S.Meter
    _served: deque[tuple[int, dict[str, float]]] | None = None  # simulated: (time_ns, values) per request
    _fault: Callable[[str], None] | None = None
    _switch: Any = None
    _reference: Any = None

    @property
    def name(self) -> str:
        return self.spec.name

    def reference(self, ts_ns: int, within_s: float = 2.0) -> dict[str, float]:
        if self._served is not None:
            out: dict[str, float] = {}
            for t, values in list(self._served):
                if ts_ns - 50_000_000 <= t <= ts_ns + within_s * 1e9:  # the requests of that cycle
                    for k, v in values.items():
                        out.setdefault(k, v)
            return out
        if self._reference is not None:
            return dict(self._reference())
        raise Unsupported(f"meter {self.name}: no reference on this bench")

    def disconnect(self) -> None:
        if self._fault is not None:
            self._fault("silent")
        elif self._switch is not None:
            self._switch.on()
        else:
            raise Unsupported(f"meter {self.name}: this bench cannot cut its line")

    def reconnect(self) -> None:
        if self._fault is not None:
            self._fault("none")
        elif self._switch is not None:
            self._switch.off()


@dataclass
class SensorPart:
    """A climate sensor. ``reference()``: the ground truth (simulated) or None (lab: plausibility
    ranges from the bench file)."""

    spec: S.Sensor
    _chip: Any = None
    _bus: Any = None
    _switch: Any = None
    _truth: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def reference(self) -> dict[str, float] | None:
        return dict(self._truth) if self._chip is not None else None

    def set_climate(self, temperature_c: float, humidity_rh: float, pressure_hpa: float | None = None) -> None:
        if self._chip is None:
            raise Unsupported(f"sensor {self.name}: this bench cannot set the climate")
        self._chip.set_climate(temperature_c, humidity_rh, pressure_hpa)
        self._truth = {"temperature_c": temperature_c, "humidity_rh": humidity_rh}
        if pressure_hpa is not None:
            self._truth["pressure_hpa"] = pressure_hpa

    def corrupt_crc(self, count: int | None = None) -> None:
        if self._chip is None or not self.spec.crc_faults or not hasattr(self._chip, "corrupt_crc"):
            raise Unsupported(f"sensor {self.name}: this bench cannot corrupt its CRCs")
        self._chip.corrupt_crc(count)

    def remove(self) -> None:
        if self._chip is not None and self.spec.remove == "sim":
            self._bus.detach(self.spec.address)
        elif self._switch is not None:
            self._switch.on()
        else:
            raise Unsupported(f"sensor {self.name}: this bench cannot take it off the bus")

    def restore(self) -> None:
        if self._chip is not None:
            if self.spec.address not in self._bus.devices:
                self._bus.attach(self.spec.address, self._chip)
            if hasattr(self._chip, "corrupt_crc"):
                self._chip.corrupt_crc(0)
            self._chip.clear_faults()
        elif self._switch is not None:
            self._switch.off()


class Csms:
    """The bench's CSMS (ocpp library; TLS with Basic auth, security profile 2)."""

    def __init__(self, loop: LoopThread, csms: Any):
        self._loop = loop
        self.sim = csms
        self.timeline: list[tuple[float, str, str, dict[str, Any]]] = []  # (time.time(), cp_id, action, fields)
        csms.on_event = lambda cp_id, action, fields: self.timeline.append((time.time(), cp_id, action, fields))

    def seen(self, cp_id: str, action: str, since: float = 0.0,
             pred: Callable[[dict[str, Any]], bool] = lambda f: True) -> float | None:
        """When the CSMS first saw ``action`` from ``cp_id`` after ``since`` (time.time()), or None."""
        for t, cp, a, f in list(self.timeline):
            if t >= since and cp == cp_id and a == action and pred(f):
                return t
        return None

    @property
    def url(self) -> str:
        return str(self.sim.url)

    def stop(self) -> None:
        self._loop.run(self.sim.stop())

    def start(self) -> None:
        self._loop.run(self.sim.start())


class Broker:
    """The O&M broker and an observer on ``omgw/v1/{gateway}/#``; ``command()`` signs and sends a
    remote command like the O&M centre would and returns the reply payload."""

    def __init__(self, mosquitto: Mosquitto, tls: ssl.SSLContext, gateway_id: str, key: tuple[str, str]):
        self.mosquitto = mosquitto
        self.tls = tls
        self.gateway_id = gateway_id
        self.root = f"omgw/v1/{gateway_id}"
        self._key = key
        self.observer: Subscriber = subscribe(mosquitto.host, mosquitto.port, f"{self.root}/#", tls,
                                              client_id="hil-observer", persistent=True)

    def topic(self, name: str) -> str:
        return f"{self.root}/{name}"

    def messages(self, name: str, since: float = 0.0) -> list[Any]:
        """Payloads (parsed) of ``topic(name)`` that arrived after ``since`` (time.time())."""
        return [m.json() for m in self.observer.snapshot(self.topic(name)) if m.arrived >= since]

    def wait(self, name: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
             since: float = 0.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.messages(name, since):
                if pred(p):
                    return p
            time.sleep(0.02)
        raise AssertionError(f"no {name} message matched within {timeout:g} s "
                             f"({len(self.messages(name, since))} {name} messages seen)")

    def stop(self) -> None:
        self.mosquitto.stop()

    def start(self) -> None:
        self.mosquitto.start()

    def command(self, name: str, args: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        from appliance.health.commands import sign_command

        kid, private = self._key
        envelope = sign_command(private, kid, name, self.gateway_id, args)
        reply_topic = f"hil/replies/{secrets.token_hex(6)}"
        corr = secrets.token_bytes(8)
        sub = subscribe(self.mosquitto.host, self.mosquitto.port, reply_topic, self.tls,
                        client_id=f"hil-cmd-{secrets.token_hex(4)}")
        try:
            self.observer.publish(self.topic(f"cmd/{name}"), envelope, response_topic=reply_topic,
                                  correlation_data=corr)
            msgs = sub.wait_for(lambda ms: len(ms) > 0, timeout)
            return msgs[0].json()  # type: ignore[no-any-return]
        finally:
            sub.close()

    def close(self) -> None:
        self.observer.close()


# --------------------------------------------------------------------------------------------- gateways


class Gateway:
    """The device under test, as the suite sees it."""

    gateway_id: str
    charger_url: str

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def status(self) -> tuple[int, dict[str, Any]]:
        """``omgw status --json``: (exit code, document)."""
        p = self.run("status", "--json", timeout=15)
        try:
            return p.returncode, json.loads(p.stdout)
        except ValueError:
            raise BenchError(f"omgw status printed no JSON (exit {p.returncode}): {p.stderr[-500:]}") from None

    #: reason codes that do not count as unhealthy until the given time.monotonic(): what a test's
    #: deliberate fault leaves behind on purpose (``tolerate``)
    tolerated: dict[str, float]

    def tolerate(self, code: str, for_s: float) -> None:
        """Accept ``code`` (e.g. ``tap_loss``: records the killed health process could not receive
        stay reported for 300 s) as healthy for ``for_s`` seconds."""
        self.tolerated[code] = time.monotonic() + for_s

    def healthy(self, code: int, doc: dict[str, Any]) -> bool:
        if code == 0:
            return True
        now = time.monotonic()
        channels = doc.get("channels", {}).values()
        reasons = [r.split(":", 1)[0] for ch in channels for r in ch.get("reasons", [])]
        return (bool(reasons) and all(ch.get("state") in ("up", "degraded") for ch in channels)
                and all(self.tolerated.get(r, 0) > now for r in reasons))

    def wait_healthy(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        code, doc = -1, {}
        while time.monotonic() < deadline:
            code, doc = self.status()
            if self.healthy(code, doc):
                return doc
            time.sleep(0.5)
        reasons = {k: v.get("reasons") for k, v in doc.get("channels", {}).items()}
        raise BenchError(f"gateway not healthy within {timeout:g} s: exit {code}: {reasons or json.dumps(doc)[:800]}")

    def blackbox(self, since: float | None = None, kinds: str | None = None) -> list[dict[str, Any]]:
        """The black box's records (``omgw blackbox dump``) as dicts."""
        argv = ["blackbox", "dump", self.blackbox_dir]
        if since is not None:
            argv += ["--since", f"{since:.6f}"]
        if kinds:
            argv += ["--kind", kinds]
        p = self.run(*argv, timeout=60)
        if p.returncode != 0:
            raise BenchError(f"omgw blackbox dump failed ({p.returncode}): {p.stderr[-500:]}")
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    blackbox_dir: str

    def health_pid(self) -> int | None:
        code, doc = self.status()
        return doc.get("channels", {}).get("health", {}).get("pid")

    def kill_health(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalGateway(Gateway):
    """``omgw run -c CONFIG`` from this checkout; the supervisor restarts a killed channel."""

    def __init__(self, work: Path, config: Path, gateway_id: str, charger_url: str, state_dir: Path,
                 env: dict[str, str]):
        self.work = work
        self.config = config
        self.gateway_id = gateway_id
        self.charger_url = charger_url
        self.tolerated = {}
        self.blackbox_dir = str(state_dir / "blackbox")
        self.log = work / "gateway.log"
        with self.log.open("wb") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "-c", str(config)],
                                         stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        if argv[0] == "status":
            argv = (*argv, "-c", str(self.config))
        return subprocess.run([sys.executable, "-m", "appliance.cli", *argv], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def kill_health(self) -> None:
        pid = self.health_pid()
        if pid is None:
            raise BenchError("the health channel is not running (no pid in omgw status)")
        os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


class SshGateway(Gateway):
    """A flashed gateway over SSH (BatchMode: keys only; the lab's known_hosts must know it)."""

    def __init__(self, dut: S.SshDut, gateway_id: str, blackbox_dir: str):
        self.dut = dut
        self.gateway_id = gateway_id
        self.tolerated = {}
        self.charger_url = dut.charger_url
        self.blackbox_dir = blackbox_dir

    def _ssh(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(self.dut.port)]
        if self.dut.identity_file is not None:
            argv += ["-i", str(self.dut.identity_file)]
        argv += [f"{self.dut.user}@{self.dut.host}", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        if argv[0] == "status":
            argv = (*argv, "-c", str(self.dut.config))
        return self._ssh("omgw " + " ".join(shlex.quote(a) for a in argv), timeout)

    def kill_health(self) -> None:
        p = self._ssh(f"systemctl kill --signal=SIGKILL {shlex.quote(self.dut.health_unit)}", 30)
        if p.returncode != 0:
            raise BenchError(f"could not kill {self.dut.health_unit}: {p.stderr.strip()}")


# --------------------------------------------------------------------------------------------- the bench


@dataclass
class Bench:
    spec: S.Bench
    gateway: Gateway
    csms: Csms
    broker: Broker
    meters: list[MeterPart]
    sensors: list[SensorPart]
    work: Path
    loop: LoopThread
    charger_ssl: ssl.SSLContext | None = None
    _closers: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def relay(self) -> S.Relay:
        if self.spec.relay is None:
            raise Unsupported("this bench has no relay")
        return self.spec.relay

    def meter(self, name: str) -> MeterPart:
        return next(m for m in self.meters if m.name == name)

    def sensor(self, name: str) -> SensorPart:
        return next(s for s in self.sensors if s.name == name)

    def charger(self, cp_id: str) -> S.Charger:
        return next(c for c in self.spec.chargers if c.id == cp_id)

    def require(self, capability: str) -> None:
        if not getattr(self.spec.faults, capability):
            raise Unsupported(f"this bench cannot inject {capability}")

    def close(self) -> None:
        for fn in reversed(self._closers):
            with contextlib.suppress(Exception):
                fn()
        self._closers.clear()


def open_bench(bench: S.Bench, work: Path | None = None) -> Bench:
    """Start every part of ``bench``; on any error, stop what was started and raise BenchError."""
    work = work or Path(tempfile.mkdtemp(prefix=f"omgw-hil-{bench.name}-"))
    closers: list[Callable[[], Any]] = []
    try:
        return _open(bench, work, closers)
    except BaseException:  # the error carries the gateway's log tail; nothing is left running
        for fn in reversed(closers):
            with contextlib.suppress(Exception):
                fn()
        shutil.rmtree(work, ignore_errors=True)
        raise


def _open(spec: S.Bench, work: Path, closers: list[Callable[[], Any]]) -> Bench:
    if not spec.simulated:
        return _open_lab(spec, work, closers)
    if shutil.which("socat") is None or not os.access("/usr/sbin/mosquitto", os.X_OK):
        raise BenchError("the simulated bench needs socat and mosquitto: run ./dev test (it installs them)")
    from appliance.demo.csms import SimulatedCsms
    from drivers.modbus.regmap import load_map
    from drivers.sim.i2c import SimulatedBme280, SimulatedSht3x, SimulatedSht4x, SimulatedSMBus
    from drivers.sim.i2c_server import I2cSimServer
    from drivers.sim.modbus_meter import ChargingProfile, SimulatedBus

    loop = LoopThread()
    closers.append(loop.close)

    # PKI: the CSMS, the broker, the gateway's client certificate and the bench's own observer.
    ca = DevCA(work / "pki")
    csms_leaf = ca.issue("csms", hosts=("localhost", "127.0.0.1"))
    broker_leaf = ca.issue("broker", hosts=("localhost", "127.0.0.1"))
    gw_client = ca.issue(spec.gateway_id, client=True)
    observer = ca.issue("hil-observer", client=True)

    # CSMS
    passwords = {c.id: secrets.token_hex(12) for c in spec.chargers}
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(csms_leaf.cert, csms_leaf.key)
    sim_csms = SimulatedCsms(host=spec.csms.listen_host, port=spec.csms.port or free_port(), ssl_context=server_ctx,
                             basic_auth=passwords, heartbeat_s=60)
    loop.run(sim_csms.start())
    closers.append(lambda: loop.run(sim_csms.stop()))
    csms = Csms(loop, sim_csms)

    # Broker
    (work / "broker").mkdir()
    mosq = Mosquitto(work / "broker", ca.cert_file, broker_leaf.cert, broker_leaf.key, port=spec.broker.port or None)
    mosq.start()
    closers.append(mosq.kill)

    # Meters on one simulated RS-485 line; every served request is recorded as the reference.
    meters: list[MeterPart] = []
    sims = []
    for i, m in enumerate(spec.meters):
        regmap = load_map(m.model)
        served: deque[tuple[int, dict[str, float]]] = deque(maxlen=4000)
        sim = _RecordingMeter(regmap, m.unit_id, ChargingProfile(max_current_a=16.0 + 8 * (i % 2), idle_s=4 + i,
                                                                 ramp_up_s=4, hold_s=30, ramp_down_s=4),
                              seed=i, served=served)
        sims.append(sim)
        meters.append(MeterPart(m, _served=served, _fault=(lambda s: lambda kind: s.set_fault(kind))(sim)))
    meter_bus = None
    if sims:
        meter_bus = SimulatedBus(sims, workdir=work / "rs485")
        loop.run(meter_bus.start())
        closers.append(lambda: loop.run(meter_bus.stop()))

    # Sensors: chip models behind a Unix socket, outside the gateway's process.
    sensors: list[SensorPart] = []
    i2c_sock = work / "i2c.sock"
    if spec.sensors:
        models = {"sht3x": SimulatedSht3x, "sht4x": SimulatedSht4x, "bme280": SimulatedBme280}
        chips = {s.address: models[s.model]() for s in spec.sensors}
        i2c_bus = SimulatedSMBus(chips)
        server = I2cSimServer(i2c_bus, i2c_sock)
        closers.append(server.close)
        for k, s in enumerate(spec.sensors):
            part = SensorPart(s, _chip=chips[s.address], _bus=i2c_bus)
            part.set_climate(22.0 + 1.5 * k, 40.0 + 5 * k, 1009.5 if s.model == "bme280" else None)
            sensors.append(part)

    # Operator key for signed commands
    from appliance.health.commands import generate_keypair

    private_key, public_key = generate_keypair()

    value_port = free_port()
    state = work / "state"
    cfg = _write_config(spec, work, state, value_port, sim_csms.url, mosq.port, ca.cert_file, passwords, gw_client,
                        meter_bus.port if meter_bus else "", i2c_sock, public_key)
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "PYTHONUNBUFFERED": "1"}
    if spec.relay is not None:
        # relay coil high = charger off (normally-closed contact): the alive input is the inverse
        env["OMGW_SIM_GPIO_LOOPBACK"] = f"{spec.relay.relay_pin}>{spec.relay.alive_pin},invert,delay_ms=12"
    gateway = LocalGateway(work, cfg, spec.gateway_id, f"ws://127.0.0.1:{value_port}/ocpp", state, env)
    closers.append(gateway.close)
    try:
        gateway.wait_healthy(60)
    except BenchError as e:
        raise BenchError(f"{e}\n--- gateway log ---\n{gateway.log_tail()}") from None

    tls = ssl.create_default_context(cafile=str(ca.cert_file))
    tls.load_cert_chain(str(observer.cert), str(observer.key))
    broker = Broker(mosq, tls, spec.gateway_id, ("hil", private_key))
    closers.insert(closers.index(mosq.kill) + 1, broker.close)
    bench = Bench(spec, gateway, csms, broker, meters, sensors, work, loop)
    bench._closers = closers
    bench._closers.insert(0, lambda: shutil.rmtree(work, ignore_errors=True))  # closers run in reverse: last
    return bench


def _open_lab(spec: S.Bench, work: Path, closers: list[Callable[[], Any]]) -> Bench:
    """A flashed gateway over SSH; CSMS and broker here on the lab network; reference meters and
    fault switches on the bench host's own RS-485 adapter and GPIOs."""
    import yaml

    from appliance.demo.csms import SimulatedCsms

    assert isinstance(spec.dut, S.SshDut) and spec.pki is not None
    pki = spec.pki
    loop = LoopThread()
    closers.append(loop.close)
    passwords = {str(k): str(v) for k, v in yaml.safe_load(pki.charger_passwords.read_text()).items()}
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.csms_cert, pki.csms_key)
    sim_csms = SimulatedCsms(host=spec.csms.listen_host, port=spec.csms.port, ssl_context=server_ctx,
                             basic_auth=passwords, heartbeat_s=60)
    loop.run(sim_csms.start())
    closers.append(lambda: loop.run(sim_csms.stop()))
    mosq = Mosquitto(work / "broker", pki.ca_file, pki.broker_cert, pki.broker_key, port=spec.broker.port)
    mosq.host = spec.broker.listen_host
    text = mosq.conf.read_text().replace(f"listener {mosq.port} 127.0.0.1", f"listener {mosq.port} {mosq.host}")
    mosq.conf.write_text(text)
    mosq.start()
    closers.append(mosq.kill)
    gateway = SshGateway(spec.dut, spec.gateway_id, spec.dut.blackbox_dir)
    gateway.wait_healthy(120)
    tls = ssl.create_default_context(cafile=str(pki.ca_file))
    tls.load_cert_chain(str(pki.observer_cert), str(pki.observer_key))
    broker = Broker(mosq, tls, spec.gateway_id, (pki.operator_kid, pki.operator_key_file.read_text().strip()))
    closers.append(broker.close)
    meters = [MeterPart(m, _switch=_switch(m.disconnect), _reference=_reference_reader(loop, m.reference))
              for m in spec.meters]
    sensors = [SensorPart(s, _switch=_switch(s.remove)) for s in spec.sensors]
    bench = Bench(spec, gateway, Csms(loop, sim_csms), broker, meters, sensors, work, loop)
    bench._closers = closers
    return bench


def _switch(how: Any) -> Any:
    if not isinstance(how, S.Switch):
        return None
    from gpiozero import DigitalOutputDevice  # type: ignore[import-untyped]

    return DigitalOutputDevice(how.gpio, active_high=how.active_high, initial_value=False)


def _reference_reader(loop: LoopThread, ref: Any) -> Callable[[], dict[str, float]] | None:
    """A reference meter on the bench host's RS-485 adapter, read on demand."""
    if not isinstance(ref, S.ReferenceMeter):
        return None
    from drivers.modbus.bus import ModbusBus
    from drivers.modbus.meter import Meter
    from drivers.modbus.regmap import load_map

    bus = ModbusBus.serial(ref.port, ref.baud)
    loop.run(bus.open())
    meter = Meter("reference", load_map(ref.model), ref.unit_id, bus)

    def read() -> dict[str, float]:
        reading = loop.run(meter.read())
        return {_value_key(str(v.quantity), None if v.phase is None else str(v.phase)): v.value
                for v in reading.values if v.value is not None}

    return read


class _RecordingMeter(SimulatedMeter):
    """A simulated meter that remembers what each request served, and when: the reference values."""

    def __init__(self, *args: Any, served: deque[tuple[int, dict[str, float]]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = served
        self._keys = {v.name: _value_key(str(v.quantity), None if v.phase is None else str(v.phase))
                      for v in self.regmap.values}

    def read(self, function: int, address: int, count: int) -> list[int]:
        words = super().read(function, address, count)
        end = address + count
        names = [v.name for v in self._defs[int(function)] if v.register < end and v.end > address]
        self._served.append((time.time_ns(), {self._keys[n]: self._truth[n] for n in names}))
        return words


def _write_config(spec: S.Bench, work: Path, state: Path, value_port: int, csms_url: str, broker_port: int,
                  ca_file: Path,
                  passwords: dict[str, str], gw_client: CertFiles, meter_port: str, i2c_sock: Path,
                  public_key: str) -> Path:
    lines = [
        "[gateway]", f'id = "{spec.gateway_id}"', f'site = "HIL bench {spec.name}"', f'state_dir = "{state}"', "",
        "[value]", f'listen = "127.0.0.1:{value_port}"', f'csms_url = "{csms_url}"', "security_profile = 2",
        f'ca_file = "{ca_file}"', 'validation = "log"', f'tap_socket = "{work / "tap.sock"}"',
        f'status_socket = "{work / "value.sock"}"', f'metrics_listen = "127.0.0.1:{free_port()}"', "",
    ]
    for cp_id, pw in passwords.items():
        pw_file = work / f"{cp_id}.pass"
        pw_file.write_text(pw)
        pw_file.chmod(0o600)
        lines += ["[[value.charge_points]]", f'id = "{cp_id}"', f'password_file = "{pw_file}"', ""]
    lines += ["[health]", f'url = "mqtts://localhost:{broker_port}"', f'ca_file = "{ca_file}"',
              f'client_cert = "{gw_client.cert}"', f'client_key = "{gw_client.key}"',
              f'status_socket = "{work / "health.sock"}"', f'metrics_listen = "127.0.0.1:{free_port()}"',
              "soh_interval_s = 10", ""]
    for m in spec.meters:
        lines += ["[[health.meters]]", f'name = "{m.name}"', f'model = "{m.model}"', f'port = "{meter_port}"',
                  f"unit_id = {m.unit_id}", "timeout_s = 0.2", *([f'feeds = "{m.feeds}"'] if m.feeds else []), ""]
    for s in spec.sensors:
        lines += ["[[health.sensors]]", f'name = "{s.name}"', f'model = "{s.model}"', f'bus = "sim:{i2c_sock}"',
                  f"address = {s.address}", ""]
    lines += ["[blackbox]", "pre_s = 20", "post_s = 2", "flush_interval_s = 0.5", ""]
    if spec.relay is not None:
        r = spec.relay
        lines += ["[watchdog]", "enabled = true", f'cp_id = "{r.cp_id}"', f'relay_pin = "{r.relay_pin}"',
                  f'alive_pin = "{r.alive_pin}"', f"hang_after_s = {r.hang_after_s}", "offline_after_s = 600",
                  f"off_s = {r.off_s}", "max_cycles_per_hour = 20", ""]
    lines += ["[commands]", "[[commands.keys]]", 'kid = "hil"', f'public_key = "{public_key}"',
              'allowed = ["ping", "snapshot", "relay_cycle", "selftest", "read_registers"]', ""]
    path = work / "omgw.toml"
    path.write_text("\n".join(lines))
    return path


async def until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``pred`` (without blocking the test's loop) until truthy; its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def opened(spec: S.Bench) -> Iterator[Bench]:
    bench = open_bench(spec)
    try:
        yield bench
    finally:
        bench.close()
