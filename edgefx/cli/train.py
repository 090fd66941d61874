"""``edgefx train``: the training recipes (need the ``train`` extra, with torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefx.cli._common import handle_errors

train_app = typer.Typer(
    help="Train the networks (needs: pip install 'edgefx[train]').",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as err:
        from edgefx.errors import UsageError

        raise UsageError(
            "training needs PyTorch: install the train extra, pip install "
            "'edgefx[train]' (from a checkout: pip install -e '.[train]')"
        ) from err


@train_app.command("denoise")
def train_denoise(
    data: Annotated[
        Path,
        typer.Option(
            help="Folder of clean training images, searched recursively. Grayscale "
            "files become grayscale samples.",
            exists=True,
            file_okay=False,
        ),
    ],
    work_dir: Annotated[
        Path,
        typer.Option(
            help="Folder for checkpoints and the log; an existing checkpoint there is "
            "resumed."
        ),
    ] = Path("runs/denoise"),
    export: Annotated[
        Path | None,
        typer.Option(help="Write the best checkpoint as ONNX to this path when done."),
    ] = None,
    steps: Annotated[
        int, typer.Option(help="Training steps (batches).", min=1)
    ] = 12000,
    batch_size: Annotated[int, typer.Option(help="Patches per step.", min=1)] = 32,
    patch_size: Annotated[
        int, typer.Option(help="Patch side in pixels (even).", min=16)
    ] = 64,
    features: Annotated[
        int, typer.Option(help="Channels per convolution.", min=8)
    ] = 64,
    blocks: Annotated[int, typer.Option(help="Residual blocks.", min=1)] = 5,
    learning_rate: Annotated[
        float, typer.Option(help="Peak Adam learning rate.")
    ] = 1e-3,
    threads: Annotated[
        int, typer.Option(help="PyTorch CPU threads; 0 keeps its default.", min=0)
    ] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the image denoiser on a folder of clean photos (resumable).

    The network takes the noise level as an input; `edgefx denoise` estimates it per
    image unless --sigma is given.
    """
    with handle_errors():
        _require_torch()
        from edgefx.errors import UsageError
        from edgefx.train.denoise import DenoiseTrainOptions, export_best, train

        if patch_size % 2:
            raise UsageError(f"invalid --patch-size {patch_size}; use an even number")
        options = DenoiseTrainOptions(
            data=data,
            work_dir=work_dir,
            steps=steps,
            batch_size=batch_size,
            patch_size=patch_size,
            features=features,
            blocks=blocks,
            learning_rate=learning_rate,
            threads=threads,
            seed=seed,
        )
        try:
            best = train(options)
        except ValueError as err:
            raise UsageError(str(err)) from err
        typer.echo(f"best checkpoint: {best}")
        if export is not None:
            export_best(best, export, options)
            typer.echo(f"exported: {export}")


@train_app.command("classify")
def train_classify(
    data: Annotated[
        Path,
        typer.Option(
            help="Training images: a zip or folder laid out as [SPLIT/]CLASS/IMAGE; "
            "each image's parent folder names its class.",
            exists=True,
        ),
    ],
    test_data: Annotated[
        Path | None,
        typer.Option(help="Test images in the same layout, scored after training."),
    ] = None,
    work_dir: Annotated[
        Path,
        typer.Option(
            help="Folder for checkpoints and the log; an existing checkpoint there is "
            "resumed."
        ),
    ] = Path("runs/classify"),
    export: Annotated[
        Path | None,
        typer.Option(help="Write the best checkpoint as ONNX to this path when done."),
    ] = None,
    epochs: Annotated[
        int, typer.Option(help="Passes over the training set.", min=1)
    ] = 30,
    batch_size: Annotated[int, typer.Option(help="Images per step.", min=2)] = 128,
    size: Annotated[
        int, typer.Option(help="Input side in pixels; images are resized to it.", min=8)
    ] = 32,
    width: Annotated[
        int, typer.Option(help="Channels of the first stage (ResNet-20: 16).", min=4)
    ] = 16,
    blocks: Annotated[
        int, typer.Option(help="Residual blocks per stage (ResNet-20: 3).", min=1)
    ] = 3,
    learning_rate: Annotated[float, typer.Option(help="Peak SGD learning rate.")] = 0.1,
    threads: Annotated[
        int, typer.Option(help="PyTorch CPU threads; 0 keeps its default.", min=0)
    ] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the image classifier (a CIFAR-style ResNet) on labelled images."""
    with handle_errors():
        _require_torch()
        from edgefx.errors import UsageError
        from edgefx.train.classify import (
            ClassifyTrainOptions,
            evaluate_checkpoint,
            export_best,
            train,
        )

        options = ClassifyTrainOptions(
            data=data,
            work_dir=work_dir,
            test_data=test_data,
            epochs=epochs,
            batch_size=batch_size,
            size=size,
            width=width,
            blocks=blocks,
            learning_rate=learning_rate,
            threads=threads,
            seed=seed,
        )
        try:
            best = train(options)
            typer.echo(f"best checkpoint: {best}")
            if test_data is not None:
                accuracy = evaluate_checkpoint(best, test_data)
                typer.echo(f"test accuracy: {accuracy:.2f} %")
        except ValueError as err:
            raise UsageError(str(err)) from err
        if export is not None:
            export_best(best, export, data_description=data.name)
            typer.echo(f"exported: {export}")
