"""Cost of TapSender.put() on the forwarding path, against deque.append measured in the same run.

    ./dev bench tap_put [--n 10000] [--repeat 200]

Each case runs N calls per repetition on a fresh queue and reports the best repetition in ns per
call. N defaults to the queue bound (10,000), the most a running sender ever holds. The baseline
is ``deque.append`` of a freshly built 5-tuple, which is what the design asks the hot path to do;
the ratio says what put() adds on top (method call, bound check, **extra dict, wake check). The
garbage collector stays enabled, as in the running proxy. Nothing is asserted: the figures are for
reading and comparing between machines (see docs/tap.md).
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.tap import DEFAULT_MAX_QUEUE

FRAME = (
    '[2,"19223201","MeterValues",{"connectorId":1,"meterValue":'
    '[{"timestamp":"2026-11-25T17:10:51Z","sampledValue":[{"value":"1234"}]}]}]'
)

COMMON = f"""
import gc, collections
from appliance.tap import TapSender
gc.enable()
t, cp, d, ev, f = 1764090651123456789, "CP7", "up", "frame", {FRAME!r}
"""

SENDER = "tx = TapSender('/nonexistent', 'gw', max_queue=N)"
FULL_SENDER = "tx = TapSender('/nonexistent', 'gw', max_queue=1); tx.put(t, cp, d, ev, f)"

# (name, timed statement, per-repetition setup)
CASES: list[tuple[str, str, str]] = [
    ("empty loop (pass)", "pass", ""),
    ("deque.append(prebuilt tuple)", "q.append(rec)", "q = collections.deque(); rec = (t, cp, d, ev, f)"),
    ("deque.append((t, cp, dir, ev, frame))", "q.append((t, cp, d, ev, f))", "q = collections.deque()"),
    ("TapSender.put(t, cp, dir, ev, frame)", "tx.put(t, cp, d, ev, f)", SENDER),
    ("TapSender.put(..., code=1000)", "tx.put(t, cp, '', 'disconnect', None, code=1000)", SENDER),
    ("TapSender.put() on a full queue (drop)", "tx.put(t, cp, d, ev, f)", FULL_SENDER),
]
BASELINE = "deque.append((t, cp, dir, ev, frame))"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=DEFAULT_MAX_QUEUE, help="calls per repetition")
    ap.add_argument("--repeat", type=int, default=200, help="repetitions per case (best is reported)")
    args = ap.parse_args()

    results: dict[str, float] = {}
    for name, stmt, setup in CASES:
        timer = timeit.Timer(stmt, COMMON + f"N = {args.n}\n" + setup)
        best = min(timer.repeat(repeat=args.repeat, number=args.n))
        results[name] = best / args.n * 1e9

    base = results[BASELINE]
    print(f"tap put() cost: N={args.n} calls, best of {args.repeat}; "
          f"Python {platform.python_version()} on {platform.machine()}")  # fmt: skip
    print(f"{'case':<42} {'ns/call':>8} {'ratio':>7}")
    for name, ns in results.items():
        mark = "  (baseline)" if name == BASELINE else ""
        print(f"{name:<42} {ns:8.1f} {ns / base:7.2f}{mark}")


if __name__ == "__main__":
    main()
