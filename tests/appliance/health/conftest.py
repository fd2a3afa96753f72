"""Fixtures for the health transports: a real mosquitto with an mTLS listener, and a paho subscriber.

The broker is our own ``/usr/sbin/mosquitto -c <tmp conf>`` on a free loopback port (never the
machine's mosquitto service), with persistence in a per-test data dir so that ``stop()``/``start()``
on the same port keeps sessions and queued QoS 1 messages, like a real broker restart. It is always
killed at teardown, also when the test fails.
"""

from __future__ import annotations

import getpass
import json
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.devpki import CertFiles, DevCA

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HealthPki:
    ca: DevCA
    server: CertFiles
    client: CertFiles
    rogue_ca: DevCA
    rogue_client: CertFiles

    @property
    def ca_file(self) -> str:
        return str(self.ca.cert_file)


@pytest.fixture(scope="session")
def health_pki(tmp_path_factory: pytest.TempPathFactory) -> HealthPki:
    d = tmp_path_factory.mktemp("health-pki")
    ca = DevCA(d / "ca")
    rogue = DevCA(d / "rogue", name="rogue CA")
    return HealthPki(ca, ca.issue("broker", hosts=("localhost", "127.0.0.1")),
                     ca.issue("GW1", client=True), rogue, rogue.issue("GW1-rogue", client=True))


class Mosquitto:
    """One broker process; ``stop()``/``start()`` restart it on the same port with the same data."""

    def __init__(self, directory: Path, pki: HealthPki, server: CertFiles | None = None):
        server = server or pki.server
        self.dir = directory
        self.port = free_port()
        self.host = "127.0.0.1"
        self.log_file = directory / "mosquitto.log"
        (directory / "data").mkdir()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            # mosquitto started as root drops to user "mosquitto", which cannot read pytest's 0700
            # temp dirs: stay the invoking user (ignored when not root).
            f"user {getpass.getuser()}\n"
            f"per_listener_settings false\n"
            f"persistence true\npersistence_location {directory / 'data'}/\nautosave_interval 1\n"
            f"log_dest file {self.log_file}\nlog_type all\n"
            f"max_queued_messages 100000\nmax_inflight_messages 20\n"
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {pki.ca_file}\ncertfile {server.cert}\nkeyfile {server.key}\n"
            f"require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
            f"tls_version tlsv1.2\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode() if self.proc.stderr else ''} "
                                   f"{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto not listening on {self.port}: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: orderly stop (persistence saved, sockets closed); SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


@pytest.fixture
def mosquitto(tmp_path: Path, health_pki: HealthPki) -> Iterator[Mosquitto]:
    d = tmp_path / "broker"
    d.mkdir()
    broker = Mosquitto(d, health_pki)
    try:
        broker.start()
        yield broker
    finally:
        broker.kill()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    properties: Any = None

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Subscriber:
    """A paho MQTT 5 client in its own thread that records what it receives (thread-safe)."""

    client: mqtt.Client
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def snapshot(self, topic: str | None = None) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def wait_for(self, pred: Any, timeout: float = 10.0, topic: str | None = None) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.snapshot(topic)
            if pred(msgs):
                return msgs
            time.sleep(0.02)
        raise AssertionError(f"timed out; got {len(self.snapshot(topic))} messages")

    def publish(self, topic: str, payload: bytes, *, response_topic: str | None = None,
                correlation_data: bytes | None = None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)


def _client_tls(pki: HealthPki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    ctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    return ctx


@pytest.fixture
def subscribe(health_pki: HealthPki) -> Iterator[Any]:
    """``sub = subscribe(broker, "omgw/v1/GW1/#", client_id="obs", persistent=False)``."""
    clients: list[mqtt.Client] = []

    def make(broker: Mosquitto, topic_filter: str, client_id: str = "observer",
             persistent: bool = False, timeout: float = 10.0) -> Subscriber:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.tls_set_context(_client_tls(health_pki))
        c.reconnect_delay_set(1, 1)
        sub = Subscriber(c)

        def on_connect(cl: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if not rc.is_failure:
                sub.connected.set()
                cl.subscribe(topic_filter, qos=1)

        def on_subscribe(*_a: Any) -> None:
            sub.subscribed.set()

        def on_message(_c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
            with sub.lock:
                sub.messages.append(Received(m.topic, bytes(m.payload), bool(m.retain), m.qos,
                                             getattr(m, "properties", None)))

        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if persistent else 0
        c.connect_async(broker.host, broker.port, clean_start=not persistent, properties=props)
        c.loop_start()
        clients.append(c)
        assert sub.subscribed.wait(timeout), f"subscriber did not subscribe: {broker.log_tail()}"
        return sub

    try:
        yield make
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
