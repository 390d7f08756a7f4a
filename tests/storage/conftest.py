"""The storage backends every storage test runs against. Each is a real server on 127.0.0.1 started
by the suite (see tests/storage/backends.py); `file` is the embedded default."""

from __future__ import annotations

import pytest

from rayhistory.store import Store

BACKENDS = ["file"]


@pytest.fixture(params=BACKENDS)
def store_config(request, tmp_path) -> tuple[str, dict]:
    if request.param == "file":
        return f"file://{tmp_path}/store", {}
    raise AssertionError(request.param)


@pytest.fixture
def store(store_config) -> Store:
    url, options = store_config
    return Store(url, options)
