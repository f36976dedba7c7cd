"""``secureserve new NAME [--template {onnx,safetensors}] [--dir PARENT]``."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from secureserve.scaffold import TEMPLATES, create_project


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``new`` to the command line."""
    new = commands.add_parser(
        "new", parents=[common], help="create a project: handler, signed model, tests"
    )
    new.add_argument("name", help="project name: a Python package name, e.g. my_model")
    # Not choices=TEMPLATES: scaffold refuses an unknown template with a one-line reason,
    # like every other refusal of `new`, instead of argparse's usage error.
    new.add_argument(
        "--template",
        default=TEMPLATES[0],
        metavar="{" + ",".join(TEMPLATES) + "}",
        help=(
            "the model format to start from: onnx (a graph run by onnxruntime) or "
            f"safetensors (weights, forward pass in numpy in app.py) (default: {TEMPLATES[0]})"
        ),
    )
    new.add_argument(
        "--dir",
        type=Path,
        default=Path(),
        help="folder to create the project in (default: the working directory)",
    )
    new.set_defaults(func=_new)


def _new(args: argparse.Namespace) -> int:
    project = create_project(args.name, parent=args.dir, template=args.template)
    print(f"created {project.path}/")
    for name in project.files:
        print(f"  {name}")
    print(f"signed secureserve.lock with key {project.key_id}")
    print("secrets/ holds private keys (mode 0600) and is git-ignored: never commit it.")
    print("next steps, in this environment (it has secureserve; the project's README.md")
    print("shows how to give the project an environment of its own):")
    print(f"  cd {shlex.quote(str(project.path))} && pip install -e '.[test]' && pytest")
    print("  secureserve run --dev")
    print("  pip install 'secureserve[check]'")
    print("  secureserve check --data data/check.jsonl --sensitive cohort")
    return 0
