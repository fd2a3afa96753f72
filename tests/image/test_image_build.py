"""image/build makes a flashable disk image, and a second build from the same inputs is bit-identical.

The amd64 image is built twice (module fixture, two output directories, one shared .deb cache) with
the same SOURCE_DATE_EPOCH; rootfs.tar and the compressed image must have the same sha256. The first
build is then inspected as files, without loop devices or mounts: the partition table (sfdisk
--json), the filesystems at their offsets (blkid -p -O, debugfs "img?offset=N", mtools "img@@N"),
and the manifest. The arm64 image (Raspberry Pi) is built once when arm64 binaries can run here
(qemu-user-static + binfmt): its boot partition carries the Pi firmware, config.txt and cmdline.txt,
and the omgw venv of the image runs under qemu-user. Everything lives under pytest's tmp directory
and is removed at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "image" / "build"
VERSION = "0.0.1"
SDE = "1764000000"  # fixed: the build must not depend on the checkout's git history

_CI = os.environ.get("CI") == "true"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 and not _CI, reason="image/build runs as root (mmdebstrap, chroot)"),
    pytest.mark.timeout(3600),
]
TIMINGS: dict[str, float] = {}


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if (line.split()[1] + "/").startswith(prefix)]


def remove(work: Path) -> list[str]:
    """Remove a work directory, never across a mount point (an interrupted mmdebstrap can leave /proc,
    /sys and a bind mount of the host's /dev/shm behind): unmount them first; returns what was left."""
    left = mounts_under(work)
    for m in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", m], capture_output=True)
    if not mounts_under(work):
        shutil.rmtree(work, ignore_errors=True)
    return left


def build(arch: str, out: Path, work: Path, cache: Path) -> float:
    env = dict(os.environ, SOURCE_DATE_EPOCH=SDE, TMPDIR=str(work))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with subprocess.Popen([str(BUILD), "--arch", arch, "--out", str(out), "--omgw-version", VERSION,
                           "--apt-cache", str(cache)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        try:
            output, _ = proc.communicate(timeout=2400)
        except BaseException:
            # SIGTERM: image/build stops mmdebstrap (which unmounts) and removes its scratch directory.
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    assert proc.returncode == 0, output[-8000:]
    return time.monotonic() - t0


@dataclass
class Disk:
    raw: Path
    table: dict
    offsets: list[int] = field(default_factory=list)

    def blkid(self, n: int) -> dict[str, str]:
        out = subprocess.run(["blkid", "-p", "-O", str(self.offsets[n - 1]), "-o", "export", str(self.raw)],
                             capture_output=True, text=True, check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def ext4_cat(self, n: int, path: str) -> str:
        proc = subprocess.run(["debugfs", "-R", f"cat {path}", f"{self.raw}?offset={self.offsets[n - 1]}"],
                              capture_output=True, text=True, check=True)
        return proc.stdout

    def ext4_stat(self, n: int, path: str) -> str:
        return subprocess.run(["debugfs", "-R", f"stat {path}", f"{self.raw}?offset={self.offsets[n - 1]}"],
                              capture_output=True, text=True, check=True).stdout

    def fat_ls(self, n: int) -> list[str]:
        out = subprocess.run(["mdir", "-b", "-i", f"{self.raw}@@{self.offsets[n - 1]}", "::/"],
                             capture_output=True, text=True, check=True,
                             env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout
        return sorted(line.removeprefix("::/") for line in out.split())

    def fat_cat(self, n: int, name: str) -> str:
        return subprocess.run(["mtype", "-i", f"{self.raw}@@{self.offsets[n - 1]}", f"::/{name}"],
                              capture_output=True, text=True, check=True,
                              env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout


def open_disk(zst: Path, dest: Path) -> Disk:
    raw = dest / zst.name.removesuffix(".zst")
    subprocess.run(["zstd", "-q", "-d", "-f", "-o", str(raw), str(zst)], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    return Disk(raw, table, [p["start"] * table.get("sectorsize", 512) for p in table["partitions"]])


@dataclass
class Builds:
    work: Path
    a: Path
    b: Path
    disk: Disk
    manifest: dict


@pytest.fixture(scope="module")
def amd64(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builds]:
    work = tmp_path_factory.mktemp("image-build")
    try:
        cache = work / "apt-cache"
        TIMINGS["amd64 build 1"] = build("amd64", work / "a", work / "tmp-a", cache)
        TIMINGS["amd64 build 2"] = build("amd64", work / "b", work / "tmp-b", cache)
        manifest = json.loads((work / "a" / "manifest.json").read_text())
        disk = open_disk(work / "a" / f"omgw-{VERSION}-amd64.img.zst", work)
        yield Builds(work, work / "a", work / "b", disk, manifest)
    finally:
        print("\nimage build timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))
        left = remove(work)
        assert not left, f"mounts left behind: {left}"


def test_two_builds_are_bit_identical(amd64: Builds) -> None:
    for name in ("rootfs.tar", f"omgw-{VERSION}-amd64.img.zst", f"omgw-{VERSION}-amd64.img.bmap", "vmlinuz",
                 "initrd.img", "manifest.json"):
        assert sha256(amd64.a / name) == sha256(amd64.b / name), name
    print(f"\nrootfs.tar {sha256(amd64.a / 'rootfs.tar')}\n"
          f"img.zst    {sha256(amd64.a / f'omgw-{VERSION}-amd64.img.zst')}")


def test_manifest_lists_packages_versions_and_artefact_hashes(amd64: Builds) -> None:
    m = amd64.manifest
    assert m["omgw_version"] == VERSION and m["arch"] == "amd64" and m["suite"] == "bookworm"
    assert m["source_date_epoch"] == int(SDE)
    assert m["mirror"].startswith("http")
    names = {p["name"]: p for p in m["packages"]}
    assert "linux-image-amd64" in names and names["linux-image-amd64"]["version"]
    assert {"systemd", "openssh-server", "python3", "cloud-guest-utils"} <= names.keys()
    assert set(m["artefacts"]) == {"rootfs.tar", f"omgw-{VERSION}-amd64.img.zst", f"omgw-{VERSION}-amd64.img.bmap",
                                   "vmlinuz", "initrd.img"}
    for name, info in m["artefacts"].items():
        assert info["sha256"] == sha256(amd64.a / name), name
        assert info["size"] == (amd64.a / name).stat().st_size
    assert m["disk"]["sha256_raw"] == sha256(amd64.disk.raw)
    assert m["not_reproducible"] == []


def test_bmaptool_flashes_the_image_with_its_block_map(amd64: Builds, tmp_path: Path) -> None:
    """What an operator runs to flash a card (docs/image.md), onto a file standing in for the card:
    bmaptool finds the .bmap beside the .img.zst, writes only the mapped blocks and verifies them."""
    card = tmp_path / "card"
    proc = subprocess.run(["bmaptool", "copy", str(amd64.a / f"omgw-{VERSION}-amd64.img.zst"), str(card)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"discovered bmap file '{amd64.a / f'omgw-{VERSION}-amd64.img.bmap'}'" in proc.stderr, proc.stderr
    assert "using bmap file" in proc.stderr, proc.stderr
    assert sha256(card) == amd64.manifest["disk"]["sha256_raw"]
    bmap = ElementTree.parse(amd64.a / f"omgw-{VERSION}-amd64.img.bmap").getroot()
    mapped = int(bmap.findtext("MappedBlocksCount", "").strip())
    total = int(bmap.findtext("BlocksCount", "").strip())
    assert 0 < mapped < total  # the free space of the partitions is not written


def test_partition_table_boot_root_data(amd64: Builds) -> None:
    t = amd64.disk.table
    assert t["label"] == "dos" and t["id"] == "0x6f6d6777"
    parts = t["partitions"]
    assert [p["type"] for p in parts] == ["c", "83", "83"]
    assert parts[0]["start"] * 512 == 4 << 20 and parts[0]["size"] * 512 == 256 << 20
    assert parts[2]["size"] * 512 == 64 << 20
    assert [amd64.disk.blkid(n)["TYPE"] for n in (1, 2, 3)] == ["vfat", "ext4", "ext4"]
    assert [amd64.disk.blkid(n)["LABEL"] for n in (1, 2, 3)] == ["BOOT", "root", "data"]


def test_boot_partition_has_kernel_initrd_and_cmdline(amd64: Builds) -> None:
    files = amd64.disk.fat_ls(1)
    assert {"vmlinuz", "initrd.img", "cmdline.txt", "config.txt"} <= set(files)
    cmdline = amd64.disk.fat_cat(1, "cmdline.txt")
    assert "root=LABEL=root" in cmdline.split() and "ro" in cmdline.split()
    assert "console=ttyS0,115200" in cmdline


def test_root_filesystem_has_omgw_and_read_only_fstab(amd64: Builds) -> None:
    disk = amd64.disk
    assert "Type: symlink" in disk.ext4_stat(2, "/opt/omgw/current")
    assert "Type: regular" in disk.ext4_stat(2, f"/opt/omgw/releases/{VERSION}/bin/omgw")
    fstab = [line.split() for line in disk.ext4_cat(2, "/etc/fstab").splitlines()
             if line.strip() and not line.startswith("#")]
    by_mount = {f[1]: f for f in fstab}
    assert by_mount["/"][0] == "LABEL=root" and "ro" in by_mount["/"][3].split(",")
    assert by_mount["/var/lib/omgw"][0] == "LABEL=data" and by_mount["/var/lib/omgw"][2] == "ext4"
    assert disk.ext4_cat(2, "/etc/machine-id") == ""
    assert "ssh_host_" not in subprocess.run(["debugfs", "-R", "ls /etc/ssh", f"{disk.raw}?offset={disk.offsets[1]}"],
                                             capture_output=True, text=True, check=True).stdout


def test_root_tar_matches_the_image_content(amd64: Builds) -> None:
    names = subprocess.run(["tar", "-tf", str(amd64.a / "rootfs.tar")], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert f"./opt/omgw/releases/{VERSION}/bin/omgw" in names
    assert not [n for n in names if n.startswith("./var/lib/apt/lists/") and not n.endswith(("/", "lock"))]
    assert not [n for n in names if n.startswith("./tmp/") and n != "./tmp/"]
    verbose = subprocess.run(["tar", "--numeric-owner", "-tvf", str(amd64.a / "rootfs.tar")], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    # every mtime clamped: nothing later than SOURCE_DATE_EPOCH (2025-11-24 16:00 UTC)
    assert all(line.split()[3] <= "2025-11-24" for line in verbose), [
        line for line in verbose if line.split()[3] > "2025-11-24"][:5]


# --- arm64 (Raspberry Pi) --------------------------------------------------------------------------

def arm64_runs() -> tuple[bool, str]:
    if os.uname().machine == "aarch64":
        return True, ""
    if shutil.which("qemu-aarch64-static") is None or shutil.which("update-binfmts") is None:
        return False, "needs qemu-user-static and binfmt-support (apt-get install qemu-user-static binfmt-support)"
    return True, ""


@pytest.fixture(scope="module")
def arm64(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Disk]]:
    ok, why = arm64_runs()
    if not ok:
        pytest.skip(why)
    work = tmp_path_factory.mktemp("image-arm64")
    try:
        TIMINGS["arm64 build 1"] = build("arm64", work / "out", work / "tmp", work / "apt-cache")
        TIMINGS["arm64 build 2"] = build("arm64", work / "out-2", work / "tmp-2", work / "apt-cache")
        yield work, open_disk(work / "out" / f"omgw-{VERSION}-arm64.img.zst", work)
    finally:
        print("\nimage build timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))
        left = remove(work)
        assert not left, f"mounts left behind: {left}"


@pytest.mark.arm64
def test_arm64_two_builds_are_bit_identical(arm64: tuple[Path, Disk]) -> None:
    work, _ = arm64
    for name in ("rootfs.tar", f"omgw-{VERSION}-arm64.img.zst", f"omgw-{VERSION}-arm64.img.bmap", "manifest.json"):
        assert sha256(work / "out" / name) == sha256(work / "out-2" / name), name
    print(f"\narm64 rootfs.tar {sha256(work / 'out' / 'rootfs.tar')}\n"
          f"arm64 img.zst    {sha256(work / 'out' / f'omgw-{VERSION}-arm64.img.zst')}")


@pytest.mark.arm64
def test_arm64_boot_partition_has_pi_firmware_and_config(arm64: tuple[Path, Disk]) -> None:
    _, disk = arm64
    assert disk.table["label"] == "dos"
    assert [disk.blkid(n)["LABEL"] for n in (1, 2, 3)] == ["BOOT", "root", "data"]
    files = set(disk.fat_ls(1))
    assert {"start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb", "vmlinuz", "initrd.img", "config.txt",
            "cmdline.txt"} <= files, sorted(files)
    config = disk.fat_cat(1, "config.txt").splitlines()
    for line in ("enable_uart=1", "dtparam=i2c_arm=on", "arm_64bit=1", "kernel=vmlinuz"):
        assert line in config
    cmdline = disk.fat_cat(1, "cmdline.txt").split()
    assert {"root=LABEL=root", "ro", "console=serial0,115200"} <= set(cmdline)


@pytest.mark.arm64
def test_arm64_manifest_and_venv_runs_under_qemu_user(arm64: tuple[Path, Disk]) -> None:
    work, _ = arm64
    m = json.loads((work / "out" / "manifest.json").read_text())
    names = {p["name"]: p for p in m["packages"]}
    assert {"linux-image-arm64", "raspi-firmware", "firmware-brcm80211", "i2c-tools"} <= names.keys()
    assert names["linux-image-arm64"]["arch"] == "arm64"
    root = work / "root"
    root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(work / "out" / "rootfs.tar"), "-C", str(root)], check=True)
    assert "ARM aarch64" in subprocess.run(["file", "-L", str(root / "usr/bin/python3")], capture_output=True,
                                           text=True).stdout or not shutil.which("file")
    proc = subprocess.run(["chroot", str(root), "/opt/omgw/current/bin/omgw", "--version"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert VERSION in proc.stdout
