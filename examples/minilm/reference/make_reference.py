"""Write ``embeddings.json``: reference embeddings from sentence-transformers itself.

Run once, by hand, in a throwaway environment (torch is heavy and never a
dependency of the example; only PyPI is needed, and a CPU build of torch)::

    python -m venv /tmp/ref
    /tmp/ref/bin/pip install torch sentence-transformers   # a CPU torch wheel will do
    /tmp/ref/bin/python reference/make_reference.py        # from examples/minilm

It loads ``../models`` (the files ``fetch_weights.py`` put there, checked against
``secureserve.lock``) with ``SentenceTransformer`` offline, embeds ``SENTENCES`` and
writes, for each, the token ids sentence-transformers fed the model and the 384
floats of its embedding, rounded to 7 significant digits. ``tests/test_minilm.py``
holds the numpy handler to these: the same token ids, cosine > 0.999.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "models"
OUT = HERE / "embeddings.json"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

_LONG = (
    "Serving a model over the network turns it into an API, and an API is attacked "
    "like any other: callers send what the schema forgot to forbid, replay stolen "
    "keys, query it thousands of times to copy it, or read the scores to learn about "
    "the data it was trained on. "
)
SENTENCES = [
    "This framework generates embeddings for each input sentence.",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "Hello",
    "WHAT IS THE CAPITAL OF FRANCE?",
    "Café au lait, naïve façade — 東京は日本の首都です 🙂",
    "def predict(batch): return [model(x) for x in batch]  # code, too",
    "   spaces   around   and\tbetween\nwords   ",
    # about 1,500 characters and well over 256 tokens: embedded after truncation
    _LONG * 5,
]


def main() -> None:
    """Embed ``SENTENCES`` with sentence-transformers and write ``embeddings.json``."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # the local folder only, never the Hub
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    weights = (MODELS / "model.safetensors").read_bytes()
    if hashlib.sha256(weights).hexdigest() != WEIGHTS_SHA256:
        raise SystemExit("models/model.safetensors is not the pinned file; run fetch_weights.py")
    model = SentenceTransformer(str(MODELS), device="cpu", local_files_only=True)
    vectors = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # renamed in 5.x
    entries = []
    for text, vector in zip(SENTENCES, vectors, strict=True):
        ids = tokenize([text])["input_ids"][0].tolist()
        entries.append(
            {
                "text": text,
                "input_ids": ids,
                "embedding": [float(f"{x:.7g}") for x in vector.tolist()],
            }
        )
    document = {
        "about": "sentence-transformers embeddings of the pinned all-MiniLM-L6-v2 files; "
        "written by make_reference.py",
        "model.safetensors sha256": WEIGHTS_SHA256,
        "max_seq_length": model.max_seq_length,
        "versions": {
            "sentence-transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }
    # one line per sentence: readable, and still plain JSON
    head = json.dumps(document, ensure_ascii=False, indent=1).removesuffix("\n}")
    lines = ",\n".join(json.dumps(entry, ensure_ascii=False) for entry in entries)
    OUT.write_text(f'{head},\n "sentences": [\n{lines}\n ]\n}}\n', encoding="utf-8")
    print(f"wrote {OUT} ({len(entries)} sentences)")


if __name__ == "__main__":
    main()
