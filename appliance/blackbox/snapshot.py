"""Fault snapshots: the minutes around a fault, cut from the black box into one verifiable archive.

Why this exists: the black box is a ring; it forgets. When something goes wrong (a charger reports
Faulted, the relay watchdog power-cycles a charger, a sensor runs hot, a meter goes silent, an
operator asks) the records from ``pre_s`` before to ``post_s`` after that moment are copied into a
``.tar.gz`` that outlives the ring, can be uploaded, and can be checked by anyone with ``tar`` and
``sha256sum``. See docs/blackbox.md, "Snapshots".

The pieces, from pure to I/O:

- :class:`SnapshotScheduler` (pure, time passed in): turns triggers into windows. A fault storm
  gives one archive: overlapping or touching windows merge (reasons accumulate) up to a bounded
  length, and at most ``max_per_hour`` new windows start per rolling hour (drops are counted).
- :func:`write_snapshot`: reads a window from the store and writes the archive. Guarantees: a crash
  or an error never leaves a partial archive under the final name (temp file in the same directory,
  fsync, atomic rename, fsync of the directory); member order, tar headers and the gzip header are
  deterministic (mtime = trigger time), so the same window gives the same bytes; memory is bounded
  (records are spooled to an anonymous temp file past 8 MiB).
- :func:`verify_snapshot`: every problem an archive has, with where it is (member, line).
- :class:`SnapshotArchive`: the snapshot directory with retention by count and size, oldest first.
  The store's ring never deletes here: by default it is ``<store>/snapshots`` and the store never
  touches subdirectories (the recorder refuses the store directory itself).
- :class:`SnapshotRecorder`: the asyncio glue for the health process.
- :func:`snapshot_now` and :func:`dump_jsonl`: for ``omgw blackbox snapshot`` and ``dump``.

Archive layout (``<id>.tar.gz``)::

    <id>/                 directory entry
    <id>/manifest.json    schema, gateway id, snapshot id, trigger(s), range, counts, member sha256
    <id>/records.jsonl    one record per line, in store order:
                          {"t": <ns>, "kind": "ocpp", "data": <payload as JSON or {"raw_b64": ...}>}
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Final, Protocol, TextIO

import appliance
from appliance import strictjson
from appliance.blackbox.record import Record, RecordKind
from appliance.blackbox.store import BlackBox
from appliance.blackbox.triggers import fault_reason, reason_slug
from appliance.logfmt import get_logger

__all__ = [
    "ARCHIVE_SUFFIX",
    "MANIFEST_NAME",
    "RECORDS_NAME",
    "SCHEMA_VERSION",
    "SNAPSHOT_SUBDIR",
    "RecordSource",
    "SnapshotArchive",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotRecorder",
    "SnapshotScheduler",
    "SnapshotWindow",
    "dump_jsonl",
    "iso_ns",
    "kind_name",
    "make_snapshot_id",
    "parse_kinds",
    "read_manifest",
    "record_line",
    "snapshot_now",
    "verify_snapshot",
    "write_snapshot",
]

log = get_logger("blackbox.snapshot")

SCHEMA_VERSION: Final = 1
MANIFEST_TYPE: Final = "omgw.blackbox.snapshot"
MANIFEST_NAME: Final = "manifest.json"
RECORDS_NAME: Final = "records.jsonl"
ARCHIVE_SUFFIX: Final = ".tar.gz"
TEMP_SUFFIX: Final = ".tmp"

NS_PER_S: Final = 1_000_000_000
HOUR_NS: Final = 3600 * NS_PER_S
DEFAULT_PRE_S: Final = 60.0
DEFAULT_POST_S: Final = 30.0
#: A merged window may not grow beyond this many times (pre_s + post_s).
DEFAULT_MAX_SPAN_FACTOR: Final = 4.0
DEFAULT_MAX_PER_HOUR: Final = 12
DEFAULT_MAX_REASONS: Final = 16
#: Records are held in memory up to this size, then spooled to an anonymous file in the out dir.
SPOOL_MAX_BYTES: Final = 8 * 1024 * 1024
#: A hidden temp file older than this is a leftover of a crash and is removed by retention.
STALE_TEMP_S: Final = 600.0
#: Where snapshots go by default: a subdirectory of the store directory (the ring never touches it).
SNAPSHOT_SUBDIR: Final = "snapshots"

_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_CHUNK: Final = 64 * 1024
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


class SnapshotError(ValueError):
    """An archive is not a readable snapshot; the message names the file and the part."""


class RecordSource(Protocol):
    """What snapshots need from the black box (:class:`appliance.blackbox.store.BlackBox`)."""

    def read(
        self,
        since_ns: int | None = None,
        until_ns: int | None = None,
        kinds: Iterable[RecordKind] | None = None,
        include_unflushed: bool = True,
    ) -> Iterator[Record]: ...


# ---- record lines ----------------------------------------------------------------------------


def kind_name(kind: int) -> str:
    """``RecordKind.OCPP`` -> ``"ocpp"``; an unknown number -> its decimal string."""
    try:
        return RecordKind(kind).name.lower()
    except ValueError:
        return str(int(kind))


def parse_kinds(names: Iterable[str]) -> frozenset[RecordKind]:
    """``["ocpp", "event"]`` or ``["2", "3"]`` (case-insensitive, comma lists allowed) -> kinds.

    Raises :class:`ValueError` naming the unknown kind and the valid names (for the CLI's --kind).
    """
    kinds: set[RecordKind] = set()
    for name in names:
        for part in name.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                kinds.add(RecordKind(int(part)) if part.isdigit() else RecordKind[part.upper()])
            except (KeyError, ValueError):
                valid = ", ".join(k.name.lower() for k in RecordKind)
                raise ValueError(f"unknown record kind {part!r} (valid: {valid})") from None
    return frozenset(kinds)


def _payload_data(payload: bytes) -> Any:
    try:
        return strictjson.decode(bytes(payload).decode("utf-8"))
    except (ValueError, RecursionError):
        return {"raw_b64": base64.b64encode(bytes(payload)).decode("ascii")}


def record_line(record: Record) -> str:
    """One record as a compact ASCII JSON object (no newline): ``{"t":..,"kind":..,"data":..}``.

    ``data`` is the payload parsed as JSON, or ``{"raw_b64": ...}`` when it is not UTF-8 JSON.
    The same format is used by snapshots and by ``omgw blackbox dump``.
    """
    return _ENCODER.encode(
        {"t": int(record.time_ns), "kind": kind_name(record.kind), "data": _payload_data(record.payload)}
    )


def dump_jsonl(
    store: RecordSource,
    since_ns: int | None,
    until_ns: int | None,
    kinds: Iterable[RecordKind] | None,
    out: TextIO,
) -> int:
    """Write the store's records (filtered as :meth:`BlackBox.read`) to ``out`` as JSON lines.

    Returns the number of records written.
    """
    count = 0
    for record in store.read(since_ns=since_ns, until_ns=until_ns, kinds=kinds):
        out.write(record_line(record))
        out.write("\n")
        count += 1
    return count


# ---- time and ids ----------------------------------------------------------------------------


def iso_ns(t_ns: int) -> str:
    """UTC ISO 8601 with nanoseconds: ``2026-11-25T17:10:51.123456789Z``."""
    seconds, ns = divmod(int(t_ns), NS_PER_S)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns:09d}Z"


def make_snapshot_id(gateway_id: str, trigger_ns: int, reasons: Sequence[str], start_ns: int, end_ns: int) -> str:
    """``20261125T171051Z-watchdog_power_cycle-3f2a``: trigger time (UTC), first reason, short hash.

    The hash covers the gateway, the trigger time in ns, the range and all reasons, so the id is
    deterministic for a window and two snapshots cut in the same second still differ.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(trigger_ns) // NS_PER_S))
    slug = reason_slug(reasons[0]) if reasons else "snapshot"
    digest = hashlib.sha256(
        "\0".join([gateway_id, str(trigger_ns), str(start_ns), str(end_ns), *reasons]).encode("utf-8", "replace")
    ).hexdigest()[:4]
    return f"{stamp}-{slug}-{digest}"


# ---- scheduling (pure) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotWindow:
    """A closed time range ``[start_ns, end_ns]`` to cut, why, and when it was first triggered."""

    start_ns: int
    end_ns: int
    trigger_ns: int
    reasons: tuple[str, ...]
    #: Triggers merged into this window (duplicates and reasons beyond the cap included).
    triggers: int = 1


class SnapshotScheduler:
    """Turns triggers into snapshot windows; pure (every time is an argument, no I/O, no logging),
    not thread-safe (the recorder calls it from the event loop only).

    - A trigger at ``t`` asks for ``[t - pre_s, t + post_s]``.
    - If that overlaps or touches a pending window, they merge (one archive for a fault storm):
      the range is the union, ``trigger_ns`` stays the first trigger, reasons are appended once
      each, up to ``max_reasons`` (later ones only count in ``triggers``).
    - A merged window may not exceed ``max_span_factor * (pre_s + post_s)``. A trigger that would
      stretch it further starts a new window beginning right after the old one ends, so the two
      archives are contiguous and do not repeat records.
    - At most ``max_per_hour`` new windows start per rolling hour of trigger time; beyond that a
      trigger that would start a window is dropped and counted (merges are never dropped).
      ``force=True`` (an operator's request) is never dropped, but counts toward the limit.
    """

    def __init__(
        self,
        pre_s: float = DEFAULT_PRE_S,
        post_s: float = DEFAULT_POST_S,
        *,
        max_span_factor: float = DEFAULT_MAX_SPAN_FACTOR,
        max_per_hour: int = DEFAULT_MAX_PER_HOUR,
        max_reasons: int = DEFAULT_MAX_REASONS,
    ) -> None:
        if pre_s < 0 or post_s < 0:
            raise ValueError(f"pre_s={pre_s} and post_s={post_s} must be >= 0")
        if max_span_factor < 1:
            raise ValueError(f"max_span_factor={max_span_factor} must be >= 1")
        if max_per_hour < 1 or max_reasons < 1:
            raise ValueError("max_per_hour and max_reasons must be >= 1")
        self.pre_ns = round(pre_s * NS_PER_S)
        self.post_ns = round(post_s * NS_PER_S)
        self.max_span_ns = round(max_span_factor * (self.pre_ns + self.post_ns))
        self.max_per_hour = max_per_hour
        self.max_reasons = max_reasons
        self._pending: list[SnapshotWindow] = []
        self._started: list[int] = []
        self.dropped = 0
        self.merged = 0
        self.started = 0

    def pending(self) -> list[SnapshotWindow]:
        """Windows not yet due, ordered by start."""
        return sorted(self._pending, key=lambda w: (w.start_ns, w.end_ns))

    def trigger(self, t_ns: int, reason: str, *, force: bool = False) -> None:
        """Ask for a snapshot around ``t_ns``; merges, extends, starts or drops a window.

        Invariant (checked by a property test): pending windows are disjoint and none is longer
        than ``max_span_ns``; every trigger is counted in exactly one window or in ``dropped``.
        """
        t_ns = int(t_ns)
        start, end = t_ns - self.pre_ns, t_ns + self.post_ns
        near = sorted((w for w in self._pending if start <= w.end_ns + 1 and end >= w.start_ns - 1),
                      key=lambda w: w.start_ns)
        if not near:
            self._start(SnapshotWindow(start, end, t_ns, (reason,)), force=force)
            return
        lo, hi = min(start, near[0].start_ns), max(end, near[-1].end_ns)
        if hi - lo <= self.max_span_ns:
            # Everything it touches fits in one window: merge (usually just one neighbour).
            merged = SnapshotWindow(lo, hi, min(w.trigger_ns for w in near), near[0].reasons,
                                    sum(w.triggers for w in near))
            for w in near[1:]:
                for r in w.reasons:
                    merged = self._absorb(merged, r, count=False)
            self._pending = [w for w in self._pending if all(w is not n for n in near)]
            self._pending.append(self._absorb(merged, reason))
            self.merged += 1
            return
        # Too long to merge. The usual case is a storm growing forward: extend the last window up
        # to the bound, then continue with a new window right after it (contiguous, no overlap).
        first, last = near[0], near[-1]
        if end > last.end_ns:
            if end - last.start_ns <= self.max_span_ns:
                self._replace(last, self._absorb(replace(last, end_ns=end), reason))
            elif not self._start(SnapshotWindow(last.end_ns + 1, end, t_ns, (reason,)), force=force):
                self._replace(last, self._absorb(last, reason))
        elif start < first.start_ns:  # a late trigger growing backward: the mirror image
            if first.end_ns - start <= self.max_span_ns:
                self._replace(first, self._absorb(replace(first, start_ns=start), reason))
            elif not self._start(SnapshotWindow(start, first.start_ns - 1, t_ns, (reason,)), force=force):
                self._replace(first, self._absorb(first, reason))
        else:
            # Inside the hull of windows that cannot be joined. If t is in one, credit it; if t
            # falls in a gap between two, that gap becomes its own window.
            home = next((w for w in near if w.start_ns <= t_ns <= w.end_ns), None)
            if home is None:
                before = max((w.end_ns for w in near if w.end_ns < t_ns), default=start - 1)
                after = min((w.start_ns for w in near if w.start_ns > t_ns), default=end + 1)
                gap = SnapshotWindow(max(start, before + 1), min(end, after - 1), t_ns, (reason,))
                if self._start(gap, force=force):
                    return
                home = min(near, key=lambda w: min(abs(t_ns - w.start_ns), abs(t_ns - w.end_ns)))
            self._replace(home, self._absorb(home, reason))

    def due(self, now_ns: int) -> list[SnapshotWindow]:
        """Remove and return the windows whose end has passed (``end_ns < now_ns``), by start."""
        ready = [w for w in self._pending if w.end_ns < now_ns]
        if ready:
            self._pending = [w for w in self._pending if w.end_ns >= now_ns]
        return sorted(ready, key=lambda w: (w.start_ns, w.end_ns))

    def cut(self, now_ns: int) -> list[SnapshotWindow]:
        """Remove and return every pending window, ends clipped to ``now_ns`` (shutdown)."""
        windows = [replace(w, end_ns=min(w.end_ns, now_ns)) for w in self.pending()]
        self._pending = []
        return [w for w in windows if w.end_ns >= w.start_ns]

    def stats(self) -> dict[str, int]:
        return {"pending": len(self._pending), "started": self.started, "merged": self.merged,
                "dropped": self.dropped}

    def _absorb(self, w: SnapshotWindow, reason: str, *, count: bool = True) -> SnapshotWindow:
        reasons = w.reasons
        if reason not in reasons and len(reasons) < self.max_reasons:
            reasons = (*reasons, reason)
        return replace(w, reasons=reasons, triggers=w.triggers + (1 if count else 0))

    def _replace(self, old: SnapshotWindow, new: SnapshotWindow) -> None:
        self._pending[self._pending.index(old)] = new

    def _start(self, window: SnapshotWindow, *, force: bool) -> bool:
        """Add a new window unless the rate limit says no (then count the drop); True if added."""
        if not force and self._recent_starts(window.trigger_ns) >= self.max_per_hour:
            self.dropped += 1
            return False
        self._started.append(window.trigger_ns)
        self.started += 1
        self._pending.append(window)
        return True

    def _recent_starts(self, t_ns: int) -> int:
        # Start times may arrive out of order (a request with an explicit time): keep the last hour
        # relative to the newest seen, and count every start less than an hour before t_ns.
        horizon = max(t_ns, *self._started) - HOUR_NS if self._started else t_ns - HOUR_NS
        self._started = [s for s in self._started if s > horizon]
        return sum(1 for s in self._started if s > t_ns - HOUR_NS)


# ---- writing ---------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tarinfo(name: str, size: int, mtime: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mtime = mtime
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_snapshot(
    store: RecordSource,
    start_ns: int,
    end_ns: int,
    out_dir: Path,
    gateway_id: str,
    trigger: str | Sequence[str],
    *,
    snapshot_id: str | None = None,
    trigger_ns: int | None = None,
    trigger_count: int | None = None,
    partial: bool = False,
    include_unflushed: bool = True,
) -> Path:
    """Cut ``[start_ns, end_ns]`` (inclusive) from ``store`` into ``out_dir/<snapshot_id>.tar.gz``.

    ``trigger`` is one reason or several; ``trigger_ns`` (default ``end_ns``) is the moment of the
    first trigger: it names the snapshot and is the mtime of every tar member and of the gzip
    header. ``partial`` marks a window cut short before its planned end (shutdown). Returns the
    final path. On any error nothing is left under the final name and the temp file is removed.
    """
    path, _ = _write_snapshot(
        store, start_ns, end_ns, Path(out_dir), gateway_id, trigger, snapshot_id=snapshot_id,
        trigger_ns=trigger_ns, trigger_count=trigger_count, partial=partial,
        include_unflushed=include_unflushed,
    )
    return path


def _write_snapshot(
    store: RecordSource,
    start_ns: int,
    end_ns: int,
    out_dir: Path,
    gateway_id: str,
    trigger: str | Sequence[str],
    *,
    snapshot_id: str | None,
    trigger_ns: int | None,
    trigger_count: int | None,
    partial: bool,
    include_unflushed: bool,
) -> tuple[Path, dict[str, Any]]:
    reasons = (trigger,) if isinstance(trigger, str) else tuple(trigger)
    if not reasons:
        raise ValueError("a snapshot needs at least one trigger reason")
    if end_ns < start_ns:
        raise ValueError(f"empty range: end_ns={end_ns} < start_ns={start_ns}")
    t_ns = end_ns if trigger_ns is None else int(trigger_ns)
    if snapshot_id is None:
        snapshot_id = make_snapshot_id(gateway_id, t_ns, reasons, start_ns, end_ns)
    if not _ID_RE.fullmatch(snapshot_id):
        raise ValueError(f"snapshot id {snapshot_id!r} is not [A-Za-z0-9._-], 1-80 characters")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{snapshot_id}{ARCHIVE_SUFFIX}"
    mtime = max(0, t_ns // NS_PER_S)

    counts = {k.name.lower(): 0 for k in RecordKind}
    digest = hashlib.sha256()
    size = 0
    # Anonymous spool in the out dir (flash, not a RAM /tmp): nothing to clean up after a crash.
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES, mode="w+b", dir=str(out_dir)) as spool:
        records = store.read(since_ns=start_ns, until_ns=end_ns, include_unflushed=include_unflushed)
        for record in records:
            if not start_ns <= record.time_ns <= end_ns:
                continue  # the store may be inclusive or not at the edges; the manifest is exact
            line = (record_line(record) + "\n").encode("ascii")
            spool.write(line)
            digest.update(line)
            size += len(line)
            name = kind_name(record.kind)
            counts[name] = counts.get(name, 0) + 1

        manifest: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "type": MANIFEST_TYPE,
            "snapshot_id": snapshot_id,
            "gateway_id": gateway_id,
            "omgw_version": appliance.__version__,
            "trigger": {
                "reasons": list(reasons),
                "count": len(reasons) if trigger_count is None else int(trigger_count),
                "time_ns": t_ns,
                "time": iso_ns(t_ns),
            },
            "range": {
                "start_ns": int(start_ns),
                "end_ns": int(end_ns),
                "start": iso_ns(start_ns),
                "end": iso_ns(end_ns),
                "partial": bool(partial),
            },
            "records": {"total": sum(counts.values()), "by_kind": counts},
            "members": [{"name": RECORDS_NAME, "size": size, "sha256": digest.hexdigest()}],
        }
        manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=True) + "\n").encode("ascii")

        fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=f".{snapshot_id}.", suffix=TEMP_SUFFIX)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as raw:
                os.fchmod(raw.fileno(), 0o640)  # like the store's segments
                # filename="" and a fixed mtime keep the gzip header deterministic.
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime, compresslevel=6) as gz, \
                        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                    tar.addfile(_tarinfo(snapshot_id, 0, mtime, directory=True))
                    tar.addfile(_tarinfo(f"{snapshot_id}/{MANIFEST_NAME}", len(manifest_bytes), mtime),
                                io.BytesIO(manifest_bytes))
                    spool.seek(0)
                    tar.addfile(_tarinfo(f"{snapshot_id}/{RECORDS_NAME}", size, mtime), spool)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
    _fsync_dir(out_dir)
    log.info("snapshot_written", id=snapshot_id, records=manifest["records"]["total"],
             bytes=final.stat().st_size, reason=reasons[0])
    return final, manifest


# ---- reading and verifying -------------------------------------------------------------------


def _section(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``obj[key]`` if it is a JSON object, else ``{}`` (manifests are read defensively)."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _unsafe_name(name: str) -> bool:
    parts = name.split("/")
    return name.startswith("/") or ".." in parts


def _split_member(name: str) -> tuple[str, str]:
    """``"<id>/records.jsonl"`` -> ``("<id>", "records.jsonl")``; a flat name -> ``("", name)``."""
    head, sep, tail = name.rstrip("/").partition("/")
    return (head, tail) if sep else ("", head)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a snapshot archive; :class:`SnapshotError` if it has none or it is not JSON."""
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                if member.isfile() and _split_member(member.name)[1] == MANIFEST_NAME:
                    f = tar.extractfile(member)
                    if f is None:  # pragma: no cover - isfile() members always extract
                        break
                    data = json.loads(f.read(1024 * 1024))
                    if not isinstance(data, dict):
                        raise SnapshotError(f"{path}: {MANIFEST_NAME} is not a JSON object")
                    return data
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, RecursionError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"{path}: cannot read {MANIFEST_NAME}: {exc}") from exc
    raise SnapshotError(f"{path}: no {MANIFEST_NAME} member")


@dataclass
class _MemberCheck:
    size: int = 0
    sha256: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    lines: int = 0
    problems: list[str] = field(default_factory=list)


def _scan_records(f: IO[bytes], name: str, check: _MemberCheck, start: Any, end: Any) -> None:
    digest = hashlib.sha256()
    bad_lines = 0
    for number, line in enumerate(f, 1):
        digest.update(line)
        check.size += len(line)
        check.lines = number
        problem = None
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            problem = f"{name} line {number}: not a JSON object"
        elif type(obj.get("t")) is not int or type(obj.get("kind")) is not str or "data" not in obj:
            problem = f"{name} line {number}: missing or mistyped t/kind/data"
        else:
            check.counts[obj["kind"]] = check.counts.get(obj["kind"], 0) + 1
            if isinstance(start, int) and isinstance(end, int) and not start <= obj["t"] <= end:
                problem = f"{name} line {number}: t={obj['t']} outside range [{start}, {end}]"
        if problem is not None:
            bad_lines += 1
            if bad_lines <= 20:  # one corrupt member must not produce a million-line report
                check.problems.append(problem)
    if bad_lines > 20:
        check.problems.append(f"{name}: {bad_lines - 20} more bad lines not listed")
    check.sha256 = digest.hexdigest()


def verify_snapshot(path: Path) -> list[str]:
    """Every problem of a snapshot archive, each naming where it is; ``[]`` means it is sound.

    Checks: the file is a readable tar.gz; member names are safe; ``manifest.json`` is present,
    JSON and of a known schema; every member listed in the manifest is present with the listed size
    and sha256, and nothing else is; each ``*.jsonl`` line is a record object within the range; the
    record counts (total and per kind) match the manifest.
    """
    path = Path(path)
    problems: list[str] = []
    checks: dict[str, _MemberCheck] = {}
    manifest: dict[str, Any] | None = None
    top_dirs: set[str] = set()
    pending_jsonl: list[tuple[str, bytes]] = []
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz, \
                tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                if _unsafe_name(member.name):
                    problems.append(f"{member.name}: unsafe member name")
                    continue
                if member.isdir():
                    top_dirs.add(member.name.rstrip("/").split("/", 1)[0])
                    continue
                top, rel = _split_member(member.name)
                top_dirs.add(top)
                if not member.isfile():
                    problems.append(f"{member.name}: not a regular file")
                    continue
                f = tar.extractfile(member)
                if f is None:  # pragma: no cover
                    continue
                if rel in checks:
                    problems.append(f"{rel}: duplicate member")
                    continue
                if rel == MANIFEST_NAME:
                    data = f.read()
                    checks[rel] = _MemberCheck(size=len(data), sha256=hashlib.sha256(data).hexdigest())
                    try:
                        parsed = json.loads(data)
                    except (ValueError, RecursionError) as exc:
                        problems.append(f"{MANIFEST_NAME}: not JSON ({exc})")
                        continue
                    if not isinstance(parsed, dict):
                        problems.append(f"{MANIFEST_NAME}: not a JSON object")
                        continue
                    manifest = parsed
                elif rel.endswith(".jsonl") and manifest is not None:
                    check = checks[rel] = _MemberCheck()
                    rng = _section(manifest, "range")
                    _scan_records(f, rel, check, rng.get("start_ns"), rng.get("end_ns"))
                elif rel.endswith(".jsonl"):
                    # Manifest not seen yet (a hand-repacked archive): keep it for after the loop.
                    pending_jsonl.append((rel, f.read()))
                    checks[rel] = _MemberCheck()
                else:
                    digest = hashlib.sha256()
                    size = 0
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                    checks[rel] = _MemberCheck(size=size, sha256=digest.hexdigest())
            # tar stops at its end-of-archive blocks; reading gzip to EOF checks its CRC-32 and
            # length trailer, so a cut or garbled tail is reported too.
            while gz.read(_CHUNK):
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        problems.append(f"{path.name}: not a readable tar.gz archive ({type(exc).__name__}: {exc})")
        return problems

    if manifest is None:
        if MANIFEST_NAME not in checks:
            problems.append(f"{MANIFEST_NAME}: missing member")
        return problems
    rng = _section(manifest, "range")
    for rel, data in pending_jsonl:
        _scan_records(io.BytesIO(data), rel, checks[rel], rng.get("start_ns"), rng.get("end_ns"))

    if manifest.get("schema") != SCHEMA_VERSION:
        problems.append(f"{MANIFEST_NAME}: schema {manifest.get('schema')!r} is not {SCHEMA_VERSION}")
    snapshot_id = manifest.get("snapshot_id")
    if len(top_dirs) > 1 or (top_dirs and snapshot_id not in top_dirs and top_dirs != {""}):
        problems.append(f"{MANIFEST_NAME}: snapshot_id {snapshot_id!r} does not match the archive's "
                        f"directory {sorted(top_dirs)!r}")

    listed = manifest.get("members")
    if not isinstance(listed, list):
        problems.append(f"{MANIFEST_NAME}: 'members' is not a list")
        listed = []
    listed_names: set[str] = set()
    for entry in listed:
        if not isinstance(entry, dict) or type(entry.get("name")) is not str:
            problems.append(f"{MANIFEST_NAME}: a 'members' entry has no name")
            continue
        name = entry["name"]
        listed_names.add(name)
        found = checks.get(name)
        if found is None:
            problems.append(f"{name}: missing member (listed in {MANIFEST_NAME})")
            continue
        problems.extend(found.problems)
        if entry.get("size") != found.size:
            problems.append(f"{name}: size {found.size} does not match manifest {entry.get('size')!r}")
        if entry.get("sha256") != found.sha256:
            problems.append(f"{name}: sha256 {found.sha256} does not match manifest {entry.get('sha256')!r}")
    for name in sorted(set(checks) - listed_names - {MANIFEST_NAME}):
        problems.append(f"{name}: member not listed in {MANIFEST_NAME}")

    records = _section(manifest, "records")
    by_kind = _section(records, "by_kind")
    actual: dict[str, int] = {}
    for name in listed_names:
        if name in checks and name.endswith(".jsonl"):
            for kind, n in checks[name].counts.items():
                actual[kind] = actual.get(kind, 0) + n
    if any(n.endswith(".jsonl") and n not in checks for n in listed_names):
        return problems  # counts are meaningless without all record members (already reported)
    for kind in sorted(set(by_kind) | set(actual)):
        if by_kind.get(kind, 0) != actual.get(kind, 0):
            problems.append(f"{MANIFEST_NAME}: records.by_kind.{kind} = {by_kind.get(kind, 0)!r}, "
                            f"archive has {actual.get(kind, 0)}")
    if records.get("total") != sum(actual.values()):
        problems.append(f"{MANIFEST_NAME}: records.total = {records.get('total')!r}, "
                        f"archive has {sum(actual.values())}")
    return problems


# ---- the snapshot directory ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One archive in a :class:`SnapshotArchive`, from its manifest (or its file, if unreadable)."""

    snapshot_id: str
    path: Path
    trigger_ns: int
    size: int
    reasons: tuple[str, ...]
    records: int | None
    readable: bool = True


class SnapshotArchive:
    """The snapshot directory: listing and retention (by count and total size, oldest first).

    Only ``*.tar.gz`` files are snapshots; hidden ``.*.tmp`` files are writes in progress (or a
    crash's leftovers, removed once older than :data:`STALE_TEMP_S`). The newest snapshot is never
    removed by retention, even if it alone exceeds ``keep_mb``: it is the one most likely still to
    be fetched. Manifests are read once per file version (cached by name, size and mtime).
    """

    def __init__(self, directory: Path, *, keep_count: int = 50, keep_mb: float = 200.0) -> None:
        if keep_count < 1 or keep_mb <= 0:
            raise ValueError(f"keep_count={keep_count} must be >= 1 and keep_mb={keep_mb} > 0")
        self.directory = Path(directory)
        self.keep_count = keep_count
        self.keep_bytes = int(keep_mb * 1024 * 1024)
        self._cache: dict[str, tuple[tuple[int, int], SnapshotInfo]] = {}

    def snapshots(self) -> list[SnapshotInfo]:
        """All snapshots, oldest first (by trigger time, then id)."""
        infos: list[SnapshotInfo] = []
        seen: set[str] = set()
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(ARCHIVE_SUFFIX):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            seen.add(entry.name)
            key = (st.st_size, st.st_mtime_ns)
            cached = self._cache.get(entry.name)
            if cached is not None and cached[0] == key:
                infos.append(cached[1])
                continue
            info = self._info(Path(entry.path), st)
            self._cache[entry.name] = (key, info)
            infos.append(info)
        for name in set(self._cache) - seen:
            self._cache.pop(name, None)
        return sorted(infos, key=lambda i: (i.trigger_ns, i.snapshot_id))

    def get(self, snapshot_id: str) -> SnapshotInfo | None:
        for info in self.snapshots():
            if info.snapshot_id == snapshot_id:
                return info
        return None

    def total_bytes(self) -> int:
        return sum(i.size for i in self.snapshots())

    def enforce_retention(self, *, now_s: float | None = None) -> list[Path]:
        """Delete oldest snapshots until both limits hold (keeping the newest); return what went.

        Also removes stale temp files (``now_s`` defaults to ``time.time()``; only their age uses it).
        """
        removed: list[Path] = []
        now = time.time() if now_s is None else now_s
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        if now - entry.stat().st_mtime > STALE_TEMP_S:
                            os.unlink(entry.path)
                            removed.append(Path(entry.path))
        infos = self.snapshots()
        total = sum(i.size for i in infos)
        while len(infos) > 1 and (len(infos) > self.keep_count or total > self.keep_bytes):
            oldest = infos.pop(0)
            with contextlib.suppress(FileNotFoundError):
                oldest.path.unlink()
            total -= oldest.size
            removed.append(oldest.path)
            log.info("snapshot_removed", id=oldest.snapshot_id, bytes=oldest.size, kept=len(infos))
        if removed:
            with contextlib.suppress(FileNotFoundError):
                _fsync_dir(self.directory)
        return removed

    @staticmethod
    def _info(path: Path, st: os.stat_result) -> SnapshotInfo:
        stem = path.name[: -len(ARCHIVE_SUFFIX)]
        try:
            manifest = read_manifest(path)
            trigger = _section(manifest, "trigger")
            records = _section(manifest, "records")
            t_ns = trigger.get("time_ns")
            reasons = trigger.get("reasons")
            total = records.get("total")
            return SnapshotInfo(
                snapshot_id=str(manifest.get("snapshot_id") or stem),
                path=path,
                trigger_ns=t_ns if type(t_ns) is int else st.st_mtime_ns,
                size=st.st_size,
                reasons=tuple(str(r) for r in reasons) if isinstance(reasons, list) else (),
                records=total if type(total) is int else None,
            )
        except SnapshotError as exc:
            log.warning("snapshot_unreadable", path=str(path), error=str(exc))
            return SnapshotInfo(stem, path, st.st_mtime_ns, st.st_size, (), None, readable=False)


# ---- the recorder (health process) ------------------------------------------------------------


class SnapshotRecorder:
    """Watches appended records, schedules windows and writes due snapshots off the event loop.

    The health process either appends through :meth:`append` (store + check in one call) or calls
    :meth:`observe` for every record it appends itself, and runs :meth:`run` as a task. A trigger's
    time is the record's own time, clamped to the clock (a record stamped in the future cannot hold
    a window open). A window is written ``settle_s`` after its end, so that tap records stamped
    inside it but arriving a little late are in the archive. The archive is written in a worker
    thread (:func:`asyncio.to_thread`): ``BlackBox.read()`` may be called from any thread and takes
    its records (buffered ones included) at the moment it is called.

    On stop, pending windows are written at once, cut at the current time and marked ``partial``.
    A failed write is logged and counted; the recorder keeps going.
    """

    def __init__(
        self,
        store: Any,
        archive: SnapshotArchive,
        gateway_id: str,
        *,
        pre_s: float = DEFAULT_PRE_S,
        post_s: float = DEFAULT_POST_S,
        clock: Callable[[], int] = time.time_ns,
        on_written: Callable[[Path, dict[str, Any]], None] | None = None,
        max_per_hour: int = DEFAULT_MAX_PER_HOUR,
        max_span_factor: float = DEFAULT_MAX_SPAN_FACTOR,
        settle_s: float = 2.0,
        poll_s: float = 1.0,
    ) -> None:
        store_dir = getattr(store, "directory", None)
        if store_dir is not None and Path(archive.directory).resolve() == Path(store_dir).resolve():
            # A subdirectory is fine (the store never touches directories); the same one is not:
            # archives and temp files would be foreign files among the segments.
            raise ValueError(f"snapshot directory {archive.directory} must not be the store directory itself")
        self.store = store
        self.archive = archive
        self.gateway_id = gateway_id
        self.scheduler = SnapshotScheduler(pre_s, post_s, max_span_factor=max_span_factor,
                                           max_per_hour=max_per_hour)
        self._clock = clock
        self._on_written = on_written
        self._settle_ns = round(settle_s * NS_PER_S)
        self._poll_s = poll_s
        self.written = 0
        self.failures = 0
        self.last_snapshot_id: str | None = None

    def append(self, kind: RecordKind, payload: bytes | Mapping[str, Any], time_ns: int | None = None) -> Record:
        """Append one record to the store and :meth:`observe` it; return the record as stored.

        A mapping is encoded once, as compact JSON, so the bytes checked are the bytes stored.
        """
        if isinstance(payload, Mapping):
            data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        else:
            data = bytes(payload)
        t = self._clock() if time_ns is None else int(time_ns)
        self.store.append(kind, data, time_ns=t)
        record = Record(RecordKind(kind), t, data)
        self.observe(record)
        return record

    def observe(self, record: Record) -> str | None:
        """Check one appended record; trigger a snapshot if it is a fault. Returns the reason."""
        reason = fault_reason(record)
        if reason is not None:
            t_ns = min(int(record.time_ns), self._clock())
            dropped = self.scheduler.dropped
            self.scheduler.trigger(t_ns, reason)
            if self.scheduler.dropped != dropped:
                log.warning("snapshot_dropped", reason=reason, limit_per_hour=self.scheduler.max_per_hour,
                            dropped=self.scheduler.dropped)
            else:
                log.info("snapshot_triggered", reason=reason, t=t_ns)
        return reason

    def request(self, reason: str, t_ns: int | None = None) -> None:
        """An operator's request (CLI via the running process, remote command): never rate-limited away."""
        t = self._clock() if t_ns is None else int(t_ns)
        self.scheduler.trigger(t, reason, force=True)
        log.info("snapshot_requested", reason=reason, t=t)

    async def write_due(self) -> list[Path]:
        """Write every window that is due now (one pass); return the archives written."""
        return await self._write(self.scheduler.due(self._clock() - self._settle_ns), partial=False)

    async def run(self, stop: asyncio.Event) -> None:
        """Every ``poll_s``: write due windows. On ``stop``: write what is pending, cut short."""
        while not stop.is_set():
            await self.write_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._poll_s)
        await self._write(self.scheduler.cut(self._clock()), partial=True)

    def stats(self) -> dict[str, Any]:
        return {**self.scheduler.stats(), "written": self.written, "failures": self.failures,
                "last_snapshot_id": self.last_snapshot_id}

    async def _write(self, windows: list[SnapshotWindow], *, partial: bool) -> list[Path]:
        paths: list[Path] = []
        for window in windows:
            try:
                path, manifest = await asyncio.to_thread(
                    _write_snapshot, self.store, window.start_ns, window.end_ns, self.archive.directory,
                    self.gateway_id, window.reasons, snapshot_id=None, trigger_ns=window.trigger_ns,
                    trigger_count=window.triggers, partial=partial, include_unflushed=True,
                )
                await asyncio.to_thread(self.archive.enforce_retention)
            except Exception as exc:  # noqa: BLE001 - boundary: a failed snapshot must not stop health
                self.failures += 1
                log.error("snapshot_failed", reason=window.reasons[0], start=window.start_ns,
                          end=window.end_ns, error=repr(exc), failures=self.failures)
                continue
            self.written += 1
            self.last_snapshot_id = manifest["snapshot_id"]
            paths.append(path)
            if self._on_written is not None:
                self._on_written(path, manifest)
        return paths


# ---- offline (CLI) ---------------------------------------------------------------------------


def snapshot_now(
    store_dir: Path,
    out_dir: Path,
    gateway_id: str,
    reason: str,
    pre_s: float,
    now_ns: int | None = None,
) -> Path:
    """``omgw blackbox snapshot DIR --reason TEXT``: cut ``[now - pre_s, now]`` from a store at once.

    Offline nobody waits for the post window, so the snapshot ends at ``now`` (the manifest's
    range says so; ``partial`` stays false because nothing after ``now`` was asked for). For what
    follows, run it again later, or ask the running health process (remote ``snapshot`` command),
    which does wait. The store is opened with ``read_only=True``: no lock, no recovery writes, so
    this is safe while the health process appends to the same directory; it sees the records that
    were on the card when it opened (the health process's unflushed buffer, at most
    ``flush_interval_s`` of records, is not visible from another process).

    ``out_dir`` is usually ``DIR/snapshots`` (:data:`SNAPSHOT_SUBDIR`): the store never touches
    subdirectories. Raises FileNotFoundError if ``store_dir`` does not exist.
    """
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        raise FileNotFoundError(f"black box directory {store_dir} does not exist")
    now = time.time_ns() if now_ns is None else int(now_ns)
    start = now - round(pre_s * NS_PER_S)
    store = BlackBox(store_dir)
    store.open(read_only=True)
    try:
        return write_snapshot(store, start, now, Path(out_dir), gateway_id, reason, trigger_ns=now)
    finally:
        store.close()
