"""The storage backends every storage test runs against: `file` (the embedded default) and five real
servers on 127.0.0.1, started once per test session by tests/backends.py and stopped at its end.
Each test gets a fresh, empty bucket (or container, or folder for `file`).

Each backend runs its real client library (s3fs, gcsfs, adlfs, ossfs) over HTTP against a server:
moto and SeaweedFS (S3; SeaweedFS checks signatures), fake-gcs-server (GCS), azurite (Azure Blob,
checks the account key). OSS is emulated: no OSS emulator exists, so tests/oss_emulator.py speaks the
OSS protocol subset ossfs uses (listing XML and paging, bucket info, ranged GetObject, Put/Head/Delete,
DeleteMultipleObjects, AppendObject, CRC-64 headers) but checks no signature or permission.
"""

from __future__ import annotations

import pytest

from rayhistory.store import Store
from tests import backends

BACKENDS = ["file", "s3-moto", "s3-seaweedfs", "gcs", "azure", "oss"]


def _server_fixture(name: str):
    @pytest.fixture(scope="session", name=f"backend_{name.replace('-', '_')}")
    def running():
        with backends.BACKENDS[name]() as backend:
            yield backend

    return running


backend_s3_moto = _server_fixture("s3-moto")
backend_s3_seaweedfs = _server_fixture("s3-seaweedfs")
backend_gcs = _server_fixture("gcs")
backend_azure = _server_fixture("azure")
backend_oss = _server_fixture("oss")


@pytest.fixture(params=BACKENDS)
def backend(request) -> backends.RunningBackend | None:
    """The running server behind this test's store; None for `file`."""
    if request.param == "file":
        return None
    return request.getfixturevalue(f"backend_{request.param.replace('-', '_')}")


@pytest.fixture
def store_config(backend, tmp_path) -> tuple[str, dict]:
    if backend is None:
        return f"file://{tmp_path}/store", {}
    return backend.new_url(), backend.options


@pytest.fixture
def store(store_config) -> Store:
    url, options = store_config
    return Store(url, options)
