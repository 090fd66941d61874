"""An S3-compatible server on loopback for the object store tests, and a faulty proxy.

The server is moto's, run in a thread of the test process on a free port of
127.0.0.1. The objects live in that process's memory and vanish with it.
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

BUCKET = "edgefx-test"
REGION = "us-east-1"

# Dummy credentials for the moto server, set only in the test process and its Ray
# workers. EC2 metadata is turned off because pyarrow's AWS SDK otherwise connects to
# 169.254.169.254 for credentials and the region, and the tests talk to loopback only.
# The empty config files keep a developer's ~/.aws settings out of the tests.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def s3_query(endpoint: str) -> str:
    """Return the URI query that points pyarrow at the S3 server on ``endpoint``."""
    return f"endpoint_override={endpoint}&scheme=http&region={REGION}"


class S3TestServer:
    """moto's S3 server on 127.0.0.1 with one bucket, and a pyarrow client for it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"{host}:{port}"

        import pyarrow.fs

        self.filesystem = pyarrow.fs.S3FileSystem(
            endpoint_override=self.endpoint,
            scheme="http",
            region=REGION,
            allow_bucket_creation=True,
        )
        self.filesystem.create_dir(BUCKET)

    def stop(self) -> None:
        self.server.stop()

    @property
    def query(self) -> str:
        return s3_query(self.endpoint)

    def uri(self, prefix: str) -> str:
        """Return the --out URI of ``prefix`` in the test bucket."""
        return f"s3://{BUCKET}/{prefix}?{self.query}"

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Return every object under ``prefix``, keyed by its path below it."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(
            f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True
        )
        found = {}
        for info in self.filesystem.get_file_info(selector):
            if info.type == pyarrow.fs.FileType.File:
                name = info.path.removeprefix(f"{BUCKET}/{prefix}/")
                with self.filesystem.open_input_stream(info.path) as stream:
                    found[name] = stream.read()
        return found

    def put(self, key: str, data: bytes) -> None:
        with self.filesystem.open_output_stream(f"{BUCKET}/{key}") as stream:
            stream.write(data)


Rejection = Callable[[str, str], bool]


class FaultyProxy:
    """A proxy on 127.0.0.1 that forwards requests to ``endpoint`` and rejects some.

    ``reject(method, path_and_query)`` picks the requests that get 403 AccessDenied,
    which the AWS SDK does not retry. Every other request goes to the server as is.
    """

    def __init__(self, endpoint: str, reject: Rejection) -> None:
        host, port = endpoint.rsplit(":", 1)
        target = (host, int(port))

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 makes the handler reply to curl's "Expect: 100-continue".
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def read_body(self) -> bytes | None:
                """Read the request body, undoing HTTP chunked transfer encoding.

                The AWS SDK sends uploads chunked, and the chunks hold an aws-chunked
                body, which is forwarded unchanged for the server to decode.
                """
                encoding = self.headers.get("Transfer-Encoding") or ""
                if "chunked" not in encoding.lower():
                    length = int(self.headers.get("Content-Length") or 0)
                    return self.rfile.read(length) if length else None
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailer fields of the HTTP chunked encoding
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()

            def forward(self) -> None:
                body = self.read_body()
                if reject(self.command, self.path):
                    self.respond(403, b"<Error><Code>AccessDenied</Code></Error>", [])
                    return
                connection = http.client.HTTPConnection(*target, timeout=30)
                # http.client sets Content-Length from the body read above.
                dropped = {"expect", "transfer-encoding", "content-length"}
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in dropped
                }
                connection.request(self.command, self.path, body, headers)
                response = connection.getresponse()
                data = response.read()
                connection.close()
                # A HEAD response keeps the object's Content-Length. Other responses
                # get the length of the body read here.
                dropped = {"transfer-encoding"}
                if self.command != "HEAD":
                    dropped.add("content-length")
                forwarded = [
                    (k, v) for k, v in response.getheaders() if k.lower() not in dropped
                ]
                self.respond(response.status, data, forwarded)

            def respond(
                self, status: int, data: bytes, headers: list[tuple[str, str]]
            ) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                if not any(k.lower() == "content-length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def uri(self, prefix: str) -> str:
        """Return the --out URI of ``prefix`` in the test bucket, through the proxy."""
        return f"s3://{BUCKET}/{prefix}?{s3_query(self.endpoint)}"


def key_of(path_and_query: str) -> str:
    """Return the object key of a path-style request path, without the bucket."""
    path = urlsplit(path_and_query).path
    return path.removeprefix(f"/{BUCKET}/")
