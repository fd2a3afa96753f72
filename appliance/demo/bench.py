"""The simulated bench behind ``omgw demo``: every peer of a real gateway, on one machine.

Why this exists: the demo must show both channels as they run on a gateway (two OS processes,
``omgw value`` and ``omgw health``, started from one generated config) against peers that speak
the real wire protocols: a TLS CSMS (ocpp library), chargers over ws://, Modbus RTU meters on a
socat pty, simulated I2C sensors, a mock-GPIO relay and a local mosquitto with mTLS.

Guarantees: everything lives in one temp dir that is removed on exit; every child process
(mosquitto, socat, value, health) is started in its own session and killed (group-wide) in
``close()``, also after errors, Ctrl-C or SIGTERM. The bench never reads the machine's config.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from drivers.modbus.regmap import load_map
from drivers.sim.modbus_meter import ChargingProfile, SimulatedBus, SimulatedMeter

from ..config import HealthConfig, ValueConfig
from ..devpki import CertFiles, DevCA
from ..passwords import hash_password
from .csms import SimulatedCsms

MOSQUITTO = "/usr/sbin/mosquitto"
GATEWAY_ID = "gw-demo"
CHARGER_VERSIONS = ("ocpp1.6", "ocpp2.0.1")


class BenchError(RuntimeError):
    """The bench could not be set up (a missing tool, a child that did not start)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class FaultScript:
    """The one scripted fault: ``cp_id`` goes silent ``hang_at_s`` after start (still connected)."""

    cp_id: str = "CP001"
    hang_at_s: float = 6.0
    hang_after_s: float = 8.0  # the watchdog's threshold (config watchdog.hang_after_s)
    off_s: float = 2.0


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Bench:
    """``bench = Bench(chargers=3); await bench.start(); ...; await bench.close()``."""

    chargers: int = 3
    fault: FaultScript = field(default_factory=FaultScript)
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="omgw-demo-")))
    children: list[Child] = field(default_factory=list)
    csms: SimulatedCsms | None = None
    meter_bus: SimulatedBus | None = None
    value_port: int = 0
    broker_port: int = 0
    ca: DevCA | None = None
    observer: CertFiles | None = None
    web_port: int = 0  # the technician page (health process), https://127.0.0.1:web_port/
    web_user: str = "technician"
    web_password: str = field(default_factory=lambda: os.urandom(9).hex())

    @property
    def fleet(self) -> list[tuple[str, str]]:
        return [(f"CP{i + 1:03d}", CHARGER_VERSIONS[i % 2]) for i in range(self.chargers)]

    @property
    def charger_url(self) -> str:
        return f"ws://127.0.0.1:{self.value_port}/ocpp"

    @property
    def web_url(self) -> str:
        return f"https://127.0.0.1:{self.web_port}/"

    @property
    def topic_root(self) -> str:
        return f"omgw/v1/{GATEWAY_ID}"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if not os.access(MOSQUITTO, os.X_OK):
            raise BenchError(f"{MOSQUITTO} not found: run ./dev demo (it installs mosquitto and socat)")
        if shutil.which("socat") is None:
            raise BenchError("socat not found: run ./dev demo (it installs mosquitto and socat)")
        self.ca = ca = DevCA(self.work / "pki")
        csms_leaf = ca.issue("csms", hosts=("localhost", "127.0.0.1"))
        broker_leaf = ca.issue("broker", hosts=("localhost", "127.0.0.1"))
        gw_client = ca.issue(GATEWAY_ID, client=True)
        self.observer = ca.issue("demo-view", client=True)
        web_leaf = ca.issue("gateway-web", hosts=("localhost", "127.0.0.1"))

        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(csms_leaf.cert, csms_leaf.key)
        passwords = {cp_id: os.urandom(12).hex() for cp_id, _ in self.fleet}
        self.csms = SimulatedCsms(ssl_context=server_ctx, basic_auth=passwords, heartbeat_s=60)
        await self.csms.start()

        self._start_broker(broker_leaf)
        meters = [SimulatedMeter(load_map("sdm630"), i + 1,
                                 ChargingProfile(max_current_a=16.0 + 8 * (i % 2), idle_s=3 + i, ramp_up_s=4,
                                                 hold_s=20, ramp_down_s=4), seed=i)
                  for i in range(self.chargers)]
        self.meter_bus = SimulatedBus(meters, workdir=self.work / "rs485")
        await self.meter_bus.start()

        self.value_port = free_port()
        self.web_port = free_port()
        cfg = self._write_config(passwords, gw_client, web_leaf)
        env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "PYTHONUNBUFFERED": "1"}
        # Health first: the tap is lossy by design, so a charger's connect and BootNotification
        # reach the health side only if it is already listening when the value channel starts.
        self._spawn("health", [sys.executable, "-m", "appliance.cli", "health", "-c", str(cfg)], env)
        await self._wait_path("health", self.work / "health.sock", 20)
        self._spawn("value", [sys.executable, "-m", "appliance.cli", "value", "-c", str(cfg)], env)
        await self._wait_port("value", self.value_port, 20)

    async def close(self) -> None:
        """Stop every child (value first: it closes its legs while the in-process CSMS still
        answers), then the simulators; remove the work dir. Waits without blocking the loop."""
        for child in reversed(self.children):
            await _stop_group(child.proc)
        self.children.clear()
        if self.meter_bus is not None:
            with contextlib.suppress(Exception):
                await self.meter_bus.stop()
        if self.csms is not None:
            with contextlib.suppress(Exception):
                await self.csms.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def dead_children(self) -> list[str]:
        """Children that exited on their own, with their log's tail (for an error message)."""
        out = []
        for c in self.children:
            if c.proc.poll() is not None:
                tail = "\n".join(c.log.read_text(errors="replace").splitlines()[-15:]) if c.log.exists() else ""
                out.append(f"{c.name} exited {c.proc.returncode}:\n{tail}")
        return out

    # -- pieces -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.work / f"{name}.log"
        with log.open("wb") as f:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # own group: killed group-wide, not by our Ctrl-C
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    async def _wait_path(self, name: str, path: Path, timeout: float) -> None:
        """Until ``path`` exists (a channel's status socket: it is bound once the channel runs)."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if dead := self.dead_children():
                raise BenchError("; ".join(dead))
            if time.monotonic() > deadline:
                raise BenchError(f"{name} did not start within {timeout:g} s (no {path.name})")
            await asyncio.sleep(0.05)

    async def _wait_port(self, name: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if dead := self.dead_children():
                raise BenchError("; ".join(dead))
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise BenchError(f"{name} is not listening on 127.0.0.1:{port} after {timeout:g} s")

    def _start_broker(self, leaf: CertFiles) -> None:
        assert self.ca is not None
        self.broker_port = free_port()
        d = self.work / "broker"
        d.mkdir()
        conf = d / "mosquitto.conf"
        conf.write_text(
            # Started as root, mosquitto drops to user "mosquitto", which cannot read our 0700 temp
            # dir: stay the invoking user (the line is ignored when not root).
            f"user {getpass.getuser()}\n"
            f"persistence false\nlog_dest file {d / 'mosquitto.log'}\n"
            f"listener {self.broker_port} 127.0.0.1\n"
            f"cafile {self.ca.cert_file}\ncertfile {leaf.cert}\nkeyfile {leaf.key}\n"
            f"require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
            f"tls_version tlsv1.2\n")
        self._spawn("mosquitto", [MOSQUITTO, "-c", str(conf)])
        deadline = time.monotonic() + 10
        while True:
            if dead := self.dead_children():
                raise BenchError("; ".join(dead))
            try:
                with socket.create_connection(("127.0.0.1", self.broker_port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"mosquitto not listening on {self.broker_port}") from None
                time.sleep(0.05)

    def _write_config(self, passwords: dict[str, str], gw_client: CertFiles, web_leaf: CertFiles) -> Path:
        assert self.ca is not None and self.csms is not None and self.meter_bus is not None
        w = self.work
        lines = [
            "[gateway]", f'id = "{GATEWAY_ID}"', 'site = "demo bench"', f'state_dir = "{w / "state"}"', "",
            "[value]", f'listen = "127.0.0.1:{self.value_port}"', f'csms_url = "{self.csms.url}"',
            "security_profile = 2", f'ca_file = "{self.ca.cert_file}"', 'validation = "log"',
            f'tap_socket = "{w / "tap.sock"}"', f'status_socket = "{w / "value.sock"}"', "",
        ]
        for cp_id, pw in passwords.items():
            pw_file = w / f"{cp_id}.pass"
            pw_file.write_text(pw)
            pw_file.chmod(0o600)
            lines += ["[[value.charge_points]]", f'id = "{cp_id}"', f'password_file = "{pw_file}"', ""]
        if "metrics_listen" in ValueConfig.model_fields:  # each channel's /metrics on a free port
            lines.insert(lines.index("[value]") + 1, f'metrics_listen = "127.0.0.1:{free_port()}"')
        lines += [
            "[health]", f'url = "mqtts://localhost:{self.broker_port}"', f'ca_file = "{self.ca.cert_file}"',
            f'client_cert = "{gw_client.cert}"', f'client_key = "{gw_client.key}"',
            f'status_socket = "{w / "health.sock"}"', "soh_interval_s = 10", "",
        ]
        if "metrics_listen" in HealthConfig.model_fields:
            lines.insert(-1, f'metrics_listen = "127.0.0.1:{free_port()}"')
        for i, (cp_id, _v) in enumerate(self.fleet):
            lines += ["[[health.meters]]", f'name = "meter-{cp_id}"', 'model = "sdm630"',
                      f'port = "{self.meter_bus.port}"', f"unit_id = {i + 1}", "timeout_s = 0.2",
                      f'feeds = "{cp_id}"', ""]
        lines += ["[[health.sensors]]", 'name = "cabinet"', 'model = "sht3x"', 'bus = "sim"', "address = 0x44", "",
                  "[[health.sensors]]", 'name = "ambient"', 'model = "bme280"', 'bus = "sim"', "address = 0x76", "",
                  "[health.web]", f'listen = "127.0.0.1:{self.web_port}"', f'cert_file = "{web_leaf.cert}"',
                  f'key_file = "{web_leaf.key}"', "[[health.web.users]]", f'name = "{self.web_user}"',
                  f'password_hash = "{hash_password(self.web_password)}"', "",
                  "[blackbox]", "pre_s = 20", "post_s = 2", "",
                  "[watchdog]", "enabled = true", f'cp_id = "{self.fault.cp_id}"',
                  f"hang_after_s = {self.fault.hang_after_s}", "offline_after_s = 600",
                  f"off_s = {self.fault.off_s}", "max_cycles_per_hour = 2", ""]
        path = w / "omgw.toml"
        path.write_text("\n".join(lines))
        return path


async def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``timeout``; reap the child."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    # Whatever is left in the group (the leader after the timeout, or a straggler) is killed.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(2)
