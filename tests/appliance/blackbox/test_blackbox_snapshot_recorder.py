"""SnapshotRecorder end to end over a real BlackBox in tmp_path, with a fake clock; snapshot_now."""

from __future__ import annotations

import asyncio
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from appliance.blackbox.record import Record, RecordKind
from appliance.blackbox.snapshot import (
    SNAPSHOT_SUBDIR,
    SnapshotArchive,
    SnapshotRecorder,
    read_manifest,
    snapshot_now,
    verify_snapshot,
)
from appliance.blackbox.store import BlackBox

S = 1_000_000_000
T0 = 1_764_090_651 * S
GW = "gw-test"
FAULT_16 = '[2,"9","StatusNotification",{"connectorId":1,"errorCode":"GroundFailure","status":"Faulted"}]'


class FakeClock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def ocpp(frame: str, direction: str = "up", cp: str = "CP001") -> dict[str, Any]:
    return {"cp": cp, "dir": direction, "ev": "frame", "f": frame}


class Rig:
    def __init__(self, tmp_path: Path, **kw: Any) -> None:
        self.clock = FakeClock(T0 - 120 * S)
        self.store = BlackBox(tmp_path / "bb", max_mb=2, segment_mb=0.25, flush_bytes=4096, clock=self.clock)
        self.store.open()
        self.archive = SnapshotArchive(tmp_path / "bb" / SNAPSHOT_SUBDIR, keep_count=kw.pop("keep_count", 50))
        self.written: list[tuple[Path, dict[str, Any]]] = []
        self.recorder = SnapshotRecorder(self.store, self.archive, GW, pre_s=60, post_s=30, clock=self.clock,
                                         on_written=lambda p, m: self.written.append((p, m)), **kw)

    def telemetry_until(self, t_end: int) -> None:
        """1 Hz telemetry from the clock's time up to t_end (exclusive); the clock follows."""
        while self.clock.t < t_end:
            self.recorder.append(RecordKind.TELEMETRY, {"seq": (self.clock.t - T0) // S, "p_kw": 7.2})
            self.clock.t += S

    async def tick_until(self, t_end: int) -> list[Path]:
        """Advance in 1 s steps with telemetry, calling write_due() each second like run() does."""
        paths: list[Path] = []
        while self.clock.t < t_end:
            self.recorder.append(RecordKind.TELEMETRY, {"seq": (self.clock.t - T0) // S, "p_kw": 7.2})
            paths += await self.recorder.write_due()
            self.clock.t += S
        return paths


def lines_of(path: Path) -> list[dict[str, Any]]:
    with tarfile.open(path, "r:gz") as tar:
        [member] = [m for m in tar if m.name.endswith("/records.jsonl")]
        return [json.loads(x) for x in tar.extractfile(member).read().splitlines()]  # type: ignore[union-attr]


async def test_a_faulted_status_notification_gives_one_archive_with_pre_and_post_records(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.telemetry_until(T0)
    rig.recorder.append(RecordKind.OCPP, ocpp(FAULT_16))
    rig.recorder.append(RecordKind.OCPP, ocpp('[3,"9",{}]', "down"))
    assert rig.recorder.stats()["pending"] == 1

    assert await rig.tick_until(T0 + 32 * S) == []  # the post window and the settle time run
    assert list(rig.archive.directory.glob("*.tar.gz")) == []
    paths = await rig.tick_until(T0 + 34 * S)
    assert len(paths) == 1 and rig.written[0][0] == paths[0]

    path = paths[0]
    assert verify_snapshot(path) == []
    manifest = read_manifest(path)
    assert rig.written[0][1] == manifest
    assert manifest["gateway_id"] == GW
    assert manifest["trigger"]["reasons"] == ["ocpp_faulted cp=CP001 connector=1 error=GroundFailure"]
    assert manifest["trigger"]["time_ns"] == T0
    assert (manifest["range"]["start_ns"], manifest["range"]["end_ns"]) == (T0 - 60 * S, T0 + 30 * S)
    assert manifest["records"]["by_kind"]["telemetry"] == 91  # T0-60 s .. T0+30 s, both ends included
    assert manifest["records"]["by_kind"]["ocpp"] == 2
    assert manifest["records"]["total"] == 93
    lines = lines_of(path)
    times = [x["t"] for x in lines]
    assert min(times) == T0 - 60 * S and max(times) == T0 + 30 * S
    assert [x["data"]["dir"] for x in lines if x["kind"] == "ocpp"] == ["up", "down"]
    assert rig.recorder.stats() == {"pending": 0, "started": 1, "merged": 0, "dropped": 0, "written": 1,
                                    "failures": 0, "last_snapshot_id": manifest["snapshot_id"]}
    rig.store.close()


async def test_a_fault_storm_gives_one_archive_with_every_reason(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.telemetry_until(T0)
    rig.recorder.append(RecordKind.OCPP, ocpp(FAULT_16))
    rig.telemetry_until(T0 + 5 * S)
    rig.recorder.append(RecordKind.EVENT, {"kind": "watchdog_power_cycle", "cp": "CP001"})
    rig.telemetry_until(T0 + 20 * S)
    rig.recorder.append(RecordKind.OCPP, ocpp(FAULT_16))
    paths = await rig.tick_until(T0 + 60 * S)
    assert len(paths) == 1
    manifest = read_manifest(paths[0])
    assert manifest["trigger"]["reasons"] == ["ocpp_faulted cp=CP001 connector=1 error=GroundFailure",
                                              "watchdog_power_cycle cp=CP001"]
    assert manifest["trigger"]["count"] == 3
    assert manifest["range"]["end_ns"] == T0 + 50 * S
    assert manifest["records"]["by_kind"]["event"] == 1 and manifest["records"]["by_kind"]["ocpp"] == 2
    assert paths[0].name.startswith("20251125T171051Z-ocpp_faulted-")
    rig.store.close()


async def test_non_fault_traffic_writes_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.telemetry_until(T0)
    rig.recorder.append(RecordKind.OCPP, ocpp('[2,"1","Heartbeat",{}]'))
    rig.recorder.append(RecordKind.OCPP, ocpp(FAULT_16, "down"))  # not from the charger
    rig.recorder.append(RecordKind.EVENT, {"kind": "startup"})
    assert await rig.tick_until(T0 + 200 * S) == []
    assert rig.archive.snapshots() == []
    rig.store.close()


async def test_observe_works_for_records_appended_elsewhere(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.telemetry_until(T0)
    payload = json.dumps({"kind": "meter_lost", "meter": "main"}).encode()
    rig.store.append(RecordKind.EVENT, payload, time_ns=T0)
    assert rig.recorder.observe(Record(RecordKind.EVENT, T0, payload)) == "meter_lost meter=main"
    [path] = await rig.tick_until(T0 + 40 * S)
    assert read_manifest(path)["records"]["by_kind"]["event"] == 1
    rig.store.close()


async def test_a_record_stamped_in_the_future_triggers_at_the_clock(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.telemetry_until(T0)
    rig.recorder.observe(Record(RecordKind.EVENT, T0 + 10_000 * S, b'{"kind":"fault"}'))
    [w] = rig.recorder.scheduler.pending()
    assert w.trigger_ns == T0
    rig.store.close()


async def test_a_request_is_honoured_past_the_rate_limit_and_written(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_per_hour=1)
    rig.telemetry_until(T0)
    rig.recorder.append(RecordKind.EVENT, {"kind": "fault"})
    rig.telemetry_until(T0 + 300 * S)
    rig.recorder.append(RecordKind.EVENT, {"kind": "fault"})  # second fault within the hour: dropped
    rig.recorder.request("technician visit")
    paths = await rig.tick_until(T0 + 400 * S)
    assert [read_manifest(p)["trigger"]["reasons"] for p in paths] == [["fault"], ["technician visit"]]
    assert rig.recorder.stats()["dropped"] == 1
    rig.store.close()


async def test_retention_is_applied_after_each_write(tmp_path: Path) -> None:
    rig = Rig(tmp_path, keep_count=1)
    rig.telemetry_until(T0)
    rig.recorder.request("first")
    await rig.tick_until(T0 + 300 * S)
    rig.recorder.request("second")
    await rig.tick_until(T0 + 600 * S)
    assert [i.reasons for i in rig.archive.snapshots()] == [("second",)]
    rig.store.close()


async def test_a_failed_write_is_counted_and_the_recorder_goes_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.archive.directory.parent.mkdir(parents=True, exist_ok=True)
    rig.archive.directory.write_text("a file where the snapshot directory should be")
    rig.telemetry_until(T0)
    rig.recorder.request("doomed")
    assert await rig.tick_until(T0 + 60 * S) == []
    assert rig.recorder.stats()["failures"] == 1
    rig.archive.directory.unlink()
    rig.recorder.request("works")
    assert len(await rig.tick_until(T0 + 120 * S)) == 1
    rig.store.close()


async def test_run_writes_due_windows_and_on_stop_writes_pending_ones_cut_short(tmp_path: Path) -> None:
    rig = Rig(tmp_path, poll_s=0.01)
    rig.telemetry_until(T0)
    rig.recorder.request("first")
    rig.telemetry_until(T0 + 40 * S)
    stop = asyncio.Event()
    task = asyncio.create_task(rig.recorder.run(stop))
    for _ in range(500):
        if rig.written:
            break
        await asyncio.sleep(0.01)
    assert [m["trigger"]["reasons"] for _, m in rig.written] == [["first"]]
    rig.recorder.append(RecordKind.EVENT, {"kind": "over_temperature", "sensor": "cabinet"})
    rig.telemetry_until(T0 + 50 * S)
    stop.set()
    await asyncio.wait_for(task, 5)
    (_, last) = rig.written[-1]
    assert last["trigger"]["reasons"] == ["over_temperature sensor=cabinet"]
    assert last["range"]["partial"] is True
    assert last["range"]["end_ns"] == T0 + 50 * S
    assert all(verify_snapshot(p) == [] for p, _ in rig.written)
    rig.store.close()


def test_the_snapshot_directory_may_not_be_the_store_directory(tmp_path: Path) -> None:
    store = BlackBox(tmp_path / "bb")
    with pytest.raises(ValueError, match="must not be the store directory"):
        SnapshotRecorder(store, SnapshotArchive(tmp_path / "bb"), GW)


# ---- snapshot_now (CLI) ----------------------------------------------------------------------


def fill_store(directory: Path) -> BlackBox:
    store = BlackBox(directory, max_mb=2, segment_mb=0.25, flush_bytes=4096)
    store.open()
    for i in range(-120, 1):
        store.append(RecordKind.TELEMETRY, {"seq": i}, time_ns=T0 + i * S)
    store.append(RecordKind.EVENT, {"kind": "fault"}, time_ns=T0 - 10 * S)
    store.flush()
    return store


def test_snapshot_now_cuts_the_last_pre_seconds_from_a_live_store(tmp_path: Path) -> None:
    writer = fill_store(tmp_path / "bb")  # still open for writing by "the health process"
    out = tmp_path / "bb" / SNAPSHOT_SUBDIR
    path = snapshot_now(tmp_path / "bb", out, GW, "technician visit", pre_s=30, now_ns=T0)
    assert path.parent == out and path.name.startswith("20251125T171051Z-technician-")
    assert verify_snapshot(path) == []
    manifest = read_manifest(path)
    assert manifest["trigger"]["reasons"] == ["technician visit"]
    assert (manifest["range"]["start_ns"], manifest["range"]["end_ns"]) == (T0 - 30 * S, T0)
    assert manifest["records"]["by_kind"]["telemetry"] == 31
    assert manifest["records"]["by_kind"]["event"] == 1
    writer.append(RecordKind.TELEMETRY, {"seq": 1}, time_ns=T0 + S)  # the writer is unaffected
    writer.close()
    assert BlackBox(tmp_path / "bb").open().records == 123  # the store still recovers clean, all there


def test_snapshot_now_refuses_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        snapshot_now(tmp_path / "nope", tmp_path / "out", GW, "x", pre_s=60)
    assert not (tmp_path / "out").exists()
