"""Black-box store benchmark: append throughput, bytes per hour, snapshot time, recovery time.

Run: ``.venv/bin/python bench/blackbox.py [--quick] [--dir DIR] [--drop-caches]``

Traffic is the design load: 1 Hz telemetry (~1.5 KB JSON) and 100 OCPP tap records per second
(~300 B JSON), i.e. 101 records/s, ~33.5 KB/s of records. Every figure is printed next to a baseline
measured in the same run on the same directory; nothing is asserted (STYLE.md). Targets (printed as
met or missed): >= 100,000 records/s appended, a 10-minute snapshot in < 1 s, recovery of a full
512 MB store in < 2 s.

1. **Append throughput.** N records through ``BlackBox.append`` with the default write policy
   (flush every 256 KiB with fdatasync; no run() task, so append flushes inline). Baseline: the
   same record bytes written with ``os.write`` in the same 256 KiB batches, each followed by
   fdatasync. Also: append of a dict (JSON encoding in append) and append alone (buffered, no I/O:
   what a call costs the event loop).
2. **Bytes per hour.** One simulated hour (a fake clock) at the default policy: each second the
   hour's 101 records are appended and flush() is called (flush_interval_s = 1 s), with the
   default 64 MB ring. Reported: what the store wrote (records, headers, indexes), fsyncs, what
   the kernel counted for this process (/proc/self/io write_bytes: data sent to the block layer,
   without the filesystem journal) and, with ``--device mmcblk0``, the sectors the whole device
   wrote meanwhile (journal included; so is every other writer on the machine).
3. **Snapshot of a 10-minute window** from that store: ``appliance.blackbox.snapshot.write_snapshot``
   (the archive the health process cuts on a fault). Baseline: reading the raw bytes of the segment
   files that overlap the window.
4. **Recovery of a full 512 MB store** (the ring has wrapped): ``open()`` (segment headers, index
   files, a scan of the newest segment); ``open()`` with every index file deleted (worst case: every
   segment is scanned); ``verify()`` (reads and CRC-checks every record); a full ``read()``.
   Baseline: a raw sequential read of the same files. Page cache is warm unless ``--drop-caches``
   (root; drops the whole machine's caches before each case).

Results go to ``bench/out/blackbox.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))

from appliance import logfmt
from appliance.blackbox.record import RecordKind, encode_record
from appliance.blackbox.snapshot import write_snapshot
from appliance.blackbox.store import MIB, BlackBox, verify

NS = 1_000_000_000
OCPP_PER_S = 100
START_NS = 1_764_090_000 * NS


# ---- realistic payloads -------------------------------------------------------------------------


def telemetry(seq: int, t_ns: int) -> dict[str, Any]:
    """A 1 Hz sample: four meters, four sensors, gateway internals (~1.5 KB as compact JSON)."""
    meters = {
        f"meter{m}": {
            "model": "sdm630", "unit": m + 1, "quality": "good",
            "v": [230.1 + m, 229.8, 231.2], "i": [15.92, 16.01, 15.87], "p_w": 11012.5 + seq % 97,
            "pf": 0.987, "f_hz": 50.01, "e_import_kwh": 123456.789 + seq / 3600, "e_export_kwh": 0.0,
            "thd_v": [2.1, 2.3, 2.0], "read_ms": 41.7,
        }
        for m in range(4)
    }
    sensors = {f"sensor{s}": {"model": "sht4x", "t_c": 31.4 + s, "rh": 41.2, "quality": "good"} for s in range(4)}
    return {
        "schema": 1, "seq": seq, "ts": t_ns, "gateway_id": "gw-0001", "meters": meters, "sensors": sensors,
        "gateway": {"cpu_c": 55.2, "load1": 0.31, "mem_free_mb": 812, "disk_free_mb": 21034, "uptime_s": seq,
                    "tap_drops": 0, "chargers": 12, "relay": "closed", "sd_errors": 0},
    }


def ocpp(seq: int, t_ns: int) -> dict[str, Any]:
    """One tap record: a redacted MeterValues CALL (~300 B as compact JSON)."""
    frame = (f'[2,"{seq:08d}","MeterValues",{{"connectorId":1,"transactionId":4711,"meterValue":[{{"timestamp":'
             f'"2026-11-25T17:10:51Z","sampledValue":[{{"value":"{123456 + seq}",'
             f'"measurand":"Energy.Active.Import.Register"}}]}}]}}]')
    return {"t": t_ns, "cp": f"CP{seq % 12:02d}", "dir": "up" if seq % 2 else "down", "ev": "frame", "f": frame}


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def traffic(seconds: int, start_ns: int = START_NS) -> list[tuple[RecordKind, int, bytes]]:
    """``seconds`` of the design load as (kind, time_ns, payload bytes), in append order."""
    out: list[tuple[RecordKind, int, bytes]] = []
    for s in range(seconds):
        base = start_ns + s * NS
        out.append((RecordKind.TELEMETRY, base, compact(telemetry(s, base))))
        for j in range(OCPP_PER_S):
            t = base + (j + 1) * (NS // (OCPP_PER_S + 1))
            out.append((RecordKind.OCPP, t, compact(ocpp(s * OCPP_PER_S + j, t))))
    return out


# ---- helpers ------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def drop_caches(enabled: bool) -> None:
    if enabled:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def proc_write_bytes() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def device_sectors_written(device: str | None) -> int | None:
    """Field 7 of /sys/block/DEV/stat: 512-byte sectors written to the device by anyone."""
    if device is None:
        return None
    try:
        return int(Path(f"/sys/block/{device}/stat").read_text().split()[6])
    except (OSError, IndexError, ValueError):
        return None


def fs_type(path: Path) -> str:
    r = subprocess.run(["findmnt", "-no", "FSTYPE,SOURCE", "-T", str(path)], capture_output=True, text=True,
                       check=False)
    return r.stdout.strip() or "?"


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


# ---- 1. append throughput -----------------------------------------------------------------------


def bench_append(root: Path, n: int) -> dict[str, Any]:
    seconds = max(1, n // (OCPP_PER_S + 1))
    recs = traffic(seconds)
    n = len(recs)
    blobs = [encode_record(k, t, p) for k, t, p in recs]
    total = sum(len(b) for b in blobs)
    flush_bytes = 262144

    def baseline() -> float:
        t0 = time.perf_counter()
        path = root / "raw.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            batch: list[bytes] = []
            size = 0
            for b in blobs:
                batch.append(b)
                size += len(b)
                if size >= flush_bytes:
                    os.write(fd, b"".join(batch))
                    os.fdatasync(fd)
                    batch, size = [], 0
            os.write(fd, b"".join(batch))
            os.fdatasync(fd)
        finally:
            os.close(fd)
        t = time.perf_counter() - t0
        path.unlink()
        return t

    def store_bytes() -> float:
        d = root / "append-bytes"
        t0 = time.perf_counter()
        with BlackBox(d, max_mb=1024, flush_bytes=flush_bytes) as bb:
            append = bb.append
            for kind, t_ns, p in recs:
                append(kind, p, t_ns)
        t = time.perf_counter() - t0
        shutil.rmtree(d)
        return t

    dicts = [(k, t, telemetry(i, t) if k is RecordKind.TELEMETRY else ocpp(i, t)) for i, (k, t, _) in enumerate(recs)]

    def store_dicts() -> float:
        d = root / "append-dicts"
        t0 = time.perf_counter()
        with BlackBox(d, max_mb=1024, flush_bytes=flush_bytes) as bb:
            append = bb.append
            for kind, t_ns, obj in dicts:
                append(kind, obj, t_ns)
        t = time.perf_counter() - t0
        shutil.rmtree(d)
        return t

    def buffered_only() -> float:
        d = root / "append-buffered"
        with BlackBox(d, max_mb=1024, flush_bytes=1 << 40, buffer_max_bytes=1 << 40) as bb:
            append = bb.append
            t0 = time.perf_counter()
            for kind, t_ns, p in recs:
                append(kind, p, t_ns)
            t = time.perf_counter() - t0  # only the appends: close() writes them afterwards
        shutil.rmtree(d)
        return t

    cases = [("os.write + fdatasync, same bytes", baseline),
             ("BlackBox.append(bytes) + flush", store_bytes),
             ("BlackBox.append(dict) + flush", store_dicts),
             ("BlackBox.append(bytes), buffered", buffered_only)]
    results: dict[str, Any] = {"records": n, "bytes": total, "avg_record_bytes": total / n}
    for name, fn in cases:
        best = min(fn() for _ in range(3))
        results[name] = {"s": best, "records_per_s": n / best, "mb_per_s": total / best / 1e6}
    base = results[cases[0][0]]["s"]
    print(f"\n1. append throughput: {n:,} records ({total / 1e6:.1f} MB, {total / n:.0f} B per record on disk), "
          f"flush every {flush_bytes // 1024} KiB with fdatasync; best of 3")
    print(f"   {'case':<40} {'records/s':>11} {'MB/s':>8} {'time ratio':>11}")
    for name, _ in cases:
        r = results[name]
        tag = "  (baseline)" if name == cases[0][0] else ""
        print(f"   {name:<40} {r['records_per_s']:11,.0f} {r['mb_per_s']:8.1f} {r['s'] / base:11.2f}{tag}")
    per_append = results["BlackBox.append(bytes), buffered"]["s"] / n * 1e6
    results["append_us_buffered"] = per_append
    rps = results["BlackBox.append(bytes) + flush"]["records_per_s"]
    print(f"   append alone costs the caller {per_append:.2f} us; target >= 100,000 records/s with writes: "
          f"{rps:,.0f} ({mark(rps >= 100_000)})")
    return results


# ---- 2. bytes per hour --------------------------------------------------------------------------


class FakeClock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def bench_hour(root: Path, seconds: int, device: str | None) -> tuple[dict[str, Any], Path]:
    d = root / "hour"
    clock = FakeClock(START_NS)
    bb = BlackBox(d, clock=clock)  # the defaults: 64 MB ring, 4 MB segments, 1 s / 256 KiB, fdatasync
    bb.open()
    payload_bytes = 0
    os.sync()
    w0, d0 = proc_write_bytes(), device_sectors_written(device)
    t0 = time.perf_counter()
    for s in range(seconds):
        for k, t, p in traffic(1, START_NS + s * NS):
            bb.append(k, p, t)
            payload_bytes += len(p)
        clock.t = START_NS + (s + 1) * NS
        bb.flush()  # what run() does every flush_interval_s = 1 s
    elapsed = time.perf_counter() - t0
    st = bb.stats()
    bb.close()
    os.sync()
    w1, d1 = proc_write_bytes(), device_sectors_written(device)
    scale = 3600 / seconds
    records = st["records"]
    r = {
        "simulated_s": seconds, "wall_s": elapsed, "records": records, "payload_bytes": payload_bytes,
        "record_bytes": st["bytes_appended"], "bytes_written": st["bytes_written"], "fsyncs": st["fsyncs"],
        "per_hour": {"records": records * scale, "payload_mb": payload_bytes * scale / 1e6,
                     "written_mb": st["bytes_written"] * scale / 1e6, "fsyncs": st["fsyncs"] * scale,
                     "kernel_write_mb": None if w0 is None or w1 is None else (w1 - w0) * scale / 1e6,
                     "device_write_mb": None if d0 is None or d1 is None else (d1 - d0) * 512 * scale / 1e6},
        "segments_kept": st["segments"], "stored_mb": st["stored_bytes"] / 1e6,
    }
    ph = r["per_hour"]
    print(f"\n2. bytes per hour at the default policy (1 Hz telemetry + {OCPP_PER_S} OCPP/s; {seconds} s simulated "
          f"in {elapsed:.1f} s, scaled to 1 h)")
    print(f"   {'':<44} {'per hour':>14} {'ratio':>7}")
    print(f"   {'payload bytes (baseline)':<44} {ph['payload_mb']:11.1f} MB {1:7.3f}")
    print(f"   {'records (20 B header each)':<44} {st['bytes_appended'] * scale / 1e6:11.1f} MB "
          f"{st['bytes_appended'] / payload_bytes:7.3f}")
    print(f"   {'written by the store (+ segment headers, idx)':<44} {ph['written_mb']:11.1f} MB "
          f"{st['bytes_written'] / payload_bytes:7.3f}")
    if ph["kernel_write_mb"] is not None:
        print(f"   {'sent to the block layer (/proc/self/io)':<44} {ph['kernel_write_mb']:11.1f} MB "
              f"{ph['kernel_write_mb'] / ph['payload_mb']:7.3f}")
    if ph["device_write_mb"] is not None:
        print(f"   {f'written to /dev/{device} (all writers, journal)':<44} {ph['device_write_mb']:11.1f} MB "
              f"{ph['device_write_mb'] / ph['payload_mb']:7.3f}")
    print(f"   {'fdatasync + directory fsync calls':<44} {ph['fsyncs']:14,.0f}")
    print(f"   records per hour {ph['records']:,.0f}; the default 64 MB ring holds "
          f"{64 * MIB / (st['bytes_written'] / seconds) / 60:.0f} min of this load")
    return r, d


# ---- 3. snapshot of a 10-minute window ------------------------------------------------------------


def bench_snapshot(root: Path, store_dir: Path, window_s: int) -> dict[str, Any]:
    bb = BlackBox(store_dir)
    bb.open(read_only=True)
    st = bb.stats()
    end = st["newest_ns"] - 30 * NS
    start = end - window_s * NS
    out_dir = root / "snapshots"

    def raw() -> int:
        # the segment files that hold the window (found by the store's own bounds, as read() does)
        size = 0
        for path in overlapping:
            with open(path, "rb", buffering=0) as f:
                data = f.read()
            size += len(data)
        return size

    segs = [s for s in bb.segments() if s.oldest_ns is not None and s.newest_ns is not None]
    overlapping = [store_dir / s.name for s in segs if s.newest_ns >= start and s.oldest_ns <= end]
    t_raw, raw_bytes = min((timed(raw) for _ in range(3)), key=lambda x: x[0])

    def iterate() -> int:
        return sum(1 for _ in bb.read(since_ns=start, until_ns=end))

    t_read, count = min((timed(iterate) for _ in range(3)), key=lambda x: x[0])
    def snap() -> Path:
        return write_snapshot(bb, start, end, out_dir, "gw-0001", "bench")

    times = []
    for _ in range(3):
        shutil.rmtree(out_dir, ignore_errors=True)
        t, path = timed(snap)
        times.append(t)
    t_snap = min(times)
    snap_bytes = path.stat().st_size
    how = "write_snapshot (JSON lines + tar.gz + fsync)"
    bb.close()
    r = {"window_s": window_s, "records": count, "segments_read": len(overlapping), "raw_bytes": raw_bytes,
         "raw_read_s": t_raw, "read_s": t_read, "snapshot_s": t_snap, "snapshot_bytes": snap_bytes, "how": how}
    print(f"\n3. snapshot of a {window_s // 60}-minute window: {count:,} records in {len(overlapping)} of "
          f"{len(segs)} segments ({raw_bytes / 1e6:.1f} MB); best of 3")
    print(f"   {'case':<48} {'time':>9} {'ratio':>7}")
    print(f"   {'raw read of the overlapping segments (baseline)':<48} {t_raw * 1000:7.1f}ms {1:7.2f}")
    print(f"   {'BlackBox.read(window), every record decoded':<48} {t_read * 1000:7.1f}ms {t_read / t_raw:7.2f}")
    print(f"   {how:<48} {t_snap * 1000:7.1f}ms {t_snap / t_raw:7.2f}")
    print(f"   archive {snap_bytes / 1e6:.1f} MB; target < 1 s: {mark(t_snap < 1.0)}")
    return r


# ---- 4. recovery of a full store ------------------------------------------------------------------


def build_full_store(d: Path, max_mb: float) -> dict[str, Any]:
    """Fill a store past max_mb with the design load (the ring wraps), then leave a torn tail."""
    t0 = time.perf_counter()
    chunk_s = 600
    s = 0
    with BlackBox(d, max_mb=max_mb, flush_bytes=4 * MIB, buffer_max_bytes=64 * MIB) as bb:
        while True:
            recs = traffic(chunk_s, START_NS + s * NS)
            for k, t, p in recs:
                bb.append(k, p, t)
            s += chunk_s
            bb.flush()
            st = bb.stats()
            if st["bytes_written"] > max_mb * MIB * 1.05:
                break
        st = bb.stats()
    # a power loss in the middle of the last batch: half a record at the end of the newest segment
    newest = max(d.glob("seg-*.bbx"))
    with open(newest, "ab") as f:
        f.write(encode_record(RecordKind.OCPP, START_NS + s * NS, b'{"torn":true,"pad":"' + b"x" * 200 + b'"}')[:120])
    return {"build_s": time.perf_counter() - t0, "records": st["stored_records"], "segments": st["segments"],
            "bytes": st["stored_bytes"]}


def bench_recovery(root: Path, max_mb: float, drop: bool) -> dict[str, Any]:
    d = root / "full"
    info = build_full_store(d, max_mb)
    files = sorted(p for p in d.iterdir() if p.is_file())
    store_bytes = sum(p.stat().st_size for p in files)
    torn_tail = max(d.glob("seg-*.bbx")).read_bytes()

    def raw() -> int:
        n = 0
        for p in files:
            with open(p, "rb", buffering=0) as f:
                while chunk := f.read(4 * MIB):
                    n += len(chunk)
        return n

    def restore_tail() -> None:
        max(d.glob("seg-*.bbx")).write_bytes(torn_tail)

    def recover() -> Any:
        restore_tail()
        drop_caches(drop)
        bb = BlackBox(d, max_mb=max_mb)
        t, report = timed(bb.open)
        bb.close()
        return t, report

    def recover_no_index() -> Any:
        for p in d.glob("*.idx"):
            p.unlink()
        return recover()

    def do_verify() -> float:
        drop_caches(drop)
        return timed(lambda: verify(d))[0]

    def full_read() -> tuple[float, int]:
        drop_caches(drop)
        bb = BlackBox(d, max_mb=max_mb)
        bb.open(read_only=True)
        t, n = timed(lambda: sum(1 for _ in bb.read()))
        bb.close()
        return t, n

    raw()  # warm up once so "warm cache" means the same thing for every case
    def raw_cold() -> int:
        drop_caches(drop)
        return raw()

    t_raw = min(timed(raw_cold)[0] for _ in range(3))
    t_open, report = min((recover() for _ in range(3)), key=lambda x: x[0])
    t_noidx, _ = recover_no_index()
    t_verify = min(do_verify() for _ in range(2))
    t_read, n_read = full_read()
    r = {**info, "store_bytes": store_bytes, "files": len(files), "raw_read_s": t_raw, "open_s": t_open,
         "open_records": report.records, "open_cut_bytes": report.cut_bytes, "open_no_index_s": t_noidx,
         "verify_s": t_verify, "read_all_s": t_read, "read_all_records": n_read, "drop_caches": drop}
    print(f"\n4. recovery of a full {max_mb:.0f} MB store: {info['records']:,} records in {info['segments']} segments, "
          f"{store_bytes / 1e6:.0f} MB in {len(files)} files, torn last record; "
          f"{'cold' if drop else 'warm'} page cache (built in {info['build_s']:.0f} s)")
    print(f"   {'case':<52} {'time':>9} {'ratio':>7}")
    print(f"   {'raw sequential read of every file (baseline)':<52} {t_raw:8.3f}s {1:7.2f}")
    print(f"   {'open(): headers + indexes + scan of the newest segment':<52} {t_open:8.3f}s {t_open / t_raw:7.3f}")
    print(f"   {'open() without index files (every segment scanned)':<52} {t_noidx:8.3f}s {t_noidx / t_raw:7.2f}")
    print(f"   {'verify(): CRC of every record':<52} {t_verify:8.3f}s {t_verify / t_raw:7.2f}")
    print(f"   {'read() of every record':<52} {t_read:8.3f}s {t_read / t_raw:7.2f}")
    print(f"   open() kept {report.records:,} records and cut {report.cut_bytes} bytes "
          f"({report.segments[-1].cut_reason}); target < 2 s: {mark(t_open < 2.0)} "
          f"(without indexes: {mark(t_noidx < 2.0)})")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller: 60k appends, 20 min, 64 MB full store")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the stores (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    ap.add_argument("--drop-caches", action="store_true", help="cold page cache for the recovery cases (root)")
    ap.add_argument("--device", default=None,
                    help="block device under --dir (e.g. mmcblk0): also report its sectors written in section 2")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out" / "blackbox.json")
    args = ap.parse_args()

    logfmt.setup("error", sys.stderr)  # recovery logs each cut at warning level: not bench output
    root = Path(tempfile.mkdtemp(prefix="omgw-bench-blackbox-", dir=args.dir))
    n_append = 60_000 if args.quick else 303_000
    hour_s = 1200 if args.quick else 3600
    full_mb = 64.0 if args.quick else 512.0
    print(f"black box benchmark: Python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs; stores in {root} ({fs_type(root)})")
    results: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                               "fs": fs_type(root), "quick": args.quick}
    try:
        results["append"] = bench_append(root, n_append)
        results["hour"], hour_dir = bench_hour(root, hour_s, args.device)
        results["snapshot"] = bench_snapshot(root, hour_dir, 600)
        shutil.rmtree(hour_dir)
        results["recovery"] = bench_recovery(root, full_mb, args.drop_caches)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
