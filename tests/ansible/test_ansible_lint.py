"""ansible/ is lint-clean (production profile) and every playbook parses.

Ansible writes nothing outside the test's tmp_path: ANSIBLE_HOME and ANSIBLE_LOCAL_TEMP point there.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ansible_run import ANSIBLE_DIR, BIN, ansible_env  # tests/ansible/ansible_run.py

PLAYBOOKS = sorted(p.name for p in ANSIBLE_DIR.glob("*.yml") if p.name in {"image.yml", "rollout.yml"})


@pytest.mark.timeout(600)
def test_ansible_lint_production_profile_is_clean(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-lint"), "--profile", "production", "--nocolor", "--offline"],
        # ansible-lint caches collections and roles under XDG_CACHE_HOME.
        cwd=ANSIBLE_DIR, env=ansible_env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache")), capture_output=True,
        text=True, timeout=580,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_playbook_exists() -> None:
    assert "image.yml" in PLAYBOOKS


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax_check(playbook: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        # omgw_version is a required extra var of both playbooks (the release being baked or rolled out).
        [str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", "-e", "omgw_version=0.0.0", playbook],
        cwd=ANSIBLE_DIR, env=ansible_env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache")), capture_output=True,
        text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
