"""Secret files: created private and exclusively, read only when private and regular."""

from __future__ import annotations

import os
import stat

import pytest

from secureserve.errors import ConfigError
from secureserve.secretfiles import create_new, read_private

ARGS = {"source": "[x] key_file", "exposure": "it leaks", "hint": "make one", "max_bytes": 64}


def test_create_new_writes_0600_and_never_overwrites(tmp_path):
    """A new secret file is 0600 whatever the umask, and an existing one is never replaced."""
    path = tmp_path / "k"
    old = os.umask(0)
    try:
        create_new(path, b"secret\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="never overwrites"):
        create_new(path, b"other\n", keeps="data would be lost")
    assert path.read_bytes() == b"secret\n"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_read_private_refuses_loose_modes(tmp_path, mode):
    """A key file others (or the group) may read or write is refused, naming the fix."""
    path = tmp_path / "k"
    path.write_bytes(b"secret")
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        read_private(path, **ARGS)
    assert "secret" not in str(info.value)


def test_read_private_reads_a_private_regular_file(tmp_path):
    """A 0600 regular file is read; a folder, a missing file and an oversize file are refused."""
    path = tmp_path / "k"
    create_new(path, b"secret")
    assert read_private(path, **ARGS) == b"secret"
    with pytest.raises(ConfigError, match="not a regular file"):
        read_private(tmp_path, **ARGS)
    with pytest.raises(ConfigError, match="does not exist"):
        read_private(tmp_path / "nope", **ARGS)
    big = tmp_path / "big"
    create_new(big, b"x" * 65)
    with pytest.raises(ConfigError, match="too large"):
        read_private(big, **ARGS)
