"""Fixtures for the health transports: a real mosquitto with an mTLS listener, and a paho subscriber.

The broker is our own ``/usr/sbin/mosquitto -c <tmp conf>`` on a free loopback port (never the
machine's mosquitto service), with persistence in a per-test data dir so that ``stop()``/``start()``
on the same port keeps sessions and queued QoS 1 messages, like a real broker restart. It is always
killed at teardown, also when the test fails.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance import devbroker
from appliance.devbroker import MOSQUITTO, Received, Subscriber, free_port  # noqa: F401 - tests import them from here
from appliance.devpki import CertFiles, DevCA


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


class Mosquitto(devbroker.Mosquitto):
    """The broker with an mTLS listener for ``pki`` (``server`` defaults to the broker's leaf)."""

    def __init__(self, directory: Path, pki: HealthPki, server: CertFiles | None = None):
        server = server or pki.server
        super().__init__(directory, pki.ca_file, server.cert, server.key)


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


def _client_tls(pki: HealthPki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    ctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    return ctx


@pytest.fixture
def subscribe(health_pki: HealthPki) -> Iterator[Any]:
    """``sub = subscribe(broker, "omgw/v1/GW1/#", client_id="obs", persistent=False)``."""
    clients: list[Subscriber] = []

    def make(broker: Mosquitto, topic_filter: str, client_id: str = "observer",
             persistent: bool = False, timeout: float = 10.0) -> Subscriber:
        try:
            sub = devbroker.subscribe(broker.host, broker.port, topic_filter, _client_tls(health_pki),
                                      client_id=client_id, persistent=persistent, timeout=timeout)
        except RuntimeError as e:
            raise AssertionError(f"subscriber did not subscribe: {broker.log_tail()}") from e
        clients.append(sub)
        return sub

    try:
        yield make
    finally:
        for c in clients:
            c.close()
