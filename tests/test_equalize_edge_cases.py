"""Channel-range equalization on small hand-built graphs that the shipped models do not
cover: tensors read inside If branches, bool and empty outputs, activations that
overflow to infinity and float16 weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefx.equalize import _output_change, equalize, find_groups

CHANNELS = 8
PADS = {"pads": [1, 1, 1, 1]}


def _weights(dtype: type = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    weights = {
        "w1": rng.normal(0, 0.3, (CHANNELS, 3, 3, 3)),
        "b1": rng.normal(0, 0.1, CHANNELS),
        "w2": rng.normal(0, 0.05, (3, CHANNELS, 3, 3)),
        "b2": np.zeros(3),
        "threshold": np.array(0.55),
    }
    return {name: value.astype(dtype) for name, value in weights.items()}


def _model(
    extra_nodes: list[onnx.NodeProto],
    outputs: list[onnx.ValueInfoProto],
    weights: dict[str, np.ndarray] | None = None,
    element_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """image -> Conv -> Relu (r1) -> Conv (noise), followed by ``extra_nodes``."""
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], **PADS),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["noise"], **PADS),
        helper.make_node("Sub", ["image", "noise"], ["denoised"]),
        *extra_nodes,
    ]
    weights = _weights() if weights is None else weights
    graph = helper.make_graph(
        nodes,
        "edge_case",
        [helper.make_tensor_value_info("image", element_type, [1, 3, None, None])],
        outputs,
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _output(name: str, element_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, element_type, None)


def _branch_model(then_node: onnx.NodeProto) -> onnx.ModelProto:
    """Add an If whose then-branch runs ``then_node`` on bright images only."""
    then_branch = helper.make_graph([then_node], "then", [], [_output("t_out")])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["denoised"], ["e_out"])],
        "else",
        [],
        [_output("e_out")],
    )
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
        helper.make_node("Greater", ["mean", "threshold"], ["bright"]),
        helper.make_node(
            "If",
            ["bright"],
            ["branch"],
            then_branch=then_branch,
            else_branch=else_branch,
        ),
        helper.make_node("Add", ["denoised", "branch"], ["result"]),
    ]
    return _model(nodes, [_output("result")])


def _run(model: onnx.ModelProto, image: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"image": image})


def _dark_feeds() -> list[dict[str, np.ndarray]]:
    """Three random images whose mean stays below the branch threshold."""
    rng = np.random.default_rng(1)
    return [
        {"image": rng.uniform(0, 0.9, (1, 3, 16, 16)).astype(np.float32)}
        for _ in range(3)
    ]


def test_if_branch_reader_blocks_group():
    # The then-branch reads r1 from the outer graph without naming it as an input.
    model = _branch_model(
        helper.make_node("ReduceMean", ["r1"], ["t_out"], axes=[1], keepdims=1)
    )
    assert find_groups(model) == []
    # The calibration images never take the branch, so the check on them cannot
    # catch a wrong rescaling. A bright image takes it.
    result = equalize(model, _dark_feeds())
    bright = np.full((1, 3, 16, 16), 0.9, np.float32)
    before = _run(model, bright)[0]
    after = _run(result.model, bright)[0]
    assert np.abs(after - before).max() < 1e-5


def test_if_branch_weight_blocks_group():
    model = _branch_model(
        helper.make_node("Conv", ["image", "w2", "b2"], ["t_out"], **PADS)
    )
    assert find_groups(model) == []


def test_bool_and_empty_outputs_compare():
    nodes = [
        helper.make_node("Greater", ["denoised", "threshold"], ["flag"]),
        helper.make_node("Greater", ["image", "five"], ["never"]),
        helper.make_node("NonZero", ["never"], ["empty"]),
    ]
    weights = _weights()
    weights["five"] = np.array(5.0, np.float32)  # above every pixel
    model = _model(
        nodes,
        [
            _output("denoised"),
            _output("flag", TensorProto.BOOL),
            _output("empty", TensorProto.INT64),
        ],
        weights,
    )
    result = equalize(model, _dark_feeds())
    assert result.groups == 1
    assert result.largest_change < 1e-5


def test_infinite_activation_leaves_group_alone():
    weights = _weights()
    # Channel 0 multiplies every pixel by -3e38, so its sum overflows to -inf before
    # the Relu.
    weights["w1"][0] = -3e38
    model = _model([], [_output("denoised")], weights)
    feeds = _dark_feeds()
    result = equalize(model, feeds)
    assert result.groups == 0
    after = _run(result.model, feeds[0]["image"])[0]
    assert np.isfinite(after).all()


def test_float16_weights_are_not_grouped():
    weights = _weights(np.float16)
    model = _model([], [_output("denoised", TensorProto.FLOAT16)], weights)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    assert find_groups(model) == []
    feeds = [{"image": np.full((1, 3, 8, 8), 0.5, np.float16)}]
    assert equalize(model, feeds).groups == 0


def test_output_change_counts_new_nan():
    ones = np.ones(3, np.float32)
    assert _output_change(ones, np.array([1, np.nan, 1], np.float32)) == np.inf
    nan = np.full(2, np.nan, np.float32)
    assert _output_change(nan, nan.copy()) == 0.0
    assert _output_change(np.array([True]), np.array([False])) == 1.0
    assert _output_change(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0
    # uint8 outputs are compared as numbers, not with wrap-around.
    assert _output_change(np.array([10], np.uint8), np.array([9], np.uint8)) == 0.1
