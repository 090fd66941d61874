"""Channel-range equalization before int8 quantization, on the shipped denoiser and
real photos: the float output must not change, the ranges must even out, and the int8
model must come closer to the float model than without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cpu_features import needs_vnni
from onnx import TensorProto, helper, numpy_helper

from edgefx.equalize import channel_ranges, equalize, find_groups
from edgefx.imageio import read_image
from edgefx.quality import add_noise
from edgefx.quantize import QuantizeOptions, denoise_feeds, quantize_model
from edgefx.registry import resolve_model


@pytest.fixture(scope="module")
def denoiser() -> onnx.ModelProto:
    return onnx.load(str(resolve_model("denoise-s", "denoise").path))


@pytest.fixture(scope="module")
def photo_feeds(samples_dir: Path) -> list[dict[str, np.ndarray]]:
    """Noisy 128x128 crops of the four clean sample photos, sigma 9 to 66."""
    return denoise_feeds(
        resolve_model("denoise-s", "denoise"), samples_dir / "clean", 4
    )


def test_denoiser_groups_are_the_stream_and_each_block(denoiser):
    groups = sorted(find_groups(denoiser), key=lambda group: -len(group.writers))
    assert len(groups) == 6
    stream = groups[0]
    # The head and five second convolutions write the residual stream; five first
    # convolutions and the tail read it.
    assert (len(stream.writers), len(stream.readers)) == (6, 6)
    assert all((len(g.writers), len(g.readers)) == (1, 1) for g in groups[1:])
    assert {group.channels for group in groups} == {64}


def test_equalize_keeps_output_and_evens_ranges(denoiser, photo_feeds):
    groups = find_groups(denoiser)
    before = channel_ranges(denoiser, groups, photo_feeds)
    result = equalize(denoiser, photo_feeds)
    assert result.groups == 6
    after = channel_ranges(result.model, groups, photo_feeds)
    for old, new in zip(before, after, strict=True):
        assert np.median(old / old.max()) < 0.8
        assert np.median(new / new.max()) > 0.99

    # A crop the ranges were not measured on gives the same float output.
    feed = dict(photo_feeds[1])
    feed["image"] = np.ascontiguousarray(feed["image"][:, :, ::-1, :])
    outputs = []
    for model in (denoiser, result.model):
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        outputs.append(session.run(None, feed)[0])
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-5


@needs_vnni
def test_equalized_int8_is_closer_to_float(data_dir, tmp_path):
    """Calibrated on 64 training crops, scored on 4 CBSD68 photos at sigma 25."""
    info = resolve_model("denoise-s", "denoise")
    photos = sorted((data_dir / "images" / "test" / "CBSD68").glob("*.png"))[::17]
    feeds = []
    for path in photos:
        clean = read_image(path).pixels[:320, :320, :3]  # even sides for the model
        noisy = add_noise(clean, 25, path.name).astype(np.float32) / 255.0
        feeds.append(
            {
                "image": np.ascontiguousarray(noisy.transpose(2, 0, 1)[None]),
                "noise_level": np.full((1, 1, 1, 1), 25 / 255, np.float32),
            }
        )
    session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    references = [session.run(None, feed)[0] for feed in feeds]
    errors = {}
    for equalized in (False, True):
        output = tmp_path / f"int8-{equalized}.onnx"
        options = QuantizeOptions(
            calibration=data_dir / "images" / "train" / "CBSD432",
            equalize=equalized,
            # The measurement below is of equalization alone.
            percentile=100.0,
            bias_correction=False,
        )
        quantize_model("denoise-s", output, options)
        metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
        assert ('"equalized"' in metadata["quantization"]) == equalized
        session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        squares = [
            np.mean(((session.run(None, feed)[0] - reference) * 255) ** 2)
            for feed, reference in zip(feeds, references, strict=True)
        ]
        errors[equalized] = float(np.sqrt(np.mean(squares)))
    # Measured: RMS 2.3 without and 1.7 with equalization (0-255 scale).
    assert errors[True] < 0.85 * errors[False], errors


def _chain(*, group: int = 1, relu_is_output: bool = False) -> onnx.ModelProto:
    """image -> Conv -> Relu -> Conv -> out, with 4 channels in the middle."""
    rng = np.random.default_rng(3)
    first = rng.normal(0, 0.5, (4, 2, 3, 3))
    second = rng.normal(0, 0.5, (2, 4 // group, 3, 3))
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["out"], pads=[1, 1, 1, 1], group=group),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if relu_is_output:
        outputs.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, 8, 8])],
        outputs,
        initializer=[
            numpy_helper.from_array(first.astype(np.float32), "w1"),
            numpy_helper.from_array(second.astype(np.float32), "w2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_groups_that_are_not_safe_are_left_alone():
    assert len(find_groups(_chain())) == 1
    # A tensor that is also a graph output, or a grouped convolution, rules it out.
    assert find_groups(_chain(relu_is_output=True)) == []
    assert find_groups(_chain(group=2)) == []
