"""Health-channel benchmark: ``omgw health`` with 8 simulated meters and 4 sensors, against a real broker.

Run: ``.venv/bin/python bench/health.py [--seconds N] [--outage-s S]``

The target is a 10-minute run (``--seconds 600``); the default ``--seconds 120`` is the documented
*shorter run* (same setup, a two-minute steady state), good enough for p99 over ~120 ticks but not
for a long-tail max or slow RSS growth. What it measures:

- **1 Hz jitter**: every telemetry payload carries ``lateness_ms`` (how late the sampler's tick ran
  against its monotonic deadline, before reading anything) and ``skipped`` (deadlines dropped after
  a stall). p50/p99/max of ``lateness_ms`` and the skipped count over the steady state, plus the
  inter-arrival time at an MQTT subscriber for reference (that one includes reading 8 meters,
  TLS, the broker and the subscriber's own scheduling).
- **CPU and RSS** of the health process, sampled every second from ``/proc/<pid>/stat``
  (utime+stime, all threads) and ``/proc/<pid>/status`` (VmRSS, VmHWM): mean CPU in % of one core
  over the steady state, peak RSS.
- **Spool replay rate**: after the steady state the broker is stopped for ``--outage-s`` seconds
  (default 15; telemetry goes to the spool), then restarted on the same port with the same
  persistence; the subscriber (persistent session) records when the messages generated during the
  outage arrive: msgs/s between the first and the last of them, the delay from broker restart to
  the first, and whether the telemetry ``seq`` is contiguous over the whole run (no gap; duplicates
  are counted, QoS 1 is at-least-once).

Baseline, measured in the same run and in parallel (same machine noise): a separate bare Python
process running only an event loop (uvloop if installed, as ``omgw`` uses) with a 1 Hz
``asyncio.sleep``-to-deadline loop that reports its own lateness. It is the jitter baseline and the
CPU/RSS baseline ("what an idle interpreter with an event loop costs"). Ratios are printed as
health / baseline; targets (jitter p99 <= 5 ms, RSS <= 60 MB, CPU <= 3 % of one core) are printed
as met or missed, never asserted (STYLE.md).

Setup: mosquitto with an mTLS listener (``tests/appliance/health/conftest.py``'s ``Mosquitto``,
fresh dev PKI from :mod:`appliance.devpki`), two simulated RS-485 lines (socat pty pairs,
:class:`drivers.sim.modbus_meter.SimulatedBus`, no baud timing) with four meters each (sdm630,
sdm120, abb_b23, em340), four ``bus = "sim"`` sensors (sht3x 0x44, sht4x 0x45, bme280 0x76, bme280
0x77), blackbox and spool in a temp state dir. The simulated lines and the subscriber run in this
process. Everything is torn down in ``finally``. Results go to ``bench/out/health.json``; the
health process's log is copied to ``bench/out/health.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "appliance" / "health"))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.devpki import DevCA
from conftest import HealthPki, Mosquitto  # tests/appliance/health/conftest.py (broker + PKI helpers)
from drivers.modbus.regmap import load_map
from drivers.sim.modbus_meter import SimulatedBus, SimulatedMeter

GW = "GW1"
MODELS = ["sdm630", "sdm120", "abb_b23", "em340"]
SENSORS = [("sht3x", 0x44), ("sht4x", 0x45), ("bme280", 0x76), ("bme280", 0x77)]
TARGETS = {"jitter_p99_ms": 5.0, "rss_mb": 60.0, "cpu_pct": 3.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

BASELINE_SRC = r"""
import asyncio, json, sys, time
async def main():
    loop = asyncio.get_running_loop()
    print(json.dumps({"loop": type(loop).__module__}), flush=True)
    t0 = time.monotonic() + 1.0
    k = 0
    while True:
        deadline = t0 + k
        d = deadline - time.monotonic()
        if d > 0:
            await asyncio.sleep(d)
        now = time.monotonic()
        late = now - deadline
        skipped = 0
        if late >= 1.0:
            skipped = int(late // 1.0)
            k += skipped
            late = now - (t0 + k)
        print(json.dumps({"k": k, "lateness_ms": round(late * 1e3, 3), "skipped": skipped}), flush=True)
        k += 1
try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


# ---- helpers ----------------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def proc_sample(pid: int) -> dict[str, float] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of the full line)
    kv = {}
    for line in status.splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "Threads"):
            kv[k] = int(v.split()[0])
    return {"t": time.monotonic(), "cpu_s": ticks / CLK_TCK, "rss_kb": kv.get("VmRSS", 0),
            "hwm_kb": kv.get("VmHWM", 0), "threads": kv.get("Threads", 0)}


def cpu_pct(samples: list[dict[str, float]], t_from: float, t_to: float) -> dict[str, float | None]:
    win = [s for s in samples if t_from <= s["t"] <= t_to]
    if len(win) < 2:
        return {"mean": None, "p95_1s": None, "max_1s": None}
    mean = 100 * (win[-1]["cpu_s"] - win[0]["cpu_s"]) / (win[-1]["t"] - win[0]["t"])
    per = [100 * (b["cpu_s"] - a["cpu_s"]) / (b["t"] - a["t"]) for a, b in zip(win, win[1:]) if b["t"] > a["t"]]
    return {"mean": mean, "p95_1s": pct(per, 95), "max_1s": max(per)}


def mb(kb: float | None) -> float | None:
    return None if kb is None else kb / 1024


class Observer:
    """A paho MQTT 5 subscriber (own thread, persistent session) recording arrivals on ``omgw/v1/GW1/#``."""

    def __init__(self, broker: Mosquitto, pki: HealthPki):
        self.lock = threading.Lock()
        self.msgs: list[tuple[float, int, str, bytes]] = []  # (monotonic, wall ns, topic, payload)
        self.subscribed = threading.Event()
        self.connects = 0
        ctx = ssl.create_default_context(cafile=pki.ca_file)
        ctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-observer", protocol=mqtt.MQTTv5)
        c.tls_set_context(ctx)
        c.reconnect_delay_set(1, 1)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect_async(broker.host, broker.port, clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=props)
        self.client = c

    def _on_connect(self, cl: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self.connects += 1
            cl.subscribe(f"omgw/v1/{GW}/#", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((time.monotonic(), time.time_ns(), m.topic, bytes(m.payload)))

    def start(self) -> None:
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("observer did not subscribe")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def telemetry(self) -> list[tuple[float, int, dict[str, Any]]]:
        with self.lock:
            out = [(t, w, json.loads(p)) for t, w, topic, p in self.msgs if topic.endswith("/telemetry")]
        return out


def write_config(d: Path, broker: Mosquitto, pki: HealthPki, ports: list[str]) -> Path:
    meters = []
    for line, port in enumerate(ports):
        for i, model in enumerate(MODELS):
            meters.append(f'[[health.meters]]\nname = "m{line}{i}-{model}"\nmodel = "{model}"\nport = "{port}"\n'
                          f"baud = 19200\nunit_id = {i + 1}\ntimeout_s = 0.2\n")
    sensors = [f'[[health.sensors]]\nname = "s{i}-{model}-{addr:02x}"\nmodel = "{model}"\nbus = "sim"\n'
               f"address = 0x{addr:02x}\n" for i, (model, addr) in enumerate(SENSORS)]
    text = (f'[gateway]\nid = "{GW}"\nstate_dir = "{d / "state"}"\n\n'
            f'[health]\nurl = "mqtts://localhost:{broker.port}"\nca_file = "{pki.ca_file}"\n'
            f'client_cert = "{pki.client.cert}"\nclient_key = "{pki.client.key}"\n'
            f'tap_socket = "{d / "tap.sock"}"\nstatus_socket = "{d / "health.sock"}"\n\n'
            + "\n".join(meters) + "\n" + "\n".join(sensors))
    path = d / "omgw.toml"
    path.write_text(text)
    return path


async def read_baseline(stream: asyncio.StreamReader, out: list[tuple[float, dict[str, Any]]],
                        meta: dict[str, Any]) -> None:
    while line := await stream.readline():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if "loop" in rec:
                meta["loop"] = rec["loop"]
            else:
                out.append((time.monotonic(), rec))


async def sample_procs(pids: dict[str, int], out: dict[str, list[dict[str, float]]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for name, pid in pids.items():
            s = proc_sample(pid)
            if s is not None:
                out[name].append(s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


# ---- the run ----------------------------------------------------------------------------------


async def run(seconds: float, outage_s: float, warmup_s: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="omgw-bh-"))  # short: the tap's unix socket path must fit
    broker: Mosquitto | None = None
    observer: Observer | None = None
    health: asyncio.subprocess.Process | None = None
    base: asyncio.subprocess.Process | None = None
    health_log_path = tmp / "health.log"
    sims: list[SimulatedBus] = []
    stop_sampling = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        ca = DevCA(tmp / "ca")
        rogue = DevCA(tmp / "rogue", name="rogue CA")
        pki = HealthPki(ca, ca.issue("broker", hosts=("localhost", "127.0.0.1")), ca.issue(GW, client=True),
                        rogue, rogue.issue("GW1-rogue", client=True))
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker", pki)
        broker.start()
        for line in range(2):
            sim = SimulatedBus([SimulatedMeter(load_map(m), i + 1, seed=10 * line + i) for i, m in enumerate(MODELS)],
                               workdir=tmp / f"line{line}")
            await sim.start()
            sims.append(sim)
        cfg = write_config(tmp, broker, pki, [s.port for s in sims])
        observer = Observer(broker, pki)
        observer.start()

        base = await asyncio.create_subprocess_exec(sys.executable, "-c", BASELINE_SRC,
                                                    stdout=asyncio.subprocess.PIPE)
        base_ticks: list[tuple[float, dict[str, Any]]] = []
        base_meta: dict[str, Any] = {}
        assert base.stdout is not None
        tasks.append(asyncio.create_task(read_baseline(base.stdout, base_ticks, base_meta)))

        health_log = health_log_path.open("wb")
        t_spawn = time.monotonic()
        health = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "appliance.cli", "health", "-c", str(cfg), stdout=health_log,
            stderr=asyncio.subprocess.STDOUT, cwd=str(REPO), env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
        health_log.close()
        samples: dict[str, list[dict[str, float]]] = {"health": [], "baseline": []}
        tasks.append(asyncio.create_task(sample_procs({"health": health.pid, "baseline": base.pid}, samples,
                                                      stop_sampling)))

        # Wait for the first telemetry, then warm up (imports, first connections, lazy caches).
        deadline = time.monotonic() + 60
        while not observer.telemetry():
            if health.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("no telemetry from omgw health:\n" + "\n".join(log_lines(health_log_path)[-30:]))
            await asyncio.sleep(0.1)
        t_first_tele = time.monotonic()
        print(f"first telemetry {t_first_tele - t_spawn:.1f} s after spawn; warm-up {warmup_s:.0f} s, "
              f"steady state {seconds:.0f} s, then a {outage_s:.0f} s broker outage", flush=True)
        await asyncio.sleep(warmup_s)
        t0 = time.monotonic()
        t0_wall = time.time_ns()
        step = max(10.0, seconds / 10)
        while time.monotonic() < t0 + seconds:
            await asyncio.sleep(min(step, t0 + seconds - time.monotonic()))
            if health.returncode is not None:
                raise RuntimeError("omgw health exited:\n" + "\n".join(log_lines(health_log_path)[-30:]))
            h = samples["health"][-1] if samples["health"] else None
            print(f"  t={time.monotonic() - t0:5.0f} s  telemetry={len(observer.telemetry())}"
                  f"  rss={mb(h['rss_kb']) if h else 0:.1f} MB", flush=True)
        t1 = time.monotonic()
        t1_wall = time.time_ns()

        # Broker outage: messages go to the spool; then restart and watch the replay.
        broker.stop()
        t_down = time.monotonic()
        t_down_wall = time.time_ns()
        await asyncio.sleep(outage_s)
        broker.start()
        t_up = time.monotonic()
        t_up_wall = time.time_ns()
        # Wait until telemetry generated after the restart arrives and nothing is missing (or 60 s).
        deadline = t_up + 60
        while time.monotonic() < deadline:
            tele = observer.telemetry()
            seqs = {p["seq"] for _, _, p in tele}
            fresh = [p for _, _, p in tele if p["ts_ns"] > t_up_wall + 3e9]
            if fresh and seqs and len(seqs) == max(seqs) - min(seqs) + 1:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        t_end = time.monotonic()
        stop_sampling.set()

        # ---- shut down the process under test (its exit code and log are part of the result) ----
        health.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.wait_for(health.wait(), 20)
        except TimeoutError:
            health.kill()
            rc = await health.wait()

        # ---- analysis ---------------------------------------------------------------------------
        tele = observer.telemetry()
        steady = [(t, w, p) for t, w, p in tele if t0_wall <= p["ts_ns"] <= t1_wall]
        lat = [p["lateness_ms"] for _, _, p in steady]
        arr = [t for t, _, _ in steady]
        inter = [1e3 * (b - a) for a, b in zip(arr, arr[1:])]
        e2e = [(w - p["ts_ns"]) / 1e6 for _, w, p in steady]
        b_steady = [r for t, r in base_ticks if t0 <= t <= t1]
        b_lat = [r["lateness_ms"] for r in b_steady]

        hc = cpu_pct(samples["health"], t0, t1)
        bc = cpu_pct(samples["baseline"], t0, t1)
        h_win = [s for s in samples["health"] if t0 <= s["t"] <= t1]
        b_win = [s for s in samples["baseline"] if t0 <= s["t"] <= t1]
        h_all = samples["health"]
        rss_steady_start = mb(h_win[0]["rss_kb"]) if h_win else None
        rss_steady_end = mb(h_win[-1]["rss_kb"]) if h_win else None
        out_win = [s for s in h_all if t_down <= s["t"] <= t_end]

        # Replay: every message that came out of the spool, i.e. arrived after the broker restart but
        # more than 1 s after its own timestamp (live telemetry arrives ~30-50 ms after its tick).
        # That includes what was generated after the restart but before the uplink reconnected
        # (paho's exponential reconnect backoff).
        seq_all = [p["seq"] for _, _, p in tele]
        seqset = sorted(set(seq_all))
        gaps = [(a, b) for a, b in zip(seqset, seqset[1:]) if b != a + 1]
        missing = sum(b - a - 1 for a, b in gaps)
        dups = len(seq_all) - len(seqset)
        with observer.lock:
            after = [(t, w, topic, p) for t, w, topic, p in observer.msgs if t >= t_up]
        replayed = []
        for t, w, topic, p in after:
            with contextlib.suppress(ValueError):
                j = json.loads(p)
                ts = j.get("ts_ns")
                if isinstance(ts, int) and w - ts > 1e9:
                    replayed.append((t, topic, j))
        rep_t = [t for t, _, _ in replayed]
        rep_rate = (len(rep_t) - 1) / (rep_t[-1] - rep_t[0]) if len(rep_t) >= 2 and rep_t[-1] > rep_t[0] else None
        rep_tele_seqs = sorted(j["seq"] for _, topic, j in replayed if topic.endswith("/telemetry"))
        skipped_total = sum(p.get("skipped", 0) for _, _, p in steady)
        outage_tele = [p for _, _, p in tele if t_down_wall <= p["ts_ns"] <= t_up_wall]

        lines = log_lines(health_log_path)
        notable = [ln for ln in lines if any(k in ln for k in ("level=warn", "level=error", "Traceback",
                                                                "WARNING", "ERROR"))]
        return {
            "params": {"seconds": seconds, "outage_s": outage_s, "warmup_s": warmup_s, "meters": 8, "sensors": 4,
                       "lines": 2, "models": MODELS, "sensor_models": SENSORS, "baseline_loop": base_meta.get("loop"),
                       "python": platform.python_version(), "cpus": os.cpu_count(), "host": platform.node()},
            "jitter": {
                "ticks": len(steady), "skipped": skipped_total,
                "lateness_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat) if lat else None,
                                "min": min(lat) if lat else None},
                "baseline_lateness_ms": {"ticks": len(b_lat), "p50": pct(b_lat, 50), "p99": pct(b_lat, 99),
                                         "max": max(b_lat) if b_lat else None,
                                         "skipped": sum(r["skipped"] for r in b_steady)},
                "subscriber_interarrival_ms": {"p1": pct(inter, 1), "p50": pct(inter, 50), "p99": pct(inter, 99),
                                               "max": max(inter) if inter else None},
                "publish_to_subscriber_ms": {"p50": pct(e2e, 50), "p99": pct(e2e, 99), "max": max(e2e) if e2e else None},
                "telemetry_bytes_mean": statistics.mean(len(json.dumps(p)) for _, _, p in steady) if steady else None,
            },
            "cpu_pct_one_core": {"health": hc, "baseline": bc,
                                 "health_outage_and_replay_mean": cpu_pct(samples["health"], t_down, t_end)["mean"]},
            "rss_mb": {"health_peak_rss": mb(max((s["rss_kb"] for s in h_all), default=None)),
                       "health_hwm": mb(h_all[-1]["hwm_kb"]) if h_all else None,
                       "health_steady_start": rss_steady_start, "health_steady_end": rss_steady_end,
                       "health_peak_during_outage": mb(max((s["rss_kb"] for s in out_win), default=None)),
                       "baseline_peak_rss": mb(max((s["rss_kb"] for s in b_win), default=None)),
                       "health_threads": h_all[-1]["threads"] if h_all else None},
            "spool": {"outage_s": t_up - t_down, "telemetry_generated_during_outage": len(outage_tele),
                      "replayed_msgs": len(replayed),
                      "replayed_telemetry": len(rep_tele_seqs),
                      "restart_to_first_replayed_s": (rep_t[0] - t_up) if rep_t else None,
                      "replay_span_s": (rep_t[-1] - rep_t[0]) if rep_t else None,
                      "replay_rate_msgs_s": rep_rate,
                      "configured_replay_rate_msgs_s": 50.0,
                      "telemetry_seq_first_last": [seqset[0], seqset[-1]] if seqset else None,
                      "telemetry_seq_missing": missing, "telemetry_seq_gaps": gaps[:20],
                      "telemetry_duplicates": dups, "observer_connects": observer.connects},
            "health_process": {"exit_code": rc, "log_lines": len(lines), "warnings_errors": len(notable),
                               "notable_log_excerpt": notable[:40]},
        }
    finally:
        stop_sampling.set()
        for t in tasks:
            t.cancel()
        if health is not None and health.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                health.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(health.wait(), 20)
            except TimeoutError:
                health.kill()
                await health.wait()
        if base is not None and base.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                base.kill()
            await base.wait()
        if observer is not None:
            observer.stop()
        for sim in sims:
            with contextlib.suppress(Exception):
                await sim.stop()
        if broker is not None:
            broker.kill()
        out_dir = BENCH_DIR / "out"
        out_dir.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.copy(health_log_path, out_dir / "health.log")
        shutil.rmtree(tmp, ignore_errors=True)


# ---- report -------------------------------------------------------------------------------------


def fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    return f"{a / b:.1f}x"


def verdict(x: float | None, limit: float) -> str:
    return "-" if x is None else ("met" if x <= limit else "MISSED")


def report(r: dict[str, Any]) -> None:
    p, j, c, m, s = r["params"], r["jitter"], r["cpu_pct_one_core"], r["rss_mb"], r["spool"]
    full = p["seconds"] >= 600
    print()
    print(f"omgw health: 8 meters (2 lines x {'/'.join(MODELS)}), 4 sensors, 1 Hz, mTLS mosquitto")
    print(f"steady state {p['seconds']:.0f} s ({'full 10-minute run' if full else 'shorter run; target is --seconds 600'}), "
          f"warm-up {p['warmup_s']:.0f} s excluded; baseline = bare {p['baseline_loop']} 1 Hz sleep loop, "
          f"separate process, same time window; python {p['python']}, {p['cpus']} cpus")
    print()
    hdr = f"{'metric':<34}{'health':>10}{'baseline':>10}{'ratio':>9}{'target':>10}  verdict"
    print(hdr)
    print("-" * len(hdr))

    def row(name: str, h: float | None, b: float | None = None, target: float | None = None, nd: int = 2) -> None:
        print(f"{name:<34}{fmt(h, nd):>10}{fmt(b, nd):>10}{ratio(h, b):>9}"
              f"{('<= ' + fmt(target, 0)) if target is not None else '':>10}  "
              f"{verdict(h, target) if target is not None else ''}")

    L, B = j["lateness_ms"], j["baseline_lateness_ms"]
    row("tick lateness p50 (ms)", L["p50"], B["p50"])
    row("tick lateness p99 (ms)", L["p99"], B["p99"], TARGETS["jitter_p99_ms"])
    row("tick lateness max (ms)", L["max"], B["max"])
    print(f"{'ticks measured':<34}{j['ticks']:>10}{B['ticks']:>10}")
    print(f"{'skipped ticks':<34}{j['skipped']:>10}{B['skipped']:>10}")
    I = j["subscriber_interarrival_ms"]
    row("subscriber inter-arrival p1 (ms)", I["p1"])
    row("subscriber inter-arrival p50 (ms)", I["p50"])
    row("subscriber inter-arrival p99 (ms)", I["p99"])
    row("subscriber inter-arrival max (ms)", I["max"])
    E = j["publish_to_subscriber_ms"]
    row("tick start -> subscriber p50 (ms)", E["p50"])
    row("tick start -> subscriber p99 (ms)", E["p99"])
    row("CPU mean, % of one core", c["health"]["mean"], c["baseline"]["mean"], TARGETS["cpu_pct"])
    row("CPU p95 of 1 s samples (%)", c["health"]["p95_1s"], c["baseline"]["p95_1s"])
    row("CPU during outage+replay (%)", c["health_outage_and_replay_mean"])
    row("RSS peak (MB)", m["health_peak_rss"], m["baseline_peak_rss"], TARGETS["rss_mb"], nd=1)
    row("RSS at steady start (MB)", m["health_steady_start"], nd=1)
    row("RSS at steady end (MB)", m["health_steady_end"], nd=1)
    row("RSS peak during outage (MB)", m["health_peak_during_outage"], nd=1)
    row("VmHWM at end (MB)", m["health_hwm"], nd=1)
    print()
    print(f"spool: broker down {s['outage_s']:.1f} s, {s['telemetry_generated_during_outage']} telemetry ticks in the "
          f"outage; uplink back {fmt(s['restart_to_first_replayed_s'])} s after the broker (reconnect backoff); "
          f"{s['replayed_msgs']} spooled msgs replayed ({s['replayed_telemetry']} telemetry) over {fmt(s['replay_span_s'], 3)} s = "
          f"{fmt(s['replay_rate_msgs_s'], 1)} msg/s (uplink token bucket: {s['configured_replay_rate_msgs_s']:.0f} msg/s, "
          f"burst 0.2 s worth = 10 msgs; a backlog <= 10 goes out as one burst)")
    print(f"telemetry seq {s['telemetry_seq_first_last']}: missing {s['telemetry_seq_missing']}, "
          f"duplicates {s['telemetry_duplicates']}{(' gaps ' + str(s['telemetry_seq_gaps'])) if s['telemetry_seq_gaps'] else ''}")
    hp = r["health_process"]
    print(f"health process: exit code {hp['exit_code']}, {hp['log_lines']} log lines, "
          f"{hp['warnings_errors']} warnings/errors (bench/out/health.log)")
    for ln in hp["notable_log_excerpt"][:10]:
        print("  | " + ln[:200])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0,
                    help="steady-state length; 120 = the documented shorter run, 600 = the 10-minute target")
    ap.add_argument("--outage-s", type=float, default=15.0, help="broker outage for the spool replay")
    ap.add_argument("--warmup-s", type=float, default=10.0, help="excluded from the statistics")
    args = ap.parse_args()
    result = asyncio.run(run(args.seconds, args.outage_s, args.warmup_s))
    out = BENCH_DIR / "out" / "health.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    report(result)
    print(f"\nresults: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
