"""Run the edgefx CLI in a subprocess, as a user does; shared by the test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Seconds after which a CLI run counts as hung. The slowest run in the suite, all six
# noisy samples, took 9 to 25 s on a 2-core CPU shared with a training job.
CLI_TIMEOUT_SECONDS = 180


def run_edgefx(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    models_dir: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edgefx ARGS`` and capture stdout and stderr as text.

    The child inherits this environment, so it finds the same virtual environment,
    except EDGEFX_MODELS_DIR, which is set only from ``models_dir``. ``env`` entries are
    added on top.
    """
    child_env = {k: v for k, v in os.environ.items() if k != "EDGEFX_MODELS_DIR"}
    if models_dir is not None:
        child_env["EDGEFX_MODELS_DIR"] = str(models_dir)
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edgefx", *map(str, args)],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )
