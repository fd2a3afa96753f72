"""``omgw demo`` (the README's first command): the whole bench runs headless, the scripted fault plays
out, and nothing is left running afterwards.

Both runs start at once (a module fixture) so the suite waits for the longer one only; running two
demos side by side also checks that they share no port or path.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

OMGW = [sys.executable, "-m", "appliance.cli"]
SHORT_S, FAULT_S = 20, 38


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    out: str
    err: str

    @property
    def work(self) -> str:
        m = re.search(r"bench in (/\S+omgw-demo-\S+?):", self.out)
        assert m, self.out[:2000]
        return m.group(1)

    def lines(self, pattern: str) -> list[str]:
        return [line for line in self.out.splitlines() if re.search(pattern, line)]


@pytest.fixture(scope="module")
def demo_runs() -> Iterator[dict[int, DemoRun]]:
    procs = {d: subprocess.Popen([*OMGW, "demo", "--duration", str(d)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for d in (SHORT_S, FAULT_S)}
    runs: dict[int, DemoRun] = {}
    try:
        for d, p in procs.items():
            out, err = p.communicate(timeout=d + 60)
            runs[d] = DemoRun(p.returncode, out, err)
        yield runs
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def _assert_clean_exit(run: DemoRun) -> None:
    assert run.returncode == 0, run.err[-3000:] + run.out[-3000:]
    assert "Traceback" not in run.out + run.err, (run.out + run.err)[-4000:]
    # Every child (mosquitto, socat, value, health) had the work dir on its command line.
    left = subprocess.run(["pgrep", "-af", run.work], capture_output=True, text=True).stdout
    assert left.strip() == "", left
    assert not Path(run.work).exists()
    assert f"stopped every child process and removed {run.work}" in run.out


def test_demo_runs_headless_with_chargers_transacting_and_telemetry_on_the_broker(demo_runs) -> None:
    run = demo_runs[SHORT_S]
    _assert_clean_exit(run)
    out = run.out
    # Chargers transact through the value channel (both OCPP versions) ...
    assert run.lines(r"charger=CP00\d action=StartTransaction"), out[-3000:]
    assert run.lines(r"charger=CP00\d action=TransactionEvent"), out[-3000:]
    for cp in ("CP001", "CP002", "CP003"):
        assert re.search(rf"{cp}\s+ocpp(1\.6|2\.0\.1)\s+frames up\s+[1-9]", out), out[-2000:]
    assert '"dropped": 0' in out
    # ... and the health channel tells the broker about it: what follows was received over MQTT.
    assert "event=gateway_status state=online" in out
    started = {m.group(1) for line in run.lines("event=transaction_started")
               if (m := re.search(r"cp=(CP\d+)", line))}
    assert started >= {"CP001", "CP002", "CP003"}, started
    telemetry = run.lines(r"event=telemetry seq=\d+ meter-CP001=\d+\.\dkW/\d+\.\d+kWh")
    assert len(telemetry) >= 3, out[-3000:]
    assert any(re.search(r"meter-CP00\d=[1-9]\d*\.\dkW", line) for line in telemetry)  # a car is charging
    assert re.search(r"cabinet=2\d\.\dC/ok", telemetry[-1])
    # idTags never leave the gateway's value side in clear.
    assert not re.search(r"\b04[0-9A-F]{8}\b", out)


def test_demo_watchdog_power_cycles_the_hung_charger_and_cuts_a_snapshot(demo_runs) -> None:
    run = demo_runs[FAULT_S]
    _assert_clean_exit(run)
    out = run.out

    def first(pattern: str) -> int:
        for i, line in enumerate(out.splitlines()):
            if re.search(pattern, line):
                return i
        raise AssertionError(f"no line matches {pattern!r}:\n{out[-4000:]}")

    hang = first(r"charger=CP001 scripted_fault=hang")
    decided = first(r"event=watchdog_power_cycle cp=CP001 phase=decided code=hang")
    off = first(r"event=relay_off cp=CP001")
    done = first(r"event=watchdog_power_cycle cp=CP001 phase=done")
    back = first(r"event=watchdog_recovered cp=CP001")
    snapshot = first(r"event=snapshot id=\S*watchdog_power_cycle\S* reasons=watchdog_power_cycle")
    assert hang < decided < off < done < back and decided < snapshot, out[-4000:]
    # CP001 boots again after the power cycle and goes back to charging.
    assert any(i > done for i, line in enumerate(out.splitlines())
               if "charger=CP001 action=BootNotification" in line)
    assert any(i > back for i, line in enumerate(out.splitlines())
               if re.search(r"event=transaction_started cp=CP001", line)), out[-3000:]
