"""The servers' internal-port token (issue 9, item 8): generated once into the operator's own Secret, read
back after a restart, copied beside each server; the server's Deployment never runs without it."""

from __future__ import annotations

import kubernetes
import pytest

from rayhistory.operator import config, specs
from rayhistory.operator.config import Settings
from rayhistory.operator.history import parse_spec
from rayhistory.operator.internal_token import load_operator_token, token_of
from rayhistory.operator.kube import Kube, object_path
from tests.kube_api import running_kube_api, write_kubeconfig

NAMESPACE = "rayhistory-system"


@pytest.fixture
def kube(tmp_path, monkeypatch):
    with running_kube_api() as (api, url):
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", write_kubeconfig(str(tmp_path / "kubeconfig"), url))
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
        yield api


async def test_the_token_is_created_once_and_read_back_by_a_restarted_operator(kube):
    settings = Settings(operator_namespace=NAMESPACE)
    first = await load_operator_token(Kube(), settings)
    assert len(first) >= 32
    stored = kube.get_object("", "v1", "secrets", NAMESPACE, config.INTERNAL_TOKEN_SECRET)
    assert token_of(stored) == first
    assert await load_operator_token(Kube(), settings) == first  # a new process, the same token


async def test_an_explicit_token_wins_and_writes_nothing(kube):
    assert await load_operator_token(Kube(), Settings(operator_namespace=NAMESPACE, prewarm_token="given")) == "given"
    assert kube.get_object("", "v1", "secrets", NAMESPACE, config.INTERNAL_TOKEN_SECRET) is None


async def test_each_server_gets_its_copy_and_its_deployment_requires_it(kube):
    from rayhistory.operator import reconcile

    history = {"apiVersion": f"{config.GROUP}/{config.VERSION}", "kind": "RayHistory",
               "metadata": {"name": "history", "namespace": "ml", "uid": "u-1", "generation": 1},
               "spec": {"storage": {"url": "s3://bucket/p"}}}
    spec = parse_spec(history["spec"])
    await reconcile.reconcile(Kube(), history, spec, "tok-1")
    await reconcile.reconcile(Kube(), history, spec, "tok-1")  # again: patched in place, not a conflict
    copy = kube.get_object("", "v1", "secrets", "ml", specs.internal_token_secret_name(history))
    assert token_of(copy) == "tok-1"
    assert copy["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    env = specs.build_server_deployment_spec(history, spec)["spec"]["template"]["spec"]["containers"][0]["env"]
    [token_env] = [e for e in env if e["name"] == "RAYHISTORY_PREWARM_TOKEN"]
    assert token_env["valueFrom"]["secretKeyRef"] == {"name": specs.internal_token_secret_name(history), "key": "token"}
    assert "optional" not in token_env["valueFrom"]["secretKeyRef"]
    assert object_path("v1", "Secret", "ml", "x") == "/api/v1/namespaces/ml/secrets/x"
