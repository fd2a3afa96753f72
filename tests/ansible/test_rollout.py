"""rollout.yml against three local "gateways": each its own sshd on a loopback port, its own root dir.

What is real: OpenSSH (``/usr/sbin/sshd -D`` per host, own host key, authorized key made here),
ansible-playbook over SSH, the wheelhouse from ``ansible/scripts/build-wheelhouse``, the omgw role
installing releases into venvs, the gateway itself (``omgw run``: value + health channels, health
connected to a mosquitto with mTLS), and the health gate (``omgw status --json``).

The scenario: every host is deployed on release 0.1.0 (this tree); then rollout.yml rolls out
0.2.0 (the same code stamped with another version) with host 2's new config listening on a port
this test holds, so host 2's value channel cannot start and its health gate fails. Expected: host 1
on 0.2.0 and healthy; host 2 rolled back to 0.1.0 (symlink and config) and healthy; host 3 never
touched because the rollout stopped after host 2's batch; ansible-playbook exits non-zero.

Everything started here (sshd, mosquitto, the gateways) is killed in ``finally``. Needs the Debian
packages openssh-server and mosquitto.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.devpki import DevCA

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
SSHD = "/usr/sbin/sshd"
MOSQUITTO = "/usr/sbin/mosquitto"
OLD, NEW = "0.1.0", "0.2.0"
HOSTS = ("gw1", "gw2", "gw3")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    # In CI (./dev test installs openssh-server and mosquitto, runs as root) none of these may skip.
    *([] if os.environ.get("CI") == "true" else [
        pytest.mark.skipif(not Path(SSHD).exists(), reason="needs openssh-server (apt-get install openssh-server)"),
        pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="needs mosquitto (apt-get install mosquitto)"),
        pytest.mark.skipif(shutil.which("ansible-playbook", path=str(VENV_BIN)) is None,
                           reason="ansible-playbook not installed in the venv"),
        pytest.mark.skipif(os.geteuid() != 0, reason="the local sshd hosts run as root"),
    ]),
]

# The gateway "service" of a host without systemd: (re)start ``omgw run`` detached, pid file in the root.
RESTART_SCRIPT = """#!/bin/sh
# usage: omgw-restart ROOT  -- stop the gateway recorded in ROOT/run/omgw.pid, start the current release
set -eu
root=$1
pidf=$root/run/omgw.pid
mkdir -p "$root/run" "$root/var/log" "$root/var/lib/omgw"
if [ -f "$pidf" ]; then
    pid=$(cat "$pidf")
    if kill "$pid" 2>/dev/null; then
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"
fi
setsid "$root/opt/omgw/current/bin/omgw" run -c "$root/etc/omgw/omgw.toml" \\
    >>"$root/var/log/omgw.log" 2>&1 </dev/null &
echo $! >"$pidf"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port}")


def stop_proc(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    for sig, pause in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheelhouse with omgw 0.1.0 (this tree) and 0.2.0 (the same code, another version)."""
    out = tmp_path_factory.mktemp("wheelhouse")
    script = ANSIBLE / "scripts" / "build-wheelhouse"
    for extra in ([], ["--omgw-version", NEW]):  # the second run is offline (wheels already there)
        subprocess.run([sys.executable, str(script), str(out), *extra], check=True, timeout=600)
    assert (out / f"omgw-{OLD}-py3-none-any.whl").exists() and (out / f"omgw-{NEW}-py3-none-any.whl").exists()
    names = {p.name.split("-")[0].lower() for p in out.glob("*.whl")}
    assert {"pydantic", "websockets", "paho_mqtt"} <= names and not names & {"pytest", "ansible", "ansible_core"}
    return out


class Host:
    """One gateway: a root directory and an sshd on its own loopback port."""

    def __init__(self, name: str, base: Path, client_key: Path):
        self.name = name
        self.root = base / name
        self.root.mkdir()
        self.port = free_port()
        self.sshd: subprocess.Popen[bytes] | None = None
        etc = base / f"{name}-sshd"
        etc.mkdir()
        self.host_key = etc / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(self.host_key)],
                       check=True)
        self.conf = etc / "sshd_config"
        self.conf.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\nPidFile {etc / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {client_key}.pub\nPermitRootLogin prohibit-password\n"
            f"PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"UsePAM no\nStrictModes no\nAllowUsers {getpass.getuser()}\nSubsystem sftp internal-sftp\n"
            f"LogLevel ERROR\n"
        )

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.sshd, f"sshd for {self.name}")

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {Path(str(self.host_key) + '.pub').read_text().strip()}"

    # ---- what the assertions look at ---------------------------------------------------------

    @property
    def current(self) -> str:
        return os.readlink(self.root / "opt/omgw/current")

    def releases(self) -> set[str]:
        return {p.name for p in (self.root / "opt/omgw/releases").iterdir()}

    def pid(self) -> int:
        return int((self.root / "run/omgw.pid").read_text())

    def status(self) -> tuple[int, dict[str, Any]]:
        proc = subprocess.run([str(self.root / "opt/omgw/current/bin/omgw"), "status", "--json", "-c",
                               str(self.root / "etc/omgw/omgw.toml")], capture_output=True, text=True, timeout=30)
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}

    def version(self) -> str:
        return subprocess.run([str(self.root / "opt/omgw/current/bin/omgw"), "--version"], capture_output=True,
                              text=True, check=True).stdout.strip()


class Broker:
    def __init__(self, directory: Path, ca: DevCA):
        self.port = free_port()
        server = ca.issue("broker", hosts=("127.0.0.1",))
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"user {getpass.getuser()}\nper_listener_settings false\npersistence false\n"
            f"log_dest file {directory / 'mosquitto.log'}\n"
            f"listener {self.port} 127.0.0.1\ncafile {ca.cert_file}\ncertfile {server.cert}\nkeyfile {server.key}\n"
            f"require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "mosquitto")


def gateway_config(host: Host, broker: Broker, listen_port: int) -> dict[str, Any]:
    r = host.root
    return {
        "gateway": {"id": f"GW-{host.name}", "site": "test", "state_dir": f"{r}/var/lib/omgw"},
        "value": {"listen": f"127.0.0.1:{listen_port}", "csms_url": "ws://127.0.0.1:9/ocpp",
                  "security_profile": 0, "allow_insecure": True, "allow_unknown_charge_points": True,
                  "tap_socket": f"{r}/run/tap.sock", "status_socket": f"{r}/run/value.sock",
                  "tap_secret_file": f"{r}/var/lib/omgw/tap.key", "metrics_listen": "off"},
        "health": {"url": f"mqtts://127.0.0.1:{broker.port}", "ca_file": f"{r}/etc/omgw/mqtt-ca.pem",
                   "client_cert": f"{r}/etc/omgw/mqtt-client.pem", "client_key": f"{r}/etc/omgw/mqtt-client.key",
                   "tap_socket": f"{r}/run/tap.sock", "status_socket": f"{r}/run/health.sock",
                   "metrics_listen": "off"},
    }


def inventory(hosts: list[Host], base: Path, broker: Broker, ca: DevCA, client_key: Path, restart: Path,
              listen: dict[str, int]) -> dict[str, Any]:
    hostvars = {}
    for h in hosts:
        cert = ca.issue(f"GW-{h.name}", client=True)
        hostvars[h.name] = {
            "ansible_host": "127.0.0.1", "ansible_port": h.port, "ansible_user": getpass.getuser(),
            "ansible_ssh_private_key_file": str(client_key),
            "ansible_remote_tmp": f"{h.root}/.ansible-tmp",
            "omgw_root": str(h.root),
            "omgw_config": gateway_config(h, broker, listen[h.name]),
            "omgw_secrets": [{"dest": "/etc/omgw/mqtt-ca.pem", "src": str(ca.cert_file)},
                             {"dest": "/etc/omgw/mqtt-client.pem", "src": str(cert.cert)},
                             {"dest": "/etc/omgw/mqtt-client.key", "src": str(cert.key)}],
            "omgw_restart_command": f"/bin/sh {restart} {h.root}",
        }
    return {"all": {"vars": {
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={base / 'known_hosts'} -o StrictHostKeyChecking=yes "
                                   "-o IdentitiesOnly=yes",
        "omgw_services": "none",
    }, "children": {"gateways": {"hosts": hostvars}}}}


def run_playbook(base: Path, playbook: Path, inv: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    inv_file = base / "inventory.json"
    inv_file.write_text(json.dumps(inv, indent=1))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
           "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_HOME": str(base / "ansible-home"),
           "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           # One SSH connection per host for the whole run (closed in the test's finally: close_masters).
           "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=120s",
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(base / "cp")}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inv_file), str(playbook), *extra],
                          capture_output=True, text=True, env=env, cwd=ANSIBLE, timeout=600)
    (base / f"{playbook.stem}-{int(time.time() * 1000)}.log").write_text(proc.stdout + proc.stderr)
    return proc


def recap(stdout: str) -> dict[str, dict[str, int]]:
    out = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", stdout, re.M):
        out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


def close_masters(base: Path) -> None:
    """End the SSH ControlPersist masters ansible left behind (and with them the sshd sessions)."""
    cp = base / "cp"
    for sock in cp.glob("*") if cp.is_dir() else []:
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "127.0.0.1"], capture_output=True,
                       timeout=10)


def wait_healthy(host: Host, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rc, doc = host.status()
    while rc != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        rc, doc = host.status()
    assert rc == 0, f"{host.name} not healthy: {json.dumps(doc)[:2000]}"
    return doc


@pytest.fixture
def fleet_dir() -> Iterator[Path]:
    # Short path: the gateways' Unix sockets live below it (sun_path is 108 bytes).
    d = Path(tempfile.mkdtemp(prefix="rollout-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_rollout_stops_and_rolls_back_the_host_that_fails_its_health_gate(wheelhouse: Path, fleet_dir: Path) -> None:
    base = fleet_dir
    t0 = time.monotonic()
    client_key = base / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rollout-test", "-f", str(client_key)],
                   check=True)
    restart = base / "omgw-restart"
    restart.write_text(RESTART_SCRIPT)
    restart.chmod(0o755)
    ca = DevCA(base / "ca")
    broker = Broker(base, ca)
    hosts = [Host(name, base, client_key) for name in HOSTS]
    blocker = socket.socket()  # host 2's new config listens here: taken, so its value channel cannot start
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    blocked_port = blocker.getsockname()[1]
    site = base / "site.yml"
    site.write_text("- name: Deploy omgw\n  hosts: gateways\n  gather_facts: false\n  roles:\n    - role: omgw\n")
    try:
        broker.start()
        for h in hosts:
            h.start()
        (base / "known_hosts").write_text("\n".join(h.known_hosts_line() for h in hosts) + "\n")
        listen = {h.name: free_port() for h in hosts}
        inv = inventory(hosts, base, broker, ca, client_key, restart, listen)
        common = ["-e", f"omgw_wheelhouse={wheelhouse}"]

        # Phase 1: every host on 0.1.0 (the role directly, all hosts in parallel), then again: no changes.
        first = run_playbook(base, site, inv, *common, "-e", f"omgw_version={OLD}")
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
        t_deploy = time.monotonic() - t0
        again = run_playbook(base, site, inv, *common, "-e", f"omgw_version={OLD}")
        assert again.returncode == 0, again.stdout[-4000:]
        assert all(r["changed"] == 0 for r in recap(again.stdout).values()), again.stdout[-6000:]
        assert set(recap(again.stdout)) == set(HOSTS)
        for h in hosts:
            assert h.current == f"releases/{OLD}" and wait_healthy(h)["healthy"] is True
            assert oct((h.root / "etc/omgw/mqtt-client.key").stat().st_mode & 0o777) == "0o600"
            assert "cannot" not in (h.root / "etc/omgw/omgw.toml").read_text()
        pid3 = hosts[2].pid()

        # Phase 2: roll out 0.2.0; host 2's new config is broken (its listen port is taken).
        inv["all"]["children"]["gateways"]["hosts"]["gw2"]["omgw_config"]["value"]["listen"] = \
            f"127.0.0.1:{blocked_port}"
        t1 = time.monotonic()
        roll = run_playbook(base, ANSIBLE / "rollout.yml", inv, *common, "-e", f"omgw_version={NEW}",
                            "-e", "rollout_health_timeout_s=15", "-e", "rollout_health_interval_s=1",
                            "-e", "rollout_min_free_mb=50")
        t_rollout = time.monotonic() - t1
        out = roll.stdout
        assert roll.returncode != 0, out[-6000:]
        stats = recap(out)
        assert stats["gw1"]["failed"] == 0 and stats["gw2"]["failed"] == 1, stats
        assert "gw3" not in stats, f"host 3 was in the rollout: {stats}"  # never reached: the rollout stopped
        assert "rolled back to" in out and "Rollout stopped" in out

        gw1, gw2, gw3 = hosts
        # Host 1: on the new release, old one kept beside it, healthy.
        assert gw1.current == f"releases/{NEW}" and gw1.releases() == {OLD, NEW}
        assert gw1.version() == f"omgw {NEW}"
        assert wait_healthy(gw1)["healthy"] is True
        # Host 2: the new release was installed and tried, then current went back with the old config.
        assert gw2.current == f"releases/{OLD}" and gw2.releases() == {OLD, NEW}
        assert gw2.version() == f"omgw {OLD}"
        assert f":{blocked_port}" not in (gw2.root / "etc/omgw/omgw.toml").read_text()
        assert wait_healthy(gw2)["healthy"] is True
        # Host 3: untouched: same release, same process, no new release copied.
        assert gw3.current == f"releases/{OLD}" and gw3.releases() == {OLD}
        assert gw3.pid() == pid3 and wait_healthy(gw3)["healthy"] is True
        print(f"\nrollout test: deploy {t_deploy:.0f} s, rollout {t_rollout:.0f} s, "
              f"total {time.monotonic() - t0:.0f} s")
    finally:
        close_masters(base)
        for h in hosts:
            kill_pidfile(h.root / "run" / "omgw.pid")
        for h in hosts:
            stop_proc(h.sshd)
        stop_proc(broker.proc)
        blocker.close()
