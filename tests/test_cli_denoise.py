"""End-to-end tests of ``edgefx denoise``, ``edgefx models`` and ``--help``.

Every run starts ``python -m edgefx`` in a subprocess with the shipped model in models/
and the photos in samples/. Tests that need many runs use small crops of the samples,
because on a CPU most of a run's time goes into starting Python and ONNX Runtime.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from edgefx.fsutil import TEMP_PREFIX

# The shipped model (models/denoise-s.onnx, version 1) gains 9.2 to 12.3 dB on the
# noisy PNG samples (sigma 25), measured on a CPU with this file's PSNR. An 8 dB floor
# catches a broken pipeline (wrong scaling, channel order or tiling) and a retrained
# model that is clearly worse.
MIN_PSNR_GAIN_DB = 8.0

# Clean reference in samples/clean/ for each noisy PNG sample in samples/noisy/.
CLEAN_FOR_NOISY = {
    "camera.png": "camera.png",
    "coffee.png": "coffee.png",
    "astronaut.png": "astronaut.png",
    "chelsea_rgba.png": "chelsea_rgba.png",
    "coffee_16bit.png": "coffee.png",
}

# Odd height and width, so the crops also cover padding to the model's size multiple.
CROP_HEIGHT, CROP_WIDTH = 47, 63

SUMMARY_ALL_SKIPPED = "0 done, 2 skipped (output exists), 0 failed"


def read_unchanged(path: Path) -> np.ndarray:
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert pixels is not None, f"OpenCV cannot read {path}"
    return pixels


def file_format(path: Path) -> str | None:
    with Image.open(path) as image:
        return image.format


def channel_count(pixels: np.ndarray) -> int:
    return 1 if pixels.ndim == 2 else pixels.shape[2]


def to_unit_rgb(pixels: np.ndarray) -> np.ndarray:
    """Scale samples to [0, 1] floats and drop an alpha channel."""
    scale = float(np.iinfo(pixels.dtype).max)
    color = pixels[:, :, :3] if pixels.ndim == 3 else pixels
    return color.astype(np.float64) / scale


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of two arrays of [0, 1] samples."""
    mse = float(np.mean((image - reference) ** 2))
    return 10.0 * np.log10(1.0 / mse)


def mean_abs_diff(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.mean(np.abs(first.astype(np.float64) - second.astype(np.float64))))


def write_crop(source: Path, target: Path) -> Path:
    """Write the top-left CROP_HEIGHT x CROP_WIDTH pixels of an image to ``target``."""
    pixels = read_unchanged(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(target), pixels[:CROP_HEIGHT, :CROP_WIDTH])
    return target


def mtimes(folder: Path) -> dict[str, int]:
    return {
        path.relative_to(folder).as_posix(): path.stat().st_mtime_ns
        for path in folder.rglob("*")
        if path.is_file()
    }


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"{TEMP_PREFIX}*"))


def failure_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("failed: ")]


@pytest.fixture
def crop(samples_dir: Path):
    """Function that writes a small crop of samples/noisy/NAME to a given path."""

    def write(name: str, target: Path) -> Path:
        return write_crop(samples_dir / "noisy" / name, target)

    return write


@pytest.fixture
def small_batch(tmp_path: Path, crop) -> Path:
    """Folder with crops of a gray and a color sample."""
    folder = tmp_path / "in"
    crop("camera.png", folder / "camera.png")
    crop("coffee.png", folder / "coffee.png")
    return folder


# --------------------------------------------------------------------------------------
# The whole noisy samples folder, denoised once for the module


@pytest.fixture(scope="module")
def noisy_run(
    run_cli, samples_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("noisy_run") / "out"
    result = run_cli("denoise", samples_dir / "noisy", "--out", out)
    return result, out


def test_denoise_dir_exit_0(noisy_run) -> None:
    result, _ = noisy_run

    assert result.returncode == 0, result.stderr


def test_denoise_dir_log_wording(noisy_run) -> None:
    result, _ = noisy_run
    throughput = next(
        line for line in result.stderr.splitlines() if line.startswith("throughput:")
    )

    assert re.fullmatch(
        r"throughput: [0-9.]+ files/s, [0-9.]+ MP/s over 6 processed files "
        r"\(\d+ workers?\)",
        throughput,
    ), throughput
    assert "(1 workers)" not in throughput


def test_denoise_dir_one_output_each(noisy_run, samples_dir: Path) -> None:
    _, out = noisy_run

    inputs = sorted(path.name for path in (samples_dir / "noisy").iterdir())
    outputs = sorted(path.name for path in out.iterdir())
    assert outputs == inputs


def test_denoise_dir_no_temporaries(noisy_run) -> None:
    _, out = noisy_run

    assert temporaries(out) == []


@pytest.mark.parametrize(
    "name",
    [
        "camera.png",
        "coffee.png",
        "coffee.jpg",
        "coffee_16bit.png",
        "astronaut.png",
        "chelsea_rgba.png",
    ],
)
def test_denoise_keeps_image_properties(noisy_run, samples_dir: Path, name) -> None:
    _, out = noisy_run
    source = samples_dir / "noisy" / name
    noisy = read_unchanged(source)
    restored = read_unchanged(out / name)

    assert restored.shape[:2] == noisy.shape[:2]
    assert channel_count(restored) == channel_count(noisy)
    assert restored.dtype == noisy.dtype
    assert file_format(out / name) == file_format(source)


def test_denoise_keeps_alpha(noisy_run, samples_dir: Path) -> None:
    _, out = noisy_run
    noisy = read_unchanged(samples_dir / "noisy" / "chelsea_rgba.png")
    restored = read_unchanged(out / "chelsea_rgba.png")

    assert restored.shape[2] == 4
    assert np.array_equal(restored[:, :, 3], noisy[:, :, 3])


def test_denoise_16bit_stays_uint16(noisy_run) -> None:
    _, out = noisy_run
    restored = read_unchanged(out / "coffee_16bit.png")

    assert restored.dtype == np.uint16
    # Values that are not multiples of 257 show that the output is not 8-bit data
    # widened to 16 bits.
    assert np.any(restored % 257 != 0)


@pytest.mark.parametrize("name", sorted(CLEAN_FOR_NOISY))
def test_denoise_psnr_gain(noisy_run, samples_dir: Path, name: str) -> None:
    _, out = noisy_run
    clean = to_unit_rgb(read_unchanged(samples_dir / "clean" / CLEAN_FOR_NOISY[name]))
    noisy = to_unit_rgb(read_unchanged(samples_dir / "noisy" / name))
    restored = to_unit_rgb(read_unchanged(out / name))

    noisy_psnr = psnr(noisy, clean)
    restored_psnr = psnr(restored, clean)
    assert restored_psnr - noisy_psnr >= MIN_PSNR_GAIN_DB, (
        f"{name}: PSNR {noisy_psnr:.2f} dB noisy, {restored_psnr:.2f} dB denoised"
    )


# --------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize("name", ["camera.png", "coffee.jpg"])
def test_sigma_zero_copies_file(
    run_cli, samples_dir: Path, tmp_path: Path, name: str
) -> None:
    source = samples_dir / "noisy" / name
    out = tmp_path / "out"

    result = run_cli("denoise", source, "--sigma", "0", "--out", out)

    assert result.returncode == 0, result.stderr
    assert (out / name).read_bytes() == source.read_bytes()
    assert f"{source}: --sigma 0, copied unchanged" in result.stderr.splitlines()


def test_sigma_zero_converts_pixels(run_cli, samples_dir: Path, tmp_path: Path) -> None:
    source = samples_dir / "noisy" / "coffee.jpg"
    out = tmp_path / "out"

    result = run_cli("denoise", source, "--sigma", "0", "--format", "png", "--out", out)

    assert result.returncode == 0, result.stderr
    written = read_unchanged(out / "coffee.png")
    assert np.array_equal(written, read_unchanged(source))
    line = f"{source}: --sigma 0, converted without denoising"
    assert line in result.stderr.splitlines()


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "quiet"])
def test_no_noise_found_logged(run_cli, tmp_path: Path, quiet: bool) -> None:
    # A smooth gradient, in which the blind estimate finds no noise at all.
    gradient = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    source = tmp_path / "in" / "gradient.png"
    source.parent.mkdir()
    assert cv2.imwrite(str(source), gradient)
    out = tmp_path / "out"

    result = run_cli("denoise", source, "--out", out, *(["-q"] if quiet else []))

    assert result.returncode == 0, result.stderr
    assert (out / "gradient.png").read_bytes() == source.read_bytes()
    line = f"{source}: no noise found, copied unchanged"
    assert (line in result.stderr.splitlines()) is not quiet


def test_quality_for_png_warns(run_cli, crop, tmp_path: Path) -> None:
    source = crop("camera.png", tmp_path / "in" / "camera.png")

    result = run_cli(
        "denoise", source, "--format", "png", "--quality", "50", "--out", tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert "--quality applies to JPEG and WebP only" in result.stderr


def test_format_png_from_jpeg(run_cli, crop, tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = crop("coffee.jpg", tmp_path / "in" / "coffee.jpg")

    result = run_cli("denoise", source, "--format", "png", "--out", out)

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["coffee.png"]
    assert file_format(out / "coffee.png") == "PNG"
    restored = read_unchanged(out / "coffee.png")
    assert restored.shape == read_unchanged(source).shape
    assert restored.dtype == np.uint8


# --------------------------------------------------------------------------------------
# Skip, overwrite and resume


@pytest.fixture(scope="module")
def first_run(
    run_cli, samples_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """Input folder with crops of camera.png and coffee.png, and its denoised copy."""
    root = tmp_path_factory.mktemp("first_run")
    folder = root / "in"
    for name in ("camera.png", "coffee.png"):
        write_crop(samples_dir / "noisy" / name, folder / name)
    out = root / "out"
    result = run_cli("denoise", folder, "--out", out)
    assert result.returncode == 0, result.stderr
    return folder, out


@pytest.fixture
def rerun_setup(first_run, tmp_path: Path) -> tuple[Path, Path]:
    """The first run's input folder and a private copy of its outputs, mtimes kept."""
    folder, out = first_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return folder, copy


def test_rerun_skips_all(run_cli, rerun_setup) -> None:
    folder, out = rerun_setup
    before = mtimes(out)

    result = run_cli("denoise", folder, "--out", out)

    assert result.returncode == 0, result.stderr
    assert SUMMARY_ALL_SKIPPED in result.stderr
    assert mtimes(out) == before


def test_overwrite_rewrites(run_cli, rerun_setup) -> None:
    folder, out = rerun_setup
    before = mtimes(out)

    result = run_cli("denoise", folder, "--out", out, "--overwrite")

    assert result.returncode == 0, result.stderr
    assert "2 done, 0 skipped" in result.stderr
    after = mtimes(out)
    assert sorted(after) == sorted(before)
    for name, mtime in before.items():
        assert after[name] > mtime, f"{name} was not rewritten"


def test_resume_after_delete(run_cli, rerun_setup) -> None:
    folder, out = rerun_setup
    before = mtimes(out)
    (out / "camera.png").unlink()

    result = run_cli("denoise", folder, "--out", out)

    assert result.returncode == 0, result.stderr
    assert "1 done, 1 skipped" in result.stderr
    assert (out / "camera.png").is_file()
    assert mtimes(out)["coffee.png"] == before["coffee.png"]


# --------------------------------------------------------------------------------------
# Failures and exit statuses


def test_bad_inputs_exit_1(run_cli, crop, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    crop("camera.png", folder / "good.png")
    rng = np.random.default_rng(0)
    (folder / "bad.png").write_bytes(rng.integers(0, 256, 4096, np.uint8).tobytes())
    (folder / "empty.jpg").write_bytes(b"")
    absent = tmp_path / "absent.png"
    out = tmp_path / "out"

    result = run_cli("denoise", folder, absent, "--out", out)

    assert result.returncode == 1, result.stderr
    assert (out / "good.png").is_file()
    assert not (out / "bad.png").exists()
    assert not (out / "empty.jpg").exists()
    assert temporaries(out) == []
    lines = result.stderr.splitlines()
    assert len(failure_lines(result.stderr)) == 3, result.stderr
    for name in ("bad.png", "empty.jpg", "absent.png"):
        named = [line for line in lines if name in line]
        assert len(named) == 1, f"{name}: {named}"
    assert f"failed: {absent}: file not found" in lines
    assert "1 done, 0 skipped (output exists), 3 failed" in result.stderr


@pytest.mark.parametrize(
    ("extra_args", "option"),
    [
        ([], "--out"),
        (["--out", "OUT", "--sigma", "80"], "'--sigma': 80 is out of range"),
        (["--out", "OUT", "--sigma", "nan"], "'--sigma': 'nan' is not a finite"),
        (["--out", "OUT", "--format", "gif"], "--format"),
        (["--out", "OUT", "--threads", "100000"], "--threads"),
        (["--out", "OUT", "--jobs", "100000"], "--jobs"),
    ],
    ids=[
        "missing-out",
        "sigma-80",
        "sigma-nan",
        "format-gif",
        "threads-100000",
        "jobs-100000",
    ],
)
def test_option_errors_exit_2(
    run_cli, small_batch: Path, tmp_path: Path, extra_args: list[str], option: str
) -> None:
    args = [str(tmp_path / "out") if arg == "OUT" else arg for arg in extra_args]

    result = run_cli("denoise", small_batch, *args)

    assert result.returncode == 2, result.stderr
    assert option in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def out_equal_input_run(
    run_cli, samples_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    """Result of --out set to the input folder, and the folder's mtimes around it."""
    folder = tmp_path_factory.mktemp("out_equal_input") / "in"
    write_crop(samples_dir / "noisy" / "camera.png", folder / "camera.png")
    before = mtimes(folder)
    result = run_cli("denoise", folder, "--out", folder)
    return result, before, mtimes(folder)


def test_out_equal_input_exit_2(out_equal_input_run) -> None:
    result, before, after = out_equal_input_run

    assert result.returncode == 2, result.stderr
    assert after == before


def test_out_equal_input_message(out_equal_input_run) -> None:
    result, _, _ = out_equal_input_run

    assert "replace the input" in result.stderr


def test_out_above_input(run_cli, small_batch: Path, tmp_path: Path) -> None:
    result = run_cli("denoise", small_batch, "--out", tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "camera.png").is_file()


def test_output_collision_exit_2(run_cli, crop, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    crop("camera.png", folder / "a.png")
    crop("coffee.jpg", folder / "a.jpg")
    out = tmp_path / "out"

    result = run_cli("denoise", folder, "--format", "png", "--out", out)

    assert result.returncode == 2, result.stderr
    assert "would both be written" in result.stderr
    assert not out.exists()


def test_unknown_model_exit_2(run_cli, small_batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = run_cli("denoise", small_batch, "--out", out, "--model", "no-such-model")

    assert result.returncode == 2, result.stderr
    assert "no-such-model" in result.stderr
    assert "denoise-s" in result.stderr
    assert not out.exists()


# --------------------------------------------------------------------------------------
# Input selection


def test_recursive_mirrors_tree(run_cli, crop, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    crop("camera.png", folder / "top.png")
    crop("coffee.png", folder / "sub" / "dir" / "x.png")
    out = tmp_path / "out"

    result = run_cli("denoise", folder, "--recursive", "--out", out)

    assert result.returncode == 0, result.stderr
    assert sorted(mtimes(out)) == ["sub/dir/x.png", "top.png"]


def test_no_recursive_top_only(run_cli, crop, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    crop("camera.png", folder / "top.png")
    crop("coffee.png", folder / "sub" / "dir" / "x.png")
    out = tmp_path / "out"

    result = run_cli("denoise", folder, "--out", out)

    assert result.returncode == 0, result.stderr
    assert sorted(mtimes(out)) == ["top.png"]


def test_glob_pattern_input(run_cli, crop, tmp_path: Path) -> None:
    crop("camera.png", tmp_path / "in" / "a.png")
    crop("coffee.png", tmp_path / "in" / "b.png")
    crop("coffee.jpg", tmp_path / "in" / "c.jpg")

    # One argument with the wildcard in it, as a shell passes a quoted pattern.
    result = run_cli("denoise", "in/*.png", "--out", "out", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert sorted(mtimes(tmp_path / "out")) == ["a.png", "b.png"]


def test_non_ascii_path(run_cli, crop, tmp_path: Path) -> None:
    source = crop("coffee.png", tmp_path / "фото с пробелами" / "кофе café 1.png")
    out = tmp_path / "вывод ü"

    result = run_cli("denoise", source.parent, "--out", out)

    assert result.returncode == 0, result.stderr
    output = out / source.name
    assert output.is_file()
    assert read_unchanged(output).shape == read_unchanged(source).shape


# --------------------------------------------------------------------------------------
# Help, models and import cost


def test_root_help(run_cli) -> None:
    result = run_cli("--help")

    assert result.returncode == 0, result.stderr
    for command in ("denoise", "models", "train"):
        assert command in result.stdout


def test_denoise_help(run_cli) -> None:
    result = run_cli("denoise", "--help")

    assert result.returncode == 0, result.stderr
    options = [
        "--out",
        "--sigma",
        "--format",
        "--quality",
        "--tile",
        "--recursive",
        "--overwrite",
        "--model",
        "--device",
        "--threads",
    ]
    for option in options:
        assert option in result.stdout


# Imports edgefx and edgefx.cli, runs `edgefx --help` and `edgefx denoise --help` in
# the same process, and prints which heavy modules got imported after each step.
IMPORT_PROBE = """
import json
import sys

HEAVY = ("onnxruntime", "torch", "cv2", "numpy")
loaded = {}

import edgefx
import edgefx.cli

loaded["import"] = [name for name in HEAVY if name in sys.modules]
for args in (["--help"], ["denoise", "--help"]):
    try:
        edgefx.cli.app(args, prog_name="edgefx")
    except SystemExit as stop:
        loaded["exit " + " ".join(args)] = stop.code
    loaded[" ".join(args)] = [name for name in HEAVY if name in sys.modules]
print(json.dumps(loaded))
"""


def test_help_skips_heavy_imports() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded["import"] == []
    assert loaded["exit --help"] == 0
    assert loaded["--help"] == []
    assert loaded["exit denoise --help"] == 0
    assert loaded["denoise --help"] == []


def test_models_lists_denoise_s(run_cli) -> None:
    result = run_cli("models")

    assert result.returncode == 0, result.stderr
    assert "denoise-s" in result.stdout


def test_sigterm_leaves_no_partial(samples_dir: Path, tmp_path: Path) -> None:
    import shutil
    import signal
    import subprocess
    import sys
    import time

    # Full-size samples, so that the batch is still running when the signal arrives.
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(12):
        shutil.copy(
            samples_dir / "noisy" / "astronaut.png", folder / f"img{index:02d}.png"
        )
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "edgefx",
        "denoise",
        str(folder),
        "--out",
        str(out),
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(out.glob("img*.png")):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 143, stderr
    assert "terminated" in stderr
    assert temporaries(out) == []
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(out.glob("img*.png"))) == 12


def test_denoise_keeps_icc_and_exif(run_cli, samples_dir: Path, tmp_path: Path) -> None:
    from PIL import Image, ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo = Image.open(samples_dir / "noisy" / "coffee.png").convert("RGB")
    exif = Image.Exif()
    exif[0x010F] = "TestMake"  # Make
    exif[0x0132] = "2026:12:04 10:00:00"  # DateTime
    source = tmp_path / "in" / "photo.jpg"
    source.parent.mkdir()
    photo.save(source, quality=95, icc_profile=profile, exif=exif.tobytes())

    result = run_cli("denoise", source, "--out", tmp_path / "out")

    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "out" / "photo.jpg") as output:
        assert output.info.get("icc_profile") == profile
        assert output.getexif().get(0x010F) == "TestMake"
        assert output.getexif().get(0x0132) == "2026:12:04 10:00:00"


def test_subfolders_only_hint_recursive(
    run_cli, small_batch: Path, tmp_path: Path
) -> None:
    parent = small_batch.parent

    result = run_cli("denoise", parent, "--out", tmp_path / "out")

    assert result.returncode == 2, result.stderr
    assert "no image files found" in result.stderr
    assert "--recursive" in result.stderr


def test_denoise_files_str_paths(small_batch: Path, tmp_path: Path) -> None:
    from edgefx.batch import BatchOptions
    from edgefx.denoise import denoise_files

    out = tmp_path / "apiout"
    source = str(small_batch / "camera.png")

    summary = denoise_files(source, BatchOptions(out_dir=str(out)))

    assert summary.done == 1
    assert summary.failed == 0
    assert (out / "camera.png").is_file()


def test_invalid_choice_lists_choices(
    run_cli, small_batch: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "denoise", small_batch, "--out", tmp_path / "out", "--format", "xml"
    )

    assert result.returncode == 2
    assert "Value error" not in result.stderr
    assert "'xml' (choose one of png, jpeg, webp, tiff, bmp)" in result.stderr


def test_help_hides_verbose_default(run_cli) -> None:
    result = run_cli("denoise", "--help", env={"COLUMNS": "200"})
    verbose = next(line for line in result.stdout.splitlines() if "--verbose" in line)

    assert result.returncode == 0
    assert "default" not in verbose


@pytest.mark.parametrize("command", ["denoise", "classify", "enhance"])
def test_usage_line_plain_paths(run_cli, command: str) -> None:
    result = run_cli(command, "--help")
    usage = result.stdout.splitlines()[0]

    assert result.returncode == 0
    assert usage.endswith(f" {command} [OPTIONS] PATHS...")
    assert "<list[str]>" not in result.stdout
    assert any(line.startswith("  PATHS...  ") for line in result.stdout.splitlines())


def test_cli_default_tile_is_the_library_default(run_cli) -> None:
    from edgefx.denoise import DEFAULT_TILE

    result = run_cli("denoise", "--help")

    assert result.returncode == 0, result.stderr
    # The help text wraps, so compare without line breaks and table borders.
    flat = re.sub(r"[\s│]+", " ", result.stdout)
    match = re.search(r"--tile <int> Tile side.*?\[default: (\d+);", flat)
    assert match is not None, flat
    assert int(match.group(1)) == DEFAULT_TILE
