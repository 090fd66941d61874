"""Run a batch on a Ray cluster with Ray Data.

The driver lists the inputs and plans the outputs exactly as the local engine does.
Ray Data splits the planned items into blocks and hands them to a pool of worker
actors. Each actor opens the task once (one ONNX Runtime session) and runs the local
pipeline on every block it receives, so the skip rule, the atomic writes and the
per-file error messages are the local engine's own. Outputs are written by the
actors, so the output directory must be a filesystem that every node mounts at the same
path, or an object store URI (``s3://bucket/prefix``) that every node can reach. Each
actor opens the object store itself, with the credentials of its node (for S3, the
AWS_* environment variables, ~/.aws files or the instance's role), and uploads each
output in one piece, so a reader never sees part of an object.

Ray is an optional dependency: ``pip install "ray[data]>=2.40"``, or
``pip install ".[ray]"`` in the edgefx checkout.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgefx.batch import BatchItem, BatchSummary, FileResult, Reporter
from edgefx.errors import DeviceError, ModelError, UsageError
from edgefx.pipeline import EngineOptions, Stages, Task, run_pipeline
from edgefx.runtime import RuntimeOptions
from edgefx.text import throughput_line

logger = logging.getLogger(__name__)

# Maximum files per actor call. Each call runs the local pipeline over its files, so
# classify batches within a call and a call holds few decoded files at once.
FILES_PER_CALL = 16
# Status of a result row whose error stops the whole batch (ModelError, DeviceError).
FATAL = "fatal"
_FATAL_ERRORS: dict[str, type[Exception]] = {
    "ModelError": ModelError,
    "DeviceError": DeviceError,
}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise UsageError(
            '--engine ray needs Ray; install it with: pip install "ray[data]>=2.40", '
            'or pip install ".[ray]" in the edgefx checkout'
        ) from err
    return ray


def connect(address: str | None) -> bool:
    """Connect to the Ray cluster at ``address``, or start a local one for None.

    A local instance is started on the loopback address, and its usage statistics
    (which Ray would send to Anyscale) are off unless RAY_USAGE_STATS_ENABLED is set.
    Returns whether this call started the connection, in which case the caller shuts
    it down. A process already connected (a test, a notebook) keeps its connection.

    NOTE: some Ray processes were seen listening on a non-loopback interface even
    with the loopback node address (Ray 2.x on this machine); a firewall, not this
    setting, is what keeps a local instance private.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    try:
        if address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(
                address="local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                _node_ip_address="127.0.0.1",
            )
        else:
            ray.init(
                address=address, log_to_driver=False, logging_level=logging.WARNING
            )
    except (ConnectionError, RuntimeError, ValueError) as err:
        target = address or "a local instance"
        raise UsageError(f"--ray-address: cannot connect to {target}: {err}") from err
    return True


class _Worker:
    """A Ray Data actor: one opened task, run on every block of items it receives."""

    def __init__(self, task: Task, overwrite: bool) -> None:
        self.task = task
        self.overwrite = overwrite
        self.stages: Stages[Any, Any] | None = None

    def _open(self) -> Stages[Any, Any]:
        if self.stages is None:
            self.stages = self.task.open()
        return self.stages

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [
            BatchItem(Path(source), pickle.loads(output))
            for source, output in zip(batch["source"], batch["output"], strict=True)
        ]
        try:
            summary = run_pipeline(items, self._open, jobs=1, overwrite=self.overwrite)
        except (ModelError, DeviceError) as err:
            kind = type(err).__name__
            return _columns(
                batch["index"], [FATAL] * len(items), [str(err)] * len(items), kind
            )
        records = self.stages.records if self.stages is not None else {}
        statuses = [r.status for r in summary.results]
        return {
            "index": np.asarray(batch["index"]),
            "status": np.asarray(statuses, dtype=object),
            "error": np.asarray([r.error or "" for r in summary.results], dtype=object),
            "seconds": np.asarray([r.seconds for r in summary.results], np.float64),
            "units": np.asarray([r.units for r in summary.results], np.float64),
            # Records (classification rows) travel pickled; popping them keeps the
            # actor's memory flat over a long batch.
            "record": np.asarray(
                [pickle.dumps(records.pop(item.source, None)) for item in items],
                dtype=object,
            ),
        }


def _columns(
    indices: np.ndarray, statuses: list[str], errors: list[str], kind: str
) -> dict[str, np.ndarray]:
    count = len(statuses)
    return {
        "index": np.asarray(indices),
        "status": np.asarray(statuses, dtype=object),
        "error": np.asarray(errors, dtype=object),
        "seconds": np.zeros(count, np.float64),
        "units": np.zeros(count, np.float64),
        "record": np.asarray([pickle.dumps(kind)] * count, dtype=object),
    }


def _actor_resources(task: Task) -> tuple[Task, float, float]:
    """Return the task as actors run it, and the CPUs and GPUs each actor requests.

    A CPU actor requests ``--threads`` CPUs, one when it is 0, and its ONNX Runtime
    session gets that many intra-op threads, so actors on one node do not compete
    for its cores. A CUDA or TensorRT actor requests one GPU and one CPU.
    """
    runtime = getattr(task, "runtime", None)
    if not isinstance(runtime, RuntimeOptions) or not dataclasses.is_dataclass(task):
        return task, 1.0, 0.0
    if runtime.device in ("cuda", "tensorrt"):
        return task, 1.0, 1.0
    threads = runtime.threads or 1
    pinned = dataclasses.replace(runtime, threads=threads)
    return dataclasses.replace(task, runtime=pinned), float(threads), 0.0


def _actor_count(
    engine: EngineOptions, items: int, cpus: float, gpus: float, ray: Any
) -> int:
    if engine.jobs:
        return min(engine.jobs, items)
    resources = ray.cluster_resources()
    if gpus:
        fits = int(resources.get("GPU", 0) // gpus)
        if fits < 1:
            raise UsageError("--device cuda with --engine ray: the cluster has no GPU")
    else:
        fits = int(resources.get("CPU", 1) // cpus)
    return max(1, min(fits, items))


def run_on_ray(
    items: Sequence[BatchItem],
    task: Task,
    engine: EngineOptions,
    overwrite: bool,
    reporter: Reporter,
    unit: str,
) -> tuple[BatchSummary, dict[Path, Any]]:
    """Run ``task`` on ``items`` with Ray Data and report the results in input order.

    Raises the ModelError or DeviceError that an actor met, as the local engine does.
    """
    ray = _import_ray()
    started_here = connect(engine.ray_address)
    try:
        return _run(ray, items, task, engine, overwrite, reporter, unit)
    finally:
        # NOTE: on Ctrl-C, actors are killed mid-file, so no output is half-written
        # but a hidden temporary file may stay until a run an hour later removes it.
        if started_here:
            ray.shutdown()


def _run(
    ray: Any,
    items: Sequence[BatchItem],
    task: Task,
    engine: EngineOptions,
    overwrite: bool,
    reporter: Reporter,
    unit: str,
) -> tuple[BatchSummary, dict[Path, Any]]:
    summary = BatchSummary()
    records: dict[Path, Any] = {}
    if not items:
        return summary, records
    started = time.perf_counter()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False

    task, cpus, gpus = _actor_resources(task)
    actors = _actor_count(engine, len(items), cpus, gpus, ray)
    # Outputs travel pickled, because an ObjectPath keeps the URI's query parameters,
    # which its str() leaves out.
    rows = [
        {
            "index": index,
            "source": str(item.source),
            "output": pickle.dumps(item.output),
        }
        for index, item in enumerate(items)
    ]
    # At least two blocks per actor, so that no actor waits for the others' blocks.
    blocks = min(len(rows), max(-(-len(rows) // FILES_PER_CALL), 2 * actors))
    files_per_call = -(-len(rows) // blocks)
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    outputs = dataset.map_batches(
        _Worker,
        fn_constructor_args=(task, overwrite),
        batch_size=files_per_call,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus,
    )
    logger.info(
        "ray: %d files in %d blocks on %d actors (%g CPU, %g GPU each)",
        len(items),
        blocks,
        actors,
        cpus,
        gpus,
    )

    # Actors finish blocks in any order; results are reported in input order.
    waiting: dict[int, FileResult] = {}
    reported = 0
    for row in outputs.iter_rows():
        index = int(row["index"])
        item = items[index]
        status = str(row["status"])
        if status == FATAL:
            kind = pickle.loads(row["record"])
            raise _FATAL_ERRORS.get(kind, ModelError)(str(row["error"]))
        result = FileResult(
            item.source,
            item.output,
            status,
            error=str(row["error"]) or None,
            seconds=float(row["seconds"]),
            units=float(row["units"]),
        )
        record = pickle.loads(row["record"])
        if record is not None:
            records[item.source] = record
        waiting[index] = result
        while reported in waiting:
            done = waiting.pop(reported)
            summary.results.append(done)
            reporter.result(done)
            reported += 1

    summary.seconds = time.perf_counter() - started
    if summary.done:
        done_units = sum(r.units for r in summary.results if r.status == "done")
        logger.info(
            "%s on Ray",
            throughput_line(summary.done, done_units, unit, summary.seconds),
        )
    return summary, records
