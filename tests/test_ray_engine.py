"""The Ray engine writes the outputs and reports the failures that the local one does.

One local Ray instance (2 CPUs, no dashboard, loopback only) serves every test here,
because starting Ray takes several seconds on a small machine. The module is skipped
where the ``ray`` extra is not installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from s3_helpers import DUMMY_AWS_ENV

ray = pytest.importorskip(
    "ray", reason='Ray is not installed; pip install -e ".[ray]" to run these tests'
)

from edgefx.batch import BatchOptions, BatchSummary  # noqa: E402
from edgefx.classify import ClassifyOptions, classify_files  # noqa: E402
from edgefx.denoise import denoise_files  # noqa: E402
from edgefx.enhance import enhance_files  # noqa: E402
from edgefx.pipeline import EngineOptions  # noqa: E402
from edgefx.runtime import RuntimeOptions  # noqa: E402

LOCAL = EngineOptions("local")
RAY = EngineOptions("ray", jobs=2)
CPU = RuntimeOptions(device="cpu", threads=1)


@pytest.fixture(scope="module")
def ray_cluster() -> object:
    """Local Ray instance for this module, yielding its GCS address.

    Its workers get the dummy AWS settings of the s3_server fixture, for the test
    that writes to it.
    """
    # Ray's usage statistics would look up cloud metadata and report to Anyscale.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # "local" starts an instance of its own even where RAY_ADDRESS or `ray start`
    # names another, so that two test runs on one machine stay apart.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": DUMMY_AWS_ENV},
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def image_inputs(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The noisy sample photos, a truncated PNG and a text file named .jpg."""
    folder = tmp_path_factory.mktemp("images")
    for path in sorted((samples_dir / "noisy").iterdir()):
        shutil.copy(path, folder / path.name)
    data = (samples_dir / "noisy" / "camera.png").read_bytes()
    (folder / "broken.png").write_bytes(data[: len(data) // 3])
    (folder / "not_an_image.jpg").write_text("plain text", encoding="utf-8")
    return folder


def failures(summary: BatchSummary) -> list[str | None]:
    return [r.error for r in summary.results if r.status == "failed"]


def statuses(summary: BatchSummary) -> list[tuple[str, str]]:
    return [(r.source.name, r.status) for r in summary.results]


def same_files(first: Path, second: Path) -> list[str]:
    """Return the relative paths whose bytes differ or that exist in one tree only."""
    names = {p.relative_to(first) for p in first.rglob("*") if p.is_file()}
    names |= {p.relative_to(second) for p in second.rglob("*") if p.is_file()}
    return sorted(
        str(name)
        for name in names
        if not (first / name).is_file()
        or not (second / name).is_file()
        or (first / name).read_bytes() != (second / name).read_bytes()
    )


@pytest.fixture(scope="module")
def denoise_runs(
    ray_cluster: object, image_inputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[BatchSummary, Path]]:
    runs = {}
    paths = [str(image_inputs), str(image_inputs / "missing.png")]
    for name, engine in (("local", LOCAL), ("ray", RAY)):
        out = tmp_path_factory.mktemp(f"denoise-{name}")
        summary = denoise_files(paths, BatchOptions(out), runtime=CPU, engine=engine)
        runs[name] = (summary, out)
    return runs


def test_denoise_ray_same_outputs(denoise_runs) -> None:
    local_out = denoise_runs["local"][1]
    ray_out = denoise_runs["ray"][1]
    assert len(list(local_out.iterdir())) == 6
    assert same_files(local_out, ray_out) == []


def test_denoise_ray_same_failures(denoise_runs) -> None:
    local, _ = denoise_runs["local"]
    remote, _ = denoise_runs["ray"]
    assert len(failures(local)) == 3
    assert failures(remote) == failures(local)
    assert statuses(remote) == statuses(local)
    assert remote.exit_code == local.exit_code == 1


def test_denoise_ray_rerun_skips(denoise_runs, image_inputs: Path) -> None:
    _, out = denoise_runs["ray"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    summary = denoise_files([str(image_inputs)], BatchOptions(out), engine=RAY)
    assert summary.skipped == 6
    assert summary.done == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_denoise_ray_s3_same_objects(
    denoise_runs, s3_server, image_inputs: Path
) -> None:
    local, local_out = denoise_runs["local"]
    paths = [str(image_inputs), str(image_inputs / "missing.png")]
    batch = BatchOptions(s3_server.uri("ray"))
    remote = denoise_files(paths, batch, runtime=CPU, engine=RAY)
    local_files = {p.name: p.read_bytes() for p in local_out.iterdir()}
    assert len(local_files) == 6
    assert s3_server.objects("ray") == local_files
    assert failures(remote) == failures(local)
    assert statuses(remote) == statuses(local)


def test_classify_ray_same_rows(ray_cluster: object, image_inputs: Path) -> None:
    options = ClassifyOptions(top_k=3, batch_size=4)
    local, local_rows = classify_files(
        [str(image_inputs)], options=options, runtime=CPU, engine=LOCAL
    )
    remote, remote_rows = classify_files(
        [str(image_inputs)], options=options, runtime=CPU, engine=RAY
    )
    assert len(local_rows) == 6
    assert [row.file for row in remote_rows] == [row.file for row in local_rows]
    for mine, theirs in zip(remote_rows, local_rows, strict=True):
        mine_labels, mine_scores = zip(*mine.top_k, strict=True)
        their_labels, their_scores = zip(*theirs.top_k, strict=True)
        assert mine_labels == their_labels
        assert mine_scores == pytest.approx(their_scores, abs=1e-6)
    assert failures(remote) == failures(local)
    assert len(failures(local)) == 2


def test_enhance_ray_same_outputs(ray_cluster: object, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, rate, channels in (("a.wav", 16000, 1), ("b.flac", 48000, 2)):
        noise = 0.1 * rng.standard_normal((rate, channels)).astype(np.float32)
        sf.write(folder / name, noise, rate)
    (folder / "c.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE")

    runs = {}
    for name, engine in (("local", LOCAL), ("ray", RAY)):
        out = tmp_path / name
        summary = enhance_files(
            [str(folder)], BatchOptions(out), runtime=CPU, engine=engine
        )
        runs[name] = (summary, out)
    assert runs["local"][0].done == 2
    assert same_files(runs["local"][1], runs["ray"][1]) == []
    assert failures(runs["ray"][0]) == failures(runs["local"][0])
    assert len(failures(runs["local"][0])) == 1


def test_cli_ray_address(ray_cluster: str, run_cli, image_inputs, tmp_path) -> None:
    local = run_cli(
        "denoise", image_inputs, "--out", tmp_path / "local", "--device", "cpu"
    )
    remote = run_cli(
        "denoise",
        image_inputs,
        "--out",
        tmp_path / "ray",
        "--device",
        "cpu",
        "--engine",
        "ray",
        "--ray-address",
        ray_cluster,
    )
    local_failed = [ln for ln in local.stderr.splitlines() if ln.startswith("failed:")]
    remote_failed = [
        ln for ln in remote.stderr.splitlines() if ln.startswith("failed:")
    ]
    assert local.returncode == 1, local.stderr
    assert remote.returncode == 1, remote.stderr
    assert len(local_failed) == 2
    assert remote_failed == local_failed
    assert same_files(tmp_path / "local", tmp_path / "ray") == []


def test_ray_model_error_same(
    ray_cluster: object, image_inputs: Path, tmp_path
) -> None:
    from edgefx.errors import ModelError

    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n", encoding="utf-8")  # the model has 10 classes
    messages = []
    for engine in (LOCAL, RAY):
        with pytest.raises(ModelError) as caught:
            classify_files(
                [str(image_inputs)], runtime=CPU, labels_path=labels, engine=engine
            )
        messages.append(str(caught.value))
    assert "10 classes but 2 labels" in messages[0]
    assert messages[1] == messages[0]


def test_ray_cuda_actor_requests_gpu() -> None:
    from edgefx.denoise import DenoiseOptions, DenoiseTask
    from edgefx.ray_engine import _actor_resources

    cuda = DenoiseTask(DenoiseOptions(), RuntimeOptions(device="cuda", threads=0))
    _, cpus, gpus = _actor_resources(cuda)
    assert (cpus, gpus) == (1.0, 1.0)

    cpu = DenoiseTask(DenoiseOptions(), RuntimeOptions(device="cpu", threads=0))
    pinned, cpus, gpus = _actor_resources(cpu)
    assert (cpus, gpus) == (1.0, 0.0)
    assert pinned.runtime.threads == 1


def test_cli_ray_cuda_without_gpu(ray_cluster: str, run_cli, image_inputs, tmp_path):
    result = run_cli(
        "denoise",
        image_inputs,
        "--out",
        tmp_path / "out",
        "--device",
        "cuda",
        "--engine",
        "ray",
        "--ray-address",
        ray_cluster,
    )
    assert result.returncode == 2, result.stderr
    assert "--device cuda with --engine ray: the cluster has no GPU" in result.stderr
    assert not (tmp_path / "out").exists()
