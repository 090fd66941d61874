"""Score classifier checkpoints alone and averaged, to choose distillation teachers.

Each checkpoint (best.pt of an ``edgefx train classify`` run) is run mirror-averaged,
or on the 10 views of ``--shift-average``, on the validation split of the training
data (the split that ``--seed`` picks, as in training) and on the test data. Every
combination of them is then scored by the mean of their logits, which is what
``--teacher`` given several times distills from. Choose on the validation column; the
test column is for the report. ``--shift-average`` scores what an export with that
flag computes, to decide on validation whether it is worth five times the compute.

    python tools/score_ensemble.py runs/classify-t64/best.pt \\
        runs/classify-v5/best.pt --data ../shared/data/cifar10/train.zip \\
        --test-data ../shared/data/cifar10/test.zip
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

from edgefx.train.classify import (
    ImageSet,
    load_classifier_checkpoint,
    load_image_set,
    split_validation,
    to_tensor,
)
from edgefx.train.nets import FlipAveraged, ShiftFlipAveraged


def averaged_logits(
    network: torch.nn.Module,
    data: ImageSet,
    mean: list[float],
    std: list[float],
    shift_average: bool = False,
) -> np.ndarray:
    """Return the logits of ``network`` on ``data``, averaged over 2 or 10 views."""
    wrapper = ShiftFlipAveraged if shift_average else FlipAveraged
    averaged = wrapper(network).eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(data.labels), 500):
            batch = to_tensor(data.images[start : start + 500], mean, std)
            outputs.append(averaged(batch).numpy())
    return np.concatenate(outputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, metavar="BEST.PT")
    parser.add_argument("--data", type=Path, required=True, help="training data")
    parser.add_argument("--test-data", type=Path, required=True, help="test data")
    parser.add_argument("--seed", type=int, default=0, help="training --seed")
    parser.add_argument(
        "--validation-fraction", type=float, default=0.1, help="as in training"
    )
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads")
    parser.add_argument(
        "--shift-average",
        action="store_true",
        help="average 10 views (5 positions, each mirrored) instead of 2",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    loaded = [load_classifier_checkpoint(path) for path in args.checkpoints]
    configs = [state["config"] for _, state in loaded]
    first = configs[0]
    for path, config in zip(args.checkpoints, configs, strict=True):
        for key in ("classes", "size", "mean", "std"):
            if config[key] != first[key]:
                print(
                    f"{path}: other {key} than {args.checkpoints[0]}", file=sys.stderr
                )
                return 2
    data = load_image_set(args.data, first["size"])  # as training loads it
    if data.classes != first["classes"]:
        print(f"{args.data}: other classes than the checkpoints'", file=sys.stderr)
        return 2
    _, validation = split_validation(data, args.validation_fraction, args.seed)
    test = load_image_set(args.test_data, first["size"], classes=first["classes"])

    names = [str(path) for path in args.checkpoints]
    scores: dict[str, dict[str, np.ndarray]] = {}
    for split, images in (("validation", validation), ("test", test)):
        scores[split] = {
            name: averaged_logits(
                network, images, first["mean"], first["std"], args.shift_average
            )
            for name, (network, _) in zip(names, loaded, strict=True)
        }
    print("| checkpoints | validation top-1 | test top-1 |")
    print("| --- | ---: | ---: |")
    for count in range(1, len(names) + 1):
        for combination in itertools.combinations(names, count):
            row = []
            for split, images in (("validation", validation), ("test", test)):
                summed = sum(scores[split][name] for name in combination)
                correct = np.asarray(summed).argmax(axis=1) == images.labels
                row.append(f"{100 * correct.mean():.2f} %")
            print(f"| {' + '.join(combination)} | {row[0]} | {row[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
