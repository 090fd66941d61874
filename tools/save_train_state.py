"""Copy the state of training runs from runs/ into train-state/, to commit it.

`runs/` is ignored by git, and the development machine's work tree can be laid anew
between working sessions, so the state of a run that spans sessions is copied here
and committed. For each run folder the checkpoints (`*.pt`), the teacher bank
(`*.npz`), the options and the logs are copied into `train-state/NAME`. The new copy
is written next to the old one and swapped in, so a copy interrupted halfway leaves
the previous state whole.

    python tools/save_train_state.py runs/classify-t64 runs/enhance-v6
    python tools/save_train_state.py --every 900 runs/classify-t64   # every 15 min
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

PATTERNS = ("*.pt", "*.npz", "options.json", "log.jsonl", "console.log")


def save(run: Path, target_root: Path) -> Path:
    """Copy one run folder's state into ``target_root / run.name`` and return it."""
    target = target_root / run.name
    fresh = target_root / f".{run.name}.new"
    old = target_root / f".{run.name}.old"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    for pattern in PATTERNS:
        for source in sorted(run.glob(pattern)):
            if ".tmp" not in source.name:
                shutil.copy2(source, fresh / source.name)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders under runs/")
    parser.add_argument(
        "--to", type=Path, default=Path("train-state"), help="destination folder"
    )
    parser.add_argument(
        "--every",
        type=float,
        default=0,
        help="repeat every this many seconds until interrupted; 0 copies once",
    )
    args = parser.parse_args()
    missing = [run for run in args.runs if not run.is_dir()]
    if missing:
        parser.error("not a folder: " + ", ".join(map(str, missing)))
    while True:
        for run in args.runs:
            target = save(run, args.to)
            print(f"{time.strftime('%H:%M:%S')} copied {run} to {target}", flush=True)
        if args.every <= 0:
            return
        time.sleep(args.every)


if __name__ == "__main__":
    main()
