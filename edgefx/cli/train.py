"""``edgefx train``: the training recipes (need the ``train`` extra, with torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefx.cli._common import (
    CHECKPOINT_HINT,
    handle_errors,
    integer_option,
    number,
)

train_app = typer.Typer(
    help='Train the networks (needs PyTorch: pip install "torch>=2.2" '
    '"onnxscript>=0.1").',
    # Click cuts the help in `edgefx --help`'s command list after 45 characters.
    short_help="Train the networks (needs PyTorch).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

# Options that every recipe takes the same way.
WorkDirOption = Annotated[
    Path,
    typer.Option(
        help="Folder for checkpoints and the log; an existing checkpoint there is "
        "resumed."
    ),
]
ExportOption = Annotated[
    Path | None,
    typer.Option(help="Write the best checkpoint as ONNX to this path when done."),
]
ThreadsOption = Annotated[
    int,
    integer_option(
        help="PyTorch CPU threads, 0 to 256; 0 keeps its default.", low=0, high=256
    ),
]
SeedOption = Annotated[int, integer_option(help="Random seed.")]
PrecisionOption = Annotated[
    str,
    typer.Option(
        help="Forward-pass precision: auto (bf16 where the CPU has native bf16), "
        "bf16 or fp32. The exported model is float32 either way."
    ),
]


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as err:
        from edgefx.errors import UsageError

        raise UsageError(
            'training needs PyTorch: pip install "torch>=2.2" "onnxscript>=0.1", or '
            'pip install -e ".[train]" in the edgefx checkout. On a machine without '
            "an NVIDIA GPU, install a CPU build of torch first, which skips several "
            "gigabytes of CUDA packages."
        ) from err


# Checkpoint in --work-dir that the recipes resume from, ignoring --init.
RESUME_CHECKPOINT = "checkpoint.pt"

# Keys of the network configuration that each recipe stores in its checkpoints.
CHECKPOINT_CONFIG_KEYS = {
    "denoise": frozenset({"channels", "features", "blocks"}),
    "enhance": frozenset({"hop", "hidden", "embedding"}),
}


def _initial_weights(init: str | None, task: str, work_dir: Path) -> Path | None:
    """Return the file that --init names: a path, or a shipped model of ``task``.

    A file is checked to contain weights for ``task`` unless ``work_dir`` has a
    checkpoint to resume, because training then ignores --init.
    """
    from edgefx.errors import UsageError

    if init is None:
        return None
    if not init.strip():
        raise UsageError(
            "--init is empty; give an ONNX file, a training checkpoint or a shipped "
            "model's name"
        )
    path = Path(init).expanduser()
    if path.is_file():
        if not (work_dir / RESUME_CHECKPOINT).exists():
            _check_initial_weights(path, task)
        return path
    if not path.suffix and "/" not in init:
        # A folder named like a shipped model does not hide the model.
        return _shipped_weights(init, task, path.is_dir())
    if path.is_dir():
        raise _directory_error(init)
    raise UsageError(f"--init {init}: file not found")


def _shipped_weights(name: str, task: str, folder_exists: bool) -> Path:
    """Return the file of the shipped ``task`` model ``name``, which --init names."""
    from edgefx.errors import UsageError
    from edgefx.registry import load_manifest, resolve_model

    entries = load_manifest()
    if any(entry.name == name and entry.task == task for entry in entries):
        return resolve_model(name, task).path
    if folder_exists:
        raise _directory_error(name)
    names = [entry.name for entry in entries if entry.task == task]
    message = (
        f"--init {name}: no such file, and no shipped {task} model has that name "
        f"(shipped: {', '.join(names)})"
    )
    other_tasks = [entry.task for entry in entries if entry.name == name]
    if other_tasks and other_tasks[0] in CHECKPOINT_CONFIG_KEYS:
        message += (
            f"; {name} is a shipped {other_tasks[0]} model, so use it with "
            f"edgefx train {other_tasks[0]}"
        )
    raise UsageError(message)


def _directory_error(init: str) -> Exception:
    from edgefx.errors import UsageError

    return UsageError(
        f"--init {init}: is a directory; give an ONNX file, a training checkpoint "
        "or a shipped model's name"
    )


def _check_initial_weights(path: Path, task: str) -> None:
    """Raise UsageError unless ``path`` contains edgefx weights for ``task``.

    The recipes read a file named .onnx as an ONNX model and any other file as a
    training checkpoint, and check the network's size themselves.
    """
    from edgefx.errors import ModelError, UsageError

    if path.suffix.lower() == ".onnx":
        from edgefx.registry import read_metadata

        try:
            declared = read_metadata(path).get("task")
        except ModelError as err:
            raise UsageError(f"--init {err}") from err
        if declared != task:
            raise UsageError(
                f"--init {path}: not an edgefx {task} model (task metadata: "
                f"{declared or 'none'})"
            )
        return
    from edgefx.train.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(path)
    except ModelError as err:
        raise UsageError(f"--init {err}") from err
    config = state.get("config")
    present = set(config) if isinstance(config, dict) else set()
    missing = sorted(CHECKPOINT_CONFIG_KEYS[task] - present)
    if missing:
        raise UsageError(
            f"--init {path}: not an edgefx {task} training checkpoint (its "
            f"configuration has no {', '.join(missing)})"
        )


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
    work_dir: WorkDirOption = Path("runs/denoise"),
    export: ExportOption = None,
    steps: Annotated[
        int, integer_option(help="Training steps (batches).", low=1)
    ] = 12000,
    batch_size: Annotated[int, integer_option(help="Patches per step.", low=1)] = 32,
    patch_size: Annotated[
        int, integer_option(help="Patch side in pixels (even).", low=16)
    ] = 64,
    features: Annotated[
        int, integer_option(help="Channels per convolution.", low=8)
    ] = 64,
    blocks: Annotated[int, integer_option(help="Residual blocks.", low=1)] = 5,
    learning_rate: Annotated[
        float, typer.Option(help="Peak Adam learning rate.", parser=number())
    ] = 1e-3,
    threads: ThreadsOption = 0,
    seed: SeedOption = 0,
    precision: PrecisionOption = "auto",
    init: Annotated[
        str | None,
        typer.Option(
            help="Start from these weights: a shipped denoiser's name (denoise-s), an "
            "edgefx denoiser ONNX file or a training checkpoint. Ignored when "
            "--work-dir already holds a checkpoint to resume.",
        ),
    ] = None,
) -> None:
    """Train the image denoiser on a folder of clean photos (resumable).

    The network takes the noise level as an input; `edgefx denoise` estimates it per
    image unless --sigma is given.
    """
    with handle_errors(CHECKPOINT_HINT, imports=("numpy", "torch")):
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
            precision=precision,
            init=_initial_weights(init, "denoise", work_dir),
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
    work_dir: WorkDirOption = Path("runs/classify"),
    export: ExportOption = None,
    epochs: Annotated[
        int, integer_option(help="Passes over the training set.", low=1)
    ] = 30,
    batch_size: Annotated[int, integer_option(help="Images per step.", low=2)] = 128,
    size: Annotated[
        int,
        integer_option(help="Input side in pixels; images are resized to it.", low=8),
    ] = 32,
    arch: Annotated[
        str,
        typer.Option(
            help="Network: resnet (CIFAR ResNet; the shipped model is ResNet-20), "
            "convnet (a wide, shallow plain network that learns fast; width 64 "
            "makes a 2 M-parameter teacher for --teacher) or densenet (DenseNet-BC; "
            "the defaults give depth 52 and 0.26 M parameters, at about six times "
            "ResNet-20's training time)."
        ),
    ] = "resnet",
    # TODO: PyTorch 2.13 aborts with a corrupted heap in the backward pass of a width-4
    # ResNet on an AVX2-only AMD EPYC (width 8 trains). Find the op or raise low.
    width: Annotated[
        int | None,
        integer_option(
            help="Channels of the first stage (default 16, as ResNet-20); a "
            "convnet's later stages have four times as many. For densenet, the "
            "channels each layer adds (default 12).",
            low=4,
        ),
    ] = None,
    blocks: Annotated[
        int | None,
        integer_option(
            help="Residual blocks per stage (default 3, as ResNet-20), or for "
            "densenet layers per dense block (default 8); not for convnet.",
            low=1,
        ),
    ] = None,
    learning_rate: Annotated[
        float, typer.Option(help="Peak SGD learning rate.", parser=number())
    ] = 0.1,
    cutout: Annotated[
        int,
        integer_option(
            help="Side in pixels of a square painted over each training image at a "
            "random place (cutout augmentation); 0 turns it off.",
            low=0,
        ),
    ] = 0,
    threads: ThreadsOption = 0,
    seed: SeedOption = 0,
    precision: PrecisionOption = "auto",
    flip_average: Annotated[
        bool,
        typer.Option(
            help="Build mirror-image averaging into the exported model: each image "
            "and its left-right mirror image are classified and their logits "
            "averaged (twice the compute, same parameters). The test accuracy is "
            "then scored the same way."
        ),
    ] = True,
    shift_average: Annotated[
        bool,
        typer.Option(
            help="With --flip-average, also average over the image shifted by one "
            "pixel in the four diagonal directions: 10 views per image (10 times the "
            "compute of one, same parameters)."
        ),
    ] = False,
    teacher: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="BEST.PT",
            help="Distill from this training checkpoint (best.pt of an earlier run on "
            "the same data and split); repeat for an ensemble, whose logits are "
            "averaged.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    distill_weight: Annotated[
        float,
        typer.Option(
            help="With --teacher: weight of the distillation loss; the label loss "
            "gets the rest.",
            parser=number(0.0, 1.0),
        ),
    ] = 0.9,
    temperature: Annotated[
        float,
        typer.Option(
            help="With --teacher: softmax temperature of the distillation loss.",
            parser=number(0.1),
        ),
    ] = 4.0,
    teacher_views: Annotated[
        int,
        integer_option(
            help="With --teacher: run the teachers once, before training, on this "
            "many augmented views of each training image, keep their logits in "
            "teacher-bank.npz in --work-dir, and train on those views, taking each "
            "image's views in turn. Costs that many teacher passes over the data "
            "instead of one per epoch; 0 runs the teachers on every batch.",
            low=0,
        ),
    ] = 0,
    init: Annotated[
        Path | None,
        typer.Option(
            metavar="BEST.PT",
            help="Start from the weights of this training checkpoint, which must "
            "come from the same network options, --data and --seed; the schedule "
            "starts anew. Ignored when --work-dir already holds a checkpoint to "
            "resume.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Train the image classifier (a CIFAR ResNet or convnet) on labelled images."""
    with handle_errors(CHECKPOINT_HINT, imports=("numpy", "torch")):
        _require_torch()
        from edgefx.errors import UsageError
        from edgefx.train.classify import (
            CLASSIFIER_ARCHITECTURES,
            ClassifyTrainOptions,
            evaluate_checkpoint,
            export_best,
            train,
        )

        if shift_average and not flip_average:
            raise UsageError("--shift-average needs --flip-average")
        if arch not in CLASSIFIER_ARCHITECTURES:
            raise UsageError(
                f"unknown --arch {arch!r}; choose "
                + ", ".join(CLASSIFIER_ARCHITECTURES[:-1])
                + f" or {CLASSIFIER_ARCHITECTURES[-1]}"
            )
        if teacher_views and not teacher:
            raise UsageError("--teacher-views needs --teacher")
        if blocks is not None and arch == "convnet":
            raise UsageError(
                "--blocks applies to --arch resnet and densenet, not convnet"
            )
        # DenseNet-BC-52 with growth 12; ResNet-20 (and a convnet's first stage).
        default_width, default_blocks = (12, 8) if arch == "densenet" else (16, 3)
        options = ClassifyTrainOptions(
            data=data,
            work_dir=work_dir,
            test_data=test_data,
            epochs=epochs,
            batch_size=batch_size,
            size=size,
            arch=arch,
            width=width if width is not None else default_width,
            blocks=blocks if blocks is not None else default_blocks,
            learning_rate=learning_rate,
            cutout=cutout,
            threads=threads,
            seed=seed,
            precision=precision,
            teachers=tuple(teacher or ()),
            distill_weight=distill_weight,
            temperature=temperature,
            teacher_views=teacher_views,
            init=init,
        )
        try:
            best = train(options)
            typer.echo(f"best checkpoint: {best}")
            if test_data is not None:
                accuracy = evaluate_checkpoint(
                    best, test_data, flip_average, shift_average
                )
                typer.echo(f"test accuracy: {accuracy:.2f} %")
        except ValueError as err:
            raise UsageError(str(err)) from err
        if export is not None:
            export_best(
                best,
                export,
                data_description=data.name,
                flip_average=flip_average,
                shift_average=shift_average,
            )
            typer.echo(f"exported: {export}")


def _audio_files(folder: Path) -> list[Path]:
    from edgefx.train.audio_split import AUDIO_SUFFIXES

    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
    )


@train_app.command("enhance")
def train_enhance(
    data: Annotated[
        Path | None,
        typer.Option(
            help="The project's shared audio folder (shared/data/audio): its "
            "training speakers and training noises are used, its test ones are not.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    speech: Annotated[
        Path | None,
        typer.Option(
            help="Your own folder of clean speech recordings (searched recursively), "
            "instead of --data.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    noise: Annotated[
        Path | None,
        typer.Option(
            help="Your own folder of noise recordings, with --speech.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    work_dir: WorkDirOption = Path("runs/enhance"),
    export: ExportOption = None,
    steps: Annotated[
        int, integer_option(help="Training steps (batches).", low=1)
    ] = 8000,
    batch_size: Annotated[int, integer_option(help="Mixtures per step.", low=1)] = 24,
    seconds: Annotated[
        float, typer.Option(help="Length of each training mixture.", parser=number(0.1))
    ] = 2.5,
    hidden: Annotated[int, integer_option(help="GRU state size.", low=4)] = 72,
    refine: Annotated[
        int,
        integer_option(
            help="Channels of the local refinement (two small convolutions over "
            "nearby frames and bins that correct the GRUs' gains); 0 leaves it out. "
            "With --init from a model without it, training starts from that "
            "model's exact output.",
            low=0,
        ),
    ] = 0,
    deep_filter: Annotated[
        int,
        integer_option(
            help="Bins, from the lowest, that also get a deep filter: a complex "
            "weighting of the current and the previous frame per bin, which can "
            "follow a voice's harmonics in noise that shares their bins; 0 leaves "
            "it out. 20 bins (up to 1 kHz) add 5,840 parameters. With --init from "
            "a model without it, training starts from that model's exact output.",
            low=0,
            high=161,
        ),
    ] = 0,
    learning_rate: Annotated[
        float, typer.Option(help="Peak AdamW learning rate.", parser=number())
    ] = 2e-3,
    snr_low: Annotated[
        float, typer.Option(help="Lowest mixing SNR in dB.", parser=number())
    ] = -5.0,
    snr_high: Annotated[
        float, typer.Option(help="Highest mixing SNR in dB.", parser=number())
    ] = 20.0,
    variation: Annotated[
        bool,
        typer.Option(
            help="Vary the noise recordings in speed and loudness over time, and draw "
            "more mixtures from the low end of the SNR range."
        ),
    ] = True,
    band_limited: Annotated[
        float,
        typer.Option(
            help="Share of the mixtures low-passed at 3.4 to 7.9 kHz, as recordings "
            "are after a phone line, a lossy codec or resampling from 44.1 or 48 kHz. "
            "With a share above 0 the best checkpoint is chosen on full-band and "
            "band-limited validation mixtures together.",
            parser=number(0.0, 1.0),
        ),
    ] = 0.25,
    synthetic_share: Annotated[
        float,
        typer.Option(
            help="With --variation, share of the backgrounds made up as tonal (hum, "
            "whine), impulsive (clicks, taps) or fluctuating noise, kinds that "
            "recorded ambiences rarely contain.",
            parser=number(0.0, 0.8),
        ),
    ] = 0.0,
    random_eq: Annotated[
        float,
        typer.Option(
            help="Share of the speech stretches, and apart from them of the "
            "backgrounds, heard through a random equalizer: one to three bands of "
            "up to 6 dB (speech) or 12 dB (noise) and, half of the time, a low cut, "
            "so that a few recordings stand for many rooms and microphones.",
            parser=number(0.0, 1.0),
        ),
    ] = 0.0,
    noise_validation_fraction: Annotated[
        float,
        typer.Option(
            help="Share of the noise files kept out of training and used to score "
            "the model on noises it has not heard (at least one file when there "
            "are two or more).",
            parser=number(0.0, 0.5),
        ),
    ] = 0.1,
    si_sdr_weight: Annotated[
        float,
        typer.Option(
            help="Weight of the negative SI-SDR (in dB) added to the spectral loss; "
            "0 turns it off.",
            parser=number(0.0),
        ),
    ] = 0.02,
    stoi_weight: Annotated[
        float,
        typer.Option(
            help="Weight of one minus a differentiable STOI (envelope correlation "
            "in one-third octave bands, 0 to 1) added to the loss; 0 turns it off.",
            parser=number(0.0),
        ),
    ] = 0.0,
    init: Annotated[
        str | None,
        typer.Option(
            help="Start from these weights: a shipped enhancer's name "
            "(enhance-speech), an edgefx enhancer ONNX file or a training checkpoint. "
            "Ignored when --work-dir already holds a checkpoint to resume.",
        ),
    ] = None,
    threads: ThreadsOption = 0,
    seed: SeedOption = 0,
) -> None:
    """Train the speech enhancer on clean speech mixed with noise on the fly."""
    with handle_errors(CHECKPOINT_HINT, imports=("numpy", "torch")):
        _require_torch()
        from edgefx.errors import UsageError
        from edgefx.train import audio_split
        from edgefx.train.enhance import EnhanceTrainOptions, export_best, train

        if speech is not None or noise is not None:
            if speech is None or noise is None or data is not None:
                raise UsageError("give --speech and --noise together, without --data")
            speech_files, noise_files = _audio_files(speech), _audio_files(noise)
            description = f"{speech.name} + {noise.name}"
        elif data is not None:
            speech_files = audio_split.train_speech(data)
            noise_files = audio_split.train_noise(data)
            description = "shared/data/audio training split"
        else:
            raise UsageError("give --data, or --speech and --noise")
        if not speech_files or not noise_files:
            raise UsageError("no audio files found in the speech or the noise folder")
        options = EnhanceTrainOptions(
            speech=speech_files,
            noise=noise_files,
            work_dir=work_dir,
            steps=steps,
            batch_size=batch_size,
            seconds=seconds,
            hidden=hidden,
            refine=refine,
            deep_filter=deep_filter,
            learning_rate=learning_rate,
            snr_low=snr_low,
            snr_high=snr_high,
            variation=variation,
            band_limited=band_limited,
            synthetic=synthetic_share,
            equalize=random_eq,
            noise_validation_fraction=noise_validation_fraction,
            si_sdr_weight=si_sdr_weight,
            stoi_weight=stoi_weight,
            init=_initial_weights(init, "enhance", work_dir),
            threads=threads,
            seed=seed,
        )
        try:
            best = train(options)
        except ValueError as err:
            raise UsageError(str(err)) from err
        typer.echo(f"best checkpoint: {best}")
        if export is not None:
            export_best(best, export, data_description=description)
            typer.echo(f"exported: {export}")
