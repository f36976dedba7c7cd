"""The iris model as a tensor model: served over the Open Inference Protocol v2, no code.

Its inputs, outputs, datatypes and shapes come from ``models/iris.onnx`` (the iris
example's file, byte for byte): ``x`` FP32 [-1, 4] in, ``probs`` FP32 [-1, 3] out.
"""

import secureserve as ss


class IrisTensor(ss.TensorModel):
    """examples/iris's ONNX file, served as tensors on /v2."""

    name = "iris"
    version = "1"
    file = "iris.onnx"
    # each row's probabilities come from that row alone: waiting requests may share a run
    independent_rows = True
