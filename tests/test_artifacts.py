"""Tests for secureserve.artifacts: safe file access, refusals and hardened loading."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import hostile
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secureserve.artifacts import ArtifactRecord, Artifacts
from secureserve.errors import ArtifactError


def _fixtures_dir() -> Path:
    env = os.environ.get("SECURESERVE_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "fixtures"


FIXTURES = _fixtures_dir()
MANIFEST = (
    json.loads((FIXTURES / "manifest.json").read_text())
    if (FIXTURES / "manifest.json").is_file()
    else None
)
FIXTURE_MODELS = [m for m in (MANIFEST or {}).get("models", []) if m["expect"] != "helper"]
needs_fixtures = pytest.mark.skipif(MANIFEST is None, reason=f"no shared fixtures at {FIXTURES}")


def _clear(marker: Path | str | None) -> Path | None:
    if marker is None:
        return None
    path = Path(marker)
    path.unlink(missing_ok=True)  # raises (and fails the test) if it cannot be removed
    assert not path.exists()
    return path


def _load(artifacts: Artifacts, name: str):
    if name.endswith(".onnx"):
        return artifacts.onnx(name)
    return artifacts.safetensors(name)


def _models(tmp_path: Path, files: dict[str, bytes]) -> Path:
    model_dir = tmp_path / "models"
    model_dir.mkdir(exist_ok=True)
    for name, data in files.items():
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_bytes(data)
    return model_dir


def _run_iris(session) -> np.ndarray:
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    (probs,) = session.run(None, {"x": x})
    return probs


# --------------------------------------------------------------------------- shared fixtures


@needs_fixtures
@pytest.mark.parametrize(
    "entry",
    [m for m in FIXTURE_MODELS if m["expect"] == "refuse"],
    ids=lambda m: m["file"],
)
def test_artifacts_refuses_shared_fixture(tmp_path, entry):
    """Each hostile shared fixture is refused by content, naming the file; no payload runs."""
    marker = _clear(entry["marker"])
    if entry["file"].startswith("onnx_external_escape/"):
        model_dir = tmp_path / "onnx_external_escape"
        shutil.copytree(FIXTURES / "onnx_external_escape", model_dir)
        shutil.copy(FIXTURES / "outside.bin", tmp_path / "outside.bin")
        name = "model.onnx"
    else:
        name = entry["file"]
        model_dir = _models(tmp_path, {name: (FIXTURES / name).read_bytes()})
    with pytest.raises(ArtifactError) as caught:
        _load(Artifacts(model_dir), name)
    assert caught.value.reason == entry["reason"]
    assert caught.value.name == name
    assert str(caught.value).startswith(f"{name}: ")
    assert marker is None or not marker.exists()


@needs_fixtures
def test_artifacts_loads_shared_iris_safetensors(tmp_path):
    """The iris.safetensors control loads with the manifest's values."""
    entry = next(m for m in FIXTURE_MODELS if m["file"] == "iris.safetensors")
    data = (FIXTURES / "iris.safetensors").read_bytes()
    model_dir = _models(tmp_path, {"iris.safetensors": data})
    tensors = Artifacts(model_dir).safetensors("iris.safetensors")
    assert set(tensors) == set(entry["values"])
    for key, values in entry["values"].items():
        assert tensors[key].dtype == np.float32
        np.testing.assert_array_equal(tensors[key], np.array(values, dtype=np.float32))


@needs_fixtures
def test_artifacts_loads_shared_iris_onnx(tmp_path):
    """The iris.onnx control loads and each row of probabilities sums to 1."""
    model_dir = _models(tmp_path, {"iris.onnx": (FIXTURES / "iris.onnx").read_bytes()})
    probs = _run_iris(Artifacts(model_dir).onnx("iris.onnx"))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- generated files


@pytest.mark.parametrize("case", hostile.CASES, ids=lambda c: c.name)
def test_artifacts_refuses_hostile_file(tmp_path, case):
    """Each generated hostile file is refused with its reason, naming the file; no payload runs."""
    marker = _clear(case.marker)
    model_dir = tmp_path / "models"
    case.write(model_dir)
    with pytest.raises(ArtifactError) as caught:
        getattr(Artifacts(model_dir), case.method)(case.name)
    assert caught.value.reason == case.reason
    assert str(caught.value).startswith(f"{case.name}: ")
    assert marker is None or not marker.exists()


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        pytest.param(
            "m.safetensors",
            hostile.pickle_payload(2, "m"),
            "safetensors.torch.save_file",
            id="pickle",
        ),
        pytest.param("m.pt", hostile.zip_of([("a/data.pkl", b".")]), "state_dict", id="torch"),
        pytest.param("m.joblib", hostile.joblib_like("m"), "skl2onnx", id="joblib"),
        pytest.param("m.npy", hostile.npy_object("m"), "safetensors.numpy.save_file", id="npy"),
        pytest.param("m.h5", hostile.HDF5, "ONNX", id="hdf5"),
    ],
)
def test_artifacts_refusal_says_how_to_convert(tmp_path, name, data, words):
    """A refused format's message names what the file is and how to convert it."""
    model_dir = _models(tmp_path, {name: data})
    with pytest.raises(ArtifactError, match="not a safetensors file") as caught:
        Artifacts(model_dir).safetensors(name)
    assert words in str(caught.value)


def test_artifacts_safetensors_loads_generated_iris(tmp_path):
    """A valid safetensors file loads as numpy arrays with the stored values."""
    model_dir = _models(tmp_path, {"w.safetensors": hostile.valid_safetensors()})
    tensors = Artifacts(model_dir).safetensors("w.safetensors")
    np.testing.assert_array_equal(tensors["W"], hostile.IRIS_W)
    np.testing.assert_array_equal(tensors["b"], hostile.IRIS_B)


def test_artifacts_safetensors_refuses_onnx(tmp_path):
    """Asking for safetensors from an ONNX file is a wrong-format refusal."""
    model_dir = _models(tmp_path, {"m.onnx": hostile.valid_onnx()})
    with pytest.raises(ArtifactError, match="not a safetensors file") as caught:
        Artifacts(model_dir).safetensors("m.onnx")
    assert caught.value.reason == "wrong-format"


def test_artifacts_onnx_refuses_safetensors(tmp_path):
    """Asking for ONNX from a safetensors file is a wrong-format refusal."""
    model_dir = _models(tmp_path, {"m.safetensors": hostile.valid_safetensors()})
    with pytest.raises(ArtifactError, match="not an ONNX model") as caught:
        Artifacts(model_dir).onnx("m.safetensors")
    assert caught.value.reason == "wrong-format"


# --------------------------------------------------------------------------- ONNX


def test_artifacts_onnx_session_is_hardened(tmp_path):
    """The session runs on CPU with the configured thread counts."""
    model_dir = _models(tmp_path, {"iris.onnx": hostile.valid_onnx()})
    session = Artifacts(model_dir, onnx_threads=2).onnx("iris.onnx")
    options = session.get_session_options()
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.load_model_format") == "ONNX"
    np.testing.assert_allclose(_run_iris(session).sum(axis=1), 1.0, rtol=1e-5)


def test_artifacts_onnx_allowed_domain_passes_the_domain_check(tmp_path):
    """An allow-listed domain passes our check; onnxruntime's refusal becomes onnx-invalid."""
    model_dir = _models(tmp_path, {"m.onnx": hostile.valid_onnx(custom_domain="com.evil")})
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir, onnx_allowed_domains=["com.evil"]).onnx("m.onnx")
    assert caught.value.reason == "onnx-invalid"
    assert caught.value.__cause__ is not None
    assert "Pwn" not in str(caught.value)  # the library's words stay in the cause


def test_artifacts_onnx_refuses_custom_domain_in_subgraph(tmp_path):
    """A custom op hidden in an If branch is found."""
    from onnx import TensorProto, helper

    branch = helper.make_graph(
        [helper.make_node("Pwn", [], ["y"], domain="com.evil")],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model_dir = _models(tmp_path, {"m.onnx": model.SerializeToString()})
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir).onnx("m.onnx")
    assert caught.value.reason == "onnx-custom-domain"


def test_artifacts_onnx_refuses_too_many_nodes(tmp_path):
    """The node cap is enforced before a session is created."""
    model_dir = _models(tmp_path, {"m.onnx": hostile.valid_onnx()})
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir, max_onnx_nodes=2).onnx("m.onnx")
    assert caught.value.reason == "onnx-too-large"


def test_artifacts_onnx_loads_external_data_inside_folder(tmp_path):
    """External data beside the model is read, hashed, recorded and used."""
    weights = hostile.IRIS_W.tobytes()
    model_dir = _models(
        tmp_path,
        {
            "sub/m.onnx": hostile.valid_onnx(external_location="w.bin"),
            "sub/w.bin": weights,
        },
    )
    artifacts = Artifacts(model_dir)
    probs = _run_iris(artifacts.onnx("sub/m.onnx"))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert artifacts.opened["sub/w.bin"] == ArtifactRecord(
        name="sub/w.bin", sha256=hashlib.sha256(weights).hexdigest(), size=48, format="unknown"
    )
    assert set(artifacts.opened) == {"sub/m.onnx", "sub/w.bin"}


def test_artifacts_onnx_external_data_matches_inline_model(tmp_path):
    """A model with external W gives the same output as the inline model."""
    model_dir = _models(
        tmp_path,
        {
            "ext.onnx": hostile.valid_onnx(external_location="w.bin"),
            "w.bin": hostile.IRIS_W.tobytes(),
            "inline.onnx": hostile.valid_onnx(),
        },
    )
    artifacts = Artifacts(model_dir)
    np.testing.assert_array_equal(
        _run_iris(artifacts.onnx("ext.onnx")), _run_iris(artifacts.onnx("inline.onnx"))
    )


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        pytest.param(None, "onnx-external-data", id="missing-file"),
        pytest.param(b"\0" * 10, "onnx-external-data", id="file-too-short"),
    ],
)
def test_artifacts_onnx_refuses_bad_external_file(tmp_path, blob, reason):
    """A missing or too short external-data file is refused, naming the model."""
    files = {"m.onnx": hostile.valid_onnx(external_location="w.bin")}
    if blob is not None:
        files["w.bin"] = blob
    with pytest.raises(ArtifactError) as caught:
        Artifacts(_models(tmp_path, files)).onnx("m.onnx")
    assert caught.value.reason == reason
    assert caught.value.name == "m.onnx"


def test_artifacts_onnx_refuses_unknown_external_key(tmp_path):
    """External-data entries other than location/offset/length/checksum are refused."""
    import onnx

    model = onnx.ModelProto.FromString(hostile.valid_onnx(external_location="w.bin"))
    entry = model.graph.initializer[0].external_data.add()
    entry.key, entry.value = "basepath", "/etc"
    model_dir = _models(tmp_path, {"m.onnx": model.SerializeToString(), "w.bin": b"\0" * 48})
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir).onnx("m.onnx")
    assert caught.value.reason == "onnx-external-data"


def test_artifacts_onnx_refuses_non_utf8_external_location(tmp_path):
    """A location that is not UTF-8 (protobuf returns bytes) is refused cleanly."""
    data = hostile.valid_onnx(external_location="w.bin").replace(b"w.bin", b"w\xffbin")
    with pytest.raises(ArtifactError) as caught:
        Artifacts(_models(tmp_path, {"m.onnx": data})).onnx("m.onnx")
    assert caught.value.reason == "onnx-external-data"


def test_artifacts_onnx_invalid_keeps_library_message_in_cause(tmp_path, capfd):
    """A graph onnxruntime rejects becomes onnx-invalid with the library error chained.

    onnxruntime neither retries with fallback providers nor prints to stdout/stderr.
    """
    import onnx

    model = onnx.ModelProto.FromString(hostile.valid_onnx())
    model.graph.node[0].input[1] = "nowhere"
    model_dir = _models(tmp_path, {"m.onnx": model.SerializeToString()})
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir).onnx("m.onnx")
    assert caught.value.reason == "onnx-invalid"
    assert "nowhere" not in str(caught.value)
    assert "nowhere" in str(caught.value.__cause__)
    assert capfd.readouterr() == ("", "")


# --------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../secret", "a/../../secret", "a/../b", "a\\b", "a\x00b", ".", "./"],
)
def test_artifacts_refuses_invalid_name(tmp_path, name):
    """Empty, absolute, '..', backslash, NUL and folder names are refused before any I/O."""
    with pytest.raises(ArtifactError) as caught:
        Artifacts(_models(tmp_path, {})).text(name)
    assert caught.value.reason == "name-invalid"


def test_artifacts_refuses_symlink_escape(tmp_path):
    """A symlink that leaves the model folder is refused."""
    (tmp_path / "secret.txt").write_text("secret")
    model_dir = _models(tmp_path, {})
    (model_dir / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir).text("link.txt")
    assert caught.value.reason == "path-escape"


def test_artifacts_refuses_directory_symlink_escape(tmp_path):
    """A symlinked folder that leaves the model folder is refused."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "a.txt").write_text("secret")
    model_dir = _models(tmp_path, {})
    (model_dir / "sub").symlink_to(tmp_path / "outside")
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir).text("sub/a.txt")
    assert caught.value.reason == "path-escape"


def test_artifacts_follows_symlink_inside_folder(tmp_path):
    """A symlink that stays inside the folder is read (through its real path)."""
    model_dir = _models(tmp_path, {"real.txt": b"hello"})
    (model_dir / "alias.txt").symlink_to(model_dir / "real.txt")
    assert Artifacts(model_dir).text("alias.txt") == "hello"


def test_artifacts_model_dir_may_be_a_symlink(tmp_path):
    """The model folder itself is resolved once, so a symlinked folder works."""
    model_dir = _models(tmp_path, {"a.txt": b"x"})
    (tmp_path / "current").symlink_to(model_dir)
    assert Artifacts(tmp_path / "current").text("a.txt") == "x"


def test_artifacts_refuses_directory(tmp_path):
    """A folder is not a file."""
    model_dir = _models(tmp_path, {"sub/a.txt": b"x"})
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir).text("sub")
    assert caught.value.reason == "not-a-file"


def test_artifacts_refuses_path_through_a_file(tmp_path):
    """A path that treats a file as a folder is refused."""
    model_dir = _models(tmp_path, {"a.txt": b"x"})
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir).text("a.txt/b")
    assert caught.value.reason in {"not-a-file", "missing"}


def test_artifacts_refuses_fifo_without_blocking(tmp_path):
    """A FIFO is refused at once (opened non-blocking, then fstat)."""
    model_dir = _models(tmp_path, {})
    os.mkfifo(model_dir / "pipe")
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir).text("pipe")
    assert caught.value.reason == "not-a-file"


def test_artifacts_missing_file_names_it(tmp_path):
    """A missing file is reported with reason missing and its name."""
    with pytest.raises(ArtifactError, match=r"^nope\.onnx: ") as caught:
        Artifacts(_models(tmp_path, {})).onnx("nope.onnx")
    assert caught.value.reason == "missing"


def test_artifacts_refuses_oversized_file(tmp_path):
    """A file over max_file_bytes is refused before it is read."""
    model_dir = _models(tmp_path, {"w.safetensors": hostile.valid_safetensors()})
    with pytest.raises(ArtifactError) as caught:
        Artifacts(model_dir, max_file_bytes=64).safetensors("w.safetensors")
    assert caught.value.reason == "too-large"
    assert Artifacts(model_dir, max_file_bytes=64).opened == {}


# --------------------------------------------------------------------------- json, text, opened


def test_artifacts_json_decodes_strictly(tmp_path):
    """Metadata JSON decodes; NaN and trailing data are refused."""
    model_dir = _models(
        tmp_path,
        {
            "ok.json": b'{"labels": ["a", "b"]}',
            "nan.json": b"[NaN]",
            "tail.json": b"{} {}",
        },
    )
    artifacts = Artifacts(model_dir)
    assert artifacts.json("ok.json") == {"labels": ["a", "b"]}
    for name in ("nan.json", "tail.json"):
        with pytest.raises(ArtifactError) as caught:
            artifacts.json(name)
        assert caught.value.reason == "json-invalid"


def test_artifacts_text_refuses_non_utf8(tmp_path):
    """Text must be UTF-8."""
    with pytest.raises(ArtifactError) as caught:
        Artifacts(_models(tmp_path, {"a.txt": b"\xff"})).text("a.txt")
    assert caught.value.reason == "text-invalid"


def test_artifacts_metadata_cap(tmp_path, monkeypatch):
    """json() and text() refuse files over the metadata cap."""
    monkeypatch.setattr("secureserve.artifacts.MAX_METADATA_BYTES", 4)
    with pytest.raises(ArtifactError) as caught:
        Artifacts(_models(tmp_path, {"a.txt": b"hello"})).text("a.txt")
    assert caught.value.reason == "too-large"


def test_artifacts_opened_records_every_read(tmp_path):
    """Check that opened holds canonical name, sha256, size and format of the bytes read."""
    data = hostile.valid_safetensors()
    bad = hostile.pickle_payload(2, "opened")
    model_dir = _models(tmp_path, {"w.safetensors": data, "bad.pkl": bad})
    artifacts = Artifacts(model_dir)
    artifacts.safetensors("./w.safetensors")
    with pytest.raises(ArtifactError):
        artifacts.safetensors("bad.pkl")
    assert artifacts.opened["w.safetensors"] == ArtifactRecord(
        name="w.safetensors",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        format="safetensors",
    )
    assert artifacts.opened["bad.pkl"].format == "pickle"
    with pytest.raises(TypeError):
        artifacts.opened["x"] = artifacts.opened["bad.pkl"]  # read-only view


# --------------------------------------------------------------------------- fuzzing


_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
)


def _mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for kind, position, value in mutations:
        if not buf:
            break
        index = position % len(buf)
        if kind == "flip":
            buf[index] ^= value
        elif kind == "truncate":
            del buf[index:]
        else:
            buf.insert(index, value)
    return bytes(buf)


def _fuzz_load(method: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "m").write_bytes(data)
        Path(folder, "w.bin").write_bytes(hostile.IRIS_W.tobytes())
        try:
            result = getattr(Artifacts(Path(folder)), method)("m")
        except ArtifactError:
            return
    if method == "safetensors":
        assert all(isinstance(v, np.ndarray) for v in result.values())


@given(st.lists(_MUTATION, min_size=1, max_size=4))
@settings(max_examples=200, deadline=None)
def test_artifacts_safetensors_mutations_load_or_refuse(mutations):
    """A mutated safetensors file either loads or raises ArtifactError, nothing else."""
    _fuzz_load("safetensors", _mutate(hostile.valid_safetensors(), mutations))


@given(
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F16", "U8", "BF16", "F8_E4M3", "x"]),
            "shape": st.lists(st.integers(-1, 20), max_size=3),
            "data_offsets": st.lists(st.integers(-1, 70), min_size=2, max_size=2),
        }
    ),
    st.sampled_from(["W", "b"]),
)
@settings(max_examples=200, deadline=None)
def test_artifacts_safetensors_header_changes_load_or_refuse(entry, key):
    """Changing a header entry either loads consistently or raises ArtifactError."""
    data = hostile.safetensors_bytes(hostile.iris_header(**{key: entry}), hostile.IRIS_DATA)
    _fuzz_load("safetensors", data)


@given(st.lists(_MUTATION, min_size=1, max_size=4))
@settings(max_examples=200, deadline=None)
def test_artifacts_onnx_mutations_load_or_refuse(mutations):
    """A mutated ONNX file either loads or raises ArtifactError, nothing else."""
    _fuzz_load("onnx", _mutate(hostile.valid_onnx(), mutations))


@given(st.lists(_MUTATION, min_size=1, max_size=4))
@settings(max_examples=200, deadline=None)
def test_artifacts_onnx_external_mutations_load_or_refuse(mutations):
    """A mutated ONNX file with external data either loads or raises ArtifactError."""
    _fuzz_load("onnx", _mutate(hostile.valid_onnx(external_location="w.bin"), mutations))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_unlisted_pickle_is_named_a_pickle_not_sent_to_lock(tmp_path, protocol):
    """A file the lock does not list, of a format never loaded, says so at once.

    "Run secureserve lock" would only send the user to a command that refuses it too.
    The file is sniffed, never unpickled (the payload would leave a marker).
    """
    from secureserve.lockfile import build_lock, parse_lock

    (tmp_path / "model.pt").write_bytes(hostile.pickle_payload(protocol, "unlisted"))
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01 not a model format")
    artifacts = Artifacts(tmp_path, lock=parse_lock(build_lock({})))
    with pytest.raises(ArtifactError) as caught:
        artifacts.safetensors("model.pt")
    assert caught.value.reason == "pickle"
    assert "never loads" in str(caught.value)
    assert "secureserve lock`" not in str(caught.value)
    assert caught.value.__cause__.reason == "not-locked"
    with pytest.raises(ArtifactError) as other:  # not a never-loaded format: the lock's refusal
        artifacts.safetensors("notes.bin")
    assert other.value.reason == "not-locked"
    assert not hostile.marker_for("unlisted").exists()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # a checkpoint of some size: telling a torch zip from a zip takes its directory
        (
            hostile.zip_of(
                [
                    ("archive/data.pkl", hostile.pickle_payload(2, "big")),
                    ("archive/data/0", os.urandom(300_000)),
                ]
            ),
            "torch-zip",
        ),
        (hostile.pickle_payload(0, "big")[:-1] + b" " * 200_000 + b".", "pickle"),  # STOP last
        (b"\x1f\x8b" + os.urandom(200_000), "not-locked"),  # gzip: lockable, so "not listed"
    ],
)
def test_unlisted_large_files_are_named_right(tmp_path, data, reason):
    """Over 64 KiB too, an unlisted file is named by what it is, and only if never loaded."""
    from secureserve.lockfile import build_lock, parse_lock

    (tmp_path / "model.bin").write_bytes(data)
    artifacts = Artifacts(tmp_path, lock=parse_lock(build_lock({})))
    with pytest.raises(ArtifactError) as caught:
        artifacts.safetensors("model.bin")
    assert caught.value.reason == reason
