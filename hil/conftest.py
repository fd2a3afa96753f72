"""The HIL pytest plugin: ``pytest hil --bench FILE`` (default: hil/benches/sim.yaml).

Fixtures give each bench part (``bench``, ``gateway``, ``csms``, ``broker``, ``meters``,
``sensors``, ``relay``, ``charger``) and ``hil_record`` for measurements; a test never knows whether
the bench is simulated. A test that needs something the bench cannot do (``Unsupported``) is skipped
with that reason. The bench is started once per session and always stopped, also on failure. The
report (JUnit XML, Markdown/HTML with plots) goes to ``--hil-report DIR`` (default
``hil/out/<bench>-<UTC time>``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hil import spec as S
from hil.bench import Bench, Broker, Csms, Gateway, MeterPart, SensorPart, Unsupported, open_bench
from hil.chargers import BenchCharger
from hil.report import Recorder, ReportPlugin, add_report_options, configure_junit

HERE = Path(__file__).parent
DEFAULT_BENCH = HERE / "benches" / "sim.yaml"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop bench")
    group.addoption("--bench", default=str(DEFAULT_BENCH), help="bench description (YAML); default: the simulated bench")
    add_report_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil: a test of the HIL suite (runs on any bench)")
    path = Path(config.getoption("--bench"))
    try:
        bench = S.load_bench(path)
    except S.BenchSpecError as e:
        raise pytest.UsageError(f"--bench: {e}") from None
    config.stash[_SPEC] = bench
    out = config.getoption("--hil-report")
    if out is None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = HERE / "out" / f"{bench.name}-{stamp}"
    out = Path(out)
    recorder = Recorder(bench.name, str(path))
    config.stash[_RECORDER] = recorder
    configure_junit(config, out)
    hil_dir = HERE.resolve()
    config.pluginmanager.register(
        ReportPlugin(recorder, out, include=lambda nodeid: (config.rootpath / nodeid.split("::")[0]).resolve()
                     .is_relative_to(hil_dir)), "hil-report")


_SPEC = pytest.StashKey[S.Bench]()
_RECORDER = pytest.StashKey[Recorder]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    try:
        return (yield)
    except Unsupported as e:
        pytest.skip(f"bench {item.config.stash[_SPEC].name}: {e}")


@pytest.fixture(scope="session")
def bench_spec(pytestconfig: pytest.Config) -> S.Bench:
    return pytestconfig.stash[_SPEC]


@pytest.fixture(scope="session")
def hil_record(pytestconfig: pytest.Config) -> Recorder:
    return pytestconfig.stash[_RECORDER]


@pytest.fixture(scope="session")
def bench(bench_spec: S.Bench) -> Iterator[Bench]:
    try:
        b = open_bench(bench_spec)
    except Unsupported as e:
        pytest.skip(f"bench {bench_spec.name}: {e}")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def gateway(bench: Bench) -> Iterator[Gateway]:
    """The gateway, healthy at the start of the test and again at its end (a test that broke it
    and did not repair it fails here rather than taking the next test with it)."""
    bench.gateway.wait_healthy(60)
    yield bench.gateway
    bench.gateway.wait_healthy(60)


@pytest.fixture
def csms(bench: Bench) -> Csms:
    return bench.csms


@pytest.fixture
def broker(bench: Bench) -> Broker:
    return bench.broker


@pytest.fixture
def meters(bench: Bench, gateway: Gateway) -> Iterator[list[MeterPart]]:
    yield bench.meters
    for m in bench.meters:  # faults never outlive the test that made them
        m.reconnect()


@pytest.fixture
def sensors(bench: Bench, gateway: Gateway) -> Iterator[list[SensorPart]]:
    yield bench.sensors
    for s in bench.sensors:
        s.restore()


@pytest.fixture
def relay(bench: Bench) -> S.Relay:
    return bench.relay


@pytest.fixture
async def charger(bench: Bench) -> AsyncIterator[Callable[[str], Any]]:
    """``async with charger("CP001") as ch:`` (also ``ch = await charger.open("CP001")``): chargers
    opened in a test are disconnected at its end."""
    opened: list[BenchCharger] = []

    def make(cp_id: str) -> BenchCharger:
        ch = BenchCharger(bench, cp_id)
        opened.append(ch)
        return ch

    yield make
    for ch in opened:
        await ch.__aexit__(None, None, None)
