"""The ``edgefx`` command line: parse, check option combinations, call the library.

Heavy modules (numpy, OpenCV, ONNX Runtime, torch) are imported inside the commands, so
``edgefx --help`` starts without them.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgefx import __version__
from edgefx.cli._common import (
    Device,
    DeviceOption,
    ModelOption,
    Optimization,
    OptimizationOption,
    OverwriteOption,
    ProgressReporter,
    QuietOption,
    RecursiveOption,
    ThreadsOption,
    VerboseOption,
    configure_logging,
    handle_errors,
    print_summary,
)
from edgefx.cli.train import train_app

app = typer.Typer(
    name="edgefx",
    help="ONNX edge inference for media: denoise photos, classify images, enhance "
    "speech.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(train_app, name="train")


class ImageFormat(str, Enum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"
    tiff = "tiff"
    bmp = "bmp"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgefx {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """ONNX edge inference: denoise photos, classify images, enhance speech."""
    configure_logging(-1 if quiet else verbose)


@app.command()
def denoise(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, directories or glob patterns.",
            show_default=False,
            metavar="PATHS",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output directory; the input tree is mirrored inside it.",
        ),
    ],
    sigma: Annotated[
        float | None,
        typer.Option(
            help="Noise level to remove, 0-75 on the 0-255 scale. Estimated per image "
            "when not given.",
            min=0,
            max=75,
        ),
    ] = None,
    output_format: Annotated[
        ImageFormat | None,
        typer.Option(
            "--format",
            help="Output format. Default: the input's format, bit depth and alpha.",
            case_sensitive=False,
        ),
    ] = None,
    quality: Annotated[
        int | None,
        typer.Option(help="JPEG/WebP quality 1-100 (default 95).", min=1, max=100),
    ] = None,
    tile: Annotated[
        int,
        typer.Option(
            help="Tile side in pixels; large images are processed in overlapping "
            "tiles of this size, which bounds memory.",
            min=32,
        ),
    ] = 512,
    recursive: RecursiveOption = False,
    overwrite: OverwriteOption = False,
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    threads: ThreadsOption = 0,
    graph_optimization: OptimizationOption = Optimization.all,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Remove noise from photos (PNG 8/16-bit, JPEG, WebP, TIFF, BMP).

    Each output keeps its input's format, bit depth, size and alpha channel. Existing
    outputs are skipped, so an interrupted run resumes when started again.
    """
    if verbose or quiet:
        configure_logging(-1 if quiet else verbose)
    from edgefx.batch import BatchOptions
    from edgefx.denoise import DenoiseOptions, denoise_files
    from edgefx.runtime import RuntimeOptions

    with handle_errors():
        runtime = RuntimeOptions(
            device=device.value,
            threads=threads,
            optimization=graph_optimization.value,
        )
        options = DenoiseOptions(sigma=sigma, tile=tile)
        batch = BatchOptions(out_dir=out, recursive=recursive, overwrite=overwrite)
        with ProgressReporter("denoise") as reporter:
            summary = denoise_files(
                paths,
                batch,
                options,
                runtime,
                model=model,
                output_format=output_format.value if output_format else None,
                quality=quality,
                reporter=reporter,
            )
    print_summary(summary)
    raise typer.Exit(summary.exit_code)


@app.command()
def models(
    task: Annotated[
        str | None,
        typer.Option(help="Show only this task: denoise, classify, enhance."),
    ] = None,
) -> None:
    """List the shipped models with their size, parameters and key metric."""
    from rich.table import Table

    from edgefx.registry import model_summaries

    with handle_errors():
        rows = model_summaries(task)
    table = Table(title="edgefx models", title_justify="left")
    for column in ("name", "task", "default", "size", "parameters", "key metric"):
        table.add_column(
            column, justify="right" if column in ("size", "parameters") else "left"
        )
    for row in rows:
        table.add_row(
            row.name,
            row.task,
            "yes" if row.default else "",
            f"{row.size_bytes / 1e6:.2f} MB",
            f"{row.parameters:,}",
            row.key_metric,
        )
    from rich.console import Console

    Console().print(table)


def main() -> None:
    """Entry point of the ``edgefx`` console script."""
    app()
