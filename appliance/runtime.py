"""``omgw run``: value and health as two supervised child processes (development and bench use).

Why this exists: on the image each channel is its own systemd unit (image/systemd/, docs/systemd.md);
a developer, the bench or a container without systemd still needs the same two-process isolation
with the same restart behaviour. This module is that small init, and guarantees:

- **Never gives up.** A child that exits for any reason the supervisor did not ask for (non-zero
  code, killed by a signal, or even a clean exit 0: these are long-running services) is restarted
  after an exponential backoff capped at :attr:`RestartPolicy.max_delay_s`. There is no give-up
  rule: a gateway in a cabinet has nobody to restart it, so it keeps retrying at the cap and counts
  restarts (like ``Restart=always`` with ``StartLimitIntervalSec=0`` in the units).
- **Backoff forgets old failures.** A child that ran at least :attr:`RestartPolicy.stable_after_s`
  before dying starts again from the initial delay.
- **Signals are forwarded.** SIGTERM and SIGINT stop the children with that same signal, escalate to
  SIGKILL after ``stop_timeout_s``, and then the supervisor returns 0. SIGHUP is passed to every
  child; a child that dies *of* the forwarded SIGHUP is restarted at once without a backoff
  penalty (the channels do not handle SIGHUP, so today it means "restart both channels").
- **Output is passed through.** Children inherit stdout/stderr, so their logfmt lines reach the
  terminal or journal unchanged; the supervisor adds its own ``logger=run`` lines
  (``child_exited``, ``child_restarting``, ``child_restarted``).
- **No orphans.** Each child gets ``PR_SET_PDEATHSIG=SIGTERM``, so even a SIGKILLed supervisor
  takes its children with it.

:class:`RestartPolicy` and :class:`RestartTracker` are pure (time is passed in); :class:`Supervisor`
is the thin asyncio shell around them.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .logfmt import get_logger
from .sdnotify import SystemdNotifier

__all__ = ["ChildExit", "ChildSpec", "RestartPolicy", "RestartTracker", "Supervisor", "channel_specs"]

log = get_logger("run")

# Environment the children must not inherit: under systemd the supervisor is the unit's main
# process and the one that talks sd_notify; a child pinging the watchdog would hide a hung supervisor.
_NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff: ``initial_delay_s * factor**(n-1)`` for the n-th consecutive failure,
    capped at ``max_delay_s``; a run of at least ``stable_after_s`` resets n."""

    initial_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 30.0
    stable_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.initial_delay_s < 0 or self.max_delay_s < self.initial_delay_s:
            raise ValueError("need 0 <= initial_delay_s <= max_delay_s")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if self.stable_after_s < 0:
            raise ValueError("stable_after_s must be >= 0")

    def delay(self, consecutive_failures: int) -> float:
        """Seconds to wait before restart number ``consecutive_failures`` (1-based) of a streak."""
        if consecutive_failures <= 0:
            return 0.0
        # Cap the exponent first: factor**n overflows a float long before a gateway stops retrying.
        exponent = min(consecutive_failures - 1, 64)
        return min(self.max_delay_s, self.initial_delay_s * self.factor**exponent)


@dataclass(frozen=True)
class ChildExit:
    """How a child ended: ``returncode`` as asyncio reports it (negative = killed by that signal)."""

    returncode: int
    ran_s: float

    @property
    def signal(self) -> signal.Signals | None:
        if self.returncode < 0:
            try:
                return signal.Signals(-self.returncode)
            except ValueError:
                return None
        return None

    def log_fields(self) -> dict[str, object]:
        sig = self.signal
        if sig is not None:
            return {"code": self.returncode, "signal": sig.name}
        return {"code": self.returncode}


@dataclass
class RestartTracker:
    """One child's restart bookkeeping. Pure: the caller reports exits and asks for delays."""

    policy: RestartPolicy
    consecutive_failures: int = 0
    restarts: int = 0

    def on_exit(self, exit: ChildExit, requested: bool = False) -> float:
        """Record an exit and return the delay before the restart. ``requested`` marks an exit the
        supervisor asked for (SIGHUP): restarted at once, and it does not lengthen the backoff."""
        self.restarts += 1
        if requested:
            return 0.0
        if exit.ran_s >= self.policy.stable_after_s:
            self.consecutive_failures = 0
        self.consecutive_failures += 1
        return self.policy.delay(self.consecutive_failures)


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]


def channel_specs(config_path: Path, channels: Iterable[str], log_level: str = "info",
                  python: str = sys.executable) -> list[ChildSpec]:
    """The ``omgw value`` / ``omgw health`` children, run with this interpreter (works from a venv
    or a source tree without the console script on PATH)."""
    return [
        ChildSpec(name, (python, "-m", "appliance.cli", name, "-c", str(config_path), "--log-level", log_level))
        for name in channels
    ]


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn making the kernel SIGTERM the child when the supervisor dies (prctl(2)
    PR_SET_PDEATHSIG). libc is resolved here, in the parent: the forked child only calls prctl."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    PR_SET_PDEATHSIG = 1

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return preexec


@dataclass
class _Child:
    spec: ChildSpec
    tracker: RestartTracker
    proc: asyncio.subprocess.Process | None = None
    hup_sent: bool = False
    started: float = 0.0
    pid_history: list[int] = field(default_factory=list)


class Supervisor:
    """Runs the children until :meth:`stop` (or SIGTERM/SIGINT), restarting them per the policy."""

    def __init__(self, specs: Sequence[ChildSpec], policy: RestartPolicy | None = None,
                 stop_timeout_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 notifier: SystemdNotifier | None = None):
        if not specs:
            raise ValueError("nothing to supervise")
        policy = policy or RestartPolicy()
        self.children = {s.name: _Child(s, RestartTracker(policy)) for s in specs}
        self.stop_timeout_s = stop_timeout_s
        self._clock = clock
        self._stop = asyncio.Event()
        self._stop_signal = signal.SIGTERM
        self._notifier = notifier or SystemdNotifier()
        self._env = {k: v for k, v in os.environ.items() if k not in _NOTIFY_ENV}
        self._spawn_cb = _pdeathsig_preexec()

    # -- control ------------------------------------------------------------------------------
    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop every child with ``sig`` (SIGKILL after ``stop_timeout_s``), then :meth:`run` returns."""
        if not self._stop.is_set():
            self._stop_signal = sig
            log.info("supervisor_stopping", signal=sig.name)
            self._stop.set()

    def forward(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every running child (SIGHUP: the resulting exit is restarted at once)."""
        for child in self.children.values():
            if child.proc is not None and child.proc.returncode is None:
                if sig == signal.SIGHUP:
                    child.hup_sent = True
                try:
                    child.proc.send_signal(sig)
                except ProcessLookupError:
                    pass  # exited between the check and the kill; its watcher handles it

    def pid(self, name: str) -> int | None:
        proc = self.children[name].proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def restarts(self, name: str) -> int:
        return self.children[name].tracker.restarts

    # -- run ----------------------------------------------------------------------------------
    async def run(self, install_signal_handlers: bool = True) -> int:
        loop = asyncio.get_running_loop()
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop, sig)
            loop.add_signal_handler(signal.SIGHUP, self.forward, signal.SIGHUP)
        watchdog = asyncio.create_task(self._watchdog())
        try:
            tasks = [asyncio.create_task(self._keep_running(c)) for c in self.children.values()]
            log.info("supervisor_started", children=",".join(self.children), pid=os.getpid())
            self._notifier.ready(status=f"supervising {', '.join(self.children)}")
            await asyncio.gather(*tasks)
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
            if install_signal_handlers:
                for sig in handled:
                    loop.remove_signal_handler(sig)
        log.info("supervisor_stopped", restarts=sum(c.tracker.restarts for c in self.children.values()))
        return 0

    async def _watchdog(self) -> None:
        interval = self._notifier.watchdog_interval_s
        if interval is None:
            return
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval)

    async def _spawn(self, child: _Child) -> bool:
        try:
            child.proc = await asyncio.create_subprocess_exec(
                *child.spec.argv, stdin=asyncio.subprocess.DEVNULL, env=self._env, preexec_fn=self._spawn_cb)
        except OSError as e:
            child.proc = None
            log.error("child_spawn_failed", child=child.spec.name, error=e.strerror or str(e))
            return False
        child.started = self._clock()
        child.hup_sent = False
        child.pid_history.append(child.proc.pid)
        return True

    async def _keep_running(self, child: _Child) -> None:
        name = child.spec.name
        first = True
        while not self._stop.is_set():
            spawned = await self._spawn(child)
            if spawned:
                assert child.proc is not None
                log.info("child_started" if first else "child_restarted", child=name, pid=child.proc.pid,
                         **({} if first else {"restarts": child.tracker.restarts}))
                first = False
                exited = await self._wait_or_stop(child)
                if not exited:
                    await self._terminate(child)
                    return
                result = ChildExit(child.proc.returncode or 0, self._clock() - child.started)
                requested = child.hup_sent and result.signal == signal.SIGHUP
            else:
                result, requested = ChildExit(127, 0.0), False
                first = False
            if self._stop.is_set():  # exited on its own while we were stopping: nothing to restart
                log.info("child_exited", child=name, **result.log_fields(), ran_s=round(result.ran_s, 3))
                return
            delay = child.tracker.on_exit(result, requested=requested)
            log.warning("child_exited", child=name, **result.log_fields(), ran_s=round(result.ran_s, 3),
                        restart_in_s=round(delay, 3), **({"reason": "sighup"} if requested else {}))
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass

    async def _wait_or_stop(self, child: _Child) -> bool:
        """True when the child exited by itself, False when a stop was requested first."""
        assert child.proc is not None
        waiter = asyncio.create_task(child.proc.wait())
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if waiter in done:
            return True
        waiter.cancel()
        await asyncio.gather(waiter, stopper, return_exceptions=True)
        return False

    async def _terminate(self, child: _Child) -> None:
        proc, name = child.proc, child.spec.name
        assert proc is not None
        if proc.returncode is None:
            try:
                proc.send_signal(self._stop_signal)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout_s)
            except TimeoutError:
                log.warning("child_kill", child=name, pid=proc.pid, after_s=self.stop_timeout_s)
                proc.kill()
                await proc.wait()
        result = ChildExit(proc.returncode or 0, self._clock() - child.started)
        log.info("child_exited", child=name, **result.log_fields(), ran_s=round(result.ran_s, 3), reason="stop")
