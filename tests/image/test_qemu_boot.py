"""The amd64 twin boots in QEMU: read-only root, grown data partition, both omgw units active.

``image/build --arch amd64`` builds the image with a test configuration (``EXTRA_VARS``): value with
security profile 0 towards a CSMS URL nobody listens on, health towards a plain-MQTT broker nobody
listens on, no meters or sensors; both units start and keep retrying their uplinks, i.e. they stay
``active``. The extra vars also bake ``omgw-selftest.service`` (role image_os's extra-units hook),
which only runs when the kernel command line carries ``omgw.selftest``: after multi-user.target it
waits for the units, prints ``OMGW-SELFTEST key=value`` lines on the serial console and powers the
machine off. There is no login on the console (no passwords on a gateway).

The decompressed image is grown by 512 MiB (``truncate``) before the boot, as a bigger SD card
would be, so the first boot must grow the data partition. QEMU runs with direct kernel boot
(the image's own vmlinuz/initrd.img) and software emulation (TCG) by default, as the issue asks;
``OMGW_QEMU_ACCEL=kvm`` uses KVM (on the development machine, a nested VM, the guest kernel hangs
right after loading under KVM, so TCG is also the only choice there). Build and boot times are
printed (``-s``). A boot reports after about 65 s of guest uptime under TCG on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "image" / "build"
QEMU = shutil.which("qemu-system-x86_64")
ACCEL = os.environ.get("OMGW_QEMU_ACCEL", "tcg")
BOOT_TIMEOUT_S = float(os.environ.get("OMGW_QEMU_TIMEOUT", "600"))
GROW = 512 * 1024 * 1024
MARK = "OMGW-SELFTEST"

_CI = os.environ.get("CI") == "true"
pytestmark = [
    pytest.mark.slow,
    # The build (module fixture, in the first test's setup) and each boot take minutes.
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.geteuid() != 0 and not _CI, reason="image/build (mmdebstrap, chroot) needs root"),
    pytest.mark.skipif(QEMU is None and not _CI, reason="needs qemu-system-x86_64 (apt-get install qemu-system-x86)"),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None and not _CI,
                       reason="needs mmdebstrap (apt-get install mmdebstrap)"),
]

SELFTEST_SCRIPT = f"""\
#!/bin/sh
# Test images only (tests/image/test_qemu_boot.py): report the boot on the console, power off.
say() {{ echo "{MARK} $*"; }}
say begin
i=0
while [ $i -lt 90 ]; do
    [ "$(systemctl is-active omgw-value.service)" = active ] && \\
        [ "$(systemctl is-active omgw-health.service)" = active ] && break
    sleep 1; i=$((i + 1))
done
say active_after_s=$i
# Still active a while later: not a start/crash/restart loop.
sleep 10
say value=$(systemctl is-active omgw-value.service)
say health=$(systemctl is-active omgw-health.service)
say value_restarts=$(systemctl show -P NRestarts omgw-value.service)
say health_restarts=$(systemctl show -P NRestarts omgw-health.service)
say root_options=$(findmnt -no OPTIONS /)
say root_source=$(findmnt -no SOURCE /)
say data_source=$(findmnt -no SOURCE /var/lib/omgw)
say data_options=$(findmnt -no OPTIONS /var/lib/omgw)
say data_fs_bytes=$(df -B1 --output=size /var/lib/omgw | tail -n 1 | tr -d ' ')
say data_part_bytes=$(lsblk -bdno SIZE "$(readlink -f /dev/disk/by-label/data)")
say data_mode=$(stat -c %U:%G:%a /var/lib/omgw)
say value_dir=$(stat -c %U:%a /var/lib/omgw/value)
say health_dir=$(stat -c %U:%a /var/lib/omgw/health)
say tap_key=$(stat -c %U:%a /var/lib/omgw/value/tap.key 2>&1)
say var_lib_systemd=$(findmnt -no SOURCE /var/lib/systemd)
say random_seed=$(test -s /var/lib/systemd/random-seed && echo yes || echo no)
say tmp=$(findmnt -no FSTYPE /tmp)
say identity=$(sed -n 's/^GATEWAY_ID=//p' /var/lib/omgw/identity)
say hostname=$(cat /proc/sys/kernel/hostname)
say machine_id=$(cat /etc/machine-id)
say ssh_keys=$(ls /var/lib/omgw/ssh | tr '\\n' ',')
say etc_ssh_keys=$(ls /etc/ssh | grep -c '^ssh_host_')
say ssh=$(systemctl is-active ssh.service)
say grow=$(systemctl is-active omgw-grow-data.service)
say root_write=$(touch /etc/omgw-selftest 2>/dev/null && echo writable || echo refused)
say failed=$(systemctl list-units --state=failed --no-legend --plain | awk '{{print $1}}' | tr '\\n' ',')
say uptime_s=$(cut -d' ' -f1 /proc/uptime)
say end
systemctl --no-block poweroff
"""

SELFTEST_UNIT = """\
# Test images only (tests/image/test_qemu_boot.py): runs when the kernel command line says omgw.selftest.
[Unit]
Description=omgw boot self-test report
ConditionKernelCommandLine=omgw.selftest
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/omgw-selftest
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

EXTRA_VARS = {
    "image_omgw_config": {
        "gateway": {"id": "omgw-qemu-test", "state_dir": "/var/lib/omgw/health"},
        "value": {
            "csms_url": "ws://127.0.0.1:1/ocpp",
            "security_profile": 0,
            "allow_insecure": True,
            "allow_unknown_charge_points": True,
            "tap_secret_file": "/var/lib/omgw/value/tap.key",
        },
        "health": {"url": "mqtt://127.0.0.1:1", "allow_insecure": True},
    },
    "image_os_extra_files": [{"dest": "/usr/local/sbin/omgw-selftest", "content": SELFTEST_SCRIPT, "mode": "0755"}],
    "image_os_extra_units": [{"name": "omgw-selftest.service", "content": SELFTEST_UNIT, "enabled": True}],
}


@dataclass
class Built:
    out: Path
    image: Path
    kernel: Path
    initrd: Path
    manifest: dict
    timings: dict[str, float] = field(default_factory=dict)


def partitions(img: Path) -> list[dict]:
    proc = subprocess.run(["sfdisk", "--json", str(img)], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout)["partitiontable"]["partitions"]


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    work = Path(tempfile.mkdtemp(prefix="omgw-qemu-test-"))
    timings: dict[str, float] = {}
    try:
        extra = work / "extra-vars.yml"
        extra.write_text(json.dumps(EXTRA_VARS))  # JSON is YAML
        out = work / "out"
        env = dict(os.environ)
        env.setdefault("SOURCE_DATE_EPOCH", "1767225600")
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, str(BUILD), "--arch", "amd64", "--out", str(out),
                               "--extra-vars", str(extra)],
                              capture_output=True, text=True, env=env, timeout=3600)
        timings["build"] = time.monotonic() - t0
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]
        [zst] = out.glob("omgw-*-amd64.img.zst")
        img = work / "disk.img"
        subprocess.run(["zstd", "-q", "-d", "-f", str(zst), "-o", str(img)], check=True)
        yield Built(out, img, out / "vmlinuz", out / "initrd.img", json.loads((out / "manifest.json").read_text()),
                    timings)
    finally:
        print("\nqemu boot test timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        shutil.rmtree(work, ignore_errors=True)


def boot(b: Built, accel: str, name: str) -> tuple[dict[str, str], str, float]:
    """Boot the image once; returns the self-test report, the whole serial log and the seconds from
    QEMU's start to the end of the report."""
    log = b.image.parent / f"serial-{name}-{accel}.log"
    log.unlink(missing_ok=True)
    cmd = [
        QEMU, "-accel", accel, "-m", "1024", "-smp", "2", "-nographic", "-no-reboot",
        "-kernel", str(b.kernel), "-initrd", str(b.initrd),
        "-append", "root=LABEL=root ro rootwait console=ttyS0,115200 panic=-1 omgw.selftest",
        "-drive", f"file={b.image},format=raw,if=virtio",
        "-nic", "user,model=virtio-net-pci",
        "-serial", f"file:{log}", "-monitor", "none",
    ]
    if accel == "tcg":
        cmd[1:3] = ["-accel", "tcg", "-cpu", "max"]
    t0 = time.monotonic()
    qemu = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    end_at: float | None = None
    try:
        while time.monotonic() - t0 < BOOT_TIMEOUT_S:
            text = log.read_text(errors="replace") if log.exists() else ""
            if end_at is None and f"{MARK} end" in text:
                end_at = time.monotonic() - t0
            if qemu.poll() is not None:
                break
            time.sleep(1)
        else:
            pytest.fail(f"no power-off within {BOOT_TIMEOUT_S:.0f} s ({accel}); serial log:\n"
                        + log.read_text(errors="replace")[-6000:])
    finally:
        if qemu.poll() is None:
            qemu.kill()
        qemu.wait(timeout=30)
    text = log.read_text(errors="replace")
    report = dict(m.groups() for m in re.finditer(rf"{MARK} (\w+)=(.*?)\r?$", text, re.M))
    assert end_at is not None, f"no self-test report ({accel}); serial log:\n{text[-6000:]}"
    return report, text, end_at


@pytest.fixture(scope="module")
def first_boot(built: Built) -> tuple[dict[str, str], str, dict]:
    before = partitions(built.image)
    with built.image.open("r+b") as f:  # a bigger card: room for the data partition to grow
        f.truncate(built.image.stat().st_size + GROW)
    report, text, secs = boot(built, ACCEL, "first")
    built.timings[f"first boot ({ACCEL})"] = secs
    built.timings[f"first boot, guest uptime at the report ({ACCEL})"] = float(report.get("uptime_s", "nan"))
    return report, text, {"before": before, "after": partitions(built.image)}


def test_units_active_and_stay_active(first_boot: tuple[dict[str, str], str, dict]) -> None:
    report, text, _ = first_boot
    assert report["value"] == "active" and report["health"] == "active", text[-6000:]
    assert int(report["value_restarts"]) == 0 and int(report["health_restarts"]) == 0, report


def test_root_is_read_only(first_boot: tuple[dict[str, str], str, dict]) -> None:
    report, _, _ = first_boot
    assert "ro" in report["root_options"].split(","), report
    assert report["root_write"] == "refused"
    assert report["tmp"] == "tmpfs"


def test_data_partition_is_writable_and_grown(first_boot: tuple[dict[str, str], str, dict]) -> None:
    report, _, parts = first_boot
    assert "rw" in report["data_options"].split(","), report
    image_size = parts["before"][2]["size"] * 512
    assert int(report["data_part_bytes"]) >= image_size + GROW - 8 * 1024 * 1024, report
    # The file system follows the partition (systemd-growfs), not only the partition table.
    assert int(report["data_fs_bytes"]) > image_size + GROW // 2, report
    assert parts["after"][2]["size"] > parts["before"][2]["size"]  # written to the disk's table
    assert report["data_mode"] == "root:root:755"
    assert report["value_dir"] == "omgw-value:700" and report["health_dir"] == "omgw-health:750"
    assert report["tap_key"] == "omgw-value:600"
    assert report["var_lib_systemd"].endswith("/os/systemd]"), report  # a bind mount from the data partition
    assert report["random_seed"] == "yes"


def test_identity_and_ssh_host_keys_made_on_first_boot(first_boot: tuple[dict[str, str], str, dict]) -> None:
    report, _, _ = first_boot
    assert re.fullmatch(r"omgw-[0-9a-f]{12}", report["identity"]), report
    assert report["hostname"] == report["identity"]
    assert re.fullmatch(r"[0-9a-f]{32}", report["machine_id"])
    keys = set(filter(None, report["ssh_keys"].split(",")))
    assert {f"ssh_host_{t}_key" for t in ("rsa", "ecdsa", "ed25519")} <= keys, report
    assert report["etc_ssh_keys"] == "0"
    assert report["ssh"] == "active"
    assert report["grow"] == "active"


def test_nothing_failed(first_boot: tuple[dict[str, str], str, dict]) -> None:
    report, text, _ = first_boot
    assert report["failed"] == "", text[-8000:]


def test_second_boot_keeps_the_identity(built: Built, first_boot: tuple[dict[str, str], str, dict]) -> None:
    first, _, _ = first_boot
    report, text, secs = boot(built, ACCEL, "second")
    built.timings[f"second boot ({ACCEL})"] = secs
    assert report["identity"] == first["identity"]
    assert report["value"] == "active" and report["health"] == "active", text[-6000:]
    assert report["data_part_bytes"] == first["data_part_bytes"]
    assert report["failed"] == "", text[-8000:]
