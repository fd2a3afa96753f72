"""GatewayInternals against a fake /proc and /sys tree: values parsed, missing fields say why."""

import os
from pathlib import Path

from appliance.health.internals import STA_UNSYNC, AdjtimexStatus, GatewayInternals


def fake_tree(root: Path) -> tuple[Path, Path]:
    proc, sys = root / "proc", root / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "sys/kernel/random").mkdir(parents=True)
    (proc / "loadavg").write_text("0.52 0.40 0.31 1/123 4567\n")
    (proc / "meminfo").write_text("MemTotal:        3884000 kB\nMemFree: 100 kB\nMemAvailable:    1942000 kB\n")
    (proc / "uptime").write_text("12345.67 40000.00\n")
    (proc / "sys/kernel/random/boot_id").write_text("0f2c5b1e-aaaa-bbbb-cccc-000000000001\n")
    (proc / "self/status").write_text("Name:\tomgw\nVmRSS:\t   42000 kB\n")
    (proc / "self/stat").write_text("77 (omgw health) S " + " ".join(["0"] * 10) + " 250 50 0 0\n")
    (proc / "self/io").write_text("rchar: 1\nwchar: 2\nread_bytes: 0\nwrite_bytes: 8192\n")
    zone = sys / "class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("48312\n")
    (zone / "type").write_text("cpu-thermal\n")
    return proc, sys


def statvfs(_path: str) -> os.statvfs_result:
    # bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax
    return os.statvfs_result((4096, 4096, 1000, 400, 300, 0, 0, 0, 0, 255))


def test_fields_from_fake_proc_and_sys(tmp_path: Path) -> None:
    proc, sys = fake_tree(tmp_path)
    t = iter([10.0, 12.0])
    gi = GatewayInternals(
        "/state", proc_root=proc, sys_root=sys, statvfs=statvfs,
        adjtimex=lambda: AdjtimexStatus(0, 0x2001, 20_000, 1_500), clock_mono=lambda: next(t), clock_ticks=100,
    )
    d = gi()
    assert d["cpu_temp_c"] == 48.3
    assert (d["load_1"], d["load_5"], d["load_15"]) == (0.52, 0.40, 0.31)
    assert d["mem_available_ratio"] == 0.5
    assert d["disk_total_bytes"] == 4096 * 1000 and d["disk_free_bytes"] == 4096 * 300
    assert d["disk_used_ratio"] == round(600 / 900, 4)
    assert d["uptime_s"] == 12345.67
    assert d["boot_id"].startswith("0f2c5b1e")
    assert d["clock_synced"] is True and d["clock_max_error_ms"] == 20.0
    assert d["rss_kb"] == 42000 and d["cpu_s"] == 3.0 and d["write_bytes"] == 8192
    assert d["cpu_percent"] is None and "cpu_percent" in d["unavailable"]
    (proc / "self/stat").write_text("77 (omgw health) S " + " ".join(["0"] * 10) + " 350 50 0 0\n")
    d2 = gi()
    assert d2["cpu_percent"] == 50.0  # 1 s of CPU in 2 s


def test_missing_sources_are_none_with_reasons(tmp_path: Path) -> None:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    sys.mkdir()

    def no_adjtimex() -> AdjtimexStatus:
        raise OSError(1, "seccomp")

    def bad_statvfs(path: str) -> os.statvfs_result:
        raise FileNotFoundError(2, "No such file", path)

    d = GatewayInternals("/nope", proc_root=proc, sys_root=sys, statvfs=bad_statvfs, adjtimex=no_adjtimex)()
    for f in ("cpu_temp_c", "load_1", "mem_total_kb", "disk_free_bytes", "uptime_s", "boot_id",
              "clock_synced", "rss_kb", "write_bytes"):
        assert d[f] is None, f
        assert d["unavailable"][f], f
    assert "thermal" in d["unavailable"]["cpu_temp_c"]


def test_unsync_flag_means_not_synced() -> None:
    assert not AdjtimexStatus(0, STA_UNSYNC, 16_000_000, 16_000_000).synced
    assert not AdjtimexStatus(5, 0, 0, 0).synced
