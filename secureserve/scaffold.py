"""``secureserve new NAME``: render a new project from a template.

A template is a folder under ``templates/`` (shipped in the wheel as
``secureserve/_templates``), rendered over ``templates/common/``, which holds what
every project gets (settings, packaging, tests, Dockerfile, Kubernetes manifests, CI); the
two layers never hold the same file. Rendering is plain string replacement of three fixed
tokens, ``__project_name__``, ``__ProjectName__`` (its CamelCase) and
``__project-name__`` (with ``-`` for ``_``, for Kubernetes names), in file contents and
file names; nothing in a template is evaluated or formatted, and the
name is validated before anything is written. Each project then gets its own
generated files: a tiny deterministic model in the template's format (``model.onnx``
or ``model.safetensors``, the same weights either way) and its labels, synthetic
data from fixed seeds (``data/check.jsonl``, labelled, for ``secureserve check``, and
``data/train.jsonl``, the training sample) and the model's reference profile of that
sample (``models/profile.json``, built as ``secureserve profile`` builds it), an audit
digest key, an Ed25519 signing key pair, ``secureserve.lock`` and its signature.

Everything is built in a hidden folder beside the target and renamed into place at
the end, so a failure leaves nothing behind. Before the rename every file and folder is
given a fixed mode, whatever the umask: files 0644 and folders 0755, except
``secrets/`` (0700) and the files in it (0600). A group-writable model file, lock or
public key would let another user swap the model.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import keyword
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from uuid import uuid4

import numpy as np
import onnx
import safetensors.numpy
from onnx import TensorProto, helper, numpy_helper

from secureserve.audit import generate_digest_key
from secureserve.config import CONFIG_FILENAME, load_settings
from secureserve.errors import ConfigError
from secureserve.lockfile import SIGNATURE_FILENAME
from secureserve.model import Model
from secureserve.profile import (
    DEFAULT_PROFILE,
    build_profile,
    read_instances,
    schema_revision,
    write_profile,
)
from secureserve.release import lock_project, verify_project
from secureserve.signing import generate_signing_key, sign

__all__ = [
    "TEMPLATES",
    "Project",
    "class_name",
    "create_project",
    "templates_root",
    "validate_name",
]

#: Templates that can be rendered; the first is the default. Each has a model writer
#: in ``_MODEL_WRITERS``.
TEMPLATES: Final = ("onnx", "safetensors")

NAME_TOKEN: Final = "__project_name__"  # noqa: S105 - a template token, not a secret
CLASS_TOKEN: Final = "__ProjectName__"  # noqa: S105 - a template token, not a secret
DNS_TOKEN: Final = "__project-name__"  # noqa: S105 - a template token, not a secret
#: The project name is also the model name (``secureserve.model.NAME_PATTERN``: 63 at
#: most) and, with ``-`` for ``_``, the stem of Kubernetes object names, the longest
#: being ``NAME-redis``: Service names are DNS labels of 63 characters at most.
MAX_NAME_LENGTH: Final = 57
_NAME_RE: Final = re.compile(r"[a-z](?:[a-z0-9_]*[a-z0-9])?")
#: Import names of secureserve and the packages it depends on: a project named like
#: one of them would shadow it.
_RESERVED: Final = frozenset(
    {
        "secureserve",
        "starlette",
        "msgspec",
        "safetensors",
        "onnx",
        "onnxruntime",
        "structlog",
        "limits",
        "uvicorn",
        "uvloop",
        "httptools",
        "cryptography",
        "numpy",
        "prometheus_client",
        "jwt",
        "redis",
        "httpx2",
        "pytest",
        "app",
        "tests",
    }
)
#: Names the templates' handler module defines besides the handler class.
_TEMPLATE_NAMES: Final = frozenset({"Annotated", "Features", "Prediction", "Model"})
#: The layer every template is rendered over.
_COMMON: Final = "common"
#: Top-level template files and folders written under another name (dotfiles would be
#: easy to lose in packaging).
_RENAMES: Final = {"gitignore": ".gitignore", "dockerignore": ".dockerignore", "github": ".github"}
_SKIPPED: Final = frozenset({"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"})
#: The folder of private keys, and the modes of what ``new`` creates, in it and elsewhere.
_SECRETS: Final = "secrets"
_SECRET_DIR_MODE: Final = 0o700
_SECRET_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o755
_FILE_MODE: Final = 0o644

# The generated model: softmax(x @ W + b), two features -> two classes. Class 1
# ("second") wins exactly when the second feature is larger than the first. Every
# template gets these weights, in its own format.
_LABELS: Final = ("first", "second")
_WEIGHTS: Final = ((1.0, -1.0), (-1.0, 1.0))
_BIAS: Final = (0.0, 0.0)
_OPSET: Final = 17
_IR_VERSION: Final = 8

# The generated data, in data/: synthetic rows drawn from fixed seeds (numpy's PCG64),
# so every project gets the same bytes. Both features are uniform over the templates'
# schema bounds, rounded to one decimal. data/check.jsonl is labelled by the model's
# own rule (``second`` when the second feature is larger, else ``first``) with a fixed
# 3 % of the labels flipped, so that accuracy and the fairness figures are not
# trivially perfect; its ``cohort`` group column ("a" or "b") is drawn independently
# of the features, a stand-in for a real sensitive attribute. data/train.jsonl holds
# instances only, from another seed: the sample the reference profile describes.
_DATA: Final = "data"
_CHECK_DATA: Final = "check.jsonl"
_TRAIN_DATA: Final = "train.jsonl"
_CHECK_ROWS: Final = 200
_TRAIN_ROWS: Final = 500
_CHECK_SEED: Final = 20_240_613
_TRAIN_SEED: Final = 20_240_614
_FEATURE_BOUND: Final = 1000.0  # the templates' Features: each value in [-1000, 1000]
_DECIMALS: Final = 1
_FLIPPED_SHARE: Final = 0.03
_COHORTS: Final = ("a", "b")


@dataclass(frozen=True)
class Project:
    """What :func:`create_project` made."""

    path: Path
    files: tuple[str, ...]
    key_id: str


def validate_name(name: str) -> None:
    """Raise :class:`ConfigError` with a one-line reason unless ``name`` can name a project."""
    if not name:
        raise ConfigError("the project name is empty; give a name such as my_model.")
    if "/" in name or "\\" in name or name in {".", ".."} or os.sep in name:
        raise ConfigError(
            f"{name!r} is a path, not a name; give a plain name and the folder with --dir."
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(
            f"the project name is {len(name)} characters long; at most {MAX_NAME_LENGTH} "
            "are allowed."
        )
    if _NAME_RE.fullmatch(name) is None:
        raise ConfigError(
            f"{name!r} is not a valid project name: use lower-case letters, digits and "
            "underscores, starting with a letter and not ending with an underscore "
            "(e.g. my_model)."
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ConfigError(f"{name!r} is a Python keyword; choose another name.")
    if name in sys.stdlib_module_names:
        raise ConfigError(
            f"{name!r} is a standard-library module; a project named so would shadow it."
        )
    if name in _RESERVED:
        raise ConfigError(
            f"{name!r} is the name of secureserve, a package it uses, or a file of the "
            "project; choose another name."
        )
    if class_name(name) in _TEMPLATE_NAMES or keyword.iskeyword(class_name(name)):
        raise ConfigError(
            f"{name!r} would make the handler class {class_name(name)}, a name the "
            "template already uses; choose another name."
        )


def class_name(name: str) -> str:
    """CamelCase of a project name: ``fraud_score`` -> ``FraudScore``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def templates_root() -> Path:
    """The folder of templates: in the wheel, else beside the package (editable install)."""
    packaged = importlib.resources.files("secureserve") / "_templates"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    repository = Path(__file__).resolve().parents[1] / "templates"
    if repository.is_dir():
        return repository
    raise ConfigError(  # pragma: no cover - a broken installation
        "the project templates are missing from this secureserve installation; reinstall it."
    )


def create_project(name: str, *, parent: Path, template: str = TEMPLATES[0]) -> Project:
    """Render ``template`` into ``parent / name``; generate its model, data, profile, keys, lock.

    Raises :class:`ConfigError` (and writes nothing) when the name, the template or
    the target is refused.
    """
    validate_name(name)
    source = _template_dir(template)
    if not parent.is_dir():
        raise ConfigError(f"{parent} is not a folder; create it first or check --dir.")
    target = parent / name
    if os.path.lexists(target):
        raise ConfigError(f"{target} already exists; secureserve new never overwrites.")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".partial", dir=parent))
    try:
        tokens = {
            NAME_TOKEN: name,
            CLASS_TOKEN: class_name(name),
            DNS_TOKEN: name.replace("_", "-"),
        }
        for layer in (source.parent / _COMMON, source):
            _render(layer, staging, tokens)
        models = staging / "models"
        models.mkdir()
        _MODEL_WRITERS[template](models)
        (models / "labels.json").write_text(json.dumps(list(_LABELS)) + "\n", encoding="utf-8")
        _write_data(staging / _DATA)
        # before _secure: the lock and its signature must cover the profile
        _write_profile(staging, class_name(name))
        key_id = _secure(staging)
        files = tuple(
            sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        )
        _set_modes(staging)  # mkdtemp made it 0700; the umask chose the rest
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Project(path=target, files=files, key_id=key_id)


def _set_modes(project: Path) -> None:
    """Give every folder and file under ``project`` its fixed mode, whatever the umask."""
    for root, _, files in os.walk(project):
        folder = Path(root)
        secret = folder.relative_to(project).parts[:1] == (_SECRETS,)
        folder.chmod(_SECRET_DIR_MODE if secret else _DIR_MODE)
        for file in files:
            (folder / file).chmod(_SECRET_FILE_MODE if secret else _FILE_MODE)


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished project to ``target``, unless something appeared there meanwhile."""
    # os.rename would silently replace an empty folder created since the first check.
    if os.path.lexists(target):
        raise ConfigError(f"{target} appeared while rendering; nothing was written.")
    staging.rename(target)


def _template_dir(template: str) -> Path:
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}; choose one of: {', '.join(TEMPLATES)}.")
    folder = templates_root() / template
    if not folder.is_dir():  # pragma: no cover - a broken installation
        raise ConfigError(f"the {template} template is missing from {folder.parent}.")
    return folder


def _render(source: Path, destination: Path, replacements: dict[str, str]) -> None:
    """Copy ``source`` into ``destination``, replacing each token in names and text."""

    def replace(text: str) -> str:
        for token, value in replacements.items():
            text = text.replace(token, value)
        return text

    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED)
        relative = Path(root).relative_to(source)
        for file in sorted(files):
            if file.endswith(".pyc"):
                continue
            parts = (relative / file).parts
            name = Path(_RENAMES.get(parts[0], parts[0]), *parts[1:]).as_posix()
            out = destination / replace(name)
            if out.exists():  # pragma: no cover - a broken installation
                raise ConfigError(f"two template layers both write {name}; reinstall secureserve.")
            out.parent.mkdir(parents=True, exist_ok=True)
            content = (Path(root) / file).read_text(encoding="utf-8")
            out.write_text(replace(content), encoding="utf-8", newline="\n")


def _write_onnx_model(models: Path) -> None:
    """Write the deterministic two-class model as ``models/model.onnx``."""
    weights = np.array(_WEIGHTS, dtype=np.float32)
    bias = np.array(_BIAS, dtype=np.float32)
    n_features, n_classes = weights.shape
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["x", "W"], ["logits_raw"], name="matmul"),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"], name="add"),
            helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
        ],
        name="logistic_regression",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_features])],
        outputs=[helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_classes])],
        initializer=[
            numpy_helper.from_array(weights, name="W"),
            numpy_helper.from_array(bias, name="b"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        ir_version=_IR_VERSION,
        producer_name="secureserve-new",
    )
    onnx.checker.check_model(model, full_check=True)
    (models / "model.onnx").write_bytes(model.SerializeToString(deterministic=True))


def _write_safetensors_model(models: Path) -> None:
    """Write the same weights as ``models/model.safetensors``: tensors ``W`` and ``b``.

    No metadata: the header holds only the two tensors, so the bytes never vary.
    """
    tensors = {
        "W": np.array(_WEIGHTS, dtype=np.float32),
        "b": np.array(_BIAS, dtype=np.float32),
    }
    safetensors.numpy.save_file(tensors, models / "model.safetensors")


#: How each template's model file is written into the (existing) ``models`` folder.
_MODEL_WRITERS: Final[dict[str, Callable[[Path], None]]] = {
    "onnx": _write_onnx_model,
    "safetensors": _write_safetensors_model,
}


def _features(rng: np.random.Generator, rows: int) -> list[list[float]]:
    """``rows`` pairs uniform over the schema's bounds, rounded, without negative zeros."""
    values = np.round(rng.uniform(-_FEATURE_BOUND, _FEATURE_BOUND, size=(rows, 2)), _DECIMALS)
    return [[float(x) + 0.0 for x in row] for row in values]  # + 0.0 turns -0.0 into 0.0


def _write_data(data: Path) -> None:
    """Write ``data/check.jsonl`` (labelled, with a cohort) and ``data/train.jsonl``.

    The rows, the flipped labels and the cohorts come from fixed seeds in a fixed order
    of draws, and ``json.dumps`` writes a float the same way every time: the bytes
    never vary.
    """
    data.mkdir()
    rng = np.random.default_rng(_CHECK_SEED)
    features = _features(rng, _CHECK_ROWS)
    flipped = set(rng.permutation(_CHECK_ROWS)[: round(_FLIPPED_SHARE * _CHECK_ROWS)].tolist())
    cohorts = rng.integers(0, len(_COHORTS), size=_CHECK_ROWS)
    lines = []
    for index, (x1, x2) in enumerate(features):
        label = int(x2 > x1) ^ (index in flipped)  # the model's rule, 3 % flipped
        row = {
            "instance": {"features": [x1, x2]},
            "label": _LABELS[label],
            "group": {"cohort": _COHORTS[cohorts[index]]},
        }
        lines.append(json.dumps(row) + "\n")
    (data / _CHECK_DATA).write_text("".join(lines), encoding="utf-8", newline="\n")
    train = _features(np.random.default_rng(_TRAIN_SEED), _TRAIN_ROWS)
    text = "".join(json.dumps({"features": row}) + "\n" for row in train)
    (data / _TRAIN_DATA).write_text(text, encoding="utf-8", newline="\n")


def _write_profile(project: Path, handler: str) -> None:
    """Write ``models/profile.json``: the profile of ``data/train.jsonl``.

    The same steps as ``secureserve profile data/train.jsonl``, with the rendered
    handler class ``handler`` of ``app.py``.
    """
    with _rendered_handler(project / "app.py", handler) as cls:
        cls.check_definition()
        if cls.features is not Model.features:  # pragma: no cover - a broken installation
            raise ConfigError(
                f"the template's {handler} defines its own features(); reinstall secureserve."
            )
        rows = read_instances(project / _DATA / _TRAIN_DATA, cls)
        profile = build_profile(
            rows, cls.feature_columns(), model=cls.name, revision=schema_revision(cls.input_type)
        )
    write_profile(project / "models" / DEFAULT_PROFILE, profile)


@contextmanager
def _rendered_handler(app: Path, handler: str) -> Iterator[type[Model[Any, Any]]]:
    """The class ``handler`` of the rendered ``app``, imported under a private name.

    The module is in ``sys.modules`` only inside the ``with`` (some type machinery looks
    its module up there), under a name no other import uses, and ``sys.path`` is not
    touched: rendering many projects in one process neither reuses nor leaves a module.
    """
    module_name = f"_secureserve_new_{uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, app)
    if spec is None or spec.loader is None:  # pragma: no cover - app.py is a .py file
        raise ConfigError(f"cannot import the rendered {app.name}; reinstall secureserve.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        cls = getattr(module, handler, None)
        if not (isinstance(cls, type) and issubclass(cls, Model)):  # pragma: no cover
            raise ConfigError(
                f"the rendered {app.name} has no handler class {handler}; reinstall secureserve."
            )
        yield cls
    finally:
        sys.modules.pop(module_name, None)


def _secure(project: Path) -> str:
    """Create the audit and signing keys, lock and sign the model folder; return the key id."""
    secrets = project / _SECRETS
    secrets.mkdir(mode=_SECRET_DIR_MODE)  # owner-only before any key is written
    generate_digest_key(secrets / "audit-digest.key")
    private_key = secrets / "signing-key.pem"
    key_id = generate_signing_key(private_key, project / "signing-key.pub.pem")
    # The environment must not change what is written: read the rendered file alone.
    settings = load_settings(project / CONFIG_FILENAME, environ={})
    report = lock_project(settings)
    signature = sign(report.path.read_bytes(), private_key)
    (project / SIGNATURE_FILENAME).write_bytes(signature)
    check = verify_project(settings, settings.model.signing_public_key)
    if not check.ok:  # pragma: no cover - would be a bug in lock or sign
        raise ConfigError(f"the new project does not verify: {'; '.join(check.problems)}")
    return key_id
