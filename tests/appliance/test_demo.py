"""``omgw demo`` (the README's first command) runs, shows redacted traffic and exits cleanly."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_for_a_duration_and_exits_cleanly() -> None:
    result = subprocess.run([sys.executable, "-m", "appliance.cli", "demo", "--duration", "6"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    for cp in ("CP001", "CP002", "CP003"):
        assert re.search(rf"{cp}\s+ocpp(1\.6|2\.0\.1)\s+frames up\s+[1-9]", out), out[-2000:]
    assert '"BootNotification"' in out and '"Authorize"' in out
    # idTags leave the value channel only as keyed pseudonyms.
    assert re.search(r'"idTag":"hmac:[0-9a-f]{16}"', out)
    assert not re.search(r'"idTag":"04[0-9A-F]{8}"', out)
    assert '"dropped": 0' in out
