"""A real S3 API on loopback for the tests: moto's standalone server (``moto[server]``, a test dependency),
started on 127.0.0.1 on a free port and stopped afterwards, like the PostgreSQL fixture. The registry reaches it
the way it reaches MinIO or AWS: through the standard AWS variables (AWS_ENDPOINT_URL and the credentials)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aws_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "dapt-test",
        "AWS_SECRET_ACCESS_KEY": "dapt-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata service
    }


@contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """The endpoint URL of a fresh moto S3 server; the AWS variables point at it while the context lasts."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(log_dir / "moto.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    saved = {key: os.environ.get(key) for key in aws_environment(endpoint)}
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/", timeout=2).close()
                break
            except urllib.error.HTTPError:  # it answers HTTP: up
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server did not start: {(log_dir / 'moto.log').read_text(errors='replace')}"
                    ) from None
                time.sleep(0.2)
        os.environ.update(aws_environment(endpoint))
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


def s3_filesystem():
    """An s3fs filesystem on the current AWS variables, with no cached listings (the tests change the bucket)."""
    import s3fs

    return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)


def new_bucket(fs) -> str:
    bucket = f"dapt-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return bucket
