"""Crash safety: a child process appends continuously and is killed with SIGKILL at random moments.

After every kill, recovery must return every record whose flush() had returned before the kill, in
append order, with nothing corrupt and nothing missing in between (the ring may only drop the
oldest whole segments). The store is small (64 KiB segments, 512 KiB ring) so kills also land in
segment rotation, index writes and ring deletion. Half of the children write through a disk that
takes at most 512 bytes per pwrite and is slow (short writes at SD-card speed), so kills often land
in the middle of a batch and leave a torn tail. Some kills land during the child's own recovery: on odd
rounds the parent checks with a read-only open and leaves the truncation to the next child.

Set OMGW_CRASH_ROUNDS to run more rounds (default 240).
"""

from __future__ import annotations

import inspect
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.blackbox.record import RecordKind
from appliance.blackbox.store import BlackBox, verify

REPO = Path(__file__).resolve().parents[3]
ROUNDS = int(os.environ.get("OMGW_CRASH_ROUNDS", "240"))
MAX_MB, SEGMENT_MB = 0.5, 1 / 16


def make_payload(seq: int) -> bytes:
    """Deterministic from the sequence number, 20 B .. 3 KB: any damage or mix-up is visible."""
    return b'{"seq":%d,"pad":"%s"}' % (seq, b"abcdefghij"[seq % 10 : seq % 10 + 1] * ((seq * 7919) % 3000))


CHILD = f"""
import os, random, sys, time
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from appliance.blackbox.record import RecordKind
from appliance.blackbox.store import BlackBox, Disk

{inspect.getsource(make_payload)}

class ShortWrites(Disk):  # a slow card: 512 bytes per call, about 5 MB/s
    def pwrite(self, fd, data, offset):
        time.sleep(0.0001)
        return os.pwrite(fd, data[:512], offset)

directory, seed, short = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
rnd = random.Random(seed)
bb = BlackBox(Path(directory), max_mb={MAX_MB}, segment_mb={SEGMENT_MB}, flush_bytes=rnd.randint(2000, 60000),
              disk=ShortWrites() if short else None)
bb.open()
seq = bb.stats()["newest_ns"] or 0
out = sys.stdout.fileno()
os.write(out, b"ready %d\\n" % seq)
while True:
    for _ in range(rnd.randint(1, 40)):
        seq += 1
        bb.append(RecordKind.OCPP, make_payload(seq), time_ns=seq)
    bb.flush()
    os.write(out, b"%d\\n" % seq)  # acknowledged: flush() returned, so this must survive
"""


def _read_until_ready(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        assert left > 0, "child did not start"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 65536)
            assert chunk, f"child exited: {proc.wait()} {proc.stderr.read() if proc.stderr else b''!r}"
            buf += chunk
    return buf


def _check(directory: Path, read_only: bool, acked: int, seen: int) -> tuple[int, int]:
    """Recover (or open read-only) and check everything; return (newest seq, bytes cut)."""
    bb = BlackBox(directory, max_mb=MAX_MB, segment_mb=SEGMENT_MB)
    report = bb.open(read_only=read_only)
    try:
        records = list(bb.read())
    finally:
        bb.close()
    seqs = [r.time_ns for r in records]
    if acked or seen:
        assert seqs, "every record is gone"
    if seqs:
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a gap or a reordering"
        assert seqs[-1] >= acked, f"lost acknowledged records: newest {seqs[-1]} < acked {acked}"
        assert seqs[-1] >= seen, f"lost records that an earlier recovery returned: {seqs[-1]} < {seen}"
        for r in records:
            assert r.kind is RecordKind.OCPP and r.payload == make_payload(r.time_ns), f"record {r.time_ns} damaged"
    v = verify(directory)
    assert v.ok, v.problems
    if not read_only:
        assert not v.notes, v.notes
        size = sum(p.stat().st_size for p in directory.iterdir())
        assert size <= MAX_MB * 1024 * 1024
    return (seqs[-1] if seqs else 0), report.cut_bytes


def test_sigkill_at_random_moments_never_loses_a_flushed_record(tmp_path: Path) -> None:
    rnd = random.Random(int(os.environ.get("OMGW_CRASH_SEED", "20261125")))
    directory = tmp_path / "blackbox"
    acked = seen = 0
    torn = kills_before_ready = unacked_kept = 0
    t0 = time.monotonic()
    for round_ in range(ROUNDS):
        short = round_ % 4 in (1, 2)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", CHILD, str(directory), str(rnd.getrandbits(32)), str(int(short))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        head = b""
        try:
            if rnd.random() < 0.15:  # anywhere: during start-up, the child's own recovery, or writing
                time.sleep(rnd.uniform(0, 0.12))
            else:
                head = _read_until_ready(proc, timeout=20)
                time.sleep(rnd.uniform(0, 0.04))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        out, err = head + proc.stdout.read(), proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, f"child died by itself ({proc.returncode}): {err.decode()}"
        lines = out.split(b"\n")[:-1]  # the last piece is empty or a line the kill cut short
        if not lines:
            kills_before_ready += 1
        else:
            assert lines[0].startswith(b"ready ")
            start = int(lines[0].split()[1])
            assert start >= acked, f"the child resumed at {start}, below the acknowledged {acked}"
            if len(lines) > 1:
                acked = int(lines[-1])
        newest, cut = _check(directory, read_only=round_ % 2 == 1, acked=acked, seen=seen)
        torn += cut > 0
        unacked_kept += newest > acked
        seen = newest
    elapsed = time.monotonic() - t0
    print(f"\n{ROUNDS} SIGKILL rounds in {elapsed:.1f} s: {acked} records acknowledged, {torn} torn tails cut, "
          f"{kills_before_ready} kills before the child was ready, {unacked_kept} rounds kept unacknowledged records")
    assert acked > ROUNDS  # the children did real work
    assert torn > 0  # and some kills did land in the middle of a write
