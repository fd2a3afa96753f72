"""HIL session report: measurements in; Markdown, HTML, SVG charts and raw JSON out.

A bench run (simulated in CI, real in the lab) must leave a record that a person reads without tools
and a machine can diff: ``report.md`` (the CI artefact), ``report.html`` (the same content,
self-contained with the charts inline, to open on a lab laptop), one SVG per chart that has data, and
``measurements.json`` with every raw sample.

Guarantees:

- stdlib only; charts are hand-written SVG like the technician page's (appliance/health/web/static),
  well-formed XML, every text escaped (test ids may contain ``<``, ``&`` and quotes);
- the same recorded data renders to the same bytes except the "Generated" line (and that field of
  the JSON);
- an empty :class:`Recorder` renders a report saying there is nothing, it does not fail;
- percentiles are nearest-rank: always an observed sample, never interpolated.

:class:`Recorder` only collects (no clock, no I/O), :func:`render` is pure, :func:`write_report` is
the I/O shell (clock, host name, installed version, files). :class:`ReportPlugin`,
:func:`add_report_options` and :func:`configure_junit` are the pytest glue the bench plugin
(hil/conftest.py) registers; pytest is only named in annotations, never imported at run time.
"""

from __future__ import annotations

import html
import json
import math
import platform
import re
import socket
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module imports nothing outside the stdlib at run time
    import pytest

BASELINE_CASE = "baseline"
RELAY_BAND_S = 0.050  # pass band of a power cycle's measured off time around the requested one
CHART_FILES = ("latency.svg", "jitter.svg", "relay.svg")
# The technician page's series colours (style.css .s0-.s5); from the 7th series on, lines are dashed.
PALETTE = ("#d1495b", "#2a9d8f", "#3d5a80", "#e09f3e", "#7b2cbf", "#6c757d")
_SUB, _LINE, _OK = "#5b6470", "#d5d9de", "#1a7f37"
_STATUS_CLASS = {"passed": "ok", "xpassed": "ok", "pass": "ok", "skipped": "warn", "xfailed": "warn",
                 "failed": "bad", "error": "bad", "FAIL": "bad"}


# ---- recorded values -----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    nodeid: str
    outcome: str  # passed, failed, skipped, error, xfailed, xpassed
    duration_s: float
    longrepr: str = ""


@dataclass(frozen=True)
class JitterSeries:
    nominal_period_s: float
    timestamps_s: tuple[float, ...]


@dataclass(frozen=True)
class RelayCycle:
    requested_s: float
    measured_s: float
    source: str

    @property
    def error_s(self) -> float:
        return self.measured_s - self.requested_s

    @property
    def within_band(self) -> bool:
        return abs(self.error_s) <= RELAY_BAND_S


@dataclass(frozen=True)
class ValueCheck:
    name: str
    measured: float
    reference: float
    tolerance: float
    unit: str = ""

    @property
    def error(self) -> float:
        return self.measured - self.reference

    @property
    def passed(self) -> bool:
        return abs(self.error) <= self.tolerance


def _finite(what: str, *values: float) -> None:
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"{what}: {v!r} is not a finite number")


class Recorder:
    """Collects measurements during a HIL session; written out by write_report()."""

    def __init__(self, bench_name: str, bench_file: str | None = None) -> None:
        self.bench_name = bench_name
        self.bench_file = bench_file
        self.latencies: dict[str, list[float]] = {}
        self.jitters: dict[str, JitterSeries] = {}
        self.relays: list[RelayCycle] = []
        self.values: list[ValueCheck] = []
        self.notes: list[str] = []
        self.outcomes: list[Outcome] = []

    def latency(self, case: str, samples_s: Sequence[float]) -> None:
        """Value-channel round trips in seconds; samples of a case recorded twice are pooled."""
        samples = [float(s) for s in samples_s]
        for s in samples:
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"latency case {case!r}: sample {s!r} is not a positive time in seconds")
        self.latencies.setdefault(case, []).extend(samples)

    def jitter(self, name: str, timestamps_s: Sequence[float], nominal_period_s: float = 1.0) -> None:
        """Arrival (or ts) times of a periodic telemetry stream; a repeated name gets a " #2" suffix."""
        ts = tuple(float(t) for t in timestamps_s)
        _finite(f"jitter {name!r}", nominal_period_s, *ts)
        if nominal_period_s <= 0:
            raise ValueError(f"jitter {name!r}: nominal period {nominal_period_s!r} s is not positive")
        key, n = name, 1
        while key in self.jitters:
            n += 1
            key = f"{name} #{n}"
        self.jitters[key] = JitterSeries(float(nominal_period_s), ts)

    def relay(self, requested_s: float, measured_s: float, source: str = "input") -> None:
        _finite(f"relay cycle ({source})", requested_s, measured_s)
        self.relays.append(RelayCycle(float(requested_s), float(measured_s), source))

    def value(self, name: str, measured: float, reference: float, tolerance: float, unit: str = "") -> None:
        _finite(f"value {name!r}", measured, reference, tolerance)
        if tolerance < 0:
            raise ValueError(f"value {name!r}: tolerance {tolerance!r} is negative")
        self.values.append(ValueCheck(name, float(measured), float(reference), float(tolerance), unit))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def outcome(self, nodeid: str, outcome: str, duration_s: float, longrepr: str = "") -> None:
        self.outcomes.append(Outcome(nodeid, outcome, float(duration_s), longrepr))

    @property
    def has_measurements(self) -> bool:
        return bool(self.latencies or self.jitters or self.relays or self.values)


# ---- statistics (pure) -----------------------------------------------------------------------


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least p % of all samples <= it."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p!r} is outside 0..100")
    ordered = sorted(samples)
    # Exact arithmetic: ceil(0.999 * 1000) must be 999, not 1000 through float rounding.
    rank = math.ceil(Fraction(str(p)) * len(ordered) / 100)
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True)
class Spread:
    count: int
    p50: float
    p99: float
    max: float


def spread(samples: Sequence[float]) -> Spread | None:
    if not samples:
        return None
    return Spread(len(samples), percentile(samples, 50), percentile(samples, 99), max(samples))


def log_edges(lo: float, hi: float, per_decade: int = 10) -> list[float]:
    """Bin edges 10**(k/per_decade), aligned to decades, the first <= lo and the last > hi."""
    if not 0 < lo <= hi:
        raise ValueError(f"log bins need 0 < lo <= hi, got {lo!r}, {hi!r}")
    k0 = math.floor(math.log10(lo) * per_decade)
    k1 = math.floor(math.log10(hi) * per_decade) + 1
    return [10.0 ** (k / per_decade) for k in range(k0, k1 + 1)]


def histogram(samples: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin [edges[i], edges[i+1]); values outside (float slop at the ends) go to the end bins."""
    counts = [0] * (len(edges) - 1)
    for s in samples:
        i = min(max(bisect_right(edges, s) - 1, 0), len(counts) - 1)
        counts[i] += 1
    return counts


def interval_deviations(timestamps_s: Sequence[float], nominal_period_s: float) -> list[tuple[float, float]]:
    """(time since the first sample, interval minus nominal) per interval, in seconds, in arrival order."""
    t0 = timestamps_s[0] if timestamps_s else 0.0
    return [(b - t0, (b - a) - nominal_period_s) for a, b in zip(timestamps_s, timestamps_s[1:])]


def failure_excerpt(longrepr: str, max_lines: int = 5) -> list[str]:
    """The lines that say what went wrong: pytest's "E " lines if any, else the first non-blank ones."""
    lines = [ln.rstrip() for ln in longrepr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E ")]
    return (errors or lines)[:max_lines]


# ---- formatting --------------------------------------------------------------------------------


def _sig(v: float, digits: int = 3) -> str:
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:.{decimals}f}"


def fmt_duration(s: float) -> str:
    """3 significant digits in µs, ms or s."""
    a = abs(s)
    if a < 1e-3:
        return f"{_sig(s * 1e6)} µs"
    if a < 1:
        return f"{_sig(s * 1e3)} ms"
    return f"{_sig(s)} s"


def _tick_duration(s: float) -> str:
    if s < 1e-3:
        return f"{round(s * 1e6, 6):g} µs"
    if s < 1:
        return f"{round(s * 1e3, 6):g} ms"
    return f"{round(s, 6):g} s"


def _nice_ceil(v: float) -> float:
    """The smallest 1, 2 or 5 x 10**k that is >= v (v > 0)."""
    k = math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if m * 10.0**k >= v * (1 - 1e-12):
            return m * 10.0**k
    raise AssertionError("unreachable")


def _lin_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = _nice_ceil((hi - lo) / n)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 9) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = [(m, m * 10.0**k) for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    inside = [(m, v) for m, v in ticks if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    decades = [v for m, v in inside if m == 1]
    return decades if len(decades) >= 2 else [v for _, v in inside]


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


# ---- SVG charts ------------------------------------------------------------------------------


class _Svg:
    def __init__(self, width: int, height: int, title: str) -> None:
        self.width, self.height = width, height
        self.parts = [f"<title>{_esc(title)}</title>", f'<rect width="{width}" height="{height}" fill="#fff"/>']

    def add(self, tag: str, text: str | None = None, **attrs: float | str) -> None:
        def val(v: float | str) -> str:
            return _esc(v) if isinstance(v, str) else f"{v:.1f}"

        a = "".join(f' {k.rstrip("_").replace("_", "-")}="{val(v)}"' for k, v in attrs.items())
        self.parts.append(f"<{tag}{a}/>" if text is None else f"<{tag}{a}>{_esc(text)}</{tag}>")

    def render(self) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" font-family="system-ui, sans-serif" font-size="11">')
        return "\n".join([head, *self.parts, "</svg>"]) + "\n"


@dataclass(frozen=True)
class _Frame:
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    log_x: bool = False
    left: float = 64.0
    top: float = 14.0
    width: float = 556.0
    height: float = 200.0

    def x(self, v: float) -> float:
        if self.log_x:
            f = (math.log10(v) - math.log10(self.x_lo)) / (math.log10(self.x_hi) - math.log10(self.x_lo))
        else:
            f = (v - self.x_lo) / (self.x_hi - self.x_lo)
        return self.left + f * self.width

    def y(self, v: float) -> float:
        return self.top + (self.y_hi - v) / (self.y_hi - self.y_lo) * self.height


def _chart(title: str, f: _Frame, xticks: list[tuple[float, str]], yticks: list[tuple[float, str]],
           xlabel: str, ylabel: str, legend: int) -> _Svg:
    """An SVG with grid, tick labels and axis titles drawn; room for `legend` rows below."""
    bottom = f.top + f.height
    svg = _Svg(int(f.left + f.width + 16), int(bottom + 44 + 16 * legend), title)
    for v, label in yticks:
        svg.add("line", x1=f.left, x2=f.left + f.width, y1=f.y(v), y2=f.y(v), stroke=_LINE)
        svg.add("text", label, x=f.left - 6, y=f.y(v) + 4, text_anchor="end", fill=_SUB)
    for v, label in xticks:
        svg.add("line", x1=f.x(v), x2=f.x(v), y1=f.top, y2=bottom, stroke=_LINE)
        svg.add("text", label, x=f.x(v), y=bottom + 14, text_anchor="middle", fill=_SUB)
    svg.add("rect", x=f.left, y=f.top, width=f.width, height=f.height, fill="none", stroke=_SUB)
    svg.add("text", xlabel, x=f.left + f.width / 2, y=bottom + 30, text_anchor="middle", fill=_SUB)
    mid = f.top + f.height / 2
    svg.add("text", ylabel, x=14.0, y=mid, text_anchor="middle", fill=_SUB, transform=f"rotate(-90 14 {mid:.1f})")
    return svg


def _series_style(i: int) -> dict[str, float | str]:
    style: dict[str, float | str] = {"stroke": PALETTE[i % len(PALETTE)]}
    if i >= len(PALETTE):
        style["stroke_dasharray"] = "6 3"
    return style


def _legend(svg: _Svg, f: _Frame, row: int, i: int, label: str, marker: bool = False) -> None:
    y = f.top + f.height + 48 + 16 * row
    if marker:
        svg.add("circle", cx=f.left + 9, cy=y - 4, r=3.5, fill=PALETTE[i % len(PALETTE)])
    else:
        svg.add("line", x1=f.left, x2=f.left + 18, y1=y - 4, y2=y - 4, stroke_width=2, **_series_style(i))
    svg.add("text", label, x=f.left + 24, y=y, fill="#1b1f24")


def latency_svg(cases: Mapping[str, Sequence[float]]) -> str:
    """Share of round trips per log-spaced bin, one step line per case, on one log time axis."""
    present = {case: samples for case, samples in cases.items() if samples}
    everything = [s for samples in present.values() for s in samples]
    edges = log_edges(min(everything), max(everything))
    shares = {case: [100 * c / len(s) for c in histogram(s, edges)] for case, s in present.items()}
    top = _nice_ceil(max(max(sh) for sh in shares.values()))
    f = _Frame(edges[0], edges[-1], 0.0, top, log_x=True)
    svg = _chart("Value-channel round-trip latency", f, [(v, _tick_duration(v)) for v in _log_ticks(f.x_lo, f.x_hi)],
                 [(top * i / 4, f"{top * i / 4:g} %") for i in range(5)], "round trip (log scale)",
                 "share of samples", len(shares))
    for i, (case, sh) in enumerate(shares.items()):
        d = [f"M{f.x(edges[0]):.1f} {f.y(0):.1f}"]
        for j, share in enumerate(sh):
            d.append(f"L{f.x(edges[j]):.1f} {f.y(share):.1f}L{f.x(edges[j + 1]):.1f} {f.y(share):.1f}")
        d.append(f"L{f.x(edges[-1]):.1f} {f.y(0):.1f}")
        svg.add("path", d="".join(d), fill="none", stroke_width=1.5, **_series_style(i))
        _legend(svg, f, i, i, f"{case} (n={len(present[case])}, p99 {fmt_duration(percentile(present[case], 99))})")
    return svg.render()


def jitter_svg(series: Mapping[str, Sequence[tuple[float, float]]]) -> str:
    """Interval deviation from nominal (ms) over time (s since the first sample), one line per stream."""
    series = {name: pts for name, pts in series.items() if pts}
    t_hi = max(t for pts in series.values() for t, _ in pts) or 1.0
    m = _nice_ceil(max(1.0, max(abs(d) * 1e3 for pts in series.values() for _, d in pts)))
    f = _Frame(0.0, t_hi, -m, m)
    svg = _chart("Telemetry interval deviation", f, [(v, f"{v:g}") for v in _lin_ticks(0.0, t_hi)],
                 [(v, f"{v:+g}" if v else "0") for v in (-m, -m / 2, 0.0, m / 2, m)],
                 "time since first sample (s)", "interval − nominal (ms)", len(series))
    for i, (name, pts) in enumerate(series.items()):
        d = "".join(f"{'L' if j else 'M'}{f.x(t):.1f} {f.y(dev * 1e3):.1f}" for j, (t, dev) in enumerate(pts))
        svg.add("path", d=d, fill="none", stroke_width=1.2, **_series_style(i))
        if len(pts) <= 300:  # dots stay readable; a long session is a line
            for t, dev in pts:
                svg.add("circle", cx=f.x(t), cy=f.y(dev * 1e3), r=1.8, fill=PALETTE[i % len(PALETTE)])
        _legend(svg, f, i, i, f"{name} ({len(pts)} intervals)")
    return svg.render()


def relay_svg(cycles: Sequence[RelayCycle]) -> str:
    """Measured minus requested off time (ms) against the requested time, with the ±50 ms pass band."""
    req = [c.requested_s for c in cycles]
    lo, hi = min(req), max(req)
    pad = (hi - lo) * 0.05 if hi > lo else 1.0
    band_ms = RELAY_BAND_S * 1e3
    m = _nice_ceil(max(1.5 * band_ms, 1.1 * max(abs(c.error_s) * 1e3 for c in cycles)))
    f = _Frame(lo - pad, hi + pad, -m, m)
    sources = list(dict.fromkeys(c.source for c in cycles))
    svg = _chart("Relay power-cycle timing", f, [(v, f"{v:g}") for v in _lin_ticks(f.x_lo, f.x_hi)],
                 [(v, f"{v:+g}" if v else "0") for v in (-m, -m / 2, 0.0, m / 2, m)],
                 "requested off time (s)", "measured − requested (ms)", len(sources) + 1)
    svg.add("rect", x=f.left, y=f.y(band_ms), width=f.width, height=f.y(-band_ms) - f.y(band_ms), fill=_OK,
            fill_opacity="0.08")
    for edge in (band_ms, -band_ms):
        svg.add("line", x1=f.left, x2=f.left + f.width, y1=f.y(edge), y2=f.y(edge), stroke=_OK, stroke_dasharray="4 3")
    for c in cycles:
        svg.add("circle", cx=f.x(c.requested_s), cy=f.y(c.error_s * 1e3), r=3.5,
                fill=PALETTE[sources.index(c.source) % len(PALETTE)], stroke="#fff" if c.within_band else "#000")
    for i, source in enumerate(sources):
        _legend(svg, f, i, i, f"measured through {source}", marker=True)
    svg.add("rect", x=f.left, y=f.top + f.height + 38 + 16 * len(sources), width=18, height=8, fill=_OK,
            fill_opacity="0.25")
    svg.add("text", f"pass band ±{band_ms:g} ms", x=f.left + 24, y=f.top + f.height + 48 + 16 * len(sources),
            fill="#1b1f24")
    return svg.render()


# ---- the document ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Code:
    """A table cell shown as code (test ids)."""

    text: str


Cell = str | Code


@dataclass(frozen=True)
class _Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class _Para:
    text: str


@dataclass(frozen=True)
class _Table:
    headers: tuple[str, ...]
    rows: list[tuple[Cell, ...]]
    status_col: int | None = None


@dataclass(frozen=True)
class _Figure:
    file: str
    title: str
    svg: str


@dataclass(frozen=True)
class _Bullets:
    items: list[str]


_Block = _Heading | _Para | _Table | _Figure | _Bullets


@dataclass(frozen=True)
class ReportMeta:
    generated_utc: str
    host: str
    omgw_version: str
    python: str

    @classmethod
    def collect(cls) -> ReportMeta:
        try:
            version = metadata.version("omgw")
        except metadata.PackageNotFoundError:
            version = "not installed"
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(now, socket.gethostname(), version, platform.python_version())


def _totals(outcomes: Sequence[Outcome]) -> str:
    counts = Counter(o.outcome for o in outcomes)
    words = ["passed", "failed", "skipped"] + [w for w in ("error", "xfailed", "xpassed") if counts[w]]
    words += sorted(w for w in counts if w not in words)
    return ", ".join(f"{counts[w]} {w}" for w in words)


def _blocks(rec: Recorder, meta: ReportMeta) -> list[_Block]:
    out: list[_Block] = [
        _Heading(f"HIL report: {rec.bench_name}", 1),
        _Table(("", ""), [("Bench", rec.bench_name), ("Bench file", rec.bench_file or "–"),
                          ("Generated", meta.generated_utc), ("Host", meta.host), ("omgw", meta.omgw_version),
                          ("Python", meta.python), ("Tests", _totals(rec.outcomes))]),
        _Heading("Tests"),
    ]
    if rec.outcomes:
        rows: list[tuple[Cell, ...]] = [
            (Code(o.nodeid), o.outcome, f"{o.duration_s:.2f} s",
             "\n".join(failure_excerpt(o.longrepr)) if o.outcome in ("failed", "error", "skipped", "xfailed") else "")
            for o in rec.outcomes]
        out.append(_Table(("test", "outcome", "duration", "detail"), rows, status_col=1))
    else:
        out.append(_Para("No test outcomes were recorded."))
    if not rec.has_measurements:
        out += [_Heading("Measurements"), _Para("No measurements were recorded.")]
    if rec.latencies:
        out += _latency_blocks(rec.latencies)
    if rec.jitters:
        out += _jitter_blocks(rec.jitters)
    if rec.relays:
        within = sum(c.within_band for c in rec.relays)
        out += [_Heading("Relay timing"),
                _Para(f"{len(rec.relays)} power cycles, {within} within ±{RELAY_BAND_S * 1e3:g} ms of the requested "
                      "off time."),
                _Table(("#", "measured through", "requested", "measured", "error", "result"),
                       [(str(i), c.source, f"{c.requested_s:.3f} s", f"{c.measured_s:.3f} s",
                         f"{c.error_s * 1e3:+.1f} ms", "pass" if c.within_band else "FAIL")
                        for i, c in enumerate(rec.relays, 1)], status_col=5),
                _Figure("relay.svg", "Relay power-cycle timing", relay_svg(rec.relays))]
    if rec.values:
        ok = sum(v.passed for v in rec.values)
        out += [_Heading("Value checks"), _Para(f"{ok} of {len(rec.values)} within tolerance."),
                _Table(("check", "measured", "reference", "error", "tolerance", "result"),
                       [(v.name, f"{v.measured:g} {v.unit}".rstrip(), f"{v.reference:g} {v.unit}".rstrip(),
                         f"{v.error:+.4g} {v.unit}".rstrip(), f"±{v.tolerance:g} {v.unit}".rstrip(),
                         "pass" if v.passed else "FAIL") for v in rec.values], status_col=5)]
    if rec.notes:
        out += [_Heading("Notes"), _Bullets(rec.notes)]
    out.append(_Para("Raw data: measurements.json."))
    return out


def _latency_blocks(latencies: Mapping[str, Sequence[float]]) -> list[_Block]:
    base = spread(latencies.get(BASELINE_CASE, []))
    headers = ("case", "samples", "p50", "p99", "max") + (("p99 / baseline",) if base else ())
    rows: list[tuple[Cell, ...]] = []
    for case, samples in latencies.items():
        s = spread(samples)
        cells: list[Cell] = [case, str(len(samples))]
        cells += [fmt_duration(s.p50), fmt_duration(s.p99), fmt_duration(s.max)] if s else ["–", "–", "–"]
        if base:
            cells.append(f"{s.p99 / base.p99:.2f}×" if s else "–")
        rows.append(tuple(cells))
    out: list[_Block] = [_Heading("Value-channel latency"),
                         _Para("Round trips per case; percentiles are nearest-rank.")]
    out.append(_Table(headers, rows))
    if any(latencies.values()):
        out.append(_Figure("latency.svg", "Round-trip latency histogram", latency_svg(latencies)))
    return out


def _jitter_blocks(jitters: Mapping[str, JitterSeries]) -> list[_Block]:
    series = {name: interval_deviations(j.timestamps_s, j.nominal_period_s) for name, j in jitters.items()}
    rows: list[tuple[Cell, ...]] = []
    for name, pts in series.items():
        s = spread([abs(d) for _, d in pts])
        rows.append((name, f"{jitters[name].nominal_period_s:g} s", str(len(pts)))
                    + ((fmt_duration(s.p50), fmt_duration(s.p99), fmt_duration(s.max)) if s else ("–", "–", "–")))
    out: list[_Block] = [_Heading("Telemetry jitter"),
                         _Para("Deviation of each arrival interval from the nominal period."),
                         _Table(("stream", "nominal", "intervals", "p50 |dev|", "p99 |dev|", "max |dev|"), rows)]
    if any(series.values()):
        out.append(_Figure("jitter.svg", "Telemetry interval deviation", jitter_svg(series)))
    return out


def _md_text(text: str) -> str:
    text = html.escape(text, quote=False)
    for ch in "\\`*_[]|":
        text = text.replace(ch, "\\" + ch)
    return text


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, Code):
        # Inside a code span only the table's pipe needs escaping (GFM); the fence outruns inner backticks.
        text = cell.text.replace("\n", " ").replace("|", "\\|")
        fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
        return f"{fence} {text} {fence}"
    return "<br>".join(_md_text(line) for line in cell.splitlines())


def _to_markdown(blocks: Sequence[_Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, _Heading):
            out.append(f"{'#' * b.level} {_md_text(b.text)}")
        elif isinstance(b, _Para):
            out.append(_md_text(b.text))
        elif isinstance(b, _Bullets):
            out.append("\n".join(f"- {_md_text(' '.join(item.splitlines()))}" for item in b.items))
        elif isinstance(b, _Figure):
            out.append(f"![{_md_text(b.title)}]({b.file})")
        else:
            lines = ["| " + " | ".join(_md_text(h) for h in b.headers) + " |", "|" + "---|" * len(b.headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_CSS = """body { margin: 0 auto; max-width: 62em; padding: 1em; background: #f6f7f9; color: #1b1f24;
  font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
table { border-collapse: collapse; margin: .5em 0; background: #fff; }
th, td { text-align: left; padding: .3em .5em; border-bottom: 1px solid #d5d9de; vertical-align: top; }
th { color: #5b6470; font-weight: 600; }
td { font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, monospace; font-size: .85em; word-break: break-all; }
.ok { color: #1a7f37; } .bad { color: #c62828; font-weight: 600; } .warn { color: #b35900; }
figure { margin: .5em 0; } figure svg { max-width: 100%; height: auto; border: 1px solid #d5d9de; border-radius: 4px; }
figcaption { color: #5b6470; font-size: .85em; }"""


def _html_cell(cell: Cell, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    if isinstance(cell, Code):
        return f"<td{attr}><code>{_esc(cell.text)}</code></td>"
    return f"<td{attr}>" + "<br/>".join(_esc(line) for line in cell.splitlines()) + "</td>"


def _to_html(blocks: Sequence[_Block], title: str) -> str:
    """HTML that is also well-formed XML, so the tests can parse it."""
    out = ["<!DOCTYPE html>", '<html lang="en">', '<head><meta charset="utf-8"/>', f"<title>{_esc(title)}</title>",
           f"<style>\n{_CSS}\n</style></head>", "<body>"]
    for b in blocks:
        if isinstance(b, _Heading):
            out.append(f"<h{b.level}>{_esc(b.text)}</h{b.level}>")
        elif isinstance(b, _Para):
            out.append(f"<p>{_esc(b.text)}</p>")
        elif isinstance(b, _Bullets):
            out.append("<ul>" + "".join(f"<li>{_esc(item)}</li>" for item in b.items) + "</ul>")
        elif isinstance(b, _Figure):
            out.append(f"<figure>\n{b.svg}<figcaption>{_esc(b.title)}</figcaption></figure>")
        else:
            head = "".join(f"<th>{_esc(h)}</th>" for h in b.headers) if any(b.headers) else ""
            rows = []
            for row in b.rows:
                cells = [_html_cell(c, _STATUS_CLASS.get(str(c), "") if i == b.status_col else "")
                         for i, c in enumerate(row)]
                rows.append("<tr>" + "".join(cells) + "</tr>")
            out.append("<table>" + (f"<thead><tr>{head}</tr></thead>" if head else "") + "<tbody>\n" +
                       "\n".join(rows) + "\n</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _measurements(rec: Recorder, meta: ReportMeta) -> dict[str, object]:
    return {
        "bench": {"name": rec.bench_name, "file": rec.bench_file},
        "meta": asdict(meta),
        "outcomes": [asdict(o) for o in rec.outcomes],
        "latency": {case: {"samples_s": samples, "summary": asdict(s) if (s := spread(samples)) else None}
                    for case, samples in rec.latencies.items()},
        "jitter": {name: asdict(j) for name, j in rec.jitters.items()},
        "relay": [asdict(c) | {"error_s": c.error_s, "within_band": c.within_band} for c in rec.relays],
        "values": [asdict(v) | {"error": v.error, "passed": v.passed} for v in rec.values],
        "notes": rec.notes,
    }


def render(rec: Recorder, meta: ReportMeta) -> dict[str, str]:
    """File name -> content; chart files only for charts with data. Pure: same input, same bytes."""
    blocks = _blocks(rec, meta)
    files = {"report.md": _to_markdown(blocks),
             "report.html": _to_html(blocks, f"HIL report: {rec.bench_name}")}
    files |= {b.file: b.svg for b in blocks if isinstance(b, _Figure)}
    files["measurements.json"] = json.dumps(_measurements(rec, meta), indent=2, ensure_ascii=False,
                                            allow_nan=False) + "\n"
    return files


def write_report(rec: Recorder, out_dir: Path, *, meta: ReportMeta | None = None) -> Path:
    """Write the report files into out_dir (created) and return the path of report.md.

    Chart files left from an earlier run into the same directory are removed when this run has no data
    for them, so the directory never shows a chart of another run.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = render(rec, meta or ReportMeta.collect())
    for name in CHART_FILES:
        if name not in files:
            (out_dir / name).unlink(missing_ok=True)
    for name, text in files.items():
        (out_dir / name).write_text(text, encoding="utf-8", newline="\n")
    return out_dir / "report.md"


# ---- pytest glue -------------------------------------------------------------------------------
#
# The bench plugin (hil/conftest.py) wires it up:
#
#     def pytest_addoption(parser):
#         add_report_options(parser)              # --hil-report DIR
#
#     @pytest.hookimpl(tryfirst=True)             # see configure_junit
#     def pytest_configure(config):
#         out_dir = Path(config.getoption("hil_report") or f"hil/out/{bench_name}-{utc_stamp}")
#         configure_junit(config, out_dir)        # junit.xml beside the report unless --junitxml was given
#         config.pluginmanager.register(ReportPlugin(recorder, out_dir), "hil-report")
#
# Not xdist-aware: every process would write its own report.


def add_report_options(parser: pytest.Parser) -> None:
    """Add ``--hil-report DIR`` (dest ``hil_report``, default None: the caller picks the directory)."""
    parser.getgroup("hil").addoption(
        "--hil-report", dest="hil_report", metavar="DIR", default=None,
        help="directory for report.md/.html, charts, measurements.json and junit.xml "
             "(default: hil/out/<bench>-<UTC timestamp>)")


def configure_junit(config: pytest.Config, out_dir: Path) -> Path:
    """Make pytest write JUnit XML to out_dir/junit.xml unless --junitxml was given; returns the path in use.

    pytest's junitxml plugin reads ``config.option.xmlpath`` once, in its own ``pytest_configure``.
    Call this from a ``pytest_configure`` marked ``@pytest.hookimpl(tryfirst=True)`` in a conftest
    pytest loads at start-up (hil/conftest.py, given on the command line or at the rootdir), or set
    ``config.option.xmlpath`` yourself there: a later call has no effect on this run.
    """
    if not config.option.xmlpath:
        config.option.xmlpath = str(Path(out_dir) / "junit.xml")
    return Path(config.option.xmlpath)


def outcome_word(report: pytest.TestReport) -> str:
    """passed/failed/skipped as pytest counts them, plus error (setup/teardown), xfailed and xpassed."""
    if report.when != "call" and report.failed:
        return "error"
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return report.outcome


def _detail(report: pytest.TestReport) -> str:
    if report.passed:
        return ""
    if hasattr(report, "wasxfail") and report.skipped:
        return f"xfail: {report.wasxfail}".rstrip(": ")
    if isinstance(report.longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return str(report.longrepr[2])
    return report.longreprtext


class ReportPlugin:
    """Records each test's outcome (call phase; setup failures and skips; teardown errors) and writes
    the report in pytest_sessionfinish, printing its path through the terminal reporter."""

    def __init__(self, recorder: Recorder, out_dir: Path, include: Callable[[str], bool] = lambda nodeid: True) -> None:
        self.recorder = recorder
        self.out_dir = Path(out_dir)
        self.report_path: Path | None = None
        self.include = include  # which node ids are HIL tests (the unit suite may run in the same session)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.include(report.nodeid):
            return
        if (report.when == "call" or (report.when == "setup" and not report.passed)
                or (report.when == "teardown" and report.failed)):
            self.recorder.outcome(report.nodeid, outcome_word(report), report.duration, _detail(report))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and self.include(report.nodeid):  # a test module that does not import is a result too
            self.recorder.outcome(report.nodeid, "error", 0.0, report.longreprtext)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.report_path = write_report(self.recorder, self.out_dir)
        terminal = session.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_sep("-", f"HIL report: {self.report_path}")
