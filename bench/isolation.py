"""Isolation benchmark: does anything the health process does reach the value channel?

Run: ``.venv/bin/python bench/isolation.py [--seconds S] [--chargers N] [--rate HZ]``

One long-lived ``omgw value`` process proxies 50 chargers (own load-generator process) to a CSMS
responder (own process). Each charger sends ``DataTransfer`` CALLs carrying a per-charger sequence
number (``"data": "<seq>"``, message id = seq) at a fixed rate, open loop (20/s each, 1,000/s in
all, phases spread evenly); a separate receive task per connection times each CALLRESULT against
its own send. Per case we report round-trip p50/p99, *lost* (CALLs without a result within 5 s after
the window), *reordered* (results arriving with a lower id than one already seen on that charger,
plus CALLs the CSMS sees out of sequence) and CSMS-observed gaps. The value process's tap socket is
health's tap socket, so health receives the redacted frames throughout.

Cases, each with a fresh ``omgw health`` process beside the same value process:

(a) idle: 1 Hz sampling, 2 meters on one pty line, 1 sensor, default black-box flushing;
(b) max: ``sample_interval_s = 0.05`` (20 Hz, the config's lower bound), 16 meters on 4 socat pty lines, 4 sensors, ``flush_interval_s = 0.05``/``flush_bytes = 4096``,
    and a signed ``snapshot`` command published over MQTT every 10 s (``post_s = 2``, so the
    snapshot is written inside the case);
(c) max config, broker stopped for the whole case (telemetry spools);
(d) max config, health SIGKILLed and restarted every 5 s;
(e) max config plus a CPU hog (``python -c "while True: pass"``); both put in a child cgroup of
    the cgroup-v1 ``cpu`` controller when it can be created, else left at the same nice level;
(a') idle again at the end, to show drift.

As deployed, the processes run in the image's slices: where cgroup-v1 ``cpu`` groups can be made,
value gets ``cpu.shares`` 10240 (omgw-value.slice CPUWeight=1000) and health 512 with a 50 % CFS
quota (omgw-health.slice CPUWeight=50, CPUQuota=50%); the load generator and the CSMS, which stand
for machines outside the gateway, stay where they are. ``--no-slices`` measures without them.

p99 ratios are against (a) of the same run; targets (ratio <= 1.10, zero lost/reordered) are printed
as met or missed, never asserted (STYLE.md). Results: ``bench/out/isolation.json``. Everything
(processes, broker, socat, cgroup, temp dir) is torn down in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(REPO))
sys.path.insert(2, str(REPO / "tests" / "appliance" / "health"))

import _peers  # noqa: E402

TARGET_RATIO = 1.10
LOSS_TIMEOUT_S = 5.0
GW = "GW1"
MODELS = ["sdm630", "sdm120", "abb_b23", "em340"]
SENSORS = [("sht3x", 0x44), ("sht4x", 0x45), ("bme280", 0x76), ("bme280", 0x77)]
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")


# ---- peers (spawned processes) ------------------------------------------------------------------

class _SeqResponder:
    """CSMS: answers every CALL; checks per charger that ``data`` sequence numbers arrive in order."""

    def __init__(self) -> None:
        self.reset_counts()
        self.last: dict[str, int] = {}

    def reset_counts(self) -> None:
        self.calls = 0
        self.reordered = 0
        self.gaps = 0
        self.dup = 0

    async def handler(self, ws: Any) -> None:
        cp = ws.request.path.rsplit("/", 1)[-1]
        loads, send = json.loads, ws.send
        try:
            async for msg in ws:
                m = loads(msg)
                if type(m) is list and len(m) >= 4 and m[0] == 2:
                    self.calls += 1
                    try:
                        seq = int(m[3].get("data", -1))
                    except (AttributeError, ValueError):
                        seq = -1
                    last = self.last.get(cp)
                    if last is not None and seq >= 0:
                        if seq < last:
                            self.reordered += 1
                        elif seq == last:
                            self.dup += 1
                        elif seq > last + 1:
                            self.gaps += seq - last - 1
                    if seq > (last if last is not None else -1):
                        self.last[cp] = seq
                    await send(f'[3,{json.dumps(m[1])},{{"status":"Accepted"}}]')
        except _peers.ConnectionClosed:
            pass

    async def stats(self, reset: bool = False) -> dict[str, int]:
        out = {"calls": self.calls, "reordered": self.reordered, "gaps": self.gaps, "dup": self.dup,
               "chargers_seen": len(self.last)}
        if reset:
            self.reset_counts()
        return out


def csms_main(conn: Connection) -> None:
    _peers._child_setup()

    async def main() -> None:
        r = _SeqResponder()
        server = await _peers.serve(r.handler, "127.0.0.1", 0, subprotocols=[_peers.SUBPROTOCOL], compression=None,
                                    ping_interval=None, server_header=None, backlog=1024)
        conn.send(("ready", {"port": server.sockets[0].getsockname()[1]}))
        try:
            await _peers._command_loop(conn, r)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


class _OpenLoopLoad:
    """Chargers sending sequenced DataTransfer CALLs at a fixed rate, independent of replies."""

    def __init__(self) -> None:
        self.conns: list[Any] = []
        self.next_seq: list[int] = []
        self.last_reply: list[int] = []

    async def connect_many(self, urls: list[str]) -> dict[str, Any]:
        kw = dict(subprotocols=[_peers.SUBPROTOCOL], compression=None, ping_interval=None, open_timeout=60,
                  close_timeout=5, max_queue=None, user_agent_header=None)
        res = await asyncio.gather(*(_peers.connect(u, **kw) for u in urls), return_exceptions=True)
        errors = [f"{type(r).__name__}: {r}" for r in res if isinstance(r, BaseException)]
        self.conns = [r for r in res if not isinstance(r, BaseException)]
        self.next_seq = [0] * len(self.conns)
        self.last_reply = [-1] * len(self.conns)
        return {"connected": len(self.conns), "failed": len(errors), "errors": sorted(set(errors))[:3]}

    async def run(self, duration: float, warmup: float, rate: float) -> dict[str, Any]:
        clock = time.perf_counter_ns
        period = int(1e9 / rate)
        n = len(self.conns)
        start = clock() + 20_000_000
        window_start = start + int(warmup * 1e9)
        end = window_start + int(duration * 1e9)
        lat = array("q")
        lags = array("q")
        sent_in_window = 0
        pending: list[dict[int, tuple[int, bool]]] = [dict() for _ in range(n)]
        reordered = [0] * n
        errors: list[str] = []
        late_results = 0

        async def receiver(i: int, ws: Any) -> None:
            nonlocal late_results
            pend = pending[i]
            try:
                async for msg in ws:
                    t1 = clock()
                    m = json.loads(msg)
                    mid = int(m[1])
                    item = pend.pop(mid, None)
                    if item is None:
                        late_results += 1
                        continue
                    t0, counted = item
                    if mid < self.last_reply[i]:
                        reordered[i] += 1
                    else:
                        self.last_reply[i] = mid
                    if counted:
                        lat.append(t1 - t0)
            except _peers.ConnectionClosed as e:
                errors.append(f"charger {i} closed: {e}")

        async def sender(i: int, ws: Any) -> None:
            nonlocal sent_in_window
            k = 0
            pend = pending[i]
            phase = i * period // max(1, n)
            while True:
                due = start + phase + k * period
                if due >= end:
                    return
                now = clock()
                if due > now:
                    await asyncio.sleep((due - now) / 1e9)
                seq = self.next_seq[i]
                self.next_seq[i] = seq + 1
                t0 = clock()
                counted = due >= window_start
                pend[seq] = (t0, counted)
                if counted:
                    sent_in_window += 1
                    lags.append(t0 - due)
                try:
                    await ws.send(f'[2,"{seq}","DataTransfer",{{"vendorId":"bench","data":"{seq}"}}]')
                except _peers.ConnectionClosed as e:
                    errors.append(f"charger {i} send: {e}")
                    return
                k += 1

        gc.collect()
        recv_tasks = [asyncio.create_task(receiver(i, ws)) for i, ws in enumerate(self.conns)]
        await asyncio.gather(*(sender(i, ws) for i, ws in enumerate(self.conns)))
        # Give late results LOSS_TIMEOUT_S; whatever is still pending then is lost.
        deadline = time.monotonic() + LOSS_TIMEOUT_S
        while any(pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for t in recv_tasks:
            t.cancel()
        await asyncio.gather(*recv_tasks, return_exceptions=True)
        lost = sum(1 for p in pending for (_t, counted) in p.values() if counted)
        lost_warmup = sum(1 for p in pending for (_t, counted) in p.values() if not counted)
        for p in pending:
            p.clear()
        stats = _peers.percentiles_us(lat)
        lag = _peers.percentiles_us(lags)
        stats.update(sent=sent_in_window, lost=lost, lost_in_warmup=lost_warmup, reordered=sum(reordered),
                     late_results=late_results, errors=len(errors), error_samples=errors[:3],
                     send_lag_p99_us=lag.get("p99"), send_lag_max_us=lag.get("max"),
                     msgs_per_s=len(lat) / duration if duration else 0.0)
        return stats

    async def close_all(self) -> dict[str, Any]:
        await asyncio.gather(*(ws.close() for ws in self.conns), return_exceptions=True)
        codes = Counter(str(ws.close_code) for ws in self.conns)
        self.conns = []
        return dict(codes)


def loadgen_main(conn: Connection) -> None:
    _peers._child_setup()
    asyncio.run(_peers._command_loop(conn, _OpenLoopLoad()))


# ---- parent-side helpers ----------------------------------------------------------------------------

class Peer:
    def __init__(self, ctx: Any, target: Any, name: str):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child,), name=name, daemon=True)
        self.proc.start()
        child.close()
        self.name = name

    def ready(self, timeout: float = 30) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.name} did not start")
        tag, value = self.conn.recv()
        return value

    async def call(self, cmd: str, timeout: float = 300, **kw: Any) -> Any:
        self.conn.send((cmd, kw))
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0):  # poll without blocking the loop (the pty simulators live in it)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {cmd} timed out")
            await asyncio.sleep(0.05)
        tag, value = self.conn.recv()
        if tag != "ok":
            raise RuntimeError(f"{self.name}: {value}")
        return value

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.is_alive():
                self.conn.send(("exit", {}))
                self.conn.poll(5)
        self.proc.join(3)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def log_summary(path: Path, skip_bytes: int = 0) -> dict[str, Any]:
    """warning/error counts by event in a logfmt log from ``skip_bytes`` on, plus sample lines."""
    counts: Counter[str] = Counter()
    samples: list[str] = []
    try:
        with open(path, "rb") as f:
            f.seek(skip_bytes)
            text = f.read().decode(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        kv = dict(p.split("=", 1) for p in line.split(" ") if "=" in p)
        level, event = kv.get("level"), kv.get("event")
        if level is None and line.strip() and not line.startswith(" "):
            key = "non_logfmt"
        elif level in ("warning", "error", "critical"):
            key = f"{level}:{event}"
        else:
            continue
        if counts[key] < 2 and len(samples) < 8:
            samples.append(line[:240])
        counts[key] += 1
    return {"counts": dict(counts), "samples": samples}


def write_config(path: Path, *, tmp: Path, csms_port: int, value_port: int, broker: Any, pki: Any,
                 lines: list[str], meters_per_line: int, sensors: int, interval_s: float, max_mode: bool,
                 pub_b64: str, state_dir: Path) -> None:
    meters = []
    for li, port in enumerate(lines):
        for i in range(meters_per_line):
            model = MODELS[i % len(MODELS)]
            meters.append(f'[[health.meters]]\nname = "m{li}{i}-{model}"\nmodel = "{model}"\nport = "{port}"\n'
                          f"baud = 19200\nunit_id = {i + 1}\ntimeout_s = 0.2\nretries = 0\n")
    sens = [f'[[health.sensors]]\nname = "s{i}-{m}-{a:02x}"\nmodel = "{m}"\nbus = "sim"\naddress = 0x{a:02x}\n'
            for i, (m, a) in enumerate(SENSORS[:sensors])]
    bb = ("[blackbox]\nflush_interval_s = 0.05\nflush_bytes = 4096\npre_s = 10\npost_s = 2\n" if max_mode
          else "[blackbox]\n")
    text = (
        f'[gateway]\nid = "{GW}"\nstate_dir = "{state_dir}"\n\n'
        f'[value]\nlisten = "127.0.0.1:{value_port}"\ncsms_url = "ws://127.0.0.1:{csms_port}/ocpp"\n'
        f"security_profile = 0\nallow_insecure = true\nallow_unknown_charge_points = true\n"
        f'validation = "log"\ntap_socket = "{tmp / "tap.sock"}"\nstatus_socket = "{tmp / "value.sock"}"\n'
        f"ping_interval_s = 30\n\n"
        f'[health]\nurl = "mqtts://localhost:{broker.port}"\nca_file = "{pki.ca_file}"\n'
        f'client_cert = "{pki.client.cert}"\nclient_key = "{pki.client.key}"\n'
        f'tap_socket = "{tmp / "tap.sock"}"\nstatus_socket = "{tmp / "health.sock"}"\n'
        f"sample_interval_s = {interval_s}\n\n" + "\n".join(meters) + "\n" + "\n".join(sens) + "\n" + bb
        + f'\n[[commands.keys]]\nkid = "bench"\npublic_key = "{pub_b64}"\nallowed = ["snapshot", "ping"]\n'
    )
    path.write_text(text)


class CpuCgroup:
    """A child of the cgroup-v1 ``cpu`` hierarchy (if creatable), optionally with the CPU settings of
    one of the image's slices (image/systemd/omgw-*.slice)."""

    def __init__(self, name: str, shares: int | None = None, quota_pct: int | None = None) -> None:
        self.path: Path | None = None
        self.note = ""
        cand = CGROUP_CPU / f"omgw-isolation-{os.getpid()}-{name}"
        try:
            cand.mkdir()
            self.path = cand
            if shares is not None:  # systemd maps CPUWeight w to cpu.shares w * 1024 / 100
                (cand / "cpu.shares").write_text(str(shares))
            if quota_pct is not None:
                period = int((cand / "cpu.cfs_period_us").read_text())
                (cand / "cpu.cfs_quota_us").write_text(str(period * quota_pct // 100))
            self.note = f"cgroup v1 cpu {cand.name}: shares {shares}, quota {quota_pct}%"
        except OSError as e:
            self.note = f"no cgroup {name} ({e})"

    def add(self, pid: int) -> bool:
        if self.path is None:
            return False
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
            return f"cpu:/{self.path.name}" in Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False

    def remove(self) -> None:
        if self.path is None:
            return
        try:
            pids = (self.path / "cgroup.procs").read_text().split()
        except OSError:
            pids = []
        for p in pids:
            with contextlib.suppress(OSError):
                (CGROUP_CPU / "cgroup.procs").write_text(p)
        with contextlib.suppress(OSError):
            self.path.rmdir()


# ---- the bench -----------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.tmp = Path(tempfile.mkdtemp(prefix="omgw-iso-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.peers: list[Peer] = []
        self.sims: list[Any] = []
        self.broker: Any = None
        self.health: subprocess.Popen[bytes] | None = None
        self.value: subprocess.Popen[bytes] | None = None
        self.cgroup: CpuCgroup | None = None  # health (and the hog in case e)
        self.value_cgroup: CpuCgroup | None = None
        self.publisher: Any = None
        self.results: dict[str, Any] = {"cases": [], "notes": []}
        self.health_log = self.tmp / "health.log"

    # -- setup
    async def setup(self) -> None:
        from appliance.devpki import DevCA
        from appliance.health.keys_cli import keygen
        from conftest import HealthPki, Mosquitto
        from drivers.modbus.regmap import load_map
        from drivers.sim.modbus_meter import SimulatedBus, SimulatedMeter

        ctx = mp.get_context("spawn")
        self.csms = Peer(ctx, csms_main, "csms")
        self.peers.append(self.csms)
        self.loadgen = Peer(ctx, loadgen_main, "loadgen")
        self.peers.append(self.loadgen)
        csms_port = self.csms.ready()["port"]

        ca = DevCA(self.tmp / "ca")
        rogue = DevCA(self.tmp / "rogue", name="rogue CA")
        self.pki = HealthPki(ca, ca.issue("broker", hosts=("localhost", "127.0.0.1")), ca.issue(GW, client=True),
                             rogue, rogue.issue("GW1-rogue", client=True))
        (self.tmp / "broker").mkdir()
        self.broker = Mosquitto(self.tmp / "broker", self.pki)
        self.broker.start()
        self.key, pub = keygen(self.tmp / "bench", kid="bench", out=open(os.devnull, "w"))
        pub_b64 = pub.read_text().strip()

        for li in range(4):
            sim = SimulatedBus([SimulatedMeter(load_map(MODELS[i]), i + 1, seed=10 * li + i) for i in range(4)],
                               workdir=self.tmp / f"line{li}")
            await sim.start()
            self.sims.append(sim)
        ports = [s.port for s in self.sims]
        self.value_port = free_port()
        self.common = dict(tmp=self.tmp, csms_port=csms_port, value_port=self.value_port, broker=self.broker,
                           pki=self.pki, pub_b64=pub_b64)
        self.ports = ports
        self.cfg_idle = self.write_case_config("value", idle=True)

        self.value_log = self.tmp / "value.log"
        with open(self.value_log, "wb") as log:
            self.value = subprocess.Popen([sys.executable, "-m", "appliance.cli", "value", "-c", str(self.cfg_idle)],
                                          cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(self.value)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.value_port), timeout=0.5):
                    break
            except OSError:
                if self.value.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("omgw value did not start: " + self.value_log.read_text()[-2000:])
                await asyncio.sleep(0.1)
        urls = [f"ws://127.0.0.1:{self.value_port}/ocpp/CP{i:03d}" for i in range(self.a.chargers)]
        self.results["connect"] = await self.loadgen.call("connect_many", urls=urls)
        if self.a.slices:  # as deployed: omgw-value.slice CPUWeight=1000, omgw-health.slice 50 + CPUQuota=50%
            self.value_cgroup = CpuCgroup("value", shares=10240)
            self.cgroup = CpuCgroup("health", shares=512, quota_pct=50)
            placed = self.value_cgroup.add(self.value.pid)
            self.results["notes"] += [self.value_cgroup.note, self.cgroup.note,
                                      f"value process in its slice cgroup: {placed}"]
            self.results["slices"] = placed
        else:
            self.cgroup = CpuCgroup("health")
            self.results["notes"].append(self.cgroup.note + "; no slice settings (--no-slices)")
            self.results["slices"] = False
        self._start_publisher()

    def _start_publisher(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-operator", protocol=mqtt.MQTTv5)
        tls = ssl.create_default_context(cafile=self.pki.ca_file)
        tls.load_cert_chain(str(self.pki.client.cert), str(self.pki.client.key))
        c.tls_set_context(tls)
        c.reconnect_delay_set(1, 2)
        c.connect_async(self.broker.host, self.broker.port)
        c.loop_start()
        self.publisher = c

    def publish_snapshot(self, n: int) -> None:
        from appliance.health.keys_cli import sign

        env = sign(self.key, "bench", GW, "snapshot", json.dumps({"reason": f"bench-{n}"}), 60)
        self.publisher.publish(f"omgw/v1/{GW}/cmd/snapshot", env, qos=1)

    def write_case_config(self, tag: str, idle: bool) -> Path:
        """Same [value] section every time; [health] idle or max; a fresh state dir per case so that
        one case's spool backlog or black box does not spill into the next."""
        path = self.tmp / f"{tag}.toml"
        kw: dict[str, Any] = (dict(lines=self.ports[:1], meters_per_line=2, sensors=1, interval_s=1.0, max_mode=False)
                              if idle else
                              dict(lines=self.ports, meters_per_line=4, sensors=4, interval_s=0.05, max_mode=True))
        write_config(path, state_dir=self.tmp / f"state-{tag}", **kw, **self.common)
        return path

    # -- health process
    def start_health(self, cfg: Path) -> subprocess.Popen[bytes]:
        with open(self.health_log, "ab") as log:
            p = subprocess.Popen([sys.executable, "-m", "appliance.cli", "health", "-c", str(cfg)], cwd=REPO,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
        self.procs.append(p)
        if self.a.slices and self.cgroup is not None:
            self.cgroup.add(p.pid)
        return p

    def stop_health(self, sig: int = signal.SIGTERM) -> None:
        p, self.health = self.health, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    async def case(self, name: str, label: str) -> dict[str, Any]:
        print(f" case {name}: {label} ...", file=sys.stderr, flush=True)
        self.round_tag = getattr(self, "round_tag", 0) + 1
        tag = f"{name}-{self.round_tag}"
        cfg = self.write_case_config(tag, idle=name.startswith("a"))
        state = self.tmp / f"state-{tag}"
        log_off = self.health_log.stat().st_size if self.health_log.exists() else 0
        vlog_off = self.value_log.stat().st_size
        self.health = self.start_health(cfg)
        row: dict[str, Any] = {"case": name, "label": label}
        hog: subprocess.Popen[bytes] | None = None
        restarts = 0
        snapshots = 0
        await asyncio.sleep(self.a.settle)  # imports, broker connect, first samples
        if self.health.poll() is not None:
            row["health_exit"] = self.health.returncode
        if name == "c":
            self.broker.stop()
        if name == "e":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            self.procs.append(hog)
            in_cg = self.cgroup is not None and self.cgroup.add(self.health.pid) and self.cgroup.add(hog.pid)
            row["hog_placement"] = ("same cgroup as health: " + str(self.cgroup.path)) if in_cg else \
                "same nice level as health (no cgroup)"
            row["nice"] = {"health": os.getpriority(os.PRIO_PROCESS, self.health.pid),
                           "hog": os.getpriority(os.PRIO_PROCESS, hog.pid)}
        await self.csms.call("stats", reset=True)
        pids = {"value": self.value.pid, "csms": self.csms.proc.pid, "loadgen": self.loadgen.proc.pid}
        cpu0 = {k: proc_cpu_s(p) for k, p in pids.items()}
        hcpu0 = proc_cpu_s(self.health.pid) or 0.0
        t0 = time.monotonic()
        self.loadgen.conn.send(("run", {"duration": self.a.seconds, "warmup": self.a.warmup, "rate": self.a.rate}))
        next_kill = t0 + 5.0
        next_snap = t0 + self.a.warmup + 1.0
        health_cpu = 0.0
        while not self.loadgen.conn.poll(0):
            now = time.monotonic()
            if name == "d" and now >= next_kill and now < t0 + self.a.warmup + self.a.seconds:
                health_cpu += (proc_cpu_s(self.health.pid) or hcpu0) - hcpu0
                self.stop_health(signal.SIGKILL)
                self.health = self.start_health(cfg)
                hcpu0 = 0.0
                restarts += 1
                next_kill += 5.0
            if name == "b" and now >= next_snap:
                self.publish_snapshot(snapshots)
                snapshots += 1
                next_snap += 10.0
            if now > t0 + self.a.warmup + self.a.seconds + LOSS_TIMEOUT_S + 60:
                raise TimeoutError("load generator did not finish")
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - t0
        tag, load = self.loadgen.conn.recv()
        if tag != "ok":
            raise RuntimeError(f"loadgen: {load}")
        health_cpu += (proc_cpu_s(self.health.pid) or hcpu0) - hcpu0 if self.health else 0.0
        row["cpu_pct"] = {k: 100 * ((proc_cpu_s(p) or 0) - (cpu0[k] or 0)) / elapsed for k, p in pids.items()}
        row["cpu_pct"]["health"] = 100 * health_cpu / elapsed
        if hog is not None:
            row["cpu_pct"]["hog"] = 100 * (proc_cpu_s(hog.pid) or 0) / elapsed
        row["load"] = load
        row["csms"] = await self.csms.call("stats", reset=True)
        row["restarts"] = restarts
        row["snapshots_requested"] = snapshots
        if hog is not None:
            hog.kill()
            hog.wait(5)
        if name == "c":
            self.broker.start()
            await asyncio.sleep(2)
        row["health_alive_at_end"] = self.health is not None and self.health.poll() is None
        self.stop_health()
        row["health_log"] = log_summary(self.health_log, log_off)
        row["value_log"] = log_summary(self.value_log, vlog_off)
        snaps = state / "blackbox" / "snapshots"
        row["snapshot_files"] = len(list(snaps.iterdir())) if snaps.exists() else 0
        spool = state / "spool"
        row["spool_bytes"] = sum(f.stat().st_size for f in spool.rglob("*") if f.is_file()) if spool.exists() else 0
        return row

    async def run(self) -> None:
        self.results["env"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                               "loadavg_start": os.getloadavg(), "chargers": self.a.chargers, "rate_hz": self.a.rate,
                               "seconds": self.a.seconds, "rounds": self.a.rounds, "warmup_s": self.a.warmup, "settle_s": self.a.settle}
        cases = [("a", "health idle (1 Hz, 2 meters)"),
                 ("b", "health max (20 Hz, 16 meters, flush 50 ms, snapshot/10 s)"),
                 ("c", "broker down, spool filling (max cfg)"),
                 ("d", "health SIGKILL + restart every 5 s (max cfg)"),
                 ("e", "CPU hog beside health (max cfg)"),
                 ("a2", "health idle again (drift)")]
        labels = dict(cases)
        middle = [n for n, _ in cases[1:-1]]
        for r in range(self.a.rounds):
            order = ["a"] + (middle if r % 2 == 0 else middle[::-1]) + ["a2"]
            for name in order:
                print(f"round {r + 1}/{self.a.rounds}", end="", file=sys.stderr)
                try:
                    row = await self.case(name, labels[name])
                except (RuntimeError, TimeoutError, OSError) as e:
                    row = {"case": name, "label": labels[name], "error": str(e)}
                    self.results["notes"].append(f"round {r + 1} case {name}: {e}")
                    self.stop_health()
                    if name == "c" and self.broker.proc is not None and self.broker.proc.poll() is not None:
                        self.broker.start()
                row["round"] = r
                self.results["cases"].append(row)
        self.results["env"]["loadavg_end"] = os.getloadavg()
        self.results["value_alive"] = self.value is not None and self.value.poll() is None

    async def teardown(self) -> None:
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                self.publisher.disconnect()
                self.publisher.loop_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.loadgen.call("close_all", timeout=10), 15)
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for peer in self.peers:
            peer.stop()
        for sim in self.sims:
            with contextlib.suppress(Exception):
                await sim.stop()
        if self.broker is not None:
            self.broker.kill()
        for cg in (self.cgroup, self.value_cgroup):
            if cg is not None:
                cg.remove()
        out = BENCH_DIR / "out"
        out.mkdir(exist_ok=True)
        for src, dst in ((self.health_log, "isolation-health.log"), (self.value_log, "isolation-value.log")):
            with contextlib.suppress(OSError):
                shutil.copy(src, out / dst)
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- report --------------------------------------------------------------------------------------------

def _ratio(row: dict[str, Any], rows: list[dict[str, Any]]) -> float | None:
    base = next((c for c in rows if c["case"] == "a" and c.get("round") == row.get("round") and "load" in c), None)
    if base is None or "load" not in row or not base["load"].get("p99") or not row["load"].get("p99"):
        return None
    return float(row["load"]["p99"] / base["load"]["p99"])


def _bad(row: dict[str, Any]) -> int:
    ld, cs = row["load"], row["csms"]
    return int(ld["lost"] + ld["reordered"] + cs["reordered"] + cs["gaps"])


def report(res: dict[str, Any]) -> None:
    env = res["env"]
    rows = res["cases"]
    print()
    print(f"omgw isolation benchmark: value-channel round trip with health under stress "
          f"(python {env['python']}, {env['cpus']} cpus, load avg {env['loadavg_start'][0]:.2f} at start, "
          f"{env.get('loadavg_end', [0])[0]:.2f} at end)")
    print(f"{env['chargers']} chargers x {env['rate_hz']:g} DataTransfer/s open loop, {env['seconds']:g} s measured "
          f"after {env['warmup_s']:g} s warm-up per case, {env['rounds']} round(s); loss timeout {LOSS_TIMEOUT_S:g} s;"
          f" one value process throughout, fresh health process and state dir per case")
    print()
    print("Per run:")
    hdr = (f"{'rd':>2} {'case':4} {'sent':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'x p99':>6} {'lost':>5} "
           f"{'reord':>5} {'csms r/g':>8} {'lag99':>6} {'val%':>5} {'hlt%':>5} {'hog%':>5}")
    print(hdr)
    for c in rows:
        if "load" not in c:
            print(f"{c.get('round', 0) + 1:>2} {c['case']:4} ERROR {c.get('error', '')[:90]}")
            continue
        ld, cs, cpu = c["load"], c["csms"], c["cpu_pct"]
        ratio = _ratio(c, rows)
        print(f"{c['round'] + 1:>2} {c['case']:4} {ld['sent']:>6} {ld['p50'] / 1000:>7.2f} {ld['p99'] / 1000:>7.2f} "
              f"{ld['max'] / 1000:>7.1f} {ratio if ratio is not None else float('nan'):>6.2f} {ld['lost']:>5} "
              f"{ld['reordered']:>5} {cs['reordered']:>4}/{cs['gaps']:<3} {(ld['send_lag_p99_us'] or 0) / 1000:>6.2f} "
              f"{cpu['value']:>5.0f} {cpu['health']:>5.0f} {cpu.get('hog', 0):>5.0f}")
    print()
    print("Summary (medians over rounds; x p99 = median of per-round p99 / p99 of (a) in the same round):")
    print(f"{'case':4} {'':56} {'p50 ms':>7} {'p99 ms':>7} {'x p99':>6} {'min-max x':>10} {'lost+reord':>10}  target")
    summary = []
    seen: list[str] = []
    for c in rows:
        if c["case"] not in seen:
            seen.append(c["case"])
    for name in seen:
        ok = [c for c in rows if c["case"] == name and "load" in c]
        label = next(c["label"] for c in rows if c["case"] == name)
        if not ok:
            print(f"{name:4} {label:56} no successful run")
            continue
        med = statistics.median
        ratios = [r for r in (_ratio(c, rows) for c in ok) if r is not None]
        entry = {"case": name, "label": label, "runs": len(ok),
                 "p50_ms": med(c["load"]["p50"] for c in ok) / 1000,
                 "p99_ms": med(c["load"]["p99"] for c in ok) / 1000,
                 "ratio_p99": med(ratios) if ratios else None,
                 "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
                 "lost": sum(c["load"]["lost"] for c in ok), "reordered": sum(c["load"]["reordered"] for c in ok),
                 "csms_reordered": sum(c["csms"]["reordered"] for c in ok), "csms_gaps": sum(c["csms"]["gaps"] for c in ok)}
        bad = sum(_bad(c) for c in ok)
        summary.append(entry)
        rng = f"{entry['ratio_min']:.2f}-{entry['ratio_max']:.2f}" if ratios else "-"
        if name == "a":
            verdict = "baseline"
        else:
            met_r = entry["ratio_p99"] is not None and entry["ratio_p99"] <= TARGET_RATIO
            verdict = (f"ratio {'met' if met_r else 'MISSED'}, loss/order {'met' if bad == 0 else 'MISSED'}"
                       + (" (drift check: same config as a)" if name == "a2" else ""))
        print(f"{name:4} {label:56} {entry['p50_ms']:>7.2f} {entry['p99_ms']:>7.2f} "
              f"{entry['ratio_p99'] if entry['ratio_p99'] is not None else float('nan'):>6.2f} {rng:>10} "
              f"{bad:>10}  {verdict}")
    res["summary"] = summary
    print(f"(targets: x p99 <= {TARGET_RATIO:.2f}, zero lost or reordered; lost = CALLs without a result within"
          f" {LOSS_TIMEOUT_S:g} s;\n reord = results out of order per charger; csms r/g = CALLs the CSMS saw out of"
          " order / missing;\n lag99 = the load generator's own send lag p99 in ms (its noise floor);"
          "\n val%/hlt%/hog% = CPU of value, health (summed over restarts), hog in % of one core)")
    print()
    print("Per-run notes (warning+ log events during the case):")
    for c in rows:
        extra = []
        if c.get("hog_placement"):
            extra.append(f"hog in {c['hog_placement']}, nice {c.get('nice')}")
        if c.get("restarts"):
            extra.append(f"health SIGKILLs: {c['restarts']}")
        if c.get("snapshots_requested"):
            extra.append(f"snapshot cmds {c['snapshots_requested']}, archived {c['snapshot_files']}")
        if c["case"] == "c" and "spool_bytes" in c:
            extra.append(f"spool {c['spool_bytes'] / 1e6:.1f} MB")
        for key in ("health_log", "value_log"):
            cnt = (c.get(key) or {}).get("counts")
            if cnt:
                extra.append(f"{key.split('_')[0]} {cnt}")
        if extra:
            print(f"  {c.get('round', 0) + 1} {c['case']}: " + "; ".join(extra))
    if not res.get("value_alive", True):
        print("value process died during the run!")
    for n in res.get("notes", []):
        print(f"  note: {n.splitlines()[0]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window per case (default 20)")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--settle", type=float, default=4.0, help="after starting health, before load (default 4)")
    ap.add_argument("--chargers", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="repeat the case sequence (middle order reversed "
                                                           "every other round; default 3)")
    ap.add_argument("--rate", type=float, default=20.0, help="CALLs per second per charger (default 20)")
    ap.add_argument("--no-slices", dest="slices", action="store_false",
                    help="do not mirror the image's slices (value CPUWeight 1000; health CPUWeight 50, CPUQuota "
                         "50%%) with cgroup-v1 cpu groups; by default they are mirrored where cgroups can be made")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out" / "isolation.json")
    args = ap.parse_args()
    _peers.raise_nofile()
    bench = Bench(args)

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)

    async def go() -> None:
        try:
            await bench.setup()
            await bench.run()
        finally:
            await bench.teardown()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    report(bench.results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
