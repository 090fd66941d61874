"""Outputs in an object store: same bytes, skip and overwrite rules, failures as local.

The store is moto's S3 server on loopback (the s3_server fixture). Tests that need it
skip where moto or pyarrow is not installed. FaultyProxy sits between pyarrow and the
server to make chosen uploads fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import soundfile as sf
from s3_helpers import BUCKET, FaultyProxy, S3TestServer, key_of

from edgefx.batch import BatchOptions, BatchSummary
from edgefx.denoise import denoise_files
from edgefx.enhance import enhance_files
from edgefx.errors import OutputError, UsageError
from edgefx.objectstore import ObjectPath, parse_output, write_object
from edgefx.runtime import RuntimeOptions

CPU = RuntimeOptions(device="cpu", threads=1)


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


@pytest.fixture(scope="module")
def local_run(
    image_inputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[BatchSummary, dict[str, bytes]]:
    """The local engine's results and output files for image_inputs, by name."""
    out = tmp_path_factory.mktemp("local")
    summary = denoise_files([str(image_inputs)], BatchOptions(out), runtime=CPU)
    return summary, {p.name: p.read_bytes() for p in out.iterdir()}


def failures(summary: BatchSummary) -> list[str | None]:
    return [r.error for r in summary.results if r.status == "failed"]


def statuses(summary: BatchSummary) -> dict[str, str]:
    return {r.source.name: r.status for r in summary.results}


def test_parse_output_kinds() -> None:
    assert parse_output("out/denoised") == Path("out/denoised")
    assert parse_output(Path("s3:/not-a-uri")) == Path("s3:/not-a-uri")
    uri = "s3://key:secret@bucket/prefix?endpoint_override=host:9000"
    assert parse_output(uri) == ObjectPath(uri)


def test_parse_output_file_uri_rejected() -> None:
    # Only s3:// is accepted; a file:// URI gets the local path to give instead.
    with pytest.raises(UsageError) as caught:
        parse_output("file:///tmp/out%20dir")

    assert str(caught.value) == (
        "--out file:///tmp/out%20dir: file:// URIs are not accepted; give the local "
        "path /tmp/out dir"
    )


def test_object_path_hides_query() -> None:
    root = ObjectPath("s3://key:secret@bucket/prefix/?endpoint_override=host:9000")
    output = root / PurePosixPath("sub/photo.png")
    assert str(root) == "s3://bucket/prefix"
    assert str(output) == "s3://bucket/prefix/sub/photo.png"
    assert output.root == root.root
    assert output.name == "photo.png"
    assert output.suffix == ".png"
    assert ObjectPath("gs://bucket/results.csv").suffix == ".csv"


def test_denoise_s3_same_bytes(
    s3_server: S3TestServer, image_inputs: Path, local_run
) -> None:
    local, local_files = local_run
    summary = denoise_files(
        [str(image_inputs)], BatchOptions(s3_server.uri("same")), runtime=CPU
    )
    assert len(local_files) == 6
    assert s3_server.objects("same") == local_files
    assert failures(summary) == failures(local)
    assert len(failures(summary)) == 2
    assert statuses(summary) == statuses(local)
    output = summary.results[0].output
    assert isinstance(output, ObjectPath)
    assert str(output).startswith(f"s3://{BUCKET}/same/")


def test_denoise_s3_rerun_skips(s3_server: S3TestServer, image_inputs: Path) -> None:
    batch = BatchOptions(s3_server.uri("rerun"))
    first = denoise_files([str(image_inputs)], batch, runtime=CPU)
    stored = s3_server.objects("rerun")
    second = denoise_files([str(image_inputs)], batch, runtime=CPU)
    assert first.done == 6
    assert second.skipped == 6
    assert second.done == 0
    assert second.failed == 2
    assert s3_server.objects("rerun") == stored


def test_denoise_s3_skip_and_overwrite(
    s3_server: S3TestServer, image_inputs: Path, local_run
) -> None:
    _, local_files = local_run
    # A non-empty object counts as a finished output; an empty one does not.
    s3_server.put("policy/camera.png", b"kept unless --overwrite")
    s3_server.put("policy/coffee.png", b"")
    summary = denoise_files(
        [str(image_inputs)], BatchOptions(s3_server.uri("policy")), runtime=CPU
    )
    objects = s3_server.objects("policy")
    assert statuses(summary)["camera.png"] == "skipped"
    assert statuses(summary)["coffee.png"] == "done"
    assert objects["camera.png"] == b"kept unless --overwrite"
    assert objects["coffee.png"] == local_files["coffee.png"]

    batch = BatchOptions(s3_server.uri("policy"), overwrite=True)
    rewritten = denoise_files([str(image_inputs)], batch, runtime=CPU)
    assert rewritten.done == 6
    assert s3_server.objects("policy") == local_files


def test_denoise_s3_upload_failure(
    s3_server: S3TestServer, image_inputs: Path, local_run
) -> None:
    _, local_files = local_run

    def reject(method: str, path: str) -> bool:
        return method == "PUT" and key_of(path) == "rejected/camera.png"

    proxy = FaultyProxy(s3_server.endpoint, reject)
    try:
        summary = denoise_files(
            [str(image_inputs)], BatchOptions(proxy.uri("rejected")), runtime=CPU
        )
    finally:
        proxy.stop()
    errors = failures(summary)
    assert statuses(summary)["camera.png"] == "failed"
    assert summary.done == 5
    assert len(errors) == 3
    assert any(
        error and error.startswith(f"s3://{BUCKET}/rejected/camera.png: upload failed")
        for error in errors
    )
    objects = s3_server.objects("rejected")
    assert "camera.png" not in objects
    assert objects == {k: v for k, v in local_files.items() if k != "camera.png"}


def rerun_through_proxy(
    s3_server: S3TestServer, image_inputs: Path, prefix: str, reject_listing: bool
) -> tuple[BatchSummary, list[tuple[str, str]]]:
    """Denoise into ``prefix``, then rerun through a proxy that records its requests."""
    denoise_files([str(image_inputs)], BatchOptions(s3_server.uri(prefix)), runtime=CPU)
    requests: list[tuple[str, str]] = []

    def record(method: str, path: str) -> bool:
        requests.append((method, path))
        # check_prefix lists one key with a delimiter to tell a prefix from an
        # object. Only the listing without a delimiter, the skip rule's, is rejected.
        listing = method == "GET" and "list-type=" in path and "delimiter" not in path
        return reject_listing and listing

    proxy = FaultyProxy(s3_server.endpoint, record)
    try:
        summary = denoise_files(
            [str(image_inputs)], BatchOptions(proxy.uri(prefix)), runtime=CPU
        )
    finally:
        proxy.stop()
    return summary, requests


def test_rerun_lists_prefix_once(s3_server: S3TestServer, image_inputs: Path) -> None:
    summary, requests = rerun_through_proxy(s3_server, image_inputs, "listed", False)

    assert summary.skipped == 6
    assert summary.done == 0
    # The skip rule reads one listing of the prefix instead of a HEAD per output.
    listings = [
        path
        for method, path in requests
        if "list-type=" in path and "delimiter" not in path
    ]
    heads_on_outputs = [
        path
        for method, path in requests
        if method == "HEAD" and key_of(path).startswith("listed/")
    ]
    assert len(listings) == 1
    assert heads_on_outputs == []


def test_rerun_without_listing_checks_each(
    s3_server: S3TestServer, image_inputs: Path
) -> None:
    summary, requests = rerun_through_proxy(s3_server, image_inputs, "unlisted", True)

    # A store that rejects the listing still gets every finished output skipped, with
    # one request per output.
    assert summary.skipped == 6
    assert summary.done == 0
    heads = {
        key_of(path)
        for method, path in requests
        if method == "HEAD" and key_of(path).startswith("unlisted/")
    }
    assert len(heads) >= 6


def test_failed_part_leaves_old_object(s3_server: S3TestServer) -> None:
    # 12 MiB is above pyarrow's 10 MiB part size, so the upload has two parts, and
    # the second one is rejected: no partial object may replace the old one.
    s3_server.put("parts/big.bin", b"old object")

    def reject(method: str, path: str) -> bool:
        return method == "PUT" and "partNumber=2" in path

    proxy = FaultyProxy(s3_server.endpoint, reject)
    try:
        target = ObjectPath(proxy.uri("parts")) / "big.bin"
        with pytest.raises(OutputError) as caught:
            write_object(target, bytes(12 << 20))
    finally:
        proxy.stop()
    assert "upload failed" in str(caught.value)
    assert s3_server.objects("parts") == {"big.bin": b"old object"}


def test_enhance_s3_same_bytes(s3_server: S3TestServer, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, rate, channels in (("a.wav", 16000, 1), ("b.flac", 48000, 2)):
        noise = 0.1 * rng.standard_normal((rate // 2, channels)).astype(np.float32)
        sf.write(folder / name, noise, rate)
    local_out = tmp_path / "local"
    local = enhance_files([str(folder)], BatchOptions(local_out), runtime=CPU)
    remote = enhance_files(
        [str(folder)], BatchOptions(s3_server.uri("audio")), runtime=CPU
    )
    local_files = {p.name: p.read_bytes() for p in local_out.iterdir()}
    assert local.done == 2
    assert remote.done == 2
    assert s3_server.objects("audio") == local_files


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://no-such-bucket/out", "bucket 'no-such-bucket' not found"),
        (f"s3://{BUCKET}/objects/a.png", "is an object; give a prefix"),
    ],
)
def test_out_uri_rejected(
    s3_server: S3TestServer, image_inputs: Path, uri: str, message: str
) -> None:
    s3_server.put("objects/a.png", b"an object, not a prefix")
    batch = BatchOptions(f"{uri}?{s3_server.query}")
    with pytest.raises(UsageError, match=message):
        denoise_files([str(image_inputs)], batch, runtime=CPU)


@pytest.mark.parametrize("uri", ["nope://bucket/out", "gs://bucket/out"])
def test_unsupported_scheme_rejected(image_inputs: Path, uri: str) -> None:
    with pytest.raises(UsageError, match=f"--out {uri}: unsupported object store"):
        denoise_files([str(image_inputs)], BatchOptions(uri))


@pytest.mark.parametrize("uri", ["s3://", "s3://?endpoint_override=127.0.0.1:9"])
def test_missing_bucket_rejected(image_inputs: Path, uri: str) -> None:
    with pytest.raises(UsageError, match="missing bucket name"):
        denoise_files([str(image_inputs)], BatchOptions(uri))


def test_cli_classify_results_s3(
    s3_server: S3TestServer, run_cli, image_inputs: Path, tmp_path: Path
) -> None:
    local = run_cli("classify", image_inputs, "--out", tmp_path / "rows.csv")
    remote = run_cli(
        "classify", image_inputs, "--out", s3_server.uri("classify/rows.csv")
    )
    local_failed = [ln for ln in local.stderr.splitlines() if ln.startswith("failed:")]
    remote_failed = [
        ln for ln in remote.stderr.splitlines() if ln.startswith("failed:")
    ]
    assert local.returncode == 1, local.stderr
    assert remote.returncode == 1, remote.stderr
    assert len(local_failed) == 2
    assert remote_failed == local_failed
    stored = s3_server.objects("classify")
    assert stored == {"rows.csv": (tmp_path / "rows.csv").read_bytes()}


def test_cli_without_pyarrow(samples_dir: Path, tmp_path: Path) -> None:
    # sys.modules entries set to None make every import of pyarrow fail.
    code = (
        "import sys; sys.modules['pyarrow'] = sys.modules['pyarrow.fs'] = None; "
        "from edgefx.cli import main; main()"
    )
    noisy = samples_dir / "noisy"
    completed = subprocess.run(
        [sys.executable, "-c", code, "denoise", str(noisy), "--out", "s3://b/out"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == (
        "error: --out with an object store URI needs pyarrow; install it with: "
        "pip install pyarrow"
    )
