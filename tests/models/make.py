#!/usr/bin/env python3
"""Builds the ONNX models tabi's wasi-nn tests use, and their reference outputs.

Run from anywhere: `python3 tests/models/make.py` (onnx and onnxruntime from PyPI). The
models are built with a pinned opset and weights from a seeded generator, so the same
script makes the same bytes; the reference outputs come from onnxruntime, never from tract,
which is what the tests check.

Each model goes to tests/models/NAME/model.onnx (the layout `--nn-graph onnx::DIR` reads),
with its inputs and reference outputs as raw little-endian tensors:
  input_K.bin / output_K.bin   the elements
  input_K.shape                dimensions, space-separated, and the element type
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
HERE = os.path.dirname(os.path.abspath(__file__))


def save(name, graph, inputs):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="tabi-tests",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model)
    out = os.path.join(HERE, name)
    os.makedirs(out, exist_ok=True)
    data = model.SerializeToString(deterministic=True)
    with open(os.path.join(out, "model.onnx"), "wb") as f:
        f.write(data)
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    outputs = sess.run(None, feeds)
    for kind, tensors in (("input", inputs), ("output", outputs)):
        for k, t in enumerate(tensors):
            t = np.ascontiguousarray(t)
            with open(os.path.join(out, f"{kind}_{k}.bin"), "wb") as f:
                f.write(t.astype(t.dtype.newbyteorder("<")).tobytes())
            with open(os.path.join(out, f"{kind}_{k}.shape"), "w") as f:
                f.write(" ".join(str(d) for d in t.shape) + f" {t.dtype.name}\n")
    print(f"{name}: {len(data)} bytes, outputs {[o.shape for o in outputs]}")


def cnn(rng):
    """A small image classifier: 1x1x28x28 -> conv3x3(8) relu pool -> conv3x3(16) relu
    pool -> dense(10) -> softmax."""
    w1 = rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (8,)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (16,)).astype(np.float32)
    w3 = rng.normal(0, 0.1, (16 * 5 * 5, 10)).astype(np.float32)
    b3 = rng.normal(0, 0.1, (10,)).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3"))
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    # The guest makes its own images; this one is the first it makes (see nn_classify.rs).
    save("cnn", graph, [guest_image(0)])


def guest_image(k):
    """The k-th image the classifier guest makes: a ring whose radius depends on k."""
    y, x = np.mgrid[0:28, 0:28].astype(np.float32)
    r = np.sqrt((x - 13.5) ** 2 + (y - 13.5) ** 2)
    img = np.exp(-((r - (4.0 + 3.0 * k)) ** 2) / 4.0).astype(np.float32)
    return img.reshape(1, 1, 28, 28)


def add(rng):
    """Two inputs, two outputs: sum = a + b, and argmax of the sum (an i64)."""
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("ArgMax", ["sum"], ["top"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("top", TensorProto.INT64, [1]),
        ],
    )
    a = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    b = np.array([[0.5, -1.0, 2.5, -4.0]], np.float32)
    save("add", graph, [a, b])


def main():
    rng = np.random.default_rng(20261207)
    cnn(rng)
    add(rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
