"""The simulated bench's hooks in the health process: the relay/alive loop-back from the environment
(refused on a real pin factory) and sensors on a bench process's I2C socket (``bus = "sim:PATH"``)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device, Factory
from gpiozero.pins.mock import MockFactory

from appliance import cli, config as config_mod, logfmt
from appliance.health.run import HealthChannel, _open_sensors
from drivers.sim import SimulationRefused
from drivers.sim.gpio import LOOPBACK_ENV, DrivenInputPin, LoopbackPin
from drivers.sim.i2c import SimulatedSht3x, SimulatedSMBus
from drivers.sim.i2c_server import I2cSimServer, RemoteSMBus


def health_config(tmp_path: Path, *, watchdog: bool = True, bus: Any = "sim") -> config_mod.Config:
    data: dict[str, Any] = {
        "gateway": {"id": "GW1", "state_dir": str(tmp_path / "state")},
        "health": {"url": "mqtt://127.0.0.1:1", "allow_insecure": True, "tap_socket": str(tmp_path / "tap.sock"),
                   "status_socket": str(tmp_path / "health.sock"), "metrics_listen": "off",
                   "sensors": [{"name": "cabinet", "model": "sht3x", "bus": bus, "address": 0x44}]},
        "watchdog": {"enabled": watchdog, "cp_id": "CP001", "relay_pin": "GPIO17", "alive_pin": "GPIO27",
                     "off_s": 2, "hang_after_s": 3600, "offline_after_s": 3600},
    }
    return config_mod.parse(data, "<test>")


@pytest.fixture
def pin_factory() -> Iterator[Any]:
    """Install a pin factory as gpiozero's global one (what GPIOZERO_PIN_FACTORY selects), then restore."""
    previous = Device.pin_factory
    installed: list[Any] = []

    def install(factory: Any) -> Any:
        Device.pin_factory = factory
        installed.append(factory)
        return factory

    yield install
    for f in installed:
        if isinstance(f, MockFactory):
            f.reset()
    Device.pin_factory = previous


class PretendHardwareFactory(Factory):  # type: ignore[misc]
    """Stands for lgpio/native on a real Pi: anything that is not gpiozero's MockFactory."""


async def test_health_builds_the_loopback_from_the_environment_and_measures_the_off_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pin_factory: Any
) -> None:
    factory = pin_factory(MockFactory())
    monkeypatch.setenv(LOOPBACK_ENV, "GPIO17>GPIO27,invert,delay_ms=5")
    channel = HealthChannel(health_config(tmp_path))
    wd = channel.watchdog
    assert isinstance(factory.pin("GPIO17"), LoopbackPin) and isinstance(factory.pin("GPIO27"), DrivenInputPin)
    assert wd.relay.charger_powered and wd.observation().alive_input is True  # NC relay, coil off: alive
    try:
        done = await wd.manual_cycle(force=False)
    finally:
        wd.relay.close()
        wd._alive.close()
    assert done["kind"] == "watchdog_power_cycle" and done["phase"] == "done", done
    assert abs(done["detail"]["input_off_s"] - done["off_s"]) <= 0.05, done


async def test_health_refuses_the_loopback_on_a_real_pin_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pin_factory: Any
) -> None:
    pin_factory(PretendHardwareFactory())
    monkeypatch.setenv(LOOPBACK_ENV, "GPIO17>GPIO27,invert")
    with pytest.raises(SimulationRefused, match="refusing to simulate wiring on real hardware"):
        HealthChannel(health_config(tmp_path))


async def test_a_bad_loopback_value_is_refused_with_the_variable_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pin_factory: Any
) -> None:
    pin_factory(MockFactory())
    monkeypatch.setenv(LOOPBACK_ENV, "GPIO17-GPIO27")
    with pytest.raises(SimulationRefused, match=LOOPBACK_ENV):
        HealthChannel(health_config(tmp_path))


def test_omgw_health_exits_with_a_config_error_when_the_loopback_meets_real_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pin_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pin_factory(PretendHardwareFactory())
    monkeypatch.setenv(LOOPBACK_ENV, "GPIO17>GPIO27")
    monkeypatch.setattr(logfmt, "setup", lambda *a, **k: None)  # keep the test process's logging as it is
    cfg = tmp_path / "omgw.toml"
    cfg.write_text(f'[gateway]\nid = "GW1"\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[health]\nurl = "mqtt://127.0.0.1:1"\nallow_insecure = true\nmetrics_listen = "off"\n'
                   f'status_socket = "{tmp_path / "health.sock"}"\ntap_socket = "{tmp_path / "tap.sock"}"\n'
                   f'[watchdog]\nenabled = true\ncp_id = "CP001"\nalive_pin = "GPIO27"\n')
    assert cli.main(["health", "-c", str(cfg)]) == cli.EXIT_CONFIG
    assert "refusing to simulate wiring on real hardware" in capsys.readouterr().err


async def test_the_loopback_variable_is_ignored_without_a_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pin_factory: Any
) -> None:
    pin_factory(PretendHardwareFactory())
    monkeypatch.setenv(LOOPBACK_ENV, "GPIO17>GPIO27")
    assert HealthChannel(health_config(tmp_path, watchdog=False)).watchdog is None  # no pins touched


def test_sensors_on_a_sim_socket_share_one_remote_client_per_path(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="i2c") as d:
        path = Path(d) / "bus.sock"
        cfg = health_config(tmp_path, watchdog=False, bus=f"sim:{path}")
        h = cfg.health
        assert h is not None
        h2 = h.model_copy(update={"sensors": [*h.sensors, h.sensors[0].model_copy(update={"name": "second"})]})
        sensors = _open_sensors(h2)
        assert sensors[0].bus is sensors[1].bus
        with I2cSimServer(SimulatedSMBus({0x44: SimulatedSht3x(temperature_c=27.0)}), path):
            reading = sensors[0].measure()
            with sensors[0].bus.transaction() as smbus:
                assert isinstance(smbus, RemoteSMBus)
        assert reading.ok and reading.temperature_c == pytest.approx(27.0, abs=0.01)


@pytest.mark.parametrize("bus", ["sim:relative.sock", "simulated", "sim:", "/dev/i2c-1"])
def test_a_sensor_bus_that_is_neither_a_number_nor_sim_is_a_config_error(tmp_path: Path, bus: str) -> None:
    with pytest.raises(config_mod.ConfigError) as exc:
        health_config(tmp_path, watchdog=False, bus=bus)
    assert "health.sensors[0].bus" in str(exc.value) and "sim:/absolute/path/to.sock" in str(exc.value)


@pytest.mark.parametrize(("bus", "expected"), [(1, 1), ("3", 3), ("sim", "sim"), ("sim:/run/bench/i2c.sock", "sim:/run/bench/i2c.sock")])
def test_sensor_bus_accepts_numbers_sim_and_sim_sockets(tmp_path: Path, bus: Any, expected: Any) -> None:
    h = health_config(tmp_path, watchdog=False, bus=bus).health
    assert h is not None and h.sensors[0].bus == expected
