"""The ``edgefx`` command line: parse, check option combinations, call the library.

Heavy modules (numpy, OpenCV, ONNX Runtime, torch) are imported inside the commands, so
``edgefx --help`` starts without them.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefx import __version__
from edgefx.cli._common import (
    Device,
    DeviceOption,
    Engine,
    EngineOption,
    JobsOption,
    ModelOption,
    Optimization,
    OptimizationOption,
    OverwriteOption,
    PlainUsageCommand,
    ProgressReporter,
    QuietOption,
    RayAddressOption,
    RecursiveOption,
    ThreadsOption,
    VerboseOption,
    choice_metavar,
    choice_parser,
    configure_logging,
    handle_errors,
    integer_option,
    logger,
    number,
    print_summary,
    printable,
)
from edgefx.cli.edge import export, quantize
from edgefx.cli.train import train_app

if TYPE_CHECKING:
    from edgefx.classify import ClassifyRow
    from edgefx.objectstore import ObjectPath
    from edgefx.pipeline import EngineOptions
    from edgefx.runtime import RuntimeOptions

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


class AudioFormat(str, Enum):
    wav = "wav"
    flac = "flac"
    ogg = "ogg"
    mp3 = "mp3"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgefx {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    context: typer.Context,
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
    if context.invoked_subcommand != "train":
        from edgefx.threads import limit_library_threads

        limit_library_threads()


def _run_settings(
    device: Device,
    threads: int,
    optimization: Optimization,
    engine: Engine,
    jobs: int,
    ray_address: str | None,
) -> tuple[RuntimeOptions, EngineOptions]:
    """Build the ONNX Runtime and batch-engine settings of a batch command."""
    from edgefx.pipeline import EngineOptions
    from edgefx.runtime import RuntimeOptions

    runtime = RuntimeOptions(
        device=device.value, threads=threads, optimization=optimization.value
    )
    return runtime, EngineOptions(engine.value, jobs, ray_address)


@app.command(cls=PlainUsageCommand)
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
        str,
        typer.Option(
            "--out",
            "-o",
            help="Output directory, or an object store prefix such as "
            "s3://bucket/prefix (needs pyarrow); the input tree is mirrored inside it.",
            metavar="<dir>",
        ),
    ],
    sigma: Annotated[
        float | None,
        typer.Option(
            help="Noise level to remove, 0-75 on the 0-255 scale; 0 leaves the image "
            "as it is. Estimated per image when not given.",
            parser=number(0, 75),
        ),
    ] = None,
    output_format: Annotated[
        ImageFormat | None,
        typer.Option(
            "--format",
            help="Output format. Default: the input's format, bit depth and alpha.",
            parser=choice_parser(ImageFormat),
            metavar=choice_metavar(ImageFormat),
        ),
    ] = None,
    quality: Annotated[
        int | None,
        integer_option(help="JPEG/WebP quality 1-100 (default 95).", low=1, high=100),
    ] = None,
    tile: Annotated[
        int,
        integer_option(
            help="Tile side in pixels; large images are processed in overlapping "
            "tiles of this size, which bounds memory.",
            low=32,
        ),
    ] = 768,  # edgefx.denoise.DEFAULT_TILE, not imported so that --help starts fast
    recursive: RecursiveOption = False,
    overwrite: OverwriteOption = False,
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    threads: ThreadsOption = 0,
    graph_optimization: OptimizationOption = Optimization.all,
    jobs: JobsOption = 0,
    engine: EngineOption = Engine.local,
    ray_address: RayAddressOption = None,
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
    from edgefx.objectstore import parse_output

    if quality is not None and output_format not in (
        None,
        ImageFormat.jpeg,
        ImageFormat.webp,
    ):
        logger.warning(
            "--quality applies to JPEG and WebP only; %s output ignores it",
            output_format.value.upper(),
        )
    with handle_errors():
        runtime, engine_options = _run_settings(
            device, threads, graph_optimization, engine, jobs, ray_address
        )
        options = DenoiseOptions(sigma=sigma, tile=tile)
        batch = BatchOptions(
            out_dir=parse_output(out), recursive=recursive, overwrite=overwrite
        )
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
                engine=engine_options,
            )
    print_summary(summary)
    raise typer.Exit(summary.exit_code)


class ResultFormat(str, Enum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"


class Preset(str, Enum):
    imagenet = "imagenet"
    unit = "unit"


@app.command(cls=PlainUsageCommand)
def classify(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, directories or glob patterns.",
            show_default=False,
            metavar="PATHS",
        ),
    ],
    top_k: Annotated[
        int,
        integer_option(
            "--top-k", "-k", help="Labels listed per image, best first.", low=1
        ),
    ] = 5,
    result_format: Annotated[
        ResultFormat | None,
        typer.Option(
            "--format",
            help="table (on stdout), or csv / jsonl (on stdout or to --out). "
            "Default: from the --out suffix (.csv, .jsonl, .json), else table. In csv, "
            "top_k is label:score pairs joined by ';', with '%', ';' and ':' in labels "
            "written as %25, %3B and %3A.",
            parser=choice_parser(ResultFormat),
            metavar=choice_metavar(ResultFormat),
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the csv or jsonl results to this file, or to an object store "
            "URI such as s3://bucket/results.csv (needs pyarrow), instead of stdout.",
            metavar="<file>",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        integer_option(help="Images per model call.", low=1),
    ] = 8,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Text file with one class label per line, in the model's class "
            "order. Default: the labels in the model or its JSON sidecar.",
        ),
    ] = None,
    preset: Annotated[
        Preset | None,
        typer.Option(
            help="Preprocessing for a model without metadata: imagenet (224x224 "
            "crop, ImageNet mean and std) or unit (pixels in [0, 1], stretched to "
            "the model's fixed input size).",
            parser=choice_parser(Preset),
            metavar=choice_metavar(Preset),
        ),
    ] = None,
    recursive: RecursiveOption = False,
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    threads: ThreadsOption = 0,
    graph_optimization: OptimizationOption = Optimization.all,
    jobs: JobsOption = 0,
    engine: EngineOption = Engine.local,
    ray_address: RayAddressOption = None,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Label images with an ONNX classifier and print the top-k labels per file.

    Each image is resized as the model states: stretch resizes the whole image to the
    model's input size, and crop resizes the shorter side to 256/224 of the input
    size and takes the center (the ImageNet convention). A large JPEG is decoded at
    1/2, 1/4 or 1/8 scale first (libjpeg's DCT scaling): the largest factor that
    divides its width and height and leaves at least 4 times the resize size on each
    side. That is faster and gives nearly the same model input. Alpha is ignored and
    gray images are repeated into three channels. The preprocessing comes from --preset
    when given, else from a JSON sidecar (model.onnx -> model.json), else from the
    model's metadata.
    """
    if verbose or quiet:
        configure_logging(-1 if quiet else verbose)
    from edgefx.classify import ClassifyOptions, classify_files
    from edgefx.objectstore import ObjectPath, check_object, parse_output

    # The results are printed or written once every image is classified, so a stopped
    # run leaves nothing to resume from.
    with handle_errors("no results were written; run the same command again"):
        results = parse_output(out) if out is not None else None
        if isinstance(results, Path) and results.is_dir():
            from edgefx.errors import UsageError

            raise UsageError(f"--out {results} is a directory; give a file path")
        result_format = _classify_result_format(result_format, results)
        if isinstance(results, ObjectPath):
            check_object(results)
        runtime, engine_options = _run_settings(
            device, threads, graph_optimization, engine, jobs, ray_address
        )
        options = ClassifyOptions(top_k=top_k, batch_size=batch_size)
        with ProgressReporter("classify") as reporter:
            summary, rows = classify_files(
                paths,
                recursive=recursive,
                options=options,
                runtime=runtime,
                model=model,
                labels_path=labels,
                preset=preset.value if preset else None,
                reporter=reporter,
                engine=engine_options,
                # An object cannot be one of the local inputs, so only a local file
                # needs classify_files's checks.
                results_path=results if isinstance(results, Path) else None,
            )
        _write_classify_rows(rows, result_format, results)
    print_summary(summary, writes_outputs=False)
    raise typer.Exit(summary.exit_code)


_SUFFIX_FORMATS = {
    ".csv": ResultFormat.csv,
    ".jsonl": ResultFormat.jsonl,
    ".json": ResultFormat.jsonl,
}


def _classify_result_format(
    result_format: ResultFormat | None, out: Path | ObjectPath | None
) -> ResultFormat:
    """Return --format, else the format the --out suffix names, else table."""
    from edgefx.errors import UsageError

    if out is None:
        return result_format or ResultFormat.table
    if result_format is None:
        inferred = _SUFFIX_FORMATS.get(out.suffix.lower())
        if inferred is not None:
            return inferred
        raise UsageError(
            f"--out {out}: cannot tell the format from the suffix "
            f"'{out.suffix}'; use .csv, .jsonl or .json, or give --format csv or "
            "--format jsonl"
        )
    if result_format is ResultFormat.table:
        raise UsageError("--out writes csv or jsonl; --format table prints only")
    return result_format


# Terminal width below which the classify table becomes one line per image.
NARROWEST_CLASSIFY_TABLE = 40


def _classify_column_widths(
    total: int, files: list[str], labels: list[str]
) -> dict[str, int | None]:
    """Compute the classify table's column widths for a terminal ``total`` columns wide.

    When the table is too wide, the top-k column gives up its width first. File names
    keep theirs up to half of the text width and labels up to a quarter, so that a name
    wraps only when it is long. Where the terminal is too narrow for that, every width
    is None, so rich chooses.
    """
    text = total - 13  # 5 rules and a 1-character pad each side of 4 cells
    score = len("score")
    label = min(max(map(len, labels + ["label"])), text // 4)
    file = min(max(map(len, files + ["file"])), text // 2)
    top_k = text - file - label - score
    if top_k < 12:
        return dict.fromkeys(("file", "label", "score", "top_k"))
    return {"file": file, "label": label, "score": score, "top_k": None}


def _write_classify_rows(
    rows: list[ClassifyRow], result_format: ResultFormat, out: Path | ObjectPath | None
) -> None:
    if result_format is ResultFormat.table:
        if not rows:
            # Every file failed. The failed: lines and the summary report that, so
            # an empty table would add only a frame.
            return
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = Console()
        files = [printable(str(row.file)) for row in rows]
        labels = [printable(row.label) for row in rows]
        tops = [
            printable(", ".join(f"{name} {score:.3f}" for name, score in row.top_k))
            for row in rows
        ]
        if console.width < NARROWEST_CLASSIFY_TABLE:
            # Four columns in so few characters would drop text: one line per image
            # instead, which the terminal wraps.
            lines = zip(rows, files, labels, tops, strict=True)
            typer.echo(
                "".join(
                    f"{f}: {label} {row.score:.3f} ({top})\n"
                    for row, f, label, top in lines
                ),
                nl=False,
            )
            return
        table = Table(title="edgefx classify", title_justify="left")
        for column, width in _classify_column_widths(
            console.width, files, labels
        ).items():
            # A narrow terminal or a pipe (80 columns) wraps cells instead of
            # cutting them.
            table.add_column(
                column,
                justify="right" if column == "score" else "left",
                overflow="fold",
                width=width,
            )
        for row, file, label, top in zip(rows, files, labels, tops, strict=True):
            # Text cells are never parsed as markup, so "[b]" in a name stays literal.
            table.add_row(Text(file), Text(label), f"{row.score:.3f}", Text(top))
        console.print(table)
        return

    import csv
    import io
    import json

    from edgefx.classify import format_top_k_csv

    buffer = io.StringIO()
    if result_format is ResultFormat.csv:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", "label", "score", "top_k"])
        for row in rows:
            top = format_top_k_csv(row.top_k)
            writer.writerow([str(row.file), row.label, f"{row.score:.6f}", top])
    else:
        # One encoder for all rows: json.dumps with options builds a new one per call.
        encode = json.JSONEncoder(ensure_ascii=False).encode
        for row in rows:
            record = {
                "file": str(row.file),
                "label": row.label,
                "score": round(row.score, 6),
                "top_k": [[label, round(score, 6)] for label, score in row.top_k],
            }
            buffer.write(encode(record))
            buffer.write("\n")
    if out is None:
        typer.echo(buffer.getvalue(), nl=False)
        return
    from edgefx.fsutil import atomic_write_bytes

    atomic_write_bytes(out, buffer.getvalue().encode("utf-8"))


@app.command(cls=PlainUsageCommand)
def enhance(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Audio files (WAV, FLAC, Ogg, MP3, AIFF, AU), directories or glob "
            "patterns.",
            show_default=False,
            metavar="PATHS",
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Output directory, or an object store prefix such as "
            "s3://bucket/prefix (needs pyarrow); the input tree is mirrored inside it.",
            metavar="<dir>",
        ),
    ],
    atten_limit: Annotated[
        float | None,
        typer.Option(
            "--atten-limit",
            help="Turn no part of the sound down by more than this many dB, which "
            "keeps some background for a natural result (e.g. 12). Default: remove "
            "as much noise as the model finds.",
            parser=number(0),
        ),
    ] = None,
    output_format: Annotated[
        AudioFormat | None,
        typer.Option(
            "--format",
            help="Output format. Default: the input's format and sample format.",
            parser=choice_parser(AudioFormat),
            metavar=choice_metavar(AudioFormat),
        ),
    ] = None,
    recursive: RecursiveOption = False,
    overwrite: OverwriteOption = False,
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    threads: ThreadsOption = 0,
    graph_optimization: OptimizationOption = Optimization.all,
    jobs: JobsOption = 0,
    engine: EngineOption = Engine.local,
    ray_address: RayAddressOption = None,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Suppress background noise in speech recordings.

    Each output keeps its input's sample rate, channel count and sample format. The
    model works at 16 kHz, so other rates are resampled (soxr) for it and back.
    Content above its band is kept, turned down as much as the top of the band.
    Files are processed in blocks, so memory stays bounded for long recordings.
    Existing outputs are skipped, so an interrupted run resumes when started again.
    """
    if verbose or quiet:
        configure_logging(-1 if quiet else verbose)
    from edgefx.batch import BatchOptions
    from edgefx.enhance import EnhanceOptions, enhance_files
    from edgefx.objectstore import parse_output

    with handle_errors():
        runtime, engine_options = _run_settings(
            device, threads, graph_optimization, engine, jobs, ray_address
        )
        options = EnhanceOptions(atten_limit_db=atten_limit)
        batch = BatchOptions(
            out_dir=parse_output(out), recursive=recursive, overwrite=overwrite
        )
        with ProgressReporter("enhance") as reporter:
            summary = enhance_files(
                paths,
                batch,
                options,
                runtime,
                model=model,
                output_format=output_format.value if output_format else None,
                reporter=reporter,
                engine=engine_options,
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
    """List the shipped models with their size, parameters and key metric.

    The default column shows which model runs without --model: "yes" everywhere, or
    "CPU" and "CUDA" where an int8 variant is the CPU default.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from edgefx.registry import model_summaries

    with handle_errors():
        rows = model_summaries(task)
    # Every column but the key metric keeps its whole text on one line. The key
    # metric gets the remaining width and ends in an ellipsis when it does not fit.
    # Piped output is not width-limited, so it keeps the whole text.
    table = Table(title="edgefx models", title_justify="left", box=box.SIMPLE_HEAD)
    columns = ("name", "task", "precision", "default", "size", "parameters")
    cells = [
        (
            row.name,
            row.task,
            row.precision,
            row.default_on,
            f"{row.size_bytes / 1e6:.2f} MB",
            f"{row.parameters:,}",
        )
        for row in rows
    ]
    for index, column in enumerate(columns):
        widest = max([len(column)] + [len(cell[index]) for cell in cells])
        table.add_column(
            column,
            justify="right" if column in ("size", "parameters") else "left",
            no_wrap=True,
            min_width=widest,
        )
    console = Console()
    fixed_width = sum(column.min_width or 0 for column in table.columns)
    # Below this width the key metric would show only a few characters, so it goes
    # on lines of its own under the table instead.
    metric_column = console.width >= fixed_width + 2 * len(columns) + 24
    if metric_column or not console.is_terminal:
        table.add_column("key metric", no_wrap=True, overflow="ellipsis")
        for row, cell in zip(rows, cells, strict=True):
            table.add_row(*cell, row.key_metric)
    else:
        for cell in cells:
            table.add_row(*cell)
    if not console.is_terminal:
        # Pipes and files get whole lines, whatever the width of the terminal, without
        # the spaces that pad each line to the table's width.
        console = Console(width=Console(width=10_000).measure(table).maximum)
        with console.capture() as captured:
            console.print(table)
        for line in captured.get().splitlines():
            print(line.rstrip())
    else:
        console.print(table)
    if not metric_column and console.is_terminal:
        for row in rows:
            console.print(
                f"{row.name}: {row.key_metric}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    for row in rows:
        if row.default_on == "CPU":
            console.print(
                f"{row.task}: {row.name} runs by default on the CPU (faster when "
                f"measured, and within tolerance of {row.variant_of}); "
                f"{row.variant_of} runs on CUDA",
                markup=False,
                soft_wrap=True,
            )


app.command(cls=PlainUsageCommand)(quantize)
app.command(cls=PlainUsageCommand)(export)


def main() -> None:
    """Entry point of the ``edgefx`` console script."""
    app()
