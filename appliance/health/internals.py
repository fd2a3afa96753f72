"""Gateway internals read from ``/proc`` and ``/sys``: the gateway's own vital signs.

Why this exists: the O&M centre must tell a failing charger from a failing gateway. Every field
here is cheap to read (no subprocess, no network; one ``adjtimex(2)`` call for the clock state) so
it can run on every 1 Hz tick. Guarantees:

- **Each field stands alone.** A field that cannot be read is ``None`` and
  ``unavailable[field]`` says why; the others are unaffected.
- **Injectable roots.** ``proc_root``, ``sys_root``, ``statvfs`` and ``adjtimex`` are parameters,
  so tests run against a fake tree and a fake kernel clock.

Clock synchronisation: ``timedatectl show -p NTPSynchronized`` forks and talks D-Bus (tens of ms);
instead we ask the kernel with ``adjtimex(2)`` in read-only mode (``modes = 0``, no privilege
needed). chronyd, ntpd and systemd-timesyncd clear ``STA_UNSYNC`` in the kernel's time status once
they have disciplined the clock, and the kernel sets it again when ``maxerror`` grows past 16 s
without updates (so a dead daemon is detected within about a quarter of an hour). ``clock_synced``
is ``not STA_UNSYNC and state != TIME_ERROR``; ``clock_max_error_ms`` / ``clock_est_error_ms`` are
the kernel's bounds. If ``adjtimex`` is unavailable (non-Linux, seccomp), ``clock_synced`` is
``None`` with the reason. See docs/health.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AdjtimexStatus", "GatewayInternals", "STA_UNSYNC", "TIME_ERROR", "kernel_adjtimex"]

#: include/uapi/linux/timex.h: clock not synchronised.
STA_UNSYNC = 0x0040
#: adjtimex(2) return value: clock not synchronised.
TIME_ERROR = 5

# Thermal zone types that are the SoC/CPU (Raspberry Pi: "cpu-thermal"; x86: "x86_pkg_temp").
_CPU_ZONE_HINTS = ("cpu", "soc", "pkg")


@dataclass(frozen=True)
class AdjtimexStatus:
    state: int  # adjtimex return value: TIME_OK 0 .. TIME_ERROR 5
    status: int  # STA_* bits
    maxerror_us: int
    esterror_us: int

    @property
    def synced(self) -> bool:
        return not (self.status & STA_UNSYNC) and self.state != TIME_ERROR


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex, include/uapi/linux/timex.h (LP64 layout; natural alignment gives the padding).
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
        ("_slack", ctypes.c_char * 64),  # room in case a libc's struct is larger
    ]


_libc: Any = None


def kernel_adjtimex() -> AdjtimexStatus:
    """Read the kernel clock state (``adjtimex(2)`` with ``modes = 0``). Raises ``OSError``."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        _libc = ctypes.CDLL(name, use_errno=True)
    tx = _Timex()
    tx.modes = 0
    rc = _libc.adjtimex(ctypes.byref(tx))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {os.strerror(err)}")
    return AdjtimexStatus(rc, tx.status, tx.maxerror, tx.esterror)


class GatewayInternals:
    """``GatewayInternals(state_dir)``; call it (or :meth:`read`) for one dict of fields."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        proc_root: str | os.PathLike[str] = "/proc",
        sys_root: str | os.PathLike[str] = "/sys",
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
        adjtimex: Callable[[], AdjtimexStatus] | None = kernel_adjtimex,
        clock_mono: Callable[[], float] = time.monotonic,
        clock_ticks: int | None = None,
    ) -> None:
        self.state_dir = os.fspath(state_dir)
        self.proc = Path(proc_root)
        self.sys = Path(sys_root)
        self._statvfs = statvfs
        self._adjtimex = adjtimex
        self._mono = clock_mono
        self._hz = clock_ticks or os.sysconf("SC_CLK_TCK")
        self._prev_cpu: tuple[float, float] | None = None  # (monotonic, process cpu seconds)

    def __call__(self) -> dict[str, Any]:
        return self.read()

    def read(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        unavailable: dict[str, str] = {}
        for reader in (
            self._cpu_temp,
            self._load,
            self._memory,
            self._disk,
            self._uptime,
            self._boot_id,
            self._clock,
            self._process,
        ):
            fields, reasons = reader()
            out.update(fields)
            unavailable.update(reasons)
        out["unavailable"] = unavailable
        return out

    # -- one reader per source; each returns (fields, {field: reason}) ------------------------

    @staticmethod
    def _missing(names: tuple[str, ...], reason: str) -> tuple[dict[str, Any], dict[str, str]]:
        return dict.fromkeys(names), dict.fromkeys(names, reason)

    def _cpu_temp(self) -> tuple[dict[str, Any], dict[str, str]]:
        names = ("cpu_temp_c",)
        zones = sorted(glob.glob(str(self.sys / "class/thermal/thermal_zone*")))
        if not zones:
            return self._missing(names, "no thermal zone in /sys/class/thermal")
        readings: list[tuple[str, float]] = []
        errors: list[str] = []
        for zone in zones:
            try:
                milli = int(Path(zone, "temp").read_text().strip())
            except (OSError, ValueError) as e:
                errors.append(f"{Path(zone).name}: {e}")
                continue
            try:
                kind = Path(zone, "type").read_text().strip().lower()
            except OSError:
                kind = ""
            readings.append((kind, milli / 1000.0))
        if not readings:
            return self._missing(names, "; ".join(errors) or "thermal zones unreadable")
        cpu = [t for kind, t in readings if any(h in kind for h in _CPU_ZONE_HINTS)]
        # Without a zone typed as the CPU/SoC, the hottest zone is the conservative choice.
        return {"cpu_temp_c": round(max(cpu or [t for _, t in readings]), 1)}, {}

    def _load(self) -> tuple[dict[str, Any], dict[str, str]]:
        names = ("load_1", "load_5", "load_15")
        try:
            parts = (self.proc / "loadavg").read_text().split()
            return {n: float(p) for n, p in zip(names, parts[:3], strict=True)}, {}
        except (OSError, ValueError) as e:
            return self._missing(names, f"/proc/loadavg: {e}")

    def _meminfo(self) -> dict[str, int]:
        info: dict[str, int] = {}
        for line in (self.proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields:
                info[key] = int(fields[0])  # kB
        return info

    def _memory(self) -> tuple[dict[str, Any], dict[str, str]]:
        names = ("mem_total_kb", "mem_available_kb", "mem_available_ratio")
        try:
            info = self._meminfo()
            total, avail = info["MemTotal"], info["MemAvailable"]
        except (OSError, ValueError, KeyError) as e:
            return self._missing(names, f"/proc/meminfo: {e!r}")
        ratio = round(avail / total, 4) if total else None
        return {"mem_total_kb": total, "mem_available_kb": avail, "mem_available_ratio": ratio}, {}

    def _disk(self) -> tuple[dict[str, Any], dict[str, str]]:
        names = ("disk_total_bytes", "disk_free_bytes", "disk_used_ratio")
        try:
            st = self._statvfs(self.state_dir)
        except OSError as e:
            return self._missing(names, f"statvfs {self.state_dir}: {e}")
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize  # free for unprivileged users (the service)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        ratio = round(used / (used + free), 4) if used + free else None
        return {"disk_total_bytes": total, "disk_free_bytes": free, "disk_used_ratio": ratio}, {}

    def _uptime(self) -> tuple[dict[str, Any], dict[str, str]]:
        try:
            return {"uptime_s": float((self.proc / "uptime").read_text().split()[0])}, {}
        except (OSError, ValueError, IndexError) as e:
            return self._missing(("uptime_s",), f"/proc/uptime: {e!r}")

    def _boot_id(self) -> tuple[dict[str, Any], dict[str, str]]:
        try:
            boot_id = (self.proc / "sys/kernel/random/boot_id").read_text().strip()
        except OSError as e:
            return self._missing(("boot_id",), f"boot_id: {e}")
        if not boot_id:
            return self._missing(("boot_id",), "boot_id is empty")
        return {"boot_id": boot_id}, {}

    def _clock(self) -> tuple[dict[str, Any], dict[str, str]]:
        names = ("clock_synced", "clock_max_error_ms", "clock_est_error_ms")
        if self._adjtimex is None:
            return self._missing(names, "adjtimex disabled")
        try:
            st = self._adjtimex()
        except (OSError, AttributeError) as e:
            return self._missing(names, f"adjtimex unavailable: {e}")
        return {
            "clock_synced": st.synced,
            "clock_max_error_ms": round(st.maxerror_us / 1000, 3),
            "clock_est_error_ms": round(st.esterror_us / 1000, 3),
        }, {}

    def _process(self) -> tuple[dict[str, Any], dict[str, str]]:
        fields: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        try:
            rss = None
            for line in (self.proc / "self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
            fields["rss_kb"] = rss
            if rss is None:
                reasons["rss_kb"] = "no VmRSS in /proc/self/status"
        except (OSError, ValueError) as e:
            fields["rss_kb"], reasons["rss_kb"] = None, f"/proc/self/status: {e}"
        try:
            stat = (self.proc / "self/stat").read_text()
            # Fields after the ")" closing comm; utime and stime are fields 14 and 15 (proc(5)).
            after = stat[stat.rindex(")") + 2 :].split()
            cpu_s = (int(after[11]) + int(after[12])) / self._hz
            fields["cpu_s"] = round(cpu_s, 2)
            now = self._mono()
            prev, self._prev_cpu = self._prev_cpu, (now, cpu_s)
            if prev is None or now <= prev[0]:
                fields["cpu_percent"] = None
                reasons["cpu_percent"] = "needs two readings"
            else:
                fields["cpu_percent"] = round(100 * (cpu_s - prev[1]) / (now - prev[0]), 1)
        except (OSError, ValueError, IndexError) as e:
            for n in ("cpu_s", "cpu_percent"):
                fields[n], reasons[n] = None, f"/proc/self/stat: {e!r}"
        try:
            io = {}
            for line in (self.proc / "self/io").read_text().splitlines():
                k, _, v = line.partition(":")
                io[k.strip()] = int(v)
            fields["write_bytes"] = io["write_bytes"]
        except (OSError, ValueError, KeyError) as e:
            fields["write_bytes"], reasons["write_bytes"] = None, f"/proc/self/io: {e!r}"
        return fields, reasons
