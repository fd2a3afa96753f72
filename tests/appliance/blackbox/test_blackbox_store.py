"""The black-box store on real files: append/flush/read, rotation and the ring, recovery of torn and
corrupt tails, foreign files, ENOSPC (injected and on a real, full tmpfs), the async flusher."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.blackbox.record import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Record,
    RecordError,
    RecordKind,
    encode_record,
)
from appliance.blackbox.store import (
    BlackBox,
    BlackBoxError,
    Disk,
    StoreLockedError,
    index_name,
    segment_name,
    verify,
)

K = RecordKind


class Clock:
    def __init__(self, t: int = 1_000_000_000) -> None:
        self.t = t

    def __call__(self) -> int:
        self.t += 1_000
        return self.t


def store_bytes(d: Path) -> int:
    """Bytes of the store's own files (segments and indexes)."""
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file() and p.name.startswith("seg-"))


def payload(i: int, size: int = 200) -> bytes:
    return b'{"i":%d,"pad":"%s"}' % (i, b"p" * size)


def ids(records: Iterator[Record] | list[Record]) -> list[int]:
    return [r.json()["i"] for r in records]


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("seg-*.bbx"))


# ---- basics ---------------------------------------------------------------------------------------


def test_append_flush_read_round_trip(tmp_path: Path) -> None:
    with BlackBox(tmp_path, clock=Clock()) as bb:
        bb.append(K.TELEMETRY, {"i": 0, "temp": 21.5, "name": "Zähler"})
        bb.append(K.OCPP, payload(1), time_ns=5)
        bb.flush()
        got = list(bb.read())
    assert got[0] == Record(K.TELEMETRY, 1_000_001_000, '{"i":0,"temp":21.5,"name":"Zähler"}'.encode())
    assert got[1] == Record(K.OCPP, 5, payload(1))
    with BlackBox(tmp_path) as bb:
        assert list(bb.read()) == got


def test_read_filters_by_inclusive_time_range_and_kind(tmp_path: Path) -> None:
    with BlackBox(tmp_path) as bb:
        for i in range(100):
            bb.append(K.OCPP if i % 3 else K.EVENT, payload(i), time_ns=1000 + i)
        bb.flush()
        assert ids(bb.read(since_ns=1010, until_ns=1020)) == list(range(10, 21))
        assert ids(bb.read(until_ns=1005, kinds=[K.EVENT])) == [0, 3]
        assert ids(bb.read(since_ns=1097, kinds={K.OCPP, K.EVENT})) == [97, 98, 99]
        assert list(bb.read(kinds=[K.SOH])) == []


def test_read_opens_only_the_segments_that_overlap_the_range(tmp_path: Path) -> None:
    with BlackBox(tmp_path, max_mb=8, segment_mb=1 / 64, flush_bytes=4096) as bb:
        for i in range(3000):
            bb.append(K.OCPP, payload(i), time_ns=i)
        bb.flush()
        nsegs = bb.stats()["segments"]
        assert nsegs > 40
        before = bb.stats()["segment_reads"]
        assert ids(bb.read(since_ns=1500, until_ns=1502)) == [1500, 1501, 1502]
        assert bb.stats()["segment_reads"] - before <= 2
        before = bb.stats()["segment_reads"]
        assert list(bb.read(kinds=[K.EVENT])) == []  # the kind bitmask rules out every segment
        assert bb.stats()["segment_reads"] == before
    # after a restart the bounds come from the index files: still no full scan
    bb = BlackBox(tmp_path, max_mb=8, segment_mb=1 / 64)
    report = bb.open()
    assert sum(s.indexed for s in report.segments) == nsegs - 1
    assert ids(bb.read(since_ns=2000, until_ns=2000)) == [2000]
    assert bb.stats()["segment_reads"] <= 2
    bb.close()


def test_read_includes_buffered_records_unless_asked_not_to(tmp_path: Path) -> None:
    with BlackBox(tmp_path) as bb:
        bb.append(K.EVENT, payload(1), time_ns=1)
        bb.flush()
        bb.append(K.EVENT, payload(2), time_ns=2)
        assert ids(bb.read()) == [1, 2]
        assert ids(bb.read(include_unflushed=False)) == [1]
        it = bb.read()  # the set of records is fixed when read() is called
        bb.append(K.EVENT, payload(3), time_ns=3)
        bb.flush()
        assert ids(it) == [1, 2]


def test_append_flushes_inline_at_flush_bytes_when_no_flusher_runs(tmp_path: Path) -> None:
    with BlackBox(tmp_path, flush_bytes=1000) as bb:
        for i in range(4):
            bb.append(K.OCPP, payload(i), time_ns=i)  # ~230 bytes each
        assert bb.stats()["buffered_records"] == 4 and bb.stats()["fsyncs"] == 0
        bb.append(K.OCPP, payload(4), time_ns=4)
        s = bb.stats()
        assert s["buffered_records"] == 0 and s["stored_records"] == 5 and s["fsyncs"] >= 1


def test_stats(tmp_path: Path) -> None:
    with BlackBox(tmp_path) as bb:
        bb.append(K.OCPP, payload(0), time_ns=50)
        bb.append(K.OCPP, payload(1), time_ns=40)
        s = bb.stats()
        assert (s["records"], s["bytes_written"], s["oldest_ns"], s["newest_ns"]) == (2, 0, 40, 50)
        bb.flush()
        s = bb.stats()
        rec = len(encode_record(K.OCPP, 0, payload(0)))
        assert s["bytes_appended"] == 2 * rec
        assert s["bytes_written"] == SEGMENT_HEADER_SIZE + 2 * rec
        assert s["fsyncs"] == 3  # new segment: header + directory; then the batch
        assert (s["segments"], s["dropped"], s["errors"], s["write_failing"]) == (1, 0, 0, False)


def test_misuse_raises(tmp_path: Path) -> None:
    bb = BlackBox(tmp_path, segment_mb=1 / 128, max_mb=1 / 32)
    with pytest.raises(BlackBoxError):
        bb.append(K.OCPP, b"{}")
    bb.open()
    with pytest.raises(RecordError):
        bb.append(K.OCPP, bytes(bb.max_payload + 1))
    with pytest.raises(RecordError):
        bb.append(99, b"{}")
    with pytest.raises(BlackBoxError):
        bb.open()
    bb.close()
    with pytest.raises(ValueError, match="2 x segment_mb"):
        BlackBox(tmp_path, max_mb=4, segment_mb=4)


def test_second_writer_is_refused_but_a_reader_may_open(tmp_path: Path) -> None:
    with BlackBox(tmp_path) as bb:
        bb.append(K.EVENT, payload(1), time_ns=1)
        bb.flush()
        with pytest.raises(StoreLockedError):
            BlackBox(tmp_path).open()
        ro = BlackBox(tmp_path)
        ro.open(read_only=True)
        assert ids(ro.read()) == [1]
        with pytest.raises(BlackBoxError):
            ro.append(K.EVENT, b"{}")
        ro.close()


# ---- rotation and the ring ------------------------------------------------------------------------


def test_ring_deletes_oldest_segments_and_never_exceeds_max_mb(tmp_path: Path) -> None:
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / "snap.tar.gz").write_bytes(b"keep me")
    max_mb, seg_mb = 0.25, 1 / 32
    limit = int(max_mb * 1024 * 1024)
    with BlackBox(tmp_path, max_mb=max_mb, segment_mb=seg_mb, flush_bytes=3000) as bb:
        for i in range(8000):
            bb.append(K.OCPP, payload(i, size=i % 700), time_ns=i)
            if i % 97 == 0:
                bb.flush()
                assert store_bytes(tmp_path) <= limit
        bb.flush()
        got = ids(bb.read())
        assert got == list(range(got[0], 8000))  # contiguous newest part: the ring drops whole segments
        assert got[0] > 0
        assert bb.stats()["stored_bytes"] <= limit
    assert all(p.stat().st_size <= seg_mb * 1024 * 1024 for p in segments(tmp_path))
    assert (tmp_path / "snapshots" / "snap.tar.gz").read_bytes() == b"keep me"
    assert verify(tmp_path).ok


def test_shrinking_max_mb_applies_on_open(tmp_path: Path) -> None:
    with BlackBox(tmp_path, max_mb=1, segment_mb=1 / 32) as bb:
        for i in range(3000):
            bb.append(K.OCPP, payload(i), time_ns=i)
    bb = BlackBox(tmp_path, max_mb=0.125, segment_mb=1 / 32)
    report = bb.open()
    assert report.removed and bb.stats()["stored_bytes"] <= 0.125 * 1024 * 1024
    got = ids(bb.read())
    assert got[-1] == 2999 and got == list(range(got[0], 3000))
    bb.close()


def test_missing_or_corrupt_index_is_rebuilt_from_a_scan(tmp_path: Path) -> None:
    with BlackBox(tmp_path, max_mb=1, segment_mb=1 / 64) as bb:
        for i in range(500):
            bb.append(K.OCPP, payload(i), time_ns=i)
    idx = sorted(tmp_path.glob("*.idx"))
    assert len(idx) >= 3
    idx[0].unlink()
    idx[1].write_bytes(b"\x00" * 10)
    bb = BlackBox(tmp_path, max_mb=1, segment_mb=1 / 64)
    report = bb.open()
    assert [s.indexed for s in report.segments[:3]] == [False, False, True]
    assert ids(bb.read()) == list(range(500))
    bb.close()
    assert len(list(tmp_path.glob("*.idx"))) == len(idx)
    assert verify(tmp_path).notes == ()


# ---- recovery -------------------------------------------------------------------------------------


def _store_with(tmp_path: Path, n: int, **kw: float) -> tuple[Path, list[int]]:
    """A store with n records in one segment; returns the segment and each record's offset."""
    with BlackBox(tmp_path, **kw) as bb:  # type: ignore[arg-type]
        for i in range(n):
            bb.append(K.OCPP, payload(i, size=20 + 13 * i), time_ns=i)
    seg = segments(tmp_path)[-1]
    offs = [SEGMENT_HEADER_SIZE]
    for i in range(n - 1):
        offs.append(offs[-1] + RECORD_HEADER_SIZE + len(payload(i, size=20 + 13 * i)))
    return seg, offs


def test_truncation_at_every_offset_of_the_last_records_keeps_the_intact_prefix(tmp_path: Path) -> None:
    seg, offs = _store_with(tmp_path, 6)
    original = seg.read_bytes()
    for cut in range(offs[3], len(original)):
        seg.write_bytes(original[:cut])
        bb = BlackBox(tmp_path)
        report = bb.open()
        complete = sum(1 for i, o in enumerate(offs) if (offs[i + 1] if i + 1 < len(offs) else len(original)) <= cut)
        assert ids(bb.read()) == list(range(complete)), cut
        torn = cut not in offs
        assert report.cut_bytes == (cut - offs[complete] if torn else 0)
        assert (report.segments[-1].cut_reason is not None) == torn
        bb.close()
        assert seg.stat().st_size == offs[complete]
    # and appending after a recovery continues cleanly
    with BlackBox(tmp_path) as bb:
        bb.append(K.OCPP, payload(100), time_ns=100)
    with BlackBox(tmp_path) as bb:
        assert ids(bb.read()) == [*range(5), 100]
    assert verify(tmp_path).ok


def test_flipped_bytes_at_every_offset_of_the_last_records_are_never_served(tmp_path: Path) -> None:
    seg, offs = _store_with(tmp_path, 5)
    original = seg.read_bytes()
    for pos in range(offs[3], len(original)):
        bad = bytearray(original)
        bad[pos] ^= 0xFF
        seg.write_bytes(bad)
        for idx in tmp_path.glob("*.idx"):
            idx.unlink()
        bb = BlackBox(tmp_path)
        report = bb.open()
        victim = 3 if pos < offs[4] else 4
        got = ids(bb.read())
        bb.close()
        # every intact record is kept; the damaged one is never served
        assert got == [i for i in range(5) if i != victim], pos
        if victim == 4:  # damage in the last record: the tail is cut there
            assert report.segments[-1].cut_offset == offs[4]
            assert seg.stat().st_size == offs[4]
        else:  # damage followed by an intact record: left in place, skipped, segment sealed
            assert [g.offset for g in report.segments[-1].corrupt] == [offs[3]]
            assert report.cut_bytes == 0 and seg.stat().st_size == len(original)
            assert not verify(tmp_path).ok
        seg_files = segments(tmp_path)
        for extra in seg_files[1:]:
            extra.unlink()


def test_damage_in_the_tail_followed_by_intact_records_seals_the_segment(tmp_path: Path) -> None:
    seg, offs = _store_with(tmp_path, 5)
    bad = bytearray(seg.read_bytes())
    bad[offs[1] + 25] ^= 1
    seg.write_bytes(bad)
    with BlackBox(tmp_path) as bb:
        assert ids(bb.read()) == [0, 2, 3, 4]
        bb.append(K.OCPP, payload(9), time_ns=9)
    assert len(segments(tmp_path)) == 2 and seg.read_bytes() == bad  # never rewritten
    with BlackBox(tmp_path) as bb:
        assert ids(bb.read()) == [0, 2, 3, 4, 9]
    report = verify(tmp_path)
    assert [(f.file, f.offset) for f in report.problems] == [(seg.name, offs[1])]


def test_corruption_in_an_older_segment_is_reported_and_skipped_never_truncated(tmp_path: Path) -> None:
    with BlackBox(tmp_path, max_mb=1, segment_mb=1 / 64) as bb:
        for i in range(300):
            bb.append(K.OCPP, payload(i), time_ns=i)
    first = segments(tmp_path)[0]
    size = first.stat().st_size
    data = bytearray(first.read_bytes())
    data[SEGMENT_HEADER_SIZE + 300] ^= 0x08  # inside the second record
    first.write_bytes(data)
    v = verify(tmp_path)
    assert not v.ok and v.problems[0].file == first.name and v.problems[0].reason.startswith("crc mismatch")
    with BlackBox(tmp_path, max_mb=1, segment_mb=1 / 64) as bb:
        got = ids(bb.read())  # bounds came from the index; the reader resyncs past the damage
        assert 1 not in got and got == [i for i in range(300) if i != 1]
    assert first.stat().st_size == size


def test_zero_filled_tail_after_power_loss_is_cut(tmp_path: Path) -> None:
    seg, _ = _store_with(tmp_path, 3)
    with open(seg, "ab") as f:
        f.write(bytes(8192))  # the size reached the card, the data did not
    bb = BlackBox(tmp_path)
    report = bb.open()
    assert report.segments[-1].cut_reason == "zero fill" and report.cut_bytes == 8192
    assert ids(bb.read()) == [0, 1, 2]
    bb.close()


def test_read_only_open_changes_nothing(tmp_path: Path) -> None:
    seg, _ = _store_with(tmp_path, 3)
    torn = seg.read_bytes()[:-5]
    seg.write_bytes(torn)
    bb = BlackBox(tmp_path)
    report = bb.open(read_only=True)
    assert ids(bb.read()) == [0, 1] and report.cut_bytes > 0
    bb.close()
    assert seg.read_bytes() == torn
    assert verify(tmp_path).ok and "torn last write" in verify(tmp_path).notes[0].reason


def test_foreign_and_unreadable_files_are_reported_and_skipped(tmp_path: Path) -> None:
    with BlackBox(tmp_path, max_mb=0.25, segment_mb=1 / 32) as bb:
        for i in range(100):
            bb.append(K.EVENT, payload(i), time_ns=i)
        bb.flush()
    (tmp_path / "notes.txt").write_text("operator was here")
    (tmp_path / segment_name(0)).write_bytes(b"PK\x03\x04" + bytes(60))  # named like ours, not ours
    (tmp_path / segment_name(900)).mkdir()  # cannot be read as a file
    (tmp_path / index_name(500)).write_bytes(b"x")  # an index without a segment
    (tmp_path / "snapshots").mkdir()
    bb = BlackBox(tmp_path, max_mb=0.25, segment_mb=1 / 32)
    report = bb.open()
    skipped = {s.name: s.reason for s in report.skipped}
    assert skipped["notes.txt"].startswith("foreign")
    assert "bad magic" in skipped[segment_name(0)]
    assert skipped[segment_name(900)].startswith("unreadable")
    assert index_name(500) in report.removed
    assert ids(bb.read()) == list(range(100))
    bb.append(K.EVENT, payload(100), time_ns=100)  # goes to a new segment after the unreadable one
    bb.close()
    assert (tmp_path / segment_name(901)).exists()
    v = verify(tmp_path)
    assert {f.file for f in v.problems} == {segment_name(0), segment_name(900)}
    assert {f.file for f in v.notes} == {"notes.txt"}
    # the ring never deletes foreign files, and deletes broken files of its own in turn
    with BlackBox(tmp_path, max_mb=0.25, segment_mb=1 / 32) as bb:
        for i in range(3000):
            bb.append(K.EVENT, payload(i), time_ns=1000 + i)
    assert (tmp_path / "notes.txt").exists() and (tmp_path / "snapshots").is_dir()
    assert not (tmp_path / segment_name(0)).exists()


def test_a_torn_new_segment_header_is_removed(tmp_path: Path) -> None:
    _store_with(tmp_path, 3)
    (tmp_path / segment_name(2)).write_bytes(b"\x89BBX\r\n\x1a\n\x01")  # crash while creating it
    bb = BlackBox(tmp_path)
    report = bb.open()
    assert segment_name(2) in report.removed and ids(bb.read()) == [0, 1, 2]
    bb.close()


# ---- write failures -------------------------------------------------------------------------------


class FlakyDisk(Disk):
    """Accepts at most ``space`` more bytes, then fails pwrite with ENOSPC (after a short write);
    fdatasync fails with EIO while ``eio`` is set."""

    def __init__(self) -> None:
        self.space: int | None = None
        self.eio = False

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        if self.space is not None:
            if self.space <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[: self.space]
            self.space -= len(data)
        return super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        if self.eio:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fdatasync(fd)


def test_enospc_is_an_event_not_a_crash_and_writing_resumes(tmp_path: Path) -> None:
    disk = FlakyDisk()
    events: list[tuple[str, str]] = []
    bb = BlackBox(tmp_path, max_mb=0.25, segment_mb=1 / 32, flush_bytes=2000, buffer_max_bytes=20_000,
                  disk=disk, on_error=lambda k, d: events.append((k, d)))
    bb.open()
    for i in range(50):
        bb.append(K.OCPP, payload(i), time_ns=i)
    bb.flush()
    disk.space = 1000  # the card fills up in the middle of the next batch
    for i in range(50, 400):
        bb.append(K.OCPP, payload(i), time_ns=i)  # never raises, flushes inline and fails
    bb.flush()
    s = bb.stats()
    assert s["errors"] >= 2 and s["write_failing"] and s["dropped"] > 0
    assert s["buffered_bytes"] <= 20_000
    assert [k for k, _ in events] == ["write_failed"]  # one event per episode (rate-limited)
    assert events[0][1].startswith("ENOSPC")
    assert verify(tmp_path).ok  # the partial write was taken back
    written = ids(bb.read(include_unflushed=False))
    assert written == list(range(len(written)))
    disk.space = None  # space returns
    bb.flush()
    assert [k for k, _ in events] == ["write_failed", "write_resumed"]
    got = ids(bb.read())
    dropped = bb.stats()["dropped"]
    assert got == list(range(len(written))) + list(range(len(written) + dropped, 400))
    bb.close()
    with BlackBox(tmp_path, max_mb=0.25, segment_mb=1 / 32) as again:
        assert ids(again.read()) == got


def test_failed_fdatasync_takes_the_batch_back_and_retries_it(tmp_path: Path) -> None:
    disk = FlakyDisk()
    events: list[str] = []
    with BlackBox(tmp_path, disk=disk, on_error=lambda k, d: events.append(k)) as bb:
        bb.append(K.EVENT, payload(0), time_ns=0)
        bb.flush()
        disk.eio = True
        bb.append(K.EVENT, payload(1), time_ns=1)
        bb.flush()
        assert ids(bb.read(include_unflushed=False)) == [0] and events == ["write_failed"]
        disk.eio = False
        bb.flush()
        assert events == ["write_failed", "write_resumed"]
    with BlackBox(tmp_path) as bb:
        assert ids(bb.read()) == [0, 1]  # no duplicate, no loss


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root with CAP_SYS_ADMIN; skipped otherwise). Unmounted even on failure."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", f"omgw-test-{uuid.uuid4().hex[:8]}",
                        str(mnt)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def test_a_really_full_filesystem(small_tmpfs: Path) -> None:
    store = small_tmpfs / "blackbox"
    events: list[str] = []
    bb = BlackBox(store, max_mb=0.5, segment_mb=1 / 16, flush_bytes=8192, buffer_max_bytes=64 * 1024,
                  on_error=lambda k, d: events.append(k))
    bb.open()
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as f:  # someone else fills the card
        try:
            while True:
                f.write(bytes(65536))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    for i in range(2000):
        bb.append(K.OCPP, payload(i), time_ns=i)
    bb.flush()
    assert events[:1] == ["write_failed"] and bb.stats()["dropped"] > 0
    assert verify(store).ok
    filler.unlink()
    for i in range(2000, 2100):
        bb.append(K.OCPP, payload(i), time_ns=i)
    bb.flush()
    assert events[-1] == "write_resumed" and not bb.stats()["write_failing"]
    got = ids(bb.read())
    assert got[-100:] == list(range(2000, 2100)) and got == sorted(got)
    assert bb.stats()["stored_bytes"] <= 0.5 * 1024 * 1024
    bb.close()
    assert verify(store).ok


# ---- concurrency and the flusher task -------------------------------------------------------------


def test_appends_from_threads_during_flushes_lose_nothing(tmp_path: Path) -> None:
    with BlackBox(tmp_path, max_mb=16, segment_mb=0.25, flush_bytes=1 << 30, buffer_max_bytes=1 << 30) as bb:
        stop = threading.Event()

        def flusher() -> None:
            while not stop.is_set():
                bb.flush()
                list(bb.read(since_ns=0, until_ns=10))

        t = threading.Thread(target=flusher)
        t.start()

        def writer(w: int) -> None:
            for i in range(3000):
                bb.append(K.OCPP, payload(w * 10000 + i, 50), time_ns=i)

        writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for th in writers:
            th.start()
        for th in writers:
            th.join()
        stop.set()
        t.join()
        bb.flush()
        got = ids(bb.read())
    assert sorted(got) == sorted(w * 10000 + i for w in range(4) for i in range(3000))
    for w in range(4):  # each writer's records in its own append order
        mine = [i for i in got if i // 10000 == w]
        assert mine == sorted(mine)


class SlowDisk(Disk):
    def fdatasync(self, fd: int) -> None:
        time.sleep(0.2)
        super().fdatasync(fd)


async def test_run_flushes_off_the_event_loop(tmp_path: Path) -> None:
    bb = BlackBox(tmp_path, flush_interval_s=0.05, disk=SlowDisk())
    bb.open()
    stop = asyncio.Event()
    task = asyncio.create_task(bb.run(stop))
    try:
        loop = asyncio.get_running_loop()
        worst = 0.0
        for i in range(60):
            bb.append(K.TELEMETRY, {"i": i})
            t0 = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - t0)
        assert worst < 0.18  # each fdatasync takes 200 ms; the loop never waited for one
        assert bb.stats()["fsyncs"] >= 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert bb.stats()["buffered_records"] == 0 and ids(bb.read()) == list(range(60))
    bb.close()


async def test_run_flushes_at_once_when_flush_bytes_are_buffered(tmp_path: Path) -> None:
    with BlackBox(tmp_path, flush_interval_s=3600, flush_bytes=2000) as bb:
        stop = asyncio.Event()
        task = asyncio.create_task(bb.run(stop))
        await asyncio.sleep(0)  # let run() attach
        try:
            for i in range(5):
                bb.append(K.OCPP, payload(i, 400))  # no inline flush: the flusher is woken instead
            assert bb.stats()["fsyncs"] == 0
            for _ in range(100):
                await asyncio.sleep(0.01)
                if bb.stats()["stored_records"] == 5:
                    break
            assert bb.stats()["stored_records"] == 5
            bb.append(K.OCPP, payload(5, 400))
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
        assert bb.stats()["stored_records"] == 6  # the final flush on stop


async def test_on_error_is_called_on_the_event_loop_under_run(tmp_path: Path) -> None:
    disk = FlakyDisk()
    disk.space = 0
    seen: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()
    bb = BlackBox(tmp_path, flush_interval_s=0.02, disk=disk,
                  on_error=lambda k, d: seen.append((k, threading.get_ident() == loop_thread)))
    bb.open()
    stop = asyncio.Event()
    task = asyncio.create_task(bb.run(stop))
    try:
        bb.append(K.EVENT, payload(0))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if seen:
                break
        disk.space = None
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(seen) == 2:
                break
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert seen == [("write_failed", True), ("write_resumed", True)]
    bb.close()
