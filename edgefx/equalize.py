"""Even out per-channel activation ranges of a float ONNX model before int8 rounding.

ONNX Runtime rounds each activation tensor to 8 bits with one scale for the whole
tensor. When a few channels reach values several times larger than the others, that
one scale is coarse for every other channel. A ReLU network allows an exact fix. Take
a positive factor ``s`` per channel: dividing a convolution's output channel by ``s``
and multiplying the next convolution's input channel by ``s`` leaves the float result
unchanged, because ReLU and addition commute with positive per-channel scaling. This
module picks ``s`` from the channel ranges seen on calibration inputs, so that every
channel of a tensor spans about the same range. The idea is the cross-layer
equalization of Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction" (ICCV 2019), applied to the activation ranges rather than the weight
ranges.

Tensors joined by ``Relu`` and ``Add`` nodes form a group that is rescaled together:
a residual stream, or one convolution's output and its ReLU. A group qualifies only
when every node that writes into it and every node that reads from it is a ``Conv``.
Any other writer or reader (an image input, ``Sub``, ``Concat``, a graph output, a
node inside an ``If`` or ``Loop`` body) leaves the group as it is. The float outputs
are checked before and after.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgefx.errors import ModelError

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]

# Channels whose range is below this fraction of the largest are scaled as if they
# reached it, so that a dead channel does not get an enormous factor.
MIN_RANGE_FRACTION = 1e-3
# Largest change of a float output allowed, relative to that output's largest value.
EQUIVALENCE_TOLERANCE = 1e-4
_JOINING_OPS = ("Relu", "Add")


@dataclass(frozen=True)
class Group:
    """Tensors that share one per-channel scale, with the Conv nodes around them."""

    tensors: tuple[str, ...]
    writers: tuple[int, ...]  # indices of the Conv nodes whose outputs are in the group
    readers: tuple[int, ...]  # indices of the Conv nodes that read the group
    channels: int


@dataclass(frozen=True)
class Equalized:
    model: onnx.ModelProto
    groups: int
    channels: int
    largest_change: float  # relative change of the float outputs on one input

    def describe(self) -> str:
        return f"{self.groups} tensor groups, {self.channels} channels rescaled"


def _find(parent: dict[str, str], name: str) -> str:
    while parent[name] != name:
        parent[name] = parent[parent[name]]
        name = parent[name]
    return name


def _subgraph_names(graph: onnx.GraphProto) -> set[str]:
    """Collect every tensor name read or output inside the subgraphs of ``graph``.

    A subgraph (the branches of If, the bodies of Loop and Scan) may read any tensor
    of the outer graph by name without listing it as an input of its node.
    """
    from onnx import AttributeProto

    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = list(attribute.graphs)
            if attribute.type == AttributeProto.GRAPH:
                subgraphs.append(attribute.g)
            for subgraph in subgraphs:
                for inner in subgraph.node:
                    names.update(inner.input)
                names.update(item.name for item in subgraph.output)
                names |= _subgraph_names(subgraph)
    return names


def find_groups(model: onnx.ModelProto) -> list[Group]:
    """Find the groups of tensors that can be rescaled per channel exactly."""
    graph = model.graph
    initializers = {item.name: item for item in graph.initializer}
    hidden = _subgraph_names(graph)
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    # A tensor or weight that a subgraph reads counts as one more use, so that it is
    # neither rescaled nor counted as used by one Conv alone.
    for name in hidden:
        uses[name] = uses.get(name, 0) + 1
    parent: dict[str, str] = {}

    def add(name: str) -> None:
        parent.setdefault(name, name)

    def union(first: str, second: str) -> None:
        add(first)
        add(second)
        parent[_find(parent, first)] = _find(parent, second)

    for node in graph.node:
        if node.op_type in _JOINING_OPS:
            names = [name for name in (*node.input, *node.output) if name]
            for name in names:
                add(name)
            for name in names[1:]:
                union(names[0], name)
        elif node.op_type == "Conv":
            add(node.input[0])
            add(node.output[0])
    members: dict[str, list[str]] = {}
    for name in parent:
        members.setdefault(_find(parent, name), []).append(name)

    boundary = (
        {item.name for item in graph.input}
        | {item.name for item in graph.output}
        | hidden
    )
    groups = []
    for tensors in members.values():
        group = _check_group(model, sorted(tensors), initializers, uses, boundary)
        if group is not None:
            groups.append(group)
    return groups


def _conv_weight(
    node: onnx.NodeProto, initializers: dict, uses: dict[str, int]
) -> np.ndarray | None:
    """Return a group-1 Conv's float32 weight if no other node uses its initializers."""
    from onnx import helper, numpy_helper

    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    attributes = {
        item.name: helper.get_attribute_value(item) for item in node.attribute
    }
    if attributes.get("group", 1) != 1:
        return None
    for name in node.input[1:]:
        if name and (name not in initializers or uses.get(name, 0) != 1):
            return None
    weight = numpy_helper.to_array(initializers[node.input[1]])
    # The probe in channel_ranges reads the activations as float32, and
    # _scale_initializer writes float32, so other weight types are left alone.
    if weight.dtype != np.float32 or weight.ndim < 3:
        return None
    return weight


def _check_group(
    model: onnx.ModelProto,
    tensors: list[str],
    initializers: dict,
    uses: dict[str, int],
    boundary: set[str],
) -> Group | None:
    names = set(tensors)
    if names & boundary or names & set(initializers):
        return None
    writers, readers = [], []
    channels = set()
    for index, node in enumerate(model.graph.node):
        if node.op_type in _JOINING_OPS:
            continue
        writes = [name for name in node.output if name in names]
        reads = [i for i, name in enumerate(node.input) if name in names]
        if not writes and not reads:
            continue
        weight = _conv_weight(node, initializers, uses)
        if weight is None:
            return None
        out_channels, in_channels = int(weight.shape[0]), int(weight.shape[1])
        if writes:
            writers.append(index)
            channels.add(out_channels)
        if reads:
            if reads != [0]:
                return None
            readers.append(index)
            channels.add(in_channels)
    if not writers or not readers or len(channels) != 1:
        return None
    return Group(tuple(tensors), tuple(writers), tuple(readers), channels.pop())


def channel_ranges(
    model: onnx.ModelProto,
    groups: list[Group],
    feeds: Iterable[Feeds],
    threads: int = 0,
) -> list[np.ndarray]:
    """Measure each group's largest absolute value per channel, over all its tensors."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = copy.deepcopy(model)
    existing = {item.name for item in probe.graph.output}
    exposed = sorted({name for group in groups for name in group.tensors} - existing)
    for name in exposed:
        probe.graph.output.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        )
    settings = ort.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), settings, providers=["CPUExecutionProvider"]
    )
    names = [item.name for item in session.get_outputs()]
    largest: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(None, feed), strict=True):
            if name in exposed and value.ndim >= 2:
                axes = tuple(axis for axis in range(value.ndim) if axis != 1)
                found = np.abs(value).max(axis=axes)
                previous = largest.get(name)
                largest[name] = (
                    found if previous is None else np.maximum(previous, found)
                )
    ranges = []
    for group in groups:
        seen = [largest[name] for name in group.tensors if name in largest]
        if not seen or any(item.shape != (group.channels,) for item in seen):
            raise ModelError(
                f"failed to measure the channels of {group.tensors[0]} on the "
                "calibration inputs"
            )
        ranges.append(np.max(seen, axis=0))
    return ranges


def _scale_initializer(
    model: onnx.ModelProto, name: str, factor: np.ndarray, axis: int
) -> None:
    from onnx import numpy_helper

    for item in model.graph.initializer:
        if item.name == name:
            values = numpy_helper.to_array(item).astype(np.float64)
            shape = [1] * values.ndim
            shape[axis] = factor.size
            scaled = (values * factor.reshape(shape)).astype(np.float32)
            item.CopyFrom(numpy_helper.from_array(scaled, name))
            return
    raise ModelError(f"initializer {name} disappeared while equalizing")


def _largest_change(
    original: onnx.ModelProto, changed: onnx.ModelProto, feed: Feeds, threads: int
) -> float:
    import onnxruntime as ort

    settings = ort.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.log_severity_level = 3
    outputs = []
    for model in (original, changed):
        session = ort.InferenceSession(
            model.SerializeToString(), settings, providers=["CPUExecutionProvider"]
        )
        outputs.append(session.run(None, feed))
    change = 0.0
    for before, after in zip(*outputs, strict=True):
        change = max(change, _output_change(np.asarray(before), np.asarray(after)))
    return change


def _output_change(before: np.ndarray, after: np.ndarray) -> float:
    """Return the largest change of one output relative to its largest finite value.

    Bool and integer outputs are compared as numbers, an empty output does not change,
    and a NaN or infinity that appears or moves counts as an infinite change.
    """
    if before.shape != after.shape:
        return float("inf")
    if before.size == 0:
        return 0.0
    if before.dtype.kind not in "biuf":
        return 0.0 if np.array_equal(before, after) else float("inf")
    old = before.astype(np.float64)
    new = after.astype(np.float64)
    same = (old == new) | (np.isnan(old) & np.isnan(new))
    difference = np.where(same, 0.0, np.abs(new - old))
    difference = np.nan_to_num(difference, nan=np.inf)
    finite = np.abs(old[np.isfinite(old)])
    peak = max(float(finite.max()) if finite.size else 0.0, 1.0)
    return float(difference.max()) / peak


def equalize(
    model: onnx.ModelProto, feeds: list[Feeds], strength: float = 1.0, threads: int = 0
) -> Equalized:
    """Return a copy of ``model`` with the channel ranges of its Conv groups evened out.

    With ``strength`` 1 every channel of a group spans the group's largest range, and
    0 changes nothing. Raises ModelError when the float outputs change by more than a
    rounding error, which would mean that a group was not safe to rescale.
    """
    if not feeds:
        raise ModelError("equalizing needs at least one calibration input")
    groups = find_groups(model)
    result = copy.deepcopy(model)
    if not groups:
        logger.info("found no Conv/Relu/Add tensor groups to equalize")
        return Equalized(result, 0, 0, 0.0)
    ranges = channel_ranges(model, groups, feeds, threads)
    nodes = result.graph.node
    channels = 0
    rescaled = 0
    for group, found in zip(groups, ranges, strict=True):
        if not np.all(np.isfinite(found)):
            # An infinite or NaN activation would turn every factor into NaN.
            logger.warning(
                "left %s as it is: it reaches infinity or NaN on the calibration "
                "inputs",
                group.tensors[0],
            )
            continue
        peak = float(found.max())
        if peak <= 0.0:
            continue
        factor = (np.maximum(found, MIN_RANGE_FRACTION * peak) / peak) ** strength
        # The group's values become x / factor: writers divide their output
        # channels, readers multiply their input channels.
        for index in group.writers:
            node = nodes[index]
            _scale_initializer(result, node.input[1], 1.0 / factor, axis=0)
            if len(node.input) > 2 and node.input[2]:
                _scale_initializer(result, node.input[2], 1.0 / factor, axis=0)
        for index in group.readers:
            _scale_initializer(result, nodes[index].input[1], factor, axis=1)
        channels += group.channels
        rescaled += 1
    change = _largest_change(model, result, feeds[0], threads)
    if change > EQUIVALENCE_TOLERANCE:
        raise ModelError(
            f"equalizing changed the float outputs by {change:.2g} of their range; "
            "quantize with --no-equalize"
        )
    logger.info(
        "equalized %d tensor groups (%d channels); float outputs changed by %.1g",
        rescaled,
        channels,
        change,
    )
    return Equalized(result, rescaled, channels, change)
