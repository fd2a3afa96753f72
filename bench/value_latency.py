"""Value-channel benchmark: what does putting omgw between a charger and its CSMS cost?

Run: ``.venv/bin/python bench/value_latency.py [--quick] [--tap-reader]``

Every party has its own process: the CSMS responder and the charger load generator (spawned from
``bench/_peers.py``), the proxy under test (``omgw value -c ...``) and, when installed, nginx as the
WebSocket reverse proxy an operator would otherwise use. Two parts:

1. Latency: one connection, 5,000 sequential Heartbeats after a 500 warm-up, direct to the CSMS, through
   omgw (ws upstream; validation "log" as configured, plus "off" to show what validation costs), through
   nginx, through a blind uvloop byte pipe (the floor: what the extra process hop costs a Python relay
   that parses nothing), and with TLS upstream (omgw profile 2 against direct wss://). The machine is noisy, so the
   variants run interleaved in rounds (order rotated each round) and the figures are medians over
   rounds; "added" and "ratio" are computed per round against the direct run of the same round, then
   the median is taken.
2. Concurrency: 200 and 1,000 chargers (one connection and cp id each, connected 50 at a time) in a
   closed Heartbeat loop; messages/s against the direct baseline of the same round, round trips under
   load, the proxy's RSS (VmRSS once all are connected and at the end, VmHWM for the peak) and the CPU
   of proxy, load generator and CSMS. One fresh proxy process per run. Profile 0 (ws upstream) and
   profile 2 (wss upstream, Basic auth), nginx for comparison; two rounds in full mode.

Targets are printed as met or missed, never asserted (STYLE.md, benchmarks). The table goes to stdout,
the full results to ``bench/out/value_latency.json``. Without ``--tap-reader`` nothing binds the tap
socket, so the proxy drops tap records before encoding them (the cheapest case); with it a drain
process stands in for the health process and the proxy pays for redaction and encoding too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(REPO))

import _peers  # noqa: E402

NGINX = Path("/usr/sbin/nginx")
TARGET_ADDED_P50_US = 50.0
TARGET_ADDED_P99_US = 200.0
TARGET_RSS_MB = 80.0
CONNECT_BATCH = 50


# ---- small helpers -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, alive: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy (not idle, not iowait) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """CPU use of named processes over a window, and of everything else on the machine ("other").

    The machine is shared: "other" (tests, builds of colleagues) is what explains a slow round.
    """

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.t0 = time.monotonic()
        self.busy0 = machine_busy_s()
        self.cpu0 = {k: proc_cpu_s(p) for k, p in pids.items()}

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.t0
        busy = machine_busy_s() - self.busy0
        out: dict[str, float] = {}
        ours = 0.0
        for k, p in self.pids.items():
            c0, c1 = self.cpu0[k], proc_cpu_s(p)
            if c0 is not None and c1 is not None:
                out[f"{k}_cpu_pct"] = 100 * (c1 - c0) / elapsed
                ours += c1 - c0
        out["other_cpu_pct"] = max(0.0, 100 * (busy - ours) / elapsed)
        return out


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


def toml_str(s: str | Path) -> str:
    return json.dumps(str(s))


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def log_summary(path: Path) -> dict[str, Any]:
    """Counts of warning/error/critical events in a logfmt proxy log, plus a few sample lines."""
    counts: Counter[str] = Counter()
    samples: list[str] = []
    other = 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        level = event = None
        for part in line.split(" "):
            if part.startswith("level="):
                level = part[6:]
            elif part.startswith("event="):
                event = part[6:]
        if level is None:
            if line.strip():
                other += 1  # tracebacks and other non-logfmt output
                if len(samples) < 12:
                    samples.append(line[:300])
            continue
        if level in ("warning", "error", "critical"):
            key = f"{level}:{event}"
            if counts[key] < 2 and len(samples) < 12:
                samples.append(line[:300])
            counts[key] += 1
    return {"counts": dict(counts), "non_logfmt_lines": other, "samples": samples}


# ---- peers -----------------------------------------------------------------------------------------

# --pin: the proxy (omgw or nginx) on its own core, the load generator and the CSMS on the other,
# as on a gateway whose value service has a core to itself (CPUAffinity) and whose peers are other
# machines. Empty: the scheduler places everything.
PINNING: dict[str, set[int]] = {}


def _pin_proxy() -> None:
    os.sched_setaffinity(0, PINNING["proxy"])


class Peer:
    """A spawned child from _peers.py, driven by (command, kwargs) over a pipe."""

    def __init__(self, ctx: Any, target: Any, name: str, *args: Any):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.proc.start()
        if PINNING:
            os.sched_setaffinity(self.proc.pid, PINNING["peers"])
        child.close()
        self.name = name

    def expect_ready(self, timeout: float = 30) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.name} did not start within {timeout}s")
        try:
            tag, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.name} exited during start-up (exit code {self.proc.exitcode})") from None
        if tag != "ready":
            raise RuntimeError(f"{self.name}: {value}")
        return value

    def send(self, cmd: str, **kwargs: Any) -> None:
        self.conn.send((cmd, kwargs))

    def result(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.name}: no answer within {timeout}s")
        tag, value = self.conn.recv()
        if tag != "ok":
            raise RuntimeError(f"{self.name}: {value}")
        return value

    def call(self, cmd: str, timeout: float = 300, **kwargs: Any) -> Any:
        self.send(cmd, **kwargs)
        return self.result(timeout)

    def stop(self) -> Any:
        result = None
        if self.proc.is_alive():
            try:
                result = self.call("exit", timeout=10)
            except (OSError, EOFError, TimeoutError, RuntimeError):
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()
        return result


# ---- omgw and nginx ---------------------------------------------------------------------------

def omgw_command(config: Path) -> list[str]:
    script = Path(sys.executable).parent / "omgw"
    if script.exists():
        return [str(script), "value", "-c", str(config)]
    return [sys.executable, "-m", "appliance.cli", "value", "-c", str(config)]


@dataclass
class Proxy:
    """One ``omgw value`` process with its own config, log and status socket."""

    name: str
    tmp: Path
    profile: int
    csms_url: str
    charge_points: list[str] = field(default_factory=list)
    ca_file: Path | None = None
    password_file: Path | None = None
    tap_socket: Path | None = None
    validation: str = "log"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    exit_code: int | None = None
    stop_seconds: float | None = None

    def write_config(self) -> Path:
        d = self.tmp / self.name
        d.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        lines = [
            "[gateway]",
            'id = "gw-bench"',
            f"state_dir = {toml_str(self.tmp / 'state')}",
            "[value]",
            f'listen = "127.0.0.1:{self.port}"',
            f"csms_url = {toml_str(self.csms_url)}",
            f"security_profile = {self.profile}",
            f"validation = {toml_str(self.validation)}",
            f"tap_socket = {toml_str(self.tap_socket or (d / 'tap.sock'))}",
            f"status_socket = {toml_str(d / 'value.sock')}",
            "ping_interval_s = 30",
            "max_frame_bytes = 65536",
        ]
        if self.profile == 0:
            lines += ["allow_insecure = true", "allow_unknown_charge_points = true"]
        else:
            lines.append(f"ca_file = {toml_str(self.ca_file or '')}")
            for cp in self.charge_points:
                lines += ["[[value.charge_points]]", f"id = {toml_str(cp)}",
                          f"password_file = {toml_str(self.password_file or '')}"]
        path = d / "omgw.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 30) -> None:
        config = self.write_config()
        self.log_path = self.tmp / self.name / "omgw.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(omgw_command(config), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_pin_proxy if PINNING else None)
        if not wait_port(self.port, lambda: self.proc is not None and self.proc.poll() is None, timeout):
            rc = self.proc.poll()
            self.stop()
            tail = log_tail(self.log_path)
            last = tail.splitlines()[-1] if tail.strip() else "(empty log)"
            raise RuntimeError(f"omgw ({self.name}) not ready (exit code {rc}): {last}\nlog tail:\n{tail}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, cp_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp/{cp_id}"

    def stop(self) -> None:
        if self.proc is None or self.exit_code is not None:
            return
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.exit_code = self.proc.returncode
        self.stop_seconds = time.monotonic() - t0


class Nginx:
    """nginx 1 worker as a plain WebSocket reverse proxy to the CSMS, everything under the tmp dir."""

    def __init__(self, tmp: Path, csms_port: int):
        self.dir = tmp / "nginx"
        for sub in ("logs", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        t = self.dir / "tmp"
        conf = f"""
worker_processes 1;
worker_rlimit_nofile 8192;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://127.0.0.1:{csms_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(conf)
        self.version = subprocess.run([str(NGINX), "-v"], capture_output=True, text=True).stderr.strip()
        self.proc = subprocess.Popen(
            [str(NGINX), "-c", str(self.conf), "-p", str(self.dir) + "/", "-e", str(self.dir / "logs/error.log")],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "logs/stderr.log", "wb"),
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_pin_proxy if PINNING else None)
        if not wait_port(self.port, lambda: self.proc.poll() is None, 15):
            rc = self.proc.poll()
            self.stop()
            raise RuntimeError(f"nginx not ready (exit code {rc}): {log_tail(self.dir / 'logs/error.log')}")

    def worker_pid(self) -> int | None:
        kids = children_of(self.proc.pid)
        return kids[0] if kids else None

    def url(self, cp_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp/{cp_id}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ---- the benchmark --------------------------------------------------------------------------------

@dataclass
class Settings:
    quick: bool
    tap_reader: bool
    heartbeats: int
    warmup: int
    rounds: int
    load_s: float
    load_warmup_s: float
    sizes: tuple[int, ...]
    nginx_load: bool
    load_rounds: int


class Bench:
    def __init__(self, settings: Settings):
        self.s = settings
        self.tmp = Path(tempfile.mkdtemp(prefix="omgw-bench-"))
        self.ctx = mp.get_context("spawn")
        self.peers: list[Peer] = []
        self.proxies: list[Proxy] = []
        self.nginx: Nginx | None = None
        self.notes: list[str] = []
        self.results: dict[str, Any] = {}

    # -- setup / teardown --

    def setup(self) -> None:
        from appliance.devpki import DevCA

        _peers.raise_nofile()
        ca = DevCA(self.tmp / "pki")
        leaf = ca.issue("csms", hosts=("localhost", "127.0.0.1"))
        self.ca_file = ca.cert_file
        self.password_file = self.tmp / "pw"
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("bench-password-0123456789\n")

        self.csms = Peer(self.ctx, _peers.csms_main, "csms", str(leaf.cert), str(leaf.key))
        self.peers.append(self.csms)
        ports = self.csms.expect_ready()
        self.csms_ws, self.csms_wss = ports["ws_port"], ports["wss_port"]
        self.loadgen = Peer(self.ctx, _peers.loadgen_main, "loadgen")
        self.peers.append(self.loadgen)
        self.tap_socket: Path | None = None
        if self.s.tap_reader:
            self.tap_socket = self.tmp / "tap.sock"
            self.tap = Peer(self.ctx, _peers.tap_drain_main, "tap-drain", str(self.tap_socket))
            self.peers.append(self.tap)
            self.tap.expect_ready()
        if NGINX.exists():
            try:
                self.nginx = Nginx(self.tmp, self.csms_ws)
            except (RuntimeError, OSError) as e:
                self.notes.append(f"nginx rows skipped: {e}")
        else:
            self.notes.append(f"nginx rows skipped: {NGINX} not installed (apt-get install nginx)")

    def teardown(self) -> None:
        for p in self.proxies:
            try:
                p.stop()
            except Exception as e:  # keep tearing the rest down
                print(f"warning: stopping {p.name}: {e}", file=sys.stderr)
        if self.nginx is not None:
            self.nginx.stop()
        for peer in reversed(self.peers):
            peer.stop()
        if os.environ.get("OMGW_BENCH_KEEP"):
            print(f"(kept {self.tmp})", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def peer_pids(self) -> dict[str, int]:
        pids = {p.name: p.proc.pid for p in self.peers if p.proc.pid is not None}
        if self.nginx is not None and "nginx" not in pids:
            worker = self.nginx.worker_pid()
            if worker is not None:
                pids["nginx"] = worker
        return pids

    def new_proxy(self, name: str, profile: int, charge_points: tuple[str, ...] | list[str] = (), validation: str = "log") -> Proxy:
        url = (f"ws://127.0.0.1:{self.csms_ws}/ocpp" if profile == 0
               else f"wss://127.0.0.1:{self.csms_wss}/ocpp")
        proxy = Proxy(name, self.tmp, profile, url, list(charge_points), self.ca_file, self.password_file,
                      self.tap_socket, validation)
        self.proxies.append(proxy)
        proxy.start()
        return proxy

    def finish_proxy(self, proxy: Proxy) -> dict[str, Any]:
        proxy.stop()
        info = {"exit_code": proxy.exit_code, "stop_seconds": round(proxy.stop_seconds or 0, 2)}
        if proxy.log_path is not None:
            info["log"] = log_summary(proxy.log_path)
            if proxy.exit_code != 0:
                info["log_tail"] = log_tail(proxy.log_path, 30)
        return info

    # -- part 1: sequential latency --

    def latency(self) -> None:
        s = self.s
        variants: dict[str, dict[str, Any]] = {
            "direct": {"url": lambda cp: f"ws://127.0.0.1:{self.csms_ws}/ocpp/{cp}", "ca": None},
        }
        lat_ids = [f"LAT{r}" for r in range(s.rounds)]
        proxies: dict[str, Proxy] = {}
        unavailable: dict[str, str] = {}
        for key, profile, validation in (("omgw", 0, "log"), ("omgw_off", 0, "off"), ("omgw_tls", 2, "log")):
            try:
                proxies[key] = self.new_proxy(f"latency-{key}", profile, lat_ids if profile else [], validation)
            except RuntimeError as e:
                unavailable[key] = str(e)
                self.notes.append(f"{key} latency rows skipped: {e}")
        # The floor: a Python relay that parses nothing (see _peers.byte_pipe_main).
        pipe = Peer(self.ctx, _peers.byte_pipe_main, "byte-pipe", self.csms_ws)
        self.peers.append(pipe)
        if PINNING:  # it stands where a proxy stands
            os.sched_setaffinity(pipe.proc.pid, PINNING["proxy"])
        pipe_port = pipe.expect_ready()["port"]
        variants["pipe"] = {"url": lambda cp: f"ws://127.0.0.1:{pipe_port}/ocpp/{cp}", "ca": None}
        if "omgw" in proxies:
            variants["omgw"] = {"url": proxies["omgw"].url, "ca": None}
        if "omgw_off" in proxies:
            variants["omgw_off"] = {"url": proxies["omgw_off"].url, "ca": None}
        if self.nginx is not None:
            variants["nginx"] = {"url": self.nginx.url, "ca": None}
        variants["direct_wss"] = {"url": lambda cp: f"wss://127.0.0.1:{self.csms_wss}/ocpp/{cp}",
                                  "ca": str(self.ca_file)}
        if "omgw_tls" in proxies:
            variants["omgw_tls"] = {"url": proxies["omgw_tls"].url, "ca": None}

        names = list(variants)
        per_round: list[dict[str, Any]] = []
        for r in range(s.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            row: dict[str, Any] = {"order": order}
            for name in order:
                v = variants[name]
                watch = CpuWatch(self.peer_pids() | {k: p.pid for k, p in proxies.items()})
                try:
                    row[name] = self.loadgen.call("sequential", timeout=600, url=v["url"](lat_ids[r]),
                                                  n=s.heartbeats, warmup=s.warmup, ca_file=v["ca"])
                    row[name].update(watch.stop())
                except (RuntimeError, TimeoutError) as e:
                    row[name] = {"error": str(e)}
                    self.notes.append(f"latency round {r + 1} {name}: {e}")
            per_round.append(row)
            done = [n for n in names if "p50" in row[n]]
            other = max((row[n]["other_cpu_pct"] for n in done), default=0.0)
            print(f"  latency round {r + 1}/{s.rounds}: "
                  + ", ".join(f"{n} p50 {row[n]['p50']:.0f} us" for n in done)
                  + f" (other processes: up to {other:.0f}% of a core)", file=sys.stderr)

        summary: dict[str, Any] = {}
        baseline_of = {"omgw": "direct", "omgw_off": "direct", "nginx": "direct", "pipe": "direct",
                       "omgw_tls": "direct_wss"}
        for name in names:
            ok = [row[name] for row in per_round if "p50" in row[name]]
            if not ok:
                continue
            entry = {k: statistics.median(x[k] for x in ok) for k in ("p50", "p99", "mean")}
            entry["rounds"] = len(ok)
            base = baseline_of.get(name)
            if base:
                pairs = [(row[name], row[base]) for row in per_round if "p50" in row[name] and "p50" in row[base]]
                if pairs:
                    entry["baseline"] = base
                    for k in ("p50", "p99", "mean"):
                        entry[f"added_{k}"] = statistics.median(a[k] - b[k] for a, b in pairs)
                        entry[f"ratio_{k}"] = statistics.median(a[k] / b[k] for a, b in pairs)
            summary[name] = entry
        for key, proxy in proxies.items():
            summary.setdefault(key, {})["rss_mb_after"] = mb(proc_status_kb(proxy.pid, "VmRSS"))
            summary[key]["proxy"] = self.finish_proxy(proxy)
        for key, why in unavailable.items():
            summary[key] = {"unavailable": why}
        self.results["latency"] = {"heartbeats": s.heartbeats, "warmup": s.warmup, "rounds": s.rounds,
                                   "summary": summary, "per_round": per_round}

    # -- part 2: concurrency --

    def load_test(self, n: int, path: str) -> dict[str, Any]:
        cp_ids = [f"CP{i:05d}" for i in range(n)]
        proxy: Proxy | None = None
        pid: int | None = None
        ca = None
        if path == "direct":
            urls = [f"ws://127.0.0.1:{self.csms_ws}/ocpp/{cp}" for cp in cp_ids]
        elif path == "direct_wss":
            urls = [f"wss://127.0.0.1:{self.csms_wss}/ocpp/{cp}" for cp in cp_ids]
            ca = str(self.ca_file)
        elif path == "nginx":
            assert self.nginx is not None
            urls = [self.nginx.url(cp) for cp in cp_ids]
            pid = self.nginx.worker_pid()
        else:
            profile = 2 if path == "omgw_tls" else 0
            try:
                proxy = self.new_proxy(f"load-{path}-{n}", profile, cp_ids if profile else [])
            except RuntimeError as e:
                return {"n": n, "path": path, "unavailable": str(e)}
            urls = [proxy.url(cp) for cp in cp_ids]
            pid = proxy.pid
        out: dict[str, Any] = {"n": n, "path": path}
        try:
            if pid is not None:
                out["rss_mb_idle"] = mb(proc_status_kb(pid, "VmRSS"))
            out["connect"] = self.loadgen.call("connect_many", timeout=600, urls=urls, batch=CONNECT_BATCH,
                                               ca_file=ca)
            if pid is not None:
                time.sleep(0.5)
                out["rss_mb_connected"] = mb(proc_status_kb(pid, "VmRSS"))
            pids = {k: v for k, v in self.peer_pids().items() if v != pid}
            if pid is not None:
                pids["proxy"] = pid
            watch = CpuWatch(pids)
            self.loadgen.send("run", duration=self.s.load_s, warmup=self.s.load_warmup_s)
            rss_max = 0
            deadline = time.monotonic() + self.s.load_s + self.s.load_warmup_s + 120
            while not self.loadgen.conn.poll(0.5):
                if pid is not None:
                    rss_max = max(rss_max, proc_status_kb(pid, "VmRSS") or 0)
                if time.monotonic() > deadline:
                    raise TimeoutError("load run did not finish")
            out["load"] = self.loadgen.result(1)
            out.update(watch.stop())
            if pid is not None:
                out["rss_mb_end"] = mb(proc_status_kb(pid, "VmRSS"))
                out["rss_mb_sampled_max"] = mb(rss_max)
                out["rss_mb_peak_hwm"] = mb(proc_status_kb(pid, "VmHWM"))
        finally:
            try:
                out["close"] = self.loadgen.call("close_all", timeout=120)
            except (RuntimeError, TimeoutError) as e:
                out["close"] = {"error": str(e)}
            if proxy is not None:
                time.sleep(0.3)
                out["proxy"] = self.finish_proxy(proxy)
        return out

    def concurrency(self) -> None:
        paths = ["direct", "omgw"]
        if self.nginx is not None and self.s.nginx_load:
            paths.append("nginx")
        paths += ["direct_wss", "omgw_tls"]
        rows = []
        for n in self.s.sizes:
            for r in range(self.s.load_rounds):
                order = paths if r % 2 == 0 else paths[::-1]
                for path in order:
                    print(f"  load: {n} chargers, round {r + 1}/{self.s.load_rounds}, {path} ...", file=sys.stderr)
                    try:
                        row = self.load_test(n, path)
                    except (RuntimeError, TimeoutError) as e:
                        row = {"n": n, "path": path, "error": str(e)}
                        self.notes.append(f"load {n} {path}: {e}")
                    row["round"] = r
                    rows.append(row)
        self.results["concurrency"] = {"duration_s": self.s.load_s, "warmup_s": self.s.load_warmup_s,
                                       "connect_batch": CONNECT_BATCH, "rounds": self.s.load_rounds,
                                       "summary": summarize_load(rows, self.s.sizes, paths), "rows": rows}

    def run(self) -> None:
        self.results["env"] = {
            "python": platform.python_version(),
            "websockets": __import__("websockets").__version__,
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "nginx": self.nginx.version if self.nginx else None,
            "omgw_command": omgw_command(Path("CONFIG"))[:-1],
            "tap_reader": self.s.tap_reader,
            "pinning": (f"proxy on CPU {sorted(PINNING['proxy'])}, peers on {sorted(PINNING['peers'])}"
                        if PINNING else ""),
            "quick": self.s.quick,
        }
        self.latency()
        self.concurrency()
        self.results["env"]["loadavg_end"] = os.getloadavg()
        if self.s.tap_reader:
            self.results["tap_drain"] = self.tap.call("stats", timeout=10)
        self.results["notes"] = self.notes


LOAD_BASELINE = {"omgw": "direct", "nginx": "direct", "omgw_tls": "direct_wss", "direct_wss": "direct"}


def summarize_load(rows: list[dict[str, Any]], sizes: tuple[int, ...], paths: list[str]) -> list[dict[str, Any]]:
    """Per (N, path): medians over rounds; ratios per round against that round's baseline; RSS maxima."""
    out = []
    for n in sizes:
        for path in paths:
            mine = [r for r in rows if r["n"] == n and r["path"] == path]
            ok = [r for r in mine if "load" in r]
            entry: dict[str, Any] = {"n": n, "path": path, "rounds": len(ok)}
            if not ok:
                first = mine[0] if mine else {}
                entry["unavailable"] = first.get("unavailable") or first.get("error") or "not run"
                out.append(entry)
                continue
            med = statistics.median
            entry["msgs_per_s"] = med(r["load"]["msgs_per_s"] for r in ok)
            entry["p50_ms"] = med(r["load"]["p50"] for r in ok) / 1000
            entry["p99_ms"] = med(r["load"]["p99"] for r in ok) / 1000
            entry["errors"] = sum(r["load"]["errors"] + r["connect"]["failed"] for r in ok)
            entry["connect_s"] = med(r["connect"]["seconds"] for r in ok)
            for k in ("proxy_cpu_pct", "loadgen_cpu_pct", "csms_cpu_pct", "other_cpu_pct"):
                vals = [r[k] for r in ok if k in r]
                entry[k] = med(vals) if vals else None
            for k in ("rss_mb_idle", "rss_mb_connected", "rss_mb_end", "rss_mb_peak_hwm"):
                vals = [r[k] for r in ok if r.get(k) is not None]
                entry[k] = max(vals) if vals else None
            base = LOAD_BASELINE.get(path)
            if base:
                ratios = []
                for r in ok:
                    b = next((x for x in rows if x["n"] == n and x["path"] == base and x["round"] == r["round"]
                              and "load" in x), None)
                    if b and b["load"]["msgs_per_s"]:
                        ratios.append(r["load"]["msgs_per_s"] / b["load"]["msgs_per_s"])
                if ratios:
                    entry["baseline"] = base
                    entry["ratio"] = med(ratios)
            out.append(entry)
    return out


# ---- report ------------------------------------------------------------------------------------

LABELS = {
    "direct": "direct ws -> CSMS",
    "pipe": "blind uvloop byte pipe",
    "omgw": "omgw p0 (ws upstream)",
    "omgw_off": "omgw p0, validation=off",
    "nginx": "nginx (ws reverse proxy)",
    "direct_wss": "direct wss -> CSMS",
    "omgw_tls": "omgw p2 (wss upstream)",
}


def fmt(v: Any, spec: str = ".0f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def report(results: dict[str, Any]) -> None:
    env = results["env"]
    lat = results.get("latency", {})
    print()
    print(f"omgw value channel benchmark  (python {env['python']}, websockets {env['websockets']}, "
          f"{env['cpus']} cpus, load avg {env['loadavg_start'][0]:.2f}"
          f"{', tap drained' if env['tap_reader'] else ', tap socket unbound'}"
          f"{', pinned: ' + env['pinning'] if env.get('pinning') else ''})")
    if lat:
        print()
        print(f"Sequential Heartbeat round trip: {lat['heartbeats']:,} per run after {lat['warmup']} warm-up, "
              f"median of {lat['rounds']} interleaved round(s), microseconds")
        print(f"{'path':26} {'p50':>7} {'p99':>7} {'mean':>7}   {'+p50':>6} {'+p99':>6} {'+mean':>6}"
              f"   {'x p50':>6} {'x p99':>6}  vs")
        for key, label in LABELS.items():
            e = lat["summary"].get(key)
            if e is None:
                continue
            if "unavailable" in e:
                print(f"{label:26} unavailable (see notes)")
                continue
            line = f"{label:26} {fmt(e.get('p50')):>7} {fmt(e.get('p99')):>7} {fmt(e.get('mean')):>7}"
            if "baseline" in e:
                line += (f"   {fmt(e['added_p50'], '+.0f'):>6} {fmt(e['added_p99'], '+.0f'):>6} "
                         f"{fmt(e['added_mean'], '+.0f'):>6}   {fmt(e['ratio_p50'], '.2f'):>6} "
                         f"{fmt(e['ratio_p99'], '.2f'):>6}  {e['baseline']}")
            print(line)
        others = [row[k]["other_cpu_pct"] for row in lat["per_round"] for k in row
                  if isinstance(row[k], dict) and "other_cpu_pct" in row[k]]
        if others:
            print(f"(other processes on the machine during these runs: median {statistics.median(others):.0f}%, "
                  f"max {max(others):.0f}% of one core)")
        om = lat["summary"].get("omgw", {})
        if "added_p50" in om:
            ok50 = om["added_p50"] <= TARGET_ADDED_P50_US
            ok99 = om["added_p99"] <= TARGET_ADDED_P99_US
            print(f"target added p50 <= {TARGET_ADDED_P50_US:.0f} us (no TLS): {om['added_p50']:.0f} us "
                  f"-> {'met' if ok50 else 'MISSED'}")
            print(f"target added p99 <= {TARGET_ADDED_P99_US:.0f} us (no TLS): {om['added_p99']:.0f} us "
                  f"-> {'met' if ok99 else 'MISSED'}")
        else:
            print("targets for added latency: not measured (omgw unavailable)")

    conc = results.get("concurrency")
    if conc:
        print()
        print(f"Concurrent chargers, closed Heartbeat loop, {conc['duration_s']:g} s measured after "
              f"{conc['warmup_s']:g} s warm-up, median of {conc['rounds']} round(s); one fresh omgw process per run")
        print(f"{'N':>5} {'path':26} {'msg/s':>7} {'x base':>6} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} "
              f"{'conn s':>6} {'RSS idle':>8} {'conn':>6} {'end':>6} {'peak':>6} {'CPU%':>5} {'gen%':>5} {'csms%':>5}"
              f" {'other%':>6}")
        rows = conc["rows"]
        for e in conc["summary"]:
            label = LABELS.get(e["path"], e["path"])
            if "unavailable" in e:
                print(f"{e['n']:>5} {label:26} unavailable: {e['unavailable'].splitlines()[0][:90]}")
                continue
            print(f"{e['n']:>5} {label:26} {e['msgs_per_s']:>7.0f} {fmt(e.get('ratio'), '.2f'):>6} "
                  f"{e['p50_ms']:>7.2f} {e['p99_ms']:>7.2f} {e['errors']:>4} {e['connect_s']:>6.1f} "
                  f"{fmt(e['rss_mb_idle'], '.1f'):>8} {fmt(e['rss_mb_connected'], '.1f'):>6} "
                  f"{fmt(e['rss_mb_end'], '.1f'):>6} {fmt(e['rss_mb_peak_hwm'], '.1f'):>6} "
                  f"{fmt(e['proxy_cpu_pct']):>5} {fmt(e['loadgen_cpu_pct']):>5} {fmt(e['csms_cpu_pct']):>5}"
                  f" {fmt(e['other_cpu_pct']):>6}")
        print("(x base: omgw p0 and nginx vs direct ws, omgw p2 vs direct wss, direct wss vs direct ws, per round;"
              "\n RSS: MB of the proxy process (max over rounds; nginx: its one worker, peak = worker lifetime);"
              "\n CPU%, gen%, csms%: proxy, load generator and CSMS processes; other%: every other process on"
              "\n the machine; all in % of one core, out of 200%)")
        biggest = max((e["n"] for e in conc["summary"]), default=0)
        for key in ("omgw", "omgw_tls"):
            e = next((e for e in conc["summary"] if e["n"] == biggest and e["path"] == key
                      and "unavailable" not in e), None)
            if e is None:
                print(f"target RSS <= {TARGET_RSS_MB:.0f} MB at {biggest} chargers ({LABELS[key]}): not measured")
                continue
            peak, end = e["rss_mb_peak_hwm"] or 0, e["rss_mb_end"] or 0
            verdict = "met" if peak <= TARGET_RSS_MB else ("met at end, peak over" if end <= TARGET_RSS_MB
                                                           else "MISSED")
            print(f"target RSS <= {TARGET_RSS_MB:.0f} MB at {biggest} chargers ({LABELS[key]}): "
                  f"end {end:.1f} MB, peak {peak:.1f} MB -> {verdict}")
        shown = False
        for r in rows:
            log = r.get("proxy", {}).get("log", {})
            if log.get("counts") or r.get("proxy", {}).get("exit_code") not in (0, None) \
                    or (r.get("load") or {}).get("errors") or r.get("connect", {}).get("failed"):
                if not shown:
                    print("\nProxy/peer anomalies:")
                    shown = True
                print(f"  {r['n']} {r['path']} round {r.get('round', 0) + 1}: exit {r.get('proxy', {}).get('exit_code')}, "
                      f"log {log.get('counts')}, connect failed {r.get('connect', {}).get('failed')}, "
                      f"load errors {(r.get('load') or {}).get('errors')} "
                      f"{(r.get('load') or {}).get('error_samples', '')}")
                for line in log.get("samples", [])[:4]:
                    print(f"      {line}")
    for key in ("omgw", "omgw_off", "omgw_tls"):
        p = lat.get("summary", {}).get(key, {}).get("proxy", {})
        if p.get("exit_code") not in (0, None) or p.get("log", {}).get("counts"):
            print(f"  latency {key}: exit {p.get('exit_code')}, log {p.get('log', {}).get('counts')}")
    if results.get("tap_drain"):
        print(f"\ntap drain received {results['tap_drain']['datagrams']:,} datagrams, "
              f"{results['tap_drain']['bytes']:,} bytes")
    if results.get("notes"):
        print("\nNotes:")
        for n in results["notes"]:
            print(f"  - {n.splitlines()[0]}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 heartbeats, one round, 5 s load tests")
    ap.add_argument("--tap-reader", action="store_true",
                    help="bind the tap socket with a drain process (the proxy then encodes tap records)")
    ap.add_argument("--pin", action="store_true",
                    help="proxy on the last CPU, load generator and CSMS on the others (needs 2+ CPUs)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out" / "value_latency.json")
    args = ap.parse_args()
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            ap.error("--pin needs at least 2 CPUs")
        PINNING.update(proxy={cpus[-1]}, peers=set(cpus[:-1]))
    if args.quick:
        settings = Settings(True, args.tap_reader, heartbeats=1000, warmup=200, rounds=1, load_s=5,
                            load_warmup_s=0.5, sizes=(200, 1000), nginx_load=False, load_rounds=1)
    else:
        settings = Settings(False, args.tap_reader, heartbeats=5000, warmup=500, rounds=5, load_s=10,
                            load_warmup_s=1, sizes=(200, 1000), nginx_load=True, load_rounds=2)

    bench = Bench(settings)
    # SIGTERM behaves like Ctrl-C: unwind through the finally below.
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.monotonic()
    try:
        bench.setup()
        bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.teardown()
    bench.results["env"]["wall_s"] = round(time.monotonic() - t0, 1)
    report(bench.results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
