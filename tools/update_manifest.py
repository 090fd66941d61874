"""Rewrite models/manifest.json from the ONNX files in models/.

Each entry takes its name and task from the file's own metadata and records the file's
SHA-256, which the runtime checks on load. Run this after adding or replacing a model:

    python tools/update_manifest.py [--dir DIR] [--default NAME ...]
        [--cpu-default NAME ...]

A task's default model is kept from the previous manifest unless ``--default`` names
another; a task with no default yet gets its first model. ``--cpu-default`` names the
variant (such as an int8 model) that runs by default on the CPU; it is kept from the
previous manifest too. A variant's precision and the model it was made from come from
its metadata.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgefx.registry import MANIFEST_NAME, read_metadata, sha256_of

MODELS = Path(__file__).resolve().parent.parent / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default", action="append", default=[], help="model name")
    parser.add_argument(
        "--cpu-default", action="append", default=[], help="variant name"
    )
    parser.add_argument(
        "--dir", type=Path, default=MODELS, help="model folder (default: models/)"
    )
    args = parser.parse_args()
    folder: Path = args.dir

    manifest_path = folder / MANIFEST_NAME
    previous = {}
    if manifest_path.exists():
        previous = {
            m["name"]: m for m in json.loads(manifest_path.read_text())["models"]
        }

    entries = []
    for path in sorted(folder.glob("*.onnx")):
        metadata = read_metadata(path)
        name = metadata["name"]
        entry = {
            "name": name,
            "task": metadata["task"],
            "file": path.name,
            "sha256": sha256_of(path),
            "default": bool(previous.get(name, {}).get("default")),
            "precision": metadata.get("precision", "fp32"),
        }
        if metadata.get("variant_of"):
            entry["variant_of"] = metadata["variant_of"]
        if previous.get(name, {}).get("cpu_default") or name in args.cpu_default:
            entry["cpu_default"] = True
        entries.append(entry)

    for entry in entries:
        if entry["name"] in args.default:
            for other in entries:
                if other["task"] == entry["task"]:
                    other["default"] = other is entry
    for entry in entries:
        if entry["name"] in args.cpu_default:
            for other in entries:
                if other["task"] == entry["task"] and other is not entry:
                    other.pop("cpu_default", None)
    for task in {e["task"] for e in entries}:
        of_task = [e for e in entries if e["task"] == task]
        if not any(e["default"] for e in of_task):
            # A variant is a default only when named; the float model comes first.
            of_task.sort(key=lambda e: "variant_of" in e)
            of_task[0]["default"] = True

    manifest_path.write_text(json.dumps({"models": entries}, indent=2) + "\n")
    for entry in entries:
        flag = " (default)" if entry["default"] else ""
        flag += " (CPU default)" if entry.get("cpu_default") else ""
        print(f"{entry['task']:10} {entry['name']}{flag}  {entry['sha256'][:12]}")


if __name__ == "__main__":
    main()
