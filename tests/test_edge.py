"""edgefx quantize and edgefx export through the CLI, variants in the registry, and
the lean install: what a plain ``pip install edgefx`` imports and requires."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import requires
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefx.imageio import read_image
from edgefx.registry import resolve_model, sha256_of

FEATURES = 16


def build_denoiser(path: Path) -> Path:
    """Write a small residual denoiser: two 3x3 convolutions and a subtraction."""
    rng = np.random.default_rng(7)
    first = rng.normal(0, 0.2, (FEATURES, 3, 3, 3)).astype(np.float32)
    second = rng.normal(0, 0.05, (3, FEATURES, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["image", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["noise"], name="conv2", pads=[1, 1, 1, 1]
        ),
        helper.make_node("Sub", ["image", "noise"], ["denoised"]),
    ]
    shape = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        nodes,
        "small_denoiser",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("denoised", TensorProto.FLOAT, shape)],
        initializer=[
            numpy_helper.from_array(first, "w1"),
            numpy_helper.from_array(np.zeros(FEATURES, np.float32), "b1"),
            numpy_helper.from_array(second, "w2"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    parameters = first.size + FEATURES + second.size + 3
    for key, value in {
        "task": "denoise",
        "name": "small-denoiser",
        "parameters": str(parameters),
        "key_metric": "none (test model)",
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_denoiser(tmp_path_factory.mktemp("model") / "small-denoiser.onnx")


@pytest.fixture(scope="module")
def sample_batch(samples_dir: Path) -> np.ndarray:
    """A 96x96 crop of a real noisy sample photo: (1, 3, 96, 96) float32 in [0, 1]."""
    pixels = read_image(samples_dir / "noisy" / "astronaut.png").pixels[:96, :96, :3]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None] / 255.0, np.float32)


def run_model(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": batch})[0]


def test_quantize_writes_close_int8_model(
    run_cli, small_model, samples_dir, sample_batch, tmp_path
):
    output = tmp_path / "small-int8.onnx"
    result = run_cli(
        "quantize",
        small_model,
        "--calibrate",
        samples_dir / "clean",
        "--test-data",
        samples_dir / "clean",
        "--samples",
        "4",
        "--test-limit",
        "2",
        "--out",
        output,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {output}" in result.stderr
    assert "vs fp32" in result.stderr

    proto = onnx.load(str(output))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["precision"] == "int8"
    assert metadata["variant_of"] == "small-denoiser"
    assert metadata["name"] == "small-denoiser-int8"
    test = json.loads(metadata["quantization"])["test"]
    assert test["metric"] == "psnr_db"
    assert test["count"] == 2
    assert test["delta"] == pytest.approx(test["int8"] - test["fp32"], abs=1e-3)
    assert test["fp32_seconds"] > 0
    assert test["int8_seconds"] > 0

    reference = run_model(small_model, sample_batch)
    quantized = run_model(output, sample_batch)
    assert quantized.shape == reference.shape
    error = float(np.sqrt(np.mean((quantized - reference) ** 2)))
    assert error < 0.01, f"int8 output differs from fp32 by RMS {error:.4f}"


def test_quantize_missing_calibration_folder(run_cli, small_model, tmp_path):
    result = run_cli(
        "quantize",
        small_model,
        "--calibrate",
        tmp_path / "absent",
        "-o",
        tmp_path / "x",
    )
    assert result.returncode == 2
    assert "absent: not found" in result.stderr
    assert not (tmp_path / "x").exists()


def test_export_ort_with_operator_config(run_cli, small_model, sample_batch, tmp_path):
    output = tmp_path / "deploy" / "small.ort"
    result = run_cli("export", small_model, "--format", "ort", "--out", output)
    assert result.returncode == 0, result.stderr

    config = tmp_path / "deploy" / "small.required_operators.config"
    assert output.is_file()
    assert config.is_file()
    operators = config.read_text()
    assert "Conv" in operators
    assert "Sub" in operators
    assert str(tmp_path) not in operators.replace(str(output), "")
    assert sorted(p.name for p in output.parent.iterdir()) == sorted(
        [config.name, output.name]
    )
    np.testing.assert_allclose(
        run_model(output, sample_batch),
        run_model(small_model, sample_batch),
        atol=1e-5,
    )


def test_export_fp16_keeps_float32_io(run_cli, small_model, sample_batch, tmp_path):
    output = tmp_path / "small-fp16.onnx"
    result = run_cli("export", small_model, "--format", "onnx", "--fp16", "-o", output)
    assert result.returncode == 0, result.stderr

    proto = onnx.load(str(output))
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
    weights = {i.name: i.data_type for i in proto.graph.initializer}
    assert weights["w1"] == TensorProto.FLOAT16
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["precision"] == "fp16"
    np.testing.assert_allclose(
        run_model(output, sample_batch), run_model(small_model, sample_batch), atol=5e-3
    )


@pytest.mark.parametrize(
    ("export_format", "name", "message"),
    [
        ("ort", "m.onnx", "an ORT-format file must end in .ort"),
        ("onnx", "m.ort", "an ONNX file must end in .onnx"),
    ],
)
def test_export_rejects_wrong_suffix(
    run_cli, small_model, tmp_path, export_format, name, message
):
    output = tmp_path / name
    fp16 = ["--fp16"] if export_format == "onnx" else []

    result = run_cli(
        "export", small_model, "--format", export_format, *fp16, "-o", output
    )

    assert result.returncode == 2, result.stderr
    assert f"--out {output}: {message}" in result.stderr
    assert not output.exists()


@pytest.mark.parametrize(
    ("export_format", "name"), [("ort", "m.ort"), ("onnx", "m-fp16.onnx")]
)
def test_export_warns_on_replace(run_cli, small_model, tmp_path, export_format, name):
    output = tmp_path / name
    output.write_bytes(b"older export")
    fp16 = ["--fp16"] if export_format == "onnx" else []

    result = run_cli(
        "export", small_model, "--format", export_format, *fp16, "-o", output
    )

    assert result.returncode == 0, result.stderr
    assert f"warning: {output} exists and will be replaced" in result.stderr
    assert output.read_bytes() != b"older export"


def test_export_rejects_fp16_ort(run_cli, small_model, tmp_path):
    result = run_cli(
        "export", small_model, "--format", "ort", "--fp16", "-o", tmp_path / "m.ort"
    )
    assert result.returncode == 2
    assert "--format onnx --fp16" in result.stderr


@pytest.mark.slow
def test_quantize_shipped_classifier_cifar10(run_cli, data_dir, tmp_path):
    output = tmp_path / "classify-int8.onnx"
    result = run_cli(
        "quantize",
        "classify-cifar10",
        "--calibrate",
        data_dir / "cifar10" / "train.zip",
        "--test-data",
        data_dir / "cifar10" / "test.zip",
        "--samples",
        "32",
        "--test-limit",
        "300",
        "-o",
        output,
    )
    assert result.returncode == 0, result.stderr
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    test = json.loads(metadata["quantization"])["test"]
    assert test["metric"] == "top1_percent"
    assert test["count"] == 300
    # The float model scores about 89 % on CIFAR-10, so int8 must stay near it.
    assert test["int8"] > 80.0
    assert abs(test["delta"]) < 3.0


@pytest.mark.slow
def test_quantize_shipped_enhancer_runs(run_cli, data_dir, tmp_path):
    pytest.importorskip("pesq")
    output = tmp_path / "enhance-int8.onnx"
    result = run_cli(
        "quantize",
        "enhance-speech",
        "--calibrate",
        data_dir / "audio",
        "--test-data",
        data_dir / "audio",
        "--samples",
        "2",
        "--test-limit",
        "1",
        "-o",
        output,
    )
    assert result.returncode == 0, result.stderr
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    record = json.loads(metadata["quantization"])
    assert record["test"]["metric"] == "pesq_wb"
    assert record["test"]["count"] == 5  # one utterance at five SNRs
    assert "MatMul" in record["quantized_ops"]
    lines = result.stderr.splitlines()
    assert any(line.startswith("cut 2 recordings into ") for line in lines)
    assert "5 test mixtures (1 utterance at 5 SNRs)" in result.stderr
    model_lines = [line for line in lines if line.startswith("model ")]
    assert len(model_lines) == 1, model_lines
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert sorted(i.name for i in session.get_inputs()) == [
        "audio",
        "min_gain",
        "state",
    ]


# --------------------------------------------------------------------------------------
# Variants in the registry and in `edgefx models`


@pytest.fixture()
def variant_folder(tmp_path: Path, small_model: Path) -> Path:
    """A model folder with a float denoiser and its int8 variant as the CPU default."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(small_model, folder / "small-denoiser.onnx")
    variant = onnx.load(str(small_model))
    values = {p.key: p.value for p in variant.metadata_props}
    values.update(name="small-denoiser-int8", precision="int8")
    values.update(variant_of="small-denoiser")
    del variant.metadata_props[:]
    for key, value in values.items():
        variant.metadata_props.add(key=key, value=value)
    onnx.save(variant, str(folder / "small-denoiser-int8.onnx"))
    rows = [
        {
            "name": "small-denoiser",
            "task": "denoise",
            "file": "small-denoiser.onnx",
            "sha256": sha256_of(folder / "small-denoiser.onnx"),
            "default": True,
        },
        {
            "name": "small-denoiser-int8",
            "task": "denoise",
            "file": "small-denoiser-int8.onnx",
            "sha256": sha256_of(folder / "small-denoiser-int8.onnx"),
            "precision": "int8",
            "variant_of": "small-denoiser",
            "cpu_default": True,
        },
    ]
    (folder / "manifest.json").write_text(json.dumps({"models": rows}))
    return folder


def test_cpu_default_picks_int8_variant(variant_folder, monkeypatch):
    monkeypatch.setenv("EDGEFX_MODELS_DIR", str(variant_folder))
    assert resolve_model(None, "denoise", "cpu").name == "small-denoiser-int8"
    assert resolve_model(None, "denoise", "cuda").name == "small-denoiser"
    assert resolve_model("small-denoiser", "denoise", "cpu").name == "small-denoiser"


def test_models_shows_default_variant(run_cli, variant_folder):
    result = run_cli("models", models_dir=variant_folder, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    # Columns are separated by spaces; the first four cells contain no spaces.
    cells = [line.split() for line in result.stdout.splitlines()]
    rows = {row[0]: row[1:4] for row in cells if row and row[0].startswith("small-")}
    assert rows == {
        "small-denoiser": ["denoise", "fp32", "CUDA"],
        "small-denoiser-int8": ["denoise", "int8", "CPU"],
    }
    assert (
        "small-denoiser-int8 runs by default on the CPU (faster when measured, and "
        "within tolerance of small-denoiser)"
    ) in result.stdout


# --------------------------------------------------------------------------------------
# Lean install

TRAINING_PACKAGES = {"torch", "torchvision", "torchaudio", "onnxscript", "pytorch"}
HEAVY_MODULES = ("torch", "onnxruntime")


def requirement_names(requirements: list[str]) -> set[str]:
    """Return the package names of PEP 508 requirement strings, lowercased."""
    names = set()
    for requirement in requirements:
        name = requirement.split(";")[0]
        for separator in "[<>=!~ ":
            name = name.split(separator)[0]
        names.add(name.strip().lower())
    return names


def test_base_install_has_no_training_packages(repo_root):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    declared = requirement_names(project["dependencies"])
    installed = requirement_names(
        [line for line in requires("edgefx") or [] if "extra ==" not in line]
    )

    assert "onnxruntime" in declared or "onnxruntime-gpu" in declared
    assert not declared & TRAINING_PACKAGES, sorted(declared & TRAINING_PACKAGES)
    assert not installed & TRAINING_PACKAGES, sorted(installed & TRAINING_PACKAGES)


CHECK_IMPORTS = """
import json, sys
import edgefx
import edgefx.cli
sys.argv = ["edgefx", *sys.argv[1:]]
try:
    edgefx.cli.main()
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


@pytest.mark.parametrize(
    "arguments", [["--help"], ["quantize", "--help"], ["export", "--help"]]
)
def test_help_imports_no_torch_or_onnxruntime(arguments):
    script = CHECK_IMPORTS.format(heavy=HEAVY_MODULES)
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"edgefx {' '.join(arguments)} imported {loaded}"


def test_quantize_rejects_unknown_node_name(
    run_cli, small_model, samples_dir, tmp_path
):
    result = run_cli(
        "quantize",
        small_model,
        "--calibrate",
        samples_dir / "clean",
        "--nodes",
        "no_such_node",
        "-o",
        tmp_path / "x.onnx",
    )
    assert result.returncode == 2
    assert "no node named no_such_node" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def _quantize_small(run_cli, model, samples_dir, output, *options):
    return run_cli(
        "quantize", model, "--calibrate", samples_dir / "clean", "--samples", "4",
        "--out", output, *options,
    )  # fmt: skip


def _weight_sources(proto: onnx.ModelProto) -> dict[str, str]:
    """Conv node name -> op type that produces its weight (or "initializer")."""
    producers = {out: node.op_type for node in proto.graph.node for out in node.output}
    initializers = {t.name for t in proto.graph.initializer}
    return {
        node.name: "initializer"
        if node.input[1] in initializers
        else producers[node.input[1]]
        for node in proto.graph.node
        if node.op_type == "Conv"
    }


def test_quantize_exclude_leaves_node_in_float(
    run_cli, small_model, samples_dir, tmp_path
):
    output = tmp_path / "small-int8.onnx"

    result = _quantize_small(
        run_cli, small_model, samples_dir, output, "--exclude", "conv2"
    )

    assert result.returncode == 0, result.stderr
    # The summary counts only the convolution whose weights are int8.
    assert "int8 operators: Conv 1," in result.stderr
    proto = onnx.load(str(output))
    assert _weight_sources(proto) == {
        "conv1": "DequantizeLinear",
        "conv2": "initializer",
    }
    record = json.loads({p.key: p.value for p in proto.metadata_props}["quantization"])
    assert record["excluded_nodes"] == ["conv2"]


def test_quantize_exclude_rejects_unknown_node_name(
    run_cli, small_model, samples_dir, tmp_path
):
    result = _quantize_small(
        run_cli, small_model, samples_dir, tmp_path / "x.onnx", "--exclude", "nope"
    )

    assert result.returncode == 2
    assert "no node named nope" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_node_in_nodes_and_exclude_exit_2(
    run_cli, small_model, samples_dir, tmp_path
):
    result = _quantize_small(
        run_cli, small_model, samples_dir, tmp_path / "x.onnx",
        "--nodes", "conv1,conv2", "--exclude", "conv2",
    )  # fmt: skip

    assert result.returncode == 2
    assert "conv2: given to both --nodes and --exclude" in result.stderr
    # Rejected before the calibration, which takes minutes on real models.
    assert "calibrating" not in result.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    ("options", "calibration"),
    [
        ((), "percentile 99.95"),  # the denoiser's default
        (("--percentile", "99.9"), "percentile 99.9"),
        (("--percentile", "100"), "MinMax"),
    ],
)
def test_quantize_percentile_is_recorded(
    run_cli, small_model, samples_dir, tmp_path, options, calibration
):
    output = tmp_path / "small-int8.onnx"

    result = _quantize_small(run_cli, small_model, samples_dir, output, *options)

    assert result.returncode == 0, result.stderr
    # ONNX Runtime's histogram calibration prints progress; stdout stays clean.
    assert result.stdout == ""
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert json.loads(metadata["quantization"])["calibration"].endswith(calibration)


def test_quantize_percentile_ranges_are_narrower(
    run_cli, small_model, samples_dir, tmp_path
):
    def activation_scales(path: Path) -> list[float]:
        proto = onnx.load(str(path))
        values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        return [
            float(values[node.input[1]])
            for node in proto.graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] == "r1"
        ]

    full = tmp_path / "full.onnx"
    cut = tmp_path / "cut.onnx"
    assert (
        _quantize_small(
            run_cli, small_model, samples_dir, full, "--percentile", "100"
        ).returncode
        == 0
    )
    assert (
        _quantize_small(
            run_cli, small_model, samples_dir, cut, "--percentile", "99"
        ).returncode
        == 0
    )

    # Cutting 1 % of the ReLU's values shortens its range and so its 8-bit step.
    (full_scale,) = activation_scales(full)
    (cut_scale,) = activation_scales(cut)
    assert cut_scale < full_scale


def test_quantize_percentile_out_of_range_exit_2(
    run_cli, small_model, samples_dir, tmp_path
):
    result = _quantize_small(
        run_cli, small_model, samples_dir, tmp_path / "x.onnx", "--percentile", "20"
    )

    assert result.returncode == 2
    assert "--percentile" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_bias_correction_only_moves_biases(
    run_cli, small_model, samples_dir, tmp_path
):
    plain = tmp_path / "plain.onnx"
    corrected = tmp_path / "corrected.onnx"
    assert (
        _quantize_small(
            run_cli, small_model, samples_dir, plain, "--no-bias-correction"
        ).returncode
        == 0
    )
    result = _quantize_small(
        run_cli, small_model, samples_dir, corrected, "--bias-correction"
    )
    assert result.returncode == 0, result.stderr

    metadata = {p.key: p.value for p in onnx.load(str(corrected)).metadata_props}
    assert json.loads(metadata["quantization"])["bias_corrected_convolutions"] == 2
    differing = [
        a.name
        for a, b in zip(
            onnx.load(str(plain)).graph.initializer,
            onnx.load(str(corrected)).graph.initializer,
            strict=True,
        )
        if not np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    ]
    assert sorted(differing) == ["b1_quantized", "b2_quantized"]


def test_bias_correction_matches_float_conv_means(
    run_cli, small_model, samples_dir, tmp_path
):
    from edgefx.biascorrect import _channel_means, correct_biases

    plain = tmp_path / "plain.onnx"
    assert (
        _quantize_small(
            run_cli, small_model, samples_dir, plain, "--no-bias-correction"
        ).returncode
        == 0
    )
    feeds = []
    for name in ("astronaut.png", "camera.png", "coffee.png"):
        pixels = read_image(samples_dir / "noisy" / name).pixels[:64, :64]
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        batch = pixels[:, :, :3].transpose(2, 0, 1)[None] / 255.0
        feeds.append({"image": np.ascontiguousarray(batch, np.float32)})
    float_proto = onnx.load(str(small_model))
    quantized = onnx.load(str(plain))
    # Pre-activation outputs of both convolutions. The quantizer folds the ReLU into
    # conv1's 8-bit range and gives conv1's output the ReLU's name, r1.
    pairs = {"c1": "r1", "noise": "noise"}
    target = _channel_means(float_proto, list(pairs), feeds, threads=1)

    def error() -> float:
        current = _channel_means(quantized, list(pairs.values()), feeds, threads=1)
        return sum(
            float(np.abs(current[q] - target[f]).sum()) for f, q in pairs.items()
        )

    before = error()
    assert correct_biases(float_proto, quantized, feeds, threads=1) == 2
    after = error()

    assert after < before / 4


def test_cuda_bench_explains_missing_cuda(repo_root):
    from edgefx.runtime import cuda_usable

    if cuda_usable():
        pytest.skip("CUDA is usable here; the bench would run in full")
    result = subprocess.run(
        [sys.executable, str(repo_root / "bench" / "cuda_providers.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("CUDA is not available: ")
    assert result.stdout == ""


def test_update_manifest_marks_cpu_default(repo_root, variant_folder):
    (variant_folder / "manifest.json").unlink()
    tool = repo_root / "tools" / "update_manifest.py"
    command = [sys.executable, str(tool), "--dir", str(variant_folder)]
    subprocess.run(
        [*command, "--cpu-default", "small-denoiser-int8"], check=True, timeout=60
    )
    rows = json.loads((variant_folder / "manifest.json").read_text())["models"]
    by_name = {row["name"]: row for row in rows}
    assert by_name["small-denoiser"]["default"] is True
    assert "cpu_default" not in by_name["small-denoiser"]
    assert by_name["small-denoiser-int8"]["default"] is False
    assert by_name["small-denoiser-int8"]["cpu_default"] is True
    assert by_name["small-denoiser-int8"]["precision"] == "int8"
    assert by_name["small-denoiser-int8"]["variant_of"] == "small-denoiser"

    # A second run without the flag keeps the choice from the manifest.
    subprocess.run(command, check=True, timeout=60, capture_output=True)
    rows = json.loads((variant_folder / "manifest.json").read_text())["models"]
    assert {r["name"] for r in rows if r.get("cpu_default")} == {"small-denoiser-int8"}


def test_verdict_names_tolerance_unit():
    from edgefx.quantize import Comparison

    comparison = Comparison(
        metric="psnr_db",
        fp32=30.0,
        int8=29.5,
        count=4,
        data="photos",
        fp32_seconds=2.0,
        int8_seconds=1.0,
        unit="MP",
    )

    assert comparison.verdict.endswith("quality drops by more than 0.1 dB PSNR")


def test_calibration_audio_skips_unreadable(samples_dir, tmp_path, caplog):
    from edgefx.errors import UsageError
    from edgefx.quality import calibration_audio

    folder = tmp_path / "recordings"
    folder.mkdir()
    for path in sorted((samples_dir / "audio" / "noisy").iterdir()):
        shutil.copy(path, folder / path.name)
    (folder / "fake.wav").write_text("not audio", encoding="utf-8")
    readable = len(list((samples_dir / "audio" / "noisy").iterdir()))

    clips = calibration_audio(folder, 10, 1.0)
    assert len(clips) == readable
    assert all(len(clip) == 16000 for clip in clips)
    assert "fake.wav: skipped, cannot read this recording" in caplog.text

    for path in folder.iterdir():
        if path.name != "fake.wav":
            path.unlink()
    with pytest.raises(UsageError, match="none of the chosen recordings"):
        calibration_audio(folder, 10, 1.0)


def accuracy_comparison(fp32: float, int8: float):
    from edgefx.quantize import Comparison

    return Comparison(
        metric="top1_percent",
        fp32=fp32,
        int8=int8,
        count=2,
        data="photos",
        fp32_seconds=2.0,
        int8_seconds=1.0,
        unit="a batch of 8 images",
    )


@pytest.mark.parametrize("fp32", [0.0, float("nan")])
def test_verdict_unscored_accuracy_not_measured(fp32):
    from edgefx.quantize import describe

    comparison = accuracy_comparison(fp32, 0.0)

    assert comparison.verdict.startswith("not measured: the fp32 model scored 0 %")
    assert not comparison.ship_for_cpu
    assert describe(comparison).startswith(
        "top-1 accuracy not measured on 2 test items, 2.00x fp32 speed"
    )


def test_verdict_scored_accuracy_fit():
    comparison = accuracy_comparison(88.0, 87.8)

    assert comparison.ship_for_cpu
    assert (
        comparison.verdict == "faster and within tolerance: fit to be the CPU default"
    )


def build_classifier(path: Path) -> Path:
    """Write a 3-class classifier: per-channel mean, then a MatMul to logits."""
    weight = np.eye(3, dtype=np.float32) * 10.0
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
            helper.make_node("MatMul", ["features", "weight"], ["logits"]),
        ],
        "small_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {
        "task": "classify",
        "name": "small-classifier",
        "input_size": "[32, 32]",
        "labels": json.dumps(["red", "green", "blue"]),
    }
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_quantize_flat_test_folder_not_fit(run_cli, samples_dir, tmp_path):
    # Each test image's label is its folder's name, and "photos" is no class name.
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "coffee.png"):
        shutil.copyfile(samples_dir / "clean" / name, photos / name)
    model = build_classifier(tmp_path / "small-classifier.onnx")

    result = run_cli(
        "quantize",
        model,
        "--calibrate",
        photos,
        "--samples",
        "2",
        "--test-data",
        photos,
        "-o",
        tmp_path / "small-classifier-int8.onnx",
    )

    assert result.returncode == 0, result.stderr
    assert "top-1 accuracy not measured on 2 test items, " in result.stderr
    assert "0.00" not in result.stderr  # no score of a test it could not score
    assert "not measured: the fp32 model scored 0 % top-1" in result.stderr
    assert "fit to be the CPU default" not in result.stderr


@pytest.mark.parametrize("samples", ["64", "4"])
def test_quantize_classifier_few_images_warns(run_cli, samples_dir, tmp_path, samples):
    model = build_classifier(tmp_path / "small-classifier.onnx")
    output = tmp_path / "small-classifier-int8.onnx"

    result = run_cli(
        "quantize",
        model,
        "--calibrate",
        samples_dir / "clean",
        "--samples",
        samples,
        "-o",
        output,
    )

    assert result.returncode == 0, result.stderr
    warning = f"warning: calibrating on 4 images instead of --samples {samples}"
    assert (warning in result.stderr.splitlines()) is (samples == "64")
    assert output.is_file()


def test_quantize_enhancer_few_recordings_warns(run_cli, samples_dir, tmp_path):
    output = tmp_path / "enhance-speech-int8.onnx"

    result = run_cli(
        "quantize",
        "enhance-speech",
        "--calibrate",
        samples_dir / "audio" / "noisy",
        "-o",
        output,
    )

    assert result.returncode == 0, result.stderr
    warning = "warning: calibrating on 2 recordings instead of --samples 64"
    assert warning in result.stderr.splitlines()


def test_int8_enhancer_streams_exactly(run_cli, samples_dir, tmp_path):
    # Calibration gets one state per 0.5 s input, so quantizing the state's own
    # tensors clipped it from call to call: hop by hop differed from one call by up to
    # 0.25 before the state path was kept in float32.
    sf = pytest.importorskip("soundfile")
    output = tmp_path / "enhance-speech-int8.onnx"
    result = run_cli(
        "quantize", "enhance-speech", "--calibrate", samples_dir / "audio" / "noisy",
        "--threads", "1", "-o", output,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    record = json.loads(metadata["quantization"])
    assert record["float32_state_path_nodes"] > 0
    assert "MatMul" in record["quantized_ops"]
    audio, rate = sf.read(
        samples_dir / "audio" / "noisy" / "arctic_a0007_room_5db.flac", dtype="float32"
    )
    assert rate == 16000
    assert audio.ndim == 1
    hop = 160
    audio = audio[None, : len(audio) // hop * hop]
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    state_size = next(i.shape[1] for i in session.get_inputs() if i.name == "state")
    min_gain = np.zeros(1, np.float32)

    def run(start: int, stop: int, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"audio": audio[:, start:stop], "state": state, "min_gain": min_gain}
        enhanced, state_out, _ = session.run(None, feeds)
        return enhanced, state_out

    whole, _ = run(0, audio.shape[1], np.zeros((1, state_size), np.float32))
    state = np.zeros((1, state_size), np.float32)
    pieces = []
    for start in range(0, audio.shape[1], hop):
        piece, state = run(start, start + hop, state)
        pieces.append(piece)
    streamed = np.concatenate(pieces, axis=1)

    assert np.max(np.abs(whole)) > 0.05  # the model passed speech through
    assert np.max(np.abs(streamed - whole)) <= 1e-5


def test_quantize_removes_work_folders_of_killed_runs(run_cli, samples_dir, tmp_path):
    # A quantize killed with SIGKILL cannot remove its work folder; the next one does.
    fcntl = pytest.importorskip("fcntl")
    temp = tmp_path / "tmp"
    temp.mkdir()
    dead = temp / "edgefx-quantize-dead"
    (dead / "nested").mkdir(parents=True)
    (dead / "nested" / "prepared.onnx").write_bytes(b"left behind")
    (dead / ".lock").touch()  # nobody holds its lock
    alive = temp / "edgefx-quantize-alive"
    alive.mkdir()
    (alive / ".lock").touch()
    held = os.open(alive / ".lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # as a running quantize holds it
    starting = temp / "edgefx-quantize-starting"  # no lock file yet, and young
    starting.mkdir()
    old = temp / "edgefx-quantize-old"  # no lock file, untouched for two hours
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("not a work folder")
    (temp / "edgefx-quantize-link").symlink_to(target)
    other = temp / "edgefx-export-dead"  # another command's prefix
    other.mkdir()
    (other / ".lock").touch()
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copyfile(samples_dir / "clean" / "astronaut.png", photos / "a.png")
    model = build_classifier(tmp_path / "small-classifier.onnx")

    try:
        result = run_cli(
            "quantize", model, "--calibrate", photos, "--samples", "1",
            "-o", tmp_path / "small-classifier-int8.onnx", "-v",
            env={"TMPDIR": str(temp)},
        )  # fmt: skip
    finally:
        os.close(held)

    assert result.returncode == 0, result.stderr
    assert not dead.exists()
    assert not old.exists()
    assert "removed 2 work folders that killed runs left in" in result.stderr
    assert (target / "keep.txt").is_file()
    # The run's own work folder is gone too.
    assert sorted(p.name for p in temp.glob("edgefx-*")) == [
        other.name,
        alive.name,
        "edgefx-quantize-link",
        starting.name,
    ]
