"""Shared test helpers. Fixture data is the copy of the Ray 2.60 captures in tests/fixtures/ray."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "ray"
RECEIVED = FIXTURES / "received"
API = FIXTURES / "api"
SESSION_NAME = "session_2026-11-23_13-47-55_556257_9670"
HEAD_NODE_ID = "b9f6904d0ece740ede49c3a63814b9b8a86f18bd7142541a299c8dc2"
TEST_OUTPUT = Path(os.environ.get("RAYHISTORY_TEST_OUTPUT", Path(__file__).parent.parent / "test-output"))


def received_bodies() -> list[list[dict]]:
    """Every POST body the aggregator agent sent, in arrival order."""
    return [json.loads(p.read_text())["body"] for p in sorted(RECEIVED.glob("*.json"))]


def api_answer(name: str):
    """A live dashboard answer saved in the fixtures (file name as in api/_index.json)."""
    path = API / name
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fixture_bodies() -> list[list[dict]]:
    return received_bodies()


@pytest.fixture(scope="session")
def k8s(tmp_path_factory: pytest.TempPathFactory):
    """etcd, kube-apiserver, kube-controller-manager and the KubeRay operator on 127.0.0.1 (tests/k8s/cluster.py),
    once per test session for every `-m k8s` test (the operator's and the server's auth tests)."""
    from tests.k8s.cluster import running_cluster

    with running_cluster(tmp_path_factory.mktemp("k8s")) as cluster:
        yield cluster
