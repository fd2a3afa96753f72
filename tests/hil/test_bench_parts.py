"""Pure parts of the HIL bench: the meter reference window, the health verdict with tolerated
reasons, and the lab gateway's SSH command lines."""

from __future__ import annotations

import subprocess
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from hil import spec as S
from hil.bench import Gateway, MeterPart, SshGateway, Unsupported


def test_meter_reference_takes_the_first_value_served_after_the_reading_started() -> None:
    served: deque[tuple[int, dict[str, float]]] = deque()
    t0 = 10_000_000_000
    served.append((t0 - 500_000_000, {"voltage_L1": 228.0}))  # the previous cycle
    served.append((t0 + 10_000_000, {"voltage_L1": 230.1, "current_L1": 16.0}))
    served.append((t0 + 20_000_000, {"frequency": 50.01}))
    served.append((t0 + 1_010_000_000, {"voltage_L1": 231.0}))  # the next cycle: not taken
    part = MeterPart(S.Meter(name="m", unit_id=1), _served=served)
    assert part.reference(t0) == {"voltage_L1": 230.1, "current_L1": 16.0, "frequency": 50.01}
    assert part.reference(t0 + 5_000_000_000) == {}


def test_a_meter_without_reference_or_switch_is_unsupported() -> None:
    part = MeterPart(S.Meter(name="m", unit_id=1, reference="sim", disconnect=None))
    with pytest.raises(Unsupported, match="no reference"):
        part.reference(0)
    with pytest.raises(Unsupported, match="cannot cut its line"):
        part.disconnect()


class _Fixed(Gateway):
    def __init__(self) -> None:
        self.tolerated = {}


def _doc(health_state: str, reasons: list[str]) -> dict[str, Any]:
    return {"channels": {"value": {"state": "up", "reasons": []},
                         "health": {"state": health_state, "reasons": reasons}}}


def test_healthy_accepts_only_tolerated_reasons_while_they_are_tolerated(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _Fixed()
    assert g.healthy(0, _doc("up", []))
    degraded = _doc("degraded", ["tap_loss: tap records lost in the last 300 s"])
    assert not g.healthy(1, degraded)
    g.tolerate("tap_loss", 10)
    assert g.healthy(1, degraded)
    assert not g.healthy(1, _doc("degraded", ["tap_loss: x", "device_missing: sensor:cabinet missing"]))
    assert not g.healthy(1, _doc("down", ["tap_loss: x"]))
    import hil.bench as bench_mod

    real = bench_mod.time.monotonic
    monkeypatch.setattr(bench_mod.time, "monotonic", lambda: real() + 11)
    assert not g.healthy(1, degraded)  # the tolerance ran out


def test_ssh_gateway_quotes_its_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, '{"channels": {}}', "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    dut = S.SshDut(kind="ssh", host="10.42.0.2", port=2222, identity_file=Path("/k"), charger_url="ws://x/ocpp")
    g = SshGateway(dut, "gw", "/var/lib/omgw/health/blackbox")
    g.status()
    g.blackbox(since=1764000000.5, kinds="ocpp")
    g.kill_health()
    assert calls[0][:9] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", "2222", "-i", "/k"]
    assert calls[0][-2:] == ["root@10.42.0.2", "omgw status --json -c /etc/omgw/omgw.toml"]
    assert calls[1][-1] == "omgw blackbox dump /var/lib/omgw/health/blackbox --since 1764000000.500000 --kind ocpp"
    assert calls[2][-1] == "systemctl kill --signal=SIGKILL omgw-health.service"
