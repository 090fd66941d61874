"""``edgefx quantize`` and ``edgefx export``: model files for edge deployment."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgefx.cli._common import (
    NOTHING_WRITTEN_HINT,
    QuietOption,
    ThreadsOption,
    VerboseOption,
    choice_metavar,
    choice_parser,
    configure_logging,
    handle_errors,
    integer_option,
    number,
    stderr_console,
)

ModelArgument = Annotated[
    str,
    typer.Argument(
        help="Shipped model name (see `edgefx models`) or path to an .onnx file.",
        show_default=False,
        metavar="MODEL",
    ),
]


def _default_output(model: str, suffix: str) -> Path:
    """``NAME<suffix>`` in the current folder, NAME being the model's file stem."""
    stem = Path(model).stem if model.endswith(".onnx") or "/" in model else model
    return Path(stem + suffix)


def _names(text: str | None) -> tuple[str, ...]:
    """Node names from a comma-separated option."""
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


def quantize(
    model: ModelArgument,
    calibrate: Annotated[
        Path,
        typer.Option(
            "--calibrate",
            help="Training data to calibrate on, never the test set: a folder (or "
            "zip) of images for the denoiser and the classifier. For the enhancer, a "
            "folder of noisy speech recordings, or the speech and noise corpus that "
            "`edgefx train enhance --data` takes (its training speech is mixed with "
            "its training noise).",
            show_default=False,
        ),
    ],
    test_data: Annotated[
        Path | None,
        typer.Option(
            "--test-data",
            help="Test data to score both models on: a folder of clean photos "
            "(noise of sigma 25 is added; PSNR in dB), a folder or zip of labelled "
            "images with one subfolder per class (top-1 accuracy in %), or the "
            "speech and noise corpus that `edgefx train enhance --data` takes (PESQ "
            "on its held-out speakers and noises). The result goes into the model's "
            "metadata.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output file. Default: ./NAME-int8.onnx."),
    ] = None,
    samples: Annotated[
        int,
        integer_option(
            help="Calibration photos, images or recordings to read. The enhancer "
            "cuts each recording into several model inputs.",
            low=1,
        ),
    ] = 64,
    test_limit: Annotated[
        int | None,
        integer_option(
            help="Score on this many test photos, images or held-out utterances, "
            "evenly spread. Each utterance is mixed with noise at 5 SNRs, so it "
            "gives 5 test mixtures. Default: all.",
            low=1,
        ),
    ] = None,
    per_channel: Annotated[
        bool,
        typer.Option(help="One weight scale per output channel (else per tensor)."),
    ] = True,
    nodes: Annotated[
        str | None,
        typer.Option(
            help="Quantize only these nodes, by name, separated by commas. Default: "
            "every node ONNX Runtime can quantize.",
        ),
    ] = None,
    exclude: Annotated[
        str | None,
        typer.Option(
            help="Leave these nodes in float32, by name, separated by commas; the "
            "rest is quantized as --nodes says.",
        ),
    ] = None,
    percentile: Annotated[
        float | None,
        typer.Option(
            help="Clip each activation's range at +-t, t being the P-th percentile "
            "of its absolute calibration values, instead of taking the lowest and "
            "highest value. Rare outliers then no longer widen the 8-bit steps. "
            "Default: 99.95 for denoisers, off (100) otherwise.",
            show_default=False,
            parser=number(50.0, 100.0),
        ),
    ] = None,
    bias_correction: Annotated[
        bool | None,
        typer.Option(
            "--bias-correction/--no-bias-correction",
            help="After quantizing, move each convolution's bias so that its mean "
            "output on the calibration inputs matches the float model's. Default: "
            "on for denoisers, off otherwise.",
            show_default=False,
        ),
    ] = None,
    fine_tune: Annotated[
        int,
        integer_option(
            "--fine-tune",
            metavar="STEPS",
            help="Denoisers only; needs PyTorch. After calibrating, fine-tune the "
            "weights for STEPS steps on the calibration photos (500 at most, evenly "
            "spread) with the int8 "
            "model's rounding simulated, then quantize them on the same 8-bit grid. "
            "Turns bias correction off unless it is asked for. The shipped int8 "
            "denoiser got 5000 steps (with --percentile 99.9), about 0.8 s each on "
            "one CPU thread. At most 100000.",
            low=0,
            high=100_000,
        ),
    ] = 0,
    equalize: Annotated[
        bool | None,
        typer.Option(
            "--equalize/--no-equalize",
            help="Even out the per-channel ranges of the activations before "
            "quantizing, by rescaling consecutive convolutions; the float model's "
            "output does not change. Default: on for denoisers, off otherwise.",
            show_default=False,
        ),
    ] = None,
    threads: ThreadsOption = 0,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Write a static int8 (QDQ) model, calibrated on real inputs.

    With --test-data, both models are scored on it and timed on this CPU, and the
    change in quality (PSNR, top-1 accuracy or PESQ) and speed is recorded in the new
    model's metadata and printed.
    """
    if verbose or quiet:
        configure_logging(-1 if quiet else verbose)
    from edgefx.quantize import QuantizeOptions, describe, quantize_model

    with handle_errors(NOTHING_WRITTEN_HINT):
        options = QuantizeOptions(
            calibration=calibrate,
            test_data=test_data,
            samples=samples,
            test_limit=test_limit,
            per_channel=per_channel,
            nodes=_names(nodes),
            exclude=_names(exclude),
            percentile=percentile,
            threads=threads,
            equalize=equalize,
            bias_correction=bias_correction,
            fine_tune_steps=fine_tune,
        )
        output = out or _default_output(model, "-int8.onnx")
        result = quantize_model(model, output, options)
    ops = ", ".join(
        f"{op} {count}" for op, count in sorted(result.quantized_nodes.items())
    )
    console = stderr_console()
    console.print(
        f"wrote {result.output} (int8 operators: {ops})", markup=False, soft_wrap=True
    )
    if result.comparison is not None:
        comparison = result.comparison
        console.print(describe(comparison), markup=False, soft_wrap=True)
        console.print(comparison.verdict, markup=False, soft_wrap=True)


class ExportFormat(str, Enum):
    ort = "ort"
    onnx = "onnx"


def export(
    model: ModelArgument,
    export_format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="ort: ORT format for minimal ONNX Runtime builds, with its "
            "required-operators config; onnx: an ONNX file (needs --fp16).",
            parser=choice_parser(ExportFormat),
            metavar=choice_metavar(ExportFormat),
        ),
    ],
    fp16: Annotated[
        bool,
        typer.Option(
            "--fp16",
            help="Convert weights and arithmetic to float16 for GPUs; inputs and "
            "outputs stay float32.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output file. Default: ./NAME.ort or ./NAME-fp16.onnx.",
        ),
    ] = None,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Export a model as ORT format (minimal builds) or as float16 ONNX (GPUs)."""
    if verbose or quiet:
        configure_logging(-1 if quiet else verbose)
    from edgefx.convert import export_fp16, export_ort
    from edgefx.errors import UsageError

    with handle_errors(NOTHING_WRITTEN_HINT):
        if export_format is ExportFormat.ort:
            if fp16:
                raise UsageError(
                    "--fp16 makes an ONNX file for GPUs; use --format onnx --fp16"
                )
            result = export_ort(model, out or _default_output(model, ".ort"))
        else:
            if not fp16:
                raise UsageError(
                    "--format onnx converts to float16; add --fp16 (the input is "
                    "already a float32 ONNX file)"
                )
            result = export_fp16(model, out or _default_output(model, "-fp16.onnx"))
    console = stderr_console()
    console.print(f"wrote {result.output}", markup=False, soft_wrap=True)
    if result.operators_config is not None:
        console.print(
            f"wrote {result.operators_config} (for a minimal build: "
            "--include_ops_by_config)",
            markup=False,
            soft_wrap=True,
        )
