"""HIL report: nearest-rank percentiles, log binning, escaped well-formed SVG/HTML, the pytest plugin."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.report import (
    Recorder,
    ReportMeta,
    configure_junit,
    failure_excerpt,
    histogram,
    interval_deviations,
    latency_svg,
    log_edges,
    percentile,
    render,
    write_report,
)

pytest_plugins = ["pytester"]

META = ReportMeta("2026-01-02T03:04:05Z", "bench-host", "0.1.0", "3.11.7")
NASTY = "case <b>&amp; \"quoted\" 'single' | `tick`"
SVG = "{http://www.w3.org/2000/svg}"


def full_recorder() -> Recorder:
    rng = random.Random(7)
    rec = Recorder("sim", "hil/benches/sim.yaml")
    rec.latency("baseline", [0.001] * 99 + [0.004])
    rec.latency("broker down", [0.002] * 99 + [0.009])
    rec.latency(NASTY, [rng.lognormvariate(-8, 0.4) for _ in range(50)])
    rec.jitter("health 1 Hz", [i + rng.gauss(0, 0.002) for i in range(60)])
    rec.relay(5.0, 5.012)
    rec.relay(10.0, 10.07, source="mqtt")
    rec.value("meter L1 voltage", 230.4, 230.0, 1.15, "V")
    rec.value("meter energy", 12.0, 10.0, 0.5, "kWh")
    rec.note(f"note with {NASTY}")
    rec.outcome("hil/test_value.py::test_latency[baseline]", "passed", 1.5)
    rec.outcome(f"hil/test_x.py::test_y[{NASTY}]", "failed", 0.25,
                "    def test_y():\n>       assert reading == 1\nE       assert 2 == 1\nE        +  where 2 = f()\n")
    rec.outcome("hil/test_relay.py::test_cycle", "skipped", 0.0, "Skipped: no relay on this bench")
    return rec


# ---- percentiles ---------------------------------------------------------------------------


def test_percentile_is_nearest_rank_over_unsorted_samples() -> None:
    samples = [50, 15, 40, 20, 35]  # the textbook nearest-rank example
    assert [percentile(samples, p) for p in (0, 5, 30, 40, 50, 100)] == [15, 15, 20, 20, 35, 50]


def test_percentile_ranks_are_exact_not_float_rounded() -> None:
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile(list(range(1, 1001)), 99.9) == 999
    assert percentile(list(range(1, 11)), 10) == 1
    assert percentile([3.0], 99) == 3.0


def test_percentile_rejects_no_samples_and_p_outside_0_100() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 100.5)


@given(st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=200), st.floats(0.1, 100.0))
def test_percentile_is_a_sample_with_at_least_p_percent_at_or_below(samples: list[float], p: float) -> None:
    v = percentile(samples, p)
    assert v in samples
    n = len(samples)
    assert sum(s <= v for s in samples) >= p / 100 * n * (1 - 1e-9)
    assert sum(s < v for s in samples) < p / 100 * n * (1 + 1e-9)


# ---- binning and jitter ------------------------------------------------------------------


def test_log_edges_are_decade_aligned_and_cover_the_range() -> None:
    edges = log_edges(0.00012, 0.0031, per_decade=10)
    assert edges[0] <= 0.00012 < edges[1]
    assert edges[-2] <= 0.0031 < edges[-1]
    assert any(abs(e - 1e-3) < 1e-15 for e in edges)
    assert len(log_edges(0.005, 0.005)) == 2  # one bin around a single value


def test_histogram_bins_are_left_closed_and_keep_every_sample() -> None:
    edges = [1.0, 2.0, 4.0, 8.0]
    assert histogram([1.0, 1.9, 2.0, 3.0, 7.9], edges) == [2, 2, 1]
    assert histogram([0.5, 8.0, 9.0], edges) == [1, 0, 2]  # outside: clamped to the end bins
    samples = [random.Random(1).lognormvariate(-7, 1) for _ in range(1000)]
    assert sum(histogram(samples, log_edges(min(samples), max(samples)))) == 1000


def test_interval_deviations_keep_arrival_order_and_sign() -> None:
    devs = interval_deviations([10.0, 11.0, 12.25, 12.75], 1.0)
    assert devs == [(1.0, 0.0), (2.25, 0.25), (2.75, -0.5)]
    assert interval_deviations([5.0], 1.0) == []


def test_failure_excerpt_prefers_pytest_error_lines() -> None:
    assert failure_excerpt(">   assert x\nE   assert 1 == 2\nE    + where\n\nfile.py:3: AssertionError") == [
        "E   assert 1 == 2", "E    + where"]
    assert failure_excerpt("\nSkipped: no relay\n") == ["Skipped: no relay"]


def test_recorder_rejects_values_that_cannot_be_plotted() -> None:
    rec = Recorder("sim")
    with pytest.raises(ValueError, match="baseline"):
        rec.latency("baseline", [0.001, 0.0])
    with pytest.raises(ValueError, match="finite"):
        rec.value("v", float("nan"), 1.0, 0.1)
    rec.jitter("t", [0, 1, 2])
    rec.jitter("t", [0, 1, 2])
    assert list(rec.jitters) == ["t", "t #2"]


# ---- SVG and the report --------------------------------------------------------------------


def test_charts_are_well_formed_svg_with_escaped_names() -> None:
    files = render(full_recorder(), META)
    for name in ("latency.svg", "jitter.svg", "relay.svg"):
        root = ET.fromstring(files[name])
        assert root.tag == f"{SVG}svg"
    texts = [t.text for t in ET.fromstring(files["latency.svg"]).iter(f"{SVG}text")]
    assert any(t and t.startswith(NASTY) for t in texts)
    assert "<b>" not in files["latency.svg"]


def test_latency_chart_draws_one_series_per_case_in_distinct_colours() -> None:
    root = ET.fromstring(latency_svg({f"c{i}": [0.0001 * (i + 1)] * 10 for i in range(8)}))
    paths = root.findall(f"{SVG}path")
    styles = {(p.get("stroke"), p.get("stroke-dasharray")) for p in paths}
    assert len(paths) == len(styles) == 8


def test_report_has_every_section_and_baseline_ratio() -> None:
    files = render(full_recorder(), META)
    md = files["report.md"]
    for heading in ("# HIL report: sim", "## Tests", "## Value-channel latency", "## Telemetry jitter",
                    "## Relay timing", "## Value checks", "## Notes"):
        assert heading in md
    assert "| baseline | 100 | 1.00 ms | 1.00 ms | 4.00 ms | 1.00× |" in md
    assert "| broker down | 100 | 2.00 ms | 2.00 ms | 9.00 ms | 2.00× |" in md
    assert "| 2 | mqtt | 10.000 s | 10.070 s | +70.0 ms | FAIL |" in md
    assert "| meter energy | 12 kWh | 10 kWh | +2 kWh | ±0.5 kWh | FAIL |" in md
    assert "E       assert 2 == 1" in md and "no relay on this bench" in md
    assert "Tests | 1 passed, 1 failed, 1 skipped |" in md
    for name in ("latency.svg", "jitter.svg", "relay.svg"):
        assert f"]({name})" in md
    assert all("`` " in line for line in md.splitlines() if "<b>" in line)  # raw only inside code spans
    assert "note with case &lt;b&gt;&amp;amp;" in md


def test_html_is_the_same_report_self_contained_and_parseable() -> None:
    files = render(full_recorder(), META)
    page = ET.fromstring(files["report.html"].removeprefix("<!DOCTYPE html>\n"))
    text = "".join(page.itertext())
    assert f"hil/test_x.py::test_y[{NASTY}]" in text
    assert len(list(page.iter(f"{SVG}svg"))) == 3
    assert "src=" not in files["report.html"] and "href=" not in files["report.html"]
    failed = [td for td in page.iter("td") if td.text == "failed"]
    assert failed and failed[0].get("class") == "bad"


def test_measurements_json_holds_raw_samples() -> None:
    data = json.loads(render(full_recorder(), META)["measurements.json"])
    assert data["latency"]["baseline"]["samples_s"][-1] == 0.004
    assert data["latency"]["baseline"]["summary"] == {"count": 100, "p50": 0.001, "p99": 0.001, "max": 0.004}
    assert len(data["jitter"]["health 1 Hz"]["timestamps_s"]) == 60
    assert data["relay"][1]["within_band"] is False
    assert [o["outcome"] for o in data["outcomes"]] == ["passed", "failed", "skipped"]


def test_output_is_deterministic_except_the_generated_line() -> None:
    a = render(full_recorder(), META)
    b = render(full_recorder(), META)
    assert a == b
    c = render(full_recorder(), ReportMeta("2027-01-01T00:00:00Z", META.host, META.omgw_version, META.python))
    diff = [(x, y) for x, y in zip(a["report.md"].splitlines(), c["report.md"].splitlines()) if x != y]
    assert diff == [("| Generated | 2026-01-02T03:04:05Z |", "| Generated | 2027-01-01T00:00:00Z |")]


def test_empty_recorder_reports_no_measurements(tmp_path: Path) -> None:
    (tmp_path / "relay.svg").write_text("stale chart of an earlier run")
    md = write_report(Recorder("sim"), tmp_path, meta=META)
    assert md == tmp_path / "report.md"
    assert "No measurements were recorded." in md.read_text()
    assert "No test outcomes were recorded." in md.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["measurements.json", "report.html", "report.md"]
    ET.fromstring((tmp_path / "report.html").read_text().removeprefix("<!DOCTYPE html>\n"))


def test_write_report_collects_meta_itself(tmp_path: Path) -> None:
    write_report(full_recorder(), tmp_path / "new" / "dir")
    data = json.loads((tmp_path / "new" / "dir" / "measurements.json").read_text())
    assert data["meta"]["generated_utc"].endswith("Z") and data["meta"]["omgw_version"]


# ---- pytest plugin -------------------------------------------------------------------------


def test_configure_junit_respects_an_explicit_junitxml(tmp_path: Path) -> None:
    given_cfg = SimpleNamespace(option=SimpleNamespace(xmlpath="mine.xml"))
    assert configure_junit(given_cfg, tmp_path) == Path("mine.xml")  # type: ignore[arg-type]
    default_cfg = SimpleNamespace(option=SimpleNamespace(xmlpath=None))
    assert configure_junit(default_cfg, tmp_path) == tmp_path / "junit.xml"  # type: ignore[arg-type]
    assert default_cfg.option.xmlpath == str(tmp_path / "junit.xml")


BENCH_CONFTEST = """
from pathlib import Path
import pytest
from hil.report import Recorder, ReportPlugin, add_report_options, configure_junit

RECORDER = Recorder("sim", "hil/benches/sim.yaml")

def pytest_addoption(parser):
    add_report_options(parser)

@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    out_dir = Path(config.getoption("hil_report"))
    configure_junit(config, out_dir)
    config.pluginmanager.register(ReportPlugin(RECORDER, out_dir), "hil-report")

@pytest.fixture
def recorder():
    return RECORDER

@pytest.fixture
def broken_bench():
    raise RuntimeError("bench power supply not answering")
"""

BENCH_TESTS = """
import pytest

def test_latency(recorder):
    recorder.latency("baseline", [0.001, 0.0012, 0.0011])

def test_reading(recorder):
    recorder.value("L1 <voltage>", 231.0, 230.0, 0.5, "V")
    assert 231.0 == 230.0

def test_needs_bench(broken_bench):
    pass

@pytest.mark.skip(reason="no relay on this bench")
def test_relay():
    pass

@pytest.mark.xfail(reason="known drift")
def test_drift():
    assert False
"""


def test_report_plugin_writes_report_and_junit_from_a_pytest_run(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(BENCH_CONFTEST)
    pytester.makepyfile(test_bench=BENCH_TESTS)
    out = pytester.path / "out"
    result = pytester.runpytest(f"--hil-report={out}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines([f"*HIL report: {out / 'report.md'}*"])
    assert {"report.md", "report.html", "latency.svg", "measurements.json", "junit.xml"} <= {
        p.name for p in out.iterdir()}
    data = json.loads((out / "measurements.json").read_text())
    assert {o["nodeid"].split("::")[1]: o["outcome"] for o in data["outcomes"]} == {
        "test_latency": "passed", "test_reading": "failed", "test_needs_bench": "error",
        "test_relay": "skipped", "test_drift": "xfailed"}
    details = {o["nodeid"].split("::")[1]: o["longrepr"] for o in data["outcomes"]}
    assert "bench power supply not answering" in details["test_needs_bench"]
    assert details["test_relay"] == "Skipped: no relay on this bench"
    md = (out / "report.md").read_text()
    assert "Tests | 1 passed, 1 failed, 1 skipped, 1 error, 1 xfailed |" in md
    assert "L1 &lt;voltage&gt;" in md
    junit = ET.parse(out / "junit.xml").getroot()
    assert junit.find("testsuite").get("tests") == "5"  # type: ignore[union-attr]
