"""The minilm handler: a sentence in, its all-MiniLM-L6-v2 embedding out.

Serve it with ``secureserve run --dev`` from this folder (``secureserve.toml``
names ``app:MiniLM``) once ``python fetch_weights.py`` has put the pinned files in
``models/``. Every file is read through ``Artifacts``, so each one is checked
against ``secureserve.lock`` before it is parsed: the weights as safetensors, the
tokenizer as text (``tokenizers`` builds it from that string), the configs as JSON.

The model is the 6-layer BERT encoder of sentence-transformers' all-MiniLM-L6-v2
(hidden size 384, 12 heads, exact GELU, LayerNorm eps 1e-12), written in numpy:
token, position and token-type embeddings, six attention + feed-forward blocks,
then the mean of the token vectors (padding left out) scaled to length 1.
"""

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
from scipy.special import erf
from tokenizers import Encoding, Tokenizer

import secureserve as ss

#: The longest text accepted, in characters (Unicode code points). Texts of more
#: than ``max_seq_length`` (256) tokens are cut to their first 256, as
#: sentence-transformers does; the cap keeps the tokenizer's work bounded too.
MAX_CHARS = 2048
DIMENSION = 384
#: Sentences per forward pass: a batch is sorted by length and run in chunks this
#: size, so short sentences are not padded to the longest one of a large batch and
#: the attention scores ([chunk, 12, n, n] float32) stay small.
CHUNK = 16


class Sentence(msgspec.Struct, forbid_unknown_fields=True):
    """One text to embed: 1 to 2048 characters (an empty text is refused with a 422)."""

    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CHARS)]


class Embedding(msgspec.Struct):
    """The text's embedding: 384 floats of Euclidean length 1 (compare with a dot product).

    ``truncated`` is true when the text was longer than 256 tokens and only its
    beginning was embedded. The floats are not scores (not probabilities in [0, 1]),
    so no output policy applies to them: see README.md, "What callers see".
    """

    embedding: Annotated[list[float], msgspec.Meta(min_length=DIMENSION, max_length=DIMENSION)]
    truncated: bool


#: A dense layer's (weight, bias), the weight transposed once so that ``x @ weight`` applies it.
Dense = tuple[np.ndarray, np.ndarray]
#: A LayerNorm's (weight, bias).
Norm = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Block:
    """One transformer layer's weights."""

    qkv: Dense  # [384, 3 * 384]: the query, key and value projections side by side
    attention_out: Dense  # [384, 384]
    attention_norm: Norm
    up: Dense  # [384, 1536]
    down: Dense  # [1536, 384]
    output_norm: Norm


def dense(x: np.ndarray, layer: Dense) -> np.ndarray:
    """Apply a dense layer to the rows of ``x``."""
    weight, bias = layer
    return x @ weight + bias


def layer_norm(x: np.ndarray, norm: Norm, eps: float) -> np.ndarray:
    """Normalise the last axis to mean 0 and variance 1, then scale and shift."""
    weight, bias = norm
    mean = x.mean(axis=-1, keepdims=True)
    variance = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * weight + bias


def gelu(x: np.ndarray) -> np.ndarray:
    """BERT's "gelu": the exact one, with erf (not the tanh approximation)."""
    return 0.5 * x * (1.0 + erf(x / np.float32(np.sqrt(2.0))))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    exp = np.exp(x - x.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def require(name: str, found: Any, expected: Any) -> None:
    """Refuse a config this forward pass does not implement (the handler stops loading)."""
    if found != expected:
        raise ss.ArtifactError(
            name, "unsupported", f"holds {found!r} where this handler runs {expected!r}"
        )


class MiniLM(ss.Model[Sentence, Embedding]):
    """all-MiniLM-L6-v2 sentence embeddings: BERT in numpy, mean pooling, unit length."""

    name = "minilm"
    version = "1.0.0"

    def load(self, artifacts: ss.Artifacts) -> None:
        """Read the configs, the tokenizer and the weights, each checked against the lock."""
        config = artifacts.json("config.json")
        for key, expected in (
            ("model_type", "bert"),
            ("hidden_act", "gelu"),
            ("position_embedding_type", "absolute"),
            ("hidden_size", DIMENSION),
        ):
            require("config.json", config.get(key), expected)
        pooling = artifacts.json("1_Pooling/config.json")
        for key in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens"):
            require(
                "1_Pooling/config.json", pooling.get(f"pooling_mode_{key}"), key == "mean_tokens"
            )
        self.max_tokens: int = artifacts.json("sentence_bert_config.json")["max_seq_length"]
        self.heads: int = config["num_attention_heads"]
        self.eps: float = config["layer_norm_eps"]

        self.tokenizer = Tokenizer.from_str(artifacts.text("tokenizer.json"))
        self.tokenizer.no_padding()  # the file pads to 128; chunks are padded below
        self.tokenizer.enable_truncation(max_length=self.max_tokens)

        w = artifacts.safetensors("model.safetensors")
        self.word = w["embeddings.word_embeddings.weight"]  # [30522, 384]
        self.position = w["embeddings.position_embeddings.weight"]  # [512, 384]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]  # one segment
        self.embedding_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.blocks = [
            self._block(w, f"encoder.layer.{i}.") for i in range(config["num_hidden_layers"])
        ]

    @staticmethod
    def _block(w: dict[str, np.ndarray], prefix: str) -> Block:
        """The weights of the layer whose tensor names start with ``prefix``."""

        def linear(name: str) -> Dense:
            return w[f"{prefix}{name}.weight"].T.copy(), w[f"{prefix}{name}.bias"]

        def norm(name: str) -> Norm:
            return w[f"{prefix}{name}.LayerNorm.weight"], w[f"{prefix}{name}.LayerNorm.bias"]

        q, k, v = (linear(f"attention.self.{name}") for name in ("query", "key", "value"))
        return Block(
            qkv=(np.hstack([q[0], k[0], v[0]]), np.concatenate([q[1], k[1], v[1]])),
            attention_out=linear("attention.output.dense"),
            attention_norm=norm("attention.output"),
            up=linear("intermediate.dense"),
            down=linear("output.dense"),
            output_norm=norm("output"),
        )

    def predict(self, batch: list[Sentence]) -> list[Embedding]:
        """Embed a batch: tokenize, then one forward pass per chunk of similar lengths."""
        encodings = self.tokenizer.encode_batch([sentence.text for sentence in batch])
        order = sorted(range(len(batch)), key=lambda i: len(encodings[i].ids))
        vectors = np.empty((len(batch), DIMENSION), dtype=np.float32)
        for start in range(0, len(order), CHUNK):
            chunk = order[start : start + CHUNK]
            vectors[chunk] = self.embed([encodings[i] for i in chunk])
        return [
            Embedding(embedding=vector, truncated=bool(encoding.overflowing))
            for vector, encoding in zip(vectors.tolist(), encodings, strict=True)
        ]

    def embed(self, encodings: list[Encoding]) -> np.ndarray:
        """Unit-length sentence vectors [len(encodings), 384] of tokenized texts."""
        n = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), n), dtype=np.int64)  # 0 is [PAD]
        mask = np.zeros((len(encodings), n), dtype=bool)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = True
        hidden = self.encode(ids, mask)  # [b, n, 384]
        counts = mask.sum(axis=1, keepdims=True).astype(np.float32)
        mean = (hidden * mask[:, :, None]).sum(axis=1) / counts
        return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """BERT's last hidden state [b, n, 384] for token ids [b, n] (mask: real tokens)."""
        b, n = ids.shape
        x = self.word[ids] + self.position[:n] + self.token_type
        x = layer_norm(x, self.embedding_norm, self.eps).reshape(b * n, DIMENSION)
        # Padding gets a large negative score, so no token attends to it.
        padding = np.where(mask, 0.0, -1e9).astype(np.float32)[:, None, None, :]
        for block in self.blocks:
            x = layer_norm(
                x + self.attention(x, padding, block, b, n), block.attention_norm, self.eps
            )
            up = gelu(dense(x, block.up))
            x = layer_norm(x + dense(up, block.down), block.output_norm, self.eps)
        return x.reshape(b, n, DIMENSION)

    def attention(
        self, x: np.ndarray, padding: np.ndarray, block: Block, b: int, n: int
    ) -> np.ndarray:
        """Multi-head self-attention over [b * n, 384] token vectors."""
        size = DIMENSION // self.heads
        qkv = dense(x, block.qkv)  # [b * n, 3 * 384]
        # -> three [b, heads, n, size] arrays
        q, k, v = qkv.reshape(b, n, 3, self.heads, size).transpose(2, 0, 3, 1, 4)
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(size)) + padding
        context = softmax(scores) @ v  # [b, heads, n, size]
        context = context.transpose(0, 2, 1, 3).reshape(b * n, DIMENSION)
        return dense(context, block.attention_out)
