"""Score speech enhancers on validation mixtures of the training data, to choose one.

The mixtures come from the recordings that ``edgefx train enhance --data DIR`` holds
out for validation (the same split and seed), never from the bench's test speakers and
noises, so that a choice made here does not tune to the test set. Each model runs as
``edgefx enhance`` runs it (``Enhancer.enhance``: state primed on the first seconds,
one CPU thread) and is scored with PESQ (wide band), STOI and SI-SDR, per SNR and
over all mixtures.

    python tools/score_enhancer.py enhance-speech runs/enhance-df1/enhance-speech.onnx
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from edgefx.enhance import Enhancer  # noqa: E402
from edgefx.runtime import RuntimeOptions  # noqa: E402
from edgefx.train import audio_split  # noqa: E402
from edgefx.train.enhance import (  # noqa: E402
    SAMPLE_RATE,
    draw_mixtures,
    load_recordings,
    si_sdr,
    split_recordings,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="shipped model names or .onnx paths")
    parser.add_argument(
        "--data", type=Path, default=Path("../shared/data/audio"), help="audio folder"
    )
    parser.add_argument("--snrs", type=float, nargs="+", default=[-5, 0, 5, 10, 15])
    parser.add_argument("--per-snr", type=int, default=24, help="mixtures per SNR")
    parser.add_argument("--seconds", type=float, default=4.0, help="mixture length")
    parser.add_argument("--seed", type=int, default=0, help="training --seed")
    args = parser.parse_args(argv)

    from pesq import pesq
    from pystoi import stoi

    # The same split as edgefx train enhance with its default validation fractions.
    _, speech = split_recordings(
        load_recordings(sorted(audio_split.train_speech(args.data))), 0.05, args.seed
    )
    _, noise = split_recordings(
        load_recordings(sorted(audio_split.train_noise(args.data)), 0.1),
        0.1,
        args.seed,
    )
    length = int(args.seconds * SAMPLE_RATE)
    sets = {
        snr: draw_mixtures(
            speech,
            noise,
            args.per_snr,
            length,
            np.random.default_rng(args.seed + 777 + index),
            snr,
            snr,
            extremes=False,
        )
        for index, snr in enumerate(args.snrs)
    }
    runtime = RuntimeOptions(device="cpu", threads=1)
    print(f"{len(speech)} speech and {len(noise)} noise recordings held out")
    print("| model | SNR (dB) | PESQ WB | STOI | SI-SDR (dB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in ["noisy input", *args.models]:
        enhancer = None if name == "noisy input" else Enhancer(name, runtime)
        totals: list[tuple[float, float, float]] = []
        for snr, (noisy, clean) in sets.items():
            rows = []
            for mixture, reference in zip(noisy, clean, strict=True):
                output = (
                    mixture
                    if enhancer is None
                    else enhancer.enhance(mixture, SAMPLE_RATE)
                )
                rows.append(
                    (
                        pesq(SAMPLE_RATE, reference, output, "wb"),
                        stoi(reference, output, SAMPLE_RATE),
                        si_sdr(output, reference),
                    )
                )
            totals += rows
            mean = np.mean(rows, axis=0)
            print(
                f"| {name} | {snr:g} | {mean[0]:.3f} | {mean[1]:.4f} | {mean[2]:.2f} |"
            )
        mean = np.mean(totals, axis=0)
        print(f"| {name} | all | {mean[0]:.3f} | {mean[1]:.4f} | {mean[2]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
