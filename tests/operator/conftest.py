"""The real Kubernetes control plane (tests/k8s/cluster.py), once per test session, for `-m k8s` tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s.cluster import Cluster, running_cluster


@pytest.fixture(scope="session")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """etcd, kube-apiserver, kube-controller-manager and the KubeRay operator on 127.0.0.1."""
    with running_cluster(tmp_path_factory.mktemp("k8s")) as cluster:
        yield cluster
