"""Secret files: created private and exclusively, read only when private and regular."""

from __future__ import annotations

import os
import stat

import pytest

from secureserve.config import load_settings
from secureserve.errors import ConfigError
from secureserve.keys import read_records
from secureserve.lockfile import read_lock
from secureserve.secretfiles import create_new, read_private, read_regular

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


# --- read_regular: every small file secureserve reads ----------------------------------


def _not_a_file(tmp_path, kind):
    path = tmp_path / "thing"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_read_regular_refuses_what_is_not_a_file_without_blocking(tmp_path, kind):
    path = _not_a_file(tmp_path, kind)
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_regular(path, max_bytes=100, source="the thing")


def test_read_regular_bounds_the_size(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 101)
    with pytest.raises(ConfigError, match="larger than 100 bytes"):
        read_regular(path, max_bytes=100, source="the thing")
    path.write_bytes(b"x" * 100)
    assert read_regular(path, max_bytes=100, source="the thing") == b"x" * 100
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing", max_bytes=100, source="the thing")


@pytest.mark.parametrize(
    "reader",
    [
        pytest.param(read_records, id="api-key-records"),
        pytest.param(read_lock, id="lock"),
        pytest.param(load_settings, id="settings"),
    ],
)
def test_readers_refuse_a_fifo_in_place_of_their_file(tmp_path, reader):
    """A FIFO where a settings, key or lock file should be is refused at once."""
    with pytest.raises(ConfigError, match="not a regular file"):
        reader(_not_a_file(tmp_path, "fifo"))
