"""Operator-side key tools behind ``omgw keygen`` and ``omgw sign-command``.

Why this exists: the private key never lives on a gateway. An operator makes a key pair on their own
machine, pastes the printed ``[[commands.keys]]`` snippet into the fleet's config, and signs each
command locally. Guarantees: the private key file is created with mode 0600 and never overwritten;
``sign()`` refuses a private key file that group or others can read (as ssh does).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import TextIO

from appliance.health.commands import DEFAULT_TTL_S, generate_keypair, sign_command

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


class KeyFileError(Exception):
    """A private key file that is missing, unreadable, malformed or too widely readable."""


def toml_snippet(kid: str, public_b64: str, allowed: list[str] | None = None) -> str:
    """The ``[[commands.keys]]`` table for a public key (``allowed`` defaults to ``["ping"]``)."""
    allowed = allowed if allowed is not None else ["ping"]
    return (
        "[[commands.keys]]\n"
        f"kid = {json.dumps(kid)}\n"
        f"public_key = {json.dumps(public_b64)}\n"
        f"allowed = {json.dumps(allowed)}\n"
    )


def keygen(out_prefix: Path, *, kid: str | None = None, out: TextIO | None = None) -> tuple[Path, Path]:
    """Write ``<prefix>.key`` (0600, base64 raw private key) and ``<prefix>.pub``; print the TOML snippet.

    ``kid`` defaults to the prefix's file name. Raises FileExistsError rather than overwrite a key.
    """
    out_prefix = Path(out_prefix)
    priv_path = out_prefix.with_name(out_prefix.name + PRIVATE_SUFFIX)
    pub_path = out_prefix.with_name(out_prefix.name + PUBLIC_SUFFIX)
    if pub_path.exists():
        raise FileExistsError(f"{pub_path} exists; refusing to overwrite")
    priv_b64, pub_b64 = generate_keypair()
    # O_EXCL: never overwrite or follow a planted symlink; mode 0600 from creation (no chmod race).
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # in case the umask was stricter than needed or odd
        os.write(fd, (priv_b64 + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    pub_path.write_text(pub_b64 + "\n", encoding="ascii")
    (out or sys.stdout).write(toml_snippet(kid or out_prefix.name, pub_b64))
    return priv_path, pub_path


def read_private_key(private_key_file: Path) -> str:
    path = Path(private_key_file)
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} is too open; chmod 600 it")
    return text


def sign(
    private_key_file: Path, kid: str, gateway: str, name: str, args_json: str = "{}", ttl_s: int = DEFAULT_TTL_S
) -> bytes:
    """A signed command envelope (bytes to publish on ``omgw/v1/{gateway}/cmd/{name}``).

    Raises KeyFileError for the key file and ValueError for bad JSON, an unknown command, invalid
    arguments or a bad ttl.
    """
    try:
        args = json.loads(args_json)
    except ValueError as exc:
        raise ValueError(f"args are not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ValueError("args must be a JSON object")
    try:
        return sign_command(read_private_key(private_key_file), kid, name, gateway, args, ttl_s=ttl_s)
    except ValueError as exc:
        if "private key" in str(exc):
            raise KeyFileError(f"{private_key_file}: {exc}") from None
        raise
