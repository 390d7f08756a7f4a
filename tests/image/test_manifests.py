"""The kustomize bases name the image in one place: the operator Deployment's image is also the CRD's default
image for the server and the injected collectors, in the base and in an overlay that sets its own registry."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.backends import in_ci

ROOT = Path(__file__).resolve().parents[2]


def render(base: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        message = "kubectl missing (Debian package 'kubectl'): it renders the kustomize bases"
        if in_ci():
            pytest.fail(message + " (CI=true: a missing test tool is an error, not a skip)", pytrace=False)
        pytest.skip(message)
    out = subprocess.run([kubectl, "kustomize", str(ROOT / base)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def images(docs: list[dict]) -> tuple[str, set[str]]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rayhistory-operator"]
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator"]
    (crd,) = [d for d in docs if d["kind"] == "CustomResourceDefinition"
              and d["metadata"]["name"] == "rayhistories.rayhistory.io"]
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return container["image"], {spec[part]["properties"]["image"]["default"] for part in ("server", "collector")}


@pytest.mark.parametrize("base, expected", [
    ("deploy/operator", "ghcr.io/rayhistory/rayhistory:0.1.0"),
    ("deploy/operator-selfsigned", "ghcr.io/rayhistory/rayhistory:0.1.0"),
    ("deploy/examples/own-registry", "registry.example.com/ml-platform/rayhistory@sha256:" + "0" * 64),
])
def test_one_image_everywhere(base, expected):
    operator_image, defaults = images(render(base))
    assert operator_image == expected
    assert defaults == {expected}


def test_the_base_image_is_the_version_built():
    from scripts import image

    operator_image, _ = images(render("deploy/operator"))
    assert operator_image.endswith(":" + image.version())
