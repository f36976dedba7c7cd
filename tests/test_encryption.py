"""AES-256-GCM encryption at rest: round trips, every tampering class, keys, streaming."""

from __future__ import annotations

import base64
import functools
import io
import os
import stat
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secureserve import encryption
from secureserve.encryption import (
    KEY_ENV,
    MAGIC,
    decrypt,
    decrypt_file,
    encrypt_file,
    generate_key,
    is_encrypted,
    load_key,
)
from secureserve.errors import ArtifactError, ConfigError

CHUNK = 4096
TAG = 16
HEADER = 21
STEP = CHUNK + TAG
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK * 7 // 2]

MALFORMED = "encrypted-malformed"
TRUNCATED = "encrypted-truncated"
TAMPERED = "encrypted-wrong-key-or-tampered"


def _plaintext(size: int) -> bytes:
    return bytes((i * 31 + 7) % 251 for i in range(size))


def _encrypt_bytes(
    plaintext: bytes, folder: Path, *, chunk_size: int = CHUNK, key: bytes = KEY
) -> bytes:
    source, target = folder / "plain.bin", folder / "plain.bin.enc"
    source.write_bytes(plaintext)
    encrypt_file(source, target, key, chunk_size=chunk_size)
    data = target.read_bytes()
    source.unlink()
    target.unlink()
    return data


@functools.cache
def _sample(size: int = CHUNK * 7 // 2) -> bytes:
    """One encrypted file per size, made once (4 chunks for the default: 3 full + a half)."""
    with tempfile.TemporaryDirectory() as folder:
        return _encrypt_bytes(_plaintext(size), Path(folder))


def _reason(data: bytes, key: bytes = KEY) -> str:
    with pytest.raises(ArtifactError) as info:
        decrypt(data, key, name="model.onnx.enc")
    assert info.value.name == "model.onnx.enc"
    return info.value.reason


def _chunk(data: bytes, index: int) -> bytes:
    start = HEADER + index * STEP
    return data[start : start + STEP]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", SIZES)
def test_encrypt_then_decrypt_in_memory_round_trips(tmp_path, size):
    """Sizes around the chunk boundary come back byte for byte from decrypt()."""
    plaintext = _plaintext(size)
    data = _encrypt_bytes(plaintext, tmp_path)
    chunks = max(1, -(-size // CHUNK))
    assert len(data) == HEADER + size + chunks * TAG
    assert decrypt(data, KEY, name="m") == plaintext
    assert decrypt(memoryview(data), KEY, name="m") == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_encrypt_file_then_decrypt_file_round_trips(tmp_path, size):
    """File to file: the decrypted copy equals the source and is owner-only."""
    plaintext = _plaintext(size)
    source, sealed, opened = tmp_path / "a.bin", tmp_path / "a.bin.enc", tmp_path / "b.bin"
    source.write_bytes(plaintext)
    encrypt_file(source, sealed, KEY, chunk_size=CHUNK)
    decrypt_file(sealed, opened, KEY)
    assert opened.read_bytes() == plaintext
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    assert stat.S_IMODE(opened.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.bin.enc", "b.bin"]


def test_encrypt_file_default_chunk_size_round_trips(tmp_path):
    """Without chunk_size the 1 MiB default is used and the header records it."""
    source, sealed = tmp_path / "a.bin", tmp_path / "a.enc"
    plaintext = os.urandom(1024 * 1024 + 5)
    source.write_bytes(plaintext)
    encrypt_file(source, sealed, KEY)
    data = sealed.read_bytes()
    assert int.from_bytes(data[9:13], "big") == encryption.DEFAULT_CHUNK_SIZE
    assert decrypt(data, KEY, name="m") == plaintext


def test_encrypt_uses_a_fresh_nonce_prefix_per_file(tmp_path):
    """Encrypting the same file twice gives different nonce prefixes and ciphertexts."""
    first = _encrypt_bytes(b"same", tmp_path)
    second = _encrypt_bytes(b"same", tmp_path)
    assert first[13:21] != second[13:21]
    assert first[HEADER:] != second[HEADER:]


def test_is_encrypted_recognises_only_the_magic(tmp_path):
    """is_encrypted looks at the first 8 bytes only, for bytes and memoryviews."""
    data = _encrypt_bytes(b"x", tmp_path)
    assert data.startswith(MAGIC)
    assert len(MAGIC) == 8
    assert is_encrypted(data)
    assert is_encrypted(memoryview(data))
    assert not is_encrypted(b"")
    assert not is_encrypted(MAGIC[:7])
    assert not is_encrypted(b"\x08\x00\x00\x00\x00\x00\x00\x00{")


# --------------------------------------------------------------------------- rejections


def test_decrypt_refuses_wrong_key():
    """Another key fails the first tag: wrong-key-or-tampered."""
    assert _reason(_sample(), OTHER_KEY) == TAMPERED


def test_decrypt_refuses_wrong_key_on_single_full_chunk(tmp_path):
    """A one-full-chunk file under the wrong key is not mistaken for a truncation."""
    assert _reason(_encrypt_bytes(_plaintext(CHUNK), tmp_path), OTHER_KEY) == TAMPERED


@pytest.mark.parametrize(
    ("position", "xor", "reason"),
    [
        (0, 0x01, MALFORMED),  # magic, first byte
        (7, 0x01, MALFORMED),  # magic, last byte
        (8, 0x01, MALFORMED),  # version
        (9, 0xFF, MALFORMED),  # chunk size above 64 MiB
        (11, 0x10, MALFORMED),  # chunk size 0
        (9, 0x01, TAMPERED),  # chunk size still in range: every tag breaks
        (12, 0x01, TAMPERED),  # chunk size 4097
        (13, 0x01, TAMPERED),  # nonce prefix, first byte
        (20, 0x80, TAMPERED),  # nonce prefix, last byte
        (HEADER, 0x01, TAMPERED),  # first ciphertext byte
        (HEADER + STEP + 100, 0x01, TAMPERED),  # ciphertext of a middle chunk
        (HEADER + CHUNK, 0x01, TAMPERED),  # first tag byte of chunk 0
        (HEADER + STEP - 1, 0x01, TAMPERED),  # last tag byte of chunk 0
        (-17, 0x01, TAMPERED),  # last ciphertext byte of the final chunk
        (-1, 0x01, TAMPERED),  # last tag byte of the final chunk
    ],
    ids=lambda v: str(v) if not isinstance(v, str) else v,
)
def test_decrypt_refuses_flipped_byte(position, xor, reason):
    """Every byte class is covered: magic/version/range are malformed, the rest fail a tag."""
    data = bytearray(_sample())
    data[position] ^= xor
    assert _reason(bytes(data)) == reason


@pytest.mark.parametrize(
    ("length", "reason"),
    [
        (0, MALFORMED),  # nothing at all
        (1, TRUNCATED),  # mid-magic
        (8, TRUNCATED),  # magic only
        (9, TRUNCATED),  # magic and version
        (HEADER - 1, TRUNCATED),  # mid-header
        (HEADER, TRUNCATED),  # header, no chunk
        (HEADER + 10, TRUNCATED),  # inside the first tag's worth of bytes
        (HEADER + STEP, TRUNCATED),  # exactly after chunk 0
        (HEADER + 2 * STEP, TRUNCATED),  # exactly after chunk 1
        (HEADER + 3 * STEP, TRUNCATED),  # exactly before the final chunk
        (HEADER + STEP + 5, TRUNCATED),  # 5 bytes into chunk 1: less than a tag
        (HEADER + 2000, TAMPERED),  # mid-chunk: cannot be told from a modified chunk
        (HEADER + 3 * STEP + 100, TAMPERED),  # mid final chunk
        (-1, TAMPERED),  # last byte missing
    ],
)
def test_decrypt_refuses_truncated_file(length, reason):
    """A cut at a chunk boundary or in the header is 'truncated'; inside a chunk a tag fails."""
    assert _reason(_sample()[:length]) == reason


def test_decrypt_refuses_garbage_as_malformed():
    """Bytes that are not this format at all are malformed (named in the message)."""
    with pytest.raises(ArtifactError, match=r"model\.onnx\.enc: not a secureserve") as info:
        decrypt(b"\x08\x00\x00\x00\x00\x00\x00\x00{}" + bytes(40), KEY, name="model.onnx.enc")
    assert info.value.reason == MALFORMED


def test_decrypt_refuses_swapped_chunks():
    """Chunks 0 and 1 swapped: the counter in nonce and tag catches it."""
    data = _sample()
    swapped = data[:HEADER] + _chunk(data, 1) + _chunk(data, 0) + data[HEADER + 2 * STEP :]
    assert len(swapped) == len(data)
    assert _reason(swapped) == TAMPERED


@pytest.mark.parametrize("index", [0, 1, 2])
def test_decrypt_refuses_duplicated_chunk(index):
    """A full chunk repeated right after itself is refused."""
    data = _sample()
    end = HEADER + (index + 1) * STEP
    assert _reason(data[:end] + _chunk(data, index) + data[end:]) == TAMPERED


def test_decrypt_refuses_dropped_middle_chunk():
    """Removing chunk 1 shifts the counters: refused."""
    data = _sample()
    assert _reason(data[: HEADER + STEP] + data[HEADER + 2 * STEP :]) == TAMPERED


def test_decrypt_refuses_header_of_another_file():
    """The header is bound into every tag: another file's header breaks chunk 0."""
    with tempfile.TemporaryDirectory() as folder:
        other = _encrypt_bytes(_plaintext(CHUNK * 7 // 2), Path(folder))
    assert _reason(other[:HEADER] + _sample()[HEADER:]) == TAMPERED


@pytest.mark.parametrize("size", [CHUNK * 2, CHUNK * 7 // 2, 5])
@pytest.mark.parametrize("extra", [1, TAG, STEP, STEP + 3])
def test_decrypt_refuses_trailing_bytes_after_final_chunk(size, extra):
    """Anything appended after the final chunk is refused as tampering, full final chunk or not."""
    data = _sample(size)
    assert _reason(data + b"\x00" * extra) == TAMPERED


def test_decrypt_refuses_final_chunk_appended_twice():
    """Repeating a full final chunk makes it read as non-final: refused."""
    data = _sample(CHUNK * 2)
    assert _reason(data + _chunk(data, 1)) == TAMPERED


def test_decrypt_refuses_files_needing_more_than_max_chunks(monkeypatch):
    """The counter never wraps: past the chunk limit the file is malformed."""
    monkeypatch.setattr(encryption, "_MAX_CHUNKS", 3)
    assert _reason(_sample()) == MALFORMED


def test_encrypt_refuses_files_needing_more_than_max_chunks(tmp_path, monkeypatch):
    """encrypt_file refuses rather than wrap the counter, and leaves nothing behind."""
    monkeypatch.setattr(encryption, "_MAX_CHUNKS", 3)
    source = tmp_path / "a.bin"
    source.write_bytes(_plaintext(CHUNK * 7 // 2))
    with pytest.raises(ConfigError, match="2\\*\\*32 chunks"):
        encrypt_file(source, tmp_path / "a.enc", KEY, chunk_size=CHUNK)
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("chunk_size", [0, CHUNK - 1, 64 * 1024 * 1024 + 1])
def test_encrypt_refuses_chunk_size_out_of_range(tmp_path, chunk_size):
    """Chunk sizes outside 4 KiB..64 MiB are refused before anything is written."""
    source = tmp_path / "a.bin"
    source.write_bytes(b"x")
    with pytest.raises(ConfigError, match="chunk size"):
        encrypt_file(source, tmp_path / "a.enc", KEY, chunk_size=chunk_size)
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(33)])
def test_refuses_key_of_wrong_length(tmp_path, key):
    """Only a 32-byte key is accepted by encrypt_file, decrypt_file and decrypt."""
    source = tmp_path / "a.bin"
    source.write_bytes(b"x")
    with pytest.raises(ConfigError, match="32 bytes"):
        encrypt_file(source, tmp_path / "a.enc", key)
    with pytest.raises(ConfigError, match="32 bytes"):
        decrypt(_sample(), key, name="m")
    with pytest.raises(ConfigError, match="32 bytes"):
        decrypt_file(source, tmp_path / "b.bin", key)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("which", ["encrypt", "decrypt"])
def test_refuses_existing_target_and_leaves_it_alone(tmp_path, which):
    """Neither direction ever overwrites an existing target."""
    source, target = tmp_path / "a", tmp_path / "b"
    source.write_bytes(_sample() if which == "decrypt" else b"plain")
    target.write_bytes(b"keep me")
    function = decrypt_file if which == "decrypt" else encrypt_file
    with pytest.raises(ConfigError, match="already exists"):
        function(source, target, KEY)
    assert target.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("which", ["encrypt", "decrypt"])
def test_refuses_missing_or_irregular_source(tmp_path, which):
    """A missing source or a directory is a ConfigError naming it."""
    function = decrypt_file if which == "decrypt" else encrypt_file
    with pytest.raises(ConfigError, match="cannot be opened"):
        function(tmp_path / "missing", tmp_path / "out", KEY)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        function(tmp_path / "folder", tmp_path / "out", KEY)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[:8] + b"\x00" + d[9:], MALFORMED),
        (lambda d: d[: HEADER + 2 * STEP], TRUNCATED),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), TAMPERED),
        (lambda d: d + b"\x00", TAMPERED),
    ],
    ids=["malformed", "truncated-at-boundary", "final-tag-flipped", "trailing-byte"],
)
def test_decrypt_file_leaves_nothing_behind_on_failure(tmp_path, damage, reason):
    """Earlier chunks verified and written to the temp file are deleted with it on failure."""
    source, target = tmp_path / "m.enc", tmp_path / "m.bin"
    source.write_bytes(damage(_sample()))
    with pytest.raises(ArtifactError) as info:
        decrypt_file(source, target, KEY)
    assert info.value.reason == reason
    assert info.value.name == str(source)
    assert [p.name for p in tmp_path.iterdir()] == ["m.enc"]


def test_decrypt_file_wrong_key_leaves_nothing_behind(tmp_path):
    """A wrong key fails at chunk 0 and no plaintext file or temp file remains."""
    source = tmp_path / "m.enc"
    source.write_bytes(_sample())
    with pytest.raises(ArtifactError, match="failed authentication"):
        decrypt_file(source, tmp_path / "m.bin", OTHER_KEY)
    assert [p.name for p in tmp_path.iterdir()] == ["m.enc"]


class _ReadRecorder(io.RawIOBase):
    """Wraps a binary file and records the size asked for by every read."""

    def __init__(self, inner: io.BufferedReader, sizes: list[int]) -> None:
        super().__init__()
        self._inner = inner
        self._sizes = sizes

    def read(self, size: int = -1) -> bytes:
        self._sizes.append(size)
        return self._inner.read(size)

    def close(self) -> None:
        self._inner.close()
        super().close()


@pytest.mark.parametrize("which", ["encrypt", "decrypt"])
def test_streaming_never_reads_more_than_one_chunk(tmp_path, monkeypatch, which):
    """Every read of the source asks for at most one (sealed) chunk, never the whole file."""
    sizes: list[int] = []
    opener = encryption._open_regular
    monkeypatch.setattr(
        encryption, "_open_regular", lambda path: _ReadRecorder(opener(path), sizes)
    )
    source = tmp_path / "src"
    if which == "encrypt":
        source.write_bytes(_plaintext(CHUNK * 10 + 3))
        encrypt_file(source, tmp_path / "out", KEY, chunk_size=CHUNK)
        limit = CHUNK
    else:
        source.write_bytes(_sample())
        decrypt_file(source, tmp_path / "out", KEY)
        limit = STEP
    assert sizes
    assert all(0 < size <= limit for size in sizes)


@pytest.mark.parametrize("which", ["encrypt", "decrypt"])
def test_streaming_peak_memory_stays_small_on_20_mb(tmp_path, which):
    """A 20 MB file goes through with a few MiB of peak Python memory (1 MiB chunks)."""
    plain, sealed, out = tmp_path / "p", tmp_path / "p.enc", tmp_path / "out"
    size = 20 * 1024 * 1024
    with plain.open("wb") as handle:
        for _ in range(20):
            handle.write(os.urandom(1024 * 1024))
    if which == "decrypt":
        encrypt_file(plain, sealed, KEY)
    tracemalloc.start()
    try:
        if which == "encrypt":
            encrypt_file(plain, sealed, KEY)
        else:
            decrypt_file(sealed, out, KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * 1024 * 1024 < size


# --------------------------------------------------------------------------- keys


def test_generate_key_writes_32_bytes_base64_with_mode_0600(tmp_path):
    """The key file is owner-only, base64 plus LF, and loads back as 32 bytes."""
    path = tmp_path / "model.key"
    generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_bytes()
    assert text.endswith(b"\n")
    assert len(base64.b64decode(text, validate=False)) == 32
    assert load_key(key_file=path, environ={}) == base64.b64decode(text)


def test_generate_key_refuses_to_overwrite(tmp_path):
    """An existing key file is never replaced (files encrypted with it stay readable)."""
    path = tmp_path / "model.key"
    generate_key(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        generate_key(path)
    assert path.read_bytes() == before


def _key_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "k.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_load_key_file_wins_over_environment(tmp_path):
    """With both a key file and the variable, the file's key is used."""
    path = _key_file(tmp_path, base64.b64encode(KEY) + b"\n")
    environ = {KEY_ENV: base64.b64encode(OTHER_KEY).decode()}
    assert load_key(key_file=path, environ=environ) == KEY


def test_load_key_from_given_environment():
    """Without a key file the variable is decoded (surrounding whitespace ignored)."""
    environ = {KEY_ENV: " " + base64.b64encode(OTHER_KEY).decode() + "\n"}
    assert load_key(environ=environ) == OTHER_KEY


def test_load_key_defaults_to_os_environ(monkeypatch):
    """environ=None reads the process environment."""
    monkeypatch.setenv(KEY_ENV, base64.b64encode(KEY).decode())
    assert load_key() == KEY


def test_load_key_refuses_when_nothing_is_configured(monkeypatch):
    """No file and no variable: the message names both ways to give a key."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError) as info:
        load_key()
    assert KEY_ENV in str(info.value)
    assert "[model] encryption_key_file" in str(info.value)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("", "is empty"),
        ("not base64!", "not valid base64"),
        ("AAA", "not valid base64"),
        ("clé", "not valid base64"),
        (base64.b64encode(bytes(16)).decode(), "decodes to 16 bytes"),
        (base64.b64encode(bytes(33)).decode(), "decodes to 33 bytes"),
    ],
    ids=["empty", "bad-chars", "bad-padding", "non-ascii", "16-bytes", "33-bytes"],
)
def test_load_key_refuses_bad_environment_value(value, match):
    """A bad variable is named; its value never appears in the message."""
    with pytest.raises(ConfigError, match=match) as info:
        load_key(environ={KEY_ENV: value})
    assert KEY_ENV in str(info.value)
    if value:
        assert value not in str(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"%%%%\n", "not valid base64"),
        (base64.b64encode(bytes(16)) + b"\n", "decodes to 16 bytes"),
        (b"", "is empty"),
        (b"A" * 2000, "too large"),
    ],
    ids=["bad-base64", "16-bytes", "empty", "oversized"],
)
def test_load_key_refuses_bad_key_file(tmp_path, content, match):
    """A bad key file is named with the setting and the fix."""
    path = _key_file(tmp_path, content)
    with pytest.raises(ConfigError, match=match) as info:
        load_key(key_file=path, environ={KEY_ENV: base64.b64encode(KEY).decode()})
    assert str(path) in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_load_key_refuses_key_file_open_to_others(tmp_path, mode):
    """A key file group or others may read or write is refused, saying chmod 600."""
    path = _key_file(tmp_path, base64.b64encode(KEY), mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(key_file=path)


def test_load_key_refuses_missing_file_and_directory(tmp_path):
    """A missing key file and a directory are both refused with the path."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_key(key_file=tmp_path / "missing.key")
    folder = tmp_path / "dir.key"
    folder.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_key(key_file=folder)


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    plaintext=st.binary(max_size=3 * 6000),
    chunk_size=st.integers(min_value=CHUNK, max_value=6000),
)
def test_property_round_trip(plaintext, chunk_size):
    """Any plaintext with any chunk size comes back unchanged, in memory and file to file."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        data = _encrypt_bytes(plaintext, folder, chunk_size=chunk_size)
        assert decrypt(data, KEY, name="m") == plaintext
        (folder / "c").write_bytes(data)
        decrypt_file(folder / "c", folder / "p", KEY)
        assert (folder / "p").read_bytes() == plaintext


@settings(max_examples=300, deadline=None)
@given(
    size=st.sampled_from(SIZES),
    position=st.integers(min_value=0),
    xor=st.integers(min_value=1, max_value=255),
)
def test_property_single_byte_mutation_always_raises_artifact_error(size, position, xor):
    """Flipping any bits of any one byte raises ArtifactError, never another exception."""
    data = bytearray(_sample(size))
    data[position % len(data)] ^= xor
    with pytest.raises(ArtifactError):
        decrypt(bytes(data), KEY, name="m")


@settings(max_examples=200, deadline=None)
@given(size=st.sampled_from(SIZES), data=st.data())
def test_property_truncation_or_extension_always_raises_artifact_error(size, data):
    """Cutting the file anywhere, or appending bytes, raises ArtifactError only."""
    sealed = _sample(size)
    if data.draw(st.booleans(), label="cut"):
        damaged = sealed[: data.draw(st.integers(0, len(sealed) - 1), label="length")]
    else:
        damaged = sealed + data.draw(st.binary(min_size=1, max_size=STEP + 20), label="extra")
    with pytest.raises(ArtifactError):
        decrypt(damaged, KEY, name="m")
