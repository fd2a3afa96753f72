"""Shared fixtures: a per-session test PKI, simulated CSMS (ocpp library) and the value channel in-loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.demo.csms import SimulatedCsms
from appliance.value.server import ValueChannel
from peers import Pki, make_config


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def csms() -> AsyncIterator[SimulatedCsms]:
    async with SimulatedCsms() as c:
        yield c


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``channel = await start_proxy(csms_url, tap=None, **value_overrides)``; stopped at teardown."""
    channels: list[ValueChannel] = []

    async def start(csms_url: str, tap: Any = None, **value: Any) -> ValueChannel:
        channel = ValueChannel(make_config(tmp_path, csms_url, **value), tap)
        await channel.start()
        channels.append(channel)
        return channel

    yield start
    for ch in channels:
        await ch.stop()


