"""Run one fuzz target under atheris (coverage-guided, libFuzzer): the long run, by hand.

Usage, from the project root::

    .venv/bin/python -m fuzz.run request_decoder --seconds 600
    .venv/bin/python -m fuzz.run lock_parser --runs 10000 --corpus /tmp/corpus
    .venv/bin/python -m fuzz.run safetensors_header --seconds 60 -- -max_len=65536

The corpus grows in ``fuzz/corpus/<target>/`` (git-ignored), seeded from
``fuzz.targets.SEEDS``; crashes are written to ``fuzz/corpus/<target>-crashes/``.
Replay a crash with ``python -m fuzz.run TARGET -- path/to/crash-file``. Arguments after
``--`` go to libFuzzer unchanged. Exit status 0 means no invariant broke.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT / "fuzz" / "corpus"
#: Only these modules are instrumented for coverage: the parsers and what they call.
INSTRUMENTED = (
    "secureserve.schema",
    "secureserve.strict_json",
    "secureserve.formats",
    "secureserve.lockfile",
    "fuzz.targets",
)
#: The keys of ``fuzz.targets.TARGETS``, known before that module is imported (instrumented).
TARGET_NAMES = ("request_decoder", "safetensors_header", "lock_parser")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, seed the corpus and hand over to libFuzzer."""
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n")[0])
    parser.add_argument("target", choices=TARGET_NAMES)
    parser.add_argument("--seconds", type=int, default=60, help="stop after this long")
    parser.add_argument("--runs", type=int, help="stop after this many inputs")
    parser.add_argument("--corpus", type=Path, help=f"corpus root (default {DEFAULT_CORPUS})")
    argv = sys.argv[1:] if argv is None else argv
    ours, libfuzzer_args = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    args = parser.parse_args(ours)
    try:
        import atheris  # optional: only the long run needs it
    except ImportError:
        print(
            "atheris is not installed (the dev extra has it on x86-64 Linux only); "
            "tests/test_fuzz.py drives the same targets with hypothesis.",
            file=sys.stderr,
        )
        return 2
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        from fuzz import targets  # imported here, so that it is instrumented

    root = args.corpus or DEFAULT_CORPUS
    corpus = root / args.target
    crashes = root / f"{args.target}-crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    for seed in targets.SEEDS[args.target]:
        (corpus / f"seed-{hashlib.sha256(seed).hexdigest()[:16]}").write_bytes(seed)
    replaying = any(not a.startswith("-") for a in libfuzzer_args)
    libfuzzer = [
        sys.argv[0],
        f"-max_total_time={args.seconds}",
        f"-artifact_prefix={crashes}/",
        "-max_len=16384",
        *([f"-runs={args.runs}"] if args.runs is not None else []),
        *libfuzzer_args,
        *([] if replaying else [str(corpus)]),
    ]
    target = targets.TARGETS[args.target]
    mutator = _safetensors_mutator(atheris) if args.target == "safetensors_header" else None
    atheris.Setup(libfuzzer, target, custom_mutator=mutator)
    atheris.Fuzz()  # exits the process: 0, or non-zero with the crashing input saved
    return 0  # pragma: no cover - atheris.Fuzz does not return


def _safetensors_mutator(atheris: Any) -> Callable[[bytes, int, int], bytes]:
    """libFuzzer's mutations applied to the JSON header or the data, length prefix kept right.

    Plain byte mutations almost always break the u64 header length, so the parser would
    stop at its first check; one mutation in ten still goes to the raw bytes.
    """

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        length = int.from_bytes(data[:8], "little")
        if len(data) < 8 or length > len(data) - 8 or rng.random() < 0.1:
            return bytes(atheris.Mutate(data, max_size))
        header, payload = data[8 : 8 + length], data[8 + length :]
        room = max(max_size - 8 - len(header) - len(payload), 0)
        if rng.random() < 0.8:
            header = bytes(atheris.Mutate(header, len(header) + room))
        else:
            payload = bytes(atheris.Mutate(payload, len(payload) + room))
        return len(header).to_bytes(8, "little") + header + payload

    return mutate


if __name__ == "__main__":
    sys.exit(main())
