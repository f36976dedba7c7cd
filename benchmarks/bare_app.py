"""The baseline for benchmarks/run.py: the Iris model behind a bare Starlette app.

One route, ``POST /v1/models/iris:predict``, with the same request and response
shapes as secureserve (``{"instances": [{"features": [4 floats]}]}`` in,
``{"predictions": [{"label", "score"}]}`` out), plus ``GET /readyz`` for the
cold-start measurement. It is what a careful developer would write without
secureserve, and no more:

* same TLS: the ``ssl.SSLContext`` comes from ``secureserve.tls.server_context``
  and reaches uvicorn through ``ssl_context_factory``, exactly as ``secureserve run``
  does it;
* same server stack: uvicorn with uvloop and httptools, access log off;
* same decode library: a typed ``msgspec.json.Decoder`` with the same bounds as the
  example's ``Flower`` (4 floats in [0, 50]), so the comparison does not charge
  secureserve for msgspec versus ``json``; but no duplicate-key scan;
* same model and runtime settings: ``models/iris.onnx`` in onnxruntime with one
  intra-op and one inter-op thread, sequential execution, no spinning (the
  session options secureserve's ``Artifacts.onnx`` sets);
* no authentication, request id, security headers, in-flight bound, access log,
  inference thread or output validation: ``session.run`` is called inline on the
  event loop, which for a model this small is the fastest a bare app can do.

Run: ``python benchmarks/bare_app.py --cert CERT --key KEY --port 18444
--model examples/iris/models``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np
import onnxruntime
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from secureserve.tls import server_context


class Flower(msgspec.Struct, forbid_unknown_fields=True):
    features: Annotated[
        list[Annotated[float, msgspec.Meta(ge=0, le=50)]],
        msgspec.Meta(min_length=4, max_length=4),
    ]


class PredictRequest(msgspec.Struct, forbid_unknown_fields=True):
    instances: Annotated[list[Flower], msgspec.Meta(min_length=1, max_length=64)]


class Species(msgspec.Struct):
    label: str
    score: float


class PredictResponse(msgspec.Struct):
    predictions: list[Species]


def build_app(model_dir: Path) -> Starlette:
    """Load the model (before serving, like secureserve) and return the app."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(
        str(model_dir / "iris.onnx"), options, providers=["CPUExecutionProvider"]
    )
    labels: list[str] = json.loads((model_dir / "labels.json").read_text())
    decoder = msgspec.json.Decoder(PredictRequest)
    encoder = msgspec.json.Encoder()
    session.run(["probs"], {"x": np.zeros((1, 4), dtype=np.float32)})  # warm-up

    async def predict(request: Request) -> Response:
        try:
            body = decoder.decode(await request.body())
        except (msgspec.ValidationError, msgspec.DecodeError):
            return Response(b'{"error":"bad request"}', 422, media_type="application/json")
        x = np.array([f.features for f in body.instances], dtype=np.float32)
        (probs,) = session.run(["probs"], {"x": x})
        best = probs.argmax(axis=1)
        out = PredictResponse(
            [
                Species(labels[i], round(float(row[i]), 2))  # as secureserve's policy rounds
                for i, row in zip(best, probs, strict=True)
            ]
        )
        return Response(encoder.encode(out), media_type="application/json")

    async def readyz(_: Request) -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/models/iris:predict", predict, methods=["POST"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18444)
    parser.add_argument("--model", type=Path, required=True, help="folder with iris.onnx")
    args = parser.parse_args()
    context = server_context(cert=args.cert, key=args.key)
    app = build_app(args.model)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="off",
        ssl_context_factory=lambda _config, _default: context,
        access_log=False,
        log_level="warning",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
