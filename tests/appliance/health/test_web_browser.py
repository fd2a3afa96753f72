"""The technician page end to end in headless Chromium against ``omgw demo`` on loopback.

The demo (a subprocess, its own process group) runs both channels on the simulated bench and
serves the page from its health process with a DevCA certificate; Chromium accepts exactly that
certificate (``--ignore-certificate-errors-spki-list`` with the leaf's key hash, which Chromium
honours with a fresh ``--user-data-dir``), not any certificate. Selenium drives
``/usr/bin/chromium`` through ``/usr/bin/chromedriver`` (Debian packages ``chromium``,
``chromium-driver``) at a phone-sized viewport.

Screenshots go to ``bench/out/web-e2e/`` (ignored by git); the test prints the folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.blackbox.snapshot import read_manifest, verify_snapshot

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "bench" / "out" / "web-e2e"

# ./dev installs chromium, chromium-driver, mosquitto and socat: in CI a missing one is a failure, not a skip.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    *([] if os.environ.get("CI") == "true" else [
        pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)),
                           reason="needs the Debian packages chromium and chromium-driver"),
        pytest.mark.skipif(not os.access("/usr/sbin/mosquitto", os.X_OK) or shutil.which("socat") is None,
                           reason="the demo needs mosquitto and socat"),
    ]),
]


def _wait(what: str, cond: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    """Poll ``cond``; an element the page re-rendered between lookup and use counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def _spki_hash(cert_pem: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class Demo:
    """``omgw demo`` in a subprocess; parses the page's URL, password and certificate from its output."""

    def __init__(self, duration: float, log: Path):
        self.log = log
        self.out = log.open("w+")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "demo", "--duration", str(duration)],
                                     cwd=ROOT, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)

    def page(self, timeout: float = 40) -> tuple[str, str, str, Path]:
        def found() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"demo exited {self.proc.returncode}:\n{self.log.read_text()}")
            return re.search(r"technician page (\S+) user (\S+) password (\S+) \(certificate from the demo CA (\S+)\)",
                             self.log.read_text())

        m = _wait("the demo to print the technician page", found, timeout)
        return m[1], m[2], m[3], Path(m[4])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the demo stops its own children on SIGTERM
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.out.close()


def _browser(profile: Path, downloads: Path, spki: str) -> Any:
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=412,915",
                 f"--ignore-certificate-errors-spki-list={spki}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _fetch_json(driver: Any, path: str) -> Any:
    """GET ``path`` from inside the page (its session cookie), as the server answers it now."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {cache: 'no-store'}).then(r => r.json()).then(done, e => done({error: String(e)}));",
        path)


def _attr(driver: Any, css: str, name: str) -> str | None:
    """An attribute of the live element in one script call: the page redraws rows and charts every second."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1]);", css, name)


def test_technician_page_in_headless_chromium_against_the_demo(tmp_path: Path) -> None:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    print(f"\nscreenshots and logs: {ARTIFACTS}")
    demo = Demo(150, ARTIFACTS / "demo.log")
    driver = None
    console: list[dict[str, Any]] = []
    try:
        url, user, password, ca_file = demo.page()
        leaf = ca_file.parent / "gateway-web.crt"
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        driver = _browser(tmp_path / "profile", downloads, _spki_hash(leaf))
        driver.set_script_timeout(10)
        shot = lambda name: driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))  # noqa: E731
        q = lambda css: driver.find_element(By.CSS_SELECTOR, css)  # noqa: E731
        qs = lambda css: driver.find_elements(By.CSS_SELECTOR, css)  # noqa: E731

        # -- login required; a wrong password is refused --------------------------------------------
        driver.get(url)
        _wait("the login form", lambda: q("#login").is_displayed(), 15)
        assert not q("#app").is_displayed()
        shot("01-login")
        q("#login-user").send_keys(user)
        q("#login-password").send_keys("not-the-password")
        q("#login-submit").click()
        _wait("the refusal", lambda: "wrong user name or password" in q("#login-error").text, 10)
        assert not q("#app").is_displayed()
        shot("02-login-refused")
        q("#login-password").clear()
        q("#login-password").send_keys(password)
        q("#login-submit").click()
        _wait("the dashboard", lambda: q("#app").is_displayed(), 15)
        assert q("#who").text == user

        # -- the chargers table and the charts fill and follow the gateway within 3 s ---------------
        _wait("three chargers", lambda: len(qs("#chargers-table tbody tr[data-cp]")) == 3, 20)
        _wait("a chart with points", lambda: int(_attr(driver, "#chart-meter-CP002-V svg", "data-points") or 0) > 3, 15)

        def dom_frames(cp: str) -> int:
            return int(_attr(driver, f'tr[data-cp="{cp}"]', "data-frames-up") or 0)

        before = dom_frames("CP002")
        server = _wait("CP002's frame counter to move on the server", lambda: next(
            (c["value"]["frames_up"] for c in _fetch_json(driver, "/api/chargers")["chargers"]
             if c["cp_id"] == "CP002" and c["value"] and c["value"]["frames_up"] > before), None), 20, 0.05)
        t0 = time.monotonic()
        _wait("the table to show it", lambda: dom_frames("CP002") >= server, 3, 0.05)
        table_lag = time.monotonic() - t0

        chart_t = int(_attr(driver, "#chart-meter-CP002-V svg", "data-last-t") or 0)
        newest = _wait("a new telemetry point on the server", lambda: (
            pts := _fetch_json(driver, "/api/telemetry?minutes=0.2")["points"]) and pts[-1]["t"] > chart_t
            and pts[-1]["t"], 10, 0.05)
        t0 = time.monotonic()
        _wait("the chart to draw it", lambda: int(_attr(driver, "#chart-meter-CP002-V svg", "data-last-t") or 0)
              >= newest, 3, 0.05)
        chart_lag = time.monotonic() - t0

        # The scripted fault: the watchdog power-cycles CP001 (offline for off_s = 2 s at ~14-18 s).
        _wait("CP001 offline on the server", lambda: any(
            c["cp_id"] == "CP001" and not c["connected"] for c in _fetch_json(driver, "/api/chargers")["chargers"]),
            60, 0.05)
        t0 = time.monotonic()
        _wait("the table to show CP001 offline",
              lambda: _attr(driver, 'tr[data-cp="CP001"]', "data-connected") == "false", 3, 0.05)
        offline_lag = time.monotonic() - t0
        shot("03-chargers-cp001-offline")
        print(f"page lag behind the server: table {table_lag:.2f} s, chart {chart_lag:.2f} s, "
              f"CP001 offline {offline_lag:.2f} s")
        assert max(table_lag, chart_lag, offline_lag) < 3

        # Phone-sized viewport: nothing wider than the screen outside the scrolling tables.
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"page is {overflow}px wider than the viewport"
        for section in ("telemetry", "health", "gateway"):
            driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", section)
            time.sleep(0.3)
            shot(f"04-{section}")
        assert "synchronised" in q("#gateway-info").text or "clock" in q("#gateway-info").text

        # -- the snapshot button: audited, cut, listed, downloadable, verifiable --------------------
        driver.execute_script("document.getElementById('snapshots').scrollIntoView()")
        q("#snapshot-btn").click()
        _wait("the request to be acknowledged", lambda: f"requested by {user}" in q("#snapshot-msg").text, 10)
        snap_id = _wait("the web snapshot in the list", lambda: driver.execute_script(
            "const r = [...document.querySelectorAll('#snapshots-table tr[data-snapshot]')]"
            ".find(r => r.innerText.includes(arguments[0])); return r && r.getAttribute('data-snapshot');",
            f"web: {user}"), 30, 0.25)
        shot("05-snapshots")
        _wait("the download link clicked", lambda: q(f'#snapshots-table tr[data-snapshot="{snap_id}"] a').click()
              or True, 10)
        archive = _wait("the download", lambda: (downloads / f"{snap_id}.tar.gz").exists()
                        and not list(downloads.glob("*.crdownload")) and downloads / f"{snap_id}.tar.gz", 20)
        assert verify_snapshot(archive) == []
        manifest = read_manifest(archive)
        assert manifest["snapshot_id"] == snap_id and f"web: {user}" in json.dumps(manifest["trigger"])
        with tarfile.open(archive) as tar:  # the audit record is in the black box and so in the archive
            text = "".join(tar.extractfile(m).read().decode() for m in tar.getmembers()  # type: ignore[union-attr]
                           if m.isfile() and m.name.endswith(".jsonl"))
        assert '"source":"web"' in text and f'"user":"{user}"' in text

        # -- no JavaScript errors while logged in -----------------------------------------------
        console += driver.get_log("browser")
        # -- lockout after repeated failures (last: it locks this client address for 60 s) ---------
        q("#logout").click()
        _wait("the login form again", lambda: q("#login").is_displayed(), 10)
        for i in range(5):
            q("#login-password").clear()
            q("#login-password").send_keys(f"guess-{i}")
            q("#login-submit").click()
            _wait(f"failure {i + 1}", lambda: q("#login-error").get_attribute("data-status") in ("401", "429")
                  and q("#login-submit").is_enabled(), 10)
        q("#login-password").clear()
        q("#login-password").send_keys(password)  # the right password, but locked
        q("#login-submit").click()
        _wait("the lockout", lambda: q("#login-error").text.startswith("Locked:"), 10)
        assert q("#login-error").get_attribute("data-status") == "429" and not q("#app").is_displayed()
        shot("06-locked-out")
        console += driver.get_log("browser")
    finally:
        (ARTIFACTS / "browser-console.json").write_text(json.dumps(console, indent=1))
        if driver is not None:
            driver.quit()
        demo.stop()
    # The only errors allowed are the browser's own notes on the refused logins (HTTP 401/429).
    errors = [e for e in console if e.get("level") == "SEVERE"
              and not re.search(r"/api/login - Failed to load resource: the server responded with a status of "
                                r"(401|429)", e.get("message", ""))]
    assert errors == [], errors
