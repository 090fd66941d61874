"""Tests of fine-tuning the denoiser on its int8 grid (edgefx.train.qat).

The simulation must round the same tensors to the same grids as ONNX Runtime's int8
model. So one test quantizes the shipped denoiser with `edgefx quantize`, reads the
int8 model's grid into the simulation and compares the rounded tensors on a real
photo. The CLI runs fine-tune for 2 steps on the sample photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cpu_features import needs_vnni

torch = pytest.importorskip("torch")

from cli_helpers import run_edgefx  # noqa: E402

from edgefx.registry import read_metadata, resolve_any_model  # noqa: E402
from edgefx.train.denoise import load_denoiser_weights  # noqa: E402
from edgefx.train.qat import (  # noqa: E402
    GridDenoiser,
    equalization_factors,
    read_grid,
    tensor_names,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"


def quantize(output: Path, *options: str) -> None:
    result = run_edgefx(
        "quantize",
        "denoise-s",
        "--calibrate",
        SAMPLES / "clean",
        "--samples",
        "4",
        "--threads",
        "1",
        "--exclude",
        "/tail/Conv",
        "-o",
        output,
        *options,
    )
    assert result.returncode == 0, result.stderr


def photo_feeds() -> dict[str, np.ndarray]:
    bgr = cv2.imread(str(SAMPLES / "noisy" / "coffee.png"))
    image = np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)[None]) / 255.0
    return {
        "image": image.astype(np.float32),
        "noise_level": np.full((1, 1, 1, 1), 25 / 255, np.float32),
    }


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture(scope="module")
def plain_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped denoiser quantized without equalization or bias correction."""
    output = tmp_path_factory.mktemp("qat") / "plain-int8.onnx"
    quantize(output, "--no-equalize", "--no-bias-correction")
    return output


@needs_vnni
def test_simulation_matches_ort_int8(plain_int8: Path) -> None:
    proto = onnx.load(str(plain_int8))
    grid = read_grid(proto)
    assert "/body/body.0/relu/Relu_output_0" in grid
    assert "/tail/Conv_output_0" not in grid  # the tail stays in float32
    # Make the int8 model return each rounded activation (its DequantizeLinear
    # output) beside the photo.
    dequantized = {
        node.input[0].removesuffix("_QuantizeLinear_Output"): node.output[0]
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0].endswith("_QuantizeLinear_Output")
    }
    for name in dequantized.values():
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    session = ort.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = photo_feeds()
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, feeds), strict=True))

    simulated = GridDenoiser(
        load_denoiser_weights(resolve_any_model("denoise-s").path), grid, ("tail",)
    )
    seen: dict[str, np.ndarray] = {}
    round_tensor = simulated._round

    def recording(x: torch.Tensor, name: str) -> torch.Tensor:
        rounded = round_tensor(x, name)
        seen[name] = rounded.numpy()
        return rounded

    simulated._round = recording  # type: ignore[method-assign]
    with torch.no_grad():
        simulated(*(torch.from_numpy(v) for v in feeds.values()))

    # Up to the first block's sum, the simulation rounds to the same 8-bit values as
    # ONNX Runtime, except for near-ties (0.3 % of the values at most on this photo).
    # There float32 sums in another order land on the other side. Later layers pass
    # those one-step differences on and multiply them, so they are not compared.
    first = [
        "/Concat_1_output_0",
        "/relu/Relu_output_0",
        "/body/body.0/relu/Relu_output_0",
        "/body/body.0/conv2/Conv_output_0",
        "/body/body.0/Add_output_0",
    ]
    for name in first:
        step = grid[name][0]
        differ = np.abs(seen[name] - outputs[dequantized[name]]) > step / 2
        assert differ.mean() < 0.01, name


def test_simulation_without_grid_is_the_float_model() -> None:
    model = load_denoiser_weights(resolve_any_model("denoise-s").path)
    feeds = [torch.from_numpy(v) for v in photo_feeds().values()]
    with torch.no_grad():
        plain = model(*feeds)
        rounded_weights_only = GridDenoiser(model, {}, ("tail",))(*feeds)
        nothing_rounded = GridDenoiser(
            model, {}, ("head", "tail", *convolutions(model.blocks))
        )(*feeds)
    assert torch.allclose(plain, nothing_rounded, atol=1e-5)
    assert not torch.allclose(plain, rounded_weights_only, atol=1e-5)


def convolutions(blocks: int) -> list[str]:
    return [f"body.{i}.conv{j}" for i in range(blocks) for j in (1, 2)]


def test_unknown_tensor_is_rejected() -> None:
    model = load_denoiser_weights(resolve_any_model("denoise-s").path)
    with pytest.raises(ValueError, match="/Mystery_output_0"):
        GridDenoiser(model, {"/Mystery_output_0": (0.01, 0)})


def test_tensor_names_follow_the_exported_graph() -> None:
    graph = onnx.load(str(resolve_any_model("denoise-s").path)).graph
    outputs = {name for node in graph.node for name in node.output}
    missing = [name for name in tensor_names(5) if name not in outputs]
    assert not missing


def test_equalization_factors_turn_one_model_into_the_other() -> None:
    original = load_denoiser_weights(resolve_any_model("denoise-s").path)
    rescaled = load_denoiser_weights(resolve_any_model("denoise-s").path)
    with torch.no_grad():
        rescaled.head.weight.mul_(2.0)
        rescaled.body[0].conv1.bias.mul_(0.5)
    factors = equalization_factors(original, rescaled)
    for name, value in original.state_dict().items():
        assert torch.allclose(value * factors[name], rescaled.state_dict()[name])


def test_fine_tune_keeps_calibrated_grid(tmp_path: Path) -> None:
    # Equalized, as the shipped int8 model is: the fine-tune then trains through the
    # equalization factors.
    plain_int8 = tmp_path / "plain-int8.onnx"
    quantize(plain_int8, "--no-bias-correction")
    output = tmp_path / "tuned-int8.onnx"
    quantize(output, "--fine-tune", "2")
    record = json.loads(read_metadata(output)["quantization"])
    assert record["fine_tuned"].startswith("2 steps")
    # Bias correction is off after fine-tuning unless asked for.
    assert "bias_corrected_convolutions" not in record

    # Same calibration, so the same activation grid; other weights.
    assert read_grid(onnx.load(str(output))) == read_grid(onnx.load(str(plain_int8)))
    feeds = photo_feeds()
    tuned, plain = run_onnx(output, feeds), run_onnx(plain_int8, feeds)
    assert not np.array_equal(tuned, plain)
    # Two steps at a learning rate of 5e-6 barely move the weights: the output stays
    # within a few 8-bit levels of the plain int8 model's.
    assert np.abs(tuned - plain).mean() < 2 / 255


def test_fine_tune_rejects_other_tasks(tmp_path: Path) -> None:
    result = run_edgefx(
        "quantize",
        "classify-cifar10",
        "--calibrate",
        SAMPLES / "clean",
        "--fine-tune",
        "5",
        "-o",
        tmp_path / "c.onnx",
    )
    assert result.returncode == 2
    assert "--fine-tune works on denoisers only" in result.stderr
    assert not (tmp_path / "c.onnx").exists()


def test_fine_tune_step_limit(tmp_path: Path) -> None:
    from edgefx.errors import UsageError
    from edgefx.quantize import MAX_FINE_TUNE_STEPS, QuantizeOptions

    with pytest.raises(UsageError, match=f"0 to {MAX_FINE_TUNE_STEPS} steps"):
        QuantizeOptions(calibration=tmp_path, fine_tune_steps=MAX_FINE_TUNE_STEPS + 1)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--nodes", "/head/Conv"), "--fine-tune cannot be combined with --nodes"),
        (("--no-per-channel",), "drop --no-per-channel"),
    ],
)
def test_fine_tune_rejects_option(
    tmp_path: Path, option: tuple[str, ...], message: str
) -> None:
    output = tmp_path / "out.onnx"
    result = run_edgefx(
        "quantize",
        "denoise-s",
        "--calibrate",
        SAMPLES / "clean",
        "--fine-tune",
        "2",
        *option,
        "-o",
        output,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not output.exists()


def test_calibration_skips_tiny_photos(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    for side in (1, 3, 40):
        cv2.imwrite(
            str(folder / f"{side}.png"), np.full((side, side, 3), 128, np.uint8)
        )
    output = tmp_path / "out.onnx"
    result = run_edgefx(
        "quantize", "denoise-s", "--calibrate", folder, "--samples", "4", "-o", output
    )
    assert result.returncode == 2
    assert "no photo is at least 64 pixels" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()
