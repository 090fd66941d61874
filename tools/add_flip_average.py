"""Build mirror-image averaging into an exported ONNX classifier.

The new graph runs the original network on each image and on its left-right mirror
image in one batch and returns the mean of the two logits, as ``edgefx train classify``
exports by default (``FlipAveraged``). This tool does the same to a model whose
training checkpoint is gone, without PyTorch:

    python tools/add_flip_average.py models/classify-cifar10.onnx --version 3
    python tools/update_manifest.py

Before writing, it checks the new graph against the original run on both views, on
random inputs, and rejects the result when they differ by more than 1e-4.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgefx.classify import FLIP_AVERAGE_METADATA

TOLERANCE = 1e-4


def add_flip_average(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of a one-input, one-output classifier with flip averaging."""
    graph = proto.graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError("expected a graph with one image input and one logits output")
    image = inputs[0].name
    logits = graph.output[0].name
    output_dims = graph.output[0].type.tensor_type.shape.dim
    if len(output_dims) != 2 or not output_dims[1].dim_value:
        raise ValueError(
            "expected logits of shape (N, classes) with a fixed class count"
        )
    classes = output_dims[1].dim_value
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    if metadata.get("test_time_augmentation") == FLIP_AVERAGE_METADATA:
        raise ValueError("the model already averages mirror images")

    result = onnx.ModelProto()
    result.CopyFrom(proto)
    graph = result.graph
    both, both_logits = "flip_average_both", "flip_average_logits"
    for node in graph.node:
        node.input[:] = [both if name == image else name for name in node.input]
        node.output[:] = [
            both_logits if name == logits else name for name in node.output
        ]

    int64_min = np.iinfo(np.int64).min
    constants = {
        "flip_average_starts": [-1],
        "flip_average_ends": [int64_min],
        "flip_average_axes": [3],
        "flip_average_steps": [-1],
        "flip_average_shape": [2, -1, classes],
    }
    for name, values in constants.items():
        graph.initializer.append(
            helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
        )
    before = [
        helper.make_node(
            "Slice",
            [image, *list(constants)[:4]],
            ["flip_average_mirror"],
            name="flip_average_slice",
        ),
        helper.make_node(
            "Concat",
            [image, "flip_average_mirror"],
            [both],
            axis=0,
            name="flip_average_concat",
        ),
    ]
    # (2N, C) -> (2, N, C): the first N rows are the images, the next N their mirrors.
    after = [
        helper.make_node(
            "Reshape",
            [both_logits, "flip_average_shape"],
            ["flip_average_pairs"],
            name="flip_average_reshape",
        ),
        helper.make_node(
            "ReduceMean",
            ["flip_average_pairs"],
            [logits],
            axes=[0],
            keepdims=0,
            name="flip_average_mean",
        ),
    ]
    nodes = [*before, *graph.node, *after]
    del graph.node[:]
    graph.node.extend(nodes)

    metadata["test_time_augmentation"] = FLIP_AVERAGE_METADATA
    del result.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = result.metadata_props.add()
        entry.key = key
        entry.value = value
    onnx.checker.check_model(result)
    return result


def max_difference(original: onnx.ModelProto, averaged: onnx.ModelProto) -> float:
    """Compare the new graph with the original run on both views of random images."""
    import onnxruntime

    def session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
        return onnxruntime.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )

    plain, flipped = session(original), session(averaged)
    name = plain.get_inputs()[0].name
    shape = [dim if isinstance(dim, int) else 3 for dim in plain.get_inputs()[0].shape]
    images = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = (
        plain.run(None, {name: images})[0]
        + plain.run(None, {name: images[:, :, :, ::-1].copy()})[0]
    ) / 2
    actual = flipped.run(None, {name: images})[0]
    return float(np.max(np.abs(actual - expected)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="ONNX classifier, rewritten in place")
    parser.add_argument("--out", type=Path, help="write here instead of in place")
    parser.add_argument("--version", help="new value of the version metadata entry")
    args = parser.parse_args()

    original = onnx.load(str(args.model))
    try:
        averaged = add_flip_average(original)
    except ValueError as err:
        print(f"error: {args.model}: {err}", file=sys.stderr)
        return 2
    if args.version:
        for entry in averaged.metadata_props:
            if entry.key == "version":
                entry.value = args.version
    difference = max_difference(original, averaged)
    if difference > TOLERANCE:
        print(
            f"error: {args.model}: the new graph differs from the averaged original "
            f"by {difference:.2e}, above {TOLERANCE:.0e}",
            file=sys.stderr,
        )
        return 1
    out = args.out or args.model
    temporary = out.with_suffix(".tmp.onnx")
    onnx.save(averaged, str(temporary))
    temporary.replace(out)
    print(f"{out}: flip averaging added (max difference {difference:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
