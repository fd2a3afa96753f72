"""Snapshot archives: content, manifest, verification, atomic write, retention, JSON lines.

A list-backed record source stands in for the store here (the recorder test uses the real one).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import appliance
from appliance.blackbox.record import Record, RecordKind
from appliance.blackbox.snapshot import (
    SnapshotArchive,
    dump_jsonl,
    iso_ns,
    parse_kinds,
    read_manifest,
    record_line,
    verify_snapshot,
    write_snapshot,
)

S = 1_000_000_000
T0 = 1_764_090_651 * S  # 2025-11-25T17:10:51Z
GW = "gw-test"


class ListStore:
    """The read() half of the store over a list (inclusive bounds, like the real one is asked to be)."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.records = list(records)
        self.reads: list[dict[str, Any]] = []

    def read(self, since_ns: int | None = None, until_ns: int | None = None,
             kinds: Iterable[RecordKind] | None = None, include_unflushed: bool = True) -> Iterator[Record]:
        self.reads.append({"since_ns": since_ns, "until_ns": until_ns, "kinds": kinds})
        wanted = None if kinds is None else set(kinds)
        for r in self.records:
            if since_ns is not None and r.time_ns < since_ns:
                continue
            if until_ns is not None and r.time_ns > until_ns:
                continue
            if wanted is not None and r.kind not in wanted:
                continue
            yield r


def rec(kind: RecordKind, t: int, obj: Any) -> Record:
    return Record(kind, t, obj if isinstance(obj, bytes) else json.dumps(obj).encode())


def sample_records() -> list[Record]:
    out = []
    for i in range(-120, 60):  # 1 Hz telemetry from T0-120 s to T0+59 s
        out.append(rec(RecordKind.TELEMETRY, T0 + i * S, {"seq": i, "p_kw": 7.2}))
    fault = '[2,"9","StatusNotification",{"connectorId":1,"errorCode":"GroundFailure","status":"Faulted"}]'
    out.append(rec(RecordKind.OCPP, T0, {"cp": "CP001", "dir": "up", "ev": "frame", "f": fault}))
    out.append(rec(RecordKind.EVENT, T0 + 5 * S, {"kind": "watchdog_power_cycle", "cp": "CP001"}))
    out.append(rec(RecordKind.MARK, T0 + 6 * S, b"\xff\x00 not json"))
    return sorted(out, key=lambda r: r.time_ns)


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar}  # type: ignore[union-attr]


def write(tmp_path: Path, store: Any = None, **kw: Any) -> Path:
    kw.setdefault("trigger_ns", T0)
    return write_snapshot(store or ListStore(sample_records()), T0 - 60 * S, T0 + 30 * S,
                          tmp_path / "snap", GW, kw.pop("trigger", "ocpp_faulted cp=CP001 connector=1"), **kw)


# ---- content and manifest --------------------------------------------------------------------


def test_archive_holds_a_directory_a_manifest_and_the_window_records_in_order(tmp_path: Path) -> None:
    path = write(tmp_path)
    sid = path.name.removesuffix(".tar.gz")
    assert sid.startswith("20251125T171051Z-ocpp_faulted-")
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
        assert names == [sid, f"{sid}/manifest.json", f"{sid}/records.jsonl"]
        for m in tar:
            assert m.mtime == T0 // S and m.uid == 0 and m.gid == 0
    lines = [json.loads(x) for x in members(path)[f"{sid}/records.jsonl"].splitlines()]
    assert lines[0] == {"t": T0 - 60 * S, "kind": "telemetry", "data": {"seq": -60, "p_kw": 7.2}}
    assert lines[-1]["t"] == T0 + 30 * S
    assert [x["t"] for x in lines] == sorted(x["t"] for x in lines)
    ocpp = [x for x in lines if x["kind"] == "ocpp"]
    assert ocpp[0]["data"]["cp"] == "CP001" and "Faulted" in ocpp[0]["data"]["f"]
    [mark] = [x for x in lines if x["kind"] == "mark"]
    assert base64.b64decode(mark["data"]["raw_b64"]) == b"\xff\x00 not json"


def test_manifest_names_gateway_trigger_range_counts_and_member_hashes(tmp_path: Path) -> None:
    path = write(tmp_path, trigger=["ocpp_faulted cp=CP001", "watchdog_power_cycle cp=CP001"], trigger_count=5)
    sid = path.name.removesuffix(".tar.gz")
    files = members(path)
    manifest = json.loads(files[f"{sid}/manifest.json"])
    body = files[f"{sid}/records.jsonl"]
    assert manifest == {
        "schema": 1,
        "type": "omgw.blackbox.snapshot",
        "snapshot_id": sid,
        "gateway_id": GW,
        "omgw_version": appliance.__version__,
        "trigger": {"reasons": ["ocpp_faulted cp=CP001", "watchdog_power_cycle cp=CP001"], "count": 5,
                    "time_ns": T0, "time": "2025-11-25T17:10:51.000000000Z"},
        "range": {"start_ns": T0 - 60 * S, "end_ns": T0 + 30 * S, "start": "2025-11-25T17:09:51.000000000Z",
                  "end": "2025-11-25T17:11:21.000000000Z", "partial": False},
        "records": {"total": 94, "by_kind": {"telemetry": 91, "ocpp": 1, "event": 1, "command": 0, "soh": 0,
                                             "mark": 1}},
        "members": [{"name": "records.jsonl", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}],
    }
    assert read_manifest(path) == manifest


def test_store_is_read_for_the_window_and_records_outside_it_are_left_out(tmp_path: Path) -> None:
    class SloppyStore(ListStore):  # returns everything, whatever the bounds
        def read(self, since_ns: int | None = None, until_ns: int | None = None,
                 kinds: Iterable[RecordKind] | None = None, include_unflushed: bool = True) -> Iterator[Record]:
            self.reads.append({"since_ns": since_ns, "until_ns": until_ns})
            return iter(self.records)

    store = SloppyStore(sample_records())
    path = write(tmp_path, store)
    assert store.reads == [{"since_ns": T0 - 60 * S, "until_ns": T0 + 30 * S}]
    assert read_manifest(path)["records"]["total"] == 94
    assert verify_snapshot(path) == []


def test_same_window_gives_the_same_bytes(tmp_path: Path) -> None:
    a = write(tmp_path / "a")
    b = write(tmp_path / "b")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    header = a.read_bytes()[:10]  # RFC 1952 §2.3: MTIME is bytes 4-7, little-endian
    assert int.from_bytes(header[4:8], "little") == T0 // S


def test_empty_window_still_gives_a_valid_snapshot(tmp_path: Path) -> None:
    path = write(tmp_path, ListStore([]))
    assert read_manifest(path)["records"]["total"] == 0
    assert verify_snapshot(path) == []


def test_explicit_snapshot_id_is_used_and_unsafe_ids_are_refused(tmp_path: Path) -> None:
    assert write(tmp_path, snapshot_id="field-visit_1").name == "field-visit_1.tar.gz"
    for bad in ["../x", "a/b", "", ".hidden", "x" * 81]:
        with pytest.raises(ValueError):
            write(tmp_path, snapshot_id=bad)


def test_iso_ns_keeps_nanoseconds() -> None:
    assert iso_ns(T0 + 123_456_789) == "2025-11-25T17:10:51.123456789Z"


# ---- verification ----------------------------------------------------------------------------


def repack(src: Path, dst: Path, edit: Any) -> Path:
    """Rewrite an archive, letting ``edit(name, data)`` change (or drop, with None) each member."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin:
            data = tin.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if data is not None:
                data = edit(m.name, data)
                if data is None:
                    continue
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    return dst


def test_a_fresh_snapshot_verifies_clean(tmp_path: Path) -> None:
    assert verify_snapshot(write(tmp_path)) == []


def test_verify_reports_a_changed_record_as_a_sha256_mismatch(tmp_path: Path) -> None:
    src = write(tmp_path)
    bad = repack(src, tmp_path / "bad.tar.gz",
                 lambda n, d: d.replace(b'"p_kw":7.2', b'"p_kw":9.9', 1) if n.endswith(".jsonl") else d)
    problems = verify_snapshot(bad)
    assert len(problems) == 1 and problems[0].startswith("records.jsonl: sha256 ")


def test_verify_reports_a_missing_member(tmp_path: Path) -> None:
    src = write(tmp_path)
    bad = repack(src, tmp_path / "bad.tar.gz", lambda n, d: None if n.endswith(".jsonl") else d)
    assert verify_snapshot(bad) == ["records.jsonl: missing member (listed in manifest.json)"]


def test_verify_reports_a_missing_manifest(tmp_path: Path) -> None:
    src = write(tmp_path)
    bad = repack(src, tmp_path / "bad.tar.gz", lambda n, d: None if n.endswith("manifest.json") else d)
    assert verify_snapshot(bad) == ["manifest.json: missing member"]


def test_verify_reports_manifest_count_mismatches(tmp_path: Path) -> None:
    src = write(tmp_path)

    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith("manifest.json"):
            return data
        m = json.loads(data)
        m["records"]["by_kind"]["ocpp"] = 3
        m["records"]["total"] = 96
        return json.dumps(m).encode()

    problems = verify_snapshot(repack(src, tmp_path / "bad.tar.gz", edit))
    assert problems == ["manifest.json: records.by_kind.ocpp = 3, archive has 1",
                        "manifest.json: records.total = 96, archive has 94"]


def test_verify_reports_bad_lines_with_their_line_number(tmp_path: Path) -> None:
    src = write(tmp_path)
    body = next(d for n, d in members(src).items() if n.endswith(".jsonl"))
    lines = body.splitlines(keepends=True)
    lines[2] = b'{"t": 1, "kind": "telemetry", "data": {}}\n'
    lines[4] = b"garbage\n"
    new_body = b"".join(lines)

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith(".jsonl"):
            return new_body
        if name.endswith("manifest.json"):  # keep size and hash right: only the lines are wrong
            m = json.loads(data)
            m["members"][0].update(size=len(new_body), sha256=hashlib.sha256(new_body).hexdigest())
            return json.dumps(m).encode()
        return data

    problems = verify_snapshot(repack(src, tmp_path / "bad.tar.gz", edit))
    assert problems == [
        f"records.jsonl line 3: t=1 outside range [{T0 - 60 * S}, {T0 + 30 * S}]",
        "records.jsonl line 5: not a JSON object",
        "manifest.json: records.by_kind.telemetry = 91, archive has 90",
        "manifest.json: records.total = 94, archive has 93",
    ]


def test_verify_reports_an_unlisted_member(tmp_path: Path) -> None:
    src = write(tmp_path)
    dst = tmp_path / "extra.tar.gz"
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz") as tout:
        sid = ""
        for m in tin:
            sid = sid or m.name
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
        extra = tarfile.TarInfo(f"{sid}/notes.txt")
        extra.size = 2
        tout.addfile(extra, io.BytesIO(b"hi"))
    assert verify_snapshot(dst) == ["notes.txt: member not listed in manifest.json"]


@pytest.mark.parametrize("cut", [0, 10, 200, -10])
def test_verify_reports_a_truncated_or_garbled_file(tmp_path: Path, cut: int) -> None:
    src = write(tmp_path)
    data = src.read_bytes()
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(data[:cut] if cut else b"not gzip at all")
    problems = verify_snapshot(bad)
    assert problems and problems[0].startswith("cut.tar.gz: not a readable tar.gz archive")


def same_content(a: bytes, b: bytes) -> bool:
    try:
        return gzip.decompress(a) == gzip.decompress(b)
    except (OSError, EOFError, zlib.error):
        return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_verify_never_raises_and_flags_any_flipped_byte_that_changes_content(tmp_path: Path,
                                                                            data: st.DataObject) -> None:
    src = tmp_path / "ok.tar.gz"
    if not src.exists():
        src.write_bytes(write(tmp_path).read_bytes())
    good = src.read_bytes()
    raw = bytearray(good)
    raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    bad = tmp_path / "flipped.tar.gz"
    bad.write_bytes(bytes(raw))
    # Some bits change nothing: gzip header hints (RFC 1952 §2.3: FTEXT, MTIME, XFL, OS) and a few
    # redundant bits of the deflate stream. Every flip that changes the archive's content is caught.
    assert verify_snapshot(bad) != [] or same_content(bytes(raw), good)


# ---- atomic write ----------------------------------------------------------------------------


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_a_store_that_fails_midway_leaves_nothing(tmp_path: Path) -> None:
    class FailingStore(ListStore):
        def read(self, *a: Any, **kw: Any) -> Iterator[Record]:
            it = super().read(*a, **kw)
            for i, r in enumerate(it):
                if i == 50:
                    raise OSError(5, "Input/output error")
                yield r

    with pytest.raises(OSError):
        write(tmp_path, FailingStore(sample_records()))
    assert leftovers(tmp_path / "snap") == []


def test_a_writer_that_fails_midway_leaves_no_final_file_and_no_temp(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real_addfile = tarfile.TarFile.addfile
    seen: list[str] = []
    temp_seen: list[list[str]] = []

    def failing_addfile(self: tarfile.TarFile, info: tarfile.TarInfo, fileobj: Any = None) -> None:
        seen.append(info.name)
        if info.name.endswith("records.jsonl"):
            temp_seen.append(leftovers(tmp_path / "snap"))  # the partial archive is there, hidden
            raise OSError(28, "No space left on device")
        real_addfile(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", failing_addfile)
    with pytest.raises(OSError, match="No space"):
        write(tmp_path)
    assert len(seen) == 3
    [names] = temp_seen
    assert len(names) == 1 and names[0].startswith(".") and names[0].endswith(".tmp")
    assert leftovers(tmp_path / "snap") == []


def test_a_failed_fsync_leaves_nothing_under_the_final_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write(tmp_path)
    assert leftovers(tmp_path / "snap") == []


def test_a_rewrite_replaces_the_archive_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write(tmp_path)
    before = first.read_bytes()
    monkeypatch.setattr(tarfile.TarFile, "addfile", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        write(tmp_path)
    assert first.read_bytes() == before  # the old, complete archive is untouched
    assert verify_snapshot(first) == []


# ---- retention -------------------------------------------------------------------------------


def make_snapshots(directory: Path, n: int, *, records: int = 10) -> list[Path]:
    paths = []
    for i in range(n):
        t = T0 + i * 600 * S
        store = ListStore(rec(RecordKind.TELEMETRY, t - k * S, {"k": k, "pad": os.urandom(200).hex()})
                          for k in range(records))
        paths.append(write_snapshot(store, t - 60 * S, t, directory, GW, f"fault{i}", trigger_ns=t))
    return paths


def test_archive_lists_snapshots_oldest_first_with_manifest_facts(tmp_path: Path) -> None:
    paths = make_snapshots(tmp_path, 3)
    (tmp_path / ".in-progress.tmp").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("not a snapshot")
    infos = SnapshotArchive(tmp_path).snapshots()
    assert [i.path for i in infos] == paths
    assert [i.reasons for i in infos] == [("fault0",), ("fault1",), ("fault2",)]
    assert [i.trigger_ns for i in infos] == [T0, T0 + 600 * S, T0 + 1200 * S]
    assert all(i.records == 10 and i.readable and i.size == i.path.stat().st_size for i in infos)
    assert SnapshotArchive(tmp_path).get(infos[1].snapshot_id) == infos[1]


def test_retention_by_count_removes_the_oldest(tmp_path: Path) -> None:
    paths = make_snapshots(tmp_path, 5)
    archive = SnapshotArchive(tmp_path, keep_count=3)
    assert archive.enforce_retention() == paths[:2]
    assert [i.path for i in archive.snapshots()] == paths[2:]
    assert archive.enforce_retention() == []


def test_retention_by_size_removes_the_oldest_until_under_the_limit(tmp_path: Path) -> None:
    paths = make_snapshots(tmp_path, 5, records=200)
    sizes = [p.stat().st_size for p in paths]
    keep_bytes = sum(sizes[-2:]) + 1
    archive = SnapshotArchive(tmp_path, keep_mb=keep_bytes / (1024 * 1024))
    assert archive.enforce_retention() == paths[:3]
    assert archive.total_bytes() <= keep_bytes


def test_retention_keeps_the_newest_even_if_it_alone_is_too_big(tmp_path: Path) -> None:
    paths = make_snapshots(tmp_path, 2, records=200)
    archive = SnapshotArchive(tmp_path, keep_mb=1 / 1024)  # 1 KiB
    assert archive.enforce_retention() == paths[:1]
    assert [i.path for i in archive.snapshots()] == paths[1:]


def test_retention_orders_by_trigger_time_not_file_time(tmp_path: Path) -> None:
    paths = make_snapshots(tmp_path, 3)
    os.utime(paths[0], (2_000_000_000, 2_000_000_000))  # the oldest snapshot, touched last
    assert SnapshotArchive(tmp_path, keep_count=2).enforce_retention() == paths[:1]


def test_retention_removes_stale_temp_files_but_not_fresh_ones(tmp_path: Path) -> None:
    make_snapshots(tmp_path, 1)
    stale, fresh = tmp_path / ".a.tar.gz.1.tmp", tmp_path / ".b.tar.gz.2.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (1_000_000, 1_000_000))
    removed = SnapshotArchive(tmp_path).enforce_retention()
    assert removed == [stale] and fresh.exists()


def test_an_unreadable_archive_is_listed_and_subject_to_retention(tmp_path: Path) -> None:
    paths = make_snapshots(tmp_path, 2)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    os.utime(junk, (1_000_000, 1_000_000))
    archive = SnapshotArchive(tmp_path, keep_count=2)
    first = archive.snapshots()[0]
    assert (first.path, first.readable, first.reasons) == (junk, False, ())
    assert archive.enforce_retention() == [junk]
    assert [i.path for i in archive.snapshots()] == paths


def test_archive_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    archive = SnapshotArchive(tmp_path / "nope")
    assert archive.snapshots() == [] and archive.enforce_retention() == []


# ---- JSON lines (dump) -----------------------------------------------------------------------


def test_dump_writes_the_same_line_format_filtered_by_time_and_kind() -> None:
    store = ListStore(sample_records())
    out = io.StringIO()
    n = dump_jsonl(store, T0 - 2 * S, T0 + 10 * S, parse_kinds(["ocpp,event"]), out)
    expected = [r for r in store.records if r.kind in (RecordKind.OCPP, RecordKind.EVENT)]
    assert n == 2
    assert out.getvalue() == "".join(record_line(r) + "\n" for r in expected)
    assert store.reads[-1]["since_ns"] == T0 - 2 * S and store.reads[-1]["until_ns"] == T0 + 10 * S


def test_record_line_is_compact_ascii_json() -> None:
    line = record_line(rec(RecordKind.EVENT, 5, {"kind": "fault", "text": "Überhitzung\n"}))
    assert line == '{"t":5,"kind":"event","data":{"kind":"fault","text":"\\u00dcberhitzung\\n"}}'
    assert record_line(Record(RecordKind.SOH, 1, b"NaN")) == '{"t":1,"kind":"soh","data":{"raw_b64":"TmFO"}}'


def test_parse_kinds_accepts_names_numbers_and_commas_and_names_bad_ones() -> None:
    assert parse_kinds(["OCPP", "3", "soh,mark"]) == {RecordKind.OCPP, RecordKind.EVENT, RecordKind.SOH,
                                                      RecordKind.MARK}
    with pytest.raises(ValueError, match="unknown record kind 'frames'"):
        parse_kinds(["frames"])
