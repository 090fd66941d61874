"""Set metadata_props entries of an ONNX model in place, leaving the graph unchanged.

Used to record measured metrics in a shipped model after benchmarking it:

    python tools/set_model_metadata.py models/denoise-s.onnx key_metric=... metrics=...
    python tools/update_manifest.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("entries", nargs="+", help="KEY=VALUE")
    args = parser.parse_args()

    proto = onnx.load(str(args.model))
    current = {p.key: p.value for p in proto.metadata_props}
    for entry in args.entries:
        key, separator, value = entry.partition("=")
        if not separator:
            parser.error(f"invalid entry {entry!r}; expected KEY=VALUE")
        current[key] = value
    del proto.metadata_props[:]
    for key, value in sorted(current.items()):
        prop = proto.metadata_props.add()
        prop.key = key
        prop.value = value
    temporary = args.model.with_suffix(".tmp.onnx")
    onnx.save(proto, str(temporary))
    temporary.replace(args.model)
    print(f"{args.model}: {len(args.entries)} entries set")


if __name__ == "__main__":
    main()
