"""Empirical bias correction of a quantized (QDQ) model's convolutions.

Rounding weights to 8 bits and clipping activations at calibrated ranges both shift
the mean of each convolution's output a little, and in a residual network the
shifts add up along the stream. After quantization this module runs the float model
and the QDQ model on the calibration inputs. One convolution at a time in graph order,
it moves each output channel's bias by the difference of the two means. This is the
empirical variant of bias correction in Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV 2019. Each correction is measured with
the earlier ones in place, so it also absorbs what they leave over.

NOTE: the means compared are those of the convolution's output before its 8-bit
rounding. A shift from clipping that output at its calibrated range is corrected only
through the next convolution, and not at all after the last one.

Only the bias changes: an int32 bias behind a DequantizeLinear moves by whole steps
of its scale, a float bias (a node left in float32) by the exact amount.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


def _channel_means(
    proto: onnx.ModelProto, names: Sequence[str], feeds: list[Feeds], threads: int
) -> dict[str, np.ndarray]:
    """Return the mean over batch and space of each tensor in ``names``, per channel."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    present = {output.name for output in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)
    for feed in feeds:
        values = session.run(list(names), feed)
        for name, value in zip(names, values, strict=True):
            axes = tuple(i for i in range(value.ndim) if i != 1)
            total = value.astype(np.float64).sum(axis=axes)
            sums[name] = sums.get(name, 0.0) + total
            counts[name] += value.size // value.shape[1]
    return {name: sums[name] / max(1, counts[name]) for name in names}


def _bias_source(
    proto: onnx.ModelProto, conv: onnx.NodeProto
) -> tuple[str, str | None] | None:
    """Return the bias initializer's name and its scale's (None for a float bias)."""
    if len(conv.input) < 3 or not conv.input[2]:
        return None
    initializers = {t.name for t in proto.graph.initializer}
    name = conv.input[2]
    if name in initializers:
        return name, None
    for node in proto.graph.node:
        if (
            node.op_type == "DequantizeLinear"
            and node.output[0] == name
            and node.input[0] in initializers
            and node.input[1] in initializers
        ):
            return node.input[0], node.input[1]
    return None


def correct_biases(
    float_model: onnx.ModelProto,
    quantized: onnx.ModelProto,
    feeds: list[Feeds],
    threads: int = 0,
) -> int:
    """Correct the conv biases of ``quantized`` in place and return how many moved.

    ``float_model`` is the float32 graph that was quantized (after any equalization),
    whose convolution nodes carry the same names as in ``quantized``.
    """
    from onnx import numpy_helper

    convs = [
        node
        for node in quantized.graph.node
        if node.op_type == "Conv" and _bias_source(quantized, node) is not None
    ]
    # The quantizer folds a ReLU after a convolution into the 8-bit range and names
    # the convolution's output after the ReLU's, so convolutions are matched by node
    # name, and the float target is the convolution's own output, before the ReLU.
    float_convs = {
        node.name: node.output[0]
        for node in float_model.graph.node
        if node.op_type == "Conv" and node.name
    }
    convs = [node for node in convs if node.name in float_convs]
    if not convs:
        return 0
    means = _channel_means(
        float_model, [float_convs[node.name] for node in convs], feeds, threads
    )
    targets = {node.output[0]: means[float_convs[node.name]] for node in convs}
    initializers = {t.name: t for t in quantized.graph.initializer}
    corrected = 0
    for conv in convs:
        output = conv.output[0]
        current = _channel_means(quantized, [output], feeds, threads)[output]
        shift = targets[output] - current
        source = _bias_source(quantized, conv)
        assert source is not None  # filtered above
        bias_name, scale_name = source
        bias = numpy_helper.to_array(initializers[bias_name])
        if scale_name is None:
            updated = (bias.astype(np.float64) + shift).astype(bias.dtype)
        else:
            scale = numpy_helper.to_array(initializers[scale_name]).astype(np.float64)
            steps = np.round(shift / scale)
            limit = np.iinfo(bias.dtype)
            updated = np.clip(bias.astype(np.int64) + steps, limit.min, limit.max)
            updated = updated.astype(bias.dtype)
        initializers[bias_name].CopyFrom(numpy_helper.from_array(updated, bias_name))
        logger.debug(
            "%s: bias moved by up to %.3g (mean %.3g)",
            conv.name or output,
            float(np.abs(shift).max()),
            float(shift.mean()),
        )
        corrected += 1
    return corrected
