"""image.yml bakes a real Debian bookworm root filesystem, and a second bake changes nothing.

The root filesystem is built once per module with mmdebstrap (minbase plus what the roles need) from
this machine's own Debian mirror, the playbook is applied through the community.general.chroot
connection, and the result is inspected as files: users, modes, enablement symlinks, the nftables
ruleset (``nft -c -f``) and the effective sshd configuration (``sshd -T`` inside the chroot). The
pki role is applied afterwards with certificates from appliance.devpki. Everything lives under
pytest's tmp directory and is removed at the end; nothing is mounted by the test (mmdebstrap
unmounts what it mounted, the chroot connection mounts nothing), which teardown verifies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.devpki import DevCA

from ansible_run import ANSIBLE_DIR, BIN, ansible_env  # tests/ansible/ansible_run.py
IMAGE_ROLES = ["base", "omgw", "hardening", "image_os"]
OMGW_VERSION = "0.0.1"
# Everything the roles rely on is preinstalled, so the bake needs no network inside the chroot
# (python3-packaging: ansible.builtin.pip, used by the omgw role, imports it on the target).
PACKAGES = [
    "python3", "python3-venv", "python3-apt", "python3-packaging", "systemd", "systemd-sysv",
    "openssh-server", "nftables", "chrony", "tzdata", "ca-certificates", "procps",
    "udev", "cloud-guest-utils", "fdisk", "e2fsprogs",  # image_os
]
PASSWORD_HASH = "$6$omgwtest$ZsGk3Fh1tZ3YF0b8vJ0pX8oK9kQfP2yF0kR1mS2nT3uV4wX5yZ6aB7cD8eF9gH0iJ1kL2mN3oP4qR5sT6uV7w"

# In CI (./dev test installs mmdebstrap, runs as root) these must run: a skip there would hide a failure.
_CI = os.environ.get("CI") == "true"
pytestmark = [
    pytest.mark.slow,
    # The module fixture (mmdebstrap, wheelhouse, first bake) runs in the first test's setup.
    pytest.mark.timeout(1800),
    pytest.mark.skipif(os.geteuid() != 0 and not _CI, reason="chroot and mmdebstrap (root mode) need root"),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None and not _CI,
                       reason="needs mmdebstrap (apt-get install mmdebstrap)"),
]


def debian_mirror() -> str:
    """The bookworm mirror this machine's apt uses (deb822 .sources or one-line sources.list)."""
    apt = Path("/etc/apt")
    for src in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in src.read_text().split("\n\n"):
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in
                (line.partition(":") for line in stanza.splitlines() if line and not line.startswith("#"))
            )
            if "bookworm" in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0]
    for lst in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if lst.exists():
            for line in lst.read_text().splitlines():
                m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
                if m:
                    return m.group(1)
    return "http://deb.debian.org/debian"


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefix)]


@dataclass
class Recap:
    ok: int
    changed: int
    failed: int
    unreachable: int
    output: str


def run_playbook(work: Path, root: Path, playbook: Path, *extra: str) -> tuple[int, Recap | None, str]:
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", f"{root},", str(playbook), *extra],
        cwd=ANSIBLE_DIR, env=ansible_env(work, ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"), ANSIBLE_FORCE_COLOR="0"), capture_output=True, text=True, timeout=1200,
    )
    out = proc.stdout + proc.stderr
    m = re.search(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    recap = Recap(int(m[1]), int(m[2]), int(m[4]), int(m[3]), out) if m else None
    return proc.returncode, recap, out


@dataclass
class Image:
    work: Path
    root: Path
    extra: list[str]
    first: Recap
    timings: dict[str, float] = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def chroot(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["chroot", str(self.root), *cmd], capture_output=True, text=True, timeout=60)

    def enabled(self, unit: str) -> list[str]:
        """The .wants directories that hold the unit's enablement symlink (links point into the image,
        so they dangle from the host's view: lexists, not exists)."""
        return sorted(d.name for d in self.path("etc/systemd/system").glob("*.wants") if os.path.lexists(d / unit))

    def passwd(self) -> dict[str, list[str]]:
        return {line.split(":")[0]: line.split(":") for line in self.path("etc/passwd").read_text().splitlines()}

    def group_members(self, group: str) -> set[str]:
        for line in self.path("etc/group").read_text().splitlines():
            name, _, _, members = line.split(":")
            if name == group:
                return set(filter(None, members.split(",")))
        raise AssertionError(f"no group {group} in the image")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    work = tmp_path_factory.mktemp("image")
    root = work / "rootfs"
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(PACKAGES)}", "--format=directory",
             "bookworm", str(root), debian_mirror()],
            check=True, capture_output=True, text=True, timeout=1200,
        )
        timings["mmdebstrap"] = time.monotonic() - t0
        # A vendor default account with a password (the Raspberry Pi OS "pi" habit): hardening locks it.
        subprocess.run(["chroot", str(root), "useradd", "-m", "-s", "/bin/bash", "-p", PASSWORD_HASH, "pi"],
                       check=True, capture_output=True, text=True)

        extra = ["-e", json.dumps({"image_roles": IMAGE_ROLES})]
        wheelhouse = work / "wheelhouse"
        t0 = time.monotonic()
        subprocess.run([sys.executable, str(ANSIBLE_DIR / "scripts" / "build-wheelhouse"), str(wheelhouse),
                        "--omgw-version", OMGW_VERSION],
                       check=True, capture_output=True, text=True, timeout=1200)
        timings["wheelhouse"] = time.monotonic() - t0
        extra += ["-e", f"omgw_version={OMGW_VERSION}", "-e", f"omgw_wheelhouse={wheelhouse}"]

        t0 = time.monotonic()
        rc, recap, out = run_playbook(work, root, ANSIBLE_DIR / "image.yml", *extra)
        timings["first apply"] = time.monotonic() - t0
        assert rc == 0 and recap is not None, out
        img = Image(work, root, extra, recap, timings)
        yield img
    finally:
        print(f"\nimage test timings ({', '.join(IMAGE_ROLES)}): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        left = mounts_under(work)
        shutil.rmtree(work, ignore_errors=True)
        assert not left, f"mounts left behind: {left}"


def test_image_bake_changes_something_the_first_time(image: Image) -> None:
    assert image.first.failed == 0 and image.first.changed > 0


def test_base_host_name_is_the_unprovisioned_placeholder(image: Image) -> None:
    assert image.path("etc/hostname").read_text() == "omgw-unprovisioned\n"
    assert re.search(r"^127\.0\.1\.1\s+omgw-unprovisioned$", image.path("etc/hosts").read_text(), re.M)


def test_base_time_zone_and_locale(image: Image) -> None:
    assert os.readlink(image.path("etc/localtime")) == "/usr/share/zoneinfo/Etc/UTC"
    assert image.path("etc/timezone").read_text() == "Etc/UTC\n"
    assert "LANG=C.UTF-8" in image.path("etc/default/locale").read_text()


def test_base_chrony_configured_and_enabled(image: Image) -> None:
    conf = image.path("etc/chrony/chrony.conf").read_text()
    assert "pool 2.debian.pool.ntp.org iburst" in conf
    assert "makestep 1 3" in conf
    assert image.enabled("chrony.service") == ["multi-user.target.wants"]


def test_base_journal_is_capped_for_sd_cards_and_watchdog_armed(image: Image) -> None:
    journald = image.path("etc/systemd/journald.conf.d/50-omgw.conf").read_text()
    assert "Storage=volatile" in journald and "RuntimeMaxUse=32M" in journald
    watchdog = image.path("etc/systemd/system.conf.d/50-omgw-watchdog.conf").read_text()
    assert "[Manager]" in watchdog and "RuntimeWatchdogSec=15" in watchdog


def test_hardening_ssh_keys_only(image: Image) -> None:
    dropin = image.path("etc/ssh/sshd_config.d/50-omgw-hardening.conf")
    assert dropin.stat().st_mode & 0o777 == 0o644
    # sshd -T prints the effective configuration; it needs a host key and /run/sshd, both made
    # only for this check and removed again (the image carries no host keys).
    key = image.path("tmp/sshd-test-key")
    run_sshd = image.path("run/sshd")
    made_run = not run_sshd.exists()
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        run_sshd.mkdir(parents=True, exist_ok=True)
        proc = image.chroot("/usr/sbin/sshd", "-T", "-f", "/etc/ssh/sshd_config", "-h", "/tmp/sshd-test-key")
    finally:
        key.unlink(missing_ok=True)
        Path(f"{key}.pub").unlink(missing_ok=True)
        if made_run:
            run_sshd.rmdir()
    assert proc.returncode == 0, proc.stderr
    effective = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["permitrootlogin"] == "no"
    assert effective["authenticationmethods"] == "publickey"
    # Host keys on the data partition (the root is read-only), beside the -h key of this check.
    hostkeys = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("hostkey ")]
    assert {f"/var/lib/omgw/ssh/ssh_host_{t}_key" for t in ("rsa", "ecdsa", "ed25519")} <= set(hostkeys)
    assert image.enabled("ssh.service") == ["multi-user.target.wants"]


def test_hardening_image_has_no_ssh_host_keys_and_makes_them_on_first_boot(image: Image) -> None:
    assert list(image.path("etc/ssh").glob("ssh_host_*")) == []
    assert image.enabled("omgw-ssh-hostkeys.service")
    unit = image.path("etc/systemd/system/omgw-ssh-hostkeys.service").read_text()
    assert "ExecStart=/usr/local/sbin/omgw-ssh-hostkeys" in unit
    assert "RequiresMountsFor=/var/lib/omgw/ssh" in unit
    script = image.path("usr/local/sbin/omgw-ssh-hostkeys")
    assert script.stat().st_mode & 0o777 == 0o755
    text = script.read_text()
    assert "dir=/var/lib/omgw/ssh" in text and "ssh-keygen" in text and "rsa ecdsa ed25519" in text


def test_hardening_locks_accounts_with_passwords(image: Image) -> None:
    shadow = {line.split(":")[0]: line.split(":")[1] for line in image.path("etc/shadow").read_text().splitlines()}
    usable = [user for user, pw in shadow.items() if not pw.startswith(("!", "*"))]
    assert usable == []
    assert shadow["pi"] == "!" + PASSWORD_HASH


def test_hardening_nftables_ruleset_is_valid_and_default_deny(image: Image) -> None:
    conf = image.path("etc/nftables.conf")
    text = conf.read_text()
    assert "type filter hook input priority filter; policy drop;" in text
    assert "ip saddr @mgmt_v4 tcp dport 22 accept" in text
    assert "ip6 saddr @mgmt_v6 tcp dport 22 accept" in text
    assert 'iifname "eth1" tcp dport 9000 accept' in text
    # Only the charger interface reaches the OCPP port; SSH only from the management sets.
    assert re.findall(r"^\s*(.*dport (?:22|9000) accept)$", text, re.M) == [
        "ip saddr @mgmt_v4 tcp dport 22 accept", "ip6 saddr @mgmt_v6 tcp dport 22 accept",
        'iifname "eth1" tcp dport 9000 accept',
    ]
    host = subprocess.run(["nft", "-c", "-f", str(conf)], capture_output=True, text=True)
    assert host.returncode == 0, host.stderr
    inside = image.chroot("/usr/sbin/nft", "-c", "-f", "/etc/nftables.conf")
    assert inside.returncode == 0, inside.stderr
    assert image.enabled("nftables.service") == ["sysinit.target.wants"]


def test_hardening_sysctl_dropin(image: Image) -> None:
    text = image.path("etc/sysctl.d/60-omgw-hardening.conf").read_text()
    for line in ("kernel.kptr_restrict = 2", "net.ipv4.conf.all.accept_redirects = 0", "net.ipv4.tcp_syncookies = 1"):
        assert line in text


def test_image_os_read_only_root_and_data_partition(image: Image) -> None:
    fstab = [line.split() for line in image.path("etc/fstab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    mounts = {f[1]: f for f in fstab}
    assert mounts["/"][:4] == ["LABEL=root", "/", "ext4", "ro,noatime"]
    assert mounts["/boot/firmware"][0] == "LABEL=BOOT" and "ro" in mounts["/boot/firmware"][3].split(",")
    data = mounts["/var/lib/omgw"]
    assert data[0] == "LABEL=data" and {"rw", "x-systemd.growfs"} <= set(data[3].split(",")) and data[5] == "2"
    assert mounts["/var/lib/systemd"][:3] == ["/var/lib/omgw/os/systemd", "/var/lib/systemd", "none"]
    assert mounts["/var/lib/chrony"][0] == "/var/lib/omgw/os/chrony"
    for path in ("/tmp", "/var/tmp", "/var/log"):
        assert mounts[path][2] == "tmpfs"
    assert image.path("etc/machine-id").read_text() == ""
    assert image.path("var/lib/omgw").is_dir() and image.path("boot/firmware").is_dir()
    for unit, target in (("omgw-grow-data.service", "local-fs.target.wants"),
                         ("omgw-data-layout.service", "local-fs.target.wants"),
                         ("omgw-identity.service", "sysinit.target.wants")):
        assert target in image.enabled(unit), unit
        assert image.path(f"usr/local/sbin/{unit.removesuffix('.service')}").stat().st_mode & 0o777 == 0o755
    assert "growpart" in image.path("usr/local/sbin/omgw-grow-data").read_text()
    assert image.path("usr/bin/growpart").exists()
    assert "Name=en* eth*" in image.path("etc/systemd/network/80-omgw-dhcp.network").read_text()
    assert image.enabled("systemd-networkd.service")
    config = image.path("etc/omgw/omgw.toml").read_text()
    assert "/var/lib/omgw/health" in config and "/var/lib/omgw/value/tap.key" in config


def test_ansible_leaves_no_home_in_the_image(image: Image) -> None:
    assert not image.path("root/.ansible").exists()


def test_omgw_release_users_and_units(image: Image) -> None:
    users = image.passwd()
    for user in ("omgw-value", "omgw-health"):
        assert user in users and users[user][6] == "/usr/sbin/nologin"
    assert {"omgw-value", "omgw-health"} <= image.group_members("omgw")
    for group in ("dialout", "i2c", "gpio"):
        members = image.group_members(group)
        assert "omgw-health" in members and "omgw-value" not in members
    current = image.path("opt/omgw/current")
    assert current.is_symlink()
    assert os.readlink(current).rstrip("/").endswith(f"releases/{OMGW_VERSION}")
    assert image.path(f"opt/omgw/releases/{OMGW_VERSION}/bin/omgw").exists()
    config = image.path("etc/omgw/omgw.toml")
    assert config.stat().st_mode & 0o777 == 0o640 and config.stat().st_uid == 0
    for unit in ("omgw-value.service", "omgw-health.service"):
        assert image.enabled(unit), f"{unit} not enabled"
    proc = image.chroot("/opt/omgw/current/bin/omgw", "--help")
    assert proc.returncode == 0, proc.stderr


def test_second_bake_changes_nothing(image: Image) -> None:
    t0 = time.monotonic()
    rc, recap, out = run_playbook(image.work, image.root, ANSIBLE_DIR / "image.yml", *image.extra)
    image.timings["second apply"] = time.monotonic() - t0
    assert rc == 0 and recap is not None, out
    assert recap.changed == 0 and recap.failed == 0, out


# --- pki (not part of the image: per gateway material, applied here to the same tree) ----------

PKI_PLAY = """\
- name: Apply pki to the image tree
  hosts: all
  gather_facts: false
  connection: community.general.chroot
  vars:
    ansible_remote_tmp: /tmp/.ansible-image
  roles:
    - pki
"""


@pytest.fixture(scope="module")
def pki_files(image: Image) -> dict[str, str]:
    d = image.work / "pki"
    csms, mqtt = DevCA(d / "csms", "csms CA"), DevCA(d / "mqtt", "mqtt CA")
    gw, cp = csms.issue("gw-1", client=True), csms.issue("CP-7", client=True)
    gw_mqtt = mqtt.issue("gw-1", client=True, days=10)  # inside the 30-day warning window
    expired = csms.issue("old", client=True, days=-1, not_before_days=-30)
    (image.work / "pki.yml").write_text(PKI_PLAY)
    owner, health = "omgw-value", "omgw-health"
    good = {
        "pki_csms_ca": str(csms.cert_file), "pki_mqtt_ca": str(mqtt.cert_file),
        "pki_csms_client_cert": str(gw.cert), "pki_csms_client_key": str(gw.key),
        "pki_mqtt_client_cert": str(gw_mqtt.cert), "pki_mqtt_client_key": str(gw_mqtt.key),
        "pki_charge_points": [{"id": "CP-7", "cert": str(cp.cert), "key": str(cp.key)}],
        "pki_value_owner": owner, "pki_health_owner": health,
    }
    bad = dict(good, pki_csms_client_cert=str(expired.cert), pki_csms_client_key=str(expired.key))
    return {"good": json.dumps(good), "bad": json.dumps(bad), "owner": owner, "health": health}


def test_pki_expired_certificate_fails_before_anything_is_written(image: Image, pki_files: dict[str, str]) -> None:
    rc, _, out = run_playbook(image.work, image.root, image.work / "pki.yml", "-e", pki_files["bad"])
    assert rc != 0
    assert "expired" in out
    assert not image.path("etc/omgw/pki").exists()


def test_pki_installs_certificates_and_keys_with_modes_and_warns_ahead(
        image: Image, pki_files: dict[str, str]) -> None:
    rc, recap, out = run_playbook(image.work, image.root, image.work / "pki.yml", "-e", pki_files["good"])
    assert rc == 0 and recap is not None and recap.changed > 0, out
    flat = re.sub(r"\s+", " ", out)  # the yaml result format wraps long messages
    assert re.search(r"WARNING: certificate \S+/mqtt/gw-1\.crt expires in (9|10)\.\d days \(warn at 30\)", flat), out
    assert "csms/gw-1.crt expires" not in out
    users = {int(v[2]): k for k, v in image.passwd().items()}
    pki = image.path("etc/omgw/pki")
    expect = {
        "csms-ca.pem": (0o644, "root"), "mqtt-ca.pem": (0o644, "root"),
        "csms-client.crt": (0o644, "root"), "csms-client.key": (0o600, pki_files["owner"]),
        "mqtt-client.crt": (0o644, "root"), "mqtt-client.key": (0o600, pki_files["health"]),
        "cp/CP-7.crt": (0o644, "root"), "cp/CP-7.key": (0o600, pki_files["owner"]),
    }
    for name, (mode, owner) in expect.items():
        st = (pki / name).stat()
        assert (st.st_mode & 0o777, users[st.st_uid]) == (mode, owner), name
    rc, recap, out = run_playbook(image.work, image.root, image.work / "pki.yml", "-e", pki_files["good"])
    assert rc == 0 and recap is not None and recap.changed == 0, out
