"""The platform's signing secret when none is configured: random, per data dir, 0600.

Signed links, cloud-film unlock cookies and PIN digests are HMACs under this key. A key in
the source would let anyone forge them, so an install without LANCANG_SECRET_KEY gets one
generated on its first start, kept in `<data_dir>/secret_key` (owner read/write only) and
reused by every later start and every process of that data dir. It is never logged.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

FILE_NAME = "secret_key"
MIN_LENGTH = 32


class WeakSecret(ValueError):
    """A configured secret that must not protect patient data."""


def check_strength(secret: str) -> None:
    if len(secret) < MIN_LENGTH or "CHANGE-ME" in secret.upper():
        raise WeakSecret(
            f"LANCANG_SECRET_KEY must be a random value of at least {MIN_LENGTH} characters "
            "(e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`)")


def read_or_create(data_dir: Path, name: str = FILE_NAME) -> str:
    """The data dir's secret `name`, created on first use. Safe against concurrent first
    starts: the file appears complete (written elsewhere, then linked) or not at all."""
    path = Path(data_dir) / name
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails if another process won the race: use theirs
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it: tighten rather than keep serving
    secret = path.read_text(encoding="ascii").strip()
    check_strength(secret)
    return secret
