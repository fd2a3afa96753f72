"""``omgw blackbox verify|dump|snapshot`` on a real store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from appliance.blackbox.record import RecordKind
from appliance.blackbox.snapshot import verify_snapshot
from appliance.blackbox.store import BlackBox

OMGW = [sys.executable, "-m", "appliance.cli", "blackbox"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OMGW, *args], capture_output=True, text=True, timeout=60)


def _store(tmp_path: Path) -> tuple[Path, int]:
    d = tmp_path / "bb"
    now = time.time_ns()
    with BlackBox(d) as bb:
        for i in range(100):
            bb.append(RecordKind.TELEMETRY, {"seq": i}, time_ns=now - (100 - i) * 1_000_000_000)
        bb.append(RecordKind.EVENT, {"kind": "meter_lost", "meter": "m1"}, time_ns=now - 5_000_000_000)
    return d, now


def test_verify_ok_then_corruption_is_reported_with_its_place(tmp_path: Path) -> None:
    d, _ = _store(tmp_path)
    result = _run("verify", str(d))
    assert result.returncode == 0 and "101 intact record(s), 0 problem(s)" in result.stdout
    seg = sorted(d.glob("seg-*.bbx"))[0]
    data = bytearray(seg.read_bytes())
    data[200] ^= 0xFF  # inside an early record: not a torn tail
    seg.write_bytes(bytes(data))
    result = _run("verify", str(d))
    assert result.returncode == 1
    assert "CORRUPT" in result.stdout and seg.name in result.stdout


def test_dump_filters_by_kind_and_time(tmp_path: Path) -> None:
    d, now = _store(tmp_path)
    result = _run("dump", str(d), "--kind", "event")
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert result.returncode == 0 and [x["kind"] for x in lines] == ["event"]
    assert lines[0]["data"] == {"kind": "meter_lost", "meter": "m1"}
    # Epoch seconds as a float: half a second of margin keeps float rounding out of the comparison.
    result = _run("dump", str(d), "--kind", "telemetry", "--since", f"{(now - 10_500_000_000) / 1e9:.3f}")
    assert [json.loads(x)["data"]["seq"] for x in result.stdout.splitlines()] == list(range(90, 100))
    assert _run("dump", str(d), "--kind", "nope").returncode == 2


def test_snapshot_cuts_an_archive_that_verifies(tmp_path: Path) -> None:
    d, _ = _store(tmp_path)
    result = _run("snapshot", str(d), "--reason", "technician check", "--pre", "30", "--gateway-id", "gw-9")
    assert result.returncode == 0, result.stderr
    archive = Path(result.stdout.strip())
    assert archive.is_file() and archive.parent == d / "snapshots"
    assert verify_snapshot(archive) == []
