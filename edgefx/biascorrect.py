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
of its scale, a float bias (a node left in float32) by the exact amount. A convolution
that shares its bias with another node gets a copy of it first.
"""

from __future__ import annotations

import logging
from collections import Counter
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


def _float_conv_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Map each name a quantized convolution's output can carry to the float output.

    The quantizer folds a ReLU or Clip that alone reads a convolution's output into
    the 8-bit range and gives the convolution the activation's output name (also
    along a chain of them). Output names are unique, unlike node names, which may be
    empty.
    """
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        tensor = node.output[0]
        outputs[tensor] = tensor
        following = readers.get(tensor, [])
        while len(following) == 1 and following[0].op_type in ("Relu", "Clip"):
            tensor = following[0].output[0]
            outputs[tensor] = node.output[0]
            following = readers.get(tensor, [])
    return outputs


def _unshare_biases(graph: onnx.GraphProto) -> None:
    """Give each convolution a bias tensor that no other node reads.

    Moving a shared bias would move the other readers' outputs too. The quantizer
    copies a bias shared by convolutions that it quantizes, but one left in float32
    (--exclude) can still read the same float initializer, or the same
    DequantizeLinear output, as another. The copy keeps the bias's 8-bit scale.
    """
    import onnx

    initializers = {t.name: t for t in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    readers = Counter(name for node in graph.node for name in node.input)
    used_names = set(initializers) | set(producers) | {v.name for v in graph.input}
    node_names = {node.name for node in graph.node}

    def fresh(name: str, used: set[str]) -> str:
        number = 1
        while f"{name}_{number}" in used:
            number += 1
        used.add(f"{name}_{number}")
        return f"{name}_{number}"

    nodes: list[onnx.NodeProto] = []
    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        bias = node.input[2] if node.op_type == "Conv" and len(node.input) > 2 else ""
        producer = producers.get(bias)
        if bias and readers[bias] > 1:
            if bias in initializers:
                source = bias
            elif producer is not None and producer.op_type == "DequantizeLinear":
                source = producer.input[0]
            else:
                source = ""
            if source in initializers:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(initializers[source])
                tensor.name = fresh(source, used_names)
                graph.initializer.append(tensor)
                if producer is None:
                    node.input[2] = tensor.name
                else:
                    dequantize = onnx.NodeProto()
                    dequantize.CopyFrom(producer)
                    dequantize.input[0] = tensor.name
                    dequantize.output[0] = fresh(bias, used_names)
                    if dequantize.name:
                        dequantize.name = fresh(dequantize.name, node_names)
                    nodes.append(dequantize)
                    node.input[2] = dequantize.output[0]
                readers[bias] -= 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def correct_biases(
    float_model: onnx.ModelProto,
    quantized: onnx.ModelProto,
    feeds: list[Feeds],
    threads: int = 0,
) -> int:
    """Correct the conv biases of ``quantized`` in place and return how many moved.

    ``float_model`` is the float32 graph that was quantized (after any equalization).
    Convolutions are matched by their output tensors, so nodes need no names. The
    float target is the convolution's own output, before any ReLU that the quantizer
    folded into it.
    """
    from onnx import numpy_helper

    float_outputs = _float_conv_outputs(float_model)
    _unshare_biases(quantized.graph)
    convs = [
        node
        for node in quantized.graph.node
        if node.op_type == "Conv"
        and node.output[0] in float_outputs
        and _bias_source(quantized, node) is not None
    ]
    if not convs:
        return 0
    means = _channel_means(
        float_model, [float_outputs[node.output[0]] for node in convs], feeds, threads
    )
    targets = {node.output[0]: means[float_outputs[node.output[0]]] for node in convs}
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
