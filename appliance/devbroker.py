"""A private mosquitto and an MQTT 5 observer, for the test suite, the benchmarks and the HIL bench.

Why this exists: every place that needs a real broker (transport tests, the health benchmark, the
simulated HIL bench) must start our own ``/usr/sbin/mosquitto -c <conf>`` on a free loopback port,
never the machine's service, with an mTLS listener like the O&M centre's, and must be able to stop
and restart it on the same port with its data (a broker outage). Like :mod:`appliance.devpki`, this
is development tooling shipped with the package; the gateway itself never imports it.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One broker process; ``stop()``/``start()`` restart it on the same port with the same data.

    ``ca_file``/``cert``/``key`` make an mTLS listener (client certificates required, the CN is the
    user name); all three None make a plain, anonymous one (only for tests of insecure set-ups).
    """

    def __init__(self, directory: Path, ca_file: str | Path | None, cert: str | Path | None,
                 key: str | Path | None, port: int | None = None):
        self.dir = directory
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_file = directory / "mosquitto.log"
        (directory / "data").mkdir(parents=True, exist_ok=True)
        self.conf = directory / "mosquitto.conf"
        tls = (f"cafile {ca_file}\ncertfile {cert}\nkeyfile {key}\n"
               f"require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
               f"tls_version tlsv1.2\n") if ca_file is not None else "allow_anonymous true\n"
        self.conf.write_text(
            # mosquitto started as root drops to user "mosquitto", which cannot read pytest's 0700
            # temp dirs: stay the invoking user (ignored when not root).
            f"user {getpass.getuser()}\n"
            f"per_listener_settings false\n"
            f"persistence true\npersistence_location {directory / 'data'}/\nautosave_interval 1\n"
            f"log_dest file {self.log_file}\nlog_type all\n"
            f"max_queued_messages 100000\nmax_inflight_messages 20\n"
            f"listener {self.port} 127.0.0.1\n" + tls
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        assert not self.running, "already running"
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


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    properties: Any = None
    arrived: float = 0.0  # time.time() when the observer got it

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Subscriber:
    """A paho MQTT 5 client in its own thread that records what it receives (thread-safe)."""

    client: Any
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
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def subscribe(host: str, port: int, topic_filter: str, tls: ssl.SSLContext | None, *,
              client_id: str = "observer", persistent: bool = False, timeout: float = 10.0) -> Subscriber:
    """Connect an observer (its own paho thread, reconnecting every second) and subscribe; returns
    once the broker acknowledged the subscription. ``close()`` it."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if tls is not None:
        c.tls_set_context(tls)
    c.reconnect_delay_set(1, 1)
    sub = Subscriber(c)

    def on_connect(cl: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            sub.connected.set()
            cl.subscribe(topic_filter, qos=1)

    def on_subscribe(*_a: Any) -> None:
        sub.subscribed.set()

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        with sub.lock:
            sub.messages.append(Received(m.topic, bytes(m.payload), bool(m.retain), m.qos,
                                         getattr(m, "properties", None), time.time()))

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600 if persistent else 0
    c.connect_async(host, port, clean_start=not persistent, properties=props)
    c.loop_start()
    if not sub.subscribed.wait(timeout):
        sub.close()
        raise RuntimeError(f"observer could not subscribe to {host}:{port} within {timeout:g} s")
    return sub
