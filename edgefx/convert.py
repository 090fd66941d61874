"""Export a model for deployment: ORT format for minimal builds, float16 for GPUs.

Both conversions use ONNX Runtime's own tools. ``convert_onnx_models_to_ort`` (in
``onnxruntime.tools``) writes the ``.ort`` file and the required-operators config that a
minimal ONNX Runtime build takes with ``--include_ops_by_config``.
``onnxruntime.transformers.float16`` converts the weights and arithmetic to float16,
while the inputs and outputs stay float32.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgefx.errors import ModelError, OutputError, UsageError
from edgefx.external_data import check_external_data
from edgefx.fsutil import (
    check_output_file,
    check_replaces_no_input,
    interrupts_deferred,
    work_folder,
)
from edgefx.registry import ModelInfo, resolve_any_model

logger = logging.getLogger(__name__)

CONFIG_SUFFIX = ".required_operators.config"
# onnxruntime.tools sets this logger to DEBUG and installs a root handler, so its INFO
# lines would reach stderr.
_CONVERTER_LOGGER = "ort_format_model.utils"


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Raise a logger's level to WARNING for the duration of the block."""
    other = logging.getLogger(name)
    previous = other.level
    other.setLevel(logging.WARNING)
    try:
        yield
    finally:
        other.setLevel(previous)


@dataclass(frozen=True)
class ExportResult:
    output: Path
    source: ModelInfo
    operators_config: Path | None = None  # ORT format only


def _check_output(
    info: ModelInfo, output: Path, locations: list[str], written: list[Path]
) -> None:
    """Raise UsageError unless ``output`` can be written without replacing an input.

    ``locations`` are the model's external-data files (from _check_external_files),
    and ``written`` lists every file that the export writes: ``output``, the
    operators config for ORT format, and the partial file of each.
    """
    if output.is_dir():
        raise UsageError(f"--out {output} is a directory; give a file path")
    inputs = [info.path, *(info.path.parent / location for location in locations)]
    check_replaces_no_input(output, written, inputs)
    temporary_names = tuple(path.name for path in written if path != output)
    check_output_file(output, temporary_names=temporary_names)
    if output.exists():
        logger.warning("%s exists and will be replaced", output)


def _partial_path(target: Path) -> Path:
    """Return the temporary path that _move_into_place copies ``target`` to first."""
    return target.with_name(f".{target.name}.partial")


def _move_into_place(*moves: tuple[Path, Path]) -> None:
    """Copy each (source, target) next to its target, then rename them over the targets.

    Every copy is complete before the first rename, so a full disk or a failed copy
    replaces no target. On any exception, Ctrl-C and SIGTERM included, the partial
    copies are removed. When a rename fails, the targets already renamed in this call
    are removed too, so that no new file is left without the others.
    """
    partials = [(_partial_path(target), target) for _, target in moves]
    renamed: list[Path] = []
    current = moves[0][1]
    try:
        for (source, target), (partial, _) in zip(moves, partials, strict=True):
            current = target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, partial)
        for partial, target in partials:
            current = target
            partial.replace(target)
            renamed.append(target)
    except BaseException as err:
        with interrupts_deferred():
            for path in [partial for partial, _ in partials] + renamed:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(current, err.strerror or str(err)) from err
        raise


def _check_external_files(info: ModelInfo) -> list[str]:
    """Check that each external-data file of the model is in its folder; return them.

    Raises ModelError for a location outside the folder (see check_external_data) or
    a missing file. The locations are relative to the model's folder.
    """
    locations = check_external_data(info.path)
    for location in locations:
        if not (info.path.parent / location).is_file():
            raise ModelError(
                f"{info.path}: external data file {location!r} not found in the "
                f"model's folder {info.path.parent}"
            )
    return locations


def _copy_model(info: ModelInfo, locations: list[str], folder: Path) -> Path:
    """Copy the model and its external-data files into ``folder``; return the copy.

    ``locations`` come from _check_external_files. The data files keep their paths
    relative to the model, and a location that is a link inside the model's folder
    becomes a copy of the file it points to.
    """
    copy = folder / info.path.name
    try:
        shutil.copyfile(info.path, copy)
        for location in locations:
            target = folder / location
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(info.path.parent / location, target)
    except OSError as err:
        raise ModelError(
            f"{info.path}: cannot copy the model for conversion: "
            f"{err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
        ) from err
    return copy


def operators_config_path(output: Path) -> Path:
    """Return the path of the required-operators config written next to ``output``."""
    return output.with_name(output.stem + CONFIG_SUFFIX)


def export_ort(model: str, output: Path) -> ExportResult:
    """Convert ``model`` to ORT format and write its required-operators config.

    The graph is optimized in the converter's "Fixed" style, which suits a minimal build
    without runtime optimizations. The config lists every operator (with its opset) that
    the file uses.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    info = resolve_any_model(model)
    if output.suffix != ".ort":
        raise UsageError(f"--out {output}: an ORT-format file must end in .ort")
    locations = _check_external_files(info)
    config_output = operators_config_path(output)
    written = [
        output,
        config_output,
        _partial_path(output),
        _partial_path(config_output),
    ]
    _check_output(info, output, locations, written)
    with work_folder("edgefx-export-") as work:
        Path(work, "in").mkdir()
        source = _copy_model(info, locations, Path(work, "in"))
        converted = Path(work, "out")
        # The converter logs and prints each step; those go to the debug log.
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed), _quiet(_CONVERTER_LOGGER):
                convert_onnx_models_to_ort(
                    source,
                    output_dir=converted,
                    optimization_styles=[OptimizationStyle.Fixed],
                )
        except Exception as err:  # the converter raises many types
            raise ModelError(
                f"{info.path}: ORT-format conversion failed: {err}"
            ) from err
        logger.debug("ORT converter: %s", printed.getvalue().strip())
        # The converter names its outputs after the copy. The copy keeps the input's
        # name because a name taken from --out could be one of its external-data files.
        ort_file = converted / (source.stem + ".ort")
        config = converted / (source.stem + CONFIG_SUFFIX)
        if not ort_file.is_file() or not config.is_file():
            found = ", ".join(p.name for p in converted.iterdir()) or "nothing"
            raise ModelError(
                f"{info.path}: the ORT converter wrote {found}, not {ort_file.name} "
                f"and {config.name}"
            )
        # The config's header names the converter's temporary file; name ours.
        lines = config.read_text(encoding="utf-8").splitlines()
        lines = [f"# - {output.name}" if x.startswith("# - ") else x for x in lines]
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        # Both files are copied before either is renamed, so a full disk leaves
        # neither of them.
        _move_into_place((config, config_output), (ort_file, output))
    return ExportResult(output, info, config_output)


def export_fp16(model: str, output: Path) -> ExportResult:
    """Write a float16 copy of ``model`` whose inputs and outputs stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    info = resolve_any_model(model)
    if info.metadata.get("precision", "fp32") != "fp32":
        raise UsageError(
            f"{info.path}: this model is {info.metadata['precision']}; convert the "
            "float32 model"
        )
    # ONNX Runtime (1.31) loads a file named .ort as ORT format, which fails on an
    # ONNX file, and edgefx reads a --model name without a slash as a shipped model
    # unless it ends in .onnx.
    if output.suffix != ".onnx":
        raise UsageError(f"--out {output}: an ONNX file must end in .onnx")
    locations = _check_external_files(info)
    _check_output(info, output, locations, [output, _partial_path(output)])
    try:
        proto = onnx.load(str(info.path))
    except Exception as err:  # onnx raises ValidationError, OSError and others
        detail = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise ModelError(f"{info.path}: cannot load the model: {detail}") from err
    try:
        converted = convert_float_to_float16(proto, keep_io_types=True)
    except Exception as err:  # the converter raises many types
        raise ModelError(f"{info.path}: float16 conversion failed: {err}") from err
    values = {p.key: p.value for p in converted.metadata_props}
    values.update(name=f"{info.name}-fp16", precision="fp16", variant_of=info.name)
    del converted.metadata_props[:]
    for key, value in sorted(values.items()):
        converted.metadata_props.add(key=key, value=value)
    with work_folder("edgefx-export-") as work:
        written = Path(work, output.name)
        onnx.save(converted, str(written))
        _move_into_place((written, output))
    return ExportResult(output, info)
