"""``omgw run``'s Supervisor with real child processes: restart with backoff, signal forwarding,
SIGTERM-then-SIGKILL stop, no orphans; and ``omgw run -c`` end to end with a value-only config."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from appliance.runtime import ChildSpec, RestartPolicy, Supervisor

FAST = RestartPolicy(initial_delay_s=0.05, factor=2.0, max_delay_s=0.4, stable_after_s=60.0)

# A stand-in channel: appends "start <pid>" to a journal file, records every TERM/INT/HUP it gets
# (TERM and INT then exit 0, like the real channels; HUP is recorded and then re-raised with the
# default action, since the real channels do not handle it), and then behaves as argv[2] says.
STUB = textwrap.dedent("""
    import os, signal, sys, time
    journal, mode = sys.argv[1], sys.argv[2]
    def note(text):
        with open(journal, "a") as f:
            f.write(text + "\\n")
    def on_signal(sig, frame):
        note(f"got {signal.Signals(sig).name} {os.getpid()}")
        if sig == signal.SIGHUP:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGHUP)
        sys.exit(0)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN if mode == "stubborn" else on_signal)
    note(f"start {os.getpid()}")
    print(f"event=stub_started mode={mode}", flush=True)
    if mode == "crash":
        time.sleep(0.02)
        sys.exit(3)
    while True:
        time.sleep(1)
""")


def stub(name: str, journal: Path, mode: str) -> ChildSpec:
    return ChildSpec(name, (sys.executable, "-c", STUB, str(journal), mode))


def lines(journal: Path, prefix: str) -> list[str]:
    if not journal.exists():
        return []
    return [ln for ln in journal.read_text().splitlines() if ln.startswith(prefix)]


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; check its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def reap_all(pids: list[int]) -> None:
    """SIGKILL leftovers of this test only: a pid is killed only if it is still one of our children
    (its command line is the stub or ``appliance.cli``), never a recycled pid."""
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"stub_started" in cmdline or b"appliance.cli" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def supervising(sup: Supervisor) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.create_task(sup.run(install_signal_handlers=False))
    try:
        yield task
    finally:
        if not task.done():
            sup.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
        reap_all([pid for c in sup.children.values() for pid in c.pid_history])


async def test_a_crashing_child_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    journal = tmp_path / "crash.log"
    sup = Supervisor([stub("value", journal, "crash")], policy=FAST)
    async with supervising(sup) as task:
        await wait_until(lambda: len(lines(journal, "start")) >= 5)
        sup.stop()
        assert await asyncio.wait_for(task, 10) == 0
    assert sup.restarts("value") >= 4
    assert sup.children["value"].tracker.consecutive_failures >= 4
    assert len(set(sup.children["value"].pid_history)) == len(sup.children["value"].pid_history)


async def test_backoff_spaces_out_the_restarts(tmp_path: Path) -> None:
    journal = tmp_path / "crash.log"
    policy = RestartPolicy(initial_delay_s=0.2, factor=2.0, max_delay_s=0.4, stable_after_s=60.0)
    sup = Supervisor([stub("value", journal, "crash")], policy=policy)
    started = time.monotonic()
    async with supervising(sup):
        await wait_until(lambda: len(lines(journal, "start")) >= 4)
    # Three restarts after delays of 0.2 + 0.4 + 0.4 s (capped): at least a second in all.
    assert time.monotonic() - started >= 1.0


async def test_a_killed_child_is_restarted_and_its_sibling_is_untouched(tmp_path: Path) -> None:
    jv, jh = tmp_path / "value.log", tmp_path / "health.log"
    sup = Supervisor([stub("value", jv, "sleep"), stub("health", jh, "sleep")], policy=FAST)
    async with supervising(sup) as task:
        await wait_until(lambda: lines(jv, "start") and lines(jh, "start"))
        victim, sibling = sup.pid("value"), sup.pid("health")
        assert victim is not None and sibling is not None
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: len(lines(jv, "start")) == 2)
        assert sup.pid("value") not in (None, victim)
        assert sup.pid("health") == sibling and sup.restarts("health") == 0
        assert sup.restarts("value") == 1
        sup.stop()
        assert await asyncio.wait_for(task, 10) == 0
    assert not alive(sibling) and not any(alive(p) for p in sup.children["value"].pid_history)
    assert lines(jh, "got") == [f"got SIGTERM {sibling}"]


async def test_stop_forwards_the_signal_and_waits_for_every_child(tmp_path: Path) -> None:
    jv, jh = tmp_path / "value.log", tmp_path / "health.log"
    sup = Supervisor([stub("value", jv, "sleep"), stub("health", jh, "sleep")], policy=FAST)
    async with supervising(sup) as task:
        await wait_until(lambda: lines(jv, "start") and lines(jh, "start"))
        pids = [sup.pid("value"), sup.pid("health")]
        sup.stop(signal.SIGINT)
        assert await asyncio.wait_for(task, 10) == 0
    assert [ln.split()[1] for ln in lines(jv, "got") + lines(jh, "got")] == ["SIGINT", "SIGINT"]
    assert not any(alive(p) for p in pids if p)
    assert sup.restarts("value") == sup.restarts("health") == 0  # a requested stop is not a crash


async def test_a_child_ignoring_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    journal = tmp_path / "stubborn.log"
    sup = Supervisor([stub("health", journal, "stubborn")], policy=FAST, stop_timeout_s=0.5)
    async with supervising(sup) as task:
        await wait_until(lambda: lines(journal, "start"))
        pid = sup.pid("health")
        t0 = time.monotonic()
        sup.stop()
        assert await asyncio.wait_for(task, 10) == 0
        assert time.monotonic() - t0 >= 0.5
    assert pid is not None and not alive(pid)
    assert sup.children["health"].proc.returncode == -signal.SIGKILL


async def test_sighup_is_forwarded_and_the_child_it_ends_comes_back_at_once(tmp_path: Path) -> None:
    journal = tmp_path / "hup.log"
    slow = RestartPolicy(initial_delay_s=30, max_delay_s=30)  # a crash-style restart would take 30 s
    sup = Supervisor([stub("value", journal, "sleep")], policy=slow)
    async with supervising(sup) as task:
        await wait_until(lambda: lines(journal, "start"))
        first = sup.pid("value")
        sup.forward(signal.SIGHUP)
        await wait_until(lambda: len(lines(journal, "start")) == 2, timeout=5)
        assert lines(journal, "got") == [f"got SIGHUP {first}"]
        assert sup.children["value"].tracker.consecutive_failures == 0 and sup.restarts("value") == 1
        sup.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_a_missing_executable_is_retried_with_backoff_not_fatal(tmp_path: Path) -> None:
    sup = Supervisor([ChildSpec("value", (str(tmp_path / "no-such-binary"),))], policy=FAST)
    async with supervising(sup) as task:
        await wait_until(lambda: sup.restarts("value") >= 3)
        sup.stop()
        assert await asyncio.wait_for(task, 10) == 0


# -- the supervisor as its own process: real signals -----------------------------------------------

SUPERVISOR = textwrap.dedent("""
    import asyncio, sys
    from appliance import logfmt
    from appliance.runtime import ChildSpec, RestartPolicy, Supervisor
    logfmt.setup("info")
    stub, jv, jh = sys.argv[1], sys.argv[2], sys.argv[3]
    specs = [ChildSpec("value", (sys.executable, "-c", stub, jv, "sleep")),
             ChildSpec("health", (sys.executable, "-c", stub, jh, "sleep"))]
    policy = RestartPolicy(initial_delay_s=0.05, max_delay_s=0.2)
    sys.exit(asyncio.run(Supervisor(specs, policy=policy, stop_timeout_s=5).run()))
""")


@contextlib.asynccontextmanager
async def supervisor_process(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path, Path, Path]]:
    jv, jh, out = tmp_path / "value.log", tmp_path / "health.log", tmp_path / "supervisor.out"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUPERVISOR, STUB, str(jv), str(jh),
        stdout=out.open("wb"), stderr=asyncio.subprocess.STDOUT, cwd=Path(__file__).parents[2])
    try:
        await wait_until(lambda: lines(jv, "start") and lines(jh, "start"))
        yield proc, jv, jh, out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for journal in (jv, jh):
            reap_all([int(ln.split()[1]) for ln in lines(journal, "start")])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_supervisor_process_forwards_stop_signals_and_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    async with supervisor_process(tmp_path) as (proc, jv, jh, out):
        pids = [int(lines(j, "start")[0].split()[1]) for j in (jv, jh)]
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert not any(alive(p) for p in pids)
        assert [ln.split()[1] for ln in lines(jv, "got") + lines(jh, "got")] == [sig.name, sig.name]
        log = out.read_text()
        assert "event=stub_started mode=sleep" in log  # child output passed through
        assert f"event=supervisor_stopping signal={sig.name}" in log and "event=supervisor_stopped" in log


async def test_supervisor_process_passes_sighup_to_both_children(tmp_path: Path) -> None:
    async with supervisor_process(tmp_path) as (proc, jv, jh, out):
        proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: len(lines(jv, "start")) == 2 and len(lines(jh, "start")) == 2)
        assert "reason=sighup" in out.read_text()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_children_do_not_outlive_a_sigkilled_supervisor(tmp_path: Path) -> None:
    async with supervisor_process(tmp_path) as (proc, jv, jh, _):
        pids = [int(lines(j, "start")[0].split()[1]) for j in (jv, jh)]
        proc.kill()
        await proc.wait()
        await wait_until(lambda: not any(alive(p) for p in pids), timeout=5)
        assert [ln.split()[1] for ln in lines(jv, "got") + lines(jh, "got")] == ["SIGTERM", "SIGTERM"]


# -- omgw run end to end ---------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc; no psutil)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.fixture
def value_only_config(tmp_path: Path, unused_tcp_port: int) -> Iterator[tuple[Path, int]]:
    lines_ = [
        "[gateway]", 'id = "gw-run"', f'state_dir = "{tmp_path / "state"}"',
        "[value]", f'listen = "127.0.0.1:{unused_tcp_port}"',
        f'csms_url = "ws://127.0.0.1:{closed_port()}/ocpp"',  # nobody there: value listens anyway
        "security_profile = 0", "allow_insecure = true",
        f'tap_socket = "{tmp_path / "tap.sock"}"', f'status_socket = "{tmp_path / "value.sock"}"',
        "[[value.charge_points]]", 'id = "CP001"',
    ]
    path = tmp_path / "omgw.toml"
    path.write_text("\n".join(lines_) + "\n")
    yield path, unused_tcp_port


async def test_omgw_run_restarts_a_killed_value_child_and_stops_cleanly_on_sigterm(
        value_only_config: tuple[Path, int], tmp_path: Path) -> None:
    cfg, port = value_only_config
    out = tmp_path / "run.out"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance.cli", "run", "-c", str(cfg),
        stdout=out.open("wb"), stderr=asyncio.subprocess.STDOUT, cwd=Path(__file__).parents[2])
    seen: set[int] = set()
    try:
        await wait_until(lambda: "event=value_listening" in out.read_text() or proc.returncode is not None, 20)
        assert proc.returncode is None, out.read_text()
        assert accepts(port)
        children = child_pids(proc.pid)
        assert len(children) == 1, out.read_text()  # value only: the config has no [health] section
        seen.update(children)
        os.kill(children[0], signal.SIGKILL)
        await wait_until(lambda: "event=child_restarted" in out.read_text(), 10)
        await wait_until(lambda: out.read_text().count("event=value_listening") == 2, 20)
        assert accepts(port)
        restarted = child_pids(proc.pid)
        seen.update(restarted)
        assert len(restarted) == 1 and restarted != children
        log = out.read_text()
        assert "event=child_exited child=value code=-9 signal=SIGKILL" in log
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert not any(alive(p) for p in seen)
        assert not accepts(port)
        log = out.read_text()
        assert "event=value_stopped" in log and "event=supervisor_stopped" in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reap_all(list(seen))


async def test_omgw_run_refuses_a_config_without_channels(tmp_path: Path) -> None:
    cfg = tmp_path / "omgw.toml"
    cfg.write_text('[gateway]\nid = "gw-empty"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance.cli", "run", "-c", str(cfg), stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2])
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2 and b"neither" in err
